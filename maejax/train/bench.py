"""`python -m maejax.bench train --config configs/X.py [--config.field=v ...] [--json]`.

Times the real sharded train step (the one `python -m maejax.train` runs: same mesh, rules,
optimizer, donation) on random device-resident batches, so data loading is not measured.
Reports images/s, TFLOP/s and MFU from the analytic FLOP count (maejax.models.flops), and
XLA's own count of the compiled step beside it as a check.
"""

import argparse
import json
import sys
import time

import numpy as np

from maejax.train import __main__ as cli
from maejax.train import config as config_lib


def parse_args(argv):
  p = argparse.ArgumentParser(prog="python -m maejax.bench train",
                              description="Speed of the sharded train step of a config.",
                              epilog=cli.EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--config", required=True, help="config file, e.g. configs/vitl16.py[:plus]")
  p.add_argument("--steps", type=int, default=10, help="timed steps after the compile step")
  p.add_argument("--num-devices", type=int, default=0,
                 help="use only the first N devices (default: all)")
  p.add_argument("--json", action="store_true", help="print one JSON object as the last line")
  return config_lib.parse_known_overrides(p, argv)


def bench(config, steps: int = 10, num_devices: int = 0) -> dict:
  """Compiles and times `steps` train steps of `config`; returns the figures."""
  import jax  # pylint: disable=g-import-not-at-top
  from flax import nnx  # pylint: disable=g-import-not-at-top
  from maejax.train import loop, mesh as mesh_lib, metrics as metrics_lib  # pylint: disable=g-import-not-at-top
  from maejax.train import optimizer as optimizer_lib, sharding as sharding_lib  # pylint: disable=g-import-not-at-top
  from maejax.train import state as state_lib, step as step_lib  # pylint: disable=g-import-not-at-top

  devices = jax.devices()[:num_devices] if num_devices > 0 else jax.devices()
  mesh = mesh_lib.make_mesh(config.mesh, devices)
  rules = tuple(tuple(r) for r in config.sharding_rules)
  loop.check_batch(config, mesh)
  model_fn = loop.model_fn_for(config.model)
  tx = optimizer_lib.make_optimizer(config)
  spec = state_lib.make_spec(model_fn, tx, mesh, rules)
  state = state_lib.init_state(model_fn, tx, spec, int(config.seed))
  train_step = step_lib.jit_train_step(
      step_lib.make_train_step(spec, tx, optimizer_lib.schedule(config),
                               int(config.grad_accum_steps)), spec, mesh, rules)
  b, size = int(config.batch_size) // jax.process_count(), int(config.data.crop_size)
  channels = int(config.data.sample_channels) or len(config.data.channels)
  rng = np.random.default_rng(0)
  batch = sharding_lib.to_global_batch(
      {"image": rng.integers(0, 256, (b, size, size, channels), dtype=np.uint8),
       "channel_ids": np.tile(np.arange(channels, dtype=np.int32), (b, 1))}, mesh, rules)

  with jax.set_mesh(mesh), nnx.logical_axis_rules(rules):
    t0 = time.perf_counter()
    compiled = train_step.lower(state, batch).compile()
    compile_s = time.perf_counter() - t0
    state, metrics = compiled(state, batch)  # Warm-up.
    jax.block_until_ready(metrics)
    t0 = time.perf_counter()
    for _ in range(steps):
      state, metrics = compiled(state, batch)
    jax.block_until_ready(metrics)
    step_s = (time.perf_counter() - t0) / max(steps, 1)

  analytic = loop.flops_per_image(config)
  peak = metrics_lib.peak_tflops_per_device(config)
  figures = metrics_lib.throughput(int(config.batch_size), step_s, analytic, peak, len(devices))
  xla = xla_flops_per_image(compiled, int(config.batch_size), len(devices))
  return {
      "bench": "train", "config": config.name, "model": config.model.name,
      "device": jax.devices()[0].device_kind, "num_devices": len(devices),
      "mesh": dict(mesh.shape), "batch_size": int(config.batch_size),
      "grad_accum_steps": int(config.grad_accum_steps), "image_size": size,
      "channels": channels, "dtype": config.model.get("dtype", "float32"),
      "remat": bool(config.model.get("remat", False)),
      "params_m": state_lib.num_params(spec) / 1e6, "compile_s": round(compile_s, 2),
      "step_s": step_s, "images_per_s": figures["images_per_s"],
      "tflops_per_s": figures.get("tflops"), "mfu": figures.get("mfu"),
      "peak_tflops_per_device": peak,
      "gflop_per_image": analytic / 1e9 if analytic else None,
      "xla_gflop_per_image": xla / 1e9 if xla else None,
      "loss": float(metrics["loss"]),
  }


def xla_flops_per_image(compiled, batch_size: int, num_devices: int) -> float | None:
  """XLA's FLOP count of the compiled step (per device, so x devices) per image."""
  cost = compiled.cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  if not cost or "flops" not in cost:
    return None
  return float(cost["flops"]) * num_devices / batch_size


def main(argv=None) -> int:
  argv = sys.argv[1:] if argv is None else argv
  args, overrides = parse_args(argv)
  try:
    config = config_lib.load_config(args.config)
    config_lib.apply_overrides(config, overrides)
    result = bench(config, steps=args.steps, num_devices=args.num_devices)
  except (ValueError, FileNotFoundError) as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  for k, v in result.items():
    print(f"{k:>22}: {v:.4g}" if isinstance(v, float) else f"{k:>22}: {v}")
  if args.json:
    print(json.dumps(result))
  return 0


if __name__ == "__main__":
  sys.exit(main())
