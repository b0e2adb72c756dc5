"""Image standardization, patchify, sin-cos positions and the two tokenizers.

Standard: one patch projection over all channels, tokens [b, h*w, embed].
Channel-agnostic: one projection shared by every channel, each channel patchified separately,
tokens channel-major [b, c*h*w, embed], the spatial sin-cos table repeated per channel.
"""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
from flax import nnx

from maejax.models.layers import dense


def standardize(images, eps=1e-5):
  """uint8 [b, h, w, c] -> float32, per-image per-channel zero mean, unit variance."""
  x = images.astype(jnp.float32) / 255.0
  mean = x.mean(axis=(1, 2), keepdims=True)
  var = ((x - mean) ** 2).mean(axis=(1, 2), keepdims=True)
  return (x - mean) / jnp.sqrt(var + eps)


def patchify(x, p):
  """[b, H, W, c] -> [b, (H/p)*(W/p), p*p*c], pixels ordered (row, col, channel)."""
  b, H, W, c = x.shape
  x = x.reshape(b, H // p, p, W // p, p, c).transpose(0, 1, 3, 2, 4, 5)
  return x.reshape(b, (H // p) * (W // p), p * p * c)


def unpatchify(x, p, H, W):
  """Inverse of `patchify`: [b, n, p*p*c] -> [b, H, W, c]."""
  b, _, d = x.shape
  c = d // (p * p)
  x = x.reshape(b, H // p, W // p, p, p, c).transpose(0, 1, 3, 2, 4, 5)
  return x.reshape(b, H, W, c)


def patchify_channels(x, p):
  """[b, H, W, c] -> [b, c*(H/p)*(W/p), p*p], channel-major tokens of one channel each."""
  b, H, W, c = x.shape
  x = jnp.moveaxis(x, -1, 1).reshape(b * c, H, W, 1)
  return patchify(x, p).reshape(b, c * (H // p) * (W // p), p * p)


def unpatchify_channels(x, p, H, W, c):
  """Inverse of `patchify_channels`: [b, c*n, p*p] -> [b, H, W, c]."""
  b = x.shape[0]
  x = unpatchify(x.reshape(b * c, -1, p * p), p, H, W)
  return jnp.moveaxis(x.reshape(b, c, H, W), 1, -1)


# Layouts of the fixed 2-D sin-cos table, by which half of each row encodes the patch's column
# (w) and which its row (h); each half is [sin(pos * omega) | cos(pos * omega)].
#   column_first: [w | h] (Facebook MAE, HuggingFace ViTMAE, big_vision): maejax's default.
#   row_first:    [h | w] (Recursion's OpenPhenom).
POS_LAYOUTS = ("column_first", "row_first")


def check_layout(layout):
  if layout not in POS_LAYOUTS:
    raise ValueError(f"model.pos_layout={layout!r}: one of {', '.join(POS_LAYOUTS)}")
  return layout


def sincos_2d(grid_h, grid_w, dim, layout):
  """Fixed 2-D sin-cos table [grid_h*grid_w, dim], patches row-major, half the dims per axis
  in `layout` (one of POS_LAYOUTS)."""
  check_layout(layout)
  if dim % 4:
    raise ValueError(f"sin-cos positions need an embedding dim divisible by 4, got {dim}")

  def one_axis(pos, d):
    omega = 1.0 / 10000 ** (np.arange(d // 2, dtype=np.float64) / (d / 2.0))
    out = np.outer(pos.reshape(-1), omega)
    return np.concatenate([np.sin(out), np.cos(out)], axis=1)

  gw, gh = np.meshgrid(np.arange(grid_w, dtype=np.float64), np.arange(grid_h, dtype=np.float64))
  halves = [one_axis(gw, dim // 2), one_axis(gh, dim // 2)]
  if layout == "row_first":
    halves.reverse()
  return np.concatenate(halves, axis=1).astype(np.float32)


def positions(grid_h, grid_w, dim, dtype, layout):
  """The sin-cos table [grid_h*grid_w, dim] in `layout` as a constant of `dtype`.

  Built from static shapes at call time (as big_vision does), so it is not module state and
  fits any grid size.
  """
  return jnp.asarray(sincos_2d(grid_h, grid_w, dim, layout)).astype(dtype)


class PatchEmbed(nnx.Module):
  """Standard tokenizer: [b, H, W, c] float -> [b, n, embed] (+ sin-cos positions in
  `pos_layout`)."""

  def __init__(self, patch_size, channels, dim, *, pos_layout, dtype=None, rngs):
    self.patch_size, self.channels = patch_size, channels
    self.pos_layout = check_layout(pos_layout)
    self.proj = dense(patch_size * patch_size * channels, dim, (None, "embed"), dtype=dtype,
                      rngs=rngs)

  def __call__(self, x):
    p = self.patch_size
    tokens = self.proj(patchify(x, p))
    return tokens + positions(x.shape[1] // p, x.shape[2] // p, tokens.shape[-1], tokens.dtype,
                              self.pos_layout)


class ChannelAgnosticPatchEmbed(nnx.Module):
  """Channel-agnostic tokenizer: each channel patchified and projected with shared weights.

  [b, H, W, c] float -> [b, c*n, embed], channel-major; positions are the spatial table
  repeated for every channel (no channel embedding), so any c <= max_channels works.
  """

  def __init__(self, patch_size, max_channels, dim, *, pos_layout, dtype=None, rngs):
    self.patch_size, self.max_channels = patch_size, max_channels
    self.pos_layout = check_layout(pos_layout)
    self.proj = dense(patch_size * patch_size, dim, (None, "embed"), dtype=dtype, rngs=rngs)

  def __call__(self, x):
    p, c = self.patch_size, x.shape[-1]
    tokens = self.proj(patchify_channels(x, p))
    pos = positions(x.shape[1] // p, x.shape[2] // p, tokens.shape[-1], tokens.dtype,
                    self.pos_layout)
    return tokens + jnp.tile(pos, (c, 1))
