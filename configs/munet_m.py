"""Masked U-Net MU-Net-M (21.7M parameters, ~ViT-S/16) on 6-channel 256 px crops: 16 px
patches masked at 0.75 (the paper also studied 0.25), Lion 0.9/0.95, lr 1e-4, weight decay
0.05, 10% warm-up + cosine. Embedding: global average of the bottleneck (576 dims).

    python -m maejax.train --config configs/munet_m.py [--config.data.path=...]
    python -m maejax.train --config configs/munet_m.py:plus   # "+" run: Fourier loss weight 0.01
    python -m maejax.train --config configs/munet_m.py --config.model.mask_ratio=0.25
"""

from maejax import config as config_lib


def get_config(arg=None):
  c = config_lib.experiment("munet_m", "munet_m", dtype="bfloat16")
  c.lr = 1e-4
  return config_lib.apply_arg(c, arg)
