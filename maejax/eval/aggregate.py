"""Wells -> perturbations: the mean feature vector of each perturbation, metadata kept."""

from __future__ import annotations

from typing import Sequence

import numpy as np
import pandas as pd
from scipy import sparse

from maejax.eval import io

N_WELLS = "Metadata_n_wells"
JOIN = ";"


def _metadata_of_group(values: pd.Series):
  unique = pd.unique(values.astype(object))
  if len(unique) == 1:
    return unique[0]
  return JOIN.join(sorted(str(v) for v in unique))


def aggregate(table: pd.DataFrame, by: str | Sequence[str] = "Metadata_perturbation",
              method: str = "mean") -> pd.DataFrame:
  """One row per value of `by` (sorted; a list of columns: per combination), features averaged
  over its rows.

  Metadata is kept: a column constant within every group keeps its value, a column that
  varies (plate, well, experiment) becomes the sorted unique values joined by ';'.
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
  groups = metadata[keys].iloc[np.unique(codes, return_index=True)[1]].reset_index(drop=True)
  counts = np.bincount(codes, minlength=len(groups))
  if method == "mean":  # a sparse [groups, rows] indicator times the features: no copies
    indicator = sparse.csr_matrix((np.ones(len(codes)), (codes, np.arange(len(codes)))),
                                  shape=(len(groups), len(codes)))
    pooled = (indicator @ features / counts[:, None]).astype(features.dtype)
  else:
    pooled = np.stack([np.median(features[codes == g], axis=0) for g in range(len(groups))])
  other = [c for c in metadata.columns if c not in keys + [N_WELLS]]
  grouped = metadata[other].groupby(codes, sort=True)
  kept = grouped.agg(_metadata_of_group) if other else pd.DataFrame(index=range(len(groups)))
  kept = pd.concat([groups, kept.reset_index(drop=True)], axis=1)
  kept[N_WELLS] = counts
  return io.join_table(kept[keys + other + [N_WELLS]], pooled, names)
