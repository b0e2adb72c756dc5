"""Demo: a tiny MAE (ViT, width 64, depth 2, patch 8) on 32 px crops of the synthetic screen.

Per-patch normalized pixel targets, 8,000 steps of 64 crops: about five minutes of training
on 2 idle CPU cores, with checkpoints, metrics and reconstruction plots in ./runs/demo:

    python -m maejax.train --config configs/demo.py
"""

from maejax import config as config_lib


def get_config(arg=None):
  c = config_lib.experiment("demo", "vit_tiny", channels=6, decoder_channels=6)
  # 256 px sites as in the paper's screens, rendered once and kept in memory (544 sites,
  # 214 MB); the model sees 32 px crops. Embedding tiles each site into 64 crops, enough for
  # stable well profiles.
  c.data.synthetic.site_size = 256
  c.data.cache_sites = True
  # Measured with `python -m maejax.compare --configs configs/demo.py` (recall 5/95, TVN, 48
  # planted pairs; one pair is 0.021; per-channel statistics 0.521): 0.604 after 2,000 steps,
  # 0.646 after 8,000 (seeds 1 and 2: 0.604, 0.521); README: end to end.
  c.model.norm_pix_loss = True
  c.batch_size = 64
  c.total_steps = 8000
  # A tiny model and batch want a higher learning rate than the paper's large-batch runs.
  c.optimizer = "adamw"
  c.lr = 2e-3
  c.log_every = 100
  c.ckpt_every = 1000
  c.keep_every = 0
  c.plot_every = 2000
  return config_lib.apply_arg(c, arg)
