"""Train -> embed -> correct -> benchmark several configs on their screen, in one table.

    python -m maejax.compare --configs configs/demo.py,configs/munet_demo.py,configs/wsl_demo.py \
        --out results/compare [--steps N] [--config.<field>=<value> ...] [--json]

For each config: train it in `<out>/runs/<name>` (or reuse that workdir when its checkpoint
reached the step count), then (maejax.eval.compare) embed every well of the config's own
screen (its config.data: the demo configs' 256 px synthetic sites, tiled into the crops the
model trained on) with the trained weights and with the same architecture's random initial
weights, and score each table with the benchmark (no correction and TVN) against the screen's
known relationships (the synthetic screen's planted pairs, `source.relationships`, or
--relationships). A classical baseline, per-channel intensity statistics of each site (mean,
std, percentiles), is scored the same way. Writes `<out>/comparison.csv`,
`<out>/recall_curve_<correction>.png` (one line per model), each row's benchmark outputs in
`<out>/<model>/<correction>/` and the well tables in `<out>/wells/`.

`--config.<field>=<value>` overrides are applied to every config (training and the embedded
screen alike), e.g. --config.data.synthetic.batch_effects=false --config.batch_size=32.
A synthetic screen with compounds (--config.data.synthetic.compounds=12
--config.data.synthetic.inactive_compounds=4) adds each model's compound-gene median AUC
against its planted targets (and the shuffled-target baseline) to the table.
`--pool cls` embeds every model by its CLS token; `--pool mean cls` scores every model both
ways from one training run (rows `<name> [mean]`, `<name> [cls]`).
"""

from __future__ import annotations

import functools
import itertools
import os
import time
from typing import Sequence

import ml_collections
import pandas as pd

from maejax import cli
from maejax import config as config_lib
from maejax import data as data_lib
from maejax import models
from maejax import workdir as workdir_lib
from maejax.eval import compare as compare_lib
from maejax.eval import pipeline
from maejax.eval import scorer as scorer_lib
from maejax.train import loop


def load_configs(specs: Sequence[str], overrides: Sequence[str] = (),
                 steps: int | None = None) -> list[ml_collections.ConfigDict]:
  """Config files (`configs/X.py[:arg]`) with `--config.*` overrides and an optional step count."""
  if steps is not None and steps < 1:
    raise ValueError(f"--steps {steps}: expected a positive step count")
  configs = []
  for spec in specs:
    config = cli.load_config(spec, overrides)
    if steps is not None:
      config.total_steps = int(steps)
      config.ckpt_every = min(int(config.ckpt_every), int(steps))
    configs.append(config)
  names = [c.name for c in configs]
  if len(set(names)) != len(names):
    raise ValueError(f"configs share a name ({names}); each needs its own workdir "
                     "(set config.name in the files)")
  return configs


def match_classes(config: ml_collections.ConfigDict, source) -> str | None:
  """A weakly supervised head must have one class per label of the screen it trains on."""
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


def train_or_reuse(config, workdir: str, *, progress: bool = True, compiler_options=None,
                   log=lambda message: None) -> dict:
  """Trains `config` in `workdir` unless its newest checkpoint already reached total_steps."""
  total = int(config.total_steps)
  kept = workdir_lib.checkpoint_steps(workdir)
  name = f"{config.name} ({config.model.name})"
  if total in kept:
    log(f"{name}: reusing step {total} in {workdir}")
    return {"status": "reused", "step": total, "wall_s": None, "workdir": workdir}
  if kept and kept[-1] > total:
    raise ValueError(f"{workdir} holds checkpoints up to step {kept[-1]} but not step {total} "
                     f"(kept: {kept}); pass --steps {kept[-1]} or another --out")
  log(f"{name}: training {total} steps in {workdir}")
  return loop.train(config, workdir, progress=progress, compiler_options=compiler_options)


def train_all(configs, scorer: scorer_lib.Scorer, out: str, *, progress: bool = True,
              compiler_options=None) -> list[compare_lib.Run]:
  """Trains (or reuses) every config in `<out>/runs/<name>`."""
  runs = []
  for config in configs:
    note = match_classes(config, scorer.source(scorer.data_config(config)))
    if note:
      scorer.log(note)
    workdir = os.fspath(workdir_lib.path(out) / "runs" / config.name)
    summary = train_or_reuse(config, workdir, progress=progress,
                             compiler_options=compiler_options, log=scorer.log)
    runs.append(compare_lib.Run(config, workdir, summary.get("wall_s")))
  return runs


def format_table(table: pd.DataFrame) -> str:
  """The printed comparison; the compound-gene median AUC when the screen has compounds."""
  columns = ["model", "weights", "correction", "recall_5_95", "recall_10_90",
             "replicate_fraction_significant", "replicate_median_cosine"]
  if table.compound_median_auc.notna().any():
    columns += ["compound_median_auc", "compound_baseline_auc"]
  shown = table[columns].rename(columns={
      "recall_5_95": "recall 5/95", "recall_10_90": "recall 10/90",
      "replicate_fraction_significant": "replicates signif.",
      "replicate_median_cosine": "replicate cos", "compound_median_auc": "compound AUC",
      "compound_baseline_auc": "shuffled AUC"})
  return shown.to_string(index=False, float_format=lambda v: f"{v:.3f}", na_rep="-")


def format_complexes(complexes: pd.DataFrame | None, *, max_complexes: int = 12) -> str | None:
  """Recall 5/95 with TVN of each of a few complexes (columns, with their pair counts) by
  model and weights (rows, as in the comparison table)."""
  if complexes is None:
    return None
  shown = complexes[(complexes.correction == "tvn") & (complexes.lower == 5)
                    & (complexes.upper == 95)]
  if shown.empty or shown.complex.nunique() > max_complexes:
    return None
  column = shown.complex + " (" + shown.pairs.astype(str) + ")"
  wide = shown.assign(column=column).pivot_table(index=["model", "weights"], columns="column",
                                                 values="recall", sort=False)
  wide.columns.name = None
  return wide.to_string(float_format=lambda v: f"{v:.2f}")


def parse_args(argv):
  p = cli.parser("python -m maejax.compare", __doc__, config_lib.default_config(), progress=True)
  p.add_argument("--configs", required=True,
                 help="comma-separated config names or files, e.g. demo,munet_demo,wsl_demo "
                 "or configs/demo.py,configs/munet_demo.py")
  p.add_argument("--out", required=True, help="output directory (workdirs in <out>/runs)")
  p.add_argument("--steps", type=int, default=None,
                 help="training steps for every config (default: each config's)")
  p.add_argument("--relationships", nargs="+", default=None,
                 help="relationship files/directory (default: the screen's planted pairs)")
  cli.add_embedding_flags(p, "embedding tile size (default: each config's data.crop_size)",
                          several_pools=True)
  p.add_argument("--join-stats", action="store_true",
                 help="also score each model's tables joined at equal weight to the per-site "
                 "intensity statistics, each corrected on its own (rows '<name> + "
                 "statistics', with --crop-stats also '<name> (plain) + statistics'; "
                 "maejax.benchmark --join)")
  p.add_argument("--n-null", type=int, default=1000,
                 help="random well sets per replicate count (replicate consistency)")
  p.add_argument("--map-null-size", type=int, default=0,
                 help="copairs mAP null size (0 skips mAP; see maejax.benchmark)")
  return cli.parse(p, argv)


def check_pools(configs: Sequence[ml_collections.ConfigDict],
                pools: Sequence[str] | None) -> None:
  """Before any training: every config's model embeds by each of `pools` (models.pools)."""
  for config, pool in itertools.product(configs, pools or ()):
    model = models.resolve(config.model)
    if pool not in models.pools(model):
      raise ValueError(f"--pool {pool}: {config.name} ({model.name}) embeds by "
                       f"{' or '.join(models.pools(model))}; leave it out of --configs or "
                       "drop --pool")


def run(args, overrides: Sequence[str], *, compiler_options=None) -> dict:
  """Trains every config, then compares them (maejax.eval.compare.compare's result, wall_s
  counting the training too)."""
  t0 = time.time()
  configs = load_configs([s for s in args.configs.split(",") if s], overrides, args.steps)
  check_pools(configs, args.pool)
  relationships, clusters = pipeline.known_relationships(args.relationships)
  settings = pipeline.Settings(n_null=args.n_null, map_null_size=args.map_null_size)
  scorer = scorer_lib.Scorer(workdir_lib.path(args.out) / "wells", settings,
                             relationships=relationships, clusters=clusters,
                             crop_size=args.crop_size, crop_stats=args.crop_stats,
                             batch_size=args.batch_size, progress=args.progress)
  runs = train_all(configs, scorer, args.out, progress=args.progress,
                   compiler_options=compiler_options)
  result = compare_lib.compare(runs, scorer, args.out, join_stats=args.join_stats,
                               pools=args.pool)
  return dict(result, wall_s=round(time.time() - t0, 1))


def _main(args, overrides) -> int:
  result = run(args, overrides)
  print(format_table(result["table"]))
  for model, check in result["checks"].items():
    print(f"{model}: trained beats random weights (TVN, recall 5/95): {check['beats_random']}; "
          f"TVN beats no correction: {check['tvn_beats_none']}")
  complexes = format_complexes(result["complexes"])
  if complexes:
    print("recall 5/95 (TVN) of each complex's own pairs (their count in brackets):\n" + complexes)
  out = os.fspath(workdir_lib.path(args.out))
  print(f"wrote {out}/comparison.csv and plots in {out} ({result['wall_s']:.0f} s)")
  if args.json:
    complexes = result["complexes"]
    cli.print_json(dict(rows=result["table"].to_dict("records"), checks=result["checks"],
                        complexes=None if complexes is None else complexes.to_dict("records"),
                        wall_s=result["wall_s"], out=out))
  return 0


def main(argv: Sequence[str] | None = None) -> int:
  args, overrides = parse_args(argv)
  return cli.run(functools.partial(_main, args, overrides))
