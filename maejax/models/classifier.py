"""Weakly supervised (WSL) classifiers: predict each crop's perturbation label.

The baseline of the paper's comparisons (RxRx1-style WSL models): a backbone, global pooling,
a linear head over `num_classes`; softmax cross-entropy with label smoothing. The embedding is
the penultimate layer (the pooled features the head reads).

Backbones: a pre-activation ResNet with GroupNorm (`CNNClassifier`; bottleneck blocks =
ResNet-50 style) or the MAE's ViT encoder (`ViTClassifier`, pool "mean" or "cls").

Labels: `batch["label"]` int32 [b] in [0, num_classes). Inside `jit` a bad label cannot raise
(it yields an all-zero one-hot row, counted in the `invalid_labels` metric), so the data and
training code must call `check_labels` on the host NumPy batch (and `encode_labels` to turn
perturbation names into ids); `compute_loss` also runs `check_labels` when called eagerly.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from maejax.models import conv as cv
from maejax.models import stack
from maejax.models import layers
from maejax.models.tokenizers import standardize
from maejax.models.vit import Encoder, check_images, dtype_of, pool_tokens


def check_labels(labels, num_classes):
  """Host-side check: labels int [b] must lie in [0, num_classes). Returns them as int32."""
  labels = np.asarray(labels)
  if labels.ndim != 1 or not np.issubdtype(labels.dtype, np.integer):
    raise ValueError(
        f"batch['label'] must be integer class ids of shape [batch], got dtype {labels.dtype} "
        f"shape {labels.shape}: map perturbation names to ids with encode_labels")
  bad = labels[(labels < 0) | (labels >= num_classes)]
  if bad.size:
    raise ValueError(
        f"labels must be in [0, {num_classes}) (config model.num_classes={num_classes}), got "
        f"{np.unique(bad)[:10].tolist()}: set model.num_classes to the number of training "
        f"classes, or drop crops whose perturbation was not seen in training")
  return labels.astype(np.int32)


def encode_labels(values, classes):
  """Perturbation names [b] -> int32 ids [b] by position in `classes` (the training classes).

  A name not in `classes` is an error, never a silent new class.
  """
  index = {c: i for i, c in enumerate(classes)}
  unseen = sorted({str(v) for v in values if v not in index})
  if unseen:
    raise ValueError(
        f"{len(unseen)} label(s) not among the {len(index)} training classes, e.g. "
        f"{unseen[:5]}: a WSL model can only score perturbations it was trained on; filter "
        f"them out or retrain with these classes")
  return np.asarray([index[v] for v in values], np.int32)


def _labels(batch, num_classes):
  if "label" not in batch:
    raise ValueError(
        "batch has no 'label': weakly supervised models need int32 labels [batch] (set the "
        "data config's label column, e.g. the perturbation)")
  labels = batch["label"]
  if not isinstance(labels, jax.core.Tracer):
    check_labels(labels, num_classes)
  return jnp.asarray(labels, jnp.int32)


class _Classifier(nnx.Module):
  """Head, loss and embedding over a backbone's `features(images, key, block) -> [b, D]`."""

  def _head(self, dim, dtype, rngs):
    # Zero-initialized head (big_vision): the initial loss is exactly log(num_classes).
    return layers.dense(dim, self.cfg.num_classes, ("embed", "vocab"), dtype=dtype, rngs=rngs,
                        init=layers.zeros)

  def logits(self, images, key=None):
    """uint8 [b, H, W, c] -> float32 logits [b, num_classes]."""
    return self.head(self.features(images, key)).astype(jnp.float32)

  def compute_loss(self, batch, key):
    """batch {"image": uint8 [b, H, W, c], "label": int32 [b]} -> (loss, metrics).

    Softmax cross-entropy against label-smoothed one-hot targets (optax).
    """
    n = self.cfg.num_classes
    labels = _labels(batch, n)
    logits = self.logits(batch["image"], key)
    targets = optax.smooth_labels(jax.nn.one_hot(labels, n), self.cfg.label_smoothing)
    loss = optax.softmax_cross_entropy(logits, targets).mean()
    accuracy = (logits.argmax(-1) == labels).mean()
    invalid = ((labels < 0) | (labels >= n)).sum()
    return loss, {"loss": loss, "accuracy": accuracy, "invalid_labels": invalid}

  def embed(self, images, channel_ids=None, *, pool="mean", block=None):
    """uint8 [b, H, W, c] -> float32 [b, D]: the pooled features the head reads."""
    del channel_ids
    return self.features(images, None, pool=pool, block=block).astype(jnp.float32)


class ResNet(nnx.Module):
  """Pre-activation ResNet with GroupNorm: [b, H, W, c] -> stage features.

  Stem: `stem_kernel` conv with `stem_stride` (+ 3x3 stride-2 max pool when `stem_pool`);
  stage s: `stage_sizes[s]` blocks of width `widths[s]` (stride 2 from the second stage);
  basic blocks (ResNet-18/34) or bottleneck blocks (ResNet-50, output 4 * width).
  """

  def __init__(self, cfg, dtype, *, rngs):
    self.stem = cv.conv(cfg.channels, cfg.stem_width, cfg.stem_kernel, cfg.stem_stride,
                        dtype=dtype, rngs=rngs)
    self.stem_pool = cfg.stem_pool
    stages, cin = [], cfg.stem_width
    for s, (size, width) in enumerate(zip(cfg.stage_sizes, cfg.widths)):
      blocks = []
      for i in range(size):
        stride = 2 if s > 0 and i == 0 else 1
        if cfg.bottleneck:
          blocks.append(cv.Bottleneck(cin, width, stride, groups=cfg.groups, dtype=dtype,
                                      rngs=rngs))
          cin = width * cv.Bottleneck.expansion
        else:
          blocks.append(cv.ResBlock(cin, width, stride, groups=cfg.groups, dtype=dtype,
                                    rngs=rngs))
          cin = width
      stages.append(nnx.List(blocks))
    self.stages = nnx.List(stages)
    self.norm = cv.group_norm(cin, cfg.groups, dtype=dtype, rngs=rngs)  # Pre-act: final norm.
    self.dim, self.remat, self.remat_policy = cin, cfg.remat, cfg.remat_policy

  def __call__(self, x, num_stages=None):
    """x [b, H, W, c] float -> output of stage `num_stages` (default: last, normalized)."""
    step = stack.checkpointed(lambda blk, x: blk(x), self.remat, self.remat_policy)
    x = self.stem(x)
    if self.stem_pool:
      x = nnx.max_pool(x, (3, 3), (2, 2), padding="SAME")
    for blocks in list(self.stages)[:num_stages]:
      for blk in blocks:
        x = step(blk, x)
    if num_stages is None or num_stages == len(self.stages):
      x = jax.nn.relu(self.norm(x))
    return x


class CNNClassifier(_Classifier):
  """WSL classifier with a ResNet backbone; embedding [b, 4 * widths[-1]] (bottleneck) or
  [b, widths[-1]] (basic blocks)."""

  POOLS = ("mean",)  # Global averages (embed's pool).

  def __init__(self, cfg, *, rngs):
    self.cfg = cfg
    self.dtype = dtype_of(cfg.dtype)
    self.backbone = ResNet(cfg, self.dtype, rngs=rngs)
    self.head = self._head(self.backbone.dim, self.dtype, rngs)

  def check_images(self, images):
    """One clear error for images this model cannot take (shape only; no tracing). Any
    height and width work (SAME-padded strided convs)."""
    cv.check_conv_images(images, self.cfg.channels, 1)

  def features(self, images, key=None, *, pool="mean", block=None):
    """uint8 [b, H, W, c] -> float32 [b, D], global average pooled; block=K (1-based) pools
    the output of stage K instead. key is unused (no stochastic layers)."""
    del key
    self.check_images(images)
    cv.check_pool_and_block(pool, block, len(self.cfg.widths), "ResNet stages", "CNN")
    x = self.backbone(standardize(images).astype(self.dtype), num_stages=block)
    return cv.global_avg_pool(x)


class ViTClassifier(_Classifier):
  """WSL classifier with the MAE's ViT encoder; embedding [b, width], pooled by `cfg.pool`."""

  POOLS = ("mean", "cls", "channelwise")  # embed(pool=...); channelwise: channel-agnostic only.

  def __init__(self, cfg, *, rngs):
    self.cfg = cfg
    self.encoder = Encoder(cfg, rngs=rngs)
    self.head = self._head(cfg.width, dtype_of(cfg.dtype), rngs)

  def check_images(self, images):
    """One clear error for images this model cannot take (shape only; no tracing)."""
    check_images(images, self.cfg)

  def features(self, images, key=None, *, pool=None, block=None):
    """uint8 [b, H, W, c] -> float32 [b, width]; pool defaults to the head's (`cfg.pool`),
    block=K takes the K-th encoder block's output (1-based). key drives drop-path."""
    self.check_images(images)
    x = self.encoder(self.encoder.tokenize(images), key=key, num_blocks=block)
    return pool_tokens(x, pool or self.cfg.pool, images.shape[-1])

  def embed(self, images, channel_ids=None, *, pool=None, block=None):
    """uint8 [b, H, W, c] -> float32 [b, width]; pool=None uses the head's pooling (the
    penultimate layer), "mean"/"cls" override it."""
    del channel_ids
    return self.features(images, None, pool=pool, block=block).astype(jnp.float32)
