"""The training loop: data -> sharded step -> metrics, checkpoints, plots; resume; pre-emption."""

import logging
import math
import os
import signal
import time
from typing import Any

import jax
import numpy as np
from flax import nnx
from jax.experimental import multihost_utils

from maejax.train import checkpoint as checkpoint_lib
from maejax.train import config as config_lib
from maejax.train import mesh as mesh_lib
from maejax.train import metrics as metrics_lib
from maejax.train import optimizer as optimizer_lib
from maejax.train import sharding as sharding_lib
from maejax.train import state as state_lib
from maejax.train import step as step_lib

BATCH_KEYS = ("image", "channel_ids", "label")


class NonFiniteLossError(FloatingPointError):
  """The loss became NaN/Inf; the message names the step and the last good checkpoint."""


def model_fn_for(model_config):
  from maejax import models  # pylint: disable=g-import-not-at-top
  return lambda key: models.create(model_config, rngs=nnx.Rngs(key))


def flops_per_image(config) -> float | None:
  """Analytic training FLOPs (forward + backward) per image; None if not countable."""
  try:
    from maejax.models import flops  # pylint: disable=g-import-not-at-top
  except ImportError:
    return None
  return float(flops.train_flops_per_example(
      config.model, int(config.data.crop_size), len(config.data.channels)
      if not config.data.get("sample_channels") else int(config.data.sample_channels)))


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
  """SIGTERM -> save at the next step and exit. Multi-host runs use JAX's preemption sync
  point instead, so that every process stops at the same step."""

  def __init__(self):
    self.flag = False
    self._old = None
    if jax.process_count() == 1:
      try:
        self._old = signal.signal(signal.SIGTERM, self._handler)
      except ValueError:  # Not the main thread.
        self._old = None

  def _handler(self, signum, frame):
    del signum, frame
    self.flag = True

  def reached(self, manager, step: int) -> bool:
    if jax.process_count() > 1:
      return manager.reached_preemption(step)
    return self.flag

  def restore(self):
    if self._old is not None:
      signal.signal(signal.SIGTERM, self._old)


def _local_batch(batch: dict) -> dict:
  return {k: np.asarray(v) for k, v in batch.items() if k in BATCH_KEYS}


def make_reconstruct(spec, mesh, compiler_options=None):
  """jit(params, rest, images, channel_ids, key) -> reconstruction of one image, replicated."""
  def fn(params, rest, images, channel_ids, key):
    model = state_lib.merge(spec, params, rest)
    out = model.reconstruct(images, key, channel_ids=channel_ids)
    return {k: out[k][0] for k in ("pred", "target", "mask")}
  return jax.jit(fn, out_shardings=sharding_lib.replicated(mesh),
                 compiler_options=compiler_options)


def train(config, workdir: str, *, resume: bool = True, progress: bool = True,
          stop_at: int | None = None, compiler_options=None) -> dict[str, Any]:
  """Trains (or resumes) `config` in `workdir`; returns the summary dict.

  stop_at: stop (with a checkpoint) after this step, as a pre-emption would.
  compiler_options: XLA options for the jitted init and step (tests compile faster with
  {"xla_backend_optimization_level": 0}).
  """
  from maejax import data  # pylint: disable=g-import-not-at-top
  mesh_lib.maybe_initialize_distributed(config.distributed)
  mesh = mesh_lib.make_mesh(config.mesh)
  rules = tuple(tuple(r) for r in config.sharding_rules)
  check_batch(config, mesh)
  is_main = jax.process_index() == 0
  if is_main:
    os.makedirs(workdir, exist_ok=True)
    with open(os.path.join(workdir, "config.json"), "w") as f:
      f.write(config_lib.to_json(config))

  model_fn = model_fn_for(config.model)
  tx = optimizer_lib.make_optimizer(config)
  schedule = optimizer_lib.schedule(config)
  spec = state_lib.make_spec(model_fn, tx, mesh, rules)
  data_iter = data.train_iterator(config.data, batch_size=int(config.batch_size),
                                  seed=int(config.seed),
                                  shard_index=jax.process_index(),
                                  shard_count=jax.process_count())
  ckpt = checkpoint_lib.Checkpointer(os.path.join(workdir, "checkpoints"), config)
  flops_img = flops_per_image(config)
  peak = metrics_lib.peak_tflops_per_device(config)

  restored = ckpt.restore(spec.abstract, data_iter) if resume else None
  if restored is not None:
    start, state, meta = restored
    train_flops = float(meta.get("train_flops", 0.0))
    logging.info("resumed from step %d in %s", start, ckpt.directory)
    if is_main:
      print(f"Resuming from step {start} ({ckpt.directory}).", flush=True)
  else:
    if ckpt.latest_step() is not None:
      raise ValueError(f"{ckpt.directory} already holds checkpoints (latest step "
                       f"{ckpt.latest_step()}) and resume is off; pick another --workdir.")
    start, train_flops = 0, 0.0
    state = state_lib.init_state(model_fn, tx, spec, int(config.seed), compiler_options)

  train_step = step_lib.jit_train_step(
      step_lib.make_train_step(spec, tx, schedule, int(config.grad_accum_steps)),
      spec, mesh, rules, compiler_options)
  total = int(config.total_steps)
  end = min(total, stop_at) if stop_at is not None else total
  writer = metrics_lib.Writer(workdir)
  bar = metrics_lib.Progress(start, total, enabled=progress)
  preempt = _Preemption()
  reconstruct = make_reconstruct(spec, mesh, compiler_options) if int(config.plot_every) > 0 else None
  plot_example = None
  t0 = time.time()
  last = {"time": None, "step": start}
  first_loss = last_loss = None
  status = "finished"
  step = start
  try:
    with jax.set_mesh(mesh), nnx.logical_axis_rules(rules):
      while step < end:
        local = _local_batch(next(data_iter))
        if plot_example is None and reconstruct is not None:
          i = _busiest(local["image"])
          plot_example = multihost_utils.broadcast_one_to_all(
              {k: v[i:i + 1] for k, v in local.items() if k in ("image", "channel_ids")})
        batch = sharding_lib.to_global_batch(local, mesh, rules)
        state, metrics = train_step(state, batch)
        step += 1
        train_flops += (flops_img or 0.0) * int(config.batch_size)
        if last["time"] is None:  # Exclude compilation from throughput.
          jax.block_until_ready(metrics["loss"])
          last.update(time=time.time(), step=step)
        log_now = step % int(config.log_every) == 0 or step == end
        save_now = step % int(config.ckpt_every) == 0 or step == end
        preempted = preempt.reached(ckpt.manager, step)
        if log_now or save_now or preempted:
          scalars = {k: float(v) for k, v in jax.device_get(metrics).items()}
          if not (math.isfinite(scalars["loss"]) and math.isfinite(scalars["grad_norm"])):
            ckpt.wait()
            good = ckpt.latest_step()
            raise NonFiniteLossError(
                f"loss is {scalars['loss']} (grad norm {scalars['grad_norm']}) at step {step}; "
                f"stopped. Last good checkpoint: "
                f"{'step %d in %s' % (good, ckpt.directory) if good is not None else 'none'}. "
                "Try a lower --config.lr, a longer --config.warmup_frac or "
                "--config.grad_clip_norm=1.0.")
          first_loss = scalars["loss"] if first_loss is None else first_loss
          last_loss = scalars["loss"]
          if log_now:
            now = time.time()
            n = step - last["step"]
            if n > 0:
              scalars.update(metrics_lib.throughput(
                  n * int(config.batch_size), now - last["time"], flops_img, peak,
                  jax.device_count()))
            last.update(time=now, step=step)
            scalars["train_flops"] = train_flops
            writer.write(step, scalars)
            bar.update(0, scalars)
          if save_now or preempted:
            ckpt.save(step, state, data_iter, train_flops=train_flops,
                      images_seen=step * int(config.batch_size))
        bar.update(1)
        if reconstruct is not None and step % int(config.plot_every) == 0:
          _plot(reconstruct, state, plot_example, workdir, step, int(config.seed))
        if preempted:
          status = "preempted"
          break
      if stop_at is not None and step == stop_at and step < total:
        status = "stopped"
  finally:
    bar.close()
    ckpt.close()
    writer.close()
    preempt.restore()
  summary = {"status": status, "step": step, "total_steps": total, "first_loss": first_loss,
             "final_loss": last_loss, "wall_s": round(time.time() - t0, 2),
             "train_flops": train_flops, "workdir": os.path.abspath(workdir),
             "checkpoint_step": ckpt.latest_step()}
  if is_main:
    print(f"{status} at step {step}/{total}: loss {_fmt(first_loss)} -> {_fmt(last_loss)}, "
          f"{summary['wall_s']:.0f} s, {train_flops / 1e15:.3g} PFLOP, checkpoint step "
          f"{summary['checkpoint_step']} in {summary['workdir']}", flush=True)
  return summary


def _fmt(x):
  return "n/a" if x is None else f"{x:.4f}"


def _busiest(images) -> int:
  """Index of the crop with the most contrast (cells rather than background) to plot;
  images uint8 [b, h, w, c]."""
  return int(np.argmax(np.asarray(images, np.float32).std(axis=(1, 2)).sum(-1)))


def _plot(reconstruct, state, example, workdir, step, seed):
  key = jax.random.fold_in(jax.random.key(seed), step)
  out = reconstruct(state["params"], state["rest"], example["image"],
                    example.get("channel_ids"), key)
  if jax.process_index() == 0:
    out = {k: np.asarray(v.addressable_data(0)) for k, v in out.items()}
    metrics_lib.save_reconstruction_png(
        os.path.join(workdir, "plots", f"reconstruction_{step:08d}.png"), out, step)
