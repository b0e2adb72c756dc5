"""Demo: a tiny MAE (ViT, width 64, depth 2, patch 8) on 32 px crops of the synthetic screen.

Trains to a visibly lower loss in a few minutes on 2 CPU cores, with checkpoints, metrics and
reconstruction plots in ./runs/demo:

    python -m maejax.train --config configs/demo.py
"""

from maejax import config as config_lib


def get_config(arg=None):
  c = config_lib.experiment("demo", "vit_tiny", channels=6, decoder_channels=6)
  # 256 px sites as in the paper's screens, rendered once and kept in memory (350 sites,
  # 140 MB); the model sees 32 px crops. Embedding tiles each site into 64 crops, enough for
  # stable well profiles.
  c.data.synthetic.site_size = 256
  c.data.cache_sites = True
  c.batch_size = 64
  c.total_steps = 1000
  # A tiny model and batch want a higher learning rate than the paper's large-batch runs.
  c.optimizer = "adamw"
  c.lr = 2e-3
  c.log_every = 25
  c.ckpt_every = 250
  c.keep_every = 0
  c.plot_every = 250
  return config_lib.apply_arg(c, arg)
