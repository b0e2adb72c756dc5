"""Demo MU-Net: the tiny masked U-Net (`munet_tiny`: widths 16/32, patch 8, mask 0.75) with
configs/demo.py's data (32 px crops of the synthetic screen) and budget (steps, batch,
optimizer), so it compares with the demo MAE at equal cost:

    python -m maejax.train --config configs/munet_demo.py
"""

import os

from maejax import models
from maejax import config as config_lib


def get_config(arg=None):
  c = config_lib.load_config(os.path.join(os.path.dirname(__file__), "demo.py"))
  c.name = "munet_demo"
  c.model = models.get_config("munet_tiny", channels=len(c.data.channels))
  c.data.crop_size = int(c.model.img_size)
  return config_lib.apply_arg(c, arg)
