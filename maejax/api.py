"""The user-facing surface: `maejax.load(DIR)` -> a model with NumPy `embed` / `reconstruct`.

A pretrained directory (written by `save_pretrained` or `python -m maejax.convert`) holds
`config.json` (the run config; its `model` entry names and describes the architecture) and
`state/` (an Orbax checkpoint of the model's variables). `load` also takes a training workdir.
"""

from __future__ import annotations

import functools
import json
import os

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import orbax.checkpoint as ocp
from flax import nnx

from maejax import models

CONFIG_FILE = "config.json"
STATE_DIR = "state"


def config_to_json(config):
  """A ConfigDict (or dict) -> a JSON string; tuples become lists."""
  d = config.to_dict() if hasattr(config, "to_dict") else dict(config)
  return json.dumps(d, indent=2, sort_keys=True, default=str)


def save_pretrained(model, config, out_dir):
  """Writes `model` and its run config (ConfigDict or dict with a `model` entry)."""
  out_dir = os.path.abspath(out_dir)
  os.makedirs(out_dir, exist_ok=True)
  with open(os.path.join(out_dir, CONFIG_FILE), "w") as f:
    f.write(config_to_json(config))
  path = os.path.join(out_dir, STATE_DIR)
  with ocp.StandardCheckpointer() as ckptr:
    ckptr.save(path, nnx.state(model), force=True)
  return out_dir


def read_config(directory):
  path = os.path.join(directory, CONFIG_FILE)
  if not os.path.exists(path):
    raise FileNotFoundError(
        f"{path} not found: pass a directory written by maejax (training workdir, "
        f"save_pretrained or `python -m maejax.convert`)")
  with open(path) as f:
    return ml_collections.ConfigDict(json.load(f))


def _restore_state(abstract_state, path):
  with ocp.StandardCheckpointer() as ckptr:
    try:
      return ckptr.restore(path, abstract_state)
    except ValueError as e:
      raise ValueError(
          f"checkpoint {path} does not fit the model in {CONFIG_FILE}: {e}") from None


def load(directory, *, step=None):
  """Loads any maejax checkpoint directory -> `Model` ready to embed images."""
  directory = os.path.abspath(os.path.expanduser(directory))
  config = read_config(directory)
  module = models.create(config.model)
  abstract = jax.tree.map(
      lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), nnx.state(module))
  state_path = os.path.join(directory, STATE_DIR)
  if os.path.isdir(state_path):
    state = _restore_state(abstract, state_path)
  else:
    from maejax.train import checkpoint as train_checkpoint
    state = train_checkpoint.restore_model_state(directory, abstract, step=step)
  nnx.update(module, state)
  return Model(module, config)


def _check_uint8(images):
  images = np.asarray(images)
  if images.dtype != np.uint8:
    raise ValueError(
        f"images must be uint8 [batch, height, width, channels], got dtype {images.dtype}: "
        f"scale 16-bit data to 0..255 first (maejax.data handles this for image folders)")
  if images.ndim == 3:
    images = images[None]
  if images.ndim != 4:
    raise ValueError(
        f"images must be [batch, height, width, channels], got shape {images.shape}")
  return images


class Model:
  """A loaded model with NumPy in, NumPy out; each function compiles once per shape."""

  def __init__(self, module, config):
    self.module, self.config = module, config
    self.graphdef, self.state = nnx.split(module)

  @functools.partial(jax.jit, static_argnums=(0, 3, 4))
  def _embed(self, state, images, pool, block):
    return nnx.merge(self.graphdef, state).embed(images, pool=pool, block=block)

  @functools.partial(jax.jit, static_argnums=(0,), static_argnames=("mask_ratio",))
  def _reconstruct(self, state, images, key, channel_ids, mask_ratio):
    m = nnx.merge(self.graphdef, state)
    return m.reconstruct(images, key, mask_ratio=mask_ratio, channel_ids=channel_ids)

  def _check(self, images):
    """Shape errors raised here, before tracing, read as one clear line."""
    check = getattr(self.module, "check_images", None)
    if check is not None:
      check(images)

  def embed(self, images, channel_ids=None, *, batch_size=64, pool="mean", block=None):
    """uint8 [batch, height, width, channels] -> float32 [batch, dim].

    The last partial batch is padded, so a run compiles once per image shape.
    """
    del channel_ids  # Embeddings depend on channel order only through the pixels.
    images = _check_uint8(images)
    n = images.shape[0]
    self._check(images)
    out = []
    for start in range(0, n, batch_size):
      chunk = images[start:start + batch_size]
      pad = batch_size - chunk.shape[0] if n > batch_size else 0
      if pad:
        chunk = np.concatenate([chunk, np.zeros((pad,) + chunk.shape[1:], np.uint8)])
      emb = np.asarray(self._embed(self.state, jnp.asarray(chunk), pool, block))
      out.append(emb[: emb.shape[0] - pad])
    return np.concatenate(out).astype(np.float32)

  def reconstruct(self, images, mask_ratio=0.75, seed=0, channel_ids=None):
    """Masks `mask_ratio` of the tokens and reconstructs them.

    Returns {"pred", "target", "mask"}: float32 [batch, height, width, channels] in
    standardized units (target = the model's per-channel standardized input); mask 1 = hidden.
    """
    images = _check_uint8(images)
    self._check(images)
    ids = None if channel_ids is None else jnp.asarray(channel_ids, jnp.int32)
    out = self._reconstruct(self.state, jnp.asarray(images), jax.random.key(seed), ids,
                            mask_ratio=float(mask_ratio))
    return {k: np.asarray(v) for k, v in out.items()}
