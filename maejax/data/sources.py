"""Random-access sources of sites: `source[i] -> uint8 [height, width, channels]`.

Every source has `.metadata` (pandas, one row per site, with the standard columns `experiment`,
`plate`, `well`, `site`, `perturbation`, `is_control` plus the original ones), `.channel_ids`
(int32 [channels], the physical channel of each slot), `.channel_names` and `len()`.

Sources: the synthetic screen, a folder of per-channel TIFF/PNG files with a metadata CSV (the
RxRx1 layout as a preset; or a CellProfiler LoadData CSV, detected by its `FileName_<Channel>`
columns), RxRx3-core parquet shards, and ArrayRecord shards written by
`python -m maejax.data.ingest` (the fast path). `make_source(config.data)` picks one.

16-bit images: `config.data.uint16` says how they become uint8, never by silent clipping:
  "error" (default): raise, naming the file and these options;
  "shift": `value >> (bit_depth - 8)`, exact for `bit_depth`-bit cameras (e.g. 12); a value
      above `2**bit_depth - 1` is an error naming the file (pick a larger bit_depth);
  "percentile": per image and channel, map percentiles (lo, hi) linearly to 0..255; values
      outside saturate by design (the usual display normalisation of microscopy).
"""

from __future__ import annotations

import functools
import glob
import io
import json
import logging
import os
import string

import numpy as np
import pandas as pd

from maejax.data import synthetic

STANDARD_COLUMNS = ("experiment", "plate", "well", "site", "perturbation", "is_control")
# CellProfiler LoadData: FileName_<Channel> / PathName_<Channel> per channel, Metadata_* columns.
FILE_NAME, PATH_NAME = "FileName_", "PathName_"
# The LoadData Metadata_ names (lower case) that give each standard column, first match wins.
LOADDATA_COLUMNS = {"experiment": ("experiment", "batch"), "plate": ("plate",),
                    "well": ("well",), "site": ("site",),
                    "perturbation": ("perturbation", "symbol", "jcp2022", "broad_sample")}
ARRAYRECORD_INFO = "info.json"
ARRAYRECORD_METADATA = "metadata.parquet"
_HEADER = 12  # three uint32: height, width, channels

log = logging.getLogger(__name__)


class BadImageError(ValueError):
  """A site's image could not be used (missing, unreadable, wrong size or depth)."""

  def __init__(self, message: str, path: str = ""):
    super().__init__(message)
    self.path = path


_SKIP_HINT = "or set config.data.skip_bad_images=True to skip (and log) such sites"


def read_site(source, index: int, skip_bad_images: bool, on_skip=None):
  """source[index], or None (logged, and `on_skip(index, error)` called) for a bad image
  when skip_bad_images; otherwise a bad image raises BadImageError."""
  try:
    return source[index]
  except BadImageError as e:
    if not skip_bad_images:
      raise
    log.warning("skip_bad_images: skipping site %d: %s", index, e)
    if on_skip is not None:
      on_skip(index, e)
    return None


# ------------------------------------------------------------------------------ decoding

def to_uint8(img: np.ndarray, *, path: str = "", rule: str = "error", bit_depth: int = 16,
             percentiles=(0.1, 99.9)) -> np.ndarray:
  """Converts one decoded channel [H, W] to uint8 following `rule` (see module docstring)."""
  if img.dtype == np.uint8:
    return img
  if img.dtype not in (np.uint16, np.dtype(">u2"), np.uint32, np.int32, np.int16):
    raise BadImageError(f"{path}: pixel type {img.dtype} is not supported; expected uint8 or "
                        "uint16 grey images", path)
  img = img.astype(np.int64)
  if img.min() < 0:
    raise BadImageError(f"{path}: negative pixel values; expected unsigned images", path)
  if rule == "error":
    raise BadImageError(
        f"{path}: 16-bit image where 8-bit was expected (max value {img.max()}); set "
        "config.data.uint16='shift' (with config.data.bit_depth=12 or 16, the camera's depth) or "
        "'percentile' to convert", path)
  if rule == "shift":
    if img.max() > 2 ** bit_depth - 1:
      raise BadImageError(
          f"{path}: value {img.max()} exceeds {bit_depth}-bit range; set config.data.bit_depth "
          f"to the camera's real depth (e.g. 16)", path)
    return (img >> (bit_depth - 8)).astype(np.uint8)
  if rule == "percentile":
    lo, hi = np.percentile(img, percentiles)
    scaled = (img - lo) * (255.0 / max(hi - lo, 1e-6))
    return np.clip(np.round(scaled), 0, 255).astype(np.uint8)
  raise ValueError(f"config.data.uint16={rule!r}: expected 'error', 'shift' or 'percentile'")


def read_channel(path: str, data: bytes | None = None) -> np.ndarray:
  """Decodes one grey image file (PNG/TIFF/JP2/...) or its bytes into [H, W] (native dtype)."""
  ext = os.path.splitext(path)[1].lower()
  try:
    if ext in (".tif", ".tiff"):
      import tifffile  # pylint: disable=g-import-not-at-top
      img = tifffile.imread(io.BytesIO(data) if data is not None else path)
    elif ext in (".jp2", ".j2k") or (data is not None and data[:4] == b"\x00\x00\x00\x0c"):
      import imagecodecs  # pylint: disable=g-import-not-at-top
      if data is None:
        with open(path, "rb") as f:
          data = f.read()
      img = imagecodecs.jpeg2k_decode(data)
    else:
      from PIL import Image  # pylint: disable=g-import-not-at-top
      with Image.open(io.BytesIO(data) if data is not None else path) as im:
        img = np.asarray(im)
  except FileNotFoundError as e:
    raise BadImageError(f"{path}: file not found; fix the path/metadata CSV {_SKIP_HINT}",
                        path) from e
  except Exception as e:  # noqa: BLE001  decoders raise many types
    raise BadImageError(f"{path}: unreadable image ({type(e).__name__}: {e}); re-export the "
                        f"file {_SKIP_HINT}", path) from e
  img = np.squeeze(img)
  if img.ndim != 2:
    raise BadImageError(f"{path}: expected one grey channel per file, got shape {img.shape}; "
                        "split multi-channel files into one file per channel", path)
  return img


def stack_channels(planes: list[np.ndarray], paths: list[str], site: str) -> np.ndarray:
  """[H, W] planes of one site -> uint8 [H, W, C]; mismatched sizes are an error."""
  shapes = {p.shape for p in planes}
  if len(shapes) > 1:
    detail = ", ".join(f"{os.path.basename(f)}={p.shape}" for f, p in zip(paths, planes))
    raise BadImageError(f"site {site}: channel images differ in size ({detail}); every "
                        f"channel of a site must have the same height and width {_SKIP_HINT}",
                        paths[0])
  return np.stack(planes, axis=-1)


# ---------------------------------------------------------------------------- sources

class Source:
  """Base: random access over sites; subclasses implement `_read(i)`."""

  metadata: pd.DataFrame
  channel_ids: np.ndarray
  channel_names: tuple[str, ...]
  site_shape: tuple[int, int, int] | None = None
  cache: dict | None = None  # index -> read-only site, with config.data.cache_sites

  def __len__(self) -> int:
    return len(self.metadata)

  def __getitem__(self, index: int) -> np.ndarray:
    index = int(index)
    if not 0 <= index < len(self):
      raise IndexError(f"site index {index} out of range for a source of {len(self)} sites")
    if self.cache is None:
      return self._read(index)
    site = self.cache.get(index)
    if site is None:
      site = self._read(index)
      site.setflags(write=False)
      self.cache[index] = site
    return site

  def _read(self, index: int) -> np.ndarray:
    raise NotImplementedError


class SyntheticSource(Source):
  """The synthetic screen, restricted to `channels` (physical ids 0..5)."""

  def __init__(self, screen: synthetic.SyntheticScreen, channels):
    self.screen = screen
    self.metadata = screen.metadata
    self.relationships, self.clusters = screen.relationships, screen.clusters
    self._channels = _check_channels(channels, len(synthetic.CHANNEL_NAMES), "synthetic screen")
    self.channel_ids = np.asarray(self._channels, np.int32)
    self.channel_names = tuple(synthetic.CHANNEL_NAMES[c] for c in self._channels)
    self.site_shape = screen.site_shape[:2] + (len(self._channels),)

  def _read(self, index):
    img = self.screen[index]
    return img if len(self._channels) == img.shape[-1] else img[..., list(self._channels)]


def _check_channels(channels, available: int, what: str) -> tuple[int, ...]:
  channels = tuple(int(c) for c in channels)
  bad = [c for c in channels if not 0 <= c < available]
  if bad or not channels:
    raise ValueError(f"config.data.channels={channels}: {what} has physical channels "
                     f"0..{available - 1}; got {bad or 'none'}")
  return channels


def _require_columns(df: pd.DataFrame, columns: dict, csv_path: str) -> None:
  missing = {k: v for k, v in columns.items() if v and v not in df.columns}
  if missing:
    fields = ", ".join(f"{v!r} ({k if '.' in k or ' ' in k else 'config.data.folder.columns.' + k})"
                       for k, v in missing.items())
    raise ValueError(f"{csv_path}: missing column(s) {fields}; the CSV has "
                     f"{list(df.columns)}; rename the CSV columns or set those config fields")


def _standardize(df: pd.DataFrame, columns: dict, control_column: str, control_values) -> pd.DataFrame:
  """Adds the standard metadata columns from the configured CSV columns."""
  out = df.copy()
  for name in ("experiment", "plate", "well", "site", "perturbation"):
    col = columns.get(name, "")
    if col:
      out[name] = df[col]
    elif name not in out:
      out[name] = "" if name != "site" else 1
  if control_column:
    out["is_control"] = df[control_column].astype(str).isin([str(v) for v in control_values])
  elif "is_control" not in out:
    out["is_control"] = False
  return out


class FolderSource(Source):
  """Per-channel image files + a metadata CSV.

  The CSV has one row per site and a `path_template` (format fields: any CSV column and
  `channel`, which takes the values `channel_numbers[c]` for physical channel c), or one row per
  (site, channel) with `file_column` and `channel_column` (long form), both with paths relative
  to `root`; or it is a CellProfiler LoadData CSV (detected by `FileName_<Channel>` columns;
  see `loaddata_layout`), whose relative `PathName_<Channel>` are relative to the CSV's folder.
  """

  def __init__(self, root: str, csv_path: str, *, channels, path_template: str = "",
               channel_numbers=(1, 2, 3, 4, 5, 6), channel_names=(), file_column: str = "",
               channel_column: str = "", columns: dict | None = None, control_column: str = "",
               control_values=("True",), loaddata_channels: str = "", uint16: str = "error",
               bit_depth: int = 16, percentiles=(0.1, 99.9), skip_bad_images: bool = False,
               check_files: bool = True):
    if not os.path.isfile(csv_path):
      raise FileNotFoundError(f"metadata CSV {csv_path} not found; set config.data.path (the "
                              "dataset root) and config.data.metadata_csv")
    df = pd.read_csv(csv_path)
    columns = dict(columns or {})
    loaddata = not file_column and any(str(c).startswith(FILE_NAME) for c in df.columns)
    if loaddata:
      df, names, columns, control_column = loaddata_layout(
          df, csv_path, loaddata_channels, columns, control_column)
      numbers = tuple(range(len(names)))
      what = f"{csv_path} (LoadData channels {names})"
    else:
      numbers = tuple(channel_numbers)
      names = tuple(channel_names) or tuple(f"w{n}" for n in numbers)
      what = f"{csv_path} (channel_numbers {numbers})"
    self._channels = _check_channels(channels, len(numbers), what)
    self.channel_ids = np.asarray(self._channels, np.int32)
    self.channel_names = tuple(names[c] for c in self._channels)
    self._decode = dict(rule=uint16, bit_depth=bit_depth, percentiles=tuple(percentiles))
    self.skip_bad_images = skip_bad_images
    self.skipped: list[tuple[str, str]] = []
    wanted = [numbers[c] for c in self._channels]
    if file_column:
      _require_columns(df, {**columns, "config.data.folder.file_column": file_column,
                            "config.data.folder.channel_column": channel_column or "channel"},
                       csv_path)
      df, paths = self._long_form(df, columns, file_column, channel_column or "channel",
                                  wanted, csv_path)
    elif loaddata:
      df, paths = loaddata_paths(df, csv_path, self.channel_names)
    else:
      if not path_template:
        raise ValueError("config.data.folder: set path_template (one CSV row per site) or "
                         "file_column/channel_column (one CSV row per site and channel)")
      fields = {f for _, f, _, _ in string.Formatter().parse(path_template) if f}
      missing = sorted(fields - set(df.columns) - {"channel"})
      if missing:
        raise ValueError(f"{csv_path}: path_template {path_template!r} uses column(s) {missing} "
                         f"absent from the CSV (columns {list(df.columns)}); fix the template "
                         "or the CSV")
      _require_columns(df, columns, csv_path)
      records = df.to_dict("records")
      paths = [[path_template.format(**r, channel=n) for n in wanted] for r in records]
    _require_columns(df, {"config.data.folder.control_column": control_column}, csv_path)
    paths = [[os.path.join(root, p) for p in site] for site in paths]
    keep = np.ones(len(paths), bool)
    if check_files:
      for i, site in enumerate(paths):
        for p in site:
          if not os.path.exists(p):
            if not skip_bad_images:
              raise FileNotFoundError(f"{p}: image not found (metadata row {i} of {csv_path}); "
                                      f"fix the path template/CSV {_SKIP_HINT}")
            self._skip(p, "not found")
            keep[i] = False
    self._paths = [s for s, k in zip(paths, keep) if k]
    self.metadata = _standardize(df[keep].reset_index(drop=True), columns, control_column,
                                 control_values)

  def _skip(self, path: str, reason: str) -> None:
    self.skipped.append((path, reason))
    log.warning("skipping site with bad image %s (%s); %d skipped so far", path, reason,
                len(self.skipped))

  @staticmethod
  def _long_form(df, columns, file_column, channel_column, wanted, csv_path):
    keys = [columns.get(k) or k for k in ("experiment", "plate", "well", "site")]
    keys = [k for k in keys if k in df.columns]
    sites, paths = [], []
    for key, grp in df.groupby(keys, sort=False):
      by_channel = dict(zip(grp[channel_column], grp[file_column]))
      missing = [n for n in wanted if n not in by_channel]
      if missing:
        raise ValueError(f"{csv_path}: site {_fmt_key(keys, key)} (rows "
                         f"{list(grp.index[:6])}) has no file for channel(s) {missing} in column "
                         f"{channel_column!r}; add the rows or drop that channel from "
                         "config.data.channels")
      sites.append(grp.index[0])
      paths.append([by_channel[n] for n in wanted])
    site_df = df.loc[sites].drop(columns=[file_column, channel_column]).reset_index(drop=True)
    return site_df, paths

  def _read(self, index):
    paths = self._paths[index]
    planes = [to_uint8(read_channel(p), path=p, **self._decode) for p in paths]
    return stack_channels(planes, paths, _site_name(self.metadata, index))


def loaddata_layout(df: pd.DataFrame, csv_path: str, spec: str, columns: dict,
                    control_column: str) -> tuple[pd.DataFrame, tuple[str, ...], dict, str]:
  """The channels and metadata columns of a CellProfiler LoadData table.

  spec: `config.data.folder.loaddata_channels`, the `<Channel>` of physical channels 0, 1, ...
    as comma-separated names, matched case-insensitively to the `FileName_<Channel>` columns,
    also as `Orig<name>` (JUMP's `FileName_OrigDNA` for "DNA"); empty: every FileName_ column
    in the CSV's order, illumination functions (`FileName_Illum*`) left out.
  A standard column (config.data.folder.columns.<name>) absent from the CSV is taken from
  `Metadata_<Name>` (any case; experiment also from Metadata_Batch, perturbation also from
  Metadata_Symbol / Metadata_JCP2022); controls from `control_column` if present, else from
  `Metadata_pert_type == "negcon"` (JUMP), else none.
  Returns (df with `is_control` when derived, channel names, columns, control_column).
  """
  present = [str(c)[len(FILE_NAME):] for c in df.columns if str(c).startswith(FILE_NAME)]
  if spec.strip():
    by_lower = {p.lower(): p for p in present}
    names = []
    for name in (n.strip() for n in spec.split(",") if n.strip()):
      found = by_lower.get(name.lower()) or by_lower.get("orig" + name.lower())
      if found is None:
        raise ValueError(f"{csv_path}: config.data.folder.loaddata_channels names {name!r}, "
                         f"but the CSV's FileName_ columns are {present}; use those names")
      names.append(found)
  else:
    names = [p for p in present if not p.lower().startswith("illum")] or present
  lower = {str(c).lower(): c for c in df.columns if str(c).startswith("Metadata_")}
  columns = dict(columns)
  for name, aliases in LOADDATA_COLUMNS.items():
    if columns.get(name) in df.columns:
      continue
    found = next((a for a in aliases if "metadata_" + a in lower), None)
    if found is None:
      if name == "well":
        raise ValueError(f"{csv_path}: LoadData CSV without a well column (Metadata_Well or "
                         f"config.data.folder.columns.well={columns.get('well')!r}); add one or "
                         "set config.data.folder.columns.well")
      columns[name] = ""
      continue
    original = lower["metadata_" + found]
    # Metadata_Plate becomes `plate` (no duplicate); an alias (Metadata_Symbol) stays as well.
    df = df.rename(columns={original: name}) if found == name else df.assign(
        **{name: df[original]})
    columns[name] = name
  if control_column and control_column not in df.columns:
    kind = next((lower[k] for k in ("metadata_pert_type", "metadata_control_type")
                 if k in lower), None)
    df = df.assign(is_control=(df[kind].astype(str).str.lower() == "negcon") if kind else False)
    control_column = ""
  return df, tuple(names), columns, control_column


def loaddata_paths(df: pd.DataFrame, csv_path: str, names) -> tuple[pd.DataFrame, list]:
  """The image paths [site][channel] of `names` in a LoadData table (PathName_ relative to the
  CSV's folder), and the table without its FileName_/PathName_ columns."""
  base = os.path.dirname(os.path.abspath(csv_path))
  parts = []
  for name in names:
    if PATH_NAME + name not in df.columns:
      raise ValueError(f"{csv_path}: column {PATH_NAME + name} is missing (the CSV has "
                       f"{FILE_NAME + name}); add the folder of each image as {PATH_NAME + name}")
    for column in (FILE_NAME + name, PATH_NAME + name):
      empty = df[column].isna() | (df[column].astype(str).str.strip() == "")
      if empty.any():
        raise ValueError(f"{csv_path} row {int(np.argmax(empty.to_numpy()))}: {column} is empty; "
                         "fill it or drop the row")
    parts.append([os.path.join(base, str(d), str(f))  # An absolute PathName_ stays as it is.
                  for d, f in zip(df[PATH_NAME + name], df[FILE_NAME + name])])
  paths = [list(site) for site in zip(*parts)]
  image_columns = [c for c in df.columns if str(c).startswith((FILE_NAME, PATH_NAME, "URL_"))]
  return df.drop(columns=image_columns), paths


def _fmt_key(names, values) -> str:
  values = values if isinstance(values, tuple) else (values,)
  return ", ".join(f"{n}={v}" for n, v in zip(names, values))


def _site_name(metadata: pd.DataFrame, index: int) -> str:
  row = metadata.iloc[index]
  return "/".join(str(row[k]) for k in ("experiment", "plate", "well", "site") if k in row)


# ------------------------------------------------------------------------------ RxRx3-core

class Rxrx3CoreSource(Source):
  """RxRx3-core parquet shards: rows `__key__` = EXP/PlateP/ADDRESS_s1_C, one JP2 per row.

  Sites are the wells of `metadata_rxrx3_core.csv` whose 6 channels are in the local shards
  (a partial download is fine: the number of CSV wells without images is logged). A well with
  only some channels present is an error. Random access reads a parquet row group per site, so
  prefer ingesting once (`python -m maejax.data.ingest`) and training from ArrayRecord.
  """

  def __init__(self, root: str, *, channels, csv_path: str = "", image_column: str = "jp2",
               key_column: str = "__key__", skip_bad_images: bool = False, uint16: str = "error",
               bit_depth: int = 16, percentiles=(0.1, 99.9)):
    import pyarrow.parquet as pq  # pylint: disable=g-import-not-at-top
    csv_path = csv_path or os.path.join(root, "metadata_rxrx3_core.csv")
    if not os.path.isfile(csv_path):
      raise FileNotFoundError(f"{csv_path} not found; download metadata_rxrx3_core.csv from "
                              "recursionpharma/rxrx3-core into config.data.path")
    shards = sorted(glob.glob(os.path.join(root, "**", "*.parquet"), recursive=True))
    shards = [s for s in shards if "embeddings" not in os.path.basename(s).lower()]
    if not shards:
      raise FileNotFoundError(f"no *.parquet image shards under {root}; download the data/ "
                              "shards of recursionpharma/rxrx3-core there")
    self._channels = _check_channels(channels, 6, "RxRx3-core")
    self.channel_ids = np.asarray(self._channels, np.int32)
    self.channel_names = tuple(f"w{c + 1}" for c in self._channels)
    self._shards, self._image_column = shards, image_column
    self._decode = dict(rule=uint16, bit_depth=bit_depth, percentiles=tuple(percentiles))
    self.skip_bad_images, self.skipped = skip_bad_images, []
    index = {}
    self._row_groups = []
    for s, shard in enumerate(shards):
      f = pq.ParquetFile(shard)
      if key_column not in f.schema_arrow.names or image_column not in f.schema_arrow.names:
        raise ValueError(f"{shard}: expected columns {key_column!r} and {image_column!r}, found "
                         f"{f.schema_arrow.names}; set config.data.rxrx3_core.key_column/"
                         "image_column")
      keys = f.read(columns=[key_column]).column(0).to_pylist()
      index.update({k: (s, r) for r, k in enumerate(keys)})
      self._row_groups.append(np.cumsum([f.metadata.row_group(g).num_rows
                                         for g in range(f.num_row_groups)]))
    df = pd.read_csv(csv_path)
    _require_columns(df, {"RxRx3-core experiment": "experiment_name", "RxRx3-core plate": "plate",
                          "RxRx3-core well": "address", "RxRx3-core gene": "gene"}, csv_path)
    prefix = df.experiment_name + "/Plate" + df.plate.astype(str) + "/" + df.address + "_s1_"
    rows, locs = [], []
    for i, p in enumerate(prefix):
      found = [index.get(f"{p}{c + 1}") for c in self._channels]
      if all(x is None for x in found):
        continue
      if any(x is None for x in found):
        missing = [c + 1 for c, x in zip(self._channels, found) if x is None]
        msg = (f"{csv_path} row {i} ({p}*): channel(s) {missing} missing from the parquet "
               f"shards; download all shards {_SKIP_HINT}")
        if not skip_bad_images:
          raise ValueError(msg)
        self.skipped.append((p, "missing channels"))
        log.warning(msg)
        continue
      rows.append(i)
      locs.append(found)
    n_absent = len(df) - len(rows) - len(self.skipped)
    if n_absent:
      log.warning("RxRx3-core: %d of %d wells in %s have no images in the %d local shards; "
                  "using the %d present", n_absent, len(df), csv_path, len(shards), len(rows))
    self._locs = locs
    meta = df.iloc[rows].reset_index(drop=True)
    meta["experiment"], meta["well"], meta["site"] = meta.experiment_name, meta.address, 1
    # Compound wells name no gene: their perturbation is the compound (`treatment`), and their
    # `concentration` (kept, with SMILES and perturbation_type) marks them for the
    # compound-gene benchmark (maejax.eval.compound).
    gene = meta.gene.where(meta.gene.notna() & (meta.gene.astype(str) != ""))
    meta["perturbation"] = gene.fillna(meta["treatment"]) if "treatment" in meta else meta.gene
    meta["is_control"] = meta.gene.astype(str).str.startswith("EMPTY")
    self.metadata = meta

  @functools.lru_cache(maxsize=8)  # noqa: B019  one row group per shard is ~100 sites
  def _row_group(self, shard: int, group: int):
    import pyarrow.parquet as pq  # pylint: disable=g-import-not-at-top
    table = pq.ParquetFile(self._shards[shard]).read_row_group(group, columns=[self._image_column])
    return table.column(0).to_pylist()

  def _bytes(self, shard: int, row: int) -> bytes:
    ends = self._row_groups[shard]
    group = int(np.searchsorted(ends, row, side="right"))
    start = 0 if group == 0 else int(ends[group - 1])
    value = self._row_group(shard, group)[row - start]
    return value["bytes"] if isinstance(value, dict) else value

  def _read(self, index):
    planes, paths = [], []
    for c, (shard, row) in zip(self._channels, self._locs[index]):
      path = f"{self._shards[shard]}[row {row}, channel {c + 1}]"
      planes.append(to_uint8(read_channel(path + ".jp2", self._bytes(shard, row)), path=path,
                             **self._decode))
      paths.append(path)
    return stack_channels(planes, paths, _site_name(self.metadata, index))


# ------------------------------------------------------------------------------ ArrayRecord

def encode_site(img: np.ndarray) -> bytes:
  """uint8 [H, W, C] -> bytes (12-byte shape header + raw pixels)."""
  img = np.ascontiguousarray(img, np.uint8)
  return np.asarray(img.shape, "<u4").tobytes() + img.tobytes()


def decode_site(record: bytes) -> np.ndarray:
  """Inverse of `encode_site` (zero-copy view)."""
  h, w, c = np.frombuffer(record, "<u4", count=3)
  return np.frombuffer(record, np.uint8, offset=_HEADER).reshape(h, w, c)


class ArrayRecordSource(Source):
  """Shards written by `python -m maejax.data.ingest`: info.json, metadata.parquet, *.array_record."""

  def __init__(self, root: str, *, channels=None):
    import grain  # pylint: disable=g-import-not-at-top
    info_path = os.path.join(root, ARRAYRECORD_INFO)
    if not os.path.isfile(info_path):
      leftover = glob.glob(os.path.abspath(root) + ".ingest-tmp-*")
      half = os.path.isdir(root) and any(f.endswith(".array_record") for f in os.listdir(root))
      if leftover or half:
        what = f"leftover {leftover[0]}" if leftover else f"shards without {ARRAYRECORD_INFO}"
        raise FileNotFoundError(
            f"{root} is a half-written ingest output ({what}): the ingest was killed or "
            f"failed; rerun `python -m maejax.data.ingest ... --out {root}`")
      raise FileNotFoundError(f"{info_path} not found: config.data.path must be a directory "
                              "written by `python -m maejax.data.ingest`")
    with open(info_path) as f:
      self.info = json.load(f)
    shards = [os.path.join(root, s) for s in self.info["shards"]]
    for s in shards:
      if not os.path.isfile(s):
        raise FileNotFoundError(f"{s}: shard listed in {info_path} is missing; re-run ingest")
    self._source = grain.sources.ArrayRecordDataSource(shards)
    self.metadata = pd.read_parquet(os.path.join(root, ARRAYRECORD_METADATA))
    if len(self._source) != len(self.metadata):
      raise ValueError(f"{root}: {len(self._source)} records but {len(self.metadata)} metadata "
                       "rows; the ingest did not finish, re-run it")
    stored = list(self.info["channel_ids"])
    channels = stored if channels is None else [int(c) for c in channels]
    absent = [c for c in channels if c not in stored]
    if absent:
      raise ValueError(f"config.data.channels={tuple(channels)}: channel(s) {absent} not in "
                       f"{root} (stored physical channels {stored}); ingest them or drop them")
    self._slots = [stored.index(c) for c in channels]
    self._all = self._slots == list(range(len(stored)))
    self.channel_ids = np.asarray(channels, np.int32)
    names = self.info.get("channel_names") or [str(c) for c in stored]
    self.channel_names = tuple(names[s] for s in self._slots)
    shape = self.info.get("site_shape")
    self.site_shape = (shape[0], shape[1], len(channels)) if shape else None

  def _read(self, index):
    img = decode_site(self._source[index])
    return img if self._all else img[..., self._slots]


# ------------------------------------------------------------------------------ factory

# The RxRx1 layout; its file layout is also the default of config.data.folder.
RXRX1_FOLDER = dict(
    path_template="images/{experiment}/Plate{plate}/{well}_s{site}_w{channel}.png",
    channel_numbers=(1, 2, 3, 4, 5, 6),
    channel_names=("nuclei", "er", "actin", "rna", "mito", "golgi"),
    columns=dict(experiment="experiment", plate="plate", well="well", site="site",
                 perturbation="sirna"),
    control_column="well_type", control_values=("negative_control",),
)


def make_source(config) -> Source:
  """Builds the source named by `config.source` from a data ConfigDict (see default_config);
  with `config.cache_sites` every site is read (or rendered) once and kept in memory."""
  source = _make_source(config)
  if config.get("cache_sites"):
    source.cache = {}
  return source


def _make_source(config) -> Source:
  kind = config.source
  decode = dict(uint16=config.uint16, bit_depth=config.bit_depth,
                percentiles=tuple(config.percentiles))
  if kind == "synthetic":
    return SyntheticSource(synthetic.SyntheticScreen.from_config(config.synthetic),
                           config.channels)
  if kind != "synthetic" and not config.path:
    raise ValueError(f"config.data.source={kind!r} needs config.data.path (the dataset root)")
  if kind in ("folder", "rxrx1"):
    folder = dict(config.folder.to_dict() if hasattr(config.folder, "to_dict") else config.folder)
    if kind == "rxrx1":
      folder.update(RXRX1_FOLDER)
    csv = config.metadata_csv or "metadata.csv"
    csv = csv if os.path.isabs(csv) else os.path.join(config.path, csv)
    return FolderSource(config.path, csv, channels=config.channels,
                        skip_bad_images=config.skip_bad_images, **folder, **decode)
  if kind == "rxrx3_core":
    return Rxrx3CoreSource(config.path, channels=config.channels, csv_path=config.metadata_csv,
                           skip_bad_images=config.skip_bad_images, **decode,
                           **dict(config.rxrx3_core))
  if kind == "arrayrecord":
    return ArrayRecordSource(config.path, channels=config.channels)
  raise ValueError(f"config.data.source={kind!r}: expected one of 'synthetic', 'folder', "
                   "'rxrx1', 'rxrx3_core', 'arrayrecord'")
