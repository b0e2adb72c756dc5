"""Masked U-Net MU-Net-L (86.6M parameters, ~ViT-B/16) on 6-channel 256 px crops: 16 px
patches masked at 0.75 (the paper also studied 0.25), Lion 0.9/0.95, lr 1e-4, weight decay
0.05, 10% warm-up + cosine. Embedding: global average of the bottleneck (1152 dims).

    python -m maejax.train --config configs/munet_l.py [--config.data.path=...]
    python -m maejax.train --config configs/munet_l.py:plus   # "+" run: Fourier loss weight 0.01
    python -m maejax.train --config configs/munet_l.py --config.model.mask_ratio=0.25
"""

from maejax import config as config_lib


def get_config(arg=None):
  c = config_lib.experiment("munet_l", "munet_l", dtype="bfloat16")
  c.lr = 1e-4
  return config_lib.apply_arg(c, arg)
