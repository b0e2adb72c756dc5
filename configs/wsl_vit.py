"""Weakly supervised ViT-S/16 (21.9M-parameter encoder, mean-pooled tokens) predicting each
crop's perturbation on 6-channel 256 px crops: softmax cross-entropy with label smoothing 0.1,
Lion 0.9/0.95, lr 1e-4, weight decay 0.05, 10% warm-up + cosine. Embedding: the pooled
penultimate layer (384 dims).

`model.num_classes` must equal the number of distinct `data.label_column` values of the
training data (the default synthetic screen: its genes + the EMPTY control); on RxRx1:

    python -m maejax.train --config configs/wsl_vit.py
    python -m maejax.train --config configs/wsl_vit.py --config.data.source=rxrx1 \
        --config.data.path=... --config.model.num_classes=1139
"""

from maejax.data import synthetic
from maejax import config as config_lib


def get_config(arg=None):
  if arg:
    raise ValueError(f"configs/wsl_vit.py takes no argument, got {arg!r}")
  c = config_lib.experiment("wsl_vit", "wsl_vits16", dtype="bfloat16",
                            num_classes=len(synthetic.ScreenSpec().genes) + 1)
  c.data.label_column = "perturbation"
  c.lr = 1e-4
  c.plot_every = 0  # A classifier has no reconstructions to plot.
  return c
