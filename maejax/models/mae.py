"""Masked autoencoders: the standard MAE and the channel-agnostic MAE (CA-MAE).

Token layout: standard tokens are patches of all channels [b, n, p*p*c]; channel-agnostic
tokens are channel-major patches of one channel [b, c*n, p*p]. Masks are [b, l] with
1 = masked (removed from the encoder, scored by the loss).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from maejax.models import layers, stack
from maejax.models.losses import reconstruction_loss
from maejax.models.tokenizers import (patchify, patchify_channels, positions, standardize,
                                      unpatchify, unpatchify_channels)
from maejax.models.vit import Encoder, check_images, dtype_of, pool_tokens


def draw_mask(batch, length, mask_ratio, *, key=None, noise=None):
  """Masks all but `int(length * (1 - mask_ratio))` random positions per row, static shapes.

  The lowest-noise positions are kept (noise: optional [batch, length] uniform noise, which
  overrides key). Returns ids_keep [batch, keep], mask [batch, length] float32 (1 = masked)
  and ids_restore [batch, length] (the permutation that puts shuffled positions back).
  """
  keep = int(length * (1.0 - mask_ratio))
  if noise is None:
    noise = jax.random.uniform(key, (batch, length))
  ids_shuffle = jnp.argsort(noise, axis=1)
  ids_restore = jnp.argsort(ids_shuffle, axis=1)
  mask = jnp.ones((batch, length), jnp.float32).at[:, :keep].set(0.0)
  mask = jnp.take_along_axis(mask, ids_restore, axis=1)
  return ids_shuffle[:, :keep], mask, ids_restore


@jax.custom_vjp
def permute_rows(x, perm):
  """x [b, l, d] -> x[i, perm[i]] for a permutation perm [b, l] of 0..l-1 per row.

  The gradient is the inverse permutation, a gather too: autodiff's scatter-add is several
  times slower on XLA:CPU.
  """
  return jnp.take_along_axis(x, perm[:, :, None], axis=1)


def _permute_rows_fwd(x, perm):
  return permute_rows(x, perm), perm


def _permute_rows_bwd(perm, g):
  return permute_rows(g, jnp.argsort(perm, axis=1)), None


permute_rows.defvjp(_permute_rows_fwd, _permute_rows_bwd)


def random_masking(tokens, mask_ratio, *, key=None, noise=None):
  """Keeps a random `1 - mask_ratio` of tokens [b, l, d] (see `draw_mask`).

  Returns kept [b, keep, d], mask [b, l] (1 = masked), ids_restore [b, l].
  """
  b, l, _ = tokens.shape
  ids_keep, mask, ids_restore = draw_mask(b, l, mask_ratio, key=key, noise=noise)
  ids_shuffle = jnp.argsort(ids_restore, axis=1)  # ids_keep is its first `keep` columns.
  kept = permute_rows(tokens, ids_shuffle)[:, :ids_keep.shape[1]]
  return kept, mask, ids_restore


def unshuffle(kept, mask_token, ids_restore):
  """Appends mask tokens to kept [b, keep, d] and restores the original order -> [b, l, d]."""
  b, keep, d = kept.shape
  l = ids_restore.shape[1]
  x = jnp.concatenate([kept, jnp.broadcast_to(mask_token.astype(kept.dtype), (b, l - keep, d))], 1)
  return permute_rows(x, ids_restore)


def mask_token(dim, rngs) -> nnx.Param:
  """The learned token [1, 1, dim] that stands in for every hidden patch."""
  return nnx.Param(jax.random.normal(rngs.params(), (1, 1, dim)) * 0.02,
                   out_sharding=(None, None, None))


def run_options(cfg) -> dict:
  """How a decoder runs its block stack (`stack.run` keywords), from the model config."""
  return dict(scan=cfg.scan_layers, remat=cfg.remat, policy=cfg.remat_policy)


def decoder_block(cfg, dtype, rngs):
  return layers.Block(
      cfg.decoder_width, cfg.decoder_heads, mlp_ratio=cfg.decoder_mlp_dim / cfg.decoder_width,
      qkv_bias=cfg.decoder_qkv_bias, qk_norm=False, layerscale=None, eps=cfg.norm_eps,
      dtype=dtype, rngs=rngs)


class MAEDecoder(nnx.Module):
  """Standard MAE decoder: project, restore mask tokens, add positions, blocks, norm, predict."""

  def __init__(self, cfg, *, rngs):
    dtype = dtype_of(cfg.dtype)
    dd = cfg.decoder_width
    self.embed = layers.dense(cfg.width, dd, ("embed", None), dtype=dtype, rngs=rngs)
    self.mask_token = mask_token(dd, rngs)
    self.blocks = nnx.List([decoder_block(cfg, dtype, rngs) for _ in range(cfg.decoder_depth)])
    self.norm = layers.layer_norm(dd, cfg.norm_eps, dtype, rngs=rngs, name=None)
    self.pred = layers.dense(dd, cfg.patch_size ** 2 * cfg.channels, ("embed", None),
                             dtype=dtype, rngs=rngs)
    self.run_options = run_options(cfg)
    self.pos_layout = cfg.pos_layout

  def __call__(self, x, ids_restore, grid_hw, channel_ids=None):
    """x: encoder output [b, 1 + keep, width] -> predictions [b, l, p*p*c]."""
    x = self.embed(x)
    patches = unshuffle(x[:, 1:], self.mask_token[...], ids_restore)
    pos = positions(*grid_hw, x.shape[-1], x.dtype, self.pos_layout)
    x = jnp.concatenate([x[:, :1], patches + pos], axis=1)
    x = stack.run(self.blocks, x, **self.run_options)
    return self.pred(self.norm(x))[:, 1:]


class ChannelStacks(nnx.Module):
  """One stack of decoder blocks per channel id, parameters stacked on a leading axis.

  Applying it gathers the stacks of the given channel ids, so the ids may be traced values.
  """

  def __init__(self, cfg, dtype, *, rngs):
    @nnx.split_rngs(splits=cfg.decoder_channels)
    @nnx.vmap(in_axes=(0,), out_axes=0, transform_metadata={nnx.PARTITION_NAME: None})
    def make(rngs):
      return nnx.List([decoder_block(cfg, dtype, rngs) for _ in range(cfg.decoder_depth)])

    self.stacks = make(rngs)
    self.run_options = run_options(cfg)

  def __call__(self, x, ids):
    """x [c, b, n, d] (tokens of channel slot i in x[i]); ids [c] int -> [c, b, n, d]."""
    graphdef, state = nnx.split(self.stacks)
    picked = jax.tree.map(lambda a: a[ids], state)

    def apply(state_c, x_c):
      return stack.run(nnx.merge(graphdef, state_c), x_c, **self.run_options)

    return jax.vmap(apply)(picked, x)


class ChannelAgnosticDecoder(nnx.Module):
  """CA-MAE decoder: per-channel queries cross-attend to all tokens, then per-channel stacks.

  Every slot's tokens get the fixed spatial positions plus a learned token of its channel id;
  a shared cross-attention (queries: that channel's tokens, context: all tokens) and MLP, then
  that channel's own block stack; a shared head predicts one channel's p*p pixels per token.
  """

  def __init__(self, cfg, *, rngs):
    dtype = dtype_of(cfg.dtype)
    dd = cfg.decoder_width
    self.embed = layers.dense(cfg.width, dd, ("embed", None), dtype=dtype, rngs=rngs)
    self.mask_token = mask_token(dd, rngs)
    self.channel_tokens = nnx.Param(
        jax.random.normal(rngs.params(), (cfg.decoder_channels, dd)) * 0.02, out_sharding=(None, None))
    self.query_norm = layers.layer_norm(dd, cfg.norm_eps, dtype, rngs=rngs, name=None)
    self.context_norm = layers.layer_norm(dd, cfg.norm_eps, dtype, rngs=rngs, name=None)
    self.cross_attention = layers.CrossAttention(dd, cfg.decoder_cross_heads, dtype=dtype, rngs=rngs)
    self.out_norm = layers.layer_norm(dd, cfg.norm_eps, dtype, rngs=rngs, name=None)
    self.mlp = layers.Mlp(dd, cfg.decoder_mlp_dim, dtype=dtype, rngs=rngs)
    self.stacks = ChannelStacks(cfg, dtype, rngs=rngs)
    self.pred = layers.dense(dd, cfg.patch_size ** 2, ("embed", None), dtype=dtype, rngs=rngs)
    self.pos_layout = cfg.pos_layout

  def __call__(self, x, ids_restore, grid_hw, channel_ids):
    """x: encoder output [b, 1 + keep, width]; channel_ids [c] -> [b, c*n, p*p]."""
    x = self.embed(x)
    x = unshuffle(x[:, 1:], self.mask_token[...], ids_restore)
    b, l, d = x.shape
    c = channel_ids.shape[0]
    pos = positions(*grid_hw, d, x.dtype, self.pos_layout)
    x = x.reshape(b, c, l // c, d) + pos[None, None]
    x = x + self.channel_tokens[...][channel_ids].astype(x.dtype)[None, :, None]
    x = x.reshape(b, l, d)
    # Each channel's queries attend to all tokens with shared weights: one attention of all
    # queries over all tokens computes exactly that.
    x = self.cross_attention(self.query_norm(x), self.context_norm(x))
    x = x + self.mlp(self.out_norm(x))
    x = jnp.moveaxis(x.reshape(b, c, l // c, d), 1, 0)
    x = jnp.moveaxis(self.stacks(x, channel_ids), 0, 1)
    return self.pred(x.reshape(b, l, d))


class MAE(nnx.Module):
  """Masked autoencoder over uint8 images [b, H, W, c]; standard or channel-agnostic."""

  POOLS = ("mean", "cls", "channelwise")  # embed(pool=...); channelwise: channel-agnostic only.

  def __init__(self, cfg, *, rngs):
    self.cfg = cfg
    self.encoder = Encoder(cfg, rngs=rngs)
    if cfg.channel_agnostic:
      self.decoder = ChannelAgnosticDecoder(cfg, rngs=rngs)
    else:
      self.decoder = MAEDecoder(cfg, rngs=rngs)

  def check_images(self, images):
    """Raises a clear ValueError for images [b, H, W, c] this model cannot take."""
    check_images(images, self.cfg)

  # -- pieces -----------------------------------------------------------------------------
  def _channel_ids(self, images, channel_ids):
    """The decoder's channel ids [c] for this batch.

    A batch carries one channel set (maejax.data samples channel subsets per batch): rows of
    a [b, c] `channel_ids` must be equal, and the first one is used.
    """
    c = images.shape[-1]
    if channel_ids is None:
      channel_ids = jnp.arange(c, dtype=jnp.int32)
    channel_ids = jnp.asarray(channel_ids, jnp.int32)
    if channel_ids.ndim == 2:  # [b, c] batch layout: one channel set per batch.
      channel_ids = channel_ids[0]
    if self.cfg.channel_agnostic and c > self.cfg.decoder_channels:
      raise ValueError(
          f"{c} channels given, but the reconstruction decoder has {self.cfg.decoder_channels} "
          f"channel stacks: embed() takes up to {self.cfg.max_channels}, reconstruction up to "
          f"{self.cfg.decoder_channels}")
    return channel_ids

  def targets(self, images):
    """Standardized target tokens: [b, n, p*p*c] or channel-agnostic [b, c*n, p*p]."""
    x = standardize(images)
    p = self.cfg.patch_size
    return patchify_channels(x, p) if self.cfg.channel_agnostic else patchify(x, p)

  def forward(self, images, *, key=None, noise=None, mask_ratio=None, channel_ids=None,
              train=True):
    """Mask, encode visible tokens, decode all. Returns dict of pred/target [b, l, ...], mask.

    key drives masking and (when train) stochastic depth; noise [b, l] overrides the masking
    draw (for parity with other implementations).
    """
    check_images(images, self.cfg)
    ids = self._channel_ids(images, channel_ids)
    ratio = self.cfg.mask_ratio if mask_ratio is None else mask_ratio
    k_mask, k_drop = jax.random.split(key) if key is not None else (None, None)
    tokens = self.encoder.tokenize(images)
    kept, mask, ids_restore = random_masking(tokens, ratio, key=k_mask, noise=noise)
    latent = self.encoder(kept, key=k_drop if train else None)
    p = self.cfg.patch_size
    grid_hw = (images.shape[1] // p, images.shape[2] // p)
    pred = self.decoder(latent, ids_restore, grid_hw, ids)
    return {"pred": pred, "target": self.targets(images), "mask": mask}

  # -- public API ---------------------------------------------------------------------------
  def compute_loss(self, batch, key):
    """batch {"image": uint8 [b, H, W, c], "channel_ids"?} -> (loss, metrics)."""
    out = self.forward(batch["image"], key=key, channel_ids=batch.get("channel_ids"))
    loss, metrics = reconstruction_loss(
        out["pred"], out["target"], out["mask"], patch_size=self.cfg.patch_size,
        fourier_weight=self.cfg.fourier_weight, norm_pix_loss=self.cfg.norm_pix_loss)
    return loss, {"loss": loss, **metrics}

  def embed(self, images, channel_ids=None, *, pool="mean", block=None):
    """uint8 [b, H, W, c] -> float32 [b, width] (or [b, c*width] for pool="channelwise").

    All tokens, no masking; block=K takes the output of the K-th encoder block (1-based).
    """
    del channel_ids  # The encoder has no channel embedding: positions only.
    check_images(images, self.cfg)
    if pool == "channelwise" and not self.cfg.channel_agnostic:
      raise ValueError("pool='channelwise' needs a channel-agnostic model (camae_*)")
    x = self.encoder(self.encoder.tokenize(images), num_blocks=block)
    return pool_tokens(x, pool, images.shape[-1]).astype(jnp.float32)

  def reconstruct(self, images, key, mask_ratio=None, channel_ids=None, noise=None):
    """Returns images [b, H, W, c] float32 in standardized units: `pred` (the model's
    reconstruction, with visible patches also predicted), `target`, and `mask` (1 = masked)."""
    out = self.forward(images, key=key, noise=noise, mask_ratio=mask_ratio,
                       channel_ids=channel_ids, train=False)
    b, H, W, c = images.shape
    p = self.cfg.patch_size
    pred = out["pred"].astype(jnp.float32)
    if self.cfg.norm_pix_loss:  # Predictions are per-patch normalized: undo with target stats.
      t = out["target"]
      pred = pred * jnp.sqrt(t.var(-1, keepdims=True) + 1e-6) + t.mean(-1, keepdims=True)
    if self.cfg.channel_agnostic:
      to_image = lambda t: unpatchify_channels(t, p, H, W, c)
      mask = out["mask"][:, :, None] * jnp.ones((p * p,))
    else:
      to_image = lambda t: unpatchify(t, p, H, W)
      mask = out["mask"][:, :, None] * jnp.ones((p * p * c,))
    return {"pred": to_image(pred), "target": to_image(out["target"]), "mask": to_image(mask)}
