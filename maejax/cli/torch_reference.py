"""PyTorch models of maejax's shapes: the importer parity tests' reference and the other side
of `python -m maejax.bench {model,embed} --compare-torch`. Needs the torch extra.

`OpenPhenomReference`: OpenPhenom's documented computation, written from
/work/shared/reference/openphenom.md (not from maejax's code): channel-agnostic ViT encoder of
parallel blocks, CA-MAE decoder, with the released checkpoint's parameter NAMES so that
`maejax.convert.convert_openphenom` maps its `state_dict()` unchanged; attention is
`F.scaled_dot_product_attention`, as in timm's ViT that OpenPhenom builds on. Sizes are arguments;
tests use tiny ones. Layout is PyTorch's: pixels uint8 [batch, channels, H, W]. Its positions are
the `pos_embed` / `pos_embeddings` tensors of its state_dict, as in Recursion's model: nothing here
computes them (the tests load Recursion's own tables from ../shared/reference).
`vitmae_for_pretraining`: transformers' `ViTMAEForPreTraining` of a maejax ViT-MAE config, its
position tables filled by transformers' own init (`init_vitmae_positions`).
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F

EPS = 1e-6


class Holder(nn.Module):
  """A bare container, so that parameter names follow the released checkpoint."""


class LayerScale(nn.Module):
  def __init__(self, dim):
    super().__init__()
    self.gamma = nn.Parameter(torch.zeros(dim))


class ParallelBlock(nn.Module):
  """y = in_norm(x); [mlp | q | k | v] = y @ in_proj^T;
  x + gamma * (attn_out_proj(attn(q_norm(q), k_norm(k), v)) + mlp_out_proj(gelu(mlp + mlp_bias)))."""

  def __init__(self, dim, heads, mlp_dim):
    super().__init__()
    self.heads, self.mlp_dim = heads, mlp_dim
    self.mlp_bias = nn.Parameter(torch.zeros(mlp_dim))
    self.in_norm = nn.LayerNorm(dim, eps=EPS)
    self.in_proj = nn.Linear(dim, mlp_dim + 3 * dim, bias=False)
    self.q_norm = nn.LayerNorm(dim // heads, eps=EPS)
    self.k_norm = nn.LayerNorm(dim // heads, eps=EPS)
    self.attn_out_proj = nn.Linear(dim, dim)
    self.mlp_out_proj = nn.Linear(mlp_dim, dim)
    self.ls = LayerScale(dim)

  def forward(self, x):
    b, n, d = x.shape
    h = self.in_proj(self.in_norm(x))
    mlp, q, k, v = torch.split(h, [self.mlp_dim, d, d, d], dim=-1)
    heads = lambda t: t.reshape(b, n, self.heads, d // self.heads).transpose(1, 2)
    q, k, v = self.q_norm(heads(q)), self.k_norm(heads(k)), heads(v)
    attn = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(b, n, d)
    mlp = F.gelu(mlp + self.mlp_bias)
    return x + self.ls.gamma * (self.attn_out_proj(attn) + self.mlp_out_proj(mlp))


class Mlp(nn.Module):
  def __init__(self, dim, hidden):
    super().__init__()
    self.fc1, self.fc2 = nn.Linear(dim, hidden), nn.Linear(hidden, dim)

  def forward(self, x):
    return self.fc2(F.gelu(self.fc1(x)))


class SelfAttention(nn.Module):
  def __init__(self, dim, heads):
    super().__init__()
    self.heads = heads
    self.qkv, self.proj = nn.Linear(dim, 3 * dim), nn.Linear(dim, dim)

  def forward(self, x):
    b, n, d = x.shape
    qkv = self.qkv(x).reshape(b, n, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
    attn = F.scaled_dot_product_attention(qkv[0], qkv[1], qkv[2])
    return self.proj(attn.transpose(1, 2).reshape(b, n, d))


class Block(nn.Module):
  """Standard pre-norm ViT block (timm)."""

  def __init__(self, dim, heads, mlp_dim):
    super().__init__()
    self.norm1, self.norm2 = nn.LayerNorm(dim, eps=EPS), nn.LayerNorm(dim, eps=EPS)
    self.attn, self.mlp = SelfAttention(dim, heads), Mlp(dim, mlp_dim)

  def forward(self, x):
    x = x + self.attn(self.norm1(x))
    return x + self.mlp(self.norm2(x))


class CrossAttention(nn.Module):
  """q and kv linear without bias; kv rows are [k | v]; proj with bias."""

  def __init__(self, dim, heads):
    super().__init__()
    self.heads = heads
    self.q = nn.Linear(dim, dim, bias=False)
    self.kv = nn.Linear(dim, 2 * dim, bias=False)
    self.proj = nn.Linear(dim, dim)

  def forward(self, x, context):
    b, n, d = x.shape
    m = context.shape[1]
    q = self.q(x).reshape(b, n, self.heads, d // self.heads).transpose(1, 2)
    kv = self.kv(context).reshape(b, m, 2, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
    attn = F.scaled_dot_product_attention(q, kv[0], kv[1])
    return self.proj(attn.transpose(1, 2).reshape(b, n, d))


class OpenPhenomReference(nn.Module):
  """CA-MAE: encoder.vit_backbone.*, decoder.*, encoder_decoder_proj, decoder_pred."""

  def __init__(self, *, width=64, depth=2, heads=4, mlp_dim=256, patch=16, img=32,
               max_channels=11, channels=6, dec_width=64, dec_depth=2, dec_heads=4,
               dec_cross_heads=2, dec_mlp_dim=128):
    super().__init__()
    self.patch, self.channels = patch, channels
    self.n = (img // patch) ** 2
    vit = Holder()
    vit.cls_token = nn.Parameter(torch.zeros(1, 1, width))
    vit.pos_embed = nn.Parameter(torch.zeros(1, 1 + max_channels * self.n, width))
    vit.patch_embed = Holder()
    vit.patch_embed.proj = nn.Conv2d(1, width, patch, stride=patch)
    vit.blocks = nn.ModuleList([ParallelBlock(width, heads, mlp_dim) for _ in range(depth)])
    vit.fc_norm = nn.LayerNorm(width, eps=EPS)
    self.encoder = Holder()
    self.encoder.vit_backbone = vit

    dec = Holder()
    dec.mask_token = nn.Parameter(torch.zeros(1, 1, dec_width))
    dec.placeholder = nn.Parameter(torch.zeros(1, 1, dec_width), requires_grad=False)
    dec.pos_embeddings = nn.Parameter(torch.zeros(1, 1 + channels * self.n, dec_width))
    dec.modality_tokens = nn.ParameterList(
        [nn.Parameter(torch.zeros(1, 1, dec_width)) for _ in range(channels)])
    dec.cross_attention = CrossAttention(dec_width, dec_cross_heads)
    dec.mlp = Mlp(dec_width, dec_mlp_dim)
    dec.decoders = nn.ModuleList([
        nn.Sequential(*[Block(dec_width, dec_heads, dec_mlp_dim) for _ in range(dec_depth)])
        for _ in range(channels)])
    dec.context_norm = nn.LayerNorm(dec_width, eps=EPS)
    dec.query_norm = nn.LayerNorm(dec_width, eps=EPS)
    dec.out_norm = nn.LayerNorm(dec_width, eps=EPS)
    self.decoder = dec
    self.encoder_decoder_proj = nn.Linear(width, dec_width)
    self.decoder_pred = nn.Linear(dec_width, patch * patch)

  # -- random weights -------------------------------------------------------------------------
  @torch.no_grad()
  def randomize(self, seed=0):
    """Random O(1)-output weights (LayerScale far from its 1e-4 init so every block counts),
    except the fixed position tables, which stay zero until a state_dict loads them."""
    g = torch.Generator().manual_seed(seed)
    rand = lambda *s: torch.randn(*s, generator=g)
    for name, p in self.named_parameters():
      if name.endswith("norm.weight") or name.endswith("norm1.weight") or name.endswith("norm2.weight"):
        p.copy_(1.0 + 0.2 * rand(*p.shape))
      elif name.endswith("ls.gamma"):
        p.copy_(0.5 + 0.2 * rand(*p.shape))
      elif "pos_embed" in name or "placeholder" in name:
        continue
      elif p.ndim >= 2 and "token" not in name:
        p.copy_(rand(*p.shape) / math.sqrt(p[0].numel()))
      else:
        p.copy_(0.3 * rand(*p.shape))
    return self

  # -- computation ----------------------------------------------------------------------------
  def standardize(self, pixels):
    """uint8 [b, c, H, W] -> x/255, instance norm per image and channel (eps 1e-5)."""
    return F.instance_norm(pixels.to(self.decoder_pred.weight.dtype) / 255.0, eps=1e-5)

  def tokens(self, x):
    """Standardized [b, c, H, W] -> channel-major patch tokens + positions [b, c*n, width]."""
    b, c, H, W = x.shape
    vit = self.encoder.vit_backbone
    t = vit.patch_embed.proj(x.reshape(b * c, 1, H, W)).flatten(2).transpose(1, 2)
    t = t.reshape(b, c * self.n, -1)
    return t + vit.pos_embed[:, 1:1 + c * self.n]

  def encode(self, tokens):
    """[b, l, width] -> [b, 1 + l, width]: CLS (+ its position) prepended, blocks, no norm."""
    vit = self.encoder.vit_backbone
    cls = (vit.cls_token + vit.pos_embed[:, :1]).expand(tokens.shape[0], -1, -1)
    x = torch.cat([cls, tokens], dim=1)
    for blk in vit.blocks:
      x = blk(x)
    return x

  def embed(self, pixels, channelwise=False):
    """uint8 [b, c, H, W] -> mean of patch tokens [b, width] (or per channel [b, c*width])."""
    x = self.encode(self.tokens(self.standardize(pixels)))[:, 1:]
    if channelwise:
      b, l, d = x.shape
      return x.reshape(b, pixels.shape[1], l // pixels.shape[1], d).mean(2).reshape(b, -1)
    return x.mean(1)

  def reconstruct(self, pixels, noise, mask_ratio=0.75):
    """uint8 [b, c, H, W], noise [b, c*n] -> (pred [b, c, H, W], mask [b, c*n], target)."""
    x = self.standardize(pixels)
    b, c, H, W = x.shape
    t = self.tokens(x)
    l, d = t.shape[1:]
    keep = int(l * (1 - mask_ratio))
    ids_shuffle = torch.argsort(noise, dim=1)
    ids_restore = torch.argsort(ids_shuffle, dim=1)
    kept = torch.gather(t, 1, ids_shuffle[:, :keep, None].expand(-1, -1, d))
    mask = torch.ones(b, l, dtype=t.dtype)
    mask[:, :keep] = 0
    mask = torch.gather(mask, 1, ids_restore)
    latent = self.encoder_decoder_proj(self.encode(kept))

    dec = self.decoder
    dd = latent.shape[-1]
    rest = torch.cat([latent[:, 1:], dec.mask_token.expand(b, l - keep, -1)], dim=1)
    rest = torch.gather(rest, 1, ids_restore[:, :, None].expand(-1, -1, dd))
    y = torch.cat([latent[:, :1], rest], dim=1)
    modality = torch.cat([dec.placeholder] + [
        m.expand(1, self.n, dd) for m in list(dec.modality_tokens)[:c]], dim=1)
    y = y + dec.pos_embeddings[:, :1 + c * self.n] + modality
    y = y[:, 1:]
    outs = []
    for ch in range(c):
      y_c = y[:, ch * self.n:(ch + 1) * self.n]
      y_c = dec.cross_attention(dec.query_norm(y_c), dec.context_norm(y))
      y_c = y_c + dec.mlp(dec.out_norm(y_c))
      outs.append(dec.decoders[ch](y_c))
    pred = self.decoder_pred(torch.cat(outs, dim=1))  # [b, c*n, p*p]
    return self._to_image(pred, c, H, W), mask, x

  def _to_image(self, tokens, c, H, W):
    """[b, c*n, p*p] (pixels row-major within a patch) -> [b, c, H, W]."""
    p, b = self.patch, tokens.shape[0]
    t = tokens.reshape(b, c, H // p, W // p, p, p).permute(0, 1, 2, 4, 3, 5)
    return t.reshape(b, c, H, W)


def vitmae_for_pretraining(cfg, *, image_size, channels):
  """transformers' ViTMAEForPreTraining (fp32, its default attention) of the shape of maejax
  ViT-MAE config `cfg`: widths, depths, heads, MLPs, patch, channels, image size, mask ratio."""
  import transformers  # An optional dependency (the torch extra), like torch itself.
  hf = transformers.ViTMAEConfig(
      hidden_size=cfg.width, num_hidden_layers=cfg.depth, num_attention_heads=cfg.num_heads,
      intermediate_size=cfg.mlp_dim, decoder_hidden_size=cfg.decoder_width,
      decoder_num_hidden_layers=cfg.decoder_depth,
      decoder_num_attention_heads=cfg.decoder_heads,
      decoder_intermediate_size=cfg.decoder_mlp_dim, patch_size=cfg.patch_size,
      num_channels=channels, image_size=image_size, mask_ratio=cfg.mask_ratio,
      qkv_bias=cfg.qkv_bias, layer_norm_eps=cfg.norm_eps, norm_pix_loss=cfg.norm_pix_loss)
  return init_vitmae_positions(transformers.ViTMAEForPreTraining(hf))


@torch.no_grad()
def init_vitmae_positions(model):
  """Fills a transformers ViTMAEForPreTraining's fixed sin-cos tables by transformers' own init.

  transformers 5 skips that init in a model made with ViTMAEForPreTraining(config) (the tables
  stay zero): its embeddings' init returns early once the patch projection is marked
  initialized, and the decoder's is not called at all. Earlier versions fill them already.
  """
  emb = model.vit.embeddings
  emb.patch_embeddings.projection._is_hf_initialized = False  # pylint: disable=protected-access
  emb.initialize_weights()
  model.decoder.initialize_weights(emb.patch_embeddings.num_patches)
  return model


def openphenom_of(cfg, *, image_size, channels):
  """`OpenPhenomReference` of the shape of maejax CA-MAE config `cfg` (random weights, zero
  position tables: for timing only)."""
  return OpenPhenomReference(
      width=cfg.width, depth=cfg.depth, heads=cfg.num_heads, mlp_dim=cfg.mlp_dim,
      patch=cfg.patch_size, img=image_size, max_channels=cfg.max_channels,
      channels=min(channels, cfg.decoder_channels), dec_width=cfg.decoder_width,
      dec_depth=cfg.decoder_depth, dec_heads=cfg.decoder_heads,
      dec_cross_heads=cfg.decoder_cross_heads, dec_mlp_dim=cfg.decoder_mlp_dim).randomize()
