"""Compound-gene benchmark (EFAAR's RxRx3-core benchmark; Recursion's EFAAR_benchmarking,
`RxRx3-core_benchmarks/`): does a compound's phenotype match the knock-out of its known target?

- compound wells are those with a concentration (`Metadata_concentration`); their perturbation
  column names the compound. They are averaged per (compound, concentration), gene wells per
  gene (maejax.eval.aggregate).
- the score of a compound-gene pair is |cosine| between the gene's embedding and the
  compound's at one concentration, maximised over the compound's concentrations.
- per compound with a known target in the map (the `compound,gene` table) and a gene that is
  not one: ROC AUC and average precision (scikit-learn's) of its targets against every other
  gene of the map, ranked by score.
- the random baseline: the same with the target table's gene column shuffled (fixed seed),
  so each compound keeps its number of targets and each gene its number of compounds.

EFAAR itself compares each compound's targets with 2x as many (at least 20) genes sampled
from its truth table and thresholds activities by nM; here every map gene not a target is a
negative, so the figures are not EFAAR's numbers, only their definition.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from sklearn import metrics

from maejax.eval import io
from maejax.eval import similarity

CONCENTRATION = "concentration"
SEED = 0


def concentration_column(table: pd.DataFrame, name: str = CONCENTRATION) -> str | None:
  """The column of concentrations, `name` with or without the `Metadata_` prefix; None when
  the table has none (then no well is a compound well)."""
  return next((c for c in (name, io.METADATA_PREFIX + name) if c in table.columns), None)


def read_targets(path) -> pd.DataFrame:
  """A `compound,gene` CSV (or TSV) of known targets -> unique (compound, gene) text rows."""
  path = Path(path)
  if not path.is_file():
    raise FileNotFoundError(f"--compound-targets {path} does not exist; pass a CSV with "
                            "columns compound,gene (one known target a line)")
  table = pd.read_csv(path, sep=None, engine="python", dtype=str)
  table.columns = [c.strip() for c in table.columns]
  if not {"compound", "gene"} <= set(table.columns):
    raise ValueError(f"compound targets {path} has columns {list(table.columns)}; expected "
                     "a header compound,gene (one known target a line)")
  return table[["compound", "gene"]].dropna().apply(lambda c: c.str.strip()).drop_duplicates(
      ignore_index=True)


def compound_gene_scores(compound_features, compounds, gene_features, *,
                         block_size: int = similarity.BLOCK_SIZE) -> tuple[np.ndarray, np.ndarray]:
  """max over concentrations of |cosine(compound at a concentration, gene)|.

  Args: compound_features [compound-concentrations, d]; compounds [compound-concentrations]
    the compound of each row; gene_features [genes, d].
  Returns: (compound names [c] sorted, scores [c, genes] float64).
  """
  names, codes = np.unique(np.asarray(compounds).astype(str), return_inverse=True)
  order = np.argsort(codes, kind="stable")
  uc, codes = similarity.unit_rows(compound_features)[order], codes[order]
  ug = similarity.unit_rows(gene_features)
  scores = np.zeros((len(names), len(ug)))
  for rows in similarity.row_blocks(len(uc), len(ug), block_size):
    block, c = np.abs(uc[rows] @ ug.T), codes[rows]
    starts = np.flatnonzero(np.r_[True, c[1:] != c[:-1]])
    scores[c[starts]] = np.maximum(scores[c[starts]], np.maximum.reduceat(block, starts, axis=0))
  return names, scores


def _auc_ap(scores: np.ndarray, positive: np.ndarray) -> tuple[float, float]:
  return (float(metrics.roc_auc_score(positive, scores)),
          float(metrics.average_precision_score(positive, scores)))


def _per_compound(names, scores, genes, targets: pd.DataFrame) -> pd.DataFrame:
  """[compound, targets, auc, average_precision] for compounds with 0 < targets < genes."""
  gene_index, compound_index = pd.Index(genes), pd.Index(names)
  c = compound_index.get_indexer(targets.compound)
  g = gene_index.get_indexer(targets.gene)
  keep = (c >= 0) & (g >= 0)
  labels = np.zeros(scores.shape, dtype=bool)
  labels[c[keep], g[keep]] = True
  rows = []
  for i in np.flatnonzero((labels.sum(1) > 0) & (labels.sum(1) < len(genes))):
    auc, ap = _auc_ap(scores[i], labels[i])
    rows.append(dict(compound=names[i], targets=int(labels[i].sum()), auc=auc,
                     average_precision=ap))
  return pd.DataFrame(rows, columns=["compound", "targets", "auc", "average_precision"])


def shuffled_targets(targets: pd.DataFrame, seed: int = SEED) -> pd.DataFrame:
  """The target table with its gene column permuted (numpy default_rng(seed))."""
  rng = np.random.default_rng(seed)
  return targets.assign(gene=rng.permutation(targets.gene.to_numpy())).drop_duplicates(
      ignore_index=True)


def benchmark(compound_features, compounds, gene_features, genes, targets: pd.DataFrame, *,
              seed: int = SEED) -> tuple[pd.DataFrame, dict]:
  """Per-compound AUC and AP of known targets, and the shuffled-target baseline.

  Args: compound_features [compound-concentrations, d] and compounds (their compound ids);
    gene_features [genes, d] and genes (unique names); targets (compound, gene) rows.
  Returns: (per compound: compound, targets, auc, average_precision, baseline_auc,
    baseline_average_precision (NaN where the shuffled table leaves it no target);
    summary: compounds, median_auc, median_average_precision, baseline_median_auc,
    baseline_median_average_precision, seed, reason (None, or why there is no figure)).
  """
  genes = np.asarray(genes).astype(str)
  names, scores = compound_gene_scores(compound_features, compounds, gene_features)
  in_map = targets[targets.compound.isin(names) & targets.gene.isin(genes)]
  table = _per_compound(names, scores, genes, in_map)
  baseline = _per_compound(names, scores, genes, shuffled_targets(in_map, seed))
  table = table.merge(baseline[["compound", "auc", "average_precision"]].rename(
      columns={"auc": "baseline_auc", "average_precision": "baseline_average_precision"}),
                      on="compound", how="left")
  reason = None if len(table) else (
      f"no compound of the target table has a target among the map's {len(genes)} genes "
      f"({len(set(targets.compound) & set(names))} of its compounds are in the map)")
  summary = dict(
      compounds=len(table), median_auc=float(table.auc.median()) if len(table) else None,
      median_average_precision=float(table.average_precision.median()) if len(table) else None,
      baseline_median_auc=float(baseline.auc.median()) if len(baseline) else None,
      baseline_median_average_precision=(float(baseline.average_precision.median())
                                         if len(baseline) else None),
      seed=seed, reason=reason)
  return table, summary
