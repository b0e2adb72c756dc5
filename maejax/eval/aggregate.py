"""Wells -> perturbations: the mean feature vector of each perturbation, metadata kept."""

from __future__ import annotations

from typing import Sequence

import numpy as np
import pandas as pd
from scipy import sparse

from maejax.eval import io

N_WELLS = "Metadata_n_wells"
JOIN = ";"


def _joined(values: pd.Series) -> str | None:
  """A group's unique values as text, sorted and joined by JOIN; None when all are missing."""
  unique = pd.unique(values.astype(object))
  if len(unique) == 1 and pd.isna(unique[0]):
    return None
  return JOIN.join(sorted(str(v) for v in unique))


def _metadata(metadata: pd.DataFrame, codes: np.ndarray, first: np.ndarray) -> pd.DataFrame:
  """One row per group: a column constant within every group keeps its values and dtype; one
  that varies in some group becomes text in every group (JOIN-ed where it varies), so a
  column never mixes numbers and text (which Parquet cannot write)."""
  kept = metadata.iloc[first].reset_index(drop=True)
  if metadata.empty:
    return kept
  grouped = metadata.groupby(codes, sort=True)
  varies = grouped.nunique(dropna=False).gt(1).any()
  for column in varies.index[varies]:
    kept[column] = grouped[column].agg(_joined).to_numpy(dtype=object)
  return kept


def aggregate(table: pd.DataFrame, by: str | Sequence[str] = "Metadata_perturbation",
              method: str = "mean") -> pd.DataFrame:
  """One row per value of `by` (sorted; a list of columns: per combination), features averaged
  over its rows.

  Metadata is kept: a column constant within every group keeps its value, a column that
  varies in some group (plate, well, experiment) becomes text: each group's sorted unique
  values joined by ';' (one value where it is constant, None where all are missing).
  `Metadata_n_wells` counts the rows averaged.
  Args: table with Metadata_* and feature columns; method "mean" or "median".
  Returns: a table with the same columns (plus Metadata_n_wells), one row per group.
  """
  if method not in ("mean", "median"):
    raise ValueError(f"aggregation method {method!r}: expected 'mean' or 'median'")
  keys = [io.resolve_column(table, b, what="perturbation", flag="--perturbation-col")
          for b in ([by] if isinstance(by, str) else by)]
  for key in keys:
    if table[key].isna().any():
      raise ValueError(f"{int(table[key].isna().sum())} rows have no {key}; fill or drop them")
  metadata, features, names = io.split_table(table)
  codes = metadata.groupby(keys, sort=True, observed=True).ngroup().to_numpy()
  first = np.unique(codes, return_index=True)[1]
  groups = metadata[keys].iloc[first].reset_index(drop=True)
  counts = np.bincount(codes, minlength=len(groups))
  if method == "mean":  # a sparse [groups, rows] indicator times the features: no copies
    indicator = sparse.csr_matrix((np.ones(len(codes)), (codes, np.arange(len(codes)))),
                                  shape=(len(groups), len(codes)))
    pooled = (indicator @ features / counts[:, None]).astype(features.dtype)
  else:
    pooled = np.stack([np.median(features[codes == g], axis=0) for g in range(len(groups))])
  other = [c for c in metadata.columns if c not in keys + [N_WELLS]]
  kept = pd.concat([groups, _metadata(metadata[other], codes, first)], axis=1)
  kept[N_WELLS] = counts
  return io.join_table(kept[keys + other + [N_WELLS]], pooled, names)
