"""Batch correction against independent scikit-learn / SciPy computations."""

import numpy as np
import pandas as pd
import pytest
from scipy import linalg
from sklearn.decomposition import PCA
from sklearn.preprocessing import StandardScaler

from maejax.eval import correct


def _screen(seed=0, wells_per_batch=(40, 50, 45), d=6, controls=12):
  """Wells with batch-specific shifts and scales; the first `controls` of a batch are controls."""
  rng = np.random.default_rng(seed)
  x, batch, is_control = [], [], []
  mixing = rng.normal(size=(d, d))
  for b, n in enumerate(wells_per_batch):
    x.append(rng.normal(size=(n, d)) @ mixing * rng.uniform(0.5, 3, d) + rng.normal(0, 5, d))
    batch += [f"exp{b}"] * n
    is_control += [True] * controls + [False] * (n - controls)
  return np.concatenate(x), np.array(batch), np.array(is_control)


def _scale_per_batch(x, batch, is_control):
  out = np.empty_like(x)
  for b in np.unique(batch):
    rows = batch == b
    out[rows] = StandardScaler().fit(x[rows & is_control]).transform(x[rows])
  return out


def _align_signs(actual, expected):
  """PCA components are defined up to sign; flip actual's columns to match expected."""
  signs = np.sign(np.sum(actual * expected, axis=0))
  return actual * signs


def test_center_scale_matches_standard_scaler_fitted_on_controls_per_batch():
  x, batch, is_control = _screen()
  out = correct.center_scale(x, is_control, batch)
  np.testing.assert_allclose(out, _scale_per_batch(x, batch, is_control), atol=1e-10)
  for b in np.unique(batch):
    controls = out[(batch == b) & is_control]
    np.testing.assert_allclose(controls.mean(0), 0, atol=1e-10)
    np.testing.assert_allclose(controls.std(0), 1, atol=1e-10)


def test_center_scale_without_batch_is_one_batch():
  x, _, is_control = _screen()
  expected = StandardScaler().fit(x[is_control]).transform(x)
  np.testing.assert_allclose(correct.center_scale(x, is_control), expected, atol=1e-10)


def test_constant_feature_is_only_centered():
  x, batch, is_control = _screen()
  x[:, 2] = 7.0
  out = correct.center_scale(x, is_control, batch)
  np.testing.assert_allclose(out[:, 2], 0.0, atol=1e-12)
  assert np.all(np.isfinite(out))


@pytest.mark.parametrize("n_components", [None, 4, 0.8])
def test_pca_on_controls_matches_sklearn(n_components):
  x, batch, is_control = _screen(seed=1)
  scaled = _scale_per_batch(x, batch, is_control)
  pca = PCA(n_components=n_components).fit(scaled[is_control])
  expected = _scale_per_batch(pca.transform(scaled), batch, is_control)
  out = correct.pca_on_controls(x, is_control, batch, n_components=n_components)
  assert out.shape == expected.shape
  np.testing.assert_allclose(_align_signs(out, expected), expected, atol=1e-8)


def _efaar_tvn(x, batch, is_control):
  """EFAAR's tvn_on_controls with a batch column, step by step in sklearn / SciPy."""
  x = StandardScaler().fit(x[is_control]).transform(x)
  x = PCA().fit(x[is_control]).transform(x)
  x = StandardScaler().fit(x[is_control]).transform(x)
  for b in np.unique(batch):
    rows = batch == b
    cov = np.cov(x[rows & is_control], rowvar=False, ddof=1) + 0.5 * np.eye(x.shape[1])
    x[rows] = x[rows] @ linalg.fractional_matrix_power(cov, -0.5)
  return x


def _gene_cosines(x, batch, is_control):
  """Gene-gene cosine similarities of the map: treated wells averaged per gene, as the
  benchmark does. Genes cycle over each batch's treated wells, so each gene spans batches."""
  genes = np.array([f"G{i % 9}" for i in range(int((~is_control).sum()))])
  means = pd.DataFrame(x[~is_control]).groupby(genes).mean().to_numpy()
  unit = means / np.linalg.norm(means, axis=1, keepdims=True)
  return unit @ unit.T


def test_tvn_equals_efaar_tvn_on_controls_on_gene_cosines():
  x, batch, is_control = _screen(seed=2)
  expected = _gene_cosines(_efaar_tvn(x, batch, is_control), batch, is_control)
  got = _gene_cosines(correct.tvn(x, is_control, batch), batch, is_control)
  np.testing.assert_allclose(got, expected, atol=1e-6)
  assert np.abs(expected - np.eye(len(expected))).max() > 0.1  # Not a trivial map.
  # Standardizing per batch instead gives another map on batches of different scales.
  per_batch = _gene_cosines(correct.tvn_per_batch(x, is_control, batch), batch, is_control)
  assert np.abs(per_batch - expected).max() > 0.05


def test_tvn_per_batch_matches_independent_computation():
  x, batch, is_control = _screen(seed=2)
  # standardize on controls, PCA on controls, standardize again (all per batch) ...
  scaled = _scale_per_batch(x, batch, is_control)
  pca = PCA().fit(scaled[is_control])
  expected = _scale_per_batch(pca.transform(scaled), batch, is_control)
  # ... then per batch CORAL whitening by (control covariance + 0.5 I)^(-1/2).
  for b in np.unique(batch):
    rows = batch == b
    cov = np.cov(expected[rows & is_control].T) + 0.5 * np.eye(x.shape[1])
    expected[rows] = expected[rows] @ np.real(linalg.inv(linalg.sqrtm(cov)))
  out = correct.correct(x, is_control, batch, method="tvn_per_batch")
  np.testing.assert_allclose(_align_signs(out, expected), expected, atol=1e-8)


def test_tvn_makes_control_covariance_equal_across_batches():
  """After whitening, every batch's control covariance is C (C + 0.5 I)^-1 of its own C; with
  identical pre-whitening C that is equal everywhere. Checks the map is a batch-wise whitening."""
  x, batch, is_control = _screen(seed=3)
  out = correct.tvn(x, is_control, batch)
  for b in np.unique(batch):
    controls = out[(batch == b) & is_control]
    eigenvalues = np.linalg.eigvalsh(np.cov(controls.T))
    # eigenvalues of C (C + 0.5 I)^-1 lie in [0, 1)
    assert eigenvalues.max() < 1.0


def test_too_few_controls_names_the_batch():
  x, batch, is_control = _screen()
  is_control = is_control.copy()
  rows = np.flatnonzero((batch == "exp1") & is_control)
  is_control[rows[1:]] = False
  with pytest.raises(ValueError, match=r"batch 'exp1' has 1 control wells but .* at least 2"):
    correct.tvn(x, is_control, batch)
  with pytest.raises(ValueError, match=r"batch 'exp1' has 1 control"):
    correct.center_scale(x, is_control, batch)


def test_min_controls_is_configurable():
  x, batch, is_control = _screen(controls=12)
  with pytest.raises(ValueError, match="has 12 control wells but .* at least 20"):
    correct.correct(x, is_control, batch, method="pca", min_controls=20)


def test_unknown_method_and_bad_shapes():
  x, batch, is_control = _screen()
  with pytest.raises(ValueError, match="unknown correction 'combat'"):
    correct.correct(x, is_control, batch, method="combat")
  with pytest.raises(ValueError, match="is_control has shape"):
    correct.center_scale(x, is_control[:-1], batch)
  with pytest.raises(ValueError, match="n_components=50"):
    correct.pca_on_controls(x, is_control, batch, n_components=50)


@pytest.mark.parametrize("method", ["pca", "tvn", "tvn_per_batch"])
def test_wells_outside_the_pooled_controls_leave_the_others_as_they_are(method):
  """Plates of compounds (maejax.eval.pipeline): a batch of its own whose controls fit no pooled
  statistic changes nothing for the other wells."""
  x, batch, is_control = _screen(seed=4)
  extra, _, extra_control = _screen(seed=5, wells_per_batch=(30,), controls=10)
  extra = extra * 3 + 7  # Other plates, other statistics: they would move the pooled fit.
  out = correct.correct(np.r_[x, extra], np.r_[is_control, extra_control],
                        np.r_[batch, ["compounds"] * len(extra)], method=method,
                        pooled=np.r_[is_control, np.zeros(len(extra), bool)])
  alone = correct.correct(x, is_control, batch, method=method)
  np.testing.assert_allclose(out[:len(x)], alone, rtol=1e-10, atol=1e-10)
  assert np.isfinite(out[len(x):]).all()


def test_correct_parts_gives_each_part_the_same_norm_whatever_its_width_and_units():
  x, batch, is_control = _screen()
  wide = np.random.default_rng(1).normal(size=(len(x), 30)) * 1000 + 5  # Other units.
  features = np.concatenate([wide[:, :10], x, wide[:, 10:]], axis=1)
  parts = [np.arange(10, 16), np.r_[0:10, 16:36]]
  joined, widths = correct.correct_parts(features, parts, is_control, batch, method="tvn")
  assert widths == [6, 30] and joined.shape == (len(x), 36)
  for part in (joined[:, :6], joined[:, 6:]):
    assert np.mean(np.sum(part ** 2, axis=1)) == pytest.approx(1.0)
  # Each part is corrected as if alone: its own TVN, scaled.
  own = correct.tvn(x, is_control, batch)
  scale = np.sqrt(np.mean(np.sum(own ** 2, axis=1)))
  np.testing.assert_allclose(joined[:, :6] * scale, own, rtol=1e-6, atol=1e-9)


def test_correct_parts_needs_each_column_in_one_part():
  x, batch, is_control = _screen()
  with pytest.raises(ValueError, match="each column once"):
    correct.correct_parts(x, [[0, 1], [1, 2, 3, 4, 5]], is_control, batch)
  with pytest.raises(ValueError, match="2 or more"):
    correct.correct_parts(x, [np.arange(6)], is_control, batch)
