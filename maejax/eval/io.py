"""Embedding tables: one row per well (or site, or perturbation).

A table is a pandas DataFrame with `Metadata_*` columns (`Metadata_experiment`,
`Metadata_plate`, `Metadata_well`, `Metadata_perturbation`, `Metadata_is_control`, ...) and
numeric feature columns, the layout pycytominer and copairs use. CellProfiler-style CSVs and
other models' embeddings in this layout work as they are.
"""

from __future__ import annotations

import io
import os
import tempfile
import warnings

import anndata
import numpy as np
import pandas as pd
from etils import epath

from maejax import workdir

METADATA_PREFIX = "Metadata_"


def read_embeddings(path) -> pd.DataFrame:
  """Reads a Parquet (.parquet/.pq), CSV (.csv, .csv.gz), TSV or .h5ad table (local or gs://)."""
  path = workdir.path(path)
  if not path.is_file():
    raise FileNotFoundError(
        f"embeddings table {path} does not exist; pass a Parquet or CSV file with "
        "Metadata_* columns and numeric feature columns")
  name = path.name.lower()
  gzip = "gzip" if name.endswith(".gz") else None
  if name.endswith(".h5ad"):
    return _read_h5ad(path)
  with path.open("rb") as f:
    if name.endswith((".parquet", ".pq")):
      return pd.read_parquet(f)
    if name.endswith((".csv", ".csv.gz")):
      return pd.read_csv(f, compression=gzip)
    if name.endswith((".tsv", ".tsv.gz", ".txt")):
      return pd.read_csv(f, sep="\t", compression=gzip)
  raise ValueError(
      f"embeddings table {path}: unknown format {path.suffix!r}; expected .parquet, .csv, "
      ".tsv or .h5ad")


def metadata_columns(table: pd.DataFrame) -> list[str]:
  return [c for c in table.columns if str(c).startswith(METADATA_PREFIX)]


def feature_columns(table: pd.DataFrame) -> list[str]:
  """Numeric columns that are not metadata. Warns about non-numeric ones it leaves out."""
  candidates = [c for c in table.columns if not str(c).startswith(METADATA_PREFIX)]
  numeric = [c for c in candidates if pd.api.types.is_numeric_dtype(table[c])
             and not pd.api.types.is_bool_dtype(table[c])]
  left_out = [c for c in candidates if c not in numeric]
  if left_out:
    warnings.warn(
        f"non-numeric columns without the {METADATA_PREFIX} prefix are not features and are "
        f"left out: {left_out[:10]}{' ...' if len(left_out) > 10 else ''} (rename them to "
        f"{METADATA_PREFIX}<name> to keep them as metadata)", stacklevel=2)
  if not numeric:
    raise ValueError(
        f"no feature columns: the table has columns {list(table.columns)[:20]} but none is "
        f"numeric without the {METADATA_PREFIX} prefix; features must be numeric columns "
        f"and metadata columns must start with {METADATA_PREFIX}")
  return numeric


def resolve_column(table: pd.DataFrame, name: str, *, what: str, flag: str) -> str:
  """Finds `name` or `Metadata_<name>` among the table's columns, else a clear error."""
  base = name[len(METADATA_PREFIX):] if name.startswith(METADATA_PREFIX) else name
  for candidate in (name, base, METADATA_PREFIX + base):
    if candidate in table.columns:
      return candidate
  raise ValueError(
      f"missing metadata column for the {what}: neither {base!r} nor "
      f"{METADATA_PREFIX + base!r} is in the table (metadata columns: "
      f"{metadata_columns(table)}); name the right one with {flag}")


def split_table(table: pd.DataFrame, *, drop_nan_features: bool = False
                ) -> tuple[pd.DataFrame, np.ndarray, list[str]]:
  """Splits a table into (metadata, features float64 [rows, features], feature names)."""
  names = feature_columns(table)
  features = table[names].to_numpy(dtype=np.float64)
  bad = ~np.isfinite(features)
  if bad.any():
    bad_columns = [n for n, b in zip(names, bad.any(axis=0)) if b]
    if not drop_nan_features:
      raise ValueError(
          f"{int(bad.sum())} NaN/inf values in {len(bad_columns)} feature columns "
          f"({bad_columns[:10]}{' ...' if len(bad_columns) > 10 else ''}); drop or impute them "
          "first, or pass drop_nan_features=True (--drop-nan-features) to drop those columns")
    warnings.warn(f"dropping {len(bad_columns)} feature columns with NaN/inf: "
                  f"{bad_columns[:10]}", stacklevel=2)
    keep = ~bad.any(axis=0)
    names = [n for n, k in zip(names, keep) if k]
    if not names:
      raise ValueError("every feature column has NaN/inf values; nothing left to score")
    features = features[:, keep]
  metadata = table[metadata_columns(table)].reset_index(drop=True)
  return metadata, features, names


def join_table(metadata: pd.DataFrame, features: np.ndarray,
               names: list[str] | None = None) -> pd.DataFrame:
  """Inverse of split_table: metadata columns first, then features (default `feature_<i>`)."""
  if names is None:
    names = [f"feature_{i}" for i in range(features.shape[1])]
  frame = pd.DataFrame(features, columns=names)
  return pd.concat([metadata.reset_index(drop=True), frame], axis=1)


def write_embeddings(table: pd.DataFrame, path) -> epath.Path:
  """Writes a table as Parquet, CSV (.csv, .csv.gz) or AnnData .h5ad, chosen by the suffix
  (local or gs://)."""
  path = workdir.path(path)
  name = path.name.lower()
  if not name.endswith((".parquet", ".pq", ".csv", ".csv.gz", ".h5ad")):
    raise ValueError(f"cannot write {path}: use a .parquet, .csv or .h5ad suffix")
  path.parent.mkdir(parents=True, exist_ok=True)
  if name.endswith(".h5ad"):
    return write_h5ad(table, path)
  buffer = io.BytesIO()  # Written whole (workdir.write_bytes): a kill never leaves half a table.
  if name.endswith((".parquet", ".pq")):
    table.to_parquet(buffer, index=False)
  else:
    table.to_csv(buffer, index=False, compression="gzip" if name.endswith(".gz") else None)
  workdir.write_bytes(path, buffer.getvalue())
  return path


def write_h5ad(table: pd.DataFrame, path) -> epath.Path:
  """Writes features as AnnData `X` and metadata (prefix stripped) as `obs`."""
  metadata, features, names = split_table(table)
  obs = metadata.rename(columns=lambda c: c[len(METADATA_PREFIX):])
  obs.index = obs.index.astype(str)
  for column in obs.columns:
    if obs[column].dtype == object:
      obs[column] = obs[column].astype(str)
  adata = anndata.AnnData(X=features.astype(np.float32), obs=obs,
                          var=pd.DataFrame(index=[str(n) for n in names]))
  path = workdir.path(path)
  if not _remote(path):
    tmp = path.parent / f".tmp-{os.getpid()}-{path.name}"
    adata.write_h5ad(os.fspath(tmp))
    tmp.replace(path)
    return path
  with tempfile.TemporaryDirectory() as tmp:  # h5py writes local files only.
    local = os.path.join(tmp, path.name)
    adata.write_h5ad(local)
    path.write_bytes(epath.Path(local).read_bytes())
  return path


def _remote(path) -> bool:
  return "://" in os.fspath(path)


def _read_h5ad(path: epath.Path) -> pd.DataFrame:
  if _remote(path):
    with tempfile.TemporaryDirectory() as tmp:
      local = os.path.join(tmp, path.name)
      epath.Path(local).write_bytes(path.read_bytes())
      adata = anndata.read_h5ad(local)
  else:
    adata = anndata.read_h5ad(os.fspath(path))
  obs = adata.obs.rename(columns=lambda c: METADATA_PREFIX + str(c)).reset_index(drop=True)
  x = adata.X.toarray() if hasattr(adata.X, "toarray") else np.asarray(adata.X)
  return join_table(obs, x, [str(v) for v in adata.var_names])


_TRUE = {"true", "t", "1", "1.0", "yes", "y", "control"}
_FALSE = {"false", "f", "0", "0.0", "no", "n", "treatment"}


def as_bool(values: pd.Series, *, column: str) -> np.ndarray:
  """A boolean-ish column (bool, 0/1, 'True'/'False', 'yes'/'no') -> bool [rows]."""
  if pd.api.types.is_bool_dtype(values):
    return values.to_numpy(dtype=bool)
  if pd.api.types.is_numeric_dtype(values):
    bad = ~values.isin([0, 1])
    if bad.any():
      raise ValueError(f"column {column} should be 0/1 or True/False, found "
                       f"{values[bad].unique()[:5].tolist()}")
    return values.to_numpy() == 1
  text = values.astype(str).str.strip().str.lower()
  bad = ~text.isin(_TRUE | _FALSE)
  if bad.any():
    raise ValueError(f"column {column} should be True/False, found "
                     f"{values[bad].unique()[:5].tolist()}; pass --control-key VALUE to mark "
                     "controls by their perturbation name instead")
  return text.isin(_TRUE).to_numpy()


def control_flags(metadata: pd.DataFrame, *, control_col: str = "is_control",
                  control_key: str | None = None,
                  perturbation_col: str = "perturbation") -> np.ndarray:
  """bool [rows]: controls by `control_key` (the perturbation name of control wells, e.g.
  'EMPTY_control') when given, else by the boolean column `control_col`."""
  if control_key is not None:
    column = resolve_column(metadata, perturbation_col, what="perturbation",
                            flag="--perturbation-col")
    flags = metadata[column].astype(str).to_numpy() == str(control_key)
    if not flags.any():
      values = metadata[column].astype(str).value_counts().index[:10].tolist()
      raise ValueError(f"no row has {column} == {control_key!r} (control key); most common "
                       f"values: {values}")
    return flags
  column = resolve_column(metadata, control_col, what="control flag",
                          flag="--control-col (or --control-key NAME)")
  flags = as_bool(metadata[column], column=column)
  if not flags.any():
    raise ValueError(f"no control wells: {column} is False everywhere; corrections are fitted "
                     "on controls (pass --control-key NAME or --correction none)")
  return flags
