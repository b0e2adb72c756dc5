"""Batch-correct well embeddings, build the perturbation map and score it.

  python -m maejax.benchmark --embeddings wells.parquet \
      --relationships ../shared/benchmarks/relationships --out results/ [--correction tvn] --json

Works on any table with `Metadata_*` columns and numeric features: this package's embeddings,
another model's, or CellProfiler features. Writes to --out: recall.csv, recall_curve.csv,
replicate_consistency.csv, perturbation_map.parquet, recall_curve.png, complex_heatmap.png
(when a clusters TSV is found), replicate_consistency.png, and mAP by copairs
(maejax.eval.mean_ap): map_replicates.csv (replicate retrieval per perturbation) and
map_relationships.csv (known-partner retrieval per gene and database).

  python -m maejax.benchmark --sweep runs/demo [runs/other ...] --out results/sweep [--blocks all]

embeds and scores every kept checkpoint of training runs against their cumulative training
FLOPs, or (--blocks) the newest checkpoint from each encoder block (maejax.eval.sweep).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import warnings
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd

from maejax.eval import aggregate as aggregate_lib
from maejax.eval import benchmark as bench
from maejax.eval import correct as correct_lib
from maejax.eval import io
from maejax.eval import mean_ap
from maejax.eval import plots


def _batch_labels(metadata, batch_col):
  if batch_col is None:
    for candidate in ("experiment", "batch"):
      for name in (candidate, io.METADATA_PREFIX + candidate):
        if name in metadata.columns:
          return metadata[name].astype(str).to_numpy()
    warnings.warn("no Metadata_experiment (batch) column: treating all wells as one batch; "
                  "name the batch column with --batch-col", stacklevel=3)
    return None
  column = io.resolve_column(metadata, batch_col, what="batch", flag="--batch-col")
  return metadata[column].astype(str).to_numpy()


def find_clusters(relationships) -> Path | None:
  """The first `*clusters*.tsv` in the relationship directories, if any."""
  sources = [relationships] if isinstance(relationships, (str, Path)) else relationships
  for source in map(Path, sources):
    if source.is_dir():
      found = sorted(source.glob("*clusters*.tsv"))
      if found:
        return found[0]
  return None


def run_benchmark(table: pd.DataFrame, relationships, *, correction: str = "tvn",
                  perturbation_col: str = "perturbation", batch_col: str | None = None,
                  control_col: str = "is_control", control_key: str | None = None,
                  n_components: int | float | None = None, min_controls: int = 2,
                  thresholds=bench.THRESHOLDS, n_null: int = 1000, seed: int = 0,
                  max_null_pairs: int = bench.MAX_NULL_PAIRS, drop_nan_features: bool = False,
                  out_dir: str | Path | None = None, clusters: str | Path | None = None,
                  h5ad: bool = False, map_null_size: int = mean_ap.NULL_SIZE) -> dict:
  """Correct -> aggregate -> score a well table.

  Args:
    table: one row per well, Metadata_* columns and numeric features.
    relationships: a directory / file(s) of entity1,entity2 pairs, or load_relationships output.
    correction: one of maejax.eval.correct.METHODS.
    out_dir: when given, CSVs, the perturbation map and PNG plots are written there.
    map_null_size: copairs null size for the mAP p-values; 0 skips mAP.
  Returns: dict with `recall`, `curve`, `replicates` (DataFrames), `replicate_summary` (dict),
    `map` (perturbation table), `wells` (corrected well table), `files` (written paths).
  """
  metadata, features, feature_names = io.split_table(table, drop_nan_features=drop_nan_features)
  pert_column = io.resolve_column(metadata, perturbation_col, what="perturbation",
                                  flag="--perturbation-col")
  batch = _batch_labels(metadata, batch_col)
  has_flags = control_key is not None or any(
      c in metadata.columns for c in (control_col, io.METADATA_PREFIX + control_col))
  if correction != "none" or has_flags:
    is_control = io.control_flags(metadata, control_col=control_col, control_key=control_key,
                                  perturbation_col=pert_column)
  else:
    warnings.warn("no control flags: every well goes into the map", stacklevel=2)
    is_control = np.zeros(len(metadata), dtype=bool)
  corrected = correct_lib.correct(features, is_control, batch, method=correction,
                                  n_components=n_components, min_controls=min_controls)
  if correction in ("pca", "tvn"):
    feature_names = [f"PC{i + 1}" for i in range(corrected.shape[1])]
  wells = io.join_table(metadata, corrected, feature_names)
  treated = wells[~is_control].reset_index(drop=True)
  if treated.empty:
    raise ValueError("every well is a control; the map needs perturbation wells")
  _, treated_features, _ = io.split_table(treated)
  replicates, replicate_summary = bench.replicate_consistency(
      treated_features, treated[pert_column].astype(str).to_numpy(),
      None if batch is None else batch[~is_control], n_null=n_null, seed=seed)
  perturbation_map = aggregate_lib.aggregate(treated, by=pert_column)
  _, map_features, _ = io.split_table(perturbation_map)
  genes = perturbation_map[pert_column].astype(str).to_numpy()
  if not isinstance(relationships, dict):
    if clusters is None:
      clusters = find_clusters(relationships)
    relationships = bench.load_relationships(relationships)
  recall, curve = bench.score_relationships(map_features, genes, relationships,
                                            thresholds=thresholds,
                                            max_null_pairs=max_null_pairs, seed=seed)
  recall.insert(1, "threshold", [f"{lo:g}-{hi:g}" for lo, hi in zip(recall.lower, recall.upper)])
  recall["correction"] = correction
  result = dict(recall=recall, curve=curve, replicates=replicates,
                replicate_summary=replicate_summary, map=perturbation_map, wells=wells,
                files=[], correction=correction, mean_ap=None)
  if map_null_size:
    result["mean_ap"] = mean_ap.score(
        wells, perturbation_map, relationships, perturbation_col=pert_column,
        control_col=control_col, control_key=control_key,
        negatives="controls" if is_control.any() else "all", null_size=map_null_size, seed=seed)
  if out_dir is not None:
    result["files"] = write_outputs(result, Path(out_dir), map_features, genes, clusters, h5ad)
  return result


def write_outputs(result: dict, out: Path, map_features, genes, clusters, h5ad) -> list[str]:
  """Writes the CSVs, the map and the plots of a run_benchmark result into `out`."""
  out.mkdir(parents=True, exist_ok=True)
  files = [out / "recall.csv", out / "recall_curve.csv", out / "replicate_consistency.csv"]
  result["recall"].to_csv(files[0], index=False)
  result["curve"].to_csv(files[1], index=False)
  result["replicates"].to_csv(files[2], index=False)
  files.append(io.write_embeddings(result["map"], out / "perturbation_map.parquet"))
  if result.get("mean_ap"):
    for name, key in (("map_replicates.csv", "replicates"), ("map_relationships.csv",
                                                             "relationships")):
      if result["mean_ap"][key] is not None:
        result["mean_ap"][key].to_csv(out / name, index=False)
        files.append(out / name)
  if h5ad:
    files.append(io.write_embeddings(result["wells"], out / "corrected_wells.h5ad"))
  files.append(plots.plot_recall_curves(result["curve"], out / "recall_curve.png",
                                        title=f"recall ({result['correction']})"))
  if clusters is not None:
    heatmap = plots.plot_complex_heatmap(map_features, genes, plots.read_clusters(clusters),
                                         out / "complex_heatmap.png")
    if heatmap is None:
      warnings.warn(f"no complex in {clusters} has 3 or more genes in the map; no heat-map",
                    stacklevel=2)
    else:
      files.append(heatmap)
  replicate_png = plots.plot_replicate_consistency(
      result["replicates"], result["replicate_summary"]["median_null_cosine"],
      out / "replicate_consistency.png")
  if replicate_png is not None:
    files.append(replicate_png)
  return [str(f) for f in files]


def summary(result: dict) -> dict:
  """A JSON-ready summary of a run_benchmark result (NaN -> None)."""
  def clean(value):
    if isinstance(value, (float, np.floating)):
      return None if math.isnan(value) else float(value)
    if isinstance(value, np.integer):
      return int(value)
    return value

  def nested(value):
    return ({k: nested(v) for k, v in value.items()} if isinstance(value, dict)
            else clean(value))

  recall = [{k: clean(v) for k, v in row.items()}
            for row in result["recall"][["database", "threshold", "recall", "pairs",
                                         "random_baseline"]].to_dict("records")]
  return dict(correction=result["correction"],
              wells=int(len(result["wells"])), perturbations=int(len(result["map"])),
              recall=recall,
              replicate_consistency={k: clean(v) for k, v in result["replicate_summary"].items()},
              mean_average_precision=nested(result["mean_ap"]["summary"])
              if result.get("mean_ap") else None,
              files=result["files"])


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
  parser = argparse.ArgumentParser(
      prog="python -m maejax.benchmark", description=__doc__,
      formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--embeddings", required=True,
                      help="well table: .parquet/.csv/.h5ad with Metadata_* + feature columns")
  parser.add_argument("--relationships", required=True, nargs="+",
                      help="directory of entity1,entity2 *.txt/*.csv files, or the files")
  parser.add_argument("--out", required=True, help="output directory")
  parser.add_argument("--correction", default="tvn", choices=correct_lib.METHODS)
  parser.add_argument("--perturbation-col", default="perturbation",
                      help="column of gene symbols (Metadata_ prefix optional)")
  parser.add_argument("--batch-col", default=None,
                      help="batch column (default: Metadata_experiment if present)")
  parser.add_argument("--control-col", default="is_control",
                      help="boolean column marking control wells")
  parser.add_argument("--control-key", default=None,
                      help="perturbation name of control wells (instead of --control-col)")
  parser.add_argument("--n-components", type=_components, default=None,
                      help="PCA components for pca/tvn: an int, or a variance fraction in (0,1)")
  parser.add_argument("--min-controls", type=int, default=2,
                      help="fewest control wells a batch may have")
  parser.add_argument("--thresholds", type=_thresholds, nargs="+",
                      default=list(bench.THRESHOLDS), help="percent pairs, e.g. 5,95 10,90")
  parser.add_argument("--clusters", default=None,
                      help="clusters TSV for the heat-map (default: *clusters*.tsv found in the "
                      "relationships directory)")
  parser.add_argument("--n-null", type=int, default=1000,
                      help="random well sets per replicate count for replicate consistency")
  parser.add_argument("--max-null-pairs", type=int, default=bench.MAX_NULL_PAIRS,
                      help="above this many perturbation pairs the null cosines are sampled")
  parser.add_argument("--map-null-size", type=int, default=mean_ap.NULL_SIZE,
                      help="copairs null size for mAP p-values (0 skips mAP)")
  parser.add_argument("--seed", type=int, default=0)
  parser.add_argument("--drop-nan-features", action="store_true",
                      help="drop feature columns with NaN/inf instead of failing")
  parser.add_argument("--h5ad", action="store_true",
                      help="also write the corrected wells as corrected_wells.h5ad")
  parser.add_argument("--json", action="store_true",
                      help="print one JSON summary object as the last stdout line")
  return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
  argv = sys.argv[1:] if argv is None else list(argv)
  if any(a == "--sweep" or a.startswith("--sweep=") for a in argv):
    # Recall vs training compute / encoder block: embeds checkpoints, then scores each.
    from maejax.eval import sweep  # pylint: disable=g-import-not-at-top
    return sweep.main(argv)
  args = parse_args(argv)
  try:
    table = io.read_embeddings(args.embeddings)
    result = run_benchmark(
        table, args.relationships, correction=args.correction,
        perturbation_col=args.perturbation_col, batch_col=args.batch_col,
        control_col=args.control_col, control_key=args.control_key,
        n_components=args.n_components, min_controls=args.min_controls,
        thresholds=[tuple(t) for t in args.thresholds], n_null=args.n_null, seed=args.seed,
        max_null_pairs=args.max_null_pairs, drop_nan_features=args.drop_nan_features,
        out_dir=args.out, clusters=args.clusters, h5ad=args.h5ad,
        map_null_size=args.map_null_size)
  except (ValueError, FileNotFoundError, ImportError) as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  info = summary(result)
  print(f"{info['wells']} wells -> {info['perturbations']} perturbations, "
        f"correction {args.correction}")
  table_text = result["recall"][["database", "threshold", "recall", "pairs",
                                 "random_baseline"]].to_string(index=False, float_format="%.3f")
  print(table_text)
  rep = info["replicate_consistency"]
  print(f"replicate consistency: {rep['perturbations']} perturbations, median cosine "
        f"{_fmt(rep['median_cosine'])} vs random {_fmt(rep['median_null_cosine'])}, "
        f"{_fmt(rep['fraction_significant'])} with p < {rep['alpha']} "
        f"(binomial p {_fmt(rep['binomial_p_value'], '.2g')})")
  maps = info["mean_average_precision"] or {}
  if maps.get("replicates"):
    print(f"replicate mAP (copairs, vs {maps['replicates']['negatives']}): "
          f"{_fmt(maps['replicates']['mean_average_precision'])}, "
          f"{_fmt(maps['replicates']['fraction_retrieved'])} retrieved at q < "
          f"{maps['replicates']['threshold']}")
  for database, row in maps.get("relationships", {}).items():
    print(f"{database} mAP: {_fmt(row['mean_average_precision'])} over {row['n']} genes, "
          f"{_fmt(row['fraction_retrieved'])} retrieved")
  print(f"wrote {len(info['files'])} files to {args.out}")
  if args.json:
    print(json.dumps(info))
  return 0


def _fmt(value, spec=".3f"):
  return "nan" if value is None else format(value, spec)


if __name__ == "__main__":
  sys.exit(main())
