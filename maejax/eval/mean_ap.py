"""Mean average precision (mAP) of profile retrieval, as copairs (cytomining) defines it.

Two questions, each the average precision (AP) of a query profile's ranked cosine similarities,
then copairs' `mean_average_precision` (mAP per group, a p-value against copairs' permutation
null and a Benjamini-Hochberg q-value):

- replicate retrieval (`replicate_map`, "phenotypic activity"): each treated well queries the
  other wells of its perturbation (positives) among the control wells (negatives; or, with
  `negatives="all"`, among every well of another perturbation, controls included): copairs'
  recipe with a unique `Metadata_reference_index` per control.
- known-relationship retrieval (`relationship_map`): each gene of the perturbation map that
  has a known partner queries its partners (positives) among the other genes of the map
  (negatives).

The APs are computed here, exactly (not sampled), in blocks of query rows: a block's
similarities to the negative pool are sorted once, and a positive's rank is its place among
the positives plus the negatives above it (`negatives_above`); ties rank positives first, as
copairs' stable sort does. Memory is one block, `block_size` similarities (copairs'
`average_precision` materialises every pair: 230k wells against 20k controls is 4.6 billion).
`tests/eval/test_mean_ap.py` checks the APs and mAPs against copairs' own on small tables.

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
from copairs.map import normalization

from maejax.eval import io
from maejax.eval import similarity

NULL_SIZE = 10_000
THRESHOLD = 0.05
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


def negatives_above(pool_sorted: np.ndarray, positive: np.ndarray,
                    excluded: np.ndarray | None = None) -> np.ndarray:
  """How many negatives rank above each positive similarity of one query.

  Args: pool_sorted [c] ascending similarities of the query to a pool of candidates;
    positive [m] its positives' similarities; excluded [e] similarities of the pool's members
    that are not negatives (its positives and itself, when they are in the pool).
  Returns: int [m]: negatives strictly above each positive (a tie ranks the positive first).
  """
  above = len(pool_sorted) - np.searchsorted(pool_sorted, positive, side="right")
  if excluded is not None and len(excluded):
    excluded = np.sort(excluded)
    above -= len(excluded) - np.searchsorted(excluded, positive, side="right")
  return above


def _ap(positive: np.ndarray, above: np.ndarray) -> float:
  """AP of one query: mean over positives (ranked by similarity) of precision at their rank."""
  order = np.argsort(-positive, kind="stable")
  k = np.arange(1, len(positive) + 1)
  return float(np.mean(k / (k + above[order])))


def normalized_ap(ap, n_pos, n_neg) -> np.ndarray:
  """copairs' `normalize_ap`: (AP - mu0) / (1 - mu0), clipped to [-1, 1], mu0 the expected AP
  of a random ranking. mu0 comes from copairs' `expected_ap` once per distinct (positives,
  negatives) count: `normalize_ap` sums a harmonic number in Python for every query (at 230k
  queries among 20k controls, most of the benchmark's time).

  Args: ap, n_pos, n_neg [queries]. Returns: float64 [queries].
  """
  counts, inverse = np.unique(np.stack([n_pos, n_neg], axis=1), axis=0, return_inverse=True)
  mu0 = np.array([normalization.expected_ap(int(m), int(n)) for m, n in counts])
  mu0 = mu0[inverse.ravel()]
  return np.clip((np.asarray(ap, np.float64) - mu0) / np.maximum(1 - mu0, 1e-10), -1.0, 1.0)


def _ap_frame(meta: pd.DataFrame, ap, n_pos, n_total) -> pd.DataFrame:
  """copairs' average_precision columns beside `meta` (one row per query)."""
  n_pos, n_total = np.asarray(n_pos, np.int64), np.asarray(n_total, np.int64)
  out = meta.reset_index(drop=True).copy()
  out["average_precision"] = np.asarray(ap, np.float64)
  out["normalized_average_precision"] = normalized_ap(out.average_precision.to_numpy(), n_pos,
                                                      n_total - n_pos)
  out["n_pos_pairs"], out["n_total_pairs"] = n_pos, n_total
  return out


def replicate_ap(features: np.ndarray, perturbation, is_control, *, negatives: str = "controls",
                 block_size: int = similarity.BLOCK_SIZE) -> pd.DataFrame:
  """AP of each treated well retrieving the other wells of its perturbation.

  Args: features [wells, d]; perturbation [wells] labels; is_control [wells] bools;
    negatives "controls" (the control wells) or "all" (every well of another perturbation).
  Returns: one row per treated well with a replicate: `row` (its index in the table),
    average_precision, normalized_average_precision, n_pos_pairs, n_total_pairs.
  """
  u = similarity.unit_rows(features)
  codes = pd.factorize(np.asarray(perturbation).astype(str))[0]
  treated = np.flatnonzero(~is_control)
  pool = np.flatnonzero(is_control) if negatives == "controls" else np.arange(len(u))
  order = np.argsort(codes, kind="stable")
  members = np.split(order, np.flatnonzero(np.diff(codes[order])) + 1)
  queries = np.array([q for q in treated if len(members[codes[q]]) > 1], dtype=np.int64)
  ap, n_pos, n_total = [], [], []
  pool_t = np.ascontiguousarray(u[pool].T)
  for rows in similarity.row_blocks(len(queries), len(pool), block_size):
    block = queries[rows]
    sims = u[block] @ pool_t
    pool_sorted = np.sort(sims, axis=1)
    for r, q in enumerate(block):
      same = members[codes[q]]
      others = same[same != q]
      if negatives == "controls":  # positives are not in the pool
        positive, excluded = u[others] @ u[q], None
      else:  # the pool is every well: its own perturbation's wells are not negatives
        positive, excluded = sims[r, others], sims[r, same]
      ap.append(_ap(positive, negatives_above(pool_sorted[r], positive, excluded)))
      n_pos.append(len(others))
      n_total.append(len(others) + len(pool) - (0 if excluded is None else len(same)))
  return _ap_frame(pd.DataFrame({"row": queries}), ap, n_pos, n_total)


def replicate_map(table: pd.DataFrame, *, perturbation_col: str = "perturbation",
                  control_col: str = "is_control", control_key: str | None = None,
                  negatives: str = "controls", null_size: int = NULL_SIZE,
                  threshold: float = THRESHOLD, seed: int = 0
                  ) -> tuple[pd.DataFrame, pd.DataFrame, dict]:
  """Replicate-retrieval mAP of a well (or site) table.

  Args:
    table: one row per well: Metadata_* columns and numeric features (batch-corrected).
    negatives: "controls" (treated wells vs control wells) or "all" (vs every well of
      another perturbation, controls included).
  Returns: (ap: one row per treated well with a replicate, as copairs' average_precision:
    the perturbation, average_precision, normalized_average_precision, n_pos_pairs,
    n_total_pairs; maps: one row per perturbation with mean_average_precision, p_value,
    corrected_p_value (q), below_corrected_p, ...; summary dict with mean_average_precision,
    fraction_retrieved, n).
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
  labels = metadata[pert].astype(str).to_numpy()
  counts = pd.Series(labels[~is_control]).value_counts()
  if not (counts > 1).any():
    raise ValueError(f"no perturbation has 2 or more treated wells in {pert}: replicate mAP "
                     "needs replicates")
  if negatives == "controls" and not is_control.any():
    raise ValueError("replicate mAP against controls needs control wells; mark them "
                     "(--control-col / --control-key) or use negatives='all'")
  # Controls are each their own perturbation (copairs' reference index): never positives.
  ap = replicate_ap(features, np.where(is_control, [f"\0control{i}" for i in range(len(labels))],
                                      labels),
                    is_control, negatives=negatives)
  ap.insert(0, pert, labels[ap.pop("row").to_numpy()])
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
                    block_size: int = similarity.BLOCK_SIZE) -> pd.DataFrame:
  """AP of each gene retrieving its known partners among the other genes.

  Args: features [genes, d] (one row per perturbation, unique names); genes [genes];
    pairs with entity1, entity2. Genes with no partner in the map, or related to every
    other gene, are not queries.
  Returns: one row per query gene: `gene`, average_precision, normalized_average_precision,
    n_pos_pairs (its partners), n_total_pairs.
  """
  genes = np.asarray(genes).astype(str)
  if len(set(genes)) != len(genes):
    raise ValueError("relationship mAP needs one row per perturbation (aggregate wells first)")
  u = similarity.unit_rows(features)
  index = pd.Index(genes)
  partners = {g: index.get_indexer(sorted(p)) for g, p in _partners(pairs, genes).items()}
  n = len(genes)
  queries = np.array([i for i, g in enumerate(genes) if 0 < len(partners.get(g, ())) < n - 1],
                     dtype=np.int64)
  ap, n_pos = [], []
  for rows in similarity.row_blocks(len(queries), n, block_size):
    block = queries[rows]
    sims = u[block] @ u.T
    pool_sorted = np.sort(sims, axis=1)
    for r, q in enumerate(block):
      mine = partners[genes[q]]
      positive = sims[r, mine]
      excluded = np.append(positive, sims[r, q])
      ap.append(_ap(positive, negatives_above(pool_sorted[r], positive, excluded)))
      n_pos.append(len(mine))
  return _ap_frame(pd.DataFrame({"gene": genes[queries]}), ap, n_pos,
                   np.full(len(queries), n - 1))


def relationship_map(map_table: pd.DataFrame, relationships: Mapping[str, pd.DataFrame], *,
                     perturbation_col: str = "perturbation", null_size: int = NULL_SIZE,
                     threshold: float = THRESHOLD, seed: int = 0,
                     block_size: int = similarity.BLOCK_SIZE) -> tuple[pd.DataFrame, dict]:
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
    ap = relationship_ap(features, genes, pairs, block_size=block_size)
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
