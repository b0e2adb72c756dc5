"""Embedding tables: one row per well (or site, or perturbation).

A table is a pandas DataFrame with `Metadata_*` columns (`Metadata_experiment`,
`Metadata_plate`, `Metadata_well`, `Metadata_perturbation`, `Metadata_is_control`, ...) and
numeric feature columns, the layout pycytominer and copairs use. CellProfiler-style CSVs and
other models' embeddings in this layout work as they are.

What maejax writes is readable without maejax:
- the index is the well id (`Metadata_well_id`, e.g. `exp1_Plate1_B02`; AnnData `obs_names`);
- text metadata (experiment, well, perturbation, ...) are pandas categories (in AnnData `obs`
  also numeric names such as RxRx1's integer plates), numbers (n_sites, n_crops) stay
  numbers, `is_control` stays bool;
- model features are `feature_<i>` (FEATURE_PREFIX): `df.filter(regex="^feature_")`;
- provenance (model, checkpoint, step, crop size, pooling, channels, maejax version; for
  benchmark outputs also the correction) is JSON under the key `maejax` of the Parquet schema
  metadata (`pyarrow.parquet.read_schema(f).metadata[b"maejax"]`) and AnnData `uns["maejax"]`;
  `read_embeddings` puts it in `table.attrs["maejax"]` (`provenance_of(table)`).
On input, JUMP-style names (`Metadata_Plate`, `Metadata_Well`, `Metadata_Batch`,
`Metadata_Symbol` / `Metadata_JCP2022` as the perturbation, `Metadata_pert_type == "negcon"` as
the control flag) are mapped to these canonical names (canonical_columns).
"""

from __future__ import annotations

import importlib.metadata
import io
import json
import os
import tempfile
import warnings

import anndata
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
from etils import epath

from maejax import workdir

METADATA_PREFIX = "Metadata_"
FEATURE_PREFIX = "feature_"
WELL_ID = "Metadata_well_id"  # The index of well tables.
# What maejax itself names in every well table (maejax.eval.embed.sites_to_wells); a source's
# own column of the same name (RxRx1's and RxRx3-core's `well_id`) is kept as `source_<name>`.
DERIVED = (WELL_ID, "Metadata_n_sites", "Metadata_n_crops")
SOURCE_PREFIX = "source_"
PROVENANCE_KEY = "maejax"     # Parquet schema metadata key, AnnData uns key, DataFrame.attrs key.
# Metadata that names things (categories even when the values are numbers, e.g. RxRx1 plates).
CATEGORICAL = ("experiment", "batch", "source", "plate", "well", "site", "perturbation")
# Input names -> canonical names (compared case-insensitively, after the Metadata_ prefix).
ALIASES = {"perturbation": ("perturbation", "symbol", "gene_symbol", "jcp2022", "broad_sample",
                            "pert_iname"),
           "experiment": ("experiment",), "batch": ("batch",), "plate": ("plate",),
           "well": ("well",), "site": ("site",), "is_control": ("is_control",)}
NEGATIVE_CONTROL = "negcon"   # JUMP's Metadata_pert_type / Metadata_control_type of controls.


def read_embeddings(path) -> pd.DataFrame:
  """Reads a Parquet (.parquet/.pq), CSV (.csv, .csv.gz), TSV or .h5ad table (local or gs://)."""
  path = workdir.path(path)
  if not path.is_file():
    raise FileNotFoundError(
        f"embeddings table {path} does not exist; pass a Parquet or CSV file with "
        "Metadata_* columns and numeric feature columns")
  name = path.name.lower()
  if not name.endswith((".h5ad", ".parquet", ".pq", ".csv", ".csv.gz", ".tsv", ".tsv.gz",
                        ".txt")):
    raise ValueError(
        f"embeddings table {path}: unknown format {path.suffix!r}; expected .parquet, .csv, "
        ".tsv or .h5ad")
  table, meta = _read_h5ad(path) if name.endswith(".h5ad") else _read_file(path, name)
  if table.index.name in table.columns:  # Written before a source's own well_id was renamed.
    table = table.rename(columns={table.index.name: metadata_name(table.index.name)})
  table = canonical_columns(table)
  if meta:
    table.attrs[PROVENANCE_KEY] = meta
  return table


def _read_file(path: epath.Path, name: str) -> tuple[pd.DataFrame, dict]:
  gzip = "gzip" if name.endswith(".gz") else None
  with path.open("rb") as f:
    if name.endswith((".parquet", ".pq")):
      arrow = pq.read_table(f)
      meta = (arrow.schema.metadata or {}).get(PROVENANCE_KEY.encode())
      return arrow.to_pandas(), json.loads(meta) if meta else {}
    table = pd.read_csv(f, sep="\t" if ".tsv" in name or name.endswith(".txt") else ",",
                        compression=gzip)
  if WELL_ID in table.columns:
    table = table.set_index(WELL_ID)
  return table, {}


def canonical_columns(table: pd.DataFrame) -> pd.DataFrame:
  """JUMP / CellProfiler-cased metadata -> the canonical `Metadata_<name>` columns.

  `Metadata_Plate`, `Metadata_WELL`, ... are renamed (case-insensitive); the first of
  `Metadata_Symbol`, `Metadata_gene_symbol`, `Metadata_JCP2022`, ... is copied to
  `Metadata_perturbation` (the original stays); without `Metadata_is_control`, JUMP's
  `Metadata_pert_type` / `Metadata_control_type` give it (== "negcon"). A canonical column
  already present is never replaced.
  """
  by_lower = {}
  for c in table.columns:
    if str(c).lower().startswith(METADATA_PREFIX.lower()):
      by_lower.setdefault(str(c)[len(METADATA_PREFIX):].lower(), c)
  out = table
  for canonical, aliases in ALIASES.items():
    target = METADATA_PREFIX + canonical
    if target in table.columns:
      continue
    found = next((by_lower[a] for a in aliases if a in by_lower), None)
    if found is None:
      continue
    if out is table:
      out = table.copy()
    if found.lower() == target.lower():
      out = out.rename(columns={found: target})
    else:
      out[target] = table[found]
  if METADATA_PREFIX + "is_control" not in out.columns:
    kind = next((by_lower[k] for k in ("pert_type", "control_type") if k in by_lower), None)
    if kind is not None:
      out = out.copy() if out is table else out
      out[METADATA_PREFIX + "is_control"] = (
          table[kind].astype(str).str.lower() == NEGATIVE_CONTROL).to_numpy()
  return out


def metadata_name(column) -> str:
  """A source's metadata column -> its well-table name: `Metadata_<column>` (a `Metadata_`
  name as it is), or `Metadata_source_<name>` where that would be a name maejax derives
  (DERIVED, in any case): every well table has one well id, its index."""
  name = str(column)
  base = name[len(METADATA_PREFIX):] if name.startswith(METADATA_PREFIX) else name
  if (METADATA_PREFIX + base).lower() in {d.lower() for d in DERIVED}:
    base = SOURCE_PREFIX + base
  return METADATA_PREFIX + base


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
  """Finds `name` or `Metadata_<name>` among the table's columns (exact, then ignoring case),
  else a clear error."""
  base = name[len(METADATA_PREFIX):] if name.startswith(METADATA_PREFIX) else name
  candidates = (name, base, METADATA_PREFIX + base)
  for candidate in candidates:
    if candidate in table.columns:
      return candidate
  lower = {str(c).lower(): c for c in table.columns}
  for candidate in candidates:
    if candidate.lower() in lower:
      return lower[candidate.lower()]
  raise ValueError(
      f"missing metadata column for the {what}: neither {base!r} nor "
      f"{METADATA_PREFIX + base!r} is in the table (metadata columns: "
      f"{metadata_columns(table)}); name the right one with {flag}")


def split_table(table: pd.DataFrame, *, drop_nan_features: bool = False
                ) -> tuple[pd.DataFrame, np.ndarray, list[str]]:
  """Splits a table into (metadata, features [rows, features], feature names); features are
  float32 when every feature column is (half the memory of a genome-scale table), else float64."""
  names = feature_columns(table)
  single = len(names) and (table.dtypes[names] == np.float32).all()
  features = table[names].to_numpy(dtype=np.float32 if single else np.float64)
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
  return plain(table[metadata_columns(table)]), features, names


def join_table(metadata: pd.DataFrame, features: np.ndarray,
               names: list[str] | None = None) -> pd.DataFrame:
  """Inverse of split_table: metadata columns first, then features (default `feature_<i>`);
  the index is the metadata's."""
  if names is None:
    names = [f"{FEATURE_PREFIX}{i}" for i in range(features.shape[1])]
  frame = pd.DataFrame(features, columns=names)
  out = pd.concat([metadata.reset_index(drop=True), frame], axis=1)
  out.index = metadata.index
  return out


def categorize(table: pd.DataFrame, *, ids: bool = False) -> pd.DataFrame:
  """Text metadata -> pandas categories; with `ids`, also numeric names (CATEGORICAL, e.g.
  RxRx1's integer plates, for AnnData: Parquet keeps dictionaries of text only). Other
  numbers and bools stay as they are. A copy."""
  out = table.copy()
  for c in metadata_columns(table):
    column = table[c]
    base = str(c)[len(METADATA_PREFIX):].lower()
    text = column.dtype == object or pd.api.types.is_string_dtype(column.dtype)
    if isinstance(column.dtype, pd.CategoricalDtype) or pd.api.types.is_bool_dtype(column):
      continue
    if text or (ids and base in CATEGORICAL):
      out[c] = column.astype("category")
  return out


def plain(table: pd.DataFrame) -> pd.DataFrame:
  """Categories -> their plain values (what the eval code groups and compares). A copy."""
  out = table.copy()
  for c in table.columns:
    column = table[c]
    if isinstance(column.dtype, pd.CategoricalDtype):  # Missing values need object (or float).
      out[c] = column.astype(object if column.isna().any() else column.cat.categories.dtype)
  return out


def well_ids(keys: pd.DataFrame) -> pd.Index:
  """`<experiment>_<plate>_<well>` (the key columns joined by `_`), unique: [rows]."""
  ids = keys.astype(str).agg("_".join, axis=1)
  if not ids.is_unique:  # A '_' inside a name can make two keys collide: number them apart.
    ids = ids + "_" + ids.groupby(ids).cumcount().astype(str)
  return pd.Index(ids.to_numpy(), name=WELL_ID)


def provenance_of(table: pd.DataFrame) -> dict:
  """Where a table came from (`table.attrs["maejax"]`, read from the file; {} if unknown)."""
  return dict(table.attrs.get(PROVENANCE_KEY) or {})


def with_provenance(table: pd.DataFrame, meta: dict) -> pd.DataFrame:
  """Sets `table.attrs["maejax"]` (JSON-safe, plus the maejax version) and returns the table."""
  table.attrs[PROVENANCE_KEY] = workdir.jsonable({"maejax_version": _version(), **meta})
  return table


def _version() -> str:
  try:
    return importlib.metadata.version("maejax")
  except importlib.metadata.PackageNotFoundError:
    return "unknown"


def write_embeddings(table: pd.DataFrame, path, provenance: dict | None = None) -> epath.Path:
  """Writes a table as Parquet, CSV (.csv, .csv.gz) or AnnData .h5ad, chosen by the suffix
  (local or gs://). Metadata is categorized (categorize); a named index (the well id) is
  kept; `provenance` (default: the table's own, provenance_of) goes into the Parquet
  schema metadata / AnnData uns under "maejax" (a CSV has no place for it)."""
  path = workdir.path(path)
  name = path.name.lower()
  if not name.endswith((".parquet", ".pq", ".csv", ".csv.gz", ".h5ad")):
    raise ValueError(f"cannot write {path}: use a .parquet, .csv or .h5ad suffix")
  meta = workdir.jsonable(provenance_of(table) if provenance is None else provenance)
  table = categorize(table)
  path.parent.mkdir(parents=True, exist_ok=True)
  if name.endswith(".h5ad"):
    return write_h5ad(table, path, meta)
  buffer = io.BytesIO()  # Written whole (workdir.write_bytes): a kill never leaves half a table.
  if name.endswith((".parquet", ".pq")):
    arrow = pa.Table.from_pandas(table, preserve_index=None)
    if meta:
      arrow = arrow.replace_schema_metadata(
          {**(arrow.schema.metadata or {}), PROVENANCE_KEY.encode(): json.dumps(meta).encode()})
    pq.write_table(arrow, buffer)
  else:
    table.to_csv(buffer, index=table.index.name is not None,
                 compression="gzip" if name.endswith(".gz") else None)
  workdir.write_bytes(path, buffer.getvalue())
  return path


def write_h5ad(table: pd.DataFrame, path, provenance: dict | None = None) -> epath.Path:
  """Writes features as AnnData `X`, metadata (prefix stripped, categories kept) as `obs`,
  the index (well ids) as `obs_names` and `provenance` as `uns["maejax"]`."""
  _, features, names = split_table(table)
  obs = categorize(table[metadata_columns(table)], ids=True)
  obs = obs.rename(columns=lambda c: c[len(METADATA_PREFIX):])
  obs.index = pd.Index(table.index.astype(str), name=_strip(table.index.name))
  for column in obs.columns:  # h5py stores one type per column: mixed objects become text.
    dtype = obs[column].dtype
    if dtype == object or (isinstance(dtype, pd.CategoricalDtype)
                           and dtype.categories.dtype == object):
      values = obs[column].astype(object)
      obs[column] = values.where(values.isna(), values.astype(str)).astype("category")
  adata = anndata.AnnData(X=features.astype(np.float32), obs=obs,
                          var=pd.DataFrame(index=[str(n) for n in names]))
  if provenance:
    adata.uns[PROVENANCE_KEY] = _uns(provenance)
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


def _strip(name):
  if name is None or not str(name).startswith(METADATA_PREFIX):
    return name
  return str(name)[len(METADATA_PREFIX):]


def _uns(value):
  """JSON-like provenance -> what h5py can store (None dropped, lists of text as text)."""
  if isinstance(value, dict):
    return {k: _uns(v) for k, v in value.items() if v is not None}
  if isinstance(value, list):
    return [str(v) for v in value] if any(isinstance(v, (str, dict, list)) or v is None
                                          for v in value) else value
  return value


def _jsonable_uns(value):
  if isinstance(value, dict) or hasattr(value, "items"):
    return {str(k): _jsonable_uns(v) for k, v in value.items()}
  if isinstance(value, np.ndarray):
    return value.tolist()
  return workdir.jsonable(value)


def _remote(path) -> bool:
  return "://" in os.fspath(path)


def _read_h5ad(path: epath.Path) -> tuple[pd.DataFrame, dict]:
  if _remote(path):
    with tempfile.TemporaryDirectory() as tmp:
      local = os.path.join(tmp, path.name)
      epath.Path(local).write_bytes(path.read_bytes())
      adata = anndata.read_h5ad(local)
  else:
    adata = anndata.read_h5ad(os.fspath(path))
  obs = adata.obs.rename(columns=lambda c: METADATA_PREFIX + str(c))
  name = obs.index.name
  obs.index.name = WELL_ID if name == "well_id" else name
  x = adata.X.toarray() if hasattr(adata.X, "toarray") else np.asarray(adata.X)
  meta = adata.uns.get(PROVENANCE_KEY)
  return (join_table(obs, x, [str(v) for v in adata.var_names]),
          _jsonable_uns(meta) if meta is not None else {})


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
