"""Batch-correct well embeddings, build the perturbation map and score it.

  python -m maejax.benchmark --embeddings wells.parquet --out results/ [--correction tvn] --json
  python -m maejax.benchmark --embeddings wells.parquet --relationships efaar --out results/
  python -m maejax.benchmark --embeddings wells.parquet --join cellprofiler.csv --out results/

Works on any table with `Metadata_*` columns and numeric features: this package's embeddings,
another model's, or CellProfiler features (maejax.eval.pipeline). Writes to --out: recall.csv,
recall_curve.csv, replicate_consistency.csv, perturbation_map.parquet, recall_curve.png,
complex_heatmap.png and complex_recall.csv (when a clusters TSV is found: the recall of each
complex's own pairs), replicate_consistency.png, compound_gene.csv and compound_auc.png (with
--compound-targets: the compound-gene benchmark of the wells with a concentration), and mAP
as copairs defines it (maejax.eval.mean_ap): map_replicates.csv (replicate retrieval per perturbation) and
map_relationships.csv (known-partner retrieval per gene and database). Rows repeated whole and
features constant over all wells are dropped with a warning; an empty table, or one well in two
differing rows, is an error; a figure the table is too small for prints as n/a with its reason
(null in --json). With --join, the feature sets of several tables of the same wells are
corrected each on its own and weigh the same (maejax.eval.correct.correct_parts).

  python -m maejax.benchmark --sweep runs/demo [runs/other ...] --out results/sweep [--blocks all]

embeds and scores every kept checkpoint of training runs against their cumulative training
FLOPs, or (--blocks) the newest checkpoint from each encoder block (maejax/cli/sweep.py).
"""

from __future__ import annotations

import argparse
import functools
import sys
from typing import Sequence

import pandas as pd

from maejax import cli
from maejax.cli import sweep
from maejax.eval import benchmark as bench
from maejax.eval import compound
from maejax.eval import correct as correct_lib
from maejax.eval import io
from maejax.eval import mean_ap
from maejax.eval import pipeline


def _thresholds(text):
  try:
    lower, upper = (float(v) for v in text.split(","))
  except ValueError as e:
    raise argparse.ArgumentTypeError(f"threshold {text!r}: expected LOWER,UPPER e.g. 5,95") from e
  if not 0 < lower < upper < 100:
    raise argparse.ArgumentTypeError(f"threshold {text!r}: need 0 < LOWER < UPPER < 100")
  return lower, upper


def _components(text):
  value = float(text)
  return value if 0 < value < 1 else int(value)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
  p = cli.parser("python -m maejax.benchmark", __doc__)
  p.add_argument("--embeddings", required=True,
                 help="well table: .parquet/.csv/.h5ad with Metadata_* + feature columns")
  p.add_argument("--relationships", nargs="+", default=None,
                 help="directory of entity1,entity2 *.txt/*.csv files, the files, or "
                 f"'{bench.EFAAR}': CORUM, HuMAP, Reactome, SIGNOR, StringDB from an installed "
                 f"efaar-benchmarking ({bench.EFAAR_INSTALL}; {bench.EFAAR_LICENCES}). "
                 "Default: the planted pairs, for tables of the embedded synthetic screen")
  p.add_argument("--join", nargs="+", default=None, metavar="TABLE",
                 help="well tables of other feature sets of the same wells (CellProfiler "
                 "features, maejax's intensity_stats.parquet, another model's embedding), "
                 f"matched on {io.WELL_ID}: each set, --embeddings' included, is corrected on "
                 "its own and scaled to the same norm, so each weighs the same in the map "
                 "(maejax.eval.correct.correct_parts)")
  p.add_argument("--out", required=True, help="output directory")
  p.add_argument("--correction", default="tvn", choices=correct_lib.METHODS,
                 help="tvn: EFAAR's tvn_on_controls (standardize and PCA on pooled controls, "
                 "per-batch CORAL); tvn_per_batch: standardize per batch instead "
                 "(maejax.eval.correct)")
  p.add_argument("--perturbation-col", default="perturbation",
                 help="column of gene symbols (Metadata_ prefix optional)")
  p.add_argument("--batch-col", default=None,
                 help="batch column (default: Metadata_experiment if present)")
  p.add_argument("--control-col", default="is_control",
                 help="boolean column marking control wells")
  p.add_argument("--control-key", default=None,
                 help="perturbation name of control wells (instead of --control-col)")
  p.add_argument("--n-components", type=_components, default=None,
                 help="PCA components for pca/tvn: an int, or a variance fraction in (0,1)")
  p.add_argument("--min-controls", type=int, default=2,
                 help="fewest control wells a batch may have")
  p.add_argument("--thresholds", type=_thresholds, nargs="+", default=list(bench.THRESHOLDS),
                 help="percent pairs, e.g. 5,95 10,90")
  p.add_argument("--clusters", default=None,
                 help="clusters TSV for the heat-map and complex_recall.csv (default: "
                 "*clusters*.tsv found in the "
                 "relationships directory)")
  p.add_argument("--n-null", type=int, default=1000,
                 help="random well sets per replicate count for replicate consistency")
  p.add_argument("--max-null-pairs", type=int, default=bench.MAX_NULL_PAIRS,
                 help="above this many perturbation pairs the null cosines are sampled")
  p.add_argument("--map-null-size", type=int, default=mean_ap.NULL_SIZE,
                 help="copairs null size for mAP p-values (0 skips mAP)")
  p.add_argument("--seed", type=int, default=0)
  p.add_argument("--drop-nan-features", action="store_true",
                 help="drop feature columns with NaN/inf instead of failing")
  p.add_argument("--tails", default="both", choices=bench.TAILS,
                 help="recall of pairs in both tails of the null, or the right (top) tail only "
                 "(EFAAR's right-tail recall)")
  p.add_argument("--compound-targets", default=None,
                 help="compound,gene CSV of known targets: scores the compound wells (those "
                 "with a concentration) against the gene map: per-compound AUC and AP of the "
                 "targets, medians and a shuffled-target baseline (maejax.eval.compound; "
                 "compound_gene.csv, compound_auc.png)")
  p.add_argument("--concentration-col", default=compound.CONCENTRATION,
                 help="column of compound concentrations (Metadata_ prefix optional); wells "
                 "with a value are compound wells")
  p.add_argument("--h5ad", action="store_true",
                 help="also write the corrected wells as corrected_wells.h5ad")
  return p.parse_args(argv)


def settings(args) -> pipeline.Settings:
  return pipeline.Settings(
      correction=args.correction, perturbation_col=args.perturbation_col,
      batch_col=args.batch_col, control_col=args.control_col, control_key=args.control_key,
      n_components=args.n_components, min_controls=args.min_controls,
      thresholds=tuple(tuple(t) for t in args.thresholds), n_null=args.n_null, seed=args.seed,
      max_null_pairs=args.max_null_pairs, drop_nan_features=args.drop_nan_features,
      map_null_size=args.map_null_size, tails=args.tails,
      concentration_col=args.concentration_col)


def _fmt(value, spec=".3f"):
  return "n/a" if value is None else format(value, spec)


def _recall_lines(recall: list[dict]) -> str:
  """summary()'s recall records as a table; an n/a recall shows its reason."""
  shown = pd.DataFrame(recall).assign(recall=[
      _fmt(r["recall"]) if r["reason"] is None else f"n/a ({r['reason']})" for r in recall])
  return shown.drop(columns="reason").to_string(index=False, float_format="%.3f")


def _report(info: dict, out: str) -> None:
  """The printed report: figures from summary(), `n/a (reason)` where the input is too small."""
  print(f"{info['wells']} wells -> {info['perturbations']} perturbations, "
        f"correction {info['correction']}")
  if info["parts"]:
    print(f"{len(info['parts'])} feature sets joined at equal weight, each corrected on its "
          f"own ({' + '.join(map(str, info['parts']))} features)")
  print(_recall_lines(info["recall"]))
  rep = info["replicate_consistency"]
  if rep["reason"]:
    print(f"replicate consistency: n/a ({rep['reason']})")
  else:
    print(f"replicate consistency: {rep['perturbations']} perturbations, median cosine "
          f"{_fmt(rep['median_cosine'])} vs random {_fmt(rep['median_null_cosine'])}, "
          f"{_fmt(rep['fraction_significant'])} with p < {rep['alpha']} "
          f"(binomial p {_fmt(rep['binomial_p_value'], '.2g')})")
  maps = info["mean_average_precision"] or {}
  if maps:
    row = maps["replicates"]
    print(f"replicate mAP (copairs, vs {row['negatives']}): " + (
        f"n/a ({row['reason']})" if row["reason"] else
        f"{_fmt(row['mean_average_precision'])}, {_fmt(row['fraction_retrieved'])} "
        f"retrieved at q < {row['threshold']}"))
  for database, row in maps.get("relationships", {}).items():
    print(f"{database} mAP: " + (f"n/a ({row['reason']})" if row["reason"] else
                                 f"{_fmt(row['mean_average_precision'])} over {row['n']} "
                                 f"genes, {_fmt(row['fraction_retrieved'])} retrieved"))
  row = info.get("compound_gene")
  if row:
    print("compound-gene: " + (f"n/a ({row['reason']})" if row["reason"] else
                               f"{row['compounds']} compounds, median AUC "
                               f"{_fmt(row['median_auc'])} (shuffled targets "
                               f"{_fmt(row['baseline_median_auc'])}), median AP "
                               f"{_fmt(row['median_average_precision'])} (shuffled "
                               f"{_fmt(row['baseline_median_average_precision'])})"))
  print(f"wrote {len(info['files'])} files to {out}")


def _read_wells(path) -> pd.DataFrame:
  """The --embeddings table, checked (pipeline.check_wells): an empty file holds no wells."""
  try:
    table = io.read_embeddings(path)
  except pd.errors.EmptyDataError:  # A CSV of zero bytes: not even a header.
    table = pd.DataFrame()
  return pipeline.check_wells(table, path)


def _main(args) -> int:
  table, parts = _read_wells(args.embeddings), None
  if args.join:
    table, parts = pipeline.join_tables(
        [(args.embeddings, table)] + [(path, _read_wells(path)) for path in args.join])
  relationships, planted = bench.relationships_for(table, args.relationships,
                                                   args.perturbation_col, args.concentration_col)
  clusters = args.clusters or planted or pipeline.find_clusters(relationships)
  targets = (None if args.compound_targets is None
             else compound.read_targets(args.compound_targets))
  result = pipeline.run_benchmark(table, relationships, settings(args),
                                  complexes=pipeline.read_complexes(clusters),
                                  source=args.embeddings, compound_targets=targets,
                                  parts=parts)
  files = pipeline.write_outputs(result, args.out, clusters=clusters, h5ad=args.h5ad)
  info = pipeline.summary(result, files)
  _report(info, args.out)
  if args.json:
    cli.print_json(info)
  return 0


def main(argv: Sequence[str] | None = None) -> int:
  argv = sys.argv[1:] if argv is None else list(argv)
  if any(a == "--sweep" or a.startswith("--sweep=") for a in argv):
    return sweep.main(argv)  # Recall vs training compute / encoder block.
  return cli.run(functools.partial(_main, parse_args(argv)))
