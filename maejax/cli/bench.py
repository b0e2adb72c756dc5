"""Speed figures: `python -m maejax.bench {model,embed,train,compile,data,benchmark,gpu-check}
... [--json]`.

`model` times one train step (forward, backward, AdamW) of a registered model on random uint8
images on one device; `embed` its embedding forward; `--compare-torch` times the PyTorch model
of the same shape (transformers' ViTMAE, the OpenPhenom architecture) interleaved in the same
run, and for `model` the speedup over PyTorch that the machine's matmul speed allows at all.
`train` times the real sharded step of a config; `data` the input pipeline; `benchmark` each
step of `maejax.benchmark` on a synthetic well table of any size; `gpu-check`
measures all of them on an accelerator in one call (maejax/cli/gpu_check.py).
"""

from __future__ import annotations

import os
import re
import sys
import tempfile
import time
from typing import Sequence

import jax
import numpy as np

from maejax import api
from maejax import cli
from maejax import config as config_lib
from maejax import host
from maejax import models
from maejax.cli import gpu_check
from maejax.data import bench as data_bench
from maejax.eval import embed as embed_lib
from maejax.eval import mean_ap
from maejax.eval import scale
from maejax.models import flops
from maejax.models import layers
from maejax.train import aot
from maejax.train import bench as train_bench
from maejax.train import metrics


def print_figures(result: dict) -> None:
  for k, v in result.items():
    print(f"{k:>22}: {v:.4g}" if isinstance(v, float) else f"{k:>22}: {v}")


def main_model(argv) -> int:
  p = cli.parser("python -m maejax.bench model",
                 "Train-step speed of one registered model on random images (one device).")
  p.add_argument("--model", default="vits16", help=f"one of {', '.join(sorted(models.REGISTRY))}")
  p.add_argument("--batch-size", type=int, default=8)
  p.add_argument("--channels", type=int, default=None, help="default: the model's")
  p.add_argument("--image-size", type=int, default=None, help="default: the model's img_size")
  p.add_argument("--steps", type=int, default=5, help="timed steps after the compile step")
  p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
  p.add_argument("--remat", action="store_true")
  p.add_argument("--compare-torch", action="store_true",
                 help="also time transformers' ViTMAEForPreTraining of the same shape (AdamW; "
                      "under torch.autocast for bfloat16), interleaved with maejax's steps "
                      "(needs the torch extra)")
  args, overrides = cli.parse(p, argv)

  def body():
    config = train_bench.model_config(args.model, batch_size=args.batch_size,
                                      channels=args.channels, image_size=args.image_size,
                                      dtype=args.dtype, remat=args.remat)
    config_lib.apply_overrides(config, overrides)
    torch_step = _torch_train_step(config) if args.compare_torch else None
    out = dict(train_bench.bench(config, steps=args.steps, num_devices=1,
                                 interleave=torch_step), bench="model")
    if torch_step is not None:
      out["torch_step_s"] = out.pop("interleaved_step_s")
      out["torch_model"] = "transformers.ViTMAEForPreTraining"
      out["speedup_vs_torch"] = out["torch_step_s"] / out["step_s"]
      out["torch_tflops_per_s"] = (out["gflop_per_image"] * out["batch_size"]
                                   / out["torch_step_s"] / 1e3)
      out.update(matmul_ceiling(out["torch_tflops_per_s"], dtype=args.dtype))
    return out

  return cli.report(args, body, print_figures)


def matmul_ceiling(torch_tflops: float, shape=(2048, 512, 2048), reps: int = 10,
                   dtype: str = "float32") -> dict:
  """Each framework's matmul speed in `dtype` on one [m, k] x [k, n] product (the shape of a
  decoder MLP layer; maejax's as its layers multiply, `layers.dot_general`), and the speedup
  over PyTorch's step that a step of the same FLOPs, all at the faster of the two, would have:
  a ceiling for any implementation of the step."""
  import torch
  m, k, n = shape
  x, y = (np.random.default_rng(i).standard_normal(s, dtype=np.float32)
          for i, s in enumerate(((m, k), (k, n))))
  jx, jy = (jax.device_put(a).astype(dtype) for a in (x, y))
  matmul = jax.jit(lambda p, q: layers.dot_general(p, q, (((1,), (0,)), ((), ()))))
  tx, ty = (torch.from_numpy(a).to(getattr(torch, dtype)) for a in (x, y))
  runs = {"jax": lambda: matmul(jx, jy).block_until_ready(), "torch": lambda: tx @ ty}
  out = {}
  for name, fn in runs.items():
    fn()
    out[f"{name}_matmul_tflops_per_s"] = 2 * m * k * n / float(
        np.median([_seconds(fn) for _ in range(reps)])) / 1e12
  out["speedup_ceiling_vs_torch"] = max(out.values()) / torch_tflops
  return out


def _require_torch():
  try:
    import torch  # noqa: F401  (an optional dependency: the torch extra)
    import transformers  # noqa: F401
  except ImportError as e:
    raise ImportError(f"--compare-torch needs torch and transformers ({e.name} is missing): "
                      "pip install -e '.[torch]'") from None
  from maejax.cli import torch_reference
  return torch_reference


def _torch_train_step(config):
  """One train step (forward, backward, AdamW on fp32 weights) of transformers'
  ViTMAEForPreTraining of the shape of `config.model`, as a callable on a fixed random batch;
  its forward pass and loss under torch.autocast(bfloat16) where the model computes in bf16,
  as maejax's `dtype="bfloat16"` does (fp32 parameters, bf16 products)."""
  cfg = models.resolve(config.model)
  if cfg.kind != "mae" or cfg.channel_agnostic:
    raise ValueError(f"--compare-torch compares ViT-MAEs (vits16, vitb16, ...) with "
                     f"transformers' ViTMAE; {cfg.name} is not one")
  bf16 = config.model.get("dtype", "float32") == "bfloat16"
  ref = _require_torch()
  import torch
  size, channels = int(config.data.crop_size), len(config.data.channels)
  model = ref.vitmae_for_pretraining(cfg, image_size=size, channels=channels)
  opt = torch.optim.AdamW(model.parameters(), lr=float(config.lr))
  pixels = torch.randn(int(config.batch_size), channels, size, size,
                       generator=torch.Generator().manual_seed(0))

  def step():
    opt.zero_grad(set_to_none=True)
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
      loss = model(pixel_values=pixels).loss
    loss.backward()
    opt.step()

  step.model = model
  return step


def main_embed(argv) -> int:
  p = cli.parser("python -m maejax.bench embed",
                 "Embedding speed (`maejax.load(...).embed`: all tokens, no masking) of one "
                 "registered model with random weights on random images (one device).")
  p.add_argument("--model", default="camae_s16",
                 help=f"one of {', '.join(sorted(models.REGISTRY))}")
  p.add_argument("--batch-size", type=int, default=8)
  p.add_argument("--channels", type=int, default=6)
  p.add_argument("--image-size", type=int, default=None, help="default: the model's img_size")
  p.add_argument("--steps", type=int, default=5, help="timed batches after the warm-up")
  p.add_argument("--dtype", default="float32", choices=api.DTYPES,
                 help="compute precision; bfloat16 also reports each crop's cosine to the "
                      "float32 embedding, and PyTorch runs under torch.autocast(bfloat16)")
  p.add_argument("--compare-torch", action="store_true",
                 help="also time the PyTorch OpenPhenom architecture (CA-MAE models) of the "
                      "same shape, interleaved (needs the torch extra)")
  args, overrides = cli.parse(p, argv)

  def body():
    config = train_bench.model_config(args.model, batch_size=args.batch_size,
                                      channels=args.channels, image_size=args.image_size)
    config_lib.apply_overrides(config, overrides)
    return bench_embed(config, steps=args.steps, compare_torch=args.compare_torch,
                       dtype=args.dtype)

  return cli.report(args, body, print_figures)


def bench_embed(config, *, steps: int, compare_torch: bool, dtype: str = "float32") -> dict:
  """Median seconds of `Model.embed` on one batch in `dtype` (and of the PyTorch OpenPhenom
  architecture's forward, alternating with it, when compare_torch), the host CPU and the
  kernels each side ran its matrix products with."""
  cfg = models.resolve(config.model)
  b, size, c = int(config.batch_size), int(config.data.crop_size), len(config.data.channels)
  images = np.random.default_rng(0).integers(0, 256, (b, size, size, c), dtype=np.uint8)
  reference = embed_lib.random_model(config)
  model = reference.with_dtype(dtype)
  run = lambda: model.embed(images, batch_size=b)
  other = _torch_embed(cfg, images, dtype) if compare_torch else None
  t0 = time.perf_counter()
  embeddings = run()  # Compile and warm-up.
  compile_s = time.perf_counter() - t0
  times, other_times = train_bench.alternate(run, other, steps)
  patches = (size // cfg.patch_size) ** 2 * (c if cfg.channel_agnostic else 1)
  out = dict(bench="embed", model=cfg.name, backend=jax.default_backend(), dtype=dtype,
             batch_size=b, image_size=size, channels=c, tokens=1 + patches,
             compile_s=round(compile_s, 2), embed_s=float(np.median(times)),
             images_per_s=b / float(np.median(times)))
  if jax.default_backend() == "cpu":
    out["cpu"] = host.cpu()
  ids = np.tile(np.arange(c, dtype=np.int32), (b, 1))
  out["xla_dots"] = dot_kernels(model.embedder(b).compiled_text(images, ids))
  if dtype != "float32":
    out["cosine_to_float32"] = cosine_summary(embeddings, reference.embed(images, batch_size=b))
  if other is not None:
    out.update(torch_model="OpenPhenom architecture (maejax/cli/torch_reference.py)",
               torch_embed_s=float(np.median(other_times)), **other.report())
    out["speedup_vs_torch"] = out["torch_embed_s"] / out["embed_s"]
  return out


def cosine_summary(x, reference) -> dict:
  """Per-row cosine similarity of [n, d] `x` to `reference`: min and median."""
  x, reference = np.asarray(x, np.float64), np.asarray(reference, np.float64)
  cos = (x * reference).sum(1) / (np.linalg.norm(x, axis=1) * np.linalg.norm(reference, axis=1))
  return dict(min=float(cos.min()), median=float(np.median(cos)))


def dot_kernels(hlo_text: str) -> dict:
  """What the compiled program does for its matrix products: the operand dtypes of its `dot`s
  (XLA:CPU rewrites bf16 dots it has no kernel for into f32 dots between converts) and the
  fusion kinds / custom calls they run in (e.g. `__ynn_fusion`, a oneDNN call)."""
  dtypes = {}
  for lhs in re.findall(r" dot\(%?([\w.\-]+)", hlo_text):
    # Operands print as names: the dtype is that of the name's definition.
    found = re.search(rf"%{re.escape(lhs)} = (\w+)\[", hlo_text)
    key = found.group(1) if found else "unknown"
    dtypes[key] = dtypes.get(key, 0) + 1
  kinds = sorted(set(re.findall(r'"kind":"(__\w+)"', hlo_text))
                 | set(re.findall(r'custom_call_target="([^"]+)"', hlo_text)))
  return dict(dot_operand_dtypes=dtypes, kernels=kinds)


def _torch_embed(cfg, images, dtype: str = "float32"):
  """The PyTorch OpenPhenom architecture's embedding of `images` (uint8 [b, H, W, c]), as a
  callable (under torch.autocast for bfloat16) with a `report()` of its kernels and, for
  bfloat16, each crop's cosine to its float32 embedding."""
  if not cfg.channel_agnostic:
    raise ValueError(f"embed --compare-torch compares CA-MAEs (camae_*) with the PyTorch "
                     f"OpenPhenom architecture; {cfg.name} is not one")
  ref = _require_torch()
  import torch
  model = ref.openphenom_of(cfg, image_size=images.shape[1], channels=images.shape[-1]).eval()
  pixels = torch.from_numpy(np.ascontiguousarray(images.transpose(0, 3, 1, 2)))

  def embed(precision=dtype):
    with torch.inference_mode(), torch.autocast(
        "cpu", dtype=torch.bfloat16, enabled=precision == "bfloat16"):
      return model.embed(pixels).float().numpy()

  def report():
    lines = onednn_verbose(embed)
    # onednn_verbose,v1,primitive,exec,cpu,<primitive>,<implementation>,...
    impls = sorted({f"{f[5]}:{f[6]}" for f in (line.split(",") for line in lines)
                    if len(f) > 6 and f[2:4] == ["primitive", "exec"]})
    out = dict(torch_version=torch.__version__,
               torch_cpu_capability=torch.backends.cpu.get_cpu_capability(),
               torch_onednn_kernels=impls,
               torch_used_amx=used_amx(impls))
    if dtype != "float32":
      out["torch_cosine_to_float32"] = cosine_summary(embed(), embed("float32"))
    return out

  embed.report = report
  return embed


def used_amx(kernels) -> bool:
  """Whether oneDNN ran a matrix product (matmul, inner product, convolution) on AMX tiles:
  its implementation names an AMX ISA. Element-wise kernels name the CPU's ISA (`avx10_1_512_amx`)
  whatever they compute, so they do not count."""
  products = ("matmul", "inner_product", "convolution", "deconvolution")
  return any(k.split(":")[0] in products and "amx" in k for k in kernels)


def onednn_verbose(fn) -> list[str]:
  """oneDNN's verbose lines (each primitive's implementation: `brg:avx512_core_amx` is an AMX
  kernel) printed while PyTorch runs `fn` once; oneDNN writes them to fd 1."""
  import torch
  with tempfile.TemporaryFile() as f:
    sys.stdout.flush()
    saved = os.dup(1)
    os.dup2(f.fileno(), 1)
    try:
      with torch.backends.mkldnn.verbose(torch.backends.mkldnn.VERBOSE_ON):
        fn()
    finally:
      sys.stdout.flush()
      os.dup2(saved, 1)
      os.close(saved)
    f.seek(0)
    return f.read().decode(errors="replace").splitlines()


def _seconds(fn) -> float:
  t0 = time.perf_counter()
  fn()
  return time.perf_counter() - t0


def main_train(argv) -> int:
  p = cli.parser("python -m maejax.bench train",
                 "Speed of the sharded train step of a config.", config_lib.default_config())
  p.add_argument("--config", required=True, help="config file, e.g. configs/vitl16.py[:plus]")
  p.add_argument("--steps", type=int, default=10, help="timed steps after the compile step")
  p.add_argument("--num-devices", type=int, default=0,
                 help="use only the first N devices (default: all)")
  args, overrides = cli.parse(p, argv)

  def body():
    config = cli.load_config(args.config, overrides)
    return train_bench.bench(config, steps=args.steps, num_devices=args.num_devices)

  return cli.report(args, body, print_figures)


def main_compile(argv) -> int:
  p = cli.parser("python -m maejax.bench compile",
                 "Compile a config's sharded train step and embedding step ahead of time for a "
                 "TPU slice (needs libtpu, no TPU): per-chip HBM, FLOPs, the compiler's "
                 "cost-model step time and MFU (estimates), collectives. Exit 2 when it does "
                 "not fit.", config_lib.default_config())
  p.add_argument("--config", required=True, help="config file or name, e.g. configs/vitl8.py")
  p.add_argument("--topology", required=True, help="e.g. v5p:4x4x4, v5e:4x4, v4:2x2x2, v6e:4x4")
  p.add_argument("--num-slices", type=int, default=1,
                 help="slices joined by DCN (the data axis spans them: set --config.mesh.dcn_data)")
  p.add_argument("--no-embed", action="store_true", help="compile the train step only")
  args, overrides = cli.parse(p, argv)

  def body():
    config = cli.load_config(args.config, overrides)
    result = aot.report(config, aot.topology(args.topology, args.num_slices),
                        embed=not args.no_embed)
    _show_compile(result)
    if args.json:
      cli.print_json(result)
    aot.check_fits(result)

  return cli.run(body)


def _gib(b):
  return f"{b / 2 ** 30:.2f} GiB"


def _show_compile(r: dict) -> None:
  t = r["train"]
  mesh = " ".join(f"{k}={v}" for k, v in t["mesh"].items())
  print(f"{r['config']} ({r['model']}, {r['dtype']}, scan_layers={r['scan_layers']}, "
        f"remat={r['remat']}) on {r['topology']} x{r['num_slices']}: {r['chips']} chips "
        f"({r['device']}), mesh {mesh}, global batch {t['global_batch']} "
        f"({t['per_chip_batch']:g} per chip)")
  for name in ("train", "embed"):
    if name not in r:
      continue
    step, m = r[name], r[name]["memory"]
    print(f"{name} step: compiled in {step['compile_s']:.1f} s; HBM per chip: arguments "
          f"{m['arguments_gib']:.2f} + outputs {m['outputs_gib']:.2f} - donated "
          f"{m['aliased_gib']:.2f} + temporaries {m['temporaries_gib']:.2f} = "
          f"{m['total_gib']:.2f} GiB of {m['hbm_gib']:.0f} "
          f"({'fits' if m['fits'] else 'DOES NOT FIT'}, margin {m['margin']:.0%})")
    used = [f"{op} {c['count']} ({_gib(c['bytes'])})" for op, c in step["collectives"].items()
            if c["count"]]
    print(f"  collectives (static count, result bytes): {', '.join(used) or 'none'}")
  print(f"  train FLOPs per chip: XLA {t['xla_flops_per_chip']:.3g}, analytic "
        f"{t['analytic_flops_per_chip']:.3g}")
  if t["cost_model_step_s"]:
    mfu = t["cost_model_mfu"]
    print(f"  compiler cost-model estimate (not a measurement): step "
          f"{t['cost_model_step_s']:.4g} s" + (f", MFU {mfu:.1%}" if mfu is not None else ""))
    for name, part in (t["cost_model"].get("parts") or {}).items():
      what = f"{name} ({part['blocks']} blocks)" if part["blocks"] else name
      mfu = f", MFU {part['mfu']:.0%}" if part["mfu"] is not None else ""
      print(f"    {what}: {part['cost_model_s'] * 1e3:.2f} ms ({part['share']:.0%} of the "
            f"step){mfu}")


def main_data(argv) -> int:
  p = cli.parser("python -m maejax.bench data", data_bench.__doc__)
  p.add_argument("--sites", type=int, default=200, help="sites written for folder/ArrayRecord")
  p.add_argument("--site-size", type=int, default=256)
  p.add_argument("--crop-size", type=int, default=256)
  p.add_argument("--batch-size", type=int, default=32)
  p.add_argument("--seconds", type=float, default=3.0, help="time per measurement")
  p.add_argument("--workers", type=int, default=0, help="also time N Grain worker processes")
  p.add_argument("--mfu", type=float, default=0.4,
                 help="assumed H100 utilisation for the ViT-L/16 estimate")
  p.add_argument("--workdir", default="", help="where to write the test data (default: a temp dir)")
  p.add_argument("--ingest", action="store_true",
                 help="time the ingest of a PNG folder instead: in this process and on Beam's "
                      "DirectRunner with 1 and 2 workers (the beam extra)")
  p.add_argument("--shards", type=int, default=8, help="--ingest: shards written")
  p.add_argument("--threads", type=int, default=4, help="--ingest: decoding threads per shard")
  args = p.parse_args(argv)
  if args.ingest:
    return _main_ingest(args)

  def body():
    with tempfile.TemporaryDirectory() as tmp:
      out = data_bench.run(workdir=args.workdir or tmp, sites=args.sites,
                           site_size=args.site_size, crop_size=args.crop_size,
                           batch_size=args.batch_size, seconds=args.seconds,
                           workers=args.workers)
    # An estimate, not a measurement: a ViT-L/16 MAE at `mfu` of one H100's bf16 peak.
    per_image = flops.train_flops_per_example("vitl16", args.crop_size, 6)
    vit = metrics.PEAK_TFLOPS["H100"] * 1e12 * args.mfu / per_image
    out["vitl16_h100_images_per_s_at_mfu"] = dict(
        mfu=args.mfu, images_per_s=round(vit, 1),
        arrayrecord_cores_needed=round(vit / out["per_worker"]["arrayrecord"]["crops_per_s"], 2))
    return out

  return cli.report(args, body, _show_data)


def _main_ingest(args) -> int:
  def body():
    with tempfile.TemporaryDirectory() as tmp:
      return data_bench.ingest_rates(workdir=args.workdir or tmp, sites=args.sites,
                                     site_size=args.site_size, num_shards=args.shards,
                                     num_threads=args.threads)

  def show(out):
    for name, r in out["runs"].items():
      print(f"{name:22s} {r['sites_per_s']:8.1f} sites/s  {r['mb_per_s']:7.1f} MB/s  "
            f"({out['sites']} sites {out['site_shape']}, {r['seconds']} s)")

  return cli.report(args, body, show)


def _show_data(out: dict) -> None:
  for name, r in out["per_worker"].items():
    print(f"{name:12s} {r['crops_per_s']:9.1f} crops/s  {r['mb_per_s']:8.1f} MB/s  "
          f"crop {r['crop_shape']}")


def main_benchmark(argv) -> int:
  p = cli.parser("python -m maejax.bench benchmark", scale.__doc__)
  p.add_argument("--wells", type=int, default=10_000)
  p.add_argument("--features", type=int, default=1024)
  p.add_argument("--genes", type=int, default=17_000)
  p.add_argument("--pairs", type=int, default=300_000, help="known gene pairs")
  p.add_argument("--batches", type=int, default=50)
  p.add_argument("--map-null-size", type=int, default=mean_ap.NULL_SIZE,
                 help="copairs null size for the mAP p-values (0 skips mAP)")
  p.add_argument("--n-null", type=int, default=1000, help="replicate-consistency null sets")
  p.add_argument("--workdir", default="", help="where to write the table and results "
                 "(default: a temp dir)")
  args = p.parse_args(argv)

  def body():
    with tempfile.TemporaryDirectory() as tmp:
      return scale.run(args.wells, args.features, args.genes, args.workdir or tmp,
                       pairs=args.pairs, batches=args.batches,
                       map_null_size=args.map_null_size, n_null=args.n_null,
                       log=lambda line: print(line, file=sys.stderr, flush=True))

  return cli.report(args, body, _show_benchmark)


def _show_benchmark(out: dict) -> None:
  print(f"{out['wells']} wells x {out['features']} features, {out['genes']} genes, "
        f"{out['pairs']} pairs")
  for r in out["stages"]:
    print(scale.format_stage(r))
  print(f"{'total (read to write)':>22}: {out['total_seconds']:8.1f} s wall "
        f"{out['total_cpu_seconds']:8.1f} s CPU  peak RSS {out['peak_rss_gib']:6.2f} GiB"
        + ("" if out["peak_reset"] else " (peaks cumulative)"))


COMMANDS = {"model": main_model, "embed": main_embed, "data": main_data, "train": main_train,
            "compile": main_compile, "benchmark": main_benchmark, "gpu-check": gpu_check.main}


def main(argv: Sequence[str] | None = None) -> int:
  argv = sys.argv[1:] if argv is None else list(argv)
  if not argv or argv[0] not in COMMANDS:
    print(f"usage: python -m maejax.bench {{{','.join(COMMANDS)}}} ... [--json]\n"
          "  model    train-step speed of one registered model on random images "
          "(--compare-torch: vs transformers' ViTMAE)\n"
          "  embed    embedding speed of one registered model "
          "(--compare-torch: vs the PyTorch OpenPhenom architecture)\n"
          "  train    speed of the sharded train step of a config\n"
          "  compile  ahead-of-time compile for a TPU slice: per-chip HBM, cost-model MFU\n"
          "  data     input-pipeline crops/s per worker for each source\n"
          "  benchmark  time and peak memory of each step of maejax.benchmark on a "
          "synthetic well table of any size\n"
          "  gpu-check  the one-call GPU check (launch/gpu_check.sh): JSON of every figure\n"
          "each takes --help", file=sys.stderr if argv and argv[0] not in ("-h", "--help")
          else sys.stdout)
    return 0 if argv and argv[0] in ("-h", "--help") else 2
  return COMMANDS[argv[0]](argv[1:])
