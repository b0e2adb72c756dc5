"""Convolutional building blocks shared by the MU-Net and the CNN classifier.

Feature maps are `[batch, height, width, features]`. Every parameter carries logical axis
names: conv kernels `[kh, kw, in, out]` are `(None, None, "embed", "mlp")`, so the default
rules shard input features over `fsdp` and output features over `tensor`; biases and norm
parameters follow their feature axis (`"mlp"` for a conv's output, `"embed"` for a norm's
input). A dimension the mesh does not divide is replicated by the training code, so odd
channel counts (stems, heads) are fine. GroupNorm only: no batch statistics, no mutable state.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from flax import nnx

from maejax.models.layers import ones, part, zeros

he_normal = nnx.initializers.he_normal()
KERNEL_AXES = (None, None, "embed", "mlp")


def conv(cin, cout, kernel, stride=1, *, use_bias=True, dtype=None, rngs):
  """kernel x kernel convolution, SAME padding: [b, H, W, cin] -> [b, H/stride, W/stride, cout]."""
  return nnx.Conv(
      cin, cout, (kernel, kernel), (stride, stride), padding="SAME", use_bias=use_bias,
      dtype=dtype, rngs=rngs, kernel_init=part(he_normal, KERNEL_AXES),
      bias_init=part(zeros, ("mlp",)))


def group_norm(dim, groups, eps=1e-5, dtype=None, *, scale_init=ones, rngs):
  """GroupNorm over `dim` features with gcd(dim, groups) groups (any width works)."""
  return nnx.GroupNorm(
      dim, num_groups=math.gcd(dim, groups), epsilon=eps, dtype=dtype,
      use_fast_variance=False, rngs=rngs,
      scale_init=part(scale_init, ("embed",)), bias_init=part(zeros, ("embed",)))


def global_avg_pool(x):
  """[b, H, W, d] -> float32 [b, d]."""
  return x.astype(jnp.float32).mean(axis=(1, 2))


class ResBlock(nnx.Module):
  """Pre-activation basic residual block (ResNet v2) with GroupNorm and SiLU.

  [b, H, W, cin] -> [b, H/stride, W/stride, cout]; a 1x1 projection on the shortcut when
  the shape changes.
  """

  def __init__(self, cin, cout, stride=1, *, groups=32, dtype=None, rngs):
    self.norm1 = group_norm(cin, groups, dtype=dtype, rngs=rngs)
    self.conv1 = conv(cin, cout, 3, stride, dtype=dtype, rngs=rngs)
    self.norm2 = group_norm(cout, groups, dtype=dtype, rngs=rngs)
    self.conv2 = conv(cout, cout, 3, dtype=dtype, rngs=rngs)
    needs_proj = stride != 1 or cin != cout
    self.shortcut = conv(cin, cout, 1, stride, dtype=dtype, rngs=rngs) if needs_proj else None

  def __call__(self, x):
    h = self.conv1(jax.nn.silu(self.norm1(x)))
    h = self.conv2(jax.nn.silu(self.norm2(h)))
    return (self.shortcut(x) if self.shortcut is not None else x) + h


class Bottleneck(nnx.Module):
  """Pre-activation bottleneck block (ResNet-50 style, 4x expansion) with GroupNorm.

  [b, H, W, cin] -> [b, H/stride, W/stride, 4 * width]; stride on the 3x3 conv (v1.5).
  """

  expansion = 4

  def __init__(self, cin, width, stride=1, *, groups=32, dtype=None, rngs):
    cout = width * self.expansion
    self.norm1 = group_norm(cin, groups, dtype=dtype, rngs=rngs)
    self.conv1 = conv(cin, width, 1, dtype=dtype, rngs=rngs)
    self.norm2 = group_norm(width, groups, dtype=dtype, rngs=rngs)
    self.conv2 = conv(width, width, 3, stride, dtype=dtype, rngs=rngs)
    self.norm3 = group_norm(width, groups, dtype=dtype, rngs=rngs)
    self.conv3 = conv(width, cout, 1, dtype=dtype, rngs=rngs)
    needs_proj = stride != 1 or cin != cout
    self.shortcut = conv(cin, cout, 1, stride, dtype=dtype, rngs=rngs) if needs_proj else None

  def __call__(self, x):
    h = self.conv1(jax.nn.relu(self.norm1(x)))
    h = self.conv2(jax.nn.relu(self.norm2(h)))
    h = self.conv3(jax.nn.relu(self.norm3(h)))
    return (self.shortcut(x) if self.shortcut is not None else x) + h


def check_conv_images(images, channels, multiple):
  """One clear error for images a conv model cannot take; images [b, H, W, c]."""
  if images.ndim != 4:
    raise ValueError(
        f"images must be [batch, height, width, channels], got shape {tuple(images.shape)}")
  _, h, w, c = images.shape
  if h % multiple or w % multiple:
    raise ValueError(
        f"image size {h}x{w} is not divisible by {multiple} (patch size and downsampling of "
        f"this model): crop or pad to a multiple of {multiple}")
  if c != channels:
    raise ValueError(
        f"this model expects {channels} channels (config model.channels), got {c}: select "
        f"those channels or set model.channels={c}")
