"""Batch correction on control wells: center-scale, PCA, TVN (typical variation normalization).

All functions take well features `[wells, features]`, a boolean `is_control [wells]` and the
batch label of every well `batch [wells]` (the experiment), and return new features
`[wells, features']`. Statistics are fitted on control wells only, in float64, and applied to
every well in the features' precision: float32 features give float32 results (a genome-scale
table of 250k wells x 1,024 features is 1 GiB in float32), anything else float64.

`tvn` is EFAAR's `tvn_on_controls(..., batch_col=...)` (Celik et al. 2024; Kraus et al. 2024):
  1. standardize on all control wells pooled, 2. PCA with all components fitted on the
  controls, 3. standardize on the pooled controls again, 4. per batch, whiten by that batch's
  control covariance: x <- x @ (cov(controls of the batch, ddof=1) + 0.5 I)^(-1/2) (CORAL
  without re-coloring).
`tvn_per_batch` (maejax's TVN before it followed EFAAR) standardizes per batch in steps 1 and 3.
`correct_parts` corrects feature sets side by side (a model's embedding and CellProfiler-style
statistics): each on its own, then scaled to the same root-mean-square norm over wells, so that
each weighs the same in cosines whatever its width or units.
With `n_components=None` the PCA keeps every component with non-zero control variance (all
of them, as sklearn's PCA(), when there are more control wells than features).
`pooled` (bool [wells], default `is_control`) names the controls the pooled statistics (the PCA,
TVN's standardizations) are fitted on; per-batch statistics use the batch's `is_control` wells.
The benchmark fits both on the controls of the gene plates, so plates of compounds leave the
gene map as it is (maejax.eval.pipeline).
"""

from __future__ import annotations

import numpy as np

from maejax.eval import similarity

METHODS = ("none", "center_scale", "pca", "tvn", "tvn_per_batch")
PCA_METHODS = ("pca", "tvn", "tvn_per_batch")  # Return principal-component scores.
CORAL_RIDGE = 0.5


def _batches(batch, n):
  if batch is None:
    return np.zeros(n, dtype=np.int64)
  batch = np.asarray(batch)
  if batch.shape != (n,):
    raise ValueError(f"batch labels have shape {batch.shape}, expected ({n},) (one per well)")
  return batch


def _check_inputs(features, is_control):
  features = np.asarray(features, dtype=similarity.float_dtype(features))
  if features.ndim != 2:
    raise ValueError(f"features must be [wells, features], got shape {features.shape}")
  is_control = np.asarray(is_control, dtype=bool)
  if is_control.shape != (features.shape[0],):
    raise ValueError(f"is_control has shape {is_control.shape}, expected "
                     f"({features.shape[0]},) (one flag per well)")
  return features, is_control


def _check_controls(is_control, batch, needed, step):
  for b in np.unique(batch):
    count = int(np.sum(is_control & (batch == b)))
    if count < needed:
      raise ValueError(
          f"batch '{b}' has {count} control wells but {step} needs at least {needed}; add "
          "control wells to that batch, drop the batch's wells, or skip the correction "
          "(--correction none)")


def center_scale(features, is_control, batch=None, *, min_controls: int = 2):
  """Per batch: subtract the control mean, divide by the control std (ddof=0).

  Features with zero control variance are only centered (as sklearn's StandardScaler).
  Args: features [wells, features], is_control [wells], batch [wells] or None (one batch).
  Returns: [wells, features] in the features' precision (float32 or float64).
  """
  features, is_control = _check_inputs(features, is_control)
  batch = _batches(batch, features.shape[0])
  _check_controls(is_control, batch, min_controls, "center-scaling on controls")
  out = np.empty_like(features)
  for b in np.unique(batch):
    rows = batch == b
    controls = features[rows & is_control].astype(np.float64)
    mean = controls.mean(axis=0)
    std = controls.std(axis=0)
    std[std < 10 * np.finfo(np.float64).eps * np.maximum(np.abs(mean), 1.0)] = 1.0
    out[rows] = (features[rows] - mean.astype(out.dtype)) / std.astype(out.dtype)
  return out


def fit_pca(controls, n_components: int | float | None = None):
  """PCA of control rows [n, d] -> (mean [d], components [k, d], explained variance [k]).

  n_components: int = keep that many; float in (0, 1) = smallest k explaining that fraction
  of variance; None = all with non-zero variance (at most min(n - 1, d)).
  Component signs are fixed so that each component's largest-magnitude loading is positive.
  """
  controls = np.asarray(controls, dtype=np.float64)
  n, d = controls.shape
  mean = controls.mean(axis=0)
  _, singular, vt = np.linalg.svd(controls - mean, full_matrices=False)
  variance = singular**2 / max(n - 1, 1)
  rank = int(np.sum(singular > singular[0] * max(n, d) * np.finfo(np.float64).eps)) if len(
      singular) else 0
  if n_components is None:
    k = min(rank, n - 1, d)
  elif isinstance(n_components, float) and 0.0 < n_components < 1.0:
    ratio = np.cumsum(variance) / variance.sum()
    k = int(np.searchsorted(ratio, n_components, side="right") + 1)
  else:
    k = int(n_components)
    if not 1 <= k <= min(n, d):
      raise ValueError(
          f"n_components={n_components} but PCA on {n} control wells x {d} features can "
          f"give between 1 and {min(n, d)} components")
  k = max(k, 1)
  signs = np.sign(vt[np.arange(len(vt)), np.argmax(np.abs(vt), axis=1)])
  vt = vt * signs[:, None]
  return mean, vt[:k], variance[:k]


def pca_on_controls(features, is_control, batch=None, *,
                    n_components: int | float | None = None, min_controls: int = 2,
                    pooled=None):
  """Center-scale per batch, PCA fitted on the pooled controls, center-scale per batch again.

  batch None: one batch, so both center-scalings use the pooled controls too.
  pooled: bool [wells], the controls the PCA is fitted on (None: is_control).
  Returns: [wells, k] principal-component scores (float32 for float32 features, else float64).
  """
  features, is_control = _check_inputs(features, is_control)
  pooled = is_control if pooled is None else _check_inputs(features, pooled)[1]
  if batch is None:
    is_control = pooled
  batch = _batches(batch, features.shape[0])
  x = center_scale(features, is_control, batch, min_controls=min_controls)
  mean, components, _ = fit_pca(x[pooled], n_components)
  x -= mean.astype(x.dtype)
  x = x @ components.T.astype(x.dtype)
  return center_scale(x, is_control, batch, min_controls=min_controls)


def ridge_whitening(controls, ridge: float = CORAL_RIDGE):
  """(cov(controls, ddof=1) + ridge I)^(-1/2) of control rows [n, d], in low-rank form.

  The covariance has rank k <= min(n - 1, d): with the SVD of the centred controls
  (singular values s, right vectors V [d, k]) the matrix is
  ridge^(-1/2) I + V diag((s^2 / (n - 1) + ridge)^(-1/2) - ridge^(-1/2)) V^T, exactly, at
  O(n^2 d) instead of a d x d eigendecomposition (a batch has far fewer controls than 1,024
  features).
  Returns: (V [d, k], shifts [k]) float64.
  """
  controls = np.asarray(controls, dtype=np.float64)
  n = len(controls)
  _, singular, vt = np.linalg.svd(controls - controls.mean(axis=0), full_matrices=False)
  shifts = 1.0 / np.sqrt(singular**2 / (n - 1) + ridge) - 1.0 / np.sqrt(ridge)
  return vt.T, shifts


def coral_whiten(features, is_control, batch=None, *, ridge: float = CORAL_RIDGE,
                 min_controls: int = 2):
  """Per batch: x <- x @ (cov(controls of the batch, ddof=1) + ridge I)^(-1/2)."""
  features, is_control = _check_inputs(features, is_control)
  batch = _batches(batch, features.shape[0])
  _check_controls(is_control, batch, min_controls, "CORAL whitening")
  out = np.empty_like(features)
  for b in np.unique(batch):
    rows = batch == b
    vectors, shifts = ridge_whitening(features[rows & is_control], ridge)
    x, vectors, shifts = features[rows], vectors.astype(out.dtype), shifts.astype(out.dtype)
    out[rows] = x / np.sqrt(ridge) + ((x @ vectors) * shifts) @ vectors.T
  return out


def tvn(features, is_control, batch=None, *, n_components: int | float | None = None,
        min_controls: int = 2, scale_per_batch: bool = False, pooled=None):
  """EFAAR's TVN: standardize, PCA, standardize (all on pooled controls), per-batch CORAL.

  scale_per_batch: standardize on each batch's controls instead (tvn_per_batch).
  pooled: bool [wells], the controls of the pooled steps (None: is_control).
  Returns: [wells, k] (float32 for float32 features, else float64).
  """
  features, is_control = _check_inputs(features, is_control)
  batch = _batches(batch, features.shape[0])
  x = pca_on_controls(features, is_control, batch if scale_per_batch else None,
                      n_components=n_components, min_controls=min_controls, pooled=pooled)
  return coral_whiten(x, is_control, batch, min_controls=min_controls)


def tvn_per_batch(features, is_control, batch=None, **kwargs):
  """TVN with both standardizations on each batch's own controls; [wells, k]."""
  return tvn(features, is_control, batch, scale_per_batch=True, **kwargs)


def correct(features, is_control, batch=None, *, method: str = "tvn",
            n_components: int | float | None = None, min_controls: int = 2, pooled=None):
  """Applies one of METHODS; returns [wells, features'] (float32 for float32 features, else
  float64). pooled: bool [wells], the controls of the pooled steps (None: is_control)."""
  if method == "none":
    return np.asarray(features, dtype=similarity.float_dtype(features))
  if method == "center_scale":
    return center_scale(features, is_control, batch, min_controls=min_controls)
  pca = {"pca": pca_on_controls, "tvn": tvn, "tvn_per_batch": tvn_per_batch}.get(method)
  if pca is None:
    raise ValueError(f"unknown correction {method!r}; choose one of {METHODS}")
  return pca(features, is_control, batch, n_components=n_components, min_controls=min_controls,
             pooled=pooled)


def correct_parts(features, parts, is_control, batch=None, **kwargs):
  """`correct` applied to each part of the features on its own, each result scaled to unit
  root-mean-square norm over all wells, joined: every part weighs the same in the cosines of
  the joined features (plain concatenation lets the widest part dominate them).

  features [wells, d]; parts: column indices of each part (together: each column once).
  Returns [wells, d'] (the parts' corrected features in order) and the width of each part.
  """
  features = np.asarray(features)
  columns = np.concatenate([np.asarray(p, dtype=np.int64) for p in parts])
  if len(parts) < 2 or sorted(columns.tolist()) != list(range(features.shape[1])):
    raise ValueError(f"parts must split the {features.shape[1]} features into 2 or more sets, "
                     f"each column once; got {len(parts)} parts of {len(columns)} columns")
  out = []
  for part in parts:
    x = correct(features[:, part], is_control, batch, **kwargs)
    rms = float(np.sqrt(np.mean(np.sum(np.square(x, dtype=np.float64), axis=1))))
    out.append(x / x.dtype.type(rms) if rms > 0 else x)
  return np.concatenate(out, axis=1), [x.shape[1] for x in out]
