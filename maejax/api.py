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
from jax.sharding import NamedSharding, PartitionSpec as P

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


def _on_local_device(x) -> jax.ShapeDtypeStruct:
  # Not the saved sharding: its device (cpu:0) is not this process's in a multi-host run.
  return jax.ShapeDtypeStruct(x.shape, x.dtype,
                              sharding=jax.sharding.SingleDeviceSharding(jax.local_devices()[0]))


def _restore_state(abstract_state, path):
  with ocp.StandardCheckpointer() as ckptr:
    try:
      return ckptr.restore(path, abstract_state)
    except ValueError as e:
      raise ValueError(
          f"checkpoint {path} does not fit the model in {CONFIG_FILE}: {e}") from None


def load(directory, *, step=None):
  """Loads any maejax checkpoint directory -> `Model` ready to embed images.

  `directory`: a `save_pretrained` / `python -m maejax.convert` folder (config.json +
  state/), or a training workdir of `python -m maejax.train` (also its `checkpoints/` folder
  or one `checkpoints/<step>` folder). step: for workdirs, which checkpoint (default: newest).
  """
  directory = os.path.abspath(os.path.expanduser(directory))
  if not os.path.isdir(directory):
    raise FileNotFoundError(
        f"{directory} is not a directory: pass a training workdir, a save_pretrained folder "
        "or a `python -m maejax.convert` output folder")
  if (os.path.isdir(os.path.join(directory, STATE_DIR))
      and os.path.isfile(os.path.join(directory, CONFIG_FILE))):
    if step is not None:
      raise ValueError(f"step={step}: {directory} is a pretrained folder with one state; "
                       "step selects a checkpoint of a training workdir only")
    config = read_config(directory)
    module = models.create(config.model)
    abstract = jax.tree.map(_on_local_device, nnx.state(module))
    nnx.update(module, _restore_state(abstract, os.path.join(directory, STATE_DIR)))
    return Model(module, config)
  workdir, step = _workdir_and_step(directory, step)
  config, module, step = _restore_workdir(workdir, step)
  return Model(module, config, step=step)


def checkpoint_dir(workdir):
  """`<workdir>/checkpoints` of a training workdir (or `workdir` when it is that folder)."""
  nested = os.path.join(workdir, "checkpoints")
  return nested if os.path.isdir(nested) else workdir


def _workdir_and_step(directory, step):
  """Accepts `<workdir>`, `<workdir>/checkpoints` and `<workdir>/checkpoints/<step>`."""
  name = os.path.basename(directory)
  if name.isdigit() and os.path.isdir(os.path.join(directory, "state")):
    if step is not None and int(step) != int(name):
      raise ValueError(f"step={step} contradicts the checkpoint folder {directory}")
    return os.path.dirname(directory), int(name)
  return directory, step


def checkpoint_steps(workdir):
  """Sorted steps of the checkpoints kept in a training workdir (read-only)."""
  ckpt_dir = checkpoint_dir(workdir)
  if not os.path.isdir(ckpt_dir):
    return []
  return sorted(int(d) for d in os.listdir(ckpt_dir)
                if d.isdigit() and os.path.isdir(os.path.join(ckpt_dir, d, "state")))


def _restore_workdir(workdir, step):
  """(config, module with the checkpoint's params and non-param variables, step)."""
  # pylint: disable=g-import-not-at-top
  from maejax.train import checkpoint as train_checkpoint
  from maejax.train import state as train_state
  ckpt_dir = checkpoint_dir(workdir)
  steps = checkpoint_steps(workdir)
  if not steps:
    raise FileNotFoundError(
        f"{workdir} holds no model: expected {CONFIG_FILE} + {STATE_DIR}/ (save_pretrained) or "
        f"checkpoints/<step>/state (a `python -m maejax.train` workdir)")
  if step is None:
    step = steps[-1]
  elif int(step) not in steps:
    raise ValueError(f"step={step}: no such checkpoint in {ckpt_dir}; kept steps: {steps}")
  config = train_checkpoint.read_config(ckpt_dir)
  module = models.create(config.model)
  _, params, rest = nnx.split(module, nnx.Param, ...)
  # As the train state stores them: pure dicts, typed PRNG keys as raw key data.
  target = jax.tree.map(_on_local_device,
                        {"params": nnx.to_pure_dict(params),
                         "rest": train_state.split_rest(module)})
  ckptr = train_checkpoint.Checkpointer(ckpt_dir, config, async_save=False)
  try:  # Only params and rest are read: the optimizer state stays on disk.
    restored = ckptr.manager.restore(int(step), args=ocp.args.Composite(
        state=ocp.args.PyTreeRestore(
            item=target, partial_restore=True,
            restore_args=ocp.checkpoint_utils.construct_restore_args(target))))["state"]
  except (ValueError, KeyError) as e:
    raise ValueError(f"checkpoint step {step} in {ckpt_dir} does not fit the model in its "
                     f"config ({config.model.name}): {e}") from None
  finally:
    ckptr.manager.close()
  is_key = lambda x: jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key)  # noqa: E731
  nnx.replace_by_pure_dict(params, jax.tree.map(jnp.asarray, dict(restored["params"])))
  nnx.replace_by_pure_dict(rest, jax.tree.map(
      lambda old, new: jax.random.wrap_key_data(new) if is_key(old) else jnp.asarray(new),
      nnx.to_pure_dict(rest), dict(restored["rest"])))
  nnx.update(module, params, rest)
  return config, module, int(step)


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


class ShardedEmbedder:
  """jit(embed) with the batch split over all local devices and the model replicated.

  `__call__(images uint8 [n, h, w, c], channel_ids int32 [n, c]) -> float32 [n, dim]` with
  n <= batch_size; shorter batches are zero-padded so each crop shape compiles once.
  """

  def __init__(self, model, *, batch_size: int, pool: str | None = None,
               block: int | None = None, devices=None):
    devices = list(devices or jax.local_devices())
    self.mesh = jax.sharding.Mesh(np.asarray(devices), ("data",))
    n = len(devices)
    self.batch_size = -(-int(batch_size) // n) * n  # A multiple of the device count.
    self.data = NamedSharding(self.mesh, P("data"))
    replicated = NamedSharding(self.mesh, P())
    self.model = model
    self.state = jax.device_put(model.state, replicated)
    kwargs = {"block": block}
    if pool is not None:
      kwargs["pool"] = pool
    graphdef = model.graphdef

    def embed(state, images, channel_ids):
      return nnx.merge(graphdef, state).embed(images, channel_ids, **kwargs)

    self._embed = jax.jit(embed, in_shardings=(replicated, self.data, self.data),
                          out_shardings=self.data)

  def check(self, crop_shape):
    """Raises the model's own clear error for crops [h, w, c] it cannot take, before running."""
    self.model.check(np.zeros((1,) + tuple(crop_shape), np.uint8))

  def __call__(self, images, channel_ids):
    n = images.shape[0]
    pad = self.batch_size - n
    if pad < 0:
      raise ValueError(f"{n} crops exceed the batch size {self.batch_size}")
    if pad:
      images = np.concatenate([images, np.zeros((pad,) + images.shape[1:], images.dtype)])
      channel_ids = np.concatenate([channel_ids, np.repeat(channel_ids[:1], pad, 0)])
    out = self._embed(self.state, jax.device_put(images, self.data),
                      jax.device_put(channel_ids.astype(np.int32), self.data))
    return np.asarray(out, np.float32)[:n]


class Model:
  """A loaded model with NumPy in, NumPy out; each function compiles once per shape."""

  def __init__(self, module, config, step=None):
    self.module, self.config, self.step = module, config, step  # step: of a training checkpoint
    self.graphdef, self.state = nnx.split(module)
    self._embedders = {}

  @functools.partial(jax.jit, static_argnums=(0,), static_argnames=("mask_ratio",))
  def _reconstruct(self, state, images, key, channel_ids, mask_ratio):
    m = nnx.merge(self.graphdef, state)
    return m.reconstruct(images, key, mask_ratio=mask_ratio, channel_ids=channel_ids)

  def check(self, images):
    """Shape errors raised here, before tracing, read as one clear line."""
    check = getattr(self.module, "check_images", None)
    if check is not None:
      check(images)

  def embed(self, images, channel_ids=None, *, batch_size=64, pool=None, block=None):
    """uint8 [batch, height, width, channels] -> float32 [batch, dim], over all local devices.

    pool: None (the model's own: mean of patch tokens for MAEs, the penultimate features for
    classifiers), "mean", "cls" or "channelwise" ([batch, channels * dim], channel-agnostic).
    block: K takes the K-th encoder block's output. The last partial batch is padded, so a run
    compiles once per image shape.
    """
    images = _check_uint8(images)
    self.check(images)
    n, c = images.shape[0], images.shape[-1]
    ids = np.broadcast_to(np.arange(c, dtype=np.int32) if channel_ids is None
                          else np.asarray(channel_ids, np.int32), (n, c))
    size = min(batch_size, n)
    if (size, pool, block) not in self._embedders:
      self._embedders[size, pool, block] = ShardedEmbedder(self, batch_size=size, pool=pool,
                                                           block=block)
    embedder = self._embedders[size, pool, block]
    return np.concatenate([embedder(images[i:i + embedder.batch_size],
                                    ids[i:i + embedder.batch_size])
                           for i in range(0, n, embedder.batch_size)])

  def reconstruct(self, images, mask_ratio=0.75, seed=0, channel_ids=None):
    """Masks `mask_ratio` of the tokens and reconstructs them.

    Returns {"pred", "target", "mask"}: float32 [batch, height, width, channels] in
    standardized units (target = the model's per-channel standardized input); mask 1 = hidden.
    """
    images = _check_uint8(images)
    self.check(images)
    ids = None if channel_ids is None else jnp.asarray(channel_ids, jnp.int32)
    out = self._reconstruct(self.state, jnp.asarray(images), jax.random.key(seed), ids,
                            mask_ratio=float(mask_ratio))
    return {k: np.asarray(v) for k, v in out.items()}
