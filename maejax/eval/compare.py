"""Train -> embed -> correct -> benchmark several configs on one screen, in one table.

    python -m maejax.compare --configs configs/demo.py,configs/munet_demo.py,configs/wsl_demo.py \
        --out results/compare [--steps N] [--eval-data.synthetic.site_size=256] [--json]

For each config: train it in `<out>/runs/<name>` (or reuse that workdir when its checkpoint
reached the step count), embed every well of the config's screen with the trained weights and
with the same architecture's random initial weights, and score each table with the benchmark
(no correction and TVN) against the screen's known relationships (the synthetic screen's
planted pairs, `source.relationships`, or --relationships). A classical baseline, per-channel
intensity statistics of each site (mean, std, percentiles), is scored the same way. Writes
`<out>/comparison.csv`, `<out>/recall_curve_<correction>.png` (one line per model), each row's
benchmark outputs in `<out>/<model>/<correction>/` and the well tables in `<out>/wells/`.

`--eval-data.<field>=<value>` changes only the screen that is embedded and scored: the demo
configs train on 64 px sites (fast to render) holding ~3 cells each, too few for stable well
profiles; the same screen rendered at 256 px (same genes, wells, plates and batch effects,
more cells per site) is scored.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd

from maejax.eval import embed as embed_lib
from maejax.eval import plots

CORRECTIONS = ("none", "tvn")
COLUMNS = ["model", "weights", "correction", "recall_5_95", "recall_10_90",
           "replicate_fraction_significant", "replicate_median_cosine",
           "replicate_null_cosine", "random_baseline_5_95", "steps", "train_wall_s"]


def load_configs(specs: Sequence[str], overrides: Sequence[str] = (), steps: int | None = None):
  """Config files (`configs/X.py[:arg]`) with `--config.*` overrides and an optional step count."""
  from maejax.train import config as config_lib  # pylint: disable=g-import-not-at-top
  configs = []
  for spec in specs:
    config = config_lib.load_config(spec)
    config_lib.apply_overrides(config, overrides)
    if steps is not None:
      if steps < 1:
        raise ValueError(f"--steps {steps}: expected a positive step count")
      config.total_steps = int(steps)
      config.ckpt_every = min(int(config.ckpt_every), int(steps))
    configs.append(config)
  names = [c.name for c in configs]
  if len(set(names)) != len(names):
    raise ValueError(f"configs share a name ({names}); each needs its own workdir "
                     "(set config.name in the files)")
  return configs


def match_classes(config, source) -> str | None:
  """A weakly supervised head must have one class per label of the screen it trains on."""
  from maejax import data as data_lib  # pylint: disable=g-import-not-at-top
  column = config.data.get("label_column", "")
  if not column or "num_classes" not in config.model:
    return None
  n = data_lib.num_classes(source, column)
  if int(config.model.num_classes) == n:
    return None
  note = (f"{config.name}: model.num_classes {config.model.num_classes} -> {n} (the "
          f"{column!r} labels of this screen)")
  config.model.num_classes = n
  return note


def train_or_reuse(config, workdir: str, *, progress: bool = True, compiler_options=None) -> dict:
  """Trains `config` in `workdir` unless its newest checkpoint already reached total_steps."""
  from maejax import api  # pylint: disable=g-import-not-at-top
  from maejax.train import loop  # pylint: disable=g-import-not-at-top
  total = int(config.total_steps)
  kept = api.checkpoint_steps(workdir)
  if total in kept:
    return {"status": "reused", "step": total, "wall_s": None, "workdir": workdir}
  if kept and kept[-1] > total:
    raise ValueError(f"{workdir} holds checkpoints up to step {kept[-1]} but not step {total} "
                     f"(kept: {kept}); pass --steps {kept[-1]} or another --out")
  return loop.train(config, workdir, progress=progress, compiler_options=compiler_options)


def random_model(config):
  """The config's architecture with its initial (untrained) weights."""
  # pylint: disable=g-import-not-at-top
  from flax import nnx
  from maejax import api, models
  return api.Model(models.create(config.model, rngs=nnx.Rngs(int(config.get("seed", 0)))),
                   config)


def score(table: pd.DataFrame, relationships: dict, out_dir: Path, *, n_null: int,
          map_null_size: int) -> dict:
  """Benchmarks one well table under each correction; returns {correction: result}."""
  from maejax import benchmark  # pylint: disable=g-import-not-at-top
  return {c: benchmark.run_benchmark(table, relationships, correction=c, n_null=n_null,
                                     out_dir=out_dir / c, map_null_size=map_null_size)
          for c in CORRECTIONS}


def _row(model, weights, correction, result, steps=None, train_wall_s=None) -> dict:
  recall = result["recall"]
  planted = recall.groupby(["lower", "upper"]).recall.mean()  # Mean over databases.
  base = recall.groupby(["lower", "upper"]).random_baseline.mean()
  rep = result["replicate_summary"]
  return dict(model=model, weights=weights, correction=correction,
              recall_5_95=float(planted.get((5, 95), np.nan)),
              recall_10_90=float(planted.get((10, 90), np.nan)),
              replicate_fraction_significant=rep.get("fraction_significant"),
              replicate_median_cosine=rep.get("median_cosine"),
              replicate_null_cosine=rep.get("median_null_cosine"),
              random_baseline_5_95=float(base.get((5, 95), np.nan)),
              steps=steps, train_wall_s=train_wall_s)


def compare(configs, out_dir, *, eval_overrides: Sequence[str] = (), relationships=None,
            batch_size: int = 64,
            crop_size: int | None = None, progress: bool = True, n_null: int = 1000,
            map_null_size: int = 0, compiler_options=None, log=print) -> dict:
  """Runs the comparison; returns {"table": DataFrame, "checks": dict, "files": [...]}.

  eval_overrides: `data.<field>=<value>` applied to the data that is embedded and scored (not
  to training), e.g. larger sites of the same synthetic screen: data.synthetic.site_size=256.
  """
  # pylint: disable=g-import-not-at-top
  import maejax
  from maejax import data as data_lib
  from maejax.eval import benchmark as bench
  from maejax.eval import io
  out = Path(out_dir)
  out.mkdir(parents=True, exist_ok=True)
  rows, curves, baselines, files = [], {c: [] for c in CORRECTIONS}, {}, []
  screens = {}

  def add(label, model, weights, table, source, steps=None, wall=None):
    files.append(str(io.write_embeddings(table, out / "wells" / f"{label}.parquet")))
    results = score(table, relationships_for(source), out / label, n_null=n_null,
                    map_null_size=map_null_size)
    for correction, result in results.items():
      rows.append(_row(model, weights, correction, result, steps, wall))
      curve = result["curve"]
      curves[correction].append(curve[curve.database != "random"].groupby(
          "percentile", as_index=False).recall.mean().assign(database=label))
      baselines[correction] = curve[curve.database == "random"]
      files.extend(result["files"])
    log(f"  {label}: recall 5/95 " + ", ".join(
        f"{r['correction']} {r['recall_5_95']:.3f}" for r in rows[-len(results):]))

  def relationships_for(src):
    if relationships is not None:
      return relationships
    pairs = getattr(src, "relationships", None)
    if pairs is None:
      raise ValueError("the screen has no planted relationships (not the synthetic screen); "
                       "pass --relationships DIR_OR_FILES")
    return {"planted": bench.undirected_pairs(pairs)}

  t0 = time.time()
  for config in configs:
    note = match_classes(config, data_lib.make_source(config.data))
    if note:
      log(note)
    data_config = embed_lib.data_config_for(config, overrides=eval_overrides)
    key = json.dumps(data_config.to_dict(), sort_keys=True, default=str)
    source = screens[key] = screens.get(key) or data_lib.make_source(data_config)
    workdir = str(out / "runs" / config.name)
    log(f"{config.name} ({config.model.name}): training {config.total_steps} steps in {workdir}")
    summary = train_or_reuse(config, workdir, progress=progress,
                             compiler_options=compiler_options)
    wall = summary.get("wall_s")  # None when an existing workdir was reused.
    for weights, model in (("trained", maejax.load(workdir, step=int(config.total_steps))),
                           ("random", random_model(config))):
      label = config.name if weights == "trained" else f"{config.name}_random"
      log(f"{label}: embedding {len(source)} sites")
      table, _ = embed_lib.embed_wells(model, data_config, crop_size=crop_size,
                                       batch_size=batch_size, progress=progress, source=source)
      trained = weights == "trained"
      add(label, config.name, weights, table, source, int(config.total_steps) if trained else 0,
          wall if trained else None)
  source = next(iter(screens.values()))
  log("intensity statistics: per-channel mean, std, percentiles per site")
  table = embed_lib.sites_to_wells(embed_lib.intensity_sites(source), source.metadata)
  add("intensity_stats", "intensity_stats", "none", table, source)

  table = pd.DataFrame(rows, columns=COLUMNS).astype({"steps": "Int64"})
  csv = out / "comparison.csv"
  table.to_csv(csv, index=False)
  files.append(str(csv))
  for correction, parts in curves.items():
    files.append(str(plots.plot_recall_curves(
        pd.concat(parts + [baselines[correction]], ignore_index=True), out / f"recall_curve_{correction}.png",
        title=f"recall of known relationships ({correction})")))
  return dict(table=table, checks=acceptance(table), files=files,
              wall_s=round(time.time() - t0, 1))


def acceptance(table: pd.DataFrame) -> dict:
  """Per trained model: beats its random weights (TVN, recall 5/95); TVN beats none."""
  checks = {}
  for model in table[table.weights == "trained"].model.unique():
    get = lambda w, c: float(table[(table.model == model) & (table.weights == w)  # noqa: E731
                                   & (table.correction == c)].recall_5_95.iloc[0])
    checks[model] = dict(beats_random=get("trained", "tvn") > get("random", "tvn"),
                         tvn_beats_none=get("trained", "tvn") > get("trained", "none"))
  return checks


def format_table(table: pd.DataFrame) -> str:
  shown = table[["model", "weights", "correction", "recall_5_95", "recall_10_90",
                 "replicate_fraction_significant", "replicate_median_cosine"]].rename(columns={
                     "recall_5_95": "recall 5/95", "recall_10_90": "recall 10/90",
                     "replicate_fraction_significant": "replicates signif.",
                     "replicate_median_cosine": "replicate cos"})
  return shown.to_string(index=False, float_format=lambda v: f"{v:.3f}", na_rep="-")


def _clean(value):
  if value is pd.NA:
    return None
  if isinstance(value, (float, np.floating)):
    return None if math.isnan(value) else float(value)
  if isinstance(value, (np.integer,)):
    return int(value)
  if isinstance(value, (np.bool_,)):
    return bool(value)
  return value


def parse_args(argv):
  parser = argparse.ArgumentParser(
      prog="python -m maejax.compare", description=__doc__,
      formatter_class=argparse.RawDescriptionHelpFormatter,
      epilog="config overrides (applied to every config): --config.<field>=<value>, e.g. "
      "--config.data.synthetic.batch_effects=false --config.batch_size=32; evaluation data "
      "overrides (the embedded and scored screen only): --eval-data.<field>=<value>, e.g. "
      "--eval-data.synthetic.site_size=256 (more cells per well than the demo's 64 px "
      "training sites)")
  parser.add_argument("--configs", required=True,
                      help="comma-separated config files, e.g. configs/demo.py,"
                      "configs/munet_demo.py,configs/wsl_demo.py")
  parser.add_argument("--out", required=True, help="output directory (workdirs in <out>/runs)")
  parser.add_argument("--steps", type=int, default=None,
                      help="training steps for every config (default: each config's)")
  parser.add_argument("--relationships", nargs="+", default=None,
                      help="relationship files/directory (default: the screen's planted pairs)")
  parser.add_argument("--batch-size", type=int, default=64, help="crops per embedding step")
  parser.add_argument("--crop-size", type=int, default=None,
                      help="embedding tile size (default: each config's data.crop_size)")
  parser.add_argument("--n-null", type=int, default=1000,
                      help="random well sets per replicate count (replicate consistency)")
  parser.add_argument("--map-null-size", type=int, default=0,
                      help="copairs mAP null size (0 skips mAP; see maejax.benchmark)")
  parser.add_argument("--progress", action=argparse.BooleanOptionalAction, default=True)
  parser.add_argument("--json", action="store_true",
                      help="print one JSON summary object as the last stdout line")
  from maejax.train import config as config_lib  # pylint: disable=g-import-not-at-top
  args, rest = config_lib.parse_known_overrides(parser, argv, ("--config.", "--eval-data."))
  return (args, [r for r in rest if r.startswith("--config.")],
          [r[len("--eval-"):] for r in rest if r.startswith("--eval-data.")])


def main(argv: Sequence[str] | None = None) -> int:
  args, overrides, eval_overrides = parse_args(sys.argv[1:] if argv is None else argv)
  try:
    configs = load_configs([s for s in args.configs.split(",") if s], overrides, args.steps)
    relationships = None
    if args.relationships:
      from maejax.eval import benchmark as bench  # pylint: disable=g-import-not-at-top
      relationships = bench.load_relationships(args.relationships)
    result = compare(configs, args.out, eval_overrides=eval_overrides,
                     relationships=relationships,
                     batch_size=args.batch_size, crop_size=args.crop_size,
                     progress=args.progress, n_null=args.n_null,
                     map_null_size=args.map_null_size)
  except (ValueError, FileNotFoundError) as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  print(format_table(result["table"]))
  for model, check in result["checks"].items():
    print(f"{model}: trained beats random weights (TVN, recall 5/95): {check['beats_random']}; "
          f"TVN beats no correction: {check['tvn_beats_none']}")
  print(f"wrote {os.path.join(args.out, 'comparison.csv')} and plots in {args.out} "
        f"({result['wall_s']:.0f} s)")
  if args.json:
    rows = [{k: _clean(v) for k, v in row.items()} for row in result["table"].to_dict("records")]
    checks = {m: {k: bool(v) for k, v in c.items()} for m, c in result["checks"].items()}
    print(json.dumps(dict(rows=rows, checks=checks, wall_s=result["wall_s"],
                          out=os.path.abspath(args.out))))
  return 0
