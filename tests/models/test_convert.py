"""Weight importers: numerical parity with PyTorch evaluations of the same weights, whose
position tables come from the other projects, never from maejax.

OpenPhenom: random weights in the released checkpoint's layout (widths 384 and 512, 16x16
patches, shallow), with the position tables Recursion's own code builds
(../shared/reference/openphenom_pos_tables.npz; cut to a 4x4 grid of 64x64 images for speed, and
whole at 256x256 once), loaded into an independent PyTorch implementation of the documented
computation (maejax/cli/torch_reference.py) from the same state_dict, evaluated in float64.
HF ViTMAE: `transformers`' own ViTMAEForPreTraining (float64) on a small random config of a
size no registered model has (width 96, 3 layers, 8x8 patches, 4 channels, 64x64 pixels), its
tables filled by transformers' own init.
Relative error = max |maejax - torch| / max |torch|; tolerance 1e-5 (float32).
"""

import json
import warnings
from pathlib import Path

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
from maejax.cli.torch_reference import OpenPhenomReference, init_vitmae_positions  # noqa: E402

TOL = 1e-5
GOLDEN = (Path(__file__).resolve().parents[2] / ".." / "shared" / "reference"
          / "openphenom_pos_tables.npz")
ENC_POS, DEC_POS = "encoder.vit_backbone.pos_embed", "decoder.pos_embeddings"
# OpenPhenom's widths and patches (those of the golden tables), two encoder blocks, one
# decoder block per channel, 64x64 images (a 4x4 grid).
OP_SIZES = dict(img_size=64, patch_size=16, width=384, depth=2, num_heads=6, mlp_dim=768,
                max_channels=11, decoder_channels=6, decoder_width=512, decoder_depth=1,
                decoder_heads=8, decoder_cross_heads=8, decoder_mlp_dim=1024, layerscale=1e-4,
                drop_path=0.0)
REF_SIZES = dict(width=384, depth=2, heads=6, mlp_dim=768, patch=16, img=64, max_channels=11,
                 channels=6, dec_width=512, dec_depth=1, dec_heads=8, dec_cross_heads=8,
                 dec_mlp_dim=1024)
GRID, N = 4, 16  # Patches per side and per channel.


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


def swap_halves(table):
  """[..., d] -> the other layout: Recursion's rows are [row half | column half], Facebook
  MAE's and HF's [column half | row half] (../shared/reference/openphenom.md)."""
  half = table.shape[-1] // 2
  return torch.cat([table[..., half:], table[..., :half]], dim=-1)


# -- OpenPhenom ---------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def golden():
  """Recursion's own OpenPhenom tables: encoder [1, 1 + 11*256, 384], decoder [1, 1 + 6*256, 512]."""
  if not GOLDEN.is_file():
    pytest.skip(f"OpenPhenom's golden position tables not found at {GOLDEN} "
                "(../shared/reference beside the repository)")
  with np.load(GOLDEN) as z:
    return {ENC_POS: torch.from_numpy(z["encoder_pos_embed"]),
            DEC_POS: torch.from_numpy(z["decoder_pos_embeddings"])}


def cut(table, grid):
  """Recursion's table [1, 1 + k*256, d] of a 16x16 grid -> the one of a grid x grid grid,
  [1, 1 + k*grid*grid, d]: patch (h, w)'s entries depend on h, w and d only (openphenom.md),
  so they are the 16x16 table's rows of h, w < grid, in each channel's tile."""
  d = table.shape[-1]
  tiles = table[0, 1:].reshape(-1, 16, 16, d)[:, :grid, :grid].reshape(1, -1, d)
  return torch.cat([table[:, :1], tiles], dim=1)


def openphenom_checkpoint(tables, seed=0, **sizes):
  """(state_dict with `tables` {key: table}, the reference that loaded it)."""
  ref = OpenPhenomReference(**{**REF_SIZES, **sizes}).randomize(seed=seed)
  state_dict = {k: v.clone() for k, v in ref.state_dict().items()}
  state_dict.update({k: v.clone() for k, v in tables.items()})
  # A non-zero encoder CLS position (Recursion's is zero), which the importer must fold into
  # the CLS token.
  state_dict[ENC_POS][0, 0] = 0.3 * torch.randn(384, generator=torch.Generator().manual_seed(0))
  ref.load_state_dict(state_dict)  # The reference's positions come from the checkpoint.
  return state_dict, ref.double().eval()


@pytest.fixture(scope="module")
def openphenom(golden):
  """(float32 state_dict, float64 torch reference, converted maejax model)."""
  state_dict, ref = openphenom_checkpoint({k: cut(v, GRID) for k, v in golden.items()})
  model, cfg = quiet(convert.convert_openphenom, state_dict, "camae_s16", **OP_SIZES)
  assert cfg.pos_layout == "row_first"
  return state_dict, ref, model


def test_openphenom_whole_golden_tables_import_at_256_pixels(golden):
  state_dict, ref = openphenom_checkpoint(golden, seed=1, img=256, depth=1)
  model, cfg = quiet(convert.convert_openphenom, state_dict, "camae_s16",
                     **{**OP_SIZES, "img_size": 256, "depth": 1})
  assert cfg.pos_layout == "row_first"
  images = uint8_images((1, 256, 256, 6), seed=5)
  with torch.no_grad():
    expected = ref.embed(to_torch(images)).numpy()
  assert rel_err(embed(model, jnp.asarray(images), "mean"), expected) < TOL


@pytest.mark.parametrize("channels", [(0, 1, 2, 3, 4, 5), (0, 2, 3, 5)])
def test_openphenom_embeddings_match_torch(openphenom, channels):
  _, ref, model = openphenom
  images = uint8_images((2, 64, 64, 6), seed=len(channels))[..., list(channels)]
  with torch.no_grad():
    mean_ref = ref.embed(to_torch(images)).numpy()
    chw_ref = ref.embed(to_torch(images), channelwise=True).numpy()
  mean = embed(model, jnp.asarray(images), "mean")
  chw = embed(model, jnp.asarray(images), "channelwise")
  assert mean.shape == (2, 384) and chw.shape == (2, 384 * len(channels))
  assert rel_err(mean, mean_ref) < TOL
  assert rel_err(chw, chw_ref) < TOL


def test_openphenom_reconstruction_matches_torch(openphenom):
  _, ref, model = openphenom
  images = uint8_images((2, 64, 64, 6), seed=1)
  noise = torch.rand(2, 6 * N, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
  with torch.no_grad():
    pred_ref, mask_ref, target_ref = ref.reconstruct(to_torch(images), noise, mask_ratio=0.75)
  out = reconstruct(model, jnp.asarray(images), jnp.asarray(noise.numpy(), jnp.float32))
  # mask image [b, H, W, c] -> per token [b, c*n] (channel-major, one pixel per 16x16 patch).
  mask_tokens = np.asarray(out["mask"])[:, ::16, ::16, :].transpose(0, 3, 1, 2).reshape(2, -1)
  np.testing.assert_array_equal(mask_tokens, mask_ref.numpy())
  assert mask_tokens.sum(1).tolist() == [6 * N * 3 // 4] * 2
  assert rel_err(out["target"], target_ref.permute(0, 2, 3, 1).numpy()) < TOL
  assert rel_err(out["pred"], pred_ref.permute(0, 2, 3, 1).numpy()) < TOL


def test_openphenom_cli_writes_a_loadable_checkpoint(openphenom, tmp_path, capsys):
  state_dict, ref, _ = openphenom
  # The released file: a torch pickle of {"state_dict": ...} named model.safetensors.
  ckpt = tmp_path / "model.safetensors"
  torch.save({"state_dict": state_dict}, ckpt)
  sets = [f"--config.model.{k}={v}" for k, v in OP_SIZES.items()]
  assert convert_cli.main(["openphenom", "--checkpoint", str(ckpt), "--out",
                           str(tmp_path / "out"), *sets, "--json"]) == 0
  captured = capsys.readouterr()
  summary = json.loads(captured.out.strip().splitlines()[-1])
  loaded = maejax.load(tmp_path / "out")
  assert summary["params"] == convert.count_params(loaded.module)
  assert summary["pos_layout"] == loaded.config.model.pos_layout == "row_first"
  assert "fc_norm" in captured.err and "decoder.placeholder" in captured.err
  images = uint8_images((3, 64, 64, 11), seed=2)  # Up to the 11 channels the encoder takes.
  for channels, pool in [(range(6), "mean"), (range(6), "channelwise"), ((1, 2, 4, 5), "mean"),
                         (range(11), "mean")]:
    x = images[..., list(channels)]
    with torch.no_grad():
      expected = ref.embed(to_torch(x), channelwise=pool == "channelwise").numpy()
    assert rel_err(loaded.embed(x, batch_size=2, pool=pool), expected) < TOL, (channels, pool)


@pytest.mark.parametrize("max_channels", [1, 7, 11])
def test_openphenom_layout_is_read_from_the_tables(openphenom, max_channels):
  """Recursion's tables import as row_first, the same tables in MAE's layout as column_first,
  for any number of encoder channel tiles."""
  state_dict, _, _ = openphenom
  enc = state_dict[ENC_POS][:, :1 + max_channels * N]
  sizes = {**OP_SIZES, "max_channels": max_channels}
  _, cfg = quiet(convert.convert_openphenom, {**state_dict, ENC_POS: enc}, "camae_s16", **sizes)
  assert cfg.pos_layout == "row_first"
  swapped = {**state_dict, ENC_POS: swap_halves(enc), DEC_POS: swap_halves(state_dict[DEC_POS])}
  _, cfg = quiet(convert.convert_openphenom, swapped, "camae_s16", **sizes)
  assert cfg.pos_layout == "column_first"


def test_openphenom_rejects_tables_of_no_known_layout(openphenom):
  state_dict, _, _ = openphenom
  mixed = {**state_dict, DEC_POS: swap_halves(state_dict[DEC_POS])}
  with pytest.raises(ValueError, match=r"laid out differently \(.*pos_embed: row_first, "
                                       r"decoder\.pos_embeddings: column_first\)"):
    quiet(convert.convert_openphenom, mixed, "camae_s16", **OP_SIZES)
  noise = torch.randn(state_dict[ENC_POS].shape[-1], generator=torch.Generator().manual_seed(0))
  learned = state_dict[ENC_POS] + 0.01 * noise  # The same change on every channel's tile.
  with pytest.raises(ValueError, match=rf"{ENC_POS}: the positional table is not the fixed 2-D "
                                       r"sin-cos table of a 4x4 grid in any layout"):
    quiet(convert.convert_openphenom, {**state_dict, ENC_POS: learned}, "camae_s16", **OP_SIZES)
  zeros = torch.zeros_like(state_dict[DEC_POS])
  with pytest.raises(ValueError, match=rf"{DEC_POS}: the positional table is all zeros"):
    quiet(convert.convert_openphenom, {**state_dict, DEC_POS: zeros}, "camae_s16", **OP_SIZES)


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
  extra = {**state_dict, "encoder.vit_backbone.head.weight": torch.zeros(3, 384)}
  with pytest.raises(ValueError, match=r"unexpected .*encoder\.vit_backbone\.head\.weight"):
    quiet(convert.convert_openphenom, extra, "camae_s16", **OP_SIZES)
  # A width-768 config against width-384 weights: the error names the tensor and both shapes.
  with pytest.raises(ValueError, match=r"encoder\.vit_backbone\.cls_token has shape \(1, 1, 384\), "
                                       r"but model 'camae_s16' expects \(1, 1, 768\)"):
    quiet(convert.convert_openphenom, state_dict, "camae_s16", **{**OP_SIZES, "width": 768})
  # A config part the checkpoint lacks is also an error, not a silently random parameter.
  with pytest.raises(ValueError, match=r"qkv\.proj\.bias"):
    quiet(convert.convert_openphenom, state_dict, "camae_s16", **OP_SIZES, qkv_bias=True)


def test_openphenom_rejects_per_channel_positions(openphenom):
  state_dict, _, _ = openphenom
  pos = state_dict[ENC_POS].clone()
  pos[0, 1 + N * 3] += 1.0  # channel 3's first patch position differs from channel 0's.
  bad = {**state_dict, ENC_POS: pos}
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
HF_CONFIG = dict(
    hidden_size=96, num_hidden_layers=3, num_attention_heads=4, intermediate_size=192,
    image_size=HF_IMG, patch_size=8, num_channels=HF_CH, decoder_hidden_size=32,
    decoder_num_hidden_layers=2, decoder_num_attention_heads=4, decoder_intermediate_size=64,
    mask_ratio=0.75)


@pytest.fixture(scope="module")
def hf_vitmae(tmp_path_factory):
  """(save_pretrained folder, float64 HF model, converted maejax model)."""
  torch.manual_seed(0)
  hf = transformers.ViTMAEForPreTraining(transformers.ViTMAEConfig(**HF_CONFIG)).eval()
  with torch.no_grad():  # Move every tensor far from its init, so the importer's layout is
    for p in hf.parameters():  # exercised; then transformers' own sin-cos tables.
      p.add_(0.3 * torch.randn_like(p))
    init_vitmae_positions(hf)
    assert hf.vit.embeddings.position_embeddings[0, 1:].abs().max() > 0.5  # Filled.
    # A random encoder CLS row, which the importer folds into the CLS token.
    hf.vit.embeddings.position_embeddings[0, 0] = 0.3 * torch.randn(96)
  folder = tmp_path_factory.mktemp("hf_vitmae")
  hf.save_pretrained(folder)
  model, cfg = convert.convert_hf_vitmae(*convert.load_hf_vitmae(folder))
  assert cfg.pos_layout == "column_first"
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


def test_hf_vitmae_rejects_tables_of_no_known_layout(hf_vitmae):
  folder, _, _ = hf_vitmae
  hf_state, config = convert.load_hf_vitmae(folder)
  key = "vit.embeddings.position_embeddings"
  pos = hf_state[key].clone()
  pos[0, 1:] = pos[0, 1:].flip(0)  # Patches in reverse order: sin-cos of no layout.
  with pytest.raises(ValueError, match=rf"{key}: the positional table is not the fixed 2-D "
                                       r"sin-cos table of a 8x8 grid in any layout"):
    convert.convert_hf_vitmae({**hf_state, key: pos}, config)


def test_untrained_transformers_5_save_is_named(tmp_path, capsys):
  """transformers 5 leaves a fresh ViTMAEForPreTraining's tables zero: the importer says so,
  and the recipe its error gives (transformers' own init) makes the save import."""
  fresh = transformers.ViTMAEForPreTraining(transformers.ViTMAEConfig(**HF_CONFIG))
  skipped = not fresh.vit.embeddings.position_embeddings.any()  # True in transformers 5.25.
  fresh.save_pretrained(tmp_path / "fresh")
  capsys.readouterr()  # transformers' progress bars.
  code = convert_cli.main(["hf-vitmae", "--checkpoint", str(tmp_path / "fresh"), "--out",
                           str(tmp_path / "out")])
  err = capsys.readouterr().err
  if skipped:
    assert code == 2 and len(err.strip().splitlines()) == 1 and err.startswith("error: ")
    assert ("position_embeddings: the positional table is all zeros, not a fixed sin-cos "
            "table: transformers 5 skips ViTMAE's sin-cos init") in err
    init_vitmae_positions(fresh)
    fresh.save_pretrained(tmp_path / "filled")
    _, cfg = convert.convert_hf_vitmae(*convert.load_hf_vitmae(tmp_path / "filled"))
  else:
    assert code == 0
    _, cfg = convert.convert_hf_vitmae(*convert.load_hf_vitmae(tmp_path / "fresh"))
  assert cfg.pos_layout == "column_first"


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
