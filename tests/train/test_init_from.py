"""`--config.init_from`: a run starts from imported or trained weights at step 0 (fresh
optimizer), resumes instead once it has checkpoints, refuses weights that do not fit in one
line, and starts a WSL head fresh on an MAE encoder. Expected values are the source's own
saved arrays and embeddings (`maejax.load` of the source)."""

import contextlib
import io
import re

import jax
import numpy as np
import pytest
from flax import nnx, traverse_util

import maejax
from maejax import api
from maejax import cli
from maejax import config as config_lib
from maejax import models
from maejax import workdir as workdir_lib
from maejax.cli import train as train_cli
from maejax.train import init_from as init_from_lib
from maejax.train import loop
from maejax.train import mesh as mesh_lib
from maejax.train import optimizer as optimizer_lib
from maejax.train import state as state_lib
from maejax.train import step as step_lib

# OpenPhenom's family at tiny size (16x16 patches on 32 px crops, 4 patches per channel).
OP_SIZES = dict(img_size=32, patch_size=16, width=64, depth=2, num_heads=4, mlp_dim=256,
                max_channels=11, decoder_channels=6, decoder_width=64, decoder_depth=1,
                decoder_heads=4, decoder_cross_heads=2, decoder_mlp_dim=128, layerscale=1e-4,
                drop_path=0.0)
REF_SIZES = dict(width=64, depth=2, heads=4, mlp_dim=256, patch=16, img=32, max_channels=11,
                 channels=6, dec_width=64, dec_depth=1, dec_heads=4, dec_cross_heads=2,
                 dec_mlp_dim=128)
RUN = ["--config.model.dtype=float32", "--config.batch_size=8", "--config.total_steps=2",
       "--config.data.crop_size=32", "--config.data.synthetic.site_size=64",
       "--config.plot_every=0", "--config.log_every=1", "--config.ckpt_every=1"]
FAST = step_lib.FAST_COMPILE
pytestmark = pytest.mark.usefixtures("compilation_cache")


def _model_flags(sizes):
  return [f"--config.model.{k}={v}" for k, v in sizes.items()]


def _op_config(*flags):
  # OpenPhenom's weights come with row-first positions (recorded by maejax.convert).
  return cli.load_config("camae_s16", [*_model_flags(OP_SIZES), *RUN,
                                       "--config.model.pos_layout=row_first", *flags])


def _row_first_table(grid, dim, copies):
  """Recursion's fixed positions [1, 1 + copies*grid*grid, dim] from
  ../shared/reference/openphenom.md: zero CLS row, then per patch (row h, column w, row-major)
  [sin(h w_i) | cos(h w_i) | sin(w w_i) | cos(w w_i)], w_i = 1 / 10000^(i / (dim/4)), the
  spatial table repeated per channel."""
  omega = 1.0 / 10000 ** (np.arange(dim // 4) / (dim / 4))
  h, w = np.divmod(np.arange(grid * grid), grid)
  hw, ww = np.outer(h, omega), np.outer(w, omega)
  table = np.concatenate([np.sin(hw), np.cos(hw), np.sin(ww), np.cos(ww)], axis=1)
  return np.concatenate([np.zeros((1, dim)), np.tile(table, (copies, 1))])[None].astype(
      np.float32)


def _images(shape, seed=0):
  return np.random.default_rng(seed).integers(0, 256, shape, dtype=np.uint8)


def _params(model) -> dict:
  """{path: array} of a loaded model's parameters."""
  return traverse_util.flatten_dict(nnx.to_pure_dict(nnx.state(model.module, nnx.Param)))


@pytest.fixture(scope="module")
def openphenom_run(tmp_path_factory):
  """A fake OpenPhenom checkpoint (Recursion's layout, random weights) -> `maejax.convert`'s
  folder -> a run started from it, stopped after step 1. Returns (folder, workdir, the run's
  stdout, maejax.load of the folder, of the run's step-0 checkpoint)."""
  torch = pytest.importorskip("torch", reason="torch (the maejax[torch] extra) writes the "
                                              "OpenPhenom-layout checkpoint")
  from maejax.cli import convert as convert_cli
  from maejax.cli.torch_reference import OpenPhenomReference
  root = tmp_path_factory.mktemp("init_from")
  state_dict = OpenPhenomReference(**REF_SIZES).randomize(seed=0).state_dict()
  grid = OP_SIZES["img_size"] // OP_SIZES["patch_size"]
  state_dict["encoder.vit_backbone.pos_embed"] = torch.from_numpy(_row_first_table(
      grid, OP_SIZES["width"], OP_SIZES["max_channels"]))
  state_dict["decoder.pos_embeddings"] = torch.from_numpy(_row_first_table(
      grid, OP_SIZES["decoder_width"], OP_SIZES["decoder_channels"]))
  torch.save({"state_dict": state_dict}, root / "model.safetensors")
  folder, workdir = str(root / "op"), str(root / "run")
  assert convert_cli.main(["openphenom", "--checkpoint", str(root / "model.safetensors"),
                           "--out", folder, *_model_flags(OP_SIZES)]) == 0
  out = io.StringIO()
  with contextlib.redirect_stdout(out):  # Stopped after step 1, as if pre-empted.
    loop.train(_op_config(f"--config.init_from={folder}"), workdir, progress=False,
               compiler_options=FAST, stop_at=1)
  return folder, workdir, out.getvalue(), maejax.load(folder), maejax.load(workdir, step=0)


def _metadata(workdir, step):
  with workdir_lib.manager(workdir) as m:
    return workdir_lib.checkpoint_metadata(m, step)


def test_a_run_from_a_converted_folder_starts_with_its_embeddings(openphenom_run):
  folder, workdir, out, source, run = openphenom_run
  assert "init_from: " in out and folder in out
  # A 4-channel subset, pooled per channel: the channel mapping is the folder's.
  images = _images((3, 32, 32, 4))
  expected = source.embed(images, pool="channelwise", channel_ids=[0, 2, 3, 5])
  got = run.embed(images, pool="channelwise", channel_ids=[0, 2, 3, 5])
  np.testing.assert_allclose(got, expected, rtol=1e-6, atol=1e-6)
  assert workdir_lib.checkpoint_steps(workdir) == [0, 1]
  meta = _metadata(workdir, 0)["init_from"]
  assert _metadata(workdir, 1)["init_from"] == meta
  assert meta["path"] == folder and meta["step"] is None and meta["fresh"] == []
  assert meta["source"]["format"] == "openphenom" and meta["model"] == "camae_s16"
  assert meta["loaded"] == len(jax.tree.leaves(nnx.state(source.module, nnx.Param)))


def test_a_second_start_resumes_and_ignores_init_from(openphenom_run, capsys):
  folder, workdir, _, source, first = openphenom_run
  loop.train(_op_config(f"--config.init_from={folder}"), workdir, progress=False,
             compiler_options=FAST)
  out = capsys.readouterr().out
  assert "Resuming from step 1" in out and f"init_from {folder} ignored" in out
  assert "init_from: " not in out  # Nothing was loaded.
  assert _metadata(workdir, 2)["init_from"]["path"] == folder  # Provenance carried over.
  # Trained on from step 1, not from the folder again.
  before, after, source = _params(first), _params(maejax.load(workdir, step=2)), _params(source)
  assert all(np.array_equal(before[p], source[p]) for p in source)
  assert all(not np.array_equal(after[p], before[p]) for p in after if p[-1] == "kernel")


def test_a_workdir_step_is_a_source(openphenom_run):
  """DIR/checkpoints/STEP names one checkpoint, as maejax.load does; its params placed on an
  FSDP x tensor mesh keep their values and take the run's shardings."""
  _, workdir, _, _, first = openphenom_run
  config = workdir_lib.read_config(workdir)
  config.mesh.fsdp, config.mesh.tensor = 2, 2
  spec, _ = _spec(config)
  p = init_from_lib.plan(f"{workdir}/checkpoints/0", config.model, spec.abstract["params"])
  assert p.step == 0 and p.directory == workdir
  placed = init_from_lib.place(init_from_lib.read(p), spec.abstract["params"])
  got, expected = traverse_util.flatten_dict(placed), _params(first)
  shardings = traverse_util.flatten_dict(spec.shardings["params"])
  assert set(got) == set(expected)
  for path, value in got.items():
    assert value.sharding == shardings[path], path
    np.testing.assert_array_equal(np.asarray(value), np.asarray(expected[path]))
  assert any(not s.is_fully_replicated for s in shardings.values())


def _spec(config):
  """(state spec on the config's mesh, optimizer)."""
  tx = optimizer_lib.make_optimizer(config)
  return state_lib.make_spec(loop.model_fn_for(config.model), tx,
                             mesh_lib.make_mesh(config.mesh),
                             tuple(tuple(r) for r in config.sharding_rules)), tx


def _start(config, where):
  """The run's step-0 state from `where` on the config's mesh: (state, plan)."""
  spec, tx = _spec(config)
  p = init_from_lib.plan(where, config.model, spec.abstract["params"])
  loaded = init_from_lib.place(init_from_lib.read(p), spec.abstract["params"])
  state = state_lib.init_state(loop.model_fn_for(config.model), tx, spec, 0, FAST, loaded)
  return state, p


def test_a_wsl_head_on_an_mae_encoder(tmp_path):
  """The encoder comes from the MAE, the head is the fresh (zero) initialisation, the MAE's
  decoder is not used; the optimizer state is fresh (zero moments)."""
  source = models.create("vit_tiny", rngs=nnx.Rngs(3))
  api.save_pretrained(source, {"model": source.cfg.to_dict()}, tmp_path / "mae")
  config = config_lib.experiment("wsl", "wsl_tiny_vit")
  config.mesh.fsdp = 2
  state, p = _start(config, str(tmp_path / "mae"))
  assert p.fresh == ("head",) and p.unused == ("decoder",)
  encoder = traverse_util.flatten_dict(nnx.to_pure_dict(nnx.state(source.encoder, nnx.Param)))
  got = traverse_util.flatten_dict(state["params"]["encoder"])
  assert set(got) == set(encoder)
  for path, value in got.items():
    np.testing.assert_array_equal(np.asarray(value), np.asarray(encoder[path]))
  for leaf in jax.tree.leaves(state["params"]["head"]):
    np.testing.assert_array_equal(np.asarray(leaf), 0.0)  # The head's zero initialisation.
  for leaf in jax.tree.leaves(state["opt_state"]):
    if getattr(leaf, "ndim", 0) > 0:
      np.testing.assert_array_equal(np.asarray(leaf), 0.0)
  assert int(state["step"]) == 0


@pytest.mark.parametrize("field, value, message", [
    ("mlp_dim", 128, r"parameter encoder\.blocks\.0\.mlp_in\.(bias|kernel) has shape "
                     r"\([\d, ]+\) in the checkpoint but \([\d, ]+\) in the model \(model\."
                     r"mlp_dim is 128 in the checkpoint, 256 in the config; set "
                     r"--config\.model\.mlp_dim=128\)"),
    ("max_channels", 8, r"the model config computes with them differently \(model\."
                        r"max_channels is 8 in the checkpoint, 11 in the config"),
    # OpenPhenom's weights trained with row-first positions: the run must compute them so.
    ("pos_layout", "row_first", r"model\.pos_layout is 'row_first' in the checkpoint, "
                                r"'column_first' in the config; set "
                                r"--config\.model\.pos_layout=row_first"),
])
def test_a_source_that_does_not_fit_is_one_line(tmp_path, capsys, field, value, message):
  source = models.create("camae_s16", **{**OP_SIZES, field: value})
  api.save_pretrained(source, {"model": source.cfg.to_dict()}, tmp_path / "src")
  workdir = tmp_path / "run"
  code = train_cli.main(["--config", "camae_s16", f"--workdir={workdir}", "--no-progress",
                         f"--config.init_from={tmp_path / 'src'}", *_model_flags(OP_SIZES),
                         *RUN])
  err = capsys.readouterr().err
  assert code == 2 and err.count("\n") == 1 and "Traceback" not in err, err
  assert err.startswith(f"error: init_from {tmp_path / 'src'}: ")
  assert re.search(message, err), err
  assert not workdir.exists() or not any(workdir.iterdir())  # Nothing written.
