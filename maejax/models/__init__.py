"""Model registry: short names (`vits16`, `camae_s16`, ...) -> ConfigDicts -> NNX modules.

`create(config_or_name, rngs=...)` builds any registered model. A model config is a ConfigDict
with `name`, `kind` (one of `KINDS`) and the architecture fields below; unknown fields are an
error.
"""

from __future__ import annotations

import ml_collections
from flax import nnx

from maejax.models.classifier import CNNClassifier, ViTClassifier
from maejax.models.mae import MAE
from maejax.models.munet import MUNet

# (width, depth, num_heads, mlp_dim) of the encoder sizes used in the paper.
SIZES = {
    "tiny": (64, 2, 4, 256),
    "s": (384, 12, 6, 1536),
    "b": (768, 12, 12, 3072),
    "l": (1024, 24, 16, 4096),
    "g": (1664, 48, 16, 8192),
}


def base_config():
  """Every field a ViT-MAE / CA-MAE config has, with the paper's defaults (ViT-S/16)."""
  return ml_collections.ConfigDict(dict(
      name="vits16", kind="mae", channel_agnostic=False,
      img_size=256, patch_size=16, channels=6, max_channels=11, decoder_channels=6,
      width=384, depth=12, num_heads=6, mlp_dim=1536,
      block="prenorm", qkv_bias=False, qk_norm=True, layerscale=1e-4, drop_path=0.1,
      norm_eps=1e-6, final_norm=True,
      # Which half of the fixed sin-cos positions encodes the column (tokenizers.POS_LAYOUTS):
      # "row_first" for OpenPhenom's weights (set by maejax.convert). A config.json written
      # before this field existed means "column_first": see maejax/convert's pos_layout_of.
      pos_layout="column_first",
      decoder_width=512, decoder_depth=8, decoder_heads=16, decoder_mlp_dim=2048,
      decoder_cross_heads=8, decoder_qkv_bias=True,
      mask_ratio=0.75, norm_pix_loss=False, fourier_weight=0.0,
      # Blocks run as one lax.scan: one compiled block body instead of 12-48, and on XLA:CPU
      # a 1.5x faster ViT-S/16 train step than the Python loop (whose unrolled backward
      # pass XLA fuses into chains that recompute the residual stream's gradient per block).
      # remat=None: the platform's default (maejax.models.stack.resolve_remat).
      dtype="float32", remat=None, remat_policy="full", scan_layers=True,
  ))


def _vit(name, size, patch, **kw):
  cfg = base_config()
  width, depth, heads, mlp = SIZES[size]
  large = size in ("l", "g")
  fields = dict(name=name, width=width, depth=depth, num_heads=heads, mlp_dim=mlp,
                patch_size=patch, drop_path=0.3 if large else 0.1)
  cfg.update({**fields, **kw})
  return cfg


def _camae(name, size, patch, **kw):
  # Recursion's channel-agnostic recipe (OpenPhenom): parallel blocks, QK-norm, LayerScale,
  # no final norm under global average pooling.
  return _vit(name, size, patch, kind="mae", channel_agnostic=True, block="parallel",
              final_norm=False, **kw)


def _munet(name, widths, depth, **kw):
  """Masked U-Net config (maejax/models/munet.py); `widths` per level, `depth` blocks each."""
  return ml_collections.ConfigDict({**dict(
      name=name, kind="munet", img_size=256, patch_size=16, channels=6,
      widths=tuple(widths), depth=depth, groups=32,
      mask_ratio=0.75, fourier_weight=0.0, dtype="float32", remat=False,
      remat_policy="full"), **kw})


def _wsl_cnn(name, stage_sizes, widths, *, bottleneck, **kw):
  """Weakly supervised ResNet classifier config (maejax/models/classifier.py)."""
  return ml_collections.ConfigDict({**dict(
      name=name, kind="wsl_cnn", img_size=256, channels=6, num_classes=1139,
      label_smoothing=0.1, stage_sizes=tuple(stage_sizes), widths=tuple(widths),
      bottleneck=bottleneck, stem_width=64, stem_kernel=7, stem_stride=2, stem_pool=True,
      groups=32, dtype="float32", remat=False, remat_policy="full"), **kw})


# The ViT-MAE fields a plain ViT encoder reads (maejax.models.vit.Encoder, check_images).
_ENCODER_FIELDS = ("img_size", "patch_size", "channels", "channel_agnostic", "max_channels",
                   "width", "depth", "num_heads", "mlp_dim", "block", "qkv_bias", "qk_norm",
                   "layerscale", "drop_path", "norm_eps", "final_norm", "pos_layout", "dtype",
                   "remat", "remat_policy", "scan_layers")


def _wsl_vit(name, size, patch, **kw):
  """Weakly supervised ViT classifier config: a ViT encoder's fields plus the head's."""
  vit = _vit(name, size, patch)
  cfg = {k: vit[k] for k in _ENCODER_FIELDS}
  return ml_collections.ConfigDict({**cfg, **dict(
      name=name, kind="wsl_vit", num_classes=1139, label_smoothing=0.1, pool="mean"), **kw})


# Two blocks and one: a loop compiles faster than a scan (the demo's step 6.8 s against 9.3 s)
# and runs as fast, so the demo and the tests use it.
_TINY = dict(img_size=32, patch_size=8, decoder_width=64, decoder_depth=1, decoder_heads=4,
             decoder_mlp_dim=128, decoder_cross_heads=4, drop_path=0.0, layerscale=None,
             scan_layers=False)

REGISTRY = {
    "vits16": lambda: _vit("vits16", "s", 16),
    "vitb16": lambda: _vit("vitb16", "b", 16),
    "vitb8": lambda: _vit("vitb8", "b", 8),
    "vitl16": lambda: _vit("vitl16", "l", 16),
    "vitl8": lambda: _vit("vitl8", "l", 8),
    "vitg8": lambda: _vit("vitg8", "g", 8),
    "camae_s16": lambda: _camae("camae_s16", "s", 16),
    "camae_b16": lambda: _camae("camae_b16", "b", 16),
    "camae_l16": lambda: _camae("camae_l16", "l", 16),
    "vit_tiny": lambda: _vit("vit_tiny", "tiny", 8, **_TINY),
    "camae_tiny": lambda: _camae("camae_tiny", "tiny", 8, **_TINY),
    "munet_m": lambda: _munet("munet_m", (32, 64, 128, 256, 576), 2),
    "munet_l": lambda: _munet("munet_l", (64, 128, 256, 512, 1152), 2),
    "munet_tiny": lambda: _munet("munet_tiny", (16, 32), 1, img_size=32, patch_size=8,
                                 groups=8),
    "wsl_resnet50": lambda: _wsl_cnn("wsl_resnet50", (3, 4, 6, 3), (64, 128, 256, 512),
                                     bottleneck=True),
    "wsl_resnet18": lambda: _wsl_cnn("wsl_resnet18", (2, 2, 2, 2), (64, 128, 256, 512),
                                     bottleneck=False),
    "wsl_vits16": lambda: _wsl_vit("wsl_vits16", "s", 16),
    "wsl_vitb16": lambda: _wsl_vit("wsl_vitb16", "b", 16),
    "wsl_tiny_cnn": lambda: _wsl_cnn("wsl_tiny_cnn", (1, 1), (16, 32), bottleneck=False,
                                     img_size=32, num_classes=4, stem_width=16, stem_kernel=3,
                                     stem_stride=1, stem_pool=False, groups=8),
    "wsl_tiny_vit": lambda: _wsl_vit("wsl_tiny_vit", "tiny", 8, img_size=32, num_classes=4,
                                     drop_path=0.0, layerscale=None, scan_layers=False),
}

# kind -> module class.
KINDS = {"mae": MAE, "munet": MUNet, "wsl_cnn": CNNClassifier, "wsl_vit": ViTClassifier}


def get_config(name, **overrides):
  """The registered ConfigDict for `name`, with field overrides applied."""
  if name not in REGISTRY:
    raise ValueError(f"unknown model {name!r}; registered: {', '.join(sorted(REGISTRY))}")
  return _override(REGISTRY[name](), overrides)


def _override(cfg, overrides):
  for k, v in overrides.items():
    if k not in cfg:
      raise ValueError(f"model {cfg.name!r} has no field {k!r}; fields: "
                       f"{', '.join(sorted(cfg))}")
    cfg[k] = v
  return cfg


def resolve(config_or_name, **overrides):
  """A full model ConfigDict from a name, or from a partial config with a `name` field."""
  if isinstance(config_or_name, str):
    return get_config(config_or_name, **overrides)
  partial = dict(config_or_name)
  name = partial.pop("name", None)
  if name is None:
    raise ValueError("model config needs a `name` field (a registered model, e.g. 'vits16')")
  if name not in REGISTRY and partial.get("kind") == "mae":
    # An unregistered MAE size (e.g. an imported HF ViTMAE): its fields on base_config().
    cfg = base_config()
    cfg.name = name
    return _override(cfg, {**partial, **overrides})
  return get_config(name, **{**partial, **overrides})


def pools(config) -> tuple[str, ...]:
  """The poolings `embed(pool=...)` of the model of `config` takes (its class's POOLS; each
  channel's tokens, "channelwise", only with channel-agnostic tokens)."""
  return tuple(p for p in KINDS[config.kind].POOLS
               if p != "channelwise" or config.get("channel_agnostic"))


def create(config_or_name, *, rngs=None, **overrides):
  """Builds a registered model with plain (unsharded) parameter arrays.

  Parameters carry logical axis names as metadata, but eager sharding is always off here, mesh
  or not: callers place the state on a mesh themselves (maejax.train.state shards it by rules).
  """
  cfg = ml_collections.FrozenConfigDict(resolve(config_or_name, **overrides))
  if cfg.kind not in KINDS:
    raise ValueError(f"no model class for kind {cfg.kind!r}; kinds: {', '.join(KINDS)}")
  with nnx.use_eager_sharding(False):
    return KINDS[cfg.kind](cfg, rngs=rngs if rngs is not None else nnx.Rngs(0))
