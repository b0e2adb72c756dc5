"""Correct -> aggregate -> score a well table: the benchmark of `python -m maejax.benchmark`.

    settings = pipeline.Settings(correction="tvn", n_null=200)
    result = pipeline.run_benchmark(wells, "../shared/benchmarks/relationships", settings)
    files = pipeline.write_outputs(result, "results/")

Works on any table with `Metadata_*` columns and numeric features: this package's embeddings,
another model's, or CellProfiler features.
"""

from __future__ import annotations

import contextlib
import dataclasses
import warnings
from pathlib import Path
from typing import Callable, ContextManager, Sequence

import numpy as np
import pandas as pd

from maejax import workdir
from maejax.eval import aggregate as aggregate_lib
from maejax.eval import benchmark as bench
from maejax.eval import compound
from maejax.eval import correct as correct_lib
from maejax.eval import io
from maejax.eval import mean_ap
from maejax.eval import plots


@dataclasses.dataclass(frozen=True)
class Settings:
  """How a well table is corrected and scored (the flags of `python -m maejax.benchmark`).

  correction: one of maejax.eval.correct.METHODS.
  perturbation_col / batch_col / control_col: metadata columns (`Metadata_` prefix optional);
    batch_col None: Metadata_experiment (or batch) if present, else one batch.
  control_key: the perturbation name of control wells (instead of control_col).
  n_components: PCA components for pca/tvn (an int, or a variance fraction in (0, 1)).
  thresholds: (lower, upper) percent pairs of the recall table.
  n_null: random well sets per replicate count (replicate consistency).
  max_null_pairs: above this many perturbation pairs the null cosines are sampled.
  map_null_size: copairs null size for the mAP p-values; 0 skips mAP.
  tails: recall in both tails or the right (top) tail only (benchmark.TAILS).
  concentration_col: wells with a value there are compound wells (maejax.eval.compound): they
    stay out of the gene map and are scored against it when compound targets are given; plates
    of compounds (compound_plates) leave the gene map's correction as it is without them.
  """
  correction: str = "tvn"
  perturbation_col: str = "perturbation"
  batch_col: str | None = None
  control_col: str = "is_control"
  control_key: str | None = None
  n_components: int | float | None = None
  min_controls: int = 2
  thresholds: tuple[tuple[float, float], ...] = bench.THRESHOLDS
  n_null: int = 1000
  seed: int = 0
  max_null_pairs: int = bench.MAX_NULL_PAIRS
  drop_nan_features: bool = False
  map_null_size: int = mean_ap.NULL_SIZE
  tails: str = "both"
  concentration_col: str = compound.CONCENTRATION


def find_clusters(relationships) -> Path | None:
  """The first `*clusters*.tsv` in the relationship directories or beside the files, if any."""
  sources = [relationships] if isinstance(relationships, (str, Path)) else relationships
  for source in map(Path, sources):
    if source.exists():
      found = sorted((source if source.is_dir() else source.parent).glob("*clusters*.tsv"))
      if found:
        return found[0]
  return None


def known_relationships(sources) -> tuple[dict | None, Path | None]:
  """--relationships of the commands that score many models: the databases
  (benchmark.load_relationships) and a clusters TSV beside them (find_clusters); (None, None)
  without sources, for the screen's planted pairs and complexes."""
  if not sources:
    return None, None
  return bench.load_relationships(sources), find_clusters(sources)


def _batch_labels(metadata: pd.DataFrame, batch_col: str | None) -> np.ndarray | None:
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


def _control_flags(metadata: pd.DataFrame, pert_column: str, settings: Settings) -> np.ndarray:
  has_flags = settings.control_key is not None or any(
      c in metadata.columns for c in (settings.control_col,
                                      io.METADATA_PREFIX + settings.control_col))
  if settings.correction != "none" or has_flags:
    return io.control_flags(metadata, control_col=settings.control_col,
                            control_key=settings.control_key, perturbation_col=pert_column)
  warnings.warn("no control flags: every well goes into the map", stacklevel=3)
  return np.zeros(len(metadata), dtype=bool)


# Metadata naming one well (or site) of a table without a well-id index; `well` is required.
WELL_KEYS = ("source", "batch", "experiment", "plate", "well", "site")
PLATE_KEYS = WELL_KEYS[:4]  # Naming a plate: a table without any of them is one plate.


def _well_ids(table: pd.DataFrame) -> tuple[list[str], pd.Series] | None:
  """(the columns naming a well, its id per row) or None when the table names no wells."""
  if table.index.name == io.WELL_ID:
    return [io.WELL_ID], pd.Series(table.index.astype(str), index=table.index)
  keys = [io.METADATA_PREFIX + k for k in WELL_KEYS if io.METADATA_PREFIX + k in table.columns]
  if io.METADATA_PREFIX + "well" not in keys:
    return None
  return keys, table[keys].astype(str).agg("_".join, axis=1)


def check_wells(table: pd.DataFrame, source="the well table") -> pd.DataFrame:
  """A well table fit to be scored: rows repeated whole (metadata, features and well id alike)
  dropped with one warning. `source` (the file) is named in messages; a checked table passes
  unchanged.

  Raises ValueError: no rows; or one well (its id, else experiment/plate/well/site) in two
  rows that differ.
  """
  if table.empty:
    raise ValueError(f"{source} holds no wells (no rows, or a header only); pass a table with "
                     "one row per well (python -m maejax.embed writes one)")
  named = any(n is not None for n in table.index.names)
  repeated = (table.reset_index() if named else table).duplicated().to_numpy()
  if repeated.any():
    warnings.warn(f"{source}: dropping {int(repeated.sum())} duplicated rows (the same "
                  "metadata and features as an earlier row)", stacklevel=2)
    table = table[~repeated]
  wells = _well_ids(table)
  if wells is not None:
    keys, ids = wells
    clash = ids[ids.duplicated()].unique()
    if len(clash):
      raise ValueError(
          f"{source}: {len(clash)} wells ({', '.join(keys)}) occur in more than one row with "
          f"different values: {list(clash[:5])}{' ...' if len(clash) > 5 else ''}; keep one row "
          "per well (aggregate sites or replicates first)")
  return table


def _informative(features: np.ndarray, names: list[str], source) -> tuple[np.ndarray, list]:
  """Drops features constant over all wells (with one warning): [wells, d] -> [wells, d']."""
  constant = np.ptp(features, axis=0) == 0
  if constant.all():
    raise ValueError(f"{source}: all {len(names)} features are constant over the "
                     f"{len(features)} wells; nothing to score (metadata columns must start "
                     f"with {io.METADATA_PREFIX}, features are the numeric rest)")
  if constant.any():
    warnings.warn(f"{source}: dropping {int(constant.sum())} features constant over all wells: "
                  f"{[n for n, c in zip(names, constant) if c][:10]}", stacklevel=2)
  return features[:, ~constant], [n for n, c in zip(names, constant) if not c]


def join_tables(tables: Sequence[tuple[str, pd.DataFrame]]) -> tuple[pd.DataFrame, list]:
  """Feature sets of the same wells, side by side, for run_benchmark's `parts`.

  tables: (name for messages, well table indexed by io.WELL_ID) pairs. Returns the first
  table's metadata with every table's features, renamed `part<k>_<name>`, in the first
  table's well order, and the feature names of each part.
  """
  (first_name, first), parts, joined = tables[0], [], []
  for k, (name, table) in enumerate(tables):
    if table.index.name != io.WELL_ID:
      raise ValueError(f"{name}: no {io.WELL_ID} column; joined tables are matched well by "
                       f"well on it: add it to each table")
    missing, extra = first.index.difference(table.index), table.index.difference(first.index)
    if len(missing) or len(extra):
      raise ValueError(
          f"{name}: {len(missing)} wells of {first_name} are not in it "
          f"{missing[:3].tolist()} and {len(extra)} of its wells are not in {first_name} "
          f"{extra[:3].tolist()}; joined tables must hold the same wells")
    features = table.loc[first.index, io.feature_columns(table)]
    features.columns = [f"part{k + 1}_{c}" for c in features.columns]
    parts.append(list(features.columns))
    joined.append(features)
  table = pd.concat([first[io.metadata_columns(first)], *joined], axis=1)
  table.attrs[io.PROVENANCE_KEY] = dict(io.provenance_of(first),
                                        joined=[str(name) for name, _ in tables[1:]])
  return table, parts


def _part_columns(parts, names: list[str], source) -> list[list[int]]:
  """Column indices of each part's features among the table's informative `names` (features
  constant over all wells were dropped); a part left without features is an error."""
  index = {n: i for i, n in enumerate(names)}
  columns = [[index[n] for n in part if n in index] for part in parts]
  for k, c in enumerate(columns):
    if not c:
      raise ValueError(f"{source}: feature set {k + 1} of {len(parts)} has no feature that "
                       "varies over the wells; nothing of it to join")
  return columns


def no_stage(name: str) -> ContextManager:
  """run_benchmark's default `stage`: times nothing."""
  del name
  return contextlib.nullcontext()


def run_benchmark(table: pd.DataFrame, relationships, settings: Settings = Settings(), *,
                  complexes: dict | None = None, source="the well table",
                  stage: Callable[[str], ContextManager] = no_stage,
                  compound_targets: pd.DataFrame | None = None,
                  parts: Sequence[Sequence[str]] | None = None) -> dict:
  """Correct -> aggregate -> score a well table.

  Args:
    table: one row per well, Metadata_* columns and numeric features; repeated rows and
      constant features are dropped with a warning (check_wells); `source` names it in
      messages.
    relationships: a directory / file(s) of entity1,entity2 pairs, or load_relationships output
      ({database: pairs}).
    complexes: {complex: genes} (read_complexes) for the recall of each complex, or None.
    stage: called with each step's name (check, correct, replicate_consistency, aggregate,
      recall, complex_recall, mean_ap, compound_gene); the step runs inside the context it
      returns (maejax.eval.scale measures time and memory so).
    compound_targets: (compound, gene) rows (compound.read_targets) for the compound-gene
      benchmark of the table's compound wells, or None.
    parts: feature column names of each of 2 or more feature sets joined in the table (e.g. a
      model's embedding and intensity statistics): each is corrected on its own and weighs
      the same (correct.correct_parts); None corrects all features together.
  Returns: dict with `recall`, `curve`, `replicates` (DataFrames), `replicate_summary` (dict),
    `map` (perturbation table), `wells` (corrected well table), `mean_ap` (None when
    settings.map_null_size is 0), `complex_recall` (benchmark.complex_recall with a
    `threshold` column; None without complexes), `compound_gene` ((per-compound DataFrame,
    summary) of compound.benchmark; None without compound targets), `correction` and
    `perturbation_column`, `parts` (the corrected width of each part; None without parts).
    A figure the input is too small for is NaN (None) with its `reason` beside it (None where
    it is a number).
  """
  s = settings
  with stage("check"):
    table = check_wells(table, source)
    metadata, features, feature_names = io.split_table(table,
                                                       drop_nan_features=s.drop_nan_features)
    features, feature_names = _informative(features, feature_names, source)
    pert_column = io.resolve_column(metadata, s.perturbation_col, what="perturbation",
                                    flag="--perturbation-col")
    batch = _batch_labels(metadata, s.batch_col)
    is_control = _control_flags(metadata, pert_column, s)
    is_compound = _compound_flags(metadata, s.concentration_col, compound_targets) & ~is_control
    is_gene = ~is_control & ~is_compound
    if not is_gene.any():
      raise ValueError("every well is a control or a compound; the map needs gene wells")
    on_compound_plate = compound_plates(metadata, is_compound, is_gene)
    fit_controls, pooled = _fit_controls(is_control, on_compound_plate, batch)
  with stage("correct"):
    kwargs = dict(method=s.correction, n_components=s.n_components,
                  min_controls=s.min_controls, pooled=pooled)
    widths = None
    if parts is None:
      corrected = correct_lib.correct(features, fit_controls, batch, **kwargs)
      if s.correction in correct_lib.PCA_METHODS:
        feature_names = [f"PC{i + 1}" for i in range(corrected.shape[1])]
    else:
      columns = _part_columns(parts, feature_names, source)
      corrected, widths = correct_lib.correct_parts(features, columns, fit_controls, batch,
                                                    **kwargs)
      if s.correction in correct_lib.PCA_METHODS:
        feature_names = [f"part{k + 1}_PC{i + 1}" for k, w in enumerate(widths)
                         for i in range(w)]
      else:
        feature_names = [feature_names[i] for c in columns for i in c]
    del features
    wells = io.join_table(metadata, corrected, feature_names)
    treated = wells[is_gene].reset_index(drop=True)
  with stage("replicate_consistency"):
    replicates, replicate_summary = bench.replicate_consistency(
        corrected[is_gene], treated[pert_column].astype(str).to_numpy(),
        None if batch is None else batch[is_gene], n_null=s.n_null, seed=s.seed)
    replicate_summary["reason"] = (None if replicate_summary["perturbations"] else
                                   "no perturbation has 2 or more replicate wells")
  with stage("aggregate"):
    perturbation_map = aggregate_lib.aggregate(treated, by=pert_column)
  if len(perturbation_map) < 2:
    raise ValueError(f"{source}: the map has {len(perturbation_map)} perturbation(s) "
                     f"{perturbation_map[pert_column].tolist()} besides controls; recall "
                     "needs 2 or more")
  _, map_features, _ = io.split_table(perturbation_map)
  genes = perturbation_map[pert_column].astype(str).to_numpy()
  with stage("recall"):
    if not isinstance(relationships, dict):
      relationships = bench.load_relationships(relationships)
    recall, curve = bench.score_relationships(map_features, genes, relationships,
                                              thresholds=s.thresholds,
                                              max_null_pairs=s.max_null_pairs, seed=s.seed,
                                              perturbation_col=pert_column, tails=s.tails)
    recall.insert(1, "threshold", _threshold_labels(recall))
    recall["correction"] = s.correction
    recall = _recall_reasons(recall)
  by_complex = None
  if complexes is not None:
    with stage("complex_recall"):
      by_complex = bench.complex_recall(map_features, genes, complexes,
                                        thresholds=s.thresholds,
                                        max_null_pairs=s.max_null_pairs, seed=s.seed)
      by_complex.insert(3, "threshold", _threshold_labels(by_complex))
  scores = None
  if s.map_null_size:
    with stage("mean_ap"):
      scores = mean_ap.score(
          wells[~is_compound & ~on_compound_plate], perturbation_map, relationships,
          perturbation_col=pert_column,
          control_col=s.control_col, control_key=s.control_key,
          negatives="controls" if is_control.any() else "all", null_size=s.map_null_size,
          seed=s.seed)
      _map_reasons(scores["summary"], "controls" if is_control.any() else "all")
  compound_gene = None
  if compound_targets is not None:
    with stage("compound_gene"):
      compound_gene = _compound_gene(wells[is_compound], pert_column, s.concentration_col,
                                     map_features, genes, compound_targets, s.seed)
  return dict(recall=recall, curve=curve, replicates=replicates, compound_gene=compound_gene,
              replicate_summary=replicate_summary, map=perturbation_map, wells=wells,
              complex_recall=by_complex, correction=s.correction, mean_ap=scores,
              perturbation_column=pert_column, parts=widths,
              provenance=dict(io.provenance_of(table), correction=s.correction))


def _compound_flags(metadata: pd.DataFrame, concentration_col: str, targets) -> np.ndarray:
  """Wells with a concentration; a table without the column has none (an error when compound
  targets are given)."""
  column = compound.concentration_column(metadata, concentration_col)
  if column is None:
    if targets is not None:
      raise ValueError(
          f"--compound-targets given but the table has no {io.METADATA_PREFIX}"
          f"{concentration_col} column marking compound wells; name it with "
          "--concentration-col")
    return np.zeros(len(metadata), dtype=bool)
  return metadata[column].notna().to_numpy()


def compound_plates(metadata: pd.DataFrame, is_compound, is_gene) -> np.ndarray:
  """bool [wells]: on a plate of compounds, one with compound wells and no gene well (a plate
  holding both is a gene plate). Plates are named by the PLATE_KEYS columns present."""
  keys = [c for c in (io.METADATA_PREFIX + k for k in PLATE_KEYS) if c in metadata.columns]
  plate = (pd.factorize(pd.MultiIndex.from_frame(metadata[keys].astype(str)))[0] if keys
           else np.zeros(len(metadata), dtype=np.int64))
  return np.isin(plate, plate[is_compound]) & ~np.isin(plate, plate[is_gene])


def _fit_controls(is_control, on_compound_plate, batch) -> tuple[np.ndarray, np.ndarray]:
  """The controls the correction is fitted on: (per batch [wells], pooled [wells]).

  The gene map is corrected as if plates of compounds were not there, so a screen's gene-gene
  benchmark is the same with or without them: their controls fit no pooled statistic, nor a
  batch's when it has gene plates (whose transform then carries its compound wells into the
  gene map's space). A batch of compound plates only is fitted on its own controls.
  """
  pooled = is_control & ~on_compound_plate
  # Integer codes: np.isin on text labels compares objects pairwise (minutes at 250k wells).
  codes = (np.zeros(len(is_control), np.int64) if batch is None
           else pd.factorize(np.asarray(batch))[0])
  return pooled | (is_control & ~np.isin(codes, np.unique(codes[pooled]))), pooled


def _compound_gene(compound_wells: pd.DataFrame, pert_column: str, concentration_col: str,
                   gene_features, genes, targets: pd.DataFrame, seed: int):
  """compound.benchmark of the wells aggregated per (compound, concentration) against the
  gene map: (per-compound DataFrame, summary dict)."""
  if compound_wells.empty:
    raise ValueError("--compound-targets given but no well has a concentration (no compound "
                     "wells); check --concentration-col")
  column = io.resolve_column(compound_wells, concentration_col, what="concentration",
                             flag="--concentration-col")
  doses = aggregate_lib.aggregate(compound_wells, by=[pert_column, column])
  _, features, _ = io.split_table(doses)
  return compound.benchmark(features, doses[pert_column].astype(str).to_numpy(), gene_features,
                            genes, targets, seed=seed)


def _threshold_labels(table: pd.DataFrame) -> list[str]:
  """"5-95" etc. for each row's (lower, upper)."""
  return [f"{lo:g}-{hi:g}" for lo, hi in zip(table.lower, table.upper)]


def read_complexes(clusters) -> dict | None:
  """{complex: genes} of a clusters TSV (plots.read_clusters) or dict; None stays None."""
  if clusters is None or isinstance(clusters, dict):
    return clusters
  return plots.read_clusters(clusters)


def _recall_reasons(recall: pd.DataFrame) -> pd.DataFrame:
  """Recall NaN where it means nothing, with a `reason`: no query pair, or a null so small that
  its tails hold no pair (random_baseline 0: any recall is 0 or a fluke)."""
  no_pairs = recall.pairs == 0
  empty_tails = ~no_pairs & (recall.random_baseline == 0)
  reason = np.where(no_pairs, "no pair with both genes in the map",
                    np.where(empty_tails, "too few perturbations: no random pair is in the "
                             "tails", None))
  return recall.assign(recall=recall.recall.where(~(no_pairs | empty_tails)), reason=reason)


def _map_reasons(summary: dict, negatives: str) -> None:
  """mAP summaries of nothing -> None figures with a `reason` (in place)."""
  if summary["replicates"] is None:
    summary["replicates"] = dict(mean_average_precision=None, fraction_retrieved=None, n=0,
                                 threshold=mean_ap.THRESHOLD, negatives=negatives,
                                 reason="no perturbation has 2 or more treated wells")
  else:
    summary["replicates"]["reason"] = None
  for row in summary["relationships"].values():
    row["reason"] = None if row["n"] else "no gene of the map has a partner in the database"
    if not row["n"]:
      row.update(mean_average_precision=None, fraction_retrieved=None)


# Every file write_outputs may write.
OUTPUTS = frozenset({"recall.csv", "recall_curve.csv", "replicate_consistency.csv",
                     "perturbation_map.parquet", "map_replicates.csv", "map_relationships.csv",
                     "corrected_wells.h5ad", "recall_curve.png", "complex_heatmap.png",
                     "complex_recall.csv", "replicate_consistency.png", "compound_gene.csv",
                     "compound_auc.png"})


def write_outputs(result: dict, out_dir, *, clusters=None, h5ad: bool = False) -> list[str]:
  """Writes the CSVs, the map and the plots of a run_benchmark result into `out_dir` (local or
  gs://); `clusters`: a clusters TSV (or {complex: genes}) for the complex heat-map; the
  result's `complex_recall`, when it has one, goes to `complex_recall.csv`. Returns the files
  written.

  The clusters file is read before anything is written; the outputs replace an earlier run's
  as one set (workdir.output_set): an earlier output this run does not write is removed, and
  a run that fails or is killed leaves `out_dir` as it was.
  """
  complexes = read_complexes(clusters)
  with workdir.output_set(out_dir, OUTPUTS) as out:
    files = [io.write_embeddings(result["recall"], out / "recall.csv"),
             io.write_embeddings(result["curve"], out / "recall_curve.csv"),
             io.write_embeddings(result["replicates"], out / "replicate_consistency.csv"),
             io.write_embeddings(result["map"], out / "perturbation_map.parquet",
                                 provenance=result.get("provenance"))]
    for name, key in (("map_replicates.csv", "replicates"),
                      ("map_relationships.csv", "relationships")):
      if result["mean_ap"] and result["mean_ap"][key] is not None:
        files.append(io.write_embeddings(result["mean_ap"][key], out / name))
    if h5ad:
      files.append(io.write_embeddings(result["wells"], out / "corrected_wells.h5ad",
                                       provenance=result.get("provenance")))
    files.append(plots.plot_recall_curves(result["curve"], out / "recall_curve.png",
                                          title=f"recall ({result['correction']})"))
    if complexes is not None:
      files.extend(_heatmap(result, complexes, clusters, out / "complex_heatmap.png"))
    if result.get("complex_recall") is not None and len(result["complex_recall"]):
      files.append(io.write_embeddings(result["complex_recall"], out / "complex_recall.csv"))
    replicate_png = plots.plot_replicate_consistency(
        result["replicates"], result["replicate_summary"]["median_null_cosine"],
        out / "replicate_consistency.png", correction=result["correction"])
    if replicate_png is not None:
      files.append(replicate_png)
    if result.get("compound_gene") is not None:
      files.append(io.write_embeddings(result["compound_gene"][0], out / "compound_gene.csv"))
      auc_png = plots.plot_compound_auc(result["compound_gene"][0], out / "compound_auc.png")
      files.extend([auc_png] if auc_png is not None else [])
  return [str(workdir.path(out_dir) / workdir.path(f).name) for f in files]


def _heatmap(result: dict, complexes: dict, clusters, file) -> list:
  _, map_features, _ = io.split_table(result["map"])
  genes = result["map"][result["perturbation_column"]].astype(str).to_numpy()
  heatmap = plots.plot_complex_heatmap(map_features, genes, complexes, file)
  if heatmap is None:
    where = "the clusters" if isinstance(clusters, dict) else clusters
    warnings.warn(f"no complex in {where} has 3 or more genes in the map; no heat-map",
                  stacklevel=3)
    return []
  return [heatmap]


def summary(result: dict, files=()) -> dict:
  """The JSON form of a run_benchmark result (NaN -> None, NumPy -> Python)."""
  recall = result["recall"][["database", "threshold", "recall", "pairs", "random_baseline",
                             "reason"]]
  return workdir.jsonable(dict(
      correction=result["correction"], parts=result.get("parts"), wells=len(result["wells"]),
      perturbations=len(result["map"]), recall=recall.to_dict("records"),
      replicate_consistency=result["replicate_summary"],
      mean_average_precision=result["mean_ap"]["summary"] if result["mean_ap"] else None,
      compound_gene=result["compound_gene"][1] if result.get("compound_gene") else None,
      provenance=result.get("provenance"),
      files=list(files)))
