"""The training loop: data -> sharded step -> metrics, checkpoints, plots; resume; pre-emption.

`train` reads top to bottom: checks that write nothing, the state (restored or fresh), then
one loop whose periodic actions (log and NaN guard, checkpoint and pre-emption, plots) are
each a small step guarded by one "is it time" test.
"""

import dataclasses
import logging
import math
import signal
import sys
import time
from typing import Any

import jax
import numpy as np
from flax import nnx
from jax.experimental import multihost_utils

from maejax import data
from maejax import models
from maejax import workdir as workdir_lib
from maejax.models import flops
from maejax.train import checkpoint as checkpoint_lib
from maejax.train import init_from as init_from_lib
from maejax.train import mesh as mesh_lib
from maejax.train import metrics as metrics_lib
from maejax.train import optimizer as optimizer_lib
from maejax.train import sharding as sharding_lib
from maejax.train import state as state_lib
from maejax.train import step as step_lib

BATCH_KEYS = ("image", "channel_ids", "label")
POSITIVE_FIELDS = ("total_steps", "log_every", "ckpt_every", "batch_size", "grad_accum_steps")


class NonFiniteLossError(FloatingPointError):
  """The loss became NaN/Inf; the message names the step and the last good checkpoint."""


def model_fn_for(model_config):
  return lambda key: models.create(model_config, rngs=nnx.Rngs(key))


def flops_per_image(config, stacks=False):
  """Analytic training FLOPs (forward + backward) per image; with `stacks`, a dict per
  block stack and the rest (MAEs; None for other models)."""
  channels = (int(config.data.sample_channels) if config.data.get("sample_channels")
              else len(config.data.channels))
  f = flops.train_flops_per_example(config.model, int(config.data.crop_size), channels, stacks)
  return f if stacks else float(f)


def check_settings(config) -> None:
  """One-line errors for settings that cannot train, before anything is written."""
  for name in POSITIVE_FIELDS:
    if int(config[name]) < 1:
      raise ValueError(f"config.{name}={config[name]}: must be >= 1.")
  if not float(config.lr) > 0.0:
    raise ValueError(f"config.lr={config.lr}: must be > 0 (e.g. 1e-4).")
  ratio = config.model.get("mask_ratio")
  if ratio is not None and not 0.0 < float(ratio) < 1.0:
    raise ValueError(f"config.model.mask_ratio={ratio}: must lie strictly between 0 and 1 "
                     "(the paper uses 0.75).")
  _check_sizes(config)


def _check_sizes(config) -> None:
  """Crop vs synthetic site vs patch, and a mask ratio that keeps a token per channel."""
  crop, patch = int(config.data.crop_size), config.model.get("patch_size")
  if crop < 1:
    raise ValueError(f"config.data.crop_size={crop}: must be >= 1.")
  if config.data.source == "synthetic" and crop > int(config.data.synthetic.site_size):
    raise ValueError(f"config.data.crop_size={crop}: must be <= the sites "
                     f"(config.data.synthetic.site_size={config.data.synthetic.site_size}).")
  if not patch:
    return
  if crop % int(patch):
    raise ValueError(f"config.data.crop_size={crop}: must be a multiple of "
                     f"config.model.patch_size={patch} (e.g. {max(1, crop // patch) * patch}).")
  ratio = config.model.get("mask_ratio")
  if ratio is None or config.model.get("kind", "mae") != "mae":
    return
  channels = (int(config.data.sample_channels) if config.data.get("sample_channels")
              else len(config.data.channels))
  per_channel = bool(config.model.get("channel_agnostic"))
  tokens = (crop // int(patch)) ** 2 * (channels if per_channel else 1)
  need = channels if per_channel else 1
  if int(tokens * (1.0 - float(ratio))) < need:
    raise ValueError(f"config.model.mask_ratio={ratio}: keeps {int(tokens * (1 - ratio))} of "
                     f"{tokens} tokens, must keep >= {need} (one per channel); lower it.")


def check_batch(config, mesh) -> int:
  """Validates batch_size against processes, mesh and accumulation; returns the per-host batch."""
  b, procs, accum = int(config.batch_size), jax.process_count(), int(config.grad_accum_steps)
  shards = sharding_lib.batch_shards(mesh, config.sharding_rules)
  if accum < 1 or b % (accum * shards) or b % procs:
    raise ValueError(
        f"config.batch_size={b} must be a multiple of grad_accum_steps ({accum}) x the batch "
        f"shards of the mesh ({shards}) and of the process count ({procs}); e.g. "
        f"--config.batch_size={accum * shards * procs * max(1, b // (accum * shards * procs))}.")
  return b // procs


class _Preemption:
  """SIGTERM or Ctrl-C (SIGINT) -> save at the next step and exit; a second Ctrl-C exits at
  once (SystemExit 130, no save). Multi-host runs use JAX's preemption sync point instead, so
  that every process stops at the same step."""

  SIGNALS = (signal.SIGTERM, signal.SIGINT)

  def __init__(self):
    self.flag = False
    self.reason = "preempted"
    self._old = {}
    if jax.process_count() == 1:
      try:
        self._old = {s: signal.signal(s, self._handler) for s in self.SIGNALS}
      except ValueError:  # Not the main thread.
        self._old = {}

  def _handler(self, signum, frame):
    del frame
    if signum == signal.SIGINT:
      if self.reason == "interrupted":
        print("\ninterrupted again: exiting without saving", file=sys.stderr, flush=True)
        raise SystemExit(130)
      self.reason = "interrupted"
      print("\ninterrupted: saving a checkpoint after this step (Ctrl-C again to exit now)",
            file=sys.stderr, flush=True)
    self.flag = True

  def reached(self, manager, step: int) -> bool:
    if jax.process_count() > 1:
      return manager.reached_preemption(step)
    return self.flag

  def restore(self):
    for s, old in self._old.items():
      signal.signal(s, old)


@dataclasses.dataclass
class _Meter:
  """Losses, cumulative FLOPs and throughput between log steps (compilation excluded)."""
  step: int
  train_flops: float
  flops_per_step: float
  peak: float | None
  first_loss: float | None = None
  last_loss: float | None = None
  since_time: float | None = None
  since_step: int = 0

  def stepped(self, step: int, metrics) -> None:
    self.step = step
    self.train_flops += self.flops_per_step
    if self.since_time is None:  # The first step compiled: time from its end.
      jax.block_until_ready(metrics["loss"])
      self.since_time, self.since_step = time.time(), step

  def scalars(self, metrics, batch_size: int) -> dict[str, float]:
    """Fetches the step's metrics and adds throughput since the last call."""
    out = {k: float(v) for k, v in jax.device_get(metrics).items()}
    now, n = time.time(), self.step - self.since_step
    if n > 0:
      out.update(metrics_lib.throughput(n * batch_size, now - self.since_time,
                                        self.flops_per_step / batch_size, self.peak,
                                        jax.device_count()))
    self.since_time, self.since_step = now, self.step
    out["train_flops"] = self.train_flops
    self.first_loss = out["loss"] if self.first_loss is None else self.first_loss
    self.last_loss = out["loss"]
    return out


def _check_finite(scalars, step, ckpt) -> None:
  if math.isfinite(scalars["loss"]) and math.isfinite(scalars["grad_norm"]):
    return
  ckpt.wait()
  good = ckpt.latest_step()
  raise NonFiniteLossError(
      f"loss is {scalars['loss']} (grad norm {scalars['grad_norm']}) at step {step}; stopped. "
      f"Last good checkpoint: "
      f"{'step %d in %s' % (good, ckpt.directory) if good is not None else 'none'}. "
      "Try a lower --config.lr, a longer --config.warmup_frac or --config.grad_clip_norm=1.0.")


def _local_batch(batch: dict) -> dict:
  return {k: np.asarray(v) for k, v in batch.items() if k in BATCH_KEYS}


class _Plotter:
  """Reconstructions of one fixed crop (the first batch's busiest), every plot_every: PNGs
  and TensorBoard images, rows named by the source's channel names (stains)."""

  def __init__(self, config, spec, mesh, workdir, compiler_options, source):
    self.every, self.seed = int(config.plot_every), int(config.seed)
    self.dir = workdir_lib.path(workdir) / workdir_lib.PLOTS
    self.names = dict(zip(np.asarray(source.channel_ids).tolist(), source.channel_names))
    self.example = None

    def fn(params, images, channel_ids, key):
      out = state_lib.merge(spec, params).reconstruct(images, key, channel_ids=channel_ids)
      return {k: out[k][0] for k in ("pred", "target", "mask")}
    self._fn = jax.jit(fn, out_shardings=sharding_lib.replicated(mesh),
                       compiler_options=compiler_options)

  def pick(self, local: dict) -> None:
    if self.every > 0 and self.example is None:
      i = _busiest(local["image"])
      self.example = multihost_utils.broadcast_one_to_all(
          {k: v[i:i + 1] for k, v in local.items() if k in ("image", "channel_ids")})

  def maybe_plot(self, state, step: int, writer, *, last: bool = False) -> None:
    """Plots at every multiple of plot_every and at the run's `last` step."""
    if self.every <= 0 or (step % self.every and not last):
      return
    key = jax.random.fold_in(jax.random.key(self.seed), step)
    ids = self.example.get("channel_ids")
    out = self._fn(state["params"], self.example["image"], ids, key)
    if jax.process_index() == 0:
      out = {k: np.asarray(v.addressable_data(0)) for k, v in out.items()}
      names = None if ids is None else [self.names.get(int(i), f"channel {int(i)}")
                                        for i in np.asarray(ids)[0]]
      writer.reconstruction(self.dir / f"reconstruction_{step:08d}.png", out, step, names)


def _busiest(images) -> int:
  """Index of the crop with the most contrast (cells rather than background) to plot;
  images uint8 [b, h, w, c]."""
  return int(np.argmax(np.asarray(images, np.float32).std(axis=(1, 2)).sum(-1)))


def train(config, workdir, *, resume: bool = True, progress: bool = True,
          stop_at: int | None = None, compiler_options=None) -> dict[str, Any]:
  """Trains (or resumes) `config` in `workdir`; returns the summary dict.

  A workdir that holds checkpoints is only ever resumed, never trained from step 0: a config
  that changes the state (checkpoint.STATE_FIELDS) or checkpoints that cannot be read stop
  with a CheckpointError (a ValueError) before anything is written. The workdir is locked
  for the run (workdir.Lock): a second run on it is a LockedError naming the first.
  config.init_from: a run with no checkpoints starts from those weights (train.init_from),
  saved as checkpoint 0; a resumed run ignores it and says so.
  stop_at: stop (with a checkpoint) after this step, as a pre-emption would.
  compiler_options: XLA options for the jitted init and step (tests compile faster with
  {"xla_backend_optimization_level": 0}).
  """
  check_settings(config)
  mesh_lib.maybe_initialize_distributed(config.distributed)
  mesh = mesh_lib.make_mesh(config.mesh)
  check_batch(config, mesh)
  with workdir_lib.locked(workdir_lib.lock_file(workdir)):
    return _train(config, workdir, mesh, resume=resume, progress=progress, stop_at=stop_at,
                  compiler_options=compiler_options)


def _train(config, workdir, mesh, *, resume, progress, stop_at, compiler_options):
  """`train` inside the workdir's lock."""
  rules = tuple(tuple(r) for r in config.sharding_rules)
  checkpoint_lib.check_resumable(workdir, config, resume=resume)

  tx = optimizer_lib.make_optimizer(config)
  spec = state_lib.make_spec(model_fn_for(config.model), tx, mesh, rules)
  init_from = str(config.get("init_from") or "")
  start_plan = None
  if init_from and not workdir_lib.checkpoint_steps(workdir):  # Resuming wins.
    start_plan = init_from_lib.plan(init_from, config.model, spec.abstract["params"])
  source = data.make_source(config.data)
  data_iter = data.train_iterator(config.data, batch_size=int(config.batch_size),
                                  seed=int(config.seed), shard_index=jax.process_index(),
                                  shard_count=jax.process_count(), source=source)
  ckpt = checkpoint_lib.Checkpointer(workdir, config)
  restored = ckpt.restore(spec.abstract, data_iter)
  is_main = jax.process_index() == 0
  if restored is not None:
    start, state, meta = restored
    train_flops = float(meta.get("train_flops", 0.0))
    ckpt.init_from = meta.get("init_from")
    if is_main:
      ignored = f"; init_from {init_from} ignored" if init_from else ""
      print(f"Resuming from step {start} ({ckpt.directory}){ignored}.", flush=True)
  else:
    start, train_flops = 0, 0.0
    loaded = None
    if start_plan is not None:
      loaded = init_from_lib.place(init_from_lib.read(start_plan), spec.abstract["params"])
      ckpt.init_from = start_plan.provenance()
      if is_main:
        print(start_plan.summary(spec.abstract["params"]), flush=True)
    state = state_lib.init_state(model_fn_for(config.model), tx, spec, int(config.seed),
                                 compiler_options, loaded)
    if start_plan is not None:  # The imported state: a baseline for sweeps, resumable.
      ckpt.save(0, state, data_iter)
  if is_main:
    workdir_lib.write_config(workdir, config)

  train_step = step_lib.jit_train_step(
      step_lib.make_train_step(spec, tx, optimizer_lib.schedule(config),
                               int(config.grad_accum_steps)),
      spec, mesh, rules, compiler_options)
  total, batch_size = int(config.total_steps), int(config.batch_size)
  end = min(total, stop_at) if stop_at is not None else total
  meter = _Meter(start, train_flops, flops_per_image(config) * batch_size,
                 metrics_lib.peak_tflops_per_device(config))
  plotter = _Plotter(config, spec, mesh, workdir, compiler_options, source)
  writer = metrics_lib.Writer(workdir, start_step=start)
  writer.config(config, start)
  bar = metrics_lib.Progress(start, total, enabled=progress, batch_size=batch_size)
  preempt = _Preemption()
  t0, status, step = time.time(), "finished", start
  try:
    with jax.set_mesh(mesh), nnx.logical_axis_rules(rules):
      while step < end:
        local = _local_batch(next(data_iter))
        plotter.pick(local)
        state, metrics = train_step(state, sharding_lib.to_global_batch(local, mesh, rules))
        step += 1
        meter.stepped(step, metrics)
        log_now = step % int(config.log_every) == 0 or step == end
        preempted = preempt.reached(ckpt.manager, step)
        save_now = step % int(config.ckpt_every) == 0 or step == end or preempted
        if log_now or save_now:
          scalars = meter.scalars(metrics, batch_size)
          _check_finite(scalars, step, ckpt)  # Before saving: never checkpoint a NaN state.
          if log_now:
            writer.write(step, scalars)
            bar.log(step, scalars)
        if save_now:
          ckpt.save(step, state, data_iter, train_flops=meter.train_flops,
                    images_seen=step * batch_size)
        bar.update(1)
        plotter.maybe_plot(state, step, writer, last=step == total)
        if preempted:
          status = preempt.reason
          break
      if stop_at is not None and step == stop_at and step < total:
        status = "stopped"
  finally:
    bar.close()
    ckpt.close()
    writer.close()
    preempt.restore()
  summary = {"status": status, "step": step, "total_steps": total,
             "first_loss": meter.first_loss, "final_loss": meter.last_loss,
             "wall_s": round(time.time() - t0, 2), "train_flops": meter.train_flops,
             "workdir": str(workdir_lib.path(workdir)), "checkpoint_step": ckpt.latest_step(),
             "init_from": ckpt.init_from}
  logging.info("training summary: %s", summary)
  if is_main:
    print(f"{status} at step {step}/{total}: loss {_fmt(meter.first_loss)} -> "
          f"{_fmt(meter.last_loss)}, {summary['wall_s']:.0f} s, "
          f"{meter.train_flops / 1e15:.3g} PFLOP, checkpoint step "
          f"{summary['checkpoint_step']} in {summary['workdir']}", flush=True)
  return summary


def _fmt(x):
  return "n/a" if x is None else f"{x:.4f}"
