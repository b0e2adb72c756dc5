"""The one-call GPU check: `python -m maejax.bench gpu-check --out DIR` (launch/gpu_check.sh).

Measures on the first accelerator, in bf16: train steps of ViT-L/16, ViT-L/8, ViT-S/16 and
CA-MAE S/16 (scanned blocks, batch fitted to the device's memory), each with step time,
images/s, TFLOP/s, MFU against the card's peak, peak memory and whether the compiled program
calls cuDNN's flash attention (read from its HLO); the OpenPhenom architecture's embedding
throughput; the ArrayRecord loader's crops/s on all cores against what the ViT-L/16 step
consumes; one vit_tiny step on the accelerator against the same step on the host's CPU; the
versions of everything and `nvidia-smi`.

Each part runs in a process of its own (a crash, hang or out-of-memory of one leaves the
others; memory peaks are per part) within its time box and the whole --budget-s; a failed part
records its error and the check goes on. DIR/gpu_check.json is rewritten after every part, so
a run cut short still returns what it measured; DIR/gpu_check.log has one line a part and the
failed parts' stderr. `--tiny` runs the same flow on the CPU with tiny models, in this process
(tests/test_gpu_check.py).
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import gzip
import importlib.metadata
import json
import os
import re
import subprocess
import sys
import tempfile
import time
import traceback
from typing import Callable, NamedTuple

import jax
import numpy as np
from jax.experimental.compilation_cache import compilation_cache as cc
from jax.extend import backend as jax_backend

from maejax import cli
from maejax import workdir as workdir_lib
from maejax.data import bench as data_bench
from maejax.eval import embed as embed_lib
from maejax.models import layers
from maejax.train import bench as train_bench
from maejax.train import step as step_lib

GIB = 2**30
# The MFU the ViT-L/16 step should reach on an H100 (issue 30; MaxText reports about 50%).
MFU_GOAL = 0.55


class Train(NamedTuple):
  """A train-step part: registry model, first batch tried, attention on GPUs, tiny stand-in."""
  model: str
  batch: int
  attention: str = "auto"
  tiny: str = "vit_tiny"


TRAIN = {
    "train_vitl16": Train("vitl16", 256),
    "train_vits16": Train("vits16", 1024),
    "train_camae_s16": Train("camae_s16", 96, tiny="camae_tiny"),
    "train_vitl8": Train("vitl8", 64),
    "train_vitl16_xla_attention": Train("vitl16", 256, attention="xla"),
}
# Parts in the order they run (most wanted first) and their time boxes in seconds.
PARTS = {"env": 40, "train_vitl16": 110, "numerics": 60, "train_vits16": 50,
         "train_camae_s16": 60, "embed_camae_s16": 45, "train_vitl8": 90, "data": 80,
         "train_vitl16_xla_attention": 60, "profile_vitl16": 60}
TINY_SLACK = 10
# Parts that take their batch from train_vitl16's fitted one.
SAME_BATCH = ("train_vitl16_xla_attention", "profile_vitl16")


def _oom(e: BaseException) -> bool:
  return any(s in str(e) for s in ("RESOURCE_EXHAUSTED", "Out of memory", "out of memory"))


def _round(b: float) -> int:
  """A batch size: a multiple of 8 from 16 up, at least 1."""
  return max(1, int(b) // 8 * 8 if b >= 16 else int(b))


def memory_stats(device) -> dict:
  """The device allocator's bytes in use, peak and limit in GiB (empty where it has none)."""
  stats = device.memory_stats() or {}
  return {f"{k}_gib": round(stats[k] / GIB, 3) for k in
          ("bytes_in_use", "peak_bytes_in_use", "bytes_limit") if k in stats}


def _free_bytes(device) -> int | None:
  stats = device.memory_stats() or {}
  if "bytes_limit" not in stats:
    return None
  return int(stats["bytes_limit"]) - int(stats.get("bytes_in_use", 0))


def program_bytes(compiled) -> dict:
  """What a compiled step needs beyond its resident arguments (new outputs less donated ones,
  and temporaries), and its total, in bytes."""
  m = compiled.memory_analysis()
  if m is None:
    return {}
  extra = m.output_size_in_bytes - m.alias_size_in_bytes + m.temp_size_in_bytes
  return {"extra": int(extra), "total": int(extra + m.argument_size_in_bytes),
          "temporaries": int(m.temp_size_in_bytes)}


def attention_kernels(hlo: str) -> dict:
  """Whether an optimized HLO text calls cuDNN's fused (flash) attention, from its
  custom-call targets (e.g. `__cudnn$fmhaSoftmax`), and all its custom-call targets."""
  targets = sorted(set(re.findall(r'custom_call_target="([^"]+)"', hlo)))
  fmha = [t for t in targets if "cudnn" in t.lower()
          and any(k in t.lower() for k in ("fmha", "flash", "attention"))]
  return {"cudnn_flash_attention": bool(fmha), "cudnn_attention_targets": fmha,
          "custom_call_targets": targets}


def fit_batch(bench: train_bench.StepBench, state, batch_size: int, fill: float = 0.9,
              max_compiles: int = 2) -> tuple:
  """(compiled step, batch, compile seconds, tries): compiles at `batch_size`, then rescales
  the batch by the memory the program needs against the device's free memory (XLA's
  `memory_analysis`: up to `fill` of it) and compiles again, at most `max_compiles` times.
  Scaling up by that ratio undershoots (the optimizer's temporaries do not grow with the
  batch); scaling down overshoots, hence 0.85. On devices without a memory limit (CPUs), the
  first batch."""
  free = _free_bytes(bench.devices[0])
  tries, b = [], batch_size
  while True:
    bench.config.batch_size = b
    batch = bench.batch()
    compiled, compile_s = bench.compile(state, batch)
    need = program_bytes(compiled)
    tries.append({"batch_size": b, "compile_s": round(compile_s, 2),
                  "needs_gib": round(need["extra"] / GIB, 3) if need else None,
                  "free_gib": round(free / GIB, 3) if free else None})
    if free is None or not need or len(tries) == max_compiles:
      return compiled, batch, compile_s, tries
    ratio = fill * free / max(need["extra"], 1)
    if ratio >= 1.25:
      b = _round(b * ratio)
    elif ratio < 1:
      b = _round(b * ratio * 0.85)
    else:
      return compiled, batch, compile_s, tries


def _gpu_attention(attention: str):
  return layers.gpu_attention(attention) if attention != "auto" else contextlib.nullcontext()


def train_config(spec: Train, tiny: bool, batch: int | None):
  """The bf16 one-device run config of a train part, blocks scanned."""
  config = train_bench.model_config(spec.tiny if tiny else spec.model,
                                    batch_size=batch or (4 if tiny else spec.batch),
                                    dtype="bfloat16")
  config.model.scan_layers = True
  if tiny:
    config.model.remat = False  # As on GPUs (`stack.resolve_remat`), and faster to compile.
  return config


def part_train(spec: Train, tiny: bool, batch: int | None, steps: int,
               hlo_path: str | None = None) -> dict:
  """A bf16 train step of `spec.model` (scanned blocks) at the largest batch that fits: figures
  of `StepBench.figures`, the fitting tries, memory, attention kernels."""
  config = train_config(spec, tiny, batch)
  device = jax.devices()[0]
  with _gpu_attention(spec.attention):
    bench = train_bench.StepBench(config, [device], step_lib.FAST_COMPILE if tiny else None)
    state = bench.init_state()
    compiled, data, compile_s, tries = fit_batch(bench, state, int(config.batch_size),
                                                 max_compiles=1 if batch else 2)
    while True:
      try:
        _, metrics, times, _ = bench.run(compiled, state, data, steps)
        break
      except Exception as e:  # pylint: disable=broad-except
        b = _round(int(config.batch_size) * 0.75)
        if not _oom(e) or b == int(config.batch_size):
          raise
        tries.append({"batch_size": int(config.batch_size), "error": str(e)[:300]})
        config.batch_size = b
        state = bench.init_state()  # The failed step may have consumed the donated state.
        data = bench.batch()
        compiled, compile_s = bench.compile(state, data)
  out = bench.figures(compiled, compile_s, metrics, times)
  hlo = compiled.as_text()
  if hlo_path:
    with gzip.open(hlo_path, "wt") as f:
      f.write(hlo)
  out.update(attention=spec.attention, batch_tries=tries, steps=len(times),
             step_s_min=float(np.min(times)), step_s_max=float(np.max(times)),
             memory=memory_stats(device),
             program_gib={k: round(v / GIB, 3) for k, v in program_bytes(compiled).items()},
             **attention_kernels(hlo))
  return out


def part_embed(tiny: bool, steps: int, batches=(1024, 512, 256, 128, 64)) -> dict:
  """Embedding throughput (`maejax.load(...).embed`, all 1,537 tokens, no masking) of the
  OpenPhenom architecture (CA-MAE ViT-S/16, 6 channels of 256 x 256) in bf16: the largest of
  `batches` that fits."""
  config = train_bench.model_config("camae_tiny" if tiny else "camae_s16", batch_size=1,
                                    channels=None if tiny else 6, dtype="bfloat16")
  model = embed_lib.random_model(config)
  size, c = int(config.data.crop_size), len(config.data.channels)
  rng = np.random.default_rng(0)
  errors = []
  for b in ((4,) if tiny else batches):
    images = rng.integers(0, 256, (b, size, size, c), dtype=np.uint8)
    run = lambda: model.embed(images, batch_size=b)  # noqa: B023,E731
    try:
      t0 = time.perf_counter()
      run()  # Compile and warm-up.
      compile_s = time.perf_counter() - t0
      times, _ = train_bench.alternate(run, None, steps)
    except Exception as e:  # pylint: disable=broad-except
      if not _oom(e):
        raise
      errors.append({"batch_size": b, "error": str(e)[:300]})
      continue
    t = float(np.median(times))
    return {"model": config.model.name, "dtype": "bfloat16", "batch_size": b,
            "image_size": size, "channels": c, "compile_s": round(compile_s, 2),
            "embed_s": t, "crops_per_s": b / t, "oom_tries": errors,
            "memory": memory_stats(jax.devices()[0])}
  raise RuntimeError(f"no batch of {batches} fits: {errors}")


def _one_step(config, device, host_state, options):
  """(params after, metrics) of one step of `config` on `device` from `host_state`."""
  bench = train_bench.StepBench(config, [device], options)
  state = jax.device_put(host_state, bench.spec.shardings)
  batch = bench.batch()
  compiled, _ = bench.compile(state, batch)
  new, metrics = bench.step(compiled, state, batch)
  return jax.device_get(new["params"]), jax.device_get(metrics)


def _rel(a, b) -> float:
  """|a - b| / |b| over all leaves of two trees (L2), in float64."""
  a = np.concatenate([np.ravel(np.asarray(x, np.float64)) for x in jax.tree.leaves(a)])
  b = np.concatenate([np.ravel(np.asarray(x, np.float64)) for x in jax.tree.leaves(b)])
  return float(np.linalg.norm(a - b) / max(np.linalg.norm(b), 1e-30))


# (dtype, matmul precision, relative tolerance on loss and gradient norm): fp32 at full
# precision must agree to float32 rounding over a step; at the default precision GPUs may use
# TF32 (10-bit mantissa) for fp32 matmuls; bf16 (8-bit mantissa) compute, fp32 parameters.
NUMERICS = (("float32", "highest", 1e-4), ("float32", "default", 1e-2),
            ("bfloat16", "default", 5e-2))


def part_numerics(tiny: bool) -> dict:
  """One vit_tiny step (batch 8, AdamW at full learning rate) on the first device against
  the same step, from the same state and batch, on the host's CPU: loss, gradient norm and the
  parameter update, for each of NUMERICS."""
  accel, cpu = jax.devices()[0], jax.devices("cpu")[0]
  options = step_lib.FAST_COMPILE if tiny else None
  out = {"device": accel.device_kind, "reference": cpu.device_kind, "cases": []}
  # --tiny: one case (every case runs the same code), CPU against itself.
  for dtype, precision, tol in (NUMERICS[:1] if tiny else NUMERICS):
    config = train_bench.model_config("vit_tiny", batch_size=8, dtype=dtype)
    config.warmup_frac = 0.0  # A first step at the full learning rate: updates to compare.
    with jax.default_matmul_precision(None if precision == "default" else precision):
      host_state = jax.device_get(
          train_bench.StepBench(config, [cpu], options).init_state())
      ref_params, ref = _one_step(config, cpu, host_state, options)
      params, got = _one_step(config, accel, host_state, options)
    before = host_state["params"]
    case = {"dtype": dtype, "matmul_precision": precision, "rtol": tol}
    for k in ("loss", "grad_norm"):
      case[k], case[f"{k}_cpu"] = float(got[k]), float(ref[k])
      case[f"{k}_rel_diff"] = abs(case[k] - case[f"{k}_cpu"]) / max(abs(case[f"{k}_cpu"]), 1e-30)
    case["update_rel_diff"] = _rel(jax.tree.map(np.subtract, params, before),
                                   jax.tree.map(np.subtract, ref_params, before))
    case["ok"] = case["loss_rel_diff"] <= tol and case["grad_norm_rel_diff"] <= tol
    out["cases"].append(case)
  out["ok"] = all(c["ok"] for c in out["cases"])
  return out


def part_data(tiny: bool) -> dict:
  """The ArrayRecord loader's crops/s, one reading thread and all cores as Grain workers
  (256 x 256 crops of 6-channel 512 x 512 sites, as in RxRx3)."""
  with tempfile.TemporaryDirectory() as tmp:
    if tiny:
      return data_bench.run(workdir=tmp, sites=20, site_size=64, crop_size=32, batch_size=8,
                            seconds=0.2, workers=0, timed=("arrayrecord",), write_workers=1)
    return data_bench.run(workdir=tmp, sites=200, site_size=512, crop_size=256, batch_size=64,
                          seconds=5.0, workers=os.cpu_count() or 1, timed=("arrayrecord",))


def part_profile(tiny: bool, batch: int | None, steps: int = 3, top: int = 20) -> dict:
  """The ViT-L/16 step (as train_vitl16, at its batch) under `jax.profiler`: the `top` device
  ops by total time, read from the Perfetto trace (host ops where no device track exists)."""
  config = train_config(TRAIN["train_vitl16"], tiny, batch)
  bench = train_bench.StepBench(config, [jax.devices()[0]], step_lib.FAST_COMPILE if tiny else None)
  state, data = bench.init_state(), bench.batch()
  compiled, _ = bench.compile(state, data)
  state, _ = bench.step(compiled, state, data)
  with tempfile.TemporaryDirectory() as tmp:
    with jax.profiler.trace(tmp, create_perfetto_trace=True):
      for _ in range(steps):
        state, metrics = bench.step(compiled, state, data)
      jax.block_until_ready(metrics)
    traces = [os.path.join(d, f) for d, _, fs in os.walk(tmp) for f in fs
              if f.endswith("perfetto_trace.json.gz")]
    with gzip.open(traces[0], "rt") as f:
      events = json.load(f)
  return {"batch_size": int(config.batch_size), "steps": steps, **top_ops(events, top)}


def top_ops(trace: dict | list, top: int) -> dict:
  """The `top` ops by total duration in a Chrome/Perfetto trace: on the tracks of device
  processes (names with "/device:"), else on all tracks; shares of the summed time."""
  events = trace["traceEvents"] if isinstance(trace, dict) else trace
  names = {e["pid"]: e.get("args", {}).get("name", "") for e in events
           if e.get("ph") == "M" and e.get("name") == "process_name"}
  device = {pid for pid, n in names.items() if "/device:" in n}
  totals: dict[str, float] = {}
  for e in events:
    if e.get("ph") == "X" and (not device or e.get("pid") in device):
      totals[e["name"]] = totals.get(e["name"], 0.0) + float(e.get("dur", 0.0))
  total = sum(totals.values()) or 1.0
  ops = sorted(totals.items(), key=lambda kv: -kv[1])[:top]
  return {"tracks": "device" if device else "all", "total_ms": total / 1e3,
          "top_ops": [{"name": n[:160], "ms": round(d / 1e3, 3), "share": round(d / total, 4)}
                      for n, d in ops]}


def part_env() -> dict:
  """Versions (jax, jaxlib, the CUDA plugin and NVIDIA libraries, maejax's own dependencies),
  devices and `jax.print_environment_info`."""
  pattern = re.compile(r"^(jax|flax|optax|orbax|chex|grain|array.record|numpy|ml.collections|"
                       r"tensorstore|nvidia-|torch$)", re.I)
  packages = {d.metadata["Name"]: d.version for d in importlib.metadata.distributions()
              if d.metadata["Name"] and pattern.match(d.metadata["Name"])}
  return {
      "python": sys.version.split()[0], "jax": jax.__version__,
      "jaxlib": importlib.metadata.version("jaxlib"), "backend": jax.default_backend(),
      "platform_version": jax_backend.get_backend().platform_version,
      "devices": [{"kind": d.device_kind, "platform": d.platform,
                   "compute_capability": getattr(d, "compute_capability", None),
                   **memory_stats(d)} for d in jax.local_devices()],
      "cpu_count": os.cpu_count(), "packages": dict(sorted(packages.items())),
      "env": {k: v for k, v in os.environ.items() if k.startswith(("XLA_", "JAX_", "CUDA_"))},
      "environment_info": jax.print_environment_info(return_string=True),
  }


def run_part(name: str, tiny: bool, batch: int | None, out_dir: str) -> dict:
  """One part in this process."""
  steps = 2 if tiny else 20
  if name == "env":
    return part_env()
  if name == "numerics":
    return part_numerics(tiny)
  if name == "data":
    return part_data(tiny)
  if name == "embed_camae_s16":
    return part_embed(tiny, steps=2 if tiny else 10)
  if name == "profile_vitl16":
    return part_profile(tiny, batch)
  if name in TRAIN:
    hlo = os.path.join(out_dir, "train_vitl16.hlo.txt.gz") if name == "train_vitl16" else None
    return part_train(TRAIN[name], tiny, batch, steps, hlo)
  raise ValueError(f"--part {name}: expected one of {', '.join(PARTS)}")


def nvidia_smi() -> str:
  try:
    return subprocess.run(["nvidia-smi"], capture_output=True, text=True, timeout=30).stdout
  except (OSError, subprocess.SubprocessError) as e:
    return f"not available: {e}"


def _child(name: str, tiny: bool, batch: int | None, out_dir: str, timeout: float) -> dict:
  """`run_part` in a process of its own, killed after `timeout` seconds."""
  argv = [sys.executable, "-m", "maejax.bench", "gpu-check", "--part", name, "--out", out_dir,
          "--json"] + (["--tiny"] if tiny else []) + (["--batch", str(batch)] if batch else [])
  env = dict(os.environ)
  env.setdefault("XLA_PYTHON_CLIENT_MEM_FRACTION", "0.92")
  if name == "data":
    env["JAX_PLATFORMS"] = "cpu"  # The loader needs no accelerator; leave its memory alone.
  try:
    p = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, env=env)
  except subprocess.TimeoutExpired as e:
    err = e.stderr.decode(errors="replace") if isinstance(e.stderr, bytes) else (e.stderr or "")
    return {"error": f"timed out after {timeout:.0f} s", "stderr_tail": err[-3000:]}
  lines = p.stdout.strip().splitlines()
  if p.returncode == 0 and lines:
    return json.loads(lines[-1])
  return {"error": f"exit {p.returncode}", "stderr_tail": p.stderr[-3000:]}


def _in_process(name: str, tiny: bool, batch: int | None, out_dir: str, timeout: float) -> dict:
  del timeout  # Not enforceable in this process; --budget-s still skips later parts.
  try:
    return workdir_lib.jsonable(run_part(name, tiny, batch, out_dir))
  except Exception as e:  # pylint: disable=broad-except
    return {"error": f"{type(e).__name__}: {e}"[:2000],
            "stderr_tail": traceback.format_exc()[-3000:]}


def summary(results: dict) -> dict:
  """The figures to read first: per train part, embedding, loader against the ViT-L/16 step,
  numerics."""
  out = {}
  for name in TRAIN:
    r = results.get(name) or {}
    if "step_s" in r:
      out[name] = {k: r.get(k) for k in ("model", "batch_size", "step_s", "images_per_s",
                                         "tflops_per_s", "mfu", "cudnn_flash_attention")}
      out[name]["peak_gib"] = r["memory"].get("peak_bytes_in_use_gib")
  vitl16 = (results.get("train_vitl16") or {}).get("images_per_s")
  if vitl16 and (results.get("train_vitl16") or {}).get("mfu") is not None:
    out["vitl16_mfu_goal"] = {"goal": MFU_GOAL, "met": results["train_vitl16"]["mfu"] >= MFU_GOAL}
  embed = results.get("embed_camae_s16") or {}
  if "crops_per_s" in embed:
    out["embed_camae_s16_crops_per_s"] = embed["crops_per_s"]
  data = ((results.get("data") or {}).get("per_worker") or {}).get("arrayrecord")
  if data:
    cores = results["data"]["cpu_count"]
    loader = data.get(f"crops_per_s_{cores}_workers", data["crops_per_s"])
    out["loader"] = {"crops_per_s": loader, "workers": cores if loader != data["crops_per_s"]
                     else 0, "one_thread_crops_per_s": data["crops_per_s"]}
    if vitl16:
      out["loader"].update(vitl16_images_per_s=vitl16, feeds_vitl16=loader >= vitl16,
                           ratio=loader / vitl16)
  if "ok" in (results.get("numerics") or {}):
    out["numerics_ok"] = results["numerics"]["ok"]
  out["failed_parts"] = [k for k, v in results.items() if isinstance(v, dict) and "error" in v]
  return out


@contextlib.contextmanager
def compilation_cache(path: str):
  """JAX's persistent compilation cache in `path` for every program, in this process and the
  parts' processes: parts that compile the same program (the same step at the same batch, and
  all tiny models' steps) compile it once."""
  settings = {"jax_compilation_cache_dir": path, "jax_persistent_cache_min_compile_time_secs": 0,
              "jax_persistent_cache_min_entry_size_bytes": 0}
  before = {k: getattr(jax.config, k) for k in settings}
  env = {k.upper(): os.environ.get(k.upper()) for k in settings}
  for k, v in settings.items():
    jax.config.update(k, v)
    os.environ[k.upper()] = str(v)
  # JAX opens its cache once per process: reset it so it opens `path` now and, after, the
  # restored setting instead of a deleted folder.
  cc.reset_cache()
  try:
    yield
  finally:
    for k, v in before.items():
      jax.config.update(k, v)
    cc.reset_cache()
    for k, v in env.items():
      if v is None:
        os.environ.pop(k, None)
      else:
        os.environ[k] = v


def check(out_dir: str, *, tiny: bool, budget_s: float, parts, isolate: bool,
          log: Callable[[str], None]) -> dict:
  """Runs `parts` in order within `budget_s`; rewrites OUT/gpu_check.json after each."""
  with tempfile.TemporaryDirectory() as cache, compilation_cache(cache):
    return _check(out_dir, tiny=tiny, budget_s=budget_s, parts=parts, isolate=isolate, log=log)


def _check(out_dir: str, *, tiny: bool, budget_s: float, parts, isolate: bool,
           log: Callable[[str], None]) -> dict:
  os.makedirs(out_dir, exist_ok=True)
  path = os.path.join(out_dir, "gpu_check.json")
  t_start = time.monotonic()
  result = {"gpu_check": {"started": datetime.datetime.now(datetime.timezone.utc).isoformat(
      timespec="seconds"), "tiny": tiny, "budget_s": budget_s, "isolated": isolate,
      "argv": sys.argv}, "nvidia_smi": nvidia_smi()}
  runner = _child if isolate else _in_process

  def write():
    result["gpu_check"]["elapsed_s"] = round(time.monotonic() - t_start, 1)
    result["summary"] = summary(result)
    with open(path + ".tmp", "w") as f:
      json.dump(workdir_lib.jsonable(result), f, indent=1)
    os.replace(path + ".tmp", path)

  write()
  for name in parts:
    left = budget_s - (time.monotonic() - t_start)
    if left < 15:
      result[name] = {"error": f"skipped: {left:.0f} s of the budget left"}
      log(f"{name}: skipped ({left:.0f} s left)")
      write()
      continue
    batch = (result.get("train_vitl16") or {}).get("batch_size") if name in SAME_BATCH else None
    t0 = time.monotonic()
    cpu0 = time.process_time()
    # A part's limit is sized for a GPU host; --tiny's parts run on a CPU, maybe a busy one.
    limit = min(PARTS[name] * (TINY_SLACK if tiny else 1), left)
    result[name] = runner(name, tiny, batch, out_dir, limit)
    result[name]["part_s"] = round(time.monotonic() - t0, 1)
    result[name]["part_cpu_s"] = round(time.process_time() - cpu0, 1)  # This process's only.
    error = result[name].get("error")
    log(f"{name}: {'FAILED ' + error if error else 'ok'} in {result[name]['part_s']} s")
    if error and result[name].get("stderr_tail"):
      log(result[name]["stderr_tail"])
    write()
  return result


def main(argv) -> int:
  p = cli.parser("python -m maejax.bench gpu-check", __doc__)
  p.add_argument("--out", required=True, help="folder for gpu_check.json and gpu_check.log")
  p.add_argument("--tiny", action="store_true",
                 help="tiny models on the CPU, parts in this process: the whole flow in seconds")
  p.add_argument("--budget-s", type=float, default=None,
                 help="seconds for all parts together (default: 480, with --tiny 3600)")
  p.add_argument("--parts", default=",".join(PARTS), help="comma-separated, in this order")
  p.add_argument("--isolate", action=argparse.BooleanOptionalAction, default=None,
                 help="each part in a process of its own (default: on, off with --tiny)")
  p.add_argument("--part", default=None, help=argparse.SUPPRESS)
  p.add_argument("--batch", type=int, default=None, help=argparse.SUPPRESS)
  args = p.parse_args(argv)

  if args.part:  # One part, in a child process of `check`.
    return cli.report(args, lambda: run_part(args.part, args.tiny, args.batch, args.out),
                      lambda r: None)

  def body():
    parts = [s for s in args.parts.split(",") if s]
    unknown = [s for s in parts if s not in PARTS]
    if unknown:
      raise ValueError(f"--parts {','.join(unknown)}: expected some of {','.join(PARTS)}")
    os.makedirs(args.out, exist_ok=True)
    log_path = os.path.join(args.out, "gpu_check.log")

    def log(line: str) -> None:
      line = f"{time.strftime('%H:%M:%S')} {line}"
      print(line, file=sys.stderr, flush=True)
      with open(log_path, "a") as f:
        f.write(line + "\n")

    isolate = (not args.tiny) if args.isolate is None else args.isolate
    budget_s = args.budget_s or (3600.0 if args.tiny else 480.0)
    result = check(args.out, tiny=args.tiny, budget_s=budget_s, parts=parts,
                   isolate=isolate, log=log)
    log(f"summary: {json.dumps(workdir_lib.jsonable(result['summary']))}")
    return result["summary"]

  return cli.report(args, body, lambda r: None)

