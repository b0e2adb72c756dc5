"""Masked U-Net (MU-Net): a convolutional masked autoencoder (Kraus et al., MU-Net-M / -L).

The standardized image's patches are masked as the ViT-MAE's tokens are (`mae.draw_mask`: all
but int(n * (1 - mask_ratio)) of the n patches; masked pixels set to 0, the per-channel mean),
a U-Net with skip connections reconstructs the whole image, and the loss scores masked patches
only (the ViT-MAE's `reconstruction_loss`: MSE plus the Fourier term).
The embedding is the global average of the bottleneck features.

Architecture (`widths` = (w_1, ..., w_L), `depth` blocks per level, pre-activation residual
blocks with GroupNorm and SiLU, `maejax.models.conv`):
  stem 3x3 conv c -> w_1;
  encoder level k: (k > 1: 3x3 stride-2 conv w_{k-1} -> w_k), `depth` blocks at w_k;
    level L is the bottleneck at 1 / 2^(L-1) resolution;
  decoder level k = L-1 .. 1: 2x2 stride-2 transposed conv w_{k+1} -> w_k, concatenate the
    level-k skip, `depth` blocks (the first 2 w_k -> w_k);
  head: GroupNorm, SiLU, 1x1 conv w_1 -> c. Output shape = input shape, any c.

Sizes (6 channels; counted with `nnx.eval_shape`, checked in tests/models/test_munet.py):
  munet_m: widths (32, 64, 128, 256, 576), depth 2 -> 21.67M parameters (ViT-S/16 encoder,
    6 channels: 21.88M); embedding dim 576.
  munet_l: widths (64, 128, 256, 512, 1152) = 2 x munet_m, depth 2 -> 86.62M parameters
    (ViT-B/16 encoder: 86.23M); embedding dim 1152.
Both need crops divisible by 16 (4 downsamplings) and by `patch_size`.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from maejax.models import conv as cv
from maejax.models import stack
from maejax.models.layers import part, zeros
from maejax.models.losses import reconstruction_loss
from maejax.models.mae import draw_mask
from maejax.models.tokenizers import patchify, standardize, unpatchify
from maejax.models.vit import dtype_of


def mask_pixels(mask, patch_size, height, width):
  """Patch mask [b, n] -> pixel mask [b, H, W, 1] (patches in `patchify` order)."""
  ones = jnp.ones((1, 1, patch_size * patch_size), mask.dtype)
  return unpatchify(mask[:, :, None] * ones, patch_size, height, width)


class Encoder(nnx.Module):
  """Stem and downsampling levels: [b, H, W, c] -> per-level features, last = bottleneck."""

  def __init__(self, cfg, dtype, *, rngs):
    w = cfg.widths
    self.stem = cv.conv(cfg.channels, w[0], 3, dtype=dtype, rngs=rngs)
    self.down = nnx.List([cv.conv(w[k - 1], w[k], 3, 2, dtype=dtype, rngs=rngs)
                          for k in range(1, len(w))])
    self.levels = nnx.List([
        nnx.List([cv.ResBlock(wk, wk, groups=cfg.groups, dtype=dtype, rngs=rngs)
                  for _ in range(cfg.depth)])
        for wk in w])
    self.remat, self.remat_policy = cfg.remat, cfg.remat_policy

  def __call__(self, x, num_levels=None):
    """x [b, H, W, c] -> list of the first `num_levels` level outputs [b, H/2^k, W/2^k, w_k]."""
    step = stack.checkpointed(lambda blk, x: blk(x), self.remat, self.remat_policy)
    feats = []
    x = self.stem(x)
    for k, blocks in enumerate(list(self.levels)[:num_levels]):
      if k:
        x = self.down[k - 1](x)
      for blk in blocks:
        x = step(blk, x)
      feats.append(x)
    return feats


class Decoder(nnx.Module):
  """Upsample, concatenate the skip, blocks; then the pixel head -> [b, H, W, c]."""

  def __init__(self, cfg, dtype, *, rngs):
    w = cfg.widths
    self.up = nnx.List([
        nnx.ConvTranspose(w[k + 1], w[k], (2, 2), (2, 2), padding="SAME", dtype=dtype,
                          rngs=rngs, kernel_init=part(cv.he_normal, cv.KERNEL_AXES),
                          bias_init=part(zeros, ("mlp",)))
        for k in range(len(w) - 1)])
    self.levels = nnx.List([
        nnx.List([cv.ResBlock(2 * w[k] if i == 0 else w[k], w[k], groups=cfg.groups,
                              dtype=dtype, rngs=rngs)
                  for i in range(cfg.depth)])
        for k in range(len(w) - 1)])
    self.norm = cv.group_norm(w[0], cfg.groups, dtype=dtype, rngs=rngs)
    self.head = cv.conv(w[0], cfg.channels, 1, dtype=dtype, rngs=rngs)
    self.remat, self.remat_policy = cfg.remat, cfg.remat_policy

  def __call__(self, feats):
    step = stack.checkpointed(lambda blk, x: blk(x), self.remat, self.remat_policy)
    x = feats[-1]
    for k in reversed(range(len(self.up))):
      x = jnp.concatenate([feats[k], self.up[k](x)], axis=-1)
      for blk in self.levels[k]:
        x = step(blk, x)
    return self.head(jax.nn.silu(self.norm(x)))


class MUNet(nnx.Module):
  """Masked U-Net over uint8 images [b, H, W, c] (c = `channels` of the config)."""

  POOLS = ("mean",)  # Global averages (embed's pool).

  def __init__(self, cfg, *, rngs):
    self.cfg = cfg
    self.dtype = dtype_of(cfg.dtype)
    self.encoder = Encoder(cfg, self.dtype, rngs=rngs)
    self.decoder = Decoder(cfg, self.dtype, rngs=rngs)

  def check_images(self, images):
    """One clear error for images this model cannot take (shape only; no tracing)."""
    multiple = max(self.cfg.patch_size, 2 ** (len(self.cfg.widths) - 1))
    cv.check_conv_images(images, self.cfg.channels, multiple)

  def mask_input(self, images, key, mask_ratio=None):
    """uint8 [b, H, W, c] -> (masked input, target, pixel mask [b, H, W, 1], patch mask
    [b, n]): the standardized image with masked patches set to 0; 1 = masked."""
    self.check_images(images)
    b, H, W, _ = images.shape
    p = self.cfg.patch_size
    ratio = self.cfg.mask_ratio if mask_ratio is None else mask_ratio
    target = standardize(images)
    _, mask, _ = draw_mask(b, (H // p) * (W // p), ratio, key=key)
    pixels = mask_pixels(mask, p, H, W)
    return target * (1.0 - pixels), target, pixels, mask

  def forward(self, images, key, mask_ratio=None):
    """Mask patches of the standardized image and reconstruct it.

    Returns float32 images [b, H, W, c]: `pred`, `target` (standardized input), and the
    pixel mask `mask` [b, H, W, 1] (1 = masked), plus the patch mask `patch_mask` [b, n].
    """
    x, target, pixels, mask = self.mask_input(images, key, mask_ratio)
    pred = self.decoder(self.encoder(x.astype(self.dtype))).astype(jnp.float32)
    return {"pred": pred, "target": target, "mask": pixels, "patch_mask": mask}

  # -- public API ---------------------------------------------------------------------------
  def compute_loss(self, batch, key):
    """batch {"image": uint8 [b, H, W, c]} -> (loss, metrics); key draws the mask."""
    out = self.forward(batch["image"], key)
    p = self.cfg.patch_size
    loss, metrics = reconstruction_loss(
        patchify(out["pred"], p), patchify(out["target"], p), out["patch_mask"],
        patch_size=p, fourier_weight=self.cfg.fourier_weight)
    return loss, {"loss": loss, **metrics}

  def embed(self, images, channel_ids=None, *, pool="mean", block=None):
    """uint8 [b, H, W, c] -> float32 [b, w_L]: global average of the bottleneck features.

    No masking. block=K (1-based) averages the output of encoder level K instead ([b, w_K]).
    """
    del channel_ids  # Channels are fixed by the config.
    self.check_images(images)
    cv.check_pool_and_block(pool, block, len(self.cfg.widths), "encoder levels", "MU-Net")
    feats = self.encoder(standardize(images).astype(self.dtype), num_levels=block)
    return cv.global_avg_pool(feats[-1])

  def reconstruct(self, images, key, mask_ratio=None, channel_ids=None):
    """Images [b, H, W, c] float32 in standardized units: `pred`, `target`, `mask` (1 =
    masked, broadcast to c channels), as `MAE.reconstruct`."""
    del channel_ids
    out = self.forward(images, key, mask_ratio)
    mask = jnp.broadcast_to(out["mask"], out["pred"].shape)
    return {"pred": out["pred"], "target": out["target"], "mask": mask}
