"""Importers of other projects' MAE weights into maejax checkpoints.

  python -m maejax.convert openphenom --checkpoint model.safetensors --out DIR
  python -m maejax.convert hf-vitmae --checkpoint HF_DIR --out DIR   (maejax/cli/convert.py)

OpenPhenom (Recursion's CA-MAE ViT-S/16) ships as a PyTorch pickle named `model.safetensors`;
reading it needs torch (`pip install 'maejax[torch]'`). A HuggingFace `ViTMAEForPreTraining`
`save_pretrained` folder (config.json + model.safetensors or pytorch_model.bin) is read directly.
Every source tensor is mapped by a table of `Entry`s with its expected shape (from the model
config); missing, unexpected and misshapen tensors are errors, tensors the computation does not
use are warned about, and the fixed sin-cos position tables must equal one of the layouts maejax
computes (recorded as the model's pos_layout). The output is a `maejax.load`-able directory.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import warnings
from typing import Callable

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from flax import nnx

from maejax import api
from maejax import models
from maejax.models.tokenizers import POS_LAYOUTS, sincos_2d


@dataclasses.dataclass(frozen=True)
class Entry:
  """One source tensor: its name and shape, the maejax parameter it fills and how.

  path None: a fixed table maejax computes itself (the sin-cos positions); `fn` gives its
  [n, d] spatial table, whose layout `pos_layout_of` decides.
  index: where in the target the converted tensor goes (a leading channel slot of the stacked
  per-channel decoder blocks, or the q/k/v slot of a fused projection); () = the whole target.
  """
  key: str
  shape: tuple
  path: str | None
  fn: Callable[[np.ndarray], np.ndarray] = lambda w: w
  index: tuple = ()


# -- tensor layouts ---------------------------------------------------------------------------
def _t(w):
  """torch Linear weight [out, in] -> kernel [in, out]."""
  return w.T


def _to_heads(*out_shape):
  """torch Linear weight [out, in] -> kernel [in, *out_shape] (out split into heads)."""
  return lambda w: w.T.reshape(w.shape[1], *out_shape)


def _from_heads(heads, head_dim):
  """torch Linear weight [out, heads*head_dim] -> kernel [heads, head_dim, out]."""
  return lambda w: w.T.reshape(heads, head_dim, w.shape[0])


def _conv_patch(w):
  """Conv2d weight [dim, c, p, p] -> kernel [p*p*c, dim], pixels ordered (row, col, channel)."""
  return w.transpose(2, 3, 1, 0).reshape(-1, w.shape[0])


def _tiled_table(key, n, copies):
  """[1, 1 + copies*n, d] positions (CLS row first) -> the one [n, d] spatial table.

  maejax repeats a single spatial table per channel, so every copy must be the same table.
  """
  def fn(w):
    blocks = w[0, 1:].reshape(copies, n, -1)
    diff = np.abs(blocks - blocks[:1]).max(axis=(1, 2))
    if diff.max() > 1e-6 * max(1.0, float(np.abs(blocks).max())):
      raise ValueError(
          f"{key}: the positional table is not one [{n}, {w.shape[-1]}] spatial table "
          f"repeated for each of its {copies} channels (channel {int(diff.argmax())} differs by "
          f"{diff.max():.3g}); maejax's channel-agnostic model repeats one spatial table per "
          f"channel and cannot represent this checkpoint")
    return blocks[0]
  return fn


def _spatial_table(key):
  """[1, 1 + n, d] decoder positions -> [n, d]; the CLS row must be zero (maejax's MAE
  decoder adds no position to the CLS token)."""
  def fn(w):
    if np.abs(w[0, 0]).max() > 1e-6:
      raise ValueError(
          f"{key}: row 0 (the CLS token's decoder position) is non-zero "
          f"(max |value| {np.abs(w[0, 0]).max():.3g}); maejax's MAE decoder adds no position to "
          f"the CLS token, so this checkpoint cannot be imported exactly")
    return w[0, 1:]
  return fn


def pos_layout_of(tables, grid, zeros_hint=""):
  """The one sin-cos layout (tokenizers.POS_LAYOUTS) of stored tables {key: [grid*grid, d]}.

  maejax computes its positions from the image size at call time, so a checkpoint imports
  exactly only if every table (CLS row dropped) equals the fixed table of one known layout, to
  1e-5; the converted config records that layout. Folders converted before pos_layout existed
  have no such field and mean "column_first", which is right: until then the importer accepted
  only tables equal to the column-first one (older converters stored the table itself, and
  maejax.load refuses those folders: api.load).
  """
  found = {key: _layout_of(key, table, grid, zeros_hint) for key, table in tables.items()}
  if len(set(found.values())) > 1:
    raise ValueError(
        "the positional tables are laid out differently ("
        + ", ".join(f"{k}: {v}" for k, v in found.items())
        + "); maejax uses one layout for the encoder and the decoder and cannot import this "
        "checkpoint exactly")
  return next(iter(found.values()))


def _layout_of(key, table, grid, zeros_hint):
  if not np.any(table):
    raise ValueError(f"{key}: the positional table is all zeros, not a fixed sin-cos table"
                     f"{zeros_hint}")
  diffs = {layout: float(np.abs(table - sincos_2d(grid, grid, table.shape[-1], layout)).max())
           for layout in POS_LAYOUTS}
  best = min(diffs, key=diffs.get)
  if diffs[best] > 1e-5:
    raise ValueError(
        f"{key}: the positional table is not the fixed 2-D sin-cos table of a {grid}x{grid} grid "
        f"in any layout maejax computes (max difference "
        + ", ".join(f"{v:.3g} to {k}" for k, v in diffs.items())
        + "); maejax computes its positions and cannot represent learned tables")
  return best


def _fixed_tables(entries, state_dict):
  """{key: spatial table} of the entries maejax computes itself (path None)."""
  return {e.key: e.fn(state_dict[e.key]) for e in entries if e.path is None}


# -- entry builders ---------------------------------------------------------------------------
def _linear(key, path, din, dout, *, bias=True, fn=_t, bias_fn=lambda b: b, index=()):
  out = [Entry(f"{key}.weight", (dout, din), f"{path}.kernel", fn, index)]
  if bias:
    out.append(Entry(f"{key}.bias", (dout,), f"{path}.bias", bias_fn, index))
  return out


def _norm(key, path, dim, index=()):
  return [Entry(f"{key}.weight", (dim,), f"{path}.scale", index=index),
          Entry(f"{key}.bias", (dim,), f"{path}.bias", index=index)]


def _timm_block(key, path, dim, heads, mlp_dim, *, qkv_bias, index=()):
  """timm's pre-norm Block (norm1, attn.qkv, attn.proj, norm2, mlp.fc1, mlp.fc2)."""
  hd = dim // heads
  return [
      *_norm(f"{key}.norm1", f"{path}.norm1", dim, index),
      *_linear(f"{key}.attn.qkv", f"{path}.attn.qkv.proj", dim, 3 * dim, bias=qkv_bias,
               fn=_to_heads(3, heads, hd), bias_fn=lambda b: b.reshape(3, heads, hd), index=index),
      *_linear(f"{key}.attn.proj", f"{path}.attn.out.proj", dim, dim,
               fn=_from_heads(heads, hd), index=index),
      *_norm(f"{key}.norm2", f"{path}.norm2", dim, index),
      *_linear(f"{key}.mlp.fc1", f"{path}.mlp.fc1", dim, mlp_dim, index=index),
      *_linear(f"{key}.mlp.fc2", f"{path}.mlp.fc2", mlp_dim, dim, index=index),
  ]


# -- the generic driver -----------------------------------------------------------------------
def _to_numpy(value):
  """A torch tensor or array-like -> float32 NumPy array."""
  if hasattr(value, "detach"):
    value = value.detach().cpu().float().numpy()
  return np.asarray(value, dtype=np.float32)


def _listing(keys, limit=8):
  more = f" ... and {len(keys) - limit} more" if len(keys) > limit else ""
  return ", ".join(keys[:limit]) + more


def check_keys(entries, state_dict, unused, *, source, model_name):
  """Raises on missing / unexpected / misshapen tensors; warns about present unused ones."""
  expected = {e.key: e.shape for e in entries}
  missing = sorted(set(expected) - set(state_dict))
  if missing:
    raise ValueError(
        f"{source}: {len(missing)} tensor(s) that model {model_name!r} needs are missing: "
        f"{_listing(missing)}. Is this the right checkpoint and model config?")
  unexpected = sorted(set(state_dict) - set(expected) - set(unused))
  if unexpected:
    raise ValueError(
        f"{source}: {len(unexpected)} unexpected tensor(s) that model {model_name!r} has no "
        f"place for: {_listing(unexpected)}. Is this the right checkpoint and model config?")
  for key, shape in expected.items():
    given = tuple(state_dict[key].shape)
    if given != tuple(shape):
      raise ValueError(
          f"{source}: tensor {key} has shape {given}, but model {model_name!r} expects "
          f"{tuple(shape)}: the checkpoint does not fit this config (pick the model config "
          f"that matches the checkpoint)")
  present = [k for k in unused if k in state_dict]
  if present:
    warnings.warn(f"{source}: not imported (unused by the computation): "
                  + "; ".join(f"{k} ({unused[k]})" for k in present), UserWarning, stacklevel=3)
  return present


def _abstract_model(cfg):
  """The model's structure with shape-only variables: no time spent on a random init that
  the checkpoint overwrites anyway."""
  return nnx.eval_shape(lambda: models.create(cfg))


def fill_model(model, entries, state_dict):
  """Writes every entry's converted tensor into `model`; every variable must be covered."""
  state = nnx.state(model)
  variables = {".".join(map(str, p)): v for p, v in nnx.to_flat_state(state)}
  buffers, written = {}, {}
  for e in entries:
    if e.path is None:  # A fixed table: its layout is in the model config (pos_layout_of).
      continue
    if e.path not in variables:
      raise ValueError(f"internal: {e.key} maps to {e.path}, which the model does not have")
    if e.path not in buffers:
      buffers[e.path] = np.zeros(variables[e.path].get_value().shape, np.float32)
      written[e.path] = 0
    value = e.fn(state_dict[e.key])
    slot = buffers[e.path][e.index]
    if value.shape != slot.shape:
      raise ValueError(f"internal: {e.key} converts to {value.shape}, {e.path}{list(e.index)} "
                       f"is {slot.shape}")
    buffers[e.path][e.index] = value
    written[e.path] += value.size
  unset = sorted(p for p in variables if p not in buffers or written[p] != buffers[p].size)
  if unset:
    raise ValueError(
        f"model parameters not provided by the checkpoint: {_listing(unset)}; the model config "
        f"has parts this checkpoint lacks (e.g. qkv_bias, layerscale)")
  for path, buf in buffers.items():
    var = variables[path]
    var.set_value(jnp.asarray(buf, var.get_value().dtype))
  nnx.update(model, state)
  return model


# -- OpenPhenom -------------------------------------------------------------------------------
OPENPHENOM_UNUSED = {
    "encoder.vit_backbone.fc_norm.weight": "fc_norm is not applied by OpenPhenom's embedding",
    "encoder.vit_backbone.fc_norm.bias": "fc_norm is not applied by OpenPhenom's embedding",
    "decoder.placeholder": "the CLS slot's decoder token; CLS is dropped before the "
                           "channel-agnostic decoder",
}


def openphenom_entries(cfg):
  """The mapping of OpenPhenom's state_dict onto a channel-agnostic parallel-block MAE."""
  if not cfg.channel_agnostic or cfg.block != "parallel":
    raise ValueError(
        f"OpenPhenom is a channel-agnostic MAE of parallel blocks; model {cfg.name!r} has "
        f"channel_agnostic={cfg.channel_agnostic}, block={cfg.block!r} (use camae_s16)")
  d, h, m, p = cfg.width, cfg.num_heads, cfg.mlp_dim, cfg.patch_size
  grid = cfg.img_size // p
  hd, n = d // h, grid ** 2
  dd, dm, ch = cfg.decoder_width, cfg.decoder_mlp_dim, cfg.decoder_channels
  ch_heads = cfg.decoder_cross_heads
  v = "encoder.vit_backbone"
  pos_key, dpos_key = f"{v}.pos_embed", "decoder.pos_embeddings"
  out = [
      Entry(f"{v}.cls_token", (1, 1, d), "encoder.cls_token"),
      Entry(pos_key, (1, 1 + cfg.max_channels * n, d), None,
            _tiled_table(pos_key, n, cfg.max_channels)),
      Entry(f"{v}.patch_embed.proj.weight", (d, 1, p, p), "encoder.tokenizer.proj.kernel",
            _conv_patch),
      Entry(f"{v}.patch_embed.proj.bias", (d,), "encoder.tokenizer.proj.bias"),
  ]
  for i in range(cfg.depth):
    k, t = f"{v}.blocks.{i}", f"encoder.blocks.{i}"
    # in_proj rows are [mlp hidden | q | k | v].
    out += [
        Entry(f"{k}.mlp_bias", (m,), f"{t}.mlp_in.bias"),
        *_norm(f"{k}.in_norm", f"{t}.norm", d),
        Entry(f"{k}.in_proj.weight", (m + 3 * d, d), f"{t}.mlp_in.kernel", lambda w, m=m: w[:m].T),
        Entry(f"{k}.in_proj.weight", (m + 3 * d, d), f"{t}.qkv.proj.kernel",
              lambda w, m=m: w[m:].T.reshape(d, 3, h, hd)),
        *_linear(f"{k}.attn_out_proj", f"{t}.attn_out.proj", d, d, fn=_from_heads(h, hd)),
        *_linear(f"{k}.mlp_out_proj", f"{t}.mlp_out", m, d),
    ]
    if cfg.qk_norm:
      out += [*_norm(f"{k}.q_norm", f"{t}.qk_norm.q_norm", hd),
              *_norm(f"{k}.k_norm", f"{t}.qk_norm.k_norm", hd)]
    if cfg.layerscale:
      out.append(Entry(f"{k}.ls.gamma", (d,), f"{t}.ls.gamma"))
  out += [
      *_linear("encoder_decoder_proj", "decoder.embed", d, dd),
      Entry("decoder.mask_token", (1, 1, dd), "decoder.mask_token"),
      Entry(dpos_key, (1, 1 + ch * n, dd), None, _tiled_table(dpos_key, n, ch)),
      *[Entry(f"decoder.modality_tokens.{c}", (1, 1, dd), "decoder.channel_tokens",
              lambda w: w.reshape(-1), (c,)) for c in range(ch)],
      *_linear("decoder.cross_attention.q", "decoder.cross_attention.q", dd, dd, bias=False,
               fn=_to_heads(ch_heads, dd // ch_heads)),
      *_linear("decoder.cross_attention.kv", "decoder.cross_attention.kv", dd, 2 * dd,
               bias=False, fn=_to_heads(2, ch_heads, dd // ch_heads)),
      *_linear("decoder.cross_attention.proj", "decoder.cross_attention.out.proj", dd, dd,
               fn=_from_heads(ch_heads, dd // ch_heads)),
      *_linear("decoder.mlp.fc1", "decoder.mlp.fc1", dd, dm),
      *_linear("decoder.mlp.fc2", "decoder.mlp.fc2", dm, dd),
      *_norm("decoder.context_norm", "decoder.context_norm", dd),
      *_norm("decoder.query_norm", "decoder.query_norm", dd),
      *_norm("decoder.out_norm", "decoder.out_norm", dd),
      *_linear("decoder_pred", "decoder.pred", dd, p * p),
  ]
  # Channel c's stack of blocks j fills slot c of the stacked decoder.stacks.stacks.{j}.
  for c in range(ch):
    for j in range(cfg.decoder_depth):
      out += _timm_block(f"decoder.decoders.{c}.{j}", f"decoder.stacks.stacks.{j}", dd,
                         cfg.decoder_heads, dm, qkv_bias=cfg.decoder_qkv_bias, index=(c,))
  return out


def convert_openphenom(state_dict, model="camae_s16", **overrides):
  """OpenPhenom state_dict (torch tensors or arrays) -> (MAE module, model ConfigDict).

  `model` names the maejax config the checkpoint is read into (OpenPhenom = camae_s16);
  overrides change its fields (e.g. for smaller models of the same family).
  """
  cfg = models.resolve(model, **overrides)
  sd = {k: _to_numpy(v) for k, v in state_dict.items()}
  entries = openphenom_entries(cfg)
  check_keys(entries, sd, OPENPHENOM_UNUSED, source="OpenPhenom checkpoint", model_name=cfg.name)
  cfg.pos_layout = pos_layout_of(_fixed_tables(entries, sd), cfg.img_size // cfg.patch_size)
  # timm adds pos_embed row 0 to the CLS token; maejax keeps no CLS position, so fold it in.
  v = "encoder.vit_backbone"
  sd[f"{v}.cls_token"] = sd[f"{v}.cls_token"] + sd[f"{v}.pos_embed"][:, :1]
  module = _abstract_model(cfg)
  return fill_model(module, entries, sd), cfg


def _require_torch():
  try:
    import torch
  except ImportError:
    raise ImportError("reading a PyTorch checkpoint needs torch: pip install 'maejax[torch]' "
                      "(CPU build is enough)") from None
  return torch


def load_openphenom_state_dict(path):
  """Reads OpenPhenom's file (a torch pickle of {"state_dict": ...} named model.safetensors);
  a directory is searched for model.safetensors."""
  path = os.path.abspath(os.path.expanduser(path))
  if os.path.isdir(path):
    path = os.path.join(path, "model.safetensors")
  if not os.path.isfile(path):
    raise FileNotFoundError(
        f"OpenPhenom checkpoint {path} not found: download model.safetensors from Recursion's "
        f"OpenPhenom release (it is under their license; maejax never fetches it) and pass its "
        f"path with --checkpoint")
  torch = _require_torch()
  with open(path, "rb") as f:
    head = f.read(2)
    is_pickle = head == b"PK" or head[:1] == b"\x80"  # torch zip archive or legacy pickle.
    f.seek(0)
    # A file object, not the path: torch >= 2.13 reads any *.safetensors path as safetensors.
    try:
      if is_pickle:
        obj = torch.load(f, map_location="cpu", weights_only=True)
      else:
        from safetensors.torch import load_file
        obj = load_file(path)
    except Exception as e:
      raise ValueError(f"{path} could not be read as a PyTorch pickle or safetensors file: "
                       f"{e}") from None
  if isinstance(obj, dict) and "state_dict" in obj:
    obj = obj["state_dict"]
  if not isinstance(obj, dict) or not all(hasattr(v, "shape") for v in obj.values()):
    raise ValueError(f"{path} holds no state_dict of tensors (got {type(obj).__name__})")
  return dict(obj)


# -- HuggingFace ViTMAE -----------------------------------------------------------------------
HF_UNUSED = {}
HF_ZEROS_HINT = (
    ": transformers 5 skips ViTMAE's sin-cos init in a model made with "
    "ViTMAEForPreTraining(config) rather than from_pretrained, so its untrained save holds zeros; "
    "fill the tables before save_pretrained (set model.vit.embeddings.patch_embeddings.projection."
    "_is_hf_initialized = False, then call model.vit.embeddings.initialize_weights() and "
    "model.decoder.initialize_weights(num_patches)) or convert a trained checkpoint")
# transformers 5 writes the decoder layers as decoder.decoder_encoder.layer.{j}; earlier versions
# (and the Hub's facebook/vit-mae-* files) as decoder.decoder_layers.{j}, the name used here.
HF_RENAMES = ((re.compile(r"^decoder\.decoder_encoder\.layer\."), "decoder.decoder_layers."),)


def _square(value, field):
  if isinstance(value, (list, tuple)):
    if len(value) != 2 or value[0] != value[1]:
      raise ValueError(f"config.json {field}={value}: maejax takes square images and patches")
    value = value[0]
  return int(value)


def hf_model_name(width, depth, heads, mlp_dim, patch):
  """A registry-style name for a ViTMAE size: `vitb16` for a paper size, else
  `vit_w96_d3_p8` (width, depth, patch)."""
  size = next((s for s, dims in models.SIZES.items()
               if s != "tiny" and dims == (width, depth, heads, mlp_dim)), None)
  return f"vit{size}{patch}" if size else f"vit_w{width}_d{depth}_p{patch}"


def hf_model_config(hf_config):
  """HF ViTMAEConfig dict -> the maejax standard-MAE ConfigDict with the same computation.

  Every architecture field comes from the HF config (any size); the name is derived from it.
  """
  if hf_config.get("model_type", "vit_mae") != "vit_mae":
    raise ValueError(f"config.json model_type is {hf_config.get('model_type')!r}, expected "
                     f"'vit_mae' (a ViTMAEForPreTraining save_pretrained folder)")
  act = hf_config.get("hidden_act", "gelu")
  if act != "gelu":
    raise ValueError(f"config.json hidden_act={act!r}: maejax's blocks use exact GELU ('gelu')")
  g = lambda k, default: hf_config.get(k, default)
  width, depth = int(g("hidden_size", 768)), int(g("num_hidden_layers", 12))
  heads, mlp_dim = int(g("num_attention_heads", 12)), int(g("intermediate_size", 3072))
  patch = _square(g("patch_size", 16), "patch_size")
  img_size = _square(g("image_size", 224), "image_size")
  if img_size % patch:
    raise ValueError(f"config.json image_size={img_size} is not a multiple of "
                     f"patch_size={patch}")
  qkv_bias = bool(g("qkv_bias", True))
  cfg = models.base_config()
  cfg.update(dict(
      name=hf_model_name(width, depth, heads, mlp_dim, patch), kind="mae",
      channel_agnostic=False, block="prenorm", img_size=img_size, patch_size=patch,
      channels=int(g("num_channels", 3)), width=width, depth=depth, num_heads=heads,
      mlp_dim=mlp_dim, qkv_bias=qkv_bias, qk_norm=False, layerscale=None, drop_path=0.0,
      norm_eps=float(g("layer_norm_eps", 1e-12)), final_norm=True,
      decoder_width=int(g("decoder_hidden_size", 512)),
      decoder_depth=int(g("decoder_num_hidden_layers", 8)),
      decoder_heads=int(g("decoder_num_attention_heads", 16)),
      decoder_mlp_dim=int(g("decoder_intermediate_size", 2048)), decoder_qkv_bias=qkv_bias,
      mask_ratio=float(g("mask_ratio", 0.75)), norm_pix_loss=bool(g("norm_pix_loss", False))))
  return cfg


def _hf_layer(key, path, dim, heads, mlp_dim, qkv_bias):
  """One HF ViTMAELayer (separate query/key/value into maejax's fused [dim, 3, h, hd])."""
  hd = dim // heads
  out = [*_norm(f"{key}.layernorm_before", f"{path}.norm1", dim)]
  for slot, name in enumerate(("query", "key", "value")):
    k = f"{key}.attention.attention.{name}"
    # maejax's fused kernel is [dim, 3, heads, head_dim], its bias [3, heads, head_dim].
    out.append(Entry(f"{k}.weight", (dim, dim), f"{path}.attn.qkv.proj.kernel",
                     _to_heads(heads, hd), (slice(None), slot)))
    if qkv_bias:
      out.append(Entry(f"{k}.bias", (dim,), f"{path}.attn.qkv.proj.bias",
                       lambda b: b.reshape(heads, hd), (slot,)))
  out += [
      *_linear(f"{key}.attention.output.dense", f"{path}.attn.out.proj", dim, dim,
               fn=_from_heads(heads, hd)),
      *_norm(f"{key}.layernorm_after", f"{path}.norm2", dim),
      *_linear(f"{key}.intermediate.dense", f"{path}.mlp.fc1", dim, mlp_dim),
      *_linear(f"{key}.output.dense", f"{path}.mlp.fc2", mlp_dim, dim),
  ]
  return out


def hf_vitmae_entries(cfg):
  d, p, c = cfg.width, cfg.patch_size, cfg.channels
  grid, dd = cfg.img_size // p, cfg.decoder_width
  n = grid ** 2
  pos_key, dpos_key = "vit.embeddings.position_embeddings", "decoder.decoder_pos_embed"
  out = [
      Entry("vit.embeddings.cls_token", (1, 1, d), "encoder.cls_token"),
      Entry(pos_key, (1, 1 + n, d), None, lambda w: w[0, 1:]),
      Entry("vit.embeddings.patch_embeddings.projection.weight", (d, c, p, p),
            "encoder.tokenizer.proj.kernel", _conv_patch),
      Entry("vit.embeddings.patch_embeddings.projection.bias", (d,), "encoder.tokenizer.proj.bias"),
      *_norm("vit.layernorm", "encoder.norm", d),
      *_linear("decoder.decoder_embed", "decoder.embed", d, dd),
      Entry("decoder.mask_token", (1, 1, dd), "decoder.mask_token"),
      Entry(dpos_key, (1, 1 + n, dd), None, _spatial_table(dpos_key)),
      *_norm("decoder.decoder_norm", "decoder.norm", dd),
      *_linear("decoder.decoder_pred", "decoder.pred", dd, p * p * c),
  ]
  for i in range(cfg.depth):
    out += _hf_layer(f"vit.encoder.layer.{i}", f"encoder.blocks.{i}", d, cfg.num_heads,
                     cfg.mlp_dim, cfg.qkv_bias)
  for j in range(cfg.decoder_depth):
    out += _hf_layer(f"decoder.decoder_layers.{j}", f"decoder.blocks.{j}", dd,
                     cfg.decoder_heads, cfg.decoder_mlp_dim, cfg.decoder_qkv_bias)
  return out


def convert_hf_vitmae(state_dict, hf_config):
  """HF ViTMAEForPreTraining state_dict + its config dict -> (MAE module, model ConfigDict)."""
  cfg = hf_model_config(hf_config)
  sd = {}
  for key, value in state_dict.items():
    for pattern, new in HF_RENAMES:
      key = pattern.sub(new, key)
    sd[key] = _to_numpy(value)
  entries = hf_vitmae_entries(cfg)
  check_keys(entries, sd, HF_UNUSED, source="HF ViTMAE checkpoint", model_name=cfg.name)
  cfg.pos_layout = pos_layout_of(_fixed_tables(entries, sd), cfg.img_size // cfg.patch_size,
                                 HF_ZEROS_HINT)
  # HF adds position row 0 to the CLS token; maejax keeps no CLS position, so fold it in.
  sd["vit.embeddings.cls_token"] = (sd["vit.embeddings.cls_token"]
                                    + sd["vit.embeddings.position_embeddings"][:, :1])
  module = _abstract_model(cfg)
  return fill_model(module, entries, sd), cfg


def load_hf_vitmae(directory):
  """A `save_pretrained` folder -> (state_dict of NumPy arrays, config dict)."""
  directory = os.path.abspath(os.path.expanduser(directory))
  if not os.path.isdir(directory):
    raise FileNotFoundError(f"HF checkpoint folder {directory} not found: pass the directory "
                            f"written by ViTMAEForPreTraining.save_pretrained")
  config_path = os.path.join(directory, "config.json")
  if not os.path.isfile(config_path):
    raise FileNotFoundError(f"{config_path} not found: a save_pretrained folder has config.json")
  with open(config_path) as f:
    hf_config = json.load(f)
  files = [os.path.join(directory, f) for f in ("model.safetensors", "pytorch_model.bin")]
  index = os.path.join(directory, "model.safetensors.index.json")
  if os.path.isfile(index):
    with open(index) as f:
      files = sorted({os.path.join(directory, v) for v in json.load(f)["weight_map"].values()})
  else:
    files = [f for f in files if os.path.isfile(f)][:1]
  if not files:
    raise FileNotFoundError(f"no weights in {directory}: expected model.safetensors, "
                            f"model.safetensors.index.json or pytorch_model.bin")
  state_dict = {}
  for path in files:
    if path.endswith(".safetensors"):
      from safetensors.torch import load_file
      _require_torch()
      state_dict.update(load_file(path))
    else:
      state_dict.update(_require_torch().load(path, map_location="cpu", weights_only=True))
  return state_dict, hf_config


# -- writing and the command line -------------------------------------------------------------
def save(model, model_config, out_dir, source):
  """Writes a `maejax.load`-able directory (config.json with the model config + state)."""
  config = ml_collections.ConfigDict({"model": model_config.to_dict(), "source": source})
  return api.save_pretrained(model, config, out_dir)


def count_params(model):
  return int(sum(x.size for x in jax.tree.leaves(nnx.state(model, nnx.Param))))
