"""Ahead-of-time compilation of a config's train and embedding steps for a TPU slice.

libtpu compiles for TPU topologies on any host (no TPU needed): the real sharded train step
(the function `python -m maejax.train` runs, with the config's mesh, rules, optimizer and
donation) and the embedding forward are lowered on abstract devices and compiled. The report
gives per-chip HBM against the chip's capacity, XLA's FLOPs against the analytic count, the
compiler's cost-model step time (an estimate, never a measurement) and the collectives.
"""

from __future__ import annotations

import contextlib
import dataclasses
import importlib.util
import os
import re
import sys
import time

import jax
import numpy as np
from flax import nnx
from jax.experimental import topologies
from jax.sharding import NamedSharding, PartitionSpec as P

from maejax.models import stack
from maejax.train import loop
from maejax.train import mesh as mesh_lib
from maejax.train import metrics as metrics_lib
from maejax.train import optimizer as optimizer_lib
from maejax.train import sharding as sharding_lib
from maejax.train import state as state_lib
from maejax.train import step as step_lib

GIB = 2 ** 30
# HBM per chip (GiB), by the generation prefix of a topology name ("v5p:4x4x4").
HBM_GIB = {"v4": 32, "v5e": 16, "v5p": 95, "v6e": 32}
COLLECTIVES = ("all-gather", "reduce-scatter", "all-reduce", "all-to-all", "collective-permute")
_BYTES = {"pred": 1, "s8": 1, "u8": 1, "s16": 2, "u16": 2, "bf16": 2, "f16": 2, "s32": 4,
          "u32": 4, "f32": 4, "s64": 8, "u64": 8, "f64": 8}
# `%name = <result type> <op>(` in HLO text; async pairs are counted at their `-start`.
_OP = re.compile(r"=\s*(.*?)\s(" + "|".join(COLLECTIVES) + r")(-start)?\(")
_SHAPE = re.compile(r"\b(" + "|".join(_BYTES) + r")\[([\d,]*)\]")


@dataclasses.dataclass
class Topology:
  name: str
  num_slices: int
  devices: list
  hbm_gib: float
  peak_tflops: float | None


def topology(name: str, num_slices: int = 1) -> Topology:
  """Abstract TPU devices of `name` (e.g. "v5p:4x4x4"), `num_slices` slices joined by DCN."""
  generation = name.split(":")[0]
  if generation not in HBM_GIB or ":" not in name:
    raise ValueError(f"--topology {name!r}: expected GENERATION:SHAPE with a generation of "
                     f"{', '.join(HBM_GIB)} (e.g. v5p:4x4x4, v5e:4x4)")
  if num_slices < 1:
    raise ValueError(f"--num-slices {num_slices}: must be >= 1")
  if importlib.util.find_spec("libtpu") is None:
    raise ValueError("compiling for TPU needs libtpu: pip install 'maejax[tpu]' (it works on "
                     "hosts without TPUs)")
  # libtpu looks for TPU VM settings on start-up; a host without TPUs has none.
  os.environ.setdefault("TPU_WORKER_HOSTNAMES", "localhost")
  os.environ.setdefault("TPU_SKIP_MDS_QUERY", "1")
  # Compiling needs no TPU: let several processes (or a running job's host) load libtpu.
  os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")
  try:
    with _quiet_stderr():  # libtpu's start-up warnings about the missing TPU VM settings.
      desc = topologies.get_topology_desc(
          topology_name=name, platform="tpu",
          **({"num_slices": num_slices} if num_slices > 1 else {}))
  except Exception as e:  # pylint: disable=broad-except
    raise ValueError(f"--topology {name!r}: libtpu rejected it "
                     f"({str(e).strip().splitlines()[0][:200]})") from e
  devices = list(desc.devices)
  return Topology(name, num_slices, devices, HBM_GIB[generation],
                  metrics_lib.peak_tflops(devices[0].device_kind))


@contextlib.contextmanager
def _quiet_stderr():
  """Sends file descriptor 2 (where C++ libraries log) to /dev/null for the duration."""
  sys.stderr.flush()
  saved = os.dup(2)
  try:
    with open(os.devnull, "w") as null:
      os.dup2(null.fileno(), 2)
      yield
  finally:
    os.dup2(saved, 2)
    os.close(saved)


def collectives(hlo_text: str) -> dict[str, dict[str, int]]:
  """{op: {"count", "bytes"}} over the collectives in an HLO module's text (result bytes).

  Static counts: an op inside a loop body (a scanned block stack, gradient accumulation)
  appears once in the text but runs once per iteration.
  """
  out = {op: {"count": 0, "bytes": 0} for op in COLLECTIVES}
  for result, op, _ in _OP.findall(hlo_text):
    shapes = _SHAPE.findall(result)
    if op in ("all-gather", "collective-permute") and len(shapes) > 1 and "start" in result:
      shapes = shapes[len(shapes) // 2:]  # Async start returns (operands, results).
    out[op]["count"] += 1
    out[op]["bytes"] += sum(_BYTES[t] * int(np.prod([int(d) for d in dims.split(",") if d]))
                            for t, dims in shapes)
  return out


def memory(compiled, hbm_gib: float) -> dict:
  """Per-chip bytes of a compiled program (donated arguments counted once) against HBM."""
  m = compiled.memory_analysis()
  total = (m.argument_size_in_bytes + m.output_size_in_bytes - m.alias_size_in_bytes
           + m.temp_size_in_bytes + m.generated_code_size_in_bytes)
  return {"arguments_gib": m.argument_size_in_bytes / GIB,
          "outputs_gib": m.output_size_in_bytes / GIB,
          "aliased_gib": m.alias_size_in_bytes / GIB,
          "temporaries_gib": m.temp_size_in_bytes / GIB,
          "total_gib": total / GIB, "hbm_gib": float(hbm_gib),
          "margin": 1.0 - total / (hbm_gib * GIB), "fits": total <= hbm_gib * GIB}


def _costs(compiled) -> dict:
  cost = compiled.cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  return {"flops": float(cost.get("flops", 0.0)),
          "optimal_seconds": float(cost.get("optimal_seconds", 0.0)) or None}


def _timed_compile(fn, *args):
  t0 = time.perf_counter()
  with stack.traced_for("tpu"):  # Traced on this host's CPU, compiled for TPUs.
    compiled = fn.lower(*args).compile()
  return compiled, time.perf_counter() - t0


def _compile_train_step(config, topo: Topology):
  """(compiled train step, compile seconds, mesh, state spec) of `config` on `topo`."""
  dcn = int(config.mesh.get("dcn_data", 1))
  if dcn != topo.num_slices:
    raise ValueError(f"{topo.num_slices} slice(s) but config.mesh.dcn_data={dcn}: set "
                     f"--config.mesh.dcn_data={topo.num_slices} (the data axis spans the slices)")
  mesh = mesh_lib.make_mesh(config.mesh, topo.devices)
  rules = tuple(tuple(r) for r in config.sharding_rules)
  loop.check_batch(config, mesh)
  model_fn = loop.model_fn_for(config.model)
  tx = optimizer_lib.make_optimizer(config)
  spec = state_lib.make_spec(model_fn, tx, mesh, rules)
  step = step_lib.jit_train_step(
      step_lib.make_train_step(spec, tx, optimizer_lib.schedule(config),
                               int(config.grad_accum_steps)), spec, mesh, rules)
  b, size = int(config.batch_size), int(config.data.crop_size)
  c = int(config.data.sample_channels) or len(config.data.channels)
  batch = {"image": ((b, size, size, c), np.uint8), "channel_ids": ((b, c), np.int32),
           "label": ((b,), np.int32)}
  batch = {k: jax.ShapeDtypeStruct(s, d, sharding=sharding_lib.batch_sharding(mesh, rules, len(s)))
           for k, (s, d) in batch.items()}
  with jax.set_mesh(mesh), nnx.logical_axis_rules(rules):
    compiled, seconds = _timed_compile(step, spec.abstract, batch)
  return compiled, seconds, mesh, spec


def _depth_fields(model_config) -> tuple[str, ...]:
  """The block-stack depths a scanned model runs as loops (encoder, decoder)."""
  if not model_config.get("scan_layers"):
    return ()
  return tuple(f for f in ("depth", "decoder_depth") if f in model_config)


def _cost_model(config, topo: Topology, compiled) -> dict:
  """The compiler's cost model (FLOPs, step seconds) of one whole train step.

  XLA's cost analysis counts a loop body once, whatever its trip count: for scanned block
  stacks and gradient accumulation, the unrolled step is estimated from small unrolled
  compiles instead (depth 1 and 2 of each stack, one micro-batch), extrapolated linearly in
  depth and multiplied by the micro-batches; every block of a stack costs the same.
  """
  depths, accum = _depth_fields(config.model), int(config.grad_accum_steps)
  if not depths and accum == 1:
    return {**_costs(compiled), "method": "direct", "compile_s": 0.0}
  t0 = time.perf_counter()

  def shallow(**model_fields):
    c = config.copy_and_resolve_references()
    c.model.scan_layers = False
    c.model.update(model_fields)
    c.grad_accum_steps, c.batch_size = 1, int(config.batch_size) // accum
    return _costs(_compile_train_step(c, topo)[0])

  base = shallow(**{f: 1 for f in depths})
  keys = ("flops", "optimal_seconds")
  per_block = {}
  for f in depths:
    deeper = shallow(**{g: 2 if g == f else 1 for g in depths})
    per_block[f] = {k: deeper[k] - base[k] if base[k] is not None else None for k in keys}
  # Where the step's time goes: each stack (all its blocks) and the rest (stem, masking,
  # loss, optimizer, one block of each stack taken out).
  parts = {f: {k: v * int(config.model[f]) * accum if v is not None else None
               for k, v in per_block[f].items()} for f in depths}
  parts["rest"] = {k: (base[k] - sum(per_block[f][k] for f in depths)) * accum
                   if base[k] is not None else None for k in keys}
  total = {k: sum(p[k] for p in parts.values()) if base[k] is not None else None for k in keys}
  return {**total, "method": f"unrolled, extrapolated from depth 1 and 2 of {', '.join(depths)}"
          + (f", x{accum} micro-batches" if accum > 1 else ""),
          "compile_s": round(time.perf_counter() - t0, 1), "parts": parts}


def _mfu(flops: float | None, seconds: float | None, peak_tflops: float | None):
  """The fraction of the chip's peak that `flops` in `seconds` use; None where one is missing."""
  return flops / seconds / (peak_tflops * 1e12) if flops and seconds and peak_tflops else None


def _parts(parts: dict | None, config, per_chip_batch: float,
           peak_tflops: float | None) -> dict | None:
  """Per part of the step: blocks, XLA FLOPs, cost-model seconds, share of the step and, for
  MAEs, the MFU of the part's analytic FLOPs (a compiler estimate). XLA's own count is no
  measure of useful work here: the TPU attention kernel declares its MXU work (head_dim
  padded to 128)."""
  if not parts or any(p["optimal_seconds"] is None for p in parts.values()):
    return None
  step = sum(p["optimal_seconds"] for p in parts.values())
  analytic = loop.flops_per_image(config, stacks=True)
  out = {}
  for name, p in parts.items():
    s = p["optimal_seconds"]
    useful = analytic[name] * per_chip_batch if analytic else None
    out[name] = {"blocks": int(config.model[name]) if name != "rest" else None,
                 "xla_flops_per_chip": p["flops"], "analytic_flops_per_chip": useful,
                 "cost_model_s": s, "share": s / step,
                 "mfu": _mfu(useful, s if s > 0 else None, peak_tflops)}
  return out


def compile_train(config, topo: Topology) -> dict:
  """Compiles the sharded train step of `config` for `topo`; returns its per-chip report."""
  loop.check_settings(config)
  compiled, seconds, mesh, spec = _compile_train_step(config, topo)
  b, chips = int(config.batch_size), len(topo.devices)
  analytic = loop.flops_per_image(config) * b / chips
  costs = _cost_model(config, topo, compiled)
  est = costs["optimal_seconds"]
  return {
      "mesh": dict(mesh.shape), "global_batch": b, "per_chip_batch": b / chips,
      "params_m": state_lib.num_params(spec) / 1e6, "compile_s": round(seconds, 1),
      "memory": memory(compiled, topo.hbm_gib),
      "xla_flops_per_chip": costs["flops"], "analytic_flops_per_chip": analytic,
      "cost_model_step_s": est,
      "cost_model_mfu": _mfu(analytic, est, topo.peak_tflops),
      "cost_model": {"method": costs["method"], "compile_s": costs["compile_s"],
                     "parts": _parts(costs.get("parts"), config, b / chips, topo.peak_tflops)},
      "collectives": collectives(compiled.as_text()),
  }


def compile_embed(config, topo: Topology) -> dict:
  """Compiles the embedding forward (parameters replicated, crops split over every chip, as
  `maejax.embed` runs it) at the config's global batch; returns its per-chip report."""
  mesh = jax.sharding.Mesh(np.asarray(topo.devices), ("data",))
  graphdef, params = state_lib.abstract_model(loop.model_fn_for(config.model))
  params = jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype,
                                                       sharding=NamedSharding(mesh, P())), params)
  b, size = int(config.batch_size), int(config.data.crop_size)
  c = len(config.data.channels)
  images = jax.ShapeDtypeStruct((b, size, size, c), np.uint8,
                                sharding=NamedSharding(mesh, P("data")))
  embed = jax.jit(lambda p, x: nnx.merge(graphdef, p).embed(x),
                  out_shardings=NamedSharding(mesh, P("data")))
  with jax.set_mesh(mesh), nnx.logical_axis_rules(stack.DATA_PARALLEL_RULES):
    compiled, seconds = _timed_compile(embed, params, images)
  return {"global_batch": b, "compile_s": round(seconds, 1),
          "memory": memory(compiled, topo.hbm_gib),
          "xla_flops_per_chip": _costs(compiled)["flops"],
          "collectives": collectives(compiled.as_text())}


def report(config, topo: Topology, *, embed: bool = True) -> dict:
  """Train (and embedding) compile reports of `config` on `topo`."""
  out = {"bench": "compile", "config": config.name, "model": config.model.name,
         "topology": topo.name, "num_slices": topo.num_slices, "chips": len(topo.devices),
         "device": topo.devices[0].device_kind, "peak_tflops_per_chip": topo.peak_tflops,
         "dtype": config.model.get("dtype", "float32"),
         "remat": bool(config.model.get("remat", False)),
         "scan_layers": bool(config.model.get("scan_layers", False)),
         "analytic_gflop_per_image": loop.flops_per_image(config) / 1e9,
         "train": compile_train(config, topo)}
  if embed and config.model.kind in ("mae", "wsl_vit", "wsl_cnn", "munet"):
    out["embed"] = compile_embed(config, topo)
  return out


def check_fits(result: dict) -> None:
  """A one-line error with what would make it fit, when the train step exceeds HBM."""
  mem = result["train"]["memory"]
  if mem["fits"]:
    return
  raise ValueError(
      f"{result['config']} at global batch {result['train']['global_batch']} needs "
      f"{mem['total_gib']:.1f} GiB per chip on {result['topology']} ({mem['hbm_gib']:.0f} GiB "
      "HBM): shard more (--config.mesh.fsdp=-1 --config.mesh.data=1), rematerialise "
      "(--config.model.remat=true), accumulate gradients (--config.grad_accum_steps=N), or "
      "lower the per-chip batch (--config.batch_size)")

