"""Analytic FLOP counts (one multiply-add = 2 FLOPs) for MFU and compute-vs-recall plots.

A training step costs 3x the forward pass (forward, and backward through activations and
weights); only matrix multiplies and attention are counted, as in PaLM / MaxText.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from maejax import models
from maejax.models import stack


def _block(tokens, width, mlp_dim):
  """One transformer block on `tokens` tokens: projections + attention scores/values."""
  return 2 * tokens * (4 * width * width + 2 * width * mlp_dim) + 4 * tokens * tokens * width


def mae_forward_flops(cfg, image_size, channels, stacks=False):
  """Forward FLOPs of one MAE example (masked encoder + full decoder); with `stacks`,
  {"depth": encoder blocks, "decoder_depth": decoder blocks, "rest": the rest} instead."""
  p = cfg.patch_size
  n = (image_size // p) ** 2
  ca = cfg.channel_agnostic
  tokens = n * channels if ca else n
  pixels = p * p if ca else p * p * channels
  keep = int(tokens * (1.0 - cfg.mask_ratio)) + 1  # + CLS
  w, dd = cfg.width, cfg.decoder_width
  rest = 2 * tokens * pixels * w  # patch embedding (all tokens are embedded before masking)
  encoder = cfg.depth * _block(keep, w, cfg.mlp_dim)
  rest += 2 * keep * w * dd  # encoder -> decoder projection
  if ca:
    rest += 2 * tokens * dd * 4 * dd + 4 * tokens * tokens * dd  # cross-attention
    rest += 4 * tokens * dd * cfg.decoder_mlp_dim  # shared MLP
    decoder = channels * cfg.decoder_depth * _block(n, dd, cfg.decoder_mlp_dim)
  else:
    decoder = cfg.decoder_depth * _block(tokens + 1, dd, cfg.decoder_mlp_dim)
  rest += 2 * tokens * dd * pixels  # prediction head
  if stacks:
    return {"depth": encoder, "decoder_depth": decoder, "rest": rest}
  return encoder + decoder + rest


def xla_flops(compiled):
  """XLA's FLOP count of a compiled computation (per device), or None where XLA gives none.

  `compiled.cost_analysis()` is a dict, a one-element list of dicts (older JAX) or None.
  """
  cost = compiled.cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) and cost else cost
  if not cost or "flops" not in cost:
    return None
  return float(cost["flops"])


def xla_train_flops_per_example(cfg, image_size, channels, batch_size=2):
  """FLOPs of one example's loss + gradient as XLA counts them (for checks and non-MAEs);
  None where XLA gives no count.

  XLA counts a loop body once whatever its trip count, so the count is of the loop-free
  program: blocks unrolled, attention as XLA computes it on GPUs (the TPU kernel declares
  its MXU work, which counts head_dim padded to 128).
  """
  cfg = models.resolve(cfg)
  if "scan_layers" in cfg:
    cfg.scan_layers = False
  model = nnx.eval_shape(lambda: models.create(cfg))
  graphdef, state = nnx.split(model)
  batch = {"image": jax.ShapeDtypeStruct((batch_size, image_size, image_size, channels), jnp.uint8),
           "label": jax.ShapeDtypeStruct((batch_size,), jnp.int32)}

  def loss(state, batch, key):
    return nnx.merge(graphdef, state).compute_loss(batch, key)[0]

  key = jax.ShapeDtypeStruct((), jax.random.key(0).dtype)
  with stack.traced_for("gpu"):
    flops = xla_flops(jax.jit(jax.grad(loss)).lower(state, batch, key).compile())
  return None if flops is None else flops / batch_size


def train_flops_per_example(config, image_size=None, channels=None, stacks=False):
  """Training FLOPs (forward + backward) of one example; analytic for MAEs. With `stacks`,
  per block stack and the rest (`mae_forward_flops`), for MAEs only (else None)."""
  cfg = models.resolve(config) if not isinstance(config, str) else models.get_config(config)
  image_size = image_size or cfg.img_size
  channels = channels or cfg.channels
  if cfg.kind == "mae":
    f = mae_forward_flops(cfg, image_size, channels, stacks)
    return {k: 3 * v for k, v in f.items()} if stacks else 3 * f
  return None if stacks else xla_train_flops_per_example(cfg, image_size, channels)
