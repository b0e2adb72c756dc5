"""Speed of the real sharded train step of a config (the one `python -m maejax.train` runs:
same mesh, rules, optimizer, donation) on random device-resident batches, so data loading is
not measured. Figures: images/s, TFLOP/s and MFU from the analytic FLOP count
(maejax.models.flops), and XLA's own count of the compiled step beside it as a check (None for
scanned block stacks: XLA counts a loop body once whatever its trip count).
"""

import time

import jax
import numpy as np
from flax import nnx

from maejax import config as config_lib
from maejax.models import flops
from maejax.models import stack
from maejax.train import loop
from maejax.train import mesh as mesh_lib
from maejax.train import metrics as metrics_lib
from maejax.train import optimizer as optimizer_lib
from maejax.train import sharding as sharding_lib
from maejax.train import state as state_lib
from maejax.train import step as step_lib


def model_config(name: str, *, batch_size: int, channels: int | None = None,
                 image_size: int | None = None, dtype: str = "float32", remat: bool = False):
  """A one-device AdamW run config of registry model `name` fed images of the given shape
  (default: the model's own)."""
  config = config_lib.experiment("bench_model", name, dtype=dtype,
                                 **({"remat": True} if remat else {}))
  config.data.crop_size = image_size or int(config.model.img_size)
  config.data.channels = tuple(range(channels or int(config.model.channels)))
  config.batch_size, config.optimizer, config.lr = batch_size, "adamw", 1e-4
  config.mesh.data = 1
  return config


def random_batch(config, mesh, rules) -> dict:
  """A global batch of random uint8 crops [batch, crop, crop, channels] (+ channel ids)."""
  b, size = int(config.batch_size) // jax.process_count(), int(config.data.crop_size)
  channels = int(config.data.sample_channels) or len(config.data.channels)
  rng = np.random.default_rng(0)
  return sharding_lib.to_global_batch(
      {"image": rng.integers(0, 256, (b, size, size, channels), dtype=np.uint8),
       "channel_ids": np.tile(np.arange(channels, dtype=np.int32), (b, 1)),
       "label": np.zeros((b,), np.int32)}, mesh, rules)


def alternate(run, other, steps: int) -> tuple[list[float], list[float]]:
  """Seconds of `steps` calls of `run` and, if given, of `other` (warmed up here): blocks of
  `steps` calls of each, in two rounds (run, other, run, other).

  Both see the same machine load; blocks, not single calls, because a machine that pages out
  memory left idle for a second (VMs returning it to their host) would otherwise fault one
  framework's buffers back in after every call of the other.
  """
  def block(fn):
    out = []
    for _ in range(max(steps, 1)):
      t0 = time.perf_counter()
      fn()
      out.append(time.perf_counter() - t0)
    return out

  if other is None:
    return block(run), []
  other()
  times, other_times = [], []
  for _ in range(2):
    times += block(run)
    other_times += block(other)
  return times, other_times


class StepBench:
  """The real sharded train step of `config` on `devices`: its state, a random batch, the
  compiled step and its timing, as separate calls (the GPU check fits the batch between them)."""

  def __init__(self, config, devices, compiler_options=None):
    """compiler_options: XLA options of both programs, e.g. {"xla_backend_optimization_level":
    0} where compile time matters more than run time."""
    loop.check_settings(config)
    self.config, self.devices = config, list(devices)
    self.mesh = mesh_lib.make_mesh(config.mesh, self.devices)
    self.rules = tuple(tuple(r) for r in config.sharding_rules)
    model_fn, tx = loop.model_fn_for(config.model), optimizer_lib.make_optimizer(config)
    self.spec = state_lib.make_spec(model_fn, tx, self.mesh, self.rules)
    self._init = lambda: state_lib.init_state(model_fn, tx, self.spec, int(config.seed),
                                              compiler_options)
    self.train_step = step_lib.jit_train_step(
        step_lib.make_train_step(self.spec, tx, optimizer_lib.schedule(config),
                                 int(config.grad_accum_steps)), self.spec, self.mesh, self.rules,
        compiler_options)

  def init_state(self):
    return self._init()

  def batch(self) -> dict:
    """A random batch of `config.batch_size` (read at each call)."""
    loop.check_batch(self.config, self.mesh)
    return random_batch(self.config, self.mesh, self.rules)

  def compile(self, state, batch):
    """(the compiled step, compile seconds)."""
    with jax.set_mesh(self.mesh), nnx.logical_axis_rules(self.rules):
      t0 = time.perf_counter()
      compiled = self.train_step.lower(state, batch).compile()
    return compiled, time.perf_counter() - t0

  def step(self, compiled, state, batch):
    """(state, metrics) after one step, finished; the state passed in is donated."""
    with jax.set_mesh(self.mesh), nnx.logical_axis_rules(self.rules):
      state, metrics = compiled(state, batch)
    return state, jax.block_until_ready(metrics)

  def run(self, compiled, state, batch, steps: int, interleave=None):
    """A warm-up step, then `alternate` of `steps` steps (and `interleave`): (state, metrics of
    the last step, step seconds, interleave's seconds). The state passed in is donated."""
    state, metrics = self.step(compiled, state, batch)

    def step():
      nonlocal state, metrics
      state, metrics = self.step(compiled, state, batch)

    times, other = alternate(step, interleave, steps)
    return state, metrics, times, other

  def figures(self, compiled, compile_s: float, metrics, times, other=()) -> dict:
    """The bench's figures of a run (median step)."""
    config, n = self.config, len(self.devices)
    step_s = float(np.median(times))
    b = int(config.batch_size)
    analytic = loop.flops_per_image(config)
    peak = metrics_lib.peak_tflops_per_device(config)
    figures = metrics_lib.throughput(b, step_s, analytic, peak, n)
    xla = None if config.model.get("scan_layers") else flops.xla_flops(compiled)
    remat, policy = stack.resolve_remat(config.model.get("remat"),
                                        config.model.get("remat_policy"),
                                        bool(config.model.get("scan_layers")))
    channels = int(config.data.sample_channels) or len(config.data.channels)
    return {
        "bench": "train", "config": config.name, "model": config.model.name,
        "backend": jax.default_backend(), "device": self.devices[0].device_kind,
        "num_devices": n, "mesh": dict(self.mesh.shape), "batch_size": b,
        "grad_accum_steps": int(config.grad_accum_steps),
        "image_size": int(config.data.crop_size), "channels": channels,
        "dtype": config.model.get("dtype", "float32"),
        "remat": remat, "remat_policy": policy if remat else None,
        "params_m": state_lib.num_params(self.spec) / 1e6, "compile_s": round(compile_s, 2),
        "step_s": step_s, "images_per_s": figures["images_per_s"],
        "tflops_per_s": figures.get("tflops"), "mfu": figures.get("mfu"),
        "peak_tflops_per_device": peak, "gflop_per_image": analytic / 1e9,
        "xla_gflop_per_image": xla * n / b / 1e9 if xla else None,
        "loss": float(metrics["loss"]),
        **({"interleaved_step_s": float(np.median(other))} if other else {}),
    }


def bench(config, steps: int = 10, num_devices: int = 0, interleave=None) -> dict:
  """Compiles and times `steps` train steps of `config` (median step); returns the figures.

  interleave: a callable (e.g. another framework's step) timed alternately with the steps
  (`alternate`: 2 x `steps` of each), so both see the same machine load; its median is
  `interleaved_step_s`.
  """
  devices = jax.devices()[:num_devices] if num_devices > 0 else jax.devices()
  b = StepBench(config, devices)
  batch = b.batch()
  state = b.init_state()
  compiled, compile_s = b.compile(state, batch)
  _, metrics, times, other = b.run(compiled, state, batch, steps, interleave)
  return b.figures(compiled, compile_s, metrics, times, other)
