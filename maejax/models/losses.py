"""Reconstruction losses of the MAE: masked MSE plus the Fourier-domain L1 term."""

from __future__ import annotations

import jax.numpy as jnp


def normalize_patches(target, eps=1e-6):
  """Per-patch normalized targets (MAE's `norm_pix_loss`); target [b, l, p*p*c]."""
  mean = target.mean(-1, keepdims=True)
  var = target.var(-1, keepdims=True)
  return (target - mean) / jnp.sqrt(var + eps)


def masked_mean(per_token, mask):
  """Mean of per_token [b, l] over tokens where mask [b, l] is 1."""
  return (per_token * mask).sum() / jnp.maximum(mask.sum(), 1.0)


def fourier_l1(pred, target, patch_size):
  """Per-token L1 between |FFT2| of predicted and target patches.

  pred, target: [b, l, p*p*c] with pixels ordered (row, col, channel) -> [b, l].
  """
  shape = pred.shape[:2] + (patch_size, patch_size, -1)
  fp = jnp.abs(jnp.fft.fft2(pred.reshape(shape), axes=(2, 3)))
  ft = jnp.abs(jnp.fft.fft2(target.reshape(shape), axes=(2, 3)))
  return jnp.abs(fp - ft).mean(axis=(2, 3, 4))


def reconstruction_loss(pred, target, mask, *, patch_size, fourier_weight=0.0,
                        norm_pix_loss=False):
  """(1 - w) * masked MSE + w * masked Fourier L1, computed in float32.

  pred, target: [b, l, p*p*c]; mask: [b, l] with 1 = masked (the only tokens scored).
  Returns (loss, {"mse", "fourier"}).
  """
  pred = pred.astype(jnp.float32)
  target = target.astype(jnp.float32)
  if norm_pix_loss:
    target = normalize_patches(target)
  mse = masked_mean(((pred - target) ** 2).mean(-1), mask)
  if fourier_weight:
    fourier = masked_mean(fourier_l1(pred, target, patch_size), mask)
  else:
    fourier = jnp.zeros((), jnp.float32)
  loss = (1.0 - fourier_weight) * mse + fourier_weight * fourier
  return loss, {"mse": mse, "fourier": fourier}
