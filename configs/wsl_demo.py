"""Demo weakly supervised baseline: the tiny ResNet classifier (`wsl_tiny_cnn`) predicting
each crop's perturbation, with configs/demo.py's data (32 px crops of the synthetic screen)
and budget, so it compares with the demo MAE at equal cost. Embedding: the pooled
penultimate layer (32 dims).

    python -m maejax.train --config configs/wsl_demo.py

`model.num_classes` is the synthetic screen's genes + the EMPTY control; change it with the
screen (--config.model.num_classes=...).
"""

import os

from maejax import models
from maejax.data import synthetic
from maejax import config as config_lib


def get_config(arg=None):
  if arg:
    raise ValueError(f"configs/wsl_demo.py takes no argument, got {arg!r}")
  c = config_lib.load_config(os.path.join(os.path.dirname(__file__), "demo.py"))
  c.name = "wsl_demo"
  spec = synthetic.ScreenSpec(**c.data.synthetic.to_dict())
  c.model = models.get_config("wsl_tiny_cnn", channels=len(c.data.channels),
                              num_classes=len(spec.genes) + 1)
  c.data.crop_size = int(c.model.img_size)
  c.data.label_column = "perturbation"
  c.plot_every = 0  # A classifier has no reconstructions to plot.
  return c
