"""Mean average precision (mAP) of profile retrieval, computed by copairs (cytomining).

Two questions, both answered by `copairs.map.average_precision` (AP of each query profile's
ranked cosine similarities) and `copairs.map.mean_average_precision` (mAP per group, a p-value
against copairs' permutation null and a Benjamini-Hochberg q-value):

- replicate retrieval (`replicate_map`, "phenotypic activity"): each treated well queries the
  other wells of its perturbation (positives) among the control wells (negatives; or, with
  `negatives="all"`, among every well of another perturbation, controls included). Controls
  get a unique `Metadata_reference_index` so they are never each other's positives: the
  copairs recipe.
- known-relationship retrieval (`relationship_map`): each gene of the perturbation map that
  has a known partner queries its partners (positives) among the other genes of the map
  (negatives). Relationship tables are pairs, which copairs' same/different-column rules cannot
  express for all genes at once, so each query gets its own block of rows (the map, with a
  `related` flag) and the rules pair the query row only with rows of its block:
  positives same (block, related) and different role, negatives same block and different
  (related, role). AP is then exactly the AP of the query's ranked partners.

`fraction_retrieved` is the share of perturbations (genes) whose mAP is significant at
q < `threshold`.
"""

from __future__ import annotations

import logging
import warnings
from typing import Mapping

import numpy as np
import pandas as pd
from copairs import map as copairs_map

from maejax.eval import io

NULL_SIZE = 10_000
THRESHOLD = 0.05
MAX_BLOCK_ROWS = 200_000  # rows per copairs call in relationship_map (memory bound)
MAP_COLUMNS = ["mean_average_precision", "mean_normalized_average_precision", "p_value",
               "corrected_p_value", "below_p", "below_corrected_p"]

logging.getLogger("copairs").setLevel(logging.WARNING)  # Quiet its per-call INFO lines.


def _map_per_group(ap: pd.DataFrame, column: str, *, null_size: int, threshold: float,
                   seed: int) -> pd.DataFrame:
  maps = copairs_map.mean_average_precision(ap, sameby=[column], null_size=null_size,
                                           threshold=threshold, seed=seed, progress_bar=False)
  return maps[[column] + MAP_COLUMNS].reset_index(drop=True)


def _summary(maps: pd.DataFrame, threshold: float) -> dict:
  return dict(mean_average_precision=float(maps.mean_average_precision.mean())
              if len(maps) else float("nan"),
              fraction_retrieved=float(maps.below_corrected_p.mean()) if len(maps) else 0.0,
              n=int(len(maps)), threshold=threshold)


def replicate_map(table: pd.DataFrame, *, perturbation_col: str = "perturbation",
                  control_col: str = "is_control", control_key: str | None = None,
                  negatives: str = "controls", null_size: int = NULL_SIZE,
                  threshold: float = THRESHOLD, seed: int = 0, distance: str = "cosine"
                  ) -> tuple[pd.DataFrame, pd.DataFrame, dict]:
  """Replicate-retrieval mAP of a well (or site) table.

  Args:
    table: one row per well: Metadata_* columns and numeric features (batch-corrected).
    negatives: "controls" (treated wells vs control wells) or "all" (vs every well of
      another perturbation, controls included).
  Returns: (ap: one row per treated well with a replicate, copairs' average_precision,
    normalized_average_precision, n_pos_pairs, n_total_pairs; maps: one row per perturbation
    with mean_average_precision, p_value, corrected_p_value (q), below_corrected_p, ...;
    summary dict with mean_average_precision, fraction_retrieved, n).
  """
  if negatives not in ("controls", "all"):
    raise ValueError(f"negatives={negatives!r}: expected 'controls' or 'all'")
  metadata, features, _ = io.split_table(table)
  pert = io.resolve_column(metadata, perturbation_col, what="perturbation",
                           flag="--perturbation-col")
  has_flags = control_key is not None or any(
      c in metadata.columns for c in (control_col, io.METADATA_PREFIX + control_col))
  if negatives == "controls" or has_flags:
    is_control = io.control_flags(metadata, control_col=control_col, control_key=control_key,
                                  perturbation_col=pert)
  else:
    is_control = np.zeros(len(metadata), bool)
  meta = pd.DataFrame({pert: metadata[pert].astype(str).to_numpy(),
                       "Metadata_reference_index": np.where(is_control,
                                                            np.arange(len(metadata)), -1)})
  keys = [pert, "Metadata_reference_index"]
  neg_diffby = keys if negatives == "controls" else [pert]
  counts = meta[pert][~is_control].value_counts()
  if not (counts > 1).any():
    raise ValueError(f"no perturbation has 2 or more treated wells in {pert}: replicate mAP "
                     "needs replicates")
  ap = copairs_map.average_precision(meta, features, pos_sameby=keys, pos_diffby=[],
                                    neg_sameby=[], neg_diffby=neg_diffby, distance=distance,
                                    progress_bar=False)
  ap = ap[~is_control & ap.average_precision.notna().to_numpy()].reset_index(drop=True)
  ap = ap.drop(columns="Metadata_reference_index")
  maps = _map_per_group(ap, pert, null_size=null_size, threshold=threshold, seed=seed)
  return ap, maps, _summary(maps, threshold)


def _partners(pairs: pd.DataFrame, genes: np.ndarray) -> dict[str, set]:
  """gene -> its partners in `genes` (pairs made undirected, self pairs dropped)."""
  in_map = set(genes)
  partners: dict[str, set] = {}
  for a, b in zip(pairs["entity1"].astype(str), pairs["entity2"].astype(str)):
    if a != b and a in in_map and b in in_map:
      partners.setdefault(a, set()).add(b)
      partners.setdefault(b, set()).add(a)
  return partners


def relationship_ap(features: np.ndarray, genes, pairs: pd.DataFrame, *,
                    distance: str = "cosine", max_block_rows: int = MAX_BLOCK_ROWS
                    ) -> pd.DataFrame:
  """copairs AP of each gene retrieving its known partners among the other genes.

  Args: features [genes, d] (one row per perturbation, unique names); genes [genes];
    pairs with entity1, entity2. Genes with no partner in the map, or related to every
    other gene, are not queries.
  Returns: one row per query gene: `gene`, average_precision, normalized_average_precision,
    n_pos_pairs (its partners), n_total_pairs.
  """
  genes = np.asarray(genes).astype(str)
  if len(set(genes)) != len(genes):
    raise ValueError("relationship mAP needs one row per perturbation (aggregate wells first)")
  features = np.asarray(features, np.float64)
  partners = _partners(pairs, genes)
  n = len(genes)
  queries = [i for i, g in enumerate(genes) if 0 < len(partners.get(g, ())) < n - 1]
  if not queries:
    return pd.DataFrame(columns=["gene", "average_precision", "normalized_average_precision",
                                 "n_pos_pairs", "n_total_pairs"])
  per_call = max(1, max_block_rows // n)
  out = []
  for start in range(0, len(queries), per_call):
    chunk = queries[start:start + per_call]
    rows = np.tile(np.arange(n), len(chunk))
    block = np.repeat(np.arange(len(chunk)), n)
    query = np.repeat(chunk, n)
    related = np.array([genes[r] in partners[genes[q]] or r == q for r, q in zip(rows, query)])
    meta = pd.DataFrame({"gene": genes[rows], "block": block, "related": related.astype(int),
                         "role": (rows == query).astype(int)})
    ap = copairs_map.average_precision(
        meta, features[rows], pos_sameby=["block", "related"], pos_diffby=["role"],
        neg_sameby=["block"], neg_diffby=["related", "role"], distance=distance,
        progress_bar=False)
    out.append(ap[ap.role == 1])
  ap = pd.concat(out, ignore_index=True)
  return ap[["gene", "average_precision", "normalized_average_precision", "n_pos_pairs",
             "n_total_pairs"]]


def relationship_map(map_table: pd.DataFrame, relationships: Mapping[str, pd.DataFrame], *,
                     perturbation_col: str = "perturbation", null_size: int = NULL_SIZE,
                     threshold: float = THRESHOLD, seed: int = 0, distance: str = "cosine",
                     max_block_rows: int = MAX_BLOCK_ROWS) -> tuple[pd.DataFrame, dict]:
  """Known-relationship retrieval mAP of a perturbation map, per database.

  Args: map_table: one row per perturbation (maejax.eval.aggregate); relationships:
    {database: pairs with entity1, entity2} (maejax.eval.benchmark.load_relationships).
  Returns: (maps: database, gene, mean_average_precision (= the gene's AP), p_value,
    corrected_p_value (q, per database), below_corrected_p, ..., n_pos_pairs;
    summary {database: {mean_average_precision, fraction_retrieved, n}}).
  """
  metadata, features, _ = io.split_table(map_table)
  pert = io.resolve_column(metadata, perturbation_col, what="perturbation",
                           flag="--perturbation-col")
  genes = metadata[pert].astype(str).to_numpy()
  tables, summary = [], {}
  for database, pairs in relationships.items():
    ap = relationship_ap(features, genes, pairs, distance=distance,
                         max_block_rows=max_block_rows)
    if ap.empty:
      summary[database] = _summary(pd.DataFrame(columns=MAP_COLUMNS), threshold)
      continue
    maps = _map_per_group(ap, "gene", null_size=null_size, threshold=threshold, seed=seed)
    maps = maps.merge(ap[["gene", "n_pos_pairs", "n_total_pairs"]], on="gene")
    maps.insert(0, "database", database)
    tables.append(maps)
    summary[database] = _summary(maps, threshold)
  columns = ["database", "gene"] + MAP_COLUMNS + ["n_pos_pairs", "n_total_pairs"]
  maps = pd.concat(tables, ignore_index=True) if tables else pd.DataFrame(columns=columns)
  return maps, summary


def score(wells: pd.DataFrame, perturbation_map: pd.DataFrame,
          relationships: Mapping[str, pd.DataFrame], *, perturbation_col: str = "perturbation",
          control_col: str = "is_control", control_key: str | None = None,
          negatives: str = "controls", null_size: int = NULL_SIZE,
          threshold: float = THRESHOLD, seed: int = 0) -> dict:
  """Both mAPs for `python -m maejax.benchmark`: replicate retrieval on the (corrected) wells,
  known-relationship retrieval on the perturbation map. Replicate mAP is skipped, with a
  warning, when no perturbation has replicate wells.

  Returns: dict(replicates=per-perturbation DataFrame or None, relationships=per-gene
    DataFrame, summary={"replicates": {...} or None, "relationships": {database: {...}}}).
  """
  replicates, replicate_summary = None, None
  try:
    _, replicates, replicate_summary = replicate_map(
        wells, perturbation_col=perturbation_col, control_col=control_col,
        control_key=control_key, negatives=negatives, null_size=null_size,
        threshold=threshold, seed=seed)
    replicate_summary["negatives"] = negatives
  except ValueError as e:
    if "replicate mAP needs replicates" not in str(e):
      raise
    warnings.warn(f"replicate mAP skipped: {e}", stacklevel=2)
  relationship_maps, relationship_summary = relationship_map(
      perturbation_map, relationships, perturbation_col=perturbation_col,
      null_size=null_size, threshold=threshold, seed=seed)
  return dict(replicates=replicates, relationships=relationship_maps,
              summary=dict(replicates=replicate_summary, relationships=relationship_summary))
