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


def shortcut(cin, cout, stride, *, dtype=None, rngs):
  """The residual branch's 1x1 projection where the shape changes, else None (identity)."""
  if stride == 1 and cin == cout:
    return None
  return conv(cin, cout, 1, stride, dtype=dtype, rngs=rngs)


def skip(projection, x):
  return x if projection is None else projection(x)


def check_pool_and_block(pool, block, n: int, what: str, model: str) -> None:
  """Conv models embed global averages of one of their `n` stages/levels (1-based)."""
  if pool != "mean":
    raise ValueError(f"{model} embeddings are global averages: pool must be 'mean', got {pool!r}")
  if block is not None and not 1 <= block <= n:
    raise ValueError(f"block must be in 1..{n} ({what}), got {block}")


class _PreActivation(nnx.Module):
  """Pre-activation convs (norm -> activation -> conv, named norm<i> / conv<i>) added to the
  block's input (projected by `shortcut` where the shape changes).

  convs: [(cin, cout, kernel, stride)] in order; [b, H, W, convs[0].cin] ->
  [b, H / prod(strides), W / prod(strides), convs[-1].cout].
  """

  def __init__(self, convs, activation, *, groups, dtype, rngs):
    for i, (cin, cout, kernel, stride) in enumerate(convs, 1):
      setattr(self, f"norm{i}", group_norm(cin, groups, dtype=dtype, rngs=rngs))
      setattr(self, f"conv{i}", conv(cin, cout, kernel, stride, dtype=dtype, rngs=rngs))
    self.depth, self.activation = len(convs), activation
    stride = math.prod(c[3] for c in convs)
    self.shortcut = shortcut(convs[0][0], convs[-1][1], stride, dtype=dtype, rngs=rngs)

  def __call__(self, x):
    h = x
    for i in range(1, self.depth + 1):
      h = getattr(self, f"conv{i}")(self.activation(getattr(self, f"norm{i}")(h)))
    return skip(self.shortcut, x) + h


class ResBlock(_PreActivation):
  """Pre-activation basic residual block (ResNet v2) with GroupNorm and SiLU.

  [b, H, W, cin] -> [b, H/stride, W/stride, cout]; a 1x1 projection on the shortcut when
  the shape changes.
  """

  def __init__(self, cin, cout, stride=1, *, groups=32, dtype=None, rngs):
    super().__init__([(cin, cout, 3, stride), (cout, cout, 3, 1)], jax.nn.silu,
                     groups=groups, dtype=dtype, rngs=rngs)


class Bottleneck(_PreActivation):
  """Pre-activation bottleneck block (ResNet-50 style, 4x expansion) with GroupNorm.

  [b, H, W, cin] -> [b, H/stride, W/stride, 4 * width]; stride on the 3x3 conv (v1.5).
  """

  expansion = 4

  def __init__(self, cin, width, stride=1, *, groups=32, dtype=None, rngs):
    super().__init__([(cin, width, 1, 1), (width, width, 3, stride),
                      (width, width * self.expansion, 1, 1)], jax.nn.relu,
                     groups=groups, dtype=dtype, rngs=rngs)


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
