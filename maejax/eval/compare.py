"""Trained models, their random initial weights and a classical baseline in one table.

`compare(runs, scorer, out_dir)` takes configs already trained in their workdirs (`Run`;
training is the command's part, maejax/cli/compare.py). For each, the trained checkpoint and
the same architecture's random initial weights embed every well of the config's own screen
(scorer.wells), and each table is scored (scorer.score) with no correction and with TVN
against the screen's known relationships (the synthetic screen's planted pairs, or the
scorer's). A classical baseline, per-channel intensity statistics of each site (mean, std,
percentiles), is scored the same way. With the scorer's `crop_stats`, each model's tables are
also scored without the appended columns (model "<name> (plain)"): what the model adds to them.
With several `pools`, each model is scored by each token pooling (models "<name> [<pool>]").
With `join_stats`, each model's tables are also scored joined to the intensity statistics at
equal weight (models "<name> + statistics", "<name> (plain) + statistics";
pipeline.join_tables, as `maejax.benchmark --join`).
Writes `<out>/comparison.csv`,
`<out>/recall_curve_<correction>.png` (one line per model), `<out>/complex_recall.csv` (the
recall of each planted or given complex, per model: which complexes a model finds), each row's
benchmark outputs in `<out>/<label>/<correction>/`; the well tables are the scorer's
(`<out>/wells/`).
"""

from __future__ import annotations

import dataclasses
import functools
import time
import warnings
from typing import Sequence

import ml_collections
import numpy as np
import pandas as pd

from maejax import api
from maejax import workdir
from maejax.eval import embed as embed_lib
from maejax.eval import io
from maejax.eval import pipeline
from maejax.eval import plots
from maejax.eval import scorer as scorer_lib

CORRECTIONS = ("none", "tvn")
COLUMNS = ["model", "weights", "correction", "recall_5_95", "recall_10_90",
           "replicate_fraction_significant", "replicate_median_cosine",
           "replicate_null_cosine", "random_baseline_5_95", "compound_median_auc",
           "compound_baseline_auc", "steps", "train_wall_s"]
INTENSITY = "intensity_stats"
PLAIN = " (plain)"  # Model name suffix of the rows without the crop statistics (--crop-stats).
JOINED = " + statistics"  # ... of the rows joined to the intensity statistics (--join-stats).


@dataclasses.dataclass(frozen=True)
class Run:
  """A config trained in `workdir` to `config.total_steps` (train_wall_s None: reused)."""
  config: ml_collections.ConfigDict
  workdir: str
  train_wall_s: float | None = None


@dataclasses.dataclass(frozen=True)
class Entry:
  """One embedded well table of the comparison: `label` names its files."""
  label: str
  model: str
  weights: str  # trained | random | none
  table: pd.DataFrame
  source: object
  steps: int | None = None
  train_wall_s: float | None = None
  parts: list | None = None  # Feature names of each joined feature set (run_benchmark's).


def run_entries(run: Run, scorer: scorer_lib.Scorer, *, tag: bool = False) -> list[Entry]:
  """The trained and the random-weights well tables of one run; `tag` names them by the
  scorer's pooling (model "<name> [<pool>]", label "<name>_<pool>")."""
  config, steps = run.config, int(run.config.total_steps)
  model = f"{config.name} [{scorer.pool}]" if tag else config.name
  label = f"{config.name}_{scorer.pool}" if tag else config.name
  source = scorer.source(scorer.data_config(config))
  trained = scorer.wells(label, config, steps,
                         functools.partial(api.load, run.workdir, step=steps))
  random = scorer.wells(f"{label}_random", config, 0,
                        functools.partial(embed_lib.random_model, config))
  entries = [Entry(label, model, "trained", trained, source, steps, run.train_wall_s),
             Entry(f"{label}_random", model, "random", random, source, 0)]
  if scorer.crop_stats:  # What the model adds: the same tables without the appended columns.
    n_stats = len(api.CROP_STATISTICS) * len(source.channel_ids)
    entries += [dataclasses.replace(e, label=f"{e.label}_plain", model=f"{e.model}{PLAIN}",
                                    table=without_crop_stats(e.table, n_stats))
                for e in entries]
    for e in entries[2:]:
      io.write_embeddings(e.table, scorer.path(e.label))
  return entries


def without_crop_stats(table: pd.DataFrame, n_stats: int) -> pd.DataFrame:
  """A well table embedded with crop statistics, without them (its last `n_stats` features)."""
  features = io.feature_columns(table)
  return table.drop(columns=features[len(features) - n_stats:])


def joined_entries(entries: Sequence[Entry], intensity: Entry, scorer) -> list[Entry]:
  """Each model table (with and without crop statistics) joined to the intensity statistics
  at equal weight; the joined tables are written beside the others."""
  joined = []
  for e in entries:
    table, parts = pipeline.join_tables([(e.label, e.table), (INTENSITY, intensity.table)])
    label = f"{e.label}_joined"
    io.write_embeddings(table, scorer.path(label))
    joined.append(dataclasses.replace(e, label=label, model=e.model + JOINED, table=table,
                                      parts=parts))
  return joined


def intensity_entry(source, wells_dir) -> Entry:
  """The classical baseline's well table (kept as `<wells_dir>/intensity_stats.parquet`)."""
  table = embed_lib.sites_to_wells(embed_lib.intensity_sites(source), source.metadata)
  io.write_embeddings(table, workdir.path(wells_dir) / f"{INTENSITY}.parquet")
  return Entry(INTENSITY, INTENSITY, "none", table, source)


def row(entry: Entry, correction: str, result: dict) -> dict:
  """One comparison.csv row (recall averaged over the databases)."""
  recall = result["recall"]
  mean = recall.groupby(["lower", "upper"]).recall.mean()
  base = recall.groupby(["lower", "upper"]).random_baseline.mean()
  rep = result["replicate_summary"]
  compound = (result.get("compound_gene") or (None, {}))[1]
  return dict(model=entry.model, weights=entry.weights, correction=correction,
              recall_5_95=float(mean.get((5, 95), np.nan)),
              recall_10_90=float(mean.get((10, 90), np.nan)),
              replicate_fraction_significant=rep.get("fraction_significant"),
              replicate_median_cosine=rep.get("median_cosine"),
              replicate_null_cosine=rep.get("median_null_cosine"),
              random_baseline_5_95=float(base.get((5, 95), np.nan)),
              compound_median_auc=compound.get("median_auc"),
              compound_baseline_auc=compound.get("baseline_median_auc"),
              steps=entry.steps, train_wall_s=entry.train_wall_s)


def mean_curve(result: dict, label: str) -> pd.DataFrame:
  """The recall curve averaged over the databases, as database `label`."""
  curve = result["curve"]
  return curve[curve.database != "random"].groupby(
      "percentile", as_index=False).recall.mean().assign(database=label)


def score_corrections(scorer: scorer_lib.Scorer, entry: Entry) -> dict:
  """{correction: run_benchmark result} of one entry; a warning about its table (e.g. constant
  features dropped) is given once, not once per correction."""
  with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    results = {c: scorer.score(entry.table, entry.source, correction=c, name=entry.label,
                               parts=entry.parts)
               for c in CORRECTIONS}
  for category, message in dict.fromkeys((w.category, str(w.message)) for w in caught):
    warnings.warn(message, category, stacklevel=2)
  return results


def compare(runs: Sequence[Run], scorer: scorer_lib.Scorer, out_dir, *,
            join_stats: bool = False, pools: Sequence[str] | None = None) -> dict:
  """Scores every run's trained and random weights and the intensity baseline (and, with
  join_stats, each model joined to it).

  pools: token poolings (None: the scorer's); with several, every run is embedded and scored
  by each, its rows tagged "<name> [<pool>]".
  Returns {"table": comparison DataFrame (COLUMNS), "checks": acceptance(table),
  "complexes" (complex_table, None without clusters), "files", "wall_s"}.
  """
  t0 = time.time()
  out = workdir.path(out_dir)
  scorers = [scorer.with_pool(p) for p in dict.fromkeys(pools)] if pools else [scorer]
  entries = [e for run in runs for s in scorers
             for e in run_entries(run, s, tag=len(scorers) > 1)]
  scorer.log("intensity statistics: per-channel mean, std, percentiles per site")
  intensity = intensity_entry(entries[0].source, scorer.wells_dir)
  if join_stats:
    entries += joined_entries(entries, intensity, scorer)
  entries.append(intensity)  # Last: its curve also gives the random baseline.
  results = [score_corrections(scorer, e) for e in entries]
  files = [str(scorer.path(e.label)) for e in entries]
  for entry, by_correction in zip(entries, results):
    scorer.log(f"  {entry.label}: recall 5/95 " + ", ".join(
        f"{c} {row(entry, c, r)['recall_5_95']:.3f}" for c, r in by_correction.items())
        + "".join(f", compound-gene median AUC ({c}) {r['compound_gene'][1]['median_auc']:.3f}"
                  for c, r in by_correction.items()
                  if r.get("compound_gene") and r["compound_gene"][1]["median_auc"] is not None))
    for correction, result in by_correction.items():
      files += pipeline.write_outputs(result, out / entry.label / correction,
                                      clusters=scorer.clusters_for(entry.source))
  table = pd.DataFrame([row(e, c, r[c]) for e, r in zip(entries, results) for c in CORRECTIONS],
                       columns=COLUMNS).astype({"steps": "Int64"})
  by_complex = complex_table(entries, results)
  names = ["comparison.csv", *(f"recall_curve_{c}.png" for c in CORRECTIONS)]
  if by_complex is not None:
    names.append("complex_recall.csv")
  with workdir.output_set(out, names) as stage:
    io.write_embeddings(table, stage / names[0])
    if by_complex is not None:
      io.write_embeddings(by_complex, stage / "complex_recall.csv")
    for correction, name in zip(CORRECTIONS, names[1:]):
      curves = [mean_curve(r[correction], e.label) for e, r in zip(entries, results)]
      baseline = results[-1][correction]["curve"]
      curves.append(baseline[baseline.database == "random"])
      plots.plot_recall_curves(pd.concat(curves, ignore_index=True), stage / name,
                               title=f"recall of known relationships ({correction})")
  files += [str(out / name) for name in names]
  return dict(table=table, checks=acceptance(table), complexes=by_complex, files=files,
              wall_s=round(time.time() - t0, 1))


def complex_table(entries: Sequence[Entry], results: Sequence[dict]) -> pd.DataFrame | None:
  """Every entry's recall of each of its complexes (run_benchmark's `complex_recall`), one
  row per model, weights, correction, complex and threshold; None when no entry has any."""
  parts = [by_correction[c]["complex_recall"].assign(model=e.model, weights=e.weights,
                                                     correction=c)
           for e, by_correction in zip(entries, results) for c in CORRECTIONS
           if by_correction[c]["complex_recall"] is not None]
  if not parts:
    return None
  table = pd.concat(parts, ignore_index=True)
  return table[["model", "weights", "correction", "complex", "genes_in_map", "pairs",
                "threshold", "lower", "upper", "recall"]]


def _recall(table: pd.DataFrame, model: str, weights: str, correction: str) -> float:
  rows = table[(table.model == model) & (table.weights == weights)
               & (table.correction == correction)]
  return float(rows.recall_5_95.iloc[0])


def acceptance(table: pd.DataFrame) -> dict:
  """Per trained model: beats its random weights (TVN, recall 5/95); TVN beats none."""
  return {model: dict(beats_random=_recall(table, model, "trained", "tvn")
                      > _recall(table, model, "random", "tvn"),
                      tvn_beats_none=_recall(table, model, "trained", "tvn")
                      > _recall(table, model, "trained", "none"))
          for model in table[table.weights == "trained"].model.unique()}
