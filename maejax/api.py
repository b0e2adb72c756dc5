"""The user-facing surface: `maejax.load(DIR)` -> a model with NumPy `embed` / `reconstruct`.

A pretrained directory (written by `save_pretrained` or `python -m maejax.convert`) holds
`config.json` (the run config; its `model` entry names and describes the architecture) and
`state/` (an Orbax checkpoint of the model's variables). `load` also takes a training workdir.
"""

from __future__ import annotations

import functools
import inspect
import json
import logging

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import orbax.checkpoint as ocp
from flax import nnx
from jax.sharding import NamedSharding, PartitionSpec as P

from maejax import models
from maejax.models import stack
from maejax import workdir as workdir_lib


def save_pretrained(model, config, out_dir):
  """Writes `model` and its run config (ConfigDict or dict with a `model` entry)."""
  out = workdir_lib.path(out_dir)
  workdir_lib.write_config(out, config)
  workdir_lib.save_pretrained_state(out, nnx.state(model))
  return str(out)


def _on_local_device(x) -> jax.ShapeDtypeStruct:
  # Not the saved sharding: its device (cpu:0) is not this process's in a multi-host run.
  return jax.ShapeDtypeStruct(x.shape, x.dtype,
                              sharding=jax.sharding.SingleDeviceSharding(jax.local_devices()[0]))


DTYPES = ("float32", "bfloat16")


def load(directory, *, step=None, dtype=None):
  """Loads any maejax checkpoint directory -> `Model` ready to embed images.

  `directory` (local or `gs://...`): a `save_pretrained` / `python -m maejax.convert` folder
  (config.json + state/), or a training workdir of `python -m maejax.train` (also its
  `checkpoints/` folder or one `checkpoints/<step>` folder). step: for workdirs, which
  checkpoint (default: the newest one that can be read). dtype: the compute precision
  ("float32" or "bfloat16"; default: the one the model was trained with); parameters stay
  float32 either way.
  """
  if dtype is not None and dtype not in DTYPES:
    raise ValueError(f"dtype={dtype!r}: use one of {', '.join(DTYPES)}")
  model = _load(directory, step)
  return model if dtype is None else model.with_dtype(dtype)


def _load(directory, step):
  d = workdir_lib.path(directory)
  if not d.is_dir():
    raise FileNotFoundError(
        f"{d} is not a directory: pass a training workdir, a save_pretrained folder "
        "or a `python -m maejax.convert` output folder")
  if workdir_lib.is_pretrained(d):
    if step is not None:
      raise ValueError(f"step={step}: {d} is a pretrained folder with one state; "
                       "step selects a checkpoint of a training workdir only")
    config = workdir_lib.read_config(d)
    module = models.create(config.model)
    abstract = jax.tree.map(_on_local_device, nnx.state(module))
    try:
      state = workdir_lib.restore_pretrained_state(d, abstract)
    except ValueError:
      _check_not_stored_positions(d, config)
      raise
    nnx.update(module, state)
    return Model(module, config)
  return _load_checkpoint(*workdir_lib.resolve(d, step))


def _check_not_stored_positions(d, config):
  """One line for a folder converted before maejax computed its sin-cos positions (before
  2026-12-01): its state holds the imported table (`tokenizer.pos`), whose layout (OpenPhenom's
  is row first) the config does not record, so only converting it again imports it exactly."""
  try:
    with ocp.StandardCheckpointer() as ckptr:
      tree = ckptr.metadata(d / workdir_lib.STATE).item_metadata.tree
  except (OSError, ValueError, KeyError, AttributeError):
    return  # Unreadable metadata: the restore error says more.
  if "pos" not in tree.get("encoder", {}).get("tokenizer", {}):
    return
  source = config.get("source") or {}
  command = (f"`python -m maejax.convert {source['format']} --checkpoint {source['checkpoint']} "
             f"--out {d}`" if {"format", "checkpoint"} <= set(source) else
             "`python -m maejax.convert`")
  raise ValueError(f"{d} was converted by an older maejax that stored its position tables; "
                   f"convert the original weights again with {command}")


def _load_checkpoint(workdir, step):
  """A training checkpoint's model (params only: the optimizer state stays on disk). With no
  step, a newest checkpoint that cannot be read is passed over with one warning line."""
  steps = workdir_lib.checkpoint_steps(workdir)
  if not steps:
    foreign = _foreign_weights(workdir)
    if foreign:
      raise FileNotFoundError(foreign)
    raise FileNotFoundError(
        f"{workdir} holds no model: expected {workdir_lib.CONFIG} + {workdir_lib.STATE}/ "
        "(save_pretrained) or checkpoints/<step>/ (a `python -m maejax.train` workdir)")
  if step is not None and int(step) not in steps:
    raise ValueError(f"step={step}: no such checkpoint in "
                     f"{workdir_lib.checkpoints_dir(workdir)}; kept steps: {steps}")
  candidates = [int(step)] if step is not None else steps[::-1]
  errors = []
  with workdir_lib.manager(workdir) as m:
    for s in candidates:
      try:
        return _restore(m, s)
      except Exception as e:  # pylint: disable=broad-except  (unreadable: try the previous)
        logging.debug("checkpoint %d of %s unreadable", s, workdir, exc_info=True)
        errors.append(f"step {s}: {type(e).__name__}: {str(e).strip()[:200]}")
        if s != candidates[-1]:
          print(f"WARNING: checkpoint step {s} in {workdir} cannot be read ({errors[-1]}); "
                "loading the previous one.", flush=True)
  raise ValueError(f"no checkpoint in {workdir} can be read ({'; '.join(errors)})")


def _foreign_weights(d) -> str | None:
  """For a HuggingFace ViTMAE or an OpenPhenom folder (weights maejax reads only through
  `python -m maejax.convert`): one line naming the convert command; else None."""
  out = d.parent / f"{d.name}_maejax"
  config = {}
  if (d / workdir_lib.CONFIG).is_file():
    try:
      config = json.loads((d / workdir_lib.CONFIG).read_text())
    except (OSError, ValueError):
      config = {}
  kind = config.get("model_type") if isinstance(config, dict) else None
  if kind == "vit_mae":
    what, command = "a HuggingFace ViTMAE folder", f"hf-vitmae --checkpoint {d}"
  elif kind == "MAE" or (kind is None and (d / "model.safetensors").is_file()):
    what = "OpenPhenom weights"
    command = f"openphenom --checkpoint {d / 'model.safetensors'}"
  elif kind is not None:
    return (f"{d} is a HuggingFace {kind!r} model; maejax imports only ViTMAE "
            "(`python -m maejax.convert hf-vitmae`) and OpenPhenom "
            "(`python -m maejax.convert openphenom`) weights")
  else:
    return None
  return (f"{d} holds {what}, not a maejax model: convert it once with "
          f"`python -m maejax.convert {command} --out {out}`, then maejax.load({str(out)!r})")


def _restore(m, step):
  config = workdir_lib.checkpoint_config(m, step)
  module = models.create(config.model)
  params = nnx.state(module, nnx.Param)
  target = jax.tree.map(_on_local_device, nnx.to_pure_dict(params))
  nnx.replace_by_pure_dict(params, jax.tree.map(jnp.asarray,
                                                workdir_lib.restore_params(m, step, target)))
  nnx.update(module, params)
  return Model(module, config, step=step)


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


CROP_STATISTICS = ("mean", "std")  # Per channel, in this order: [b, len(CROP_STATISTICS) * c].


def crop_statistics(images):
  """uint8 [b, h, w, c] -> float32 [b, 2c]: each channel's mean, then its std, in [0, 1]
  units: what the models' per-crop input standardization (tokenizers.standardize) removes."""
  x = images.astype(jnp.float32) / 255.0
  return jnp.concatenate([x.mean(axis=(1, 2)), x.std(axis=(1, 2))], axis=-1)


class ShardedEmbedder:
  """jit(embed) with the batch split over all local devices and the model replicated.

  `__call__(images uint8 [n, h, w, c], channel_ids int32 [n, c]) -> float32 [n, dim]` with
  n <= batch_size; shorter batches are zero-padded so each crop shape compiles once. With
  `crop_stats`, each crop's `crop_statistics` follow its embedding: [n, dim + 2c].
  """

  def __init__(self, model, *, batch_size: int, pool: str | None = None,
               block: int | None = None, crop_stats: bool = False, devices=None):
    devices = list(devices or jax.local_devices())
    self.mesh = jax.sharding.Mesh(np.asarray(devices), ("data",))
    n = len(devices)
    self.batch_size = -(-int(batch_size) // n) * n  # A multiple of the device count.
    self.data = NamedSharding(self.mesh, P("data"))
    replicated = NamedSharding(self.mesh, P())
    self.model, self.pool, self.block = model, pool, block  # pool None: the model's own.
    self.crop_stats = bool(crop_stats)
    self.state = jax.device_put(model.state, replicated)
    kwargs = {"block": block}
    if pool is not None:
      kwargs["pool"] = pool
    graphdef = model.graphdef

    def embed(state, images, channel_ids):
      out = nnx.merge(graphdef, state).embed(images, channel_ids, **kwargs)
      return jnp.concatenate([out, crop_statistics(images)], -1) if crop_stats else out

    self._embed = jax.jit(embed, in_shardings=(replicated, self.data, self.data),
                          out_shardings=self.data)

  def check(self, crop_shape):
    """Raises the model's own clear error for crops [h, w, c] it cannot take, before running."""
    self.model.check(np.zeros((1,) + tuple(crop_shape), np.uint8))

  def _run(self, fn, images, channel_ids):
    n = images.shape[0]
    pad = self.batch_size - n
    if pad < 0:
      raise ValueError(f"{n} crops exceed the batch size {self.batch_size}")
    if pad:
      images = np.concatenate([images, np.zeros((pad,) + images.shape[1:], images.dtype)])
      channel_ids = np.concatenate([channel_ids, np.repeat(channel_ids[:1], pad, 0)])
    # The mesh and rules at trace time: the batch split is what TPU attention runs per chip.
    with jax.set_mesh(self.mesh), nnx.logical_axis_rules(stack.DATA_PARALLEL_RULES):
      return fn(self.state, jax.device_put(images, self.data),
                jax.device_put(channel_ids.astype(np.int32), self.data))

  def __call__(self, images, channel_ids):
    return np.asarray(self._run(self._embed, images, channel_ids), np.float32)[:images.shape[0]]

  def compiled_text(self, images, channel_ids) -> str:
    """The optimized HLO of the program that embeds a batch like `images` (for reports of
    which kernels the backend chose)."""
    return self._run(lambda *a: self._embed.lower(*a).compile().as_text(), images, channel_ids)


class Model:
  """A loaded model with NumPy in, NumPy out; each function compiles once per shape."""

  def __init__(self, module, config, step=None):
    self.module, self.config, self.step = module, config, step  # step: of a training checkpoint
    self.graphdef, self.state = nnx.split(module)
    self._embedders = {}

  def __repr__(self) -> str:
    """Model('camae_s16', 21,960,768 parameters, channels 1..11 (channel-agnostic), pool 'mean')."""
    cfg = self.config.model
    params = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(nnx.state(self.module,
                                                                            nnx.Param)))
    channels = (f"channels 1..{cfg.max_channels} (channel-agnostic)"
                if cfg.get("channel_agnostic") else f"{cfg.channels} channels")
    pool = inspect.signature(self.module.embed).parameters["pool"].default or cfg.get("pool")
    step = "" if self.step is None else f", step {self.step}"
    return f"Model({cfg.name!r}, {params:,} parameters, {channels}, pool {pool!r}{step})"

  @functools.partial(jax.jit, static_argnums=(0,), static_argnames=("mask_ratio",))
  def _reconstruct(self, state, images, key, channel_ids, mask_ratio):
    m = nnx.merge(self.graphdef, state)
    return m.reconstruct(images, key, mask_ratio=mask_ratio, channel_ids=channel_ids)

  def with_dtype(self, dtype: str) -> "Model":
    """The same weights computing in `dtype` (the model's `dtype` field: activations and
    matmul inputs; parameters stay float32)."""
    if dtype == self.config.model.get("dtype", "float32"):
      return self
    config = ml_collections.ConfigDict(self.config.to_dict())
    config.model.dtype = dtype
    module = nnx.eval_shape(lambda: models.create(config.model))
    nnx.update(module, self.state)
    return Model(module, config, step=self.step)

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
    embedder = self.embedder(min(batch_size, n), pool=pool, block=block)
    return np.concatenate([embedder(images[i:i + embedder.batch_size],
                                    ids[i:i + embedder.batch_size])
                           for i in range(0, n, embedder.batch_size)])

  def embedder(self, batch_size: int, *, pool=None, block=None) -> ShardedEmbedder:
    """The (cached) compiled embedding of batches of up to `batch_size` crops."""
    key = (batch_size, pool, block)
    if key not in self._embedders:
      self._embedders[key] = ShardedEmbedder(self, batch_size=batch_size, pool=pool, block=block)
    return self._embedders[key]

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
