"""MAE ViT-L/8 on 6-channel 256 px crops (mask 0.75, Lion 0.9/0.95, lr 3e-5, weight decay
0.05, 10% warm-up + cosine, drop-path 0.3), FSDP, blocks scanned. The paper's best MAE is
ViT-L/8+.

Target: a v5p:4x4x4 slice (64 chips) at global batch 4096 (64 per chip): 64.3 of 95 GiB HBM
per chip (32% margin) without remat (TPU attention keeps no logits), compiler cost-model MFU
56% (an estimate, not a measurement):

    python -m maejax.bench compile --config configs/vitl8.py --topology v5p:4x4x4 \
        --config.batch_size=4096

    python -m maejax.train --config configs/vitl8.py [--config.data.path=...]
    python -m maejax.train --config configs/vitl8.py:plus   # "+" run: Fourier loss weight 0.01
"""

from maejax import config as config_lib


def get_config(arg=None):
  c = config_lib.experiment("vitl8", "vitl8", dtype="bfloat16")
  c.lr = 3e-5
  # Large model: shard parameters and optimizer state over all devices (FSDP).
  c.mesh.data = 1
  c.mesh.fsdp = -1
  return config_lib.apply_arg(c, arg)
