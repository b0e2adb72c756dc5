"""MAE ViT-L/16 on 6-channel 256 px crops (mask 0.75, Lion 0.9/0.95, lr 3e-5, weight decay
0.05, 10% warm-up + cosine, drop-path 0.3), FSDP, blocks scanned.

Target: a v5p:4x4x4 slice (64 chips) at global batch 16384 (256 per chip): 64.6 of 95 GiB
HBM per chip (32% margin), compiler cost-model MFU 62% (an estimate, not a measurement):

    python -m maejax.bench compile --config configs/vitl16.py --topology v5p:4x4x4 \
        --config.batch_size=16384

    python -m maejax.train --config configs/vitl16.py [--config.data.path=...]
    python -m maejax.train --config configs/vitl16.py:plus   # "+" run: Fourier loss weight 0.01
"""

from maejax import config as config_lib


def get_config(arg=None):
  c = config_lib.experiment("vitl16", "vitl16", dtype="bfloat16")
  c.lr = 3e-5
  # Large model: shard parameters and optimizer state over all devices (FSDP).
  c.mesh.data = 1
  c.mesh.fsdp = -1
  return config_lib.apply_arg(c, arg)
