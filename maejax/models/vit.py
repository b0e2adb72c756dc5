"""ViT encoder over standard or channel-agnostic tokens, with a CLS token."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from maejax.models import layers, stack
from maejax.models.tokenizers import ChannelAgnosticPatchEmbed, PatchEmbed, standardize


def dtype_of(name):
  return {"float32": jnp.float32, "bfloat16": jnp.bfloat16, "float16": jnp.float16}[name]


def check_images(images, cfg):
  """One clear error for images the model cannot take; images [b, H, W, c]."""
  if images.ndim != 4:
    raise ValueError(
        f"images must be [batch, height, width, channels], got shape {tuple(images.shape)}")
  _, h, w, c = images.shape
  p = cfg.patch_size
  if h % p or w % p:
    raise ValueError(
        f"image size {h}x{w} is not divisible by the patch size {p}: crop or pad to a "
        f"multiple of {p} (e.g. {cfg.img_size}x{cfg.img_size})")
  if cfg.channel_agnostic:
    if c > cfg.max_channels:
      raise ValueError(
          f"{c} channels given, but this channel-agnostic model takes at most "
          f"{cfg.max_channels} (config model.max_channels)")
  elif c != cfg.channels:
    raise ValueError(
        f"this model expects {cfg.channels} channels, got {c}: select those channels, or use a "
        f"channel-agnostic model (camae_*) for other channel sets")


class Encoder(nnx.Module):
  """Standardize -> tokenize -> [CLS] + tokens -> blocks -> optional final norm."""

  def __init__(self, cfg, *, rngs):
    dtype = dtype_of(cfg.dtype)
    if cfg.channel_agnostic:
      self.tokenizer = ChannelAgnosticPatchEmbed(
          cfg.patch_size, cfg.max_channels, cfg.width, pos_layout=cfg.pos_layout, dtype=dtype,
          rngs=rngs)
    else:
      self.tokenizer = PatchEmbed(cfg.patch_size, cfg.channels, cfg.width,
                                  pos_layout=cfg.pos_layout, dtype=dtype, rngs=rngs)
    self.cls_token = nnx.Param(
        jax.random.normal(rngs.params(), (1, 1, cfg.width)) * 0.02, out_sharding=(None, None, "embed"))
    rates = [float(r) for r in np.linspace(0.0, cfg.drop_path, cfg.depth)]
    self.blocks = nnx.List([
        layers.make_block(
            cfg.block, cfg.width, cfg.num_heads, mlp_ratio=cfg.mlp_dim / cfg.width,
            qkv_bias=cfg.qkv_bias, qk_norm=cfg.qk_norm, layerscale=cfg.layerscale,
            drop_path=r, eps=cfg.norm_eps, dtype=dtype, rngs=rngs)
        for r in rates])
    self.norm = layers.layer_norm(cfg.width, cfg.norm_eps, dtype, rngs=rngs) if cfg.final_norm else None
    self.dtype = dtype
    self.scan, self.remat, self.remat_policy = cfg.scan_layers, cfg.remat, cfg.remat_policy

  def tokenize(self, images):
    """uint8 [b, H, W, c] -> patch tokens with positions [b, l, width]."""
    return self.tokenizer(standardize(images).astype(self.dtype))

  def __call__(self, tokens, key=None, num_blocks=None):
    """[b, l, width] patch tokens -> [b, 1 + l, width] (CLS first).

    num_blocks: run only the first K blocks (intermediate embeddings); the final norm is
    applied only after the last block.
    """
    cls = jnp.broadcast_to(self.cls_token[...].astype(tokens.dtype), (tokens.shape[0], 1, tokens.shape[-1]))
    x = jnp.concatenate([cls, tokens], axis=1)
    depth = len(self.blocks)
    n = depth if num_blocks is None else num_blocks
    if not 1 <= n <= depth:
      raise ValueError(f"block must be in 1..{depth}, got {n}")
    blocks = list(self.blocks)[:n]
    keys = jax.random.split(key, depth)[:n] if key is not None else None
    rates = [blk.drop_path for blk in blocks] if key is not None else None
    x = stack.run(blocks, x, keys, rates, scan=self.scan, remat=self.remat,
                  policy=self.remat_policy)
    if self.norm is not None and n == depth:
      x = self.norm(x)
    return x


def pool_tokens(x, pool, channels):
  """Encoder output [b, 1 + l, d] -> embedding.

  pool: "mean" (mean of patch tokens) [b, d], "cls" [b, d], or "channelwise" (mean per
  channel's tokens, concatenated; channel-agnostic tokens only) [b, channels*d].
  """
  if pool == "mean":
    return x[:, 1:].mean(axis=1)
  if pool == "cls":
    return x[:, 0]
  if pool == "channelwise":
    b, l, d = x[:, 1:].shape
    return x[:, 1:].reshape(b, channels, l // channels, d).mean(axis=2).reshape(b, channels * d)
  raise ValueError(f"pool must be 'mean', 'cls' or 'channelwise', got {pool!r}")
