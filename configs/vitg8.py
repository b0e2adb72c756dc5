"""MAE ViT-G/8 on 6-channel 256 px crops (mask 0.75, Lion 0.9/0.95, lr 3e-5, weight decay
0.05, 10% warm-up + cosine, drop-path 0.3), FSDP, scanned blocks rematerialised keeping
weight matmuls.

Target: a v5p:4x4x8 slice (128 chips) at global batch 4096 (32 per chip): 21.0 of 95 GiB HBM
per chip (78% margin), compiler cost-model MFU 54% (an estimate, not a measurement); full
remat needs 3.5 GiB and gives 44%:

    python -m maejax.bench compile --config configs/vitg8.py --topology v5p:4x4x8 \
        --config.batch_size=4096

    python -m maejax.train --config configs/vitg8.py [--config.data.path=...]
    python -m maejax.train --config configs/vitg8.py:plus   # "+" run: Fourier loss weight 0.01
"""

from maejax import config as config_lib


def get_config(arg=None):
  c = config_lib.experiment("vitg8", "vitg8", dtype="bfloat16", remat=True,
                           remat_policy="dots_no_batch")
  c.lr = 3e-5
  # Large model: shard parameters and optimizer state over all devices (FSDP).
  c.mesh.data = 1
  c.mesh.fsdp = -1
  return config_lib.apply_arg(c, arg)
