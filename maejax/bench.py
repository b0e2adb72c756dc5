"""Speed figures: `python -m maejax.bench {model,data,train} ... [--json]`.

`model` times one jitted forward + backward + AdamW update of a registered model on random
uint8 images; `data` and `train` live beside the code they measure.
"""

from __future__ import annotations

import argparse
import json
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from maejax import models
from maejax.models import flops
from maejax.train import metrics


def bench_model(name, batch_size, channels, image_size, steps, dtype, overrides):
  cfg = models.get_config(name, dtype=dtype, **overrides)
  image_size = image_size or cfg.img_size
  channels = channels or cfg.channels
  model = models.create(cfg, rngs=nnx.Rngs(0))
  optimizer = nnx.Optimizer(model, optax.adamw(1e-4, b2=0.95, weight_decay=0.05), wrt=nnx.Param)
  graphdef, state = nnx.split((model, optimizer))

  @jax.jit
  def step(state, batch, key):
    model, optimizer = nnx.merge(graphdef, state)
    loss_fn = lambda m: m.compute_loss(batch, key)[0]
    loss, grads = nnx.value_and_grad(loss_fn)(model)
    optimizer.update(model, grads)
    return nnx.state((model, optimizer)), loss

  rng = np.random.default_rng(0)
  batch = {"image": jnp.asarray(rng.integers(0, 256, (batch_size, image_size, image_size,
                                                       channels), dtype=np.uint8)),
           "label": jnp.zeros((batch_size,), jnp.int32)}
  t0 = time.perf_counter()
  state, loss = step(state, batch, jax.random.key(0))
  loss.block_until_ready()
  compile_s = time.perf_counter() - t0
  times = []
  for i in range(steps):
    t0 = time.perf_counter()
    state, loss = step(state, batch, jax.random.key(i + 1))
    loss.block_until_ready()
    times.append(time.perf_counter() - t0)
  step_s = float(np.median(times))
  flop = flops.train_flops_per_example(cfg, image_size, channels) * batch_size
  peak = metrics.peak_tflops_per_device()
  result = {
      "bench": "model", "model": name, "backend": jax.default_backend(),
      "device": jax.devices()[0].device_kind, "batch_size": batch_size,
      "image_size": image_size, "channels": channels, "dtype": dtype,
      "params_m": sum(int(np.prod(v.shape)) for v in jax.tree.leaves(nnx.state(model, nnx.Param))) / 1e6,
      "compile_s": round(compile_s, 3), "step_s": step_s, "images_per_s": batch_size / step_s,
      "tflops_per_s": flop / step_s / 1e12, "gflop_per_image": flop / batch_size / 1e9,
      "mfu": flop / step_s / (peak * 1e12) if peak else None, "loss": float(loss),
  }
  return result


def print_result(result, as_json):
  for k, v in result.items():
    print(f"{k:>16}: {v:.4g}" if isinstance(v, float) else f"{k:>16}: {v}")
  if as_json:
    print(json.dumps(result))


def main_model(argv):
  p = argparse.ArgumentParser(prog="python -m maejax.bench model",
                              description="Train-step speed of one model on random images.")
  p.add_argument("--model", default="vits16", help=f"one of {', '.join(sorted(models.REGISTRY))}")
  p.add_argument("--batch-size", type=int, default=8)
  p.add_argument("--channels", type=int, default=None, help="default: the model's")
  p.add_argument("--image-size", type=int, default=None, help="default: the model's img_size")
  p.add_argument("--steps", type=int, default=5, help="timed steps after the compile step")
  p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
  p.add_argument("--remat", action="store_true")
  p.add_argument("--json", action="store_true", help="print one JSON object as the last line")
  a = p.parse_args(argv)
  try:
    result = bench_model(a.model, a.batch_size, a.channels, a.image_size, a.steps, a.dtype,
                         {"remat": a.remat} if a.remat else {})
  except ValueError as e:
    sys.exit(f"error: {e}")
  print_result(result, a.json)


def main(argv=None):
  argv = sys.argv[1:] if argv is None else argv
  commands = {"model": main_model}
  try:
    from maejax.data.bench import main as data_main
    commands["data"] = data_main
  except ImportError:
    pass
  try:
    from maejax.train.bench import main as train_main
    commands["train"] = train_main
  except ImportError:
    pass
  if not argv or argv[0] not in commands:
    sys.exit(f"usage: python -m maejax.bench {{{','.join(commands)}}} ... [--json] "
             f"(each takes --help)")
  commands[argv[0]](argv[1:])


if __name__ == "__main__":
  main()
