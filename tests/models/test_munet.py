"""Masked U-Net: shapes for any channel count, exact masking, loss against NumPy, sizes."""

import jax
import numpy as np
import pytest
from flax import nnx

from maejax import models


def images(b, h, c, seed=0):
  return np.random.default_rng(seed).integers(0, 256, (b, h, h, c), dtype=np.uint8)


def np_standardize(x):
  x = x.astype(np.float64) / 255.0
  mean = x.mean(axis=(1, 2), keepdims=True)
  return (x - mean) / np.sqrt(x.var(axis=(1, 2), keepdims=True) + 1e-5)


def num_params(name, part=None, **kw):
  model = nnx.eval_shape(lambda: models.create(name, rngs=nnx.Rngs(0), **kw))
  model = getattr(model, part) if part else model
  return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(nnx.state(model, nnx.Param)))


@pytest.mark.parametrize("channels", [1, 3, 5])
def test_output_shape_equals_input_shape(channels):
  model = models.create("munet_tiny", channels=channels)
  x = images(2, 32, channels)
  out = nnx.jit(lambda m, x: m.reconstruct(x, jax.random.key(0)))(model, x)
  assert out["pred"].shape == out["target"].shape == out["mask"].shape == (2, 32, 32, channels)
  assert model.embed(x).shape == (2, 32)  # widths[-1] of munet_tiny.
  assert model.embed(x, block=1).shape == (2, 16)


@pytest.mark.parametrize("ratio", [0.25, 0.7, 0.75])
def test_masking_hides_exactly_the_requested_fraction(ratio):
  model = models.create("munet_tiny", channels=3, mask_ratio=ratio)
  x = images(4, 32, 3)
  masked, target, pixels, _ = model.mask_input(x, jax.random.key(1))
  n, p = 16, 8  # 32x32 image, 8x8 patches.
  hidden = np.asarray(pixels)[..., 0]
  assert set(np.unique(hidden)) == {0.0, 1.0}
  # The ViT-MAE's count (mae.draw_mask): int(n * (1 - ratio)) patches stay visible.
  np.testing.assert_array_equal(hidden.sum(axis=(1, 2)), (n - int(n * (1 - ratio))) * p * p)
  # Whole patches: every 8x8 block is all masked or all visible.
  blocks = hidden.reshape(4, 4, p, 4, p).transpose(0, 1, 3, 2, 4).reshape(4, n, p * p)
  assert np.all((blocks.min(-1) == blocks.max(-1)))
  assert len({tuple(b.max(-1)) for b in blocks}) > 1  # Each image draws its own mask.
  masked = np.asarray(masked)
  np.testing.assert_array_equal(masked[hidden == 1], 0.0)
  np.testing.assert_allclose(masked[hidden == 0], np_standardize(x)[hidden == 0], atol=1e-5)
  np.testing.assert_allclose(target, np_standardize(x), atol=1e-5)


def test_reconstruct_mask_counts_pixels_of_every_channel():
  model = models.create("munet_tiny", channels=5)
  out = model.reconstruct(images(2, 32, 5), jax.random.key(2), mask_ratio=0.25)
  np.testing.assert_array_equal(np.asarray(out["mask"]).sum(axis=(1, 2, 3)), 4 * 64 * 5)


def np_fourier_l1(pred, target, p):
  """Mean |FFT2| L1 per p x p patch and channel, [b, H, W, c] -> [b, n]."""
  def patches(x):
    b, H, W, c = x.shape
    x = x.reshape(b, H // p, p, W // p, p, c).transpose(0, 1, 3, 5, 2, 4)
    return x.reshape(b, (H // p) * (W // p), c, p, p)
  fp, ft = np.abs(np.fft.fft2(patches(pred))), np.abs(np.fft.fft2(patches(target)))
  return np.abs(fp - ft).mean(axis=(2, 3, 4))


@pytest.mark.parametrize("fourier_weight", [0.0, 0.3])
def test_loss_matches_numpy_masked_mse(fourier_weight):
  model = models.create("munet_tiny", channels=3, fourier_weight=fourier_weight)
  x = images(2, 32, 3, seed=3)
  key = jax.random.key(4)
  loss, metrics = nnx.jit(lambda m, b, k: m.compute_loss(b, k))(model, {"image": x}, key)
  out = model.reconstruct(x, key)  # Same key -> same mask as the loss.
  pred = np.asarray(out["pred"], np.float64)
  target = np_standardize(x)
  m = np.asarray(out["mask"])
  mse = (((pred - target) ** 2) * m).sum() / m.sum()
  patch_masked = m[:, ::8, ::8, 0].reshape(2, 16)
  fourier = (np_fourier_l1(pred, target, 8) * patch_masked).sum() / patch_masked.sum()
  np.testing.assert_allclose(metrics["mse"], mse, rtol=1e-4)
  np.testing.assert_allclose(loss, (1 - fourier_weight) * mse + fourier_weight * fourier,
                             rtol=1e-4)
  assert mse > 0.1  # An untrained model: the reference is not trivially zero.


def test_gradients_reach_every_parameter():
  model = models.create("munet_tiny", channels=2)
  loss = lambda m: m.compute_loss({"image": images(2, 32, 2)}, jax.random.key(0))[0]
  grads = nnx.jit(nnx.grad(loss))(model)
  zero = [jax.tree_util.keystr(k) for k, g in jax.tree_util.tree_leaves_with_path(grads)
          if not np.any(np.asarray(g))]
  assert not zero


def test_sizes_match_vit_s_and_vit_b_encoders():
  m, l = num_params("munet_m"), num_params("munet_l")
  assert (m, l) == (21_667_686, 86_623_942)  # The numbers documented in maejax/models/munet.py.
  vit_s, vit_b = num_params("vits16", "encoder"), num_params("vitb16", "encoder")
  assert abs(m / vit_s - 1) < 0.05 and abs(l / vit_b - 1) < 0.05


def test_bad_input_is_one_clear_error():
  model = models.create("munet_tiny", channels=3)
  with pytest.raises(ValueError, match="expects 3 channels"):
    model.embed(images(1, 32, 4))
  with pytest.raises(ValueError, match="not divisible by 8"):
    model.embed(images(1, 36, 3))
  with pytest.raises(ValueError, match="pool must be 'mean'"):
    model.embed(images(1, 32, 3), pool="cls")
  with pytest.raises(ValueError, match="block must be in 1..2"):
    model.embed(images(1, 32, 3), block=3)


def test_patch_mask_count_is_static_under_jit():
  model = models.create("munet_tiny", channels=3, mask_ratio=0.7)
  mask_input = jax.jit(lambda x, k: model.mask_input(x, k)[3])
  mask = mask_input(images(3, 32, 3), jax.random.key(0))
  np.testing.assert_array_equal(np.asarray(mask).sum(1), 16 - int(16 * 0.3))
