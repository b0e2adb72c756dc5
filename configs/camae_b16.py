"""Channel-agnostic MAE ViT-B/16 (CA-MAE) on 6-channel 256 px crops (mask 0.75, Lion
0.9/0.95, lr 1e-4, weight decay 0.05, 10% warm-up + cosine, drop-path 0.1).

    python -m maejax.train --config configs/camae_b16.py [--config.data.path=...]
    python -m maejax.train --config configs/camae_b16.py:plus   # "+" run: Fourier loss weight 0.01
"""

from maejax import config as config_lib


def get_config(arg=None):
  c = config_lib.experiment("camae_b16", "camae_b16", dtype="bfloat16")
  c.lr = 1e-4
  return config_lib.apply_arg(c, arg)
