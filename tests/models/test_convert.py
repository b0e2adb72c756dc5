"""Weight importers: numerical parity with PyTorch evaluations of the same weights.

OpenPhenom: random weights in the released checkpoint's layout, evaluated by an independent
PyTorch implementation of the documented computation (maejax/cli/torch_reference.py), in float64.
HF ViTMAE: `transformers`' own ViTMAEForPreTraining (float64) on a small random config of a
size no registered model has (width 96, 3 layers, 8x8 patches, 4 channels, 64x64 pixels).
Relative error = max |maejax - torch| / max |torch|; tolerance 1e-4 (float32).
"""

import json
import warnings

import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

torch = pytest.importorskip("torch", reason="torch (the maejax[torch] extra) reads checkpoints")
transformers = pytest.importorskip(
    "transformers", reason="transformers (the maejax[torch] extra) is the HF ViTMAE reference")

import maejax  # noqa: E402
from maejax import convert  # noqa: E402
from maejax.cli import convert as convert_cli  # noqa: E402
from maejax.models.mae import random_masking  # noqa: E402
from maejax.cli.torch_reference import OpenPhenomReference, sincos_table  # noqa: E402

TOL = 1e-4
# OpenPhenom's family at tiny size: 16x16 patches on 32x32 images (4 patches per channel).
OP_SIZES = dict(img_size=32, patch_size=16, width=64, depth=2, num_heads=4, mlp_dim=256,
                max_channels=11, decoder_channels=6, decoder_width=64, decoder_depth=2,
                decoder_heads=4, decoder_cross_heads=2, decoder_mlp_dim=128, layerscale=1e-4,
                drop_path=0.0)
REF_SIZES = dict(width=64, depth=2, heads=4, mlp_dim=256, patch=16, img=32, max_channels=11,
                 channels=6, dec_width=64, dec_depth=2, dec_heads=4, dec_cross_heads=2,
                 dec_mlp_dim=128)


# Jitted once per shape: a few small compiles beat op-by-op dispatch of the whole model.
embed = nnx.jit(lambda model, images, pool: model.embed(images, pool=pool), static_argnums=2)
reconstruct = nnx.jit(lambda model, images, noise: model.reconstruct(images, None, noise=noise))
forward = nnx.jit(lambda model, images, noise: model.forward(images, noise=noise, train=False))
encode_kept = nnx.jit(lambda model, images, noise: model.encoder(
    random_masking(model.encoder.tokenize(images), 0.75, noise=noise)[0]))


def rel_err(ours, ref):
  ref = np.asarray(ref, np.float64)
  return float(np.abs(np.asarray(ours, np.float64) - ref).max() / np.abs(ref).max())


def uint8_images(shape, seed=0):
  return np.random.default_rng(seed).integers(0, 256, shape, dtype=np.uint8)


def to_torch(images):
  """uint8 [b, H, W, c] -> torch [b, c, H, W]."""
  return torch.from_numpy(images).permute(0, 3, 1, 2).contiguous()


def quiet(fn, *args, **kw):
  with warnings.catch_warnings():
    warnings.simplefilter("ignore", UserWarning)
    return fn(*args, **kw)


# -- OpenPhenom ---------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def openphenom():
  """(float32 state_dict, float64 torch reference, converted maejax model)."""
  ref = OpenPhenomReference(**REF_SIZES).randomize(seed=0)
  state_dict = {k: v.clone() for k, v in ref.state_dict().items()}
  model, cfg = quiet(convert.convert_openphenom, state_dict, "camae_s16", **OP_SIZES)
  return state_dict, ref.double().eval(), model


@pytest.mark.parametrize("channels", [6, 3])
def test_openphenom_embeddings_match_torch(openphenom, channels):
  _, ref, model = openphenom
  images = uint8_images((2, 32, 32, channels), seed=channels)
  with torch.no_grad():
    mean_ref = ref.embed(to_torch(images)).numpy()
    chw_ref = ref.embed(to_torch(images), channelwise=True).numpy()
  mean = embed(model, jnp.asarray(images), "mean")
  chw = embed(model, jnp.asarray(images), "channelwise")
  assert mean.shape == (2, 64) and chw.shape == (2, 64 * channels)
  assert rel_err(mean, mean_ref) < TOL
  assert rel_err(chw, chw_ref) < TOL


def test_openphenom_reconstruction_matches_torch(openphenom):
  _, ref, model = openphenom
  images = uint8_images((2, 32, 32, 6), seed=1)
  noise = torch.rand(2, 6 * 4, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
  with torch.no_grad():
    pred_ref, mask_ref, target_ref = ref.reconstruct(to_torch(images), noise, mask_ratio=0.75)
  out = reconstruct(model, jnp.asarray(images), jnp.asarray(noise.numpy(), jnp.float32))
  # mask image [b, H, W, c] -> per token [b, c*n] (channel-major, one pixel per 16x16 patch).
  mask_tokens = np.asarray(out["mask"])[:, ::16, ::16, :].transpose(0, 3, 1, 2).reshape(2, -1)
  np.testing.assert_array_equal(mask_tokens, mask_ref.numpy())
  assert mask_tokens.sum(1).tolist() == [18, 18]
  assert rel_err(out["target"], target_ref.permute(0, 2, 3, 1).numpy()) < TOL
  assert rel_err(out["pred"], pred_ref.permute(0, 2, 3, 1).numpy()) < TOL


def test_openphenom_cli_writes_a_loadable_checkpoint(openphenom, tmp_path, capsys):
  state_dict, ref, _ = openphenom
  # The released file: a torch pickle of {"state_dict": ...} named model.safetensors.
  ckpt = tmp_path / "model.safetensors"
  torch.save({"state_dict": state_dict}, ckpt)
  sets = [f"--config.model.{k}={tuple(v) if isinstance(v, list) else v}"
          for k, v in OP_SIZES.items()]
  assert convert_cli.main(["openphenom", "--checkpoint", str(ckpt), "--out",
                           str(tmp_path / "out"), *sets, "--json"]) == 0
  captured = capsys.readouterr()
  summary = json.loads(captured.out.strip().splitlines()[-1])
  assert summary["params"] == convert.count_params(maejax.load(tmp_path / "out").module)
  assert "fc_norm" in captured.err and "decoder.placeholder" in captured.err
  images = uint8_images((3, 32, 32, 5), seed=2)
  with torch.no_grad():
    expected = ref.embed(to_torch(images)).numpy()
  assert rel_err(maejax.load(tmp_path / "out").embed(images, batch_size=2), expected) < TOL


def test_openphenom_warns_about_unused_tensors(openphenom):
  state_dict, _, _ = openphenom
  with pytest.warns(UserWarning, match=r"fc_norm\.weight .*fc_norm is not applied"):
    convert.convert_openphenom(state_dict, "camae_s16", **OP_SIZES)


def test_openphenom_errors_name_the_tensor(openphenom):
  state_dict, _, _ = openphenom
  key = "encoder.vit_backbone.blocks.1.in_proj.weight"
  missing = {k: v for k, v in state_dict.items() if k != key}
  with pytest.raises(ValueError, match=rf"missing: {key}"):
    quiet(convert.convert_openphenom, missing, "camae_s16", **OP_SIZES)
  extra = {**state_dict, "encoder.vit_backbone.head.weight": torch.zeros(3, 64)}
  with pytest.raises(ValueError, match=r"unexpected .*encoder\.vit_backbone\.head\.weight"):
    quiet(convert.convert_openphenom, extra, "camae_s16", **OP_SIZES)
  # A width-384 config against width-64 weights: the error names the tensor and both shapes.
  with pytest.raises(ValueError, match=r"encoder\.vit_backbone\.cls_token has shape \(1, 1, 64\), "
                                       r"but model 'camae_s16' expects \(1, 1, 384\)"):
    quiet(convert.convert_openphenom, state_dict, "camae_s16", **{**OP_SIZES, "width": 384})
  # A config part the checkpoint lacks is also an error, not a silently random parameter.
  with pytest.raises(ValueError, match=r"qkv\.proj\.bias"):
    quiet(convert.convert_openphenom, state_dict, "camae_s16", **OP_SIZES, qkv_bias=True)


def test_openphenom_rejects_per_channel_positions(openphenom):
  state_dict, _, _ = openphenom
  pos = state_dict["encoder.vit_backbone.pos_embed"].clone()
  pos[0, 1 + 4 * 3] += 1.0  # channel 3's first patch position differs from channel 0's.
  bad = {**state_dict, "encoder.vit_backbone.pos_embed": pos}
  with pytest.raises(ValueError, match=r"pos_embed.*channel 3"):
    quiet(convert.convert_openphenom, bad, "camae_s16", **OP_SIZES)


def test_missing_files_are_clear_errors(tmp_path, capsys):
  with pytest.raises(FileNotFoundError, match="nope.safetensors"):
    convert.load_openphenom_state_dict(tmp_path / "nope.safetensors")
  with pytest.raises(FileNotFoundError, match="not found"):
    convert.load_hf_vitmae(tmp_path / "absent")
  with pytest.raises(FileNotFoundError, match="config.json"):
    convert.load_hf_vitmae(tmp_path)
  (tmp_path / "config.json").write_text(json.dumps({"model_type": "vit_mae"}))
  with pytest.raises(FileNotFoundError, match="model.safetensors"):
    convert.load_hf_vitmae(tmp_path)
  code = convert_cli.main(["openphenom", "--checkpoint", str(tmp_path / "x.pt"), "--out",
                           str(tmp_path)])
  assert code == 2 and "x.pt not found" in capsys.readouterr().err


# -- HuggingFace ViTMAE -------------------------------------------------------------------------
HF_IMG, HF_CH, HF_GRID = 64, 4, 8
@pytest.fixture(scope="module")
def hf_vitmae(tmp_path_factory):
  """(save_pretrained folder, float64 HF model, converted maejax model)."""
  torch.manual_seed(0)
  config = transformers.ViTMAEConfig(
      hidden_size=96, num_hidden_layers=3, num_attention_heads=4, intermediate_size=192,
      image_size=HF_IMG, patch_size=8, num_channels=HF_CH, decoder_hidden_size=32,
      decoder_num_hidden_layers=2, decoder_num_attention_heads=4, decoder_intermediate_size=64,
      mask_ratio=0.75)
  hf = transformers.ViTMAEForPreTraining(config).eval()
  with torch.no_grad():  # Move every tensor far from its init (which leaves the tables zero
    for p in hf.parameters():  # in transformers 5), so the importer's layout is exercised.
      p.add_(0.3 * torch.randn_like(p))
    # Fixed sin-cos tables, as HF's own init and released checkpoints hold (a random encoder
    # CLS row, which the importer folds into the CLS token); zero decoder CLS row (maejax has
    # no decoder CLS position).
    hf.vit.embeddings.position_embeddings[0, 1:] = torch.from_numpy(sincos_table(HF_GRID, 96))
    hf.decoder.decoder_pos_embed[0, 1:] = torch.from_numpy(sincos_table(HF_GRID, 32))
    hf.decoder.decoder_pos_embed[:, 0] = 0.0
  folder = tmp_path_factory.mktemp("hf_vitmae")
  hf.save_pretrained(folder)
  model, _ = convert.convert_hf_vitmae(*convert.load_hf_vitmae(folder))
  return folder, hf.double(), model


def standardized(images):
  """NumPy reference of the model's input standardization -> torch float64 [b, c, H, W]."""
  x = images / 255.0
  x = (x - x.mean((1, 2), keepdims=True)) / np.sqrt(x.var((1, 2), keepdims=True) + 1e-5)
  return torch.from_numpy(x).permute(0, 3, 1, 2).contiguous()


def test_hf_vitmae_encoder_and_reconstruction_match(hf_vitmae):
  _, hf, model = hf_vitmae
  images = uint8_images((2, HF_IMG, HF_IMG, HF_CH), seed=3)
  noise = torch.rand(2, HF_GRID ** 2, generator=torch.Generator().manual_seed(3),
                     dtype=torch.float64)
  with torch.no_grad():
    out = hf(standardized(images), noise=noise)
    hidden = hf.vit(standardized(images), noise=noise).last_hidden_state.numpy()
  noise_j = jnp.asarray(noise.numpy(), jnp.float32)
  assert rel_err(encode_kept(model, jnp.asarray(images), noise_j), hidden) < TOL
  ours = forward(model, jnp.asarray(images), noise_j)
  np.testing.assert_array_equal(np.asarray(ours["mask"]), out.mask.numpy())
  assert rel_err(ours["pred"], out.logits.numpy()) < TOL
  recon = reconstruct(model, jnp.asarray(images), noise_j)
  with torch.no_grad():
    ref_image = hf.unpatchify(out.logits).permute(0, 2, 3, 1).numpy()
  assert rel_err(recon["pred"], ref_image) < TOL


def test_hf_vitmae_cli_embeddings_match_unmasked_encoder(hf_vitmae, tmp_path, monkeypatch,
                                                          capsys):
  folder, hf, _ = hf_vitmae
  assert convert_cli.main(["hf-vitmae", "--checkpoint", str(folder), "--out", str(tmp_path),
                           "--json"]) == 0
  summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
  assert summary["warnings"] == []
  assert summary["model"] == "vit_w96_d3_p8"  # Derived from config.json: no registered size.
  images = uint8_images((2, HF_IMG, HF_IMG, HF_CH), seed=4)
  # HF always masks: mask_ratio 0 with increasing noise keeps every token in order.
  monkeypatch.setattr(hf.config, "mask_ratio", 0.0)
  noise = torch.arange(HF_GRID ** 2, dtype=torch.float64).expand(2, HF_GRID ** 2)
  with torch.no_grad():
    hidden = hf.vit(standardized(images), noise=noise).last_hidden_state.numpy()
  loaded = maejax.load(tmp_path)
  assert rel_err(loaded.embed(images, pool="cls"), hidden[:, 0]) < TOL
  assert rel_err(loaded.embed(images, pool="mean"), hidden[:, 1:].mean(1)) < TOL


def test_imported_position_tables_must_equal_maejax_sincos(openphenom, hf_vitmae):
  """maejax computes its sin-cos positions, so a stored table is checked, not loaded: the
  fixtures' tables (the reference's sin-cos, written independently) import; a table of another
  layout (rows and columns swapped) is an error naming the tensor."""
  state_dict, _, _ = openphenom
  for key in ("encoder.vit_backbone.pos_embed", "decoder.pos_embeddings"):
    pos = state_dict[key].clone()
    tiles = pos[0, 1:].reshape(-1, 2, 2, pos.shape[-1])  # [channels, rows, cols, d]
    pos[0, 1:] = tiles.transpose(1, 2).reshape(-1, pos.shape[-1])
    with pytest.raises(ValueError, match=rf"{key}: the positional table is not maejax's"):
      quiet(convert.convert_openphenom, {**state_dict, key: pos}, "camae_s16", **OP_SIZES)
  folder, _, _ = hf_vitmae
  hf_state, config = convert.load_hf_vitmae(folder)
  key = "vit.embeddings.position_embeddings"
  pos = hf_state[key].clone()
  grid = pos[0, 1:].reshape(HF_GRID, HF_GRID, -1)
  pos[0, 1:] = grid.transpose(0, 1).reshape(HF_GRID ** 2, -1)
  with pytest.raises(ValueError, match=rf"{key}: the positional table is not maejax's"):
    convert.convert_hf_vitmae({**hf_state, key: pos}, config)


def test_hf_vitmae_rejects_a_nonzero_decoder_cls_position(hf_vitmae):
  folder, _, _ = hf_vitmae
  state_dict, config = convert.load_hf_vitmae(folder)
  state_dict["decoder.decoder_pos_embed"] = state_dict["decoder.decoder_pos_embed"].clone()
  state_dict["decoder.decoder_pos_embed"][0, 0] = 0.5
  with pytest.raises(ValueError, match=r"decoder_pos_embed: row 0"):
    convert.convert_hf_vitmae(state_dict, config)
  with pytest.raises(ValueError, match=r"hidden_act='relu'"):
    convert.convert_hf_vitmae(state_dict, {**config, "hidden_act": "relu"})
  with pytest.raises(ValueError, match=r"patch_size=\[8, 4\]: maejax takes square"):
    convert.convert_hf_vitmae(state_dict, {**config, "patch_size": [8, 4]})
  with pytest.raises(ValueError, match=r"image_size=60 is not a multiple of patch_size=8"):
    convert.convert_hf_vitmae(state_dict, {**config, "image_size": 60})


@pytest.mark.parametrize("dims,name", [((768, 12, 12, 3072, 16), "vitb16"),
                                       ((1280, 32, 16, 5120, 14), "vit_w1280_d32_p14")])
def test_hf_model_config_takes_any_size(dims, name):
  width, depth, heads, mlp, patch = dims
  cfg = convert.hf_model_config(dict(hidden_size=width, num_hidden_layers=depth,
                                     num_attention_heads=heads, intermediate_size=mlp,
                                     patch_size=patch, image_size=224, num_channels=3))
  assert (cfg.name, cfg.width, cfg.depth, cfg.num_heads, cfg.patch_size) == (
      name, width, depth, heads, patch)
  assert maejax.models.resolve(cfg.to_dict()).to_dict() == cfg.to_dict()  # How load reads it.
