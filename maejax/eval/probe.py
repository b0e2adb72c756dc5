"""CellProfiler feature probe: how much of each classical feature is linear in an embedding.

For a set of crops, classical CellProfiler measurements are computed with `cp_measure`
(CellProfiler's per-object features in Python) on nuclei and cell masks, averaged over the
objects of each crop, and a cross-validated ridge regression predicts every feature from the
crop embeddings; the median R^2 per feature category is the figure of Kraus et al. 2024
(MAEs beat weakly supervised models in every category).

Segmentation (`segment`), simple and documented rather than tuned:
- nuclei: Gaussian blur (sigma 1) of the nuclei channel, one Otsu threshold per channel over
  the whole crop set (CellProfiler thresholds a whole image, not a crop; a per-crop threshold
  would split background noise of empty crops), holes filled, objects below `min_area`
  pixels dropped, touching nuclei split by a watershed on the distance transform seeded at its
  local maxima (`min_distance` pixels apart).
- cells: the foreground of the blurred cell channel (its own set-wide Otsu threshold) plus
  the nuclei, split by a watershed on the inverted cell intensity seeded by the nuclei; every
  cell has exactly one nucleus and keeps its label.
- at most `max_objects` objects per crop (the largest nuclei) are measured; objects touching
  the crop border are kept (small crops have few others).
scikit-image does the thresholding and watershed (cp_measure depends on it).

Feature categories follow the cp_measure function that produced a feature (`CATEGORY_OF`):
intensity, texture (Haralick), granularity, radial_distribution (incl. radial Zernikes),
shape (size/shape, Zernike, Feret), correlation (Pearson, Manders, RWC, Costes). Object
positions (`Location_*`, `Center_*`, bounding-box corners) say where a cell sits in the crop,
not what it looks like: category `location`, not reported.
"""

from __future__ import annotations

import os
import warnings
from typing import Callable, Mapping, Sequence

import numpy as np
import pandas as pd
import ml_collections
import tifffile
import tqdm
from cp_measure import bulk
from scipy import ndimage
from skimage import feature, filters, segmentation
from sklearn import linear_model, metrics, model_selection, pipeline, preprocessing

from maejax import api
from maejax import data as data_lib
from maejax import workdir
from maejax.eval import embed as embed_lib
from maejax.eval import io
from maejax.eval import plots

try:  # Optional (the `test` extra): the real confocal stack of `--data partseg`.
  import PartSegData  # pylint: disable=invalid-name
except ImportError:
  PartSegData = None

CATEGORIES = ("intensity", "texture", "granularity", "radial_distribution", "shape",
              "correlation")
LOCATION = "location"
# cp_measure.bulk function name -> category.
CATEGORY_OF = {
    "intensity": "intensity", "texture": "texture", "granularity": "granularity",
    "radial_distribution": "radial_distribution", "radial_zernikes": "radial_distribution",
    "sizeshape": "shape", "zernike": "shape", "feret": "shape",
    "pearson": "correlation", "manders_fold": "correlation", "rwc": "correlation",
    "costes": "correlation",
}
_LOCATION_PREFIXES = ("Location_", "Center_", "BoundingBoxMinimum_", "BoundingBoxMaximum_")
# Defaults that keep a 64x64 crop with 6 channels and 2 object types near 0.3 s on one core:
# 32 grey levels instead of 256 make Haralick texture ~500x faster, 8 granularity scales
# instead of 16 (a 64-pixel crop has no larger granules); Costes (a threshold search, ~50 ms
# per channel pair) and radial Zernikes (60 features per channel) are off unless asked for.
DEFAULT_PARAMS = {"texture": {"gray_levels": 32}, "granularity": {"granular_spectrum_length": 8},
                  "costes": {"scale_max": 255}}
DEFAULT_FUNCTIONS = tuple(k for k in CATEGORY_OF if k not in ("costes", "radial_zernikes"))
ALPHAS = tuple(np.logspace(-2, 6, 17))


def category(function: str, key: str) -> str:
  """Category of feature `key` returned by cp_measure function `function`."""
  if key.startswith(_LOCATION_PREFIXES):
    return LOCATION
  if function not in CATEGORY_OF:
    raise ValueError(f"unknown cp_measure function {function!r}; known: {sorted(CATEGORY_OF)}")
  return CATEGORY_OF[function]


# ------------------------------------------------------------------------------ segmentation

def otsu_thresholds(crops: np.ndarray, channels: Sequence[int], *, sigma: float = 1.0,
                    max_pixels: int = 2_000_000, seed: int = 0) -> dict[int, float]:
  """One Otsu threshold per channel over a crop set. crops uint8 [n, h, w, c]."""
  rng = np.random.default_rng(seed)
  out = {}
  for c in set(channels):
    blurred = np.stack([filters.gaussian(crop[..., c].astype(np.float32), sigma,
                                         preserve_range=True) for crop in crops]).ravel()
    if blurred.size > max_pixels:
      blurred = rng.choice(blurred, max_pixels, replace=False)
    out[c] = float(filters.threshold_otsu(blurred)) if np.ptp(blurred) > 0 else np.inf
  return out


def segment(crop: np.ndarray, nuclei_channel: int, cell_channel: int,
            thresholds: Mapping[int, float], *, sigma: float = 1.0, min_area: int = 16,
            min_distance: int = 5, max_objects: int = 8) -> tuple[np.ndarray, np.ndarray]:
  """Nuclei and cell labels of one crop (see module docstring).

  Args: crop uint8 [h, w, c]; thresholds from `otsu_thresholds`.
  Returns: (nuclei, cells) int32 [h, w], labels 1..n (0 = background), the same label for a
    cell and its nucleus, n <= max_objects.
  """
  nuc = filters.gaussian(crop[..., nuclei_channel].astype(np.float32), sigma, preserve_range=True)
  fg = ndimage.binary_fill_holes(nuc > thresholds[nuclei_channel])
  components = ndimage.label(fg)[0]
  fg = (np.bincount(components.ravel()) >= min_area)[components] & fg
  empty = np.zeros(crop.shape[:2], np.int32)
  if not fg.any():
    return empty, empty
  distance = ndimage.distance_transform_edt(fg)
  peaks = feature.peak_local_max(distance, min_distance=min_distance,
                                 labels=ndimage.label(fg)[0], exclude_border=False)
  markers = np.zeros_like(empty)
  markers[tuple(peaks.T)] = np.arange(1, len(peaks) + 1)
  nuclei = segmentation.watershed(-distance, markers, mask=fg)
  areas = np.bincount(nuclei.ravel())[1:]
  keep = np.argsort(-areas, kind="stable")[:max_objects] + 1
  keep = keep[areas[keep - 1] >= min_area]
  relabel = np.zeros(areas.size + 1, np.int32)
  relabel[keep] = np.arange(1, keep.size + 1)
  nuclei = relabel[nuclei]
  if not keep.size:
    return empty, empty
  cell = filters.gaussian(crop[..., cell_channel].astype(np.float32), sigma, preserve_range=True)
  cells = segmentation.watershed(-cell, nuclei,
                                 mask=(cell > thresholds[cell_channel]) | (nuclei > 0))
  return nuclei.astype(np.int32), cells.astype(np.int32)


# ------------------------------------------------------------------------------ measurement

def _measurement_functions(functions: Sequence[str]) -> dict[str, tuple[Callable, bool]]:
  """name -> (cp_measure function, is a channel-pair correlation)."""
  core, corr = bulk.get_core_measurements(), bulk.get_correlation_measurements()
  unknown = sorted(set(functions) - set(core) - set(corr))
  if unknown:
    raise ValueError(f"unknown cp_measure measurement(s) {unknown}; available: "
                     f"{sorted(core) + sorted(corr)}")
  return {f: (core[f], False) if f in core else (corr[f], True) for f in functions}


def measure_crop(crop: np.ndarray, masks: Mapping[str, np.ndarray], channel_names: Sequence[str],
                 *, functions: Sequence[str] = DEFAULT_FUNCTIONS,
                 params: Mapping[str, dict] | None = None) -> tuple[dict, dict]:
  """CellProfiler features of one crop, averaged over its objects.

  Args: crop uint8 [h, w, c]; masks {object name: int labels [h, w]} (empty masks give no
    features); channel_names: c names.
  Returns: ({column: mean over objects}, {column: category}); columns are
    `<object>_<feature>` (shape), `<object>_<feature>__<channel>` (per channel) and
    `<object>_<feature>__<channel1>__<channel2>` (correlation).
  """
  params = {**DEFAULT_PARAMS, **(params or {})}
  funcs = _measurement_functions(functions)
  pixels = crop.astype(np.float64) / 255.0  # CellProfiler's intensity scale [0, 1]
  values, categories = {}, {}

  def add(name, function, key, per_object):
    column = f"{name}_{key}"
    with warnings.catch_warnings():
      warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN objects: NaN, handled later
      values[column] = float(np.nanmean(per_object)) if np.isfinite(per_object).any() else np.nan
    categories[column] = category(function, key.split("__")[0])

  for name, labels in masks.items():
    if not labels.any():
      continue
    for function, (fn, pairwise) in funcs.items():
      kwargs = {k: v for k, v in params.get(function, {}).items()}
      with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # cp_measure warns per undefined object (flat pixels)
        if function in ("sizeshape", "zernike", "feret"):
          for key, v in fn(labels, None, **kwargs).items():
            add(name, function, key, np.asarray(v, np.float64))
        elif not pairwise:
          for c, channel in enumerate(channel_names):
            for key, v in fn(labels, pixels[..., c], **kwargs).items():
              add(name, function, f"{key}__{channel}", np.asarray(v, np.float64))
        else:
          pixels_in = crop if function == "costes" else pixels  # Costes scales integers itself
          for i in range(len(channel_names)):
            for j in range(i + 1, len(channel_names)):
              out = fn(pixels_in[..., i], pixels_in[..., j], labels, **kwargs)
              for key, v in out.items():
                add(name, function, f"{key}__{channel_names[i]}__{channel_names[j]}",
                    np.asarray(v, np.float64))
  return values, categories


def measure(crops: np.ndarray, channel_names: Sequence[str], *, nuclei_channel: int,
            cell_channel: int, max_objects: int = 8, functions: Sequence[str] = DEFAULT_FUNCTIONS,
            params: Mapping[str, dict] | None = None, progress: bool = False,
            **segment_kwargs) -> tuple[pd.DataFrame, dict[str, str]]:
  """Segments and measures every crop (progress: a tqdm bar of crops).

  Args: crops uint8 [n, h, w, c].
  Returns: (features [n rows, features] with `Metadata_n_nuclei`; NaN where a crop has no
    object or a feature is undefined), {feature column: category}.
  """
  crops = np.asarray(crops)
  if crops.ndim != 4 or crops.dtype != np.uint8:
    raise ValueError(f"crops must be uint8 [n, height, width, channels], got {crops.dtype} "
                     f"{crops.shape}")
  if len(channel_names) != crops.shape[-1]:
    raise ValueError(f"{len(channel_names)} channel names for {crops.shape[-1]} channels")
  for what, c in (("nuclei", nuclei_channel), ("cell", cell_channel)):
    if not 0 <= c < crops.shape[-1]:
      raise ValueError(f"{what} channel {c} out of range for {crops.shape[-1]} channels; "
                       f"pass --{what}-channel between 0 and {crops.shape[-1] - 1}")
  thresholds = otsu_thresholds(crops, (nuclei_channel, cell_channel))
  rows, categories, counts = [], {}, []
  for crop in tqdm.tqdm(crops, unit="crop", desc="measure", dynamic_ncols=True,
                        disable=not progress):
    nuclei, cells = segment(crop, nuclei_channel, cell_channel, thresholds,
                            max_objects=max_objects, **segment_kwargs)
    counts.append(int(nuclei.max()))
    values, cats = measure_crop(crop, {"nuclei": nuclei, "cells": cells}, channel_names,
                                functions=functions, params=params)
    rows.append(values)
    categories.update(cats)
  table = pd.DataFrame(rows, columns=list(categories)).astype(np.float64)
  table.insert(0, "Metadata_n_nuclei", counts)
  return table, categories


# ------------------------------------------------------------------------------ probe

def clean_features(table: pd.DataFrame, *, max_nan_fraction: float = 0.05
                   ) -> tuple[np.ndarray, np.ndarray, list[str]]:
  """Rows with nuclei, feature columns defined in most of them, NaN -> column median.

  Returns: (row mask bool [n], features float64 [kept rows, kept features], kept names).
  Constant columns are dropped: their R^2 is undefined.
  """
  names = [c for c in table.columns if not str(c).startswith("Metadata_")]
  rows = table["Metadata_n_nuclei"].to_numpy() > 0 if "Metadata_n_nuclei" in table else \
      np.ones(len(table), bool)
  x = table.loc[rows, names].to_numpy(np.float64)
  x[~np.isfinite(x)] = np.nan
  if x.shape[0] == 0:
    raise ValueError("no crop has a segmented nucleus: check --nuclei-channel (the DNA stain)")
  with warnings.catch_warnings():
    warnings.simplefilter("ignore", RuntimeWarning)
    keep = np.isnan(x).mean(0) <= max_nan_fraction
    x = x[:, keep]
    x = np.where(np.isnan(x), np.nanmedian(x, axis=0), x)
    keep_var = x.std(0) > 1e-12 * (1 + np.abs(x).max(0))
  return rows, x[:, keep_var], [n for n, k in zip(np.asarray(names)[keep], keep_var) if k]


def probe_r2(embeddings: np.ndarray, targets: np.ndarray, *, groups=None, folds: int = 5,
             alphas: Sequence[float] = ALPHAS, seed: int = 0) -> np.ndarray:
  """Cross-validated R^2 of a ridge regression from embeddings to each target.

  Standardize embeddings -> RidgeCV (alpha per target, chosen by efficient leave-one-out
  inside each training fold); predictions come from `cross_val_predict` over `folds` folds
  (GroupKFold when `groups` is given, so correlated crops, e.g. from one site, stay together).
  Args: embeddings [n, d]; targets [n, t]. Returns: R^2 float64 [t] (<= 1; < 0 is worse than
  predicting the mean).
  """
  x = np.asarray(embeddings, np.float64)
  y = np.asarray(targets, np.float64)
  if x.shape[0] != y.shape[0]:
    raise ValueError(f"{x.shape[0]} embeddings for {y.shape[0]} feature rows")
  if not np.isfinite(x).all():
    raise ValueError("embeddings contain NaN/inf")
  scale = y.std(0)
  y = (y - y.mean(0)) / np.where(scale > 0, scale, 1)  # R^2 is invariant; helps the solver
  model = pipeline.make_pipeline(
      preprocessing.StandardScaler(),
      linear_model.RidgeCV(alphas=alphas, alpha_per_target=True))
  if groups is not None:
    n_groups = len(np.unique(groups))
    if n_groups < 2:
      raise ValueError("the probe's cross-validation needs crops from at least 2 groups")
    cv = model_selection.GroupKFold(min(folds, n_groups))
  else:
    cv = model_selection.KFold(min(folds, x.shape[0]), shuffle=True, random_state=seed)
  pred = model_selection.cross_val_predict(model, x, y, cv=cv, groups=groups)
  return metrics.r2_score(y, pred.reshape(y.shape), multioutput="raw_values")


def run_probe(features: pd.DataFrame, categories: Mapping[str, str],
              embeddings: Mapping[str, np.ndarray], *, groups=None, folds: int = 5,
              seed: int = 0) -> tuple[pd.DataFrame, pd.DataFrame]:
  """Probes every model's embeddings for every feature.

  Args: features/categories from `measure`; embeddings {model name: [n crops, d]}; groups
    [n crops] for grouped cross-validation (or None).
  Returns: (per_feature: model, feature, category, r2; summary: model, category,
    median_r2, n_features), location features left out.
  """
  rows, x, names = clean_features(features)
  reported = np.array([categories[n] != LOCATION for n in names], bool)
  x, names = x[:, reported], [n for n, r in zip(names, reported) if r]
  group_rows = None if groups is None else np.asarray(groups)[rows]
  per_feature = []
  for model, emb in embeddings.items():
    emb = np.asarray(emb)
    if emb.shape[0] != len(features):
      raise ValueError(f"model {model}: {emb.shape[0]} embeddings for {len(features)} crops")
    r2 = probe_r2(emb[rows], x, groups=group_rows, folds=folds, seed=seed)
    per_feature.append(pd.DataFrame({"model": model, "feature": names,
                                     "category": [categories[n] for n in names], "r2": r2}))
  per_feature = pd.concat(per_feature, ignore_index=True)
  summary = (per_feature.groupby(["model", "category"], sort=False)
             .r2.agg(median_r2="median", n_features="size").reset_index())
  order = {c: i for i, c in enumerate(CATEGORIES)}
  summary = summary.sort_values(["model", "category"], key=lambda s: s.map(order)
                                if s.name == "category" else s, kind="stable")
  return per_feature, summary.reset_index(drop=True)


def plot_probe(summary: pd.DataFrame, path, title: str = ""):
  """Grouped bars: median R^2 per category (x), one bar per model."""
  plt = plots.plt
  cats = [c for c in CATEGORIES if c in set(summary.category)]
  models = list(dict.fromkeys(summary.model))
  width = 0.8 / max(len(models), 1)
  fig, ax = plt.subplots(figsize=(1.2 + 1.3 * len(cats), 4))
  for i, model in enumerate(models):
    rows = summary[summary.model == model].set_index("category").reindex(cats)
    ax.bar(np.arange(len(cats)) + (i - (len(models) - 1) / 2) * width, rows.median_r2,
           width, label=model)
  ax.axhline(0, color="k", lw=0.8)
  ax.set_xticks(range(len(cats)), [c.replace("_", "\n") for c in cats])
  ax.set_ylabel("median cross-validated R$^2$")
  ax.set_ylim(min(0, float(np.nanmin(summary.median_r2)) - 0.05), 1)
  ax.grid(axis="y", alpha=0.3)
  ax.legend(fontsize=8)
  ax.set_title(title or "CellProfiler features linearly decodable from embeddings")
  return plots.save_figure(fig, path)


# ------------------------------------------------------------------------------ crop sets

def partseg_stack() -> np.ndarray:
  """PartSegData's 4-channel confocal stack as float32 [4, 1024, 1024] (channel 3 = DNA)."""
  if PartSegData is None:
    raise ImportError("--data partseg needs the package partsegdata (pip install "
                      "partsegdata), which ships a 4-channel confocal stack")
  return tifffile.imread(os.path.join(PartSegData.images_dir, "stack.tif"))


PARTSEG_CHANNELS = ("cytoplasm", "spots1", "spots2", "dna")


def partseg_crops(crop_size: int = 64, *, stride: int = 32, downsample: int = 2,
                  block: int = 128) -> tuple[np.ndarray, pd.DataFrame]:
  """Real fluorescence crops from PartSegData's stack.

  The stack is mean-pooled by `downsample` (nuclei ~50 px across at 2), scaled to uint8 per
  channel between its 0.1 and 99.9 percentiles (`maejax.data.to_uint8(rule='percentile')`),
  and cut into `crop_size` crops every `stride` pixels.
  Returns: crops uint8 [n, crop, crop, 4]; metadata with `tile_y`, `tile_x` and `group`
  (the `block`-pixel block holding the crop's centre, for grouped cross-validation since
  overlapping crops share pixels).
  """
  stack = partseg_stack().astype(np.float64)
  c, h, w = stack.shape
  h, w = h // downsample, w // downsample
  pooled = stack[:, :h * downsample, :w * downsample].reshape(
      c, h, downsample, w, downsample).mean((2, 4))
  # to_uint8 takes integer camera data: keep 16 bits of the dynamic range first.
  image = np.stack([data_lib.to_uint8(np.round(p / p.max() * 65535).astype(np.uint16),
                                      rule="percentile") for p in pooled], axis=-1)
  corners = [(y, x) for y in range(0, h - crop_size + 1, stride)
             for x in range(0, w - crop_size + 1, stride)]
  crops = np.stack([image[y:y + crop_size, x:x + crop_size] for y, x in corners])
  meta = pd.DataFrame(corners, columns=["tile_y", "tile_x"])
  centre = (meta[["tile_y", "tile_x"]].to_numpy() + crop_size // 2) // block
  meta["group"] = centre[:, 0] * (w // block + 1) + centre[:, 1]
  return crops, meta


def source_crops(source, crop_size: int = 64, *, max_crops: int = 256, seed: int = 0
                 ) -> tuple[np.ndarray, pd.DataFrame]:
  """Up to `max_crops` tiles (`maejax.data.eval_tiles`) from sites spread over a source.

  Sites are drawn at random (seeded), all their tiles kept until `max_crops`; metadata has
  the sites' rows plus `group` = site index (tiles of one site stay in one fold).
  """
  shape = getattr(source, "site_shape", None)
  per_site = (shape[0] // crop_size) * (shape[1] // crop_size) if shape else 1
  if shape and per_site == 0:
    raise ValueError(f"sites of {shape[:2]} pixels are smaller than --crop-size {crop_size}")
  n_sites = min(len(source), max(2, -(-max_crops // max(per_site, 1))))
  sites = np.sort(np.random.default_rng(seed).choice(len(source), n_sites, replace=False))
  images, rows = [], []
  for batch, meta in data_lib.eval_tiles(source, crop_size, 64, indices=sites):
    images.append(batch["image"])
    rows.append(meta)
  crops, meta = np.concatenate(images)[:max_crops], pd.concat(rows, ignore_index=True)
  meta = meta.iloc[:max_crops].reset_index(drop=True)
  meta["group"] = meta["site_index"]
  return crops, meta


def sample_crops(crops: np.ndarray, meta: pd.DataFrame, max_crops: int, seed: int = 0
                 ) -> tuple[np.ndarray, pd.DataFrame]:
  """At most `max_crops` of crops [n, h, w, c] and their metadata rows, drawn at random
  (seeded), in their original order."""
  if len(crops) <= max_crops:
    return crops, meta
  keep = np.sort(np.random.default_rng(seed).choice(len(crops), max_crops, replace=False))
  return crops[keep], meta.iloc[keep].reset_index(drop=True)


# ------------------------------------------------------------------------------ models, files

def load_models(checkpoints: Sequence[str], random_configs: Mapping[str, object],
                seed: int = 0) -> dict[str, api.Model]:
  """{label: Model}: each checkpoint (maejax.load; labelled by its folder name) and each
  {name: model ConfigDict} with random initial weights (labelled "<name> (random)")."""
  out = {}
  for path in checkpoints:
    label = workdir.path(path).name
    out[label if label not in out else str(path)] = api.load(path)
  for name, model_config in random_configs.items():
    run_config = ml_collections.ConfigDict({"model": model_config})
    out[f"{name} (random)"] = embed_lib.random_model(run_config, seed)
  if not out:
    raise ValueError("nothing to probe: pass --checkpoint DIR and/or --model NAME")
  return out


def write_outputs(out_dir, per_feature: pd.DataFrame, summary: pd.DataFrame,
                  features: pd.DataFrame, meta: pd.DataFrame, *, title: str) -> list[str]:
  """probe_summary.csv, probe_features.csv, cellprofiler_features.parquet (the measurements
  with the crops' Metadata_group, tile and site columns) and probe.png in `out_dir`."""
  out = workdir.path(out_dir)
  kept = [k for k in meta.columns
          if k in ("group", "tile_y", "tile_x", "site_index", "perturbation")]
  measured = features.assign(**{f"Metadata_{k}": meta[k].to_numpy() for k in kept})
  files = [io.write_embeddings(summary, out / "probe_summary.csv"),
           io.write_embeddings(per_feature, out / "probe_features.csv"),
           io.write_embeddings(measured, out / "cellprofiler_features.parquet"),
           plot_probe(summary, out / "probe.png", title=title)]
  return [str(f) for f in files]
