"""maejax.load on training workdirs (any step, a damaged newest checkpoint) and on gs:// paths."""

import json
import logging
import os
import re
import shlex
import shutil

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest
from etils.epath import testing as epath_testing
from flax import nnx

import maejax
from maejax import config as config_lib
from maejax import workdir as workdir_lib
from maejax.cli import convert as convert_cli
from maejax.train import checkpoint as checkpoint_lib
from maejax.train import loop
from maejax.train import metrics as metrics_lib
from maejax.train import mesh as mesh_lib
from maejax.train import optimizer as optimizer_lib
from maejax.train import state as state_lib
from maejax.train import step as step_lib

FAST = step_lib.FAST_COMPILE


def _tiny_config():
  c = config_lib.load_config("configs/demo.py")
  c.data.synthetic.update(dict(site_size=32, n_groups=2, genes_per_group=2, n_null_genes=0,
                               controls_per_plate=2, n_experiments=1, plates_per_experiment=1,
                               sites_per_well=1))
  c.batch_size, c.total_steps, c.ckpt_every, c.log_every, c.plot_every = 8, 4, 2, 1, 0
  c.lr = 1e-2  # Large enough that steps 2 and 4 differ visibly.
  return c


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
  path = str(tmp_path_factory.mktemp("run"))
  loop.train(_tiny_config(), path, progress=False, compiler_options=FAST)
  return path


def _trained_model(workdir, step):
  """The model as the training code itself restores it (full train state, on its mesh)."""
  config = _tiny_config()
  spec = state_lib.make_spec(loop.model_fn_for(config.model),
                             optimizer_lib.make_optimizer(config),
                             mesh_lib.make_mesh(config.mesh), tuple(config.sharding_rules))
  ckpt = checkpoint_lib.Checkpointer(workdir, config)
  state = ckpt.manager.restore(step, args=ocp.args.Composite(
      state=ocp.args.StandardRestore(spec.abstract)))["state"]
  ckpt.close()
  return state_lib.merge(spec, state["params"]), state


def _images(n=5):
  return np.random.default_rng(0).integers(0, 256, (n, 32, 32, 6), dtype=np.uint8)


@pytest.mark.parametrize("step", [None, 2])
def test_load_workdir_embeds_like_the_trained_model(workdir, step):
  loaded = maejax.load(workdir, step=step)
  assert loaded.step == (4 if step is None else 2)
  trained, state = _trained_model(workdir, loaded.step)
  images = _images()
  expected = np.asarray(trained.embed(jax.numpy.asarray(images)))
  np.testing.assert_allclose(loaded.embed(images, batch_size=4), expected, rtol=1e-5, atol=1e-5)
  for a, b in zip(jax.tree.leaves(nnx.to_pure_dict(nnx.state(loaded.module, nnx.Param))),
                  jax.tree.leaves(state["params"])):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_steps_differ_and_checkpoint_folder_forms(workdir):
  images = _images(2)
  last, first = maejax.load(workdir).embed(images), maejax.load(workdir, step=2).embed(images)
  assert np.abs(last - first).max() > 1e-4  # Training moved the weights between checkpoints.
  np.testing.assert_allclose(maejax.load(f"{workdir}/checkpoints/2").embed(images), first,
                             rtol=1e-6)
  np.testing.assert_allclose(maejax.load(f"{workdir}/checkpoints").embed(images), last,
                             rtol=1e-6)


def test_bad_step_and_empty_dir_are_clear_errors(workdir, tmp_path):
  with pytest.raises(ValueError, match=r"step=3: no such checkpoint .*kept steps: \[2, 4\]"):
    maejax.load(workdir, step=3)
  with pytest.raises(FileNotFoundError, match="holds no model"):
    maejax.load(tmp_path)


def _convert_command(error) -> list[str]:
  """The `python -m maejax.convert ...` command named in an error, as argv after the module."""
  command = re.search(r"`python -m maejax\.convert ([^`]+)`", str(error)).group(1)
  return shlex.split(command)


def test_hf_vitmae_folder_names_the_convert_command_that_then_loads(tmp_path, capsys):
  transformers = pytest.importorskip("transformers", reason="the maejax[torch] extra")
  hf = transformers.ViTMAEForPreTraining(transformers.ViTMAEConfig(
      hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64,
      image_size=32, patch_size=16, num_channels=3, decoder_hidden_size=16,
      decoder_num_hidden_layers=1, decoder_num_attention_heads=2, decoder_intermediate_size=32))
  from maejax.cli.torch_reference import init_vitmae_positions  # Needs torch.
  init_vitmae_positions(hf)  # transformers' own sin-cos tables (transformers 5 leaves zeros).
  hf.save_pretrained(tmp_path / "vit-mae")
  with pytest.raises(FileNotFoundError) as e:
    maejax.load(tmp_path / "vit-mae")
  assert len(str(e.value).splitlines()) == 1 and "HuggingFace ViTMAE" in str(e.value)
  argv = _convert_command(e.value)
  assert argv[:3] == ["hf-vitmae", "--checkpoint", str(tmp_path / "vit-mae")]
  assert convert_cli.main(argv) == 0  # The command it names is the right one.
  out = argv[argv.index("--out") + 1]
  assert f"maejax.load({out!r})" in str(e.value)
  model = maejax.load(out)
  images = np.random.default_rng(0).integers(0, 256, (2, 32, 32, 3), dtype=np.uint8)
  assert model.embed(images).shape == (2, 32)
  assert repr(model).startswith("Model(") and "3 channels" in repr(model)
  capsys.readouterr()
  # A folder converted before `pos_layout` existed: its config.json lacks the field, which
  # then means "column_first", MAE's and HF's layout: the importer of that time accepted only
  # tables equal to it.
  config_file = os.path.join(out, "config.json")
  with open(config_file) as f:
    config = json.load(f)
  assert config["model"].pop("pos_layout") == "column_first"
  with open(config_file, "w") as f:
    json.dump(config, f)
  old = maejax.load(out)
  assert old.config.model.get("pos_layout") is None and old.module.cfg.pos_layout == "column_first"
  np.testing.assert_array_equal(old.embed(images), model.embed(images))


class PosTable(nnx.Variable):
  """The variable type in which maejax stored position tables before 2026-12-01."""


def test_folder_with_stored_position_tables_says_convert_again(tmp_path):
  """A folder converted when maejax stored the imported table (OpenPhenom's is row first, and
  its config.json does not say so) is refused in one line naming the convert command."""
  module = maejax.create("camae_tiny")
  module.encoder.tokenizer.pos = PosTable(jax.numpy.zeros((16, 64)))
  module.decoder.pos = PosTable(jax.numpy.zeros((16, 64)))
  source = {"format": "openphenom", "checkpoint": "/data/OpenPhenom/model.safetensors"}
  maejax.save_pretrained(module, {"model": maejax.get_config("camae_tiny").to_dict(),
                                  "source": source}, tmp_path / "op")
  with pytest.raises(ValueError) as e:
    maejax.load(tmp_path / "op")
  assert len(str(e.value).splitlines()) == 1 and "older maejax that stored" in str(e.value)
  assert _convert_command(e.value) == [
      "openphenom", "--checkpoint", source["checkpoint"], "--out", str(tmp_path / "op")]


@pytest.mark.parametrize("config", [{"model_type": "MAE", "architectures": ["MAEModel"]}, None])
def test_openphenom_folder_names_the_convert_command(tmp_path, config):
  folder = tmp_path / "OpenPhenom"
  folder.mkdir()
  (folder / "model.safetensors").write_bytes(b"\x80\x02")  # Only the name is looked at.
  if config is not None:
    (folder / "config.json").write_text(json.dumps(config))
  with pytest.raises(FileNotFoundError, match="OpenPhenom weights, not a maejax model") as e:
    maejax.load(folder)
  argv = _convert_command(e.value)
  assert argv[:3] == ["openphenom", "--checkpoint", str(folder / "model.safetensors")]
  args, overrides = convert_cli.parse_args(argv)  # Real sub-command and flags.
  assert args.format == "openphenom" and args.out and not overrides


def test_other_huggingface_model_is_named(tmp_path):
  (tmp_path / "config.json").write_text(json.dumps({"model_type": "vit"}))
  with pytest.raises(FileNotFoundError, match="HuggingFace 'vit' model; maejax imports only "
                     "ViTMAE"):
    maejax.load(tmp_path)


def test_repr_names_model_parameters_channels_and_pooling(workdir):
  model = maejax.load(workdir)
  params = sum(x.size for x in jax.tree.leaves(nnx.state(model.module, nnx.Param)))
  assert params > 1000
  assert repr(model) == f"Model('vit_tiny', {params:,} parameters, 6 channels, pool 'mean', step 4)"
  ca = maejax.api.Model(maejax.create("camae_tiny"), config_lib.experiment("x", "camae_tiny"))
  assert re.fullmatch(r"Model\('camae_tiny', [\d,]+ parameters, channels 1\.\.11 "
                      r"\(channel-agnostic\), pool 'mean'\)", repr(ca)), repr(ca)
  wsl = maejax.api.Model(maejax.create("wsl_tiny_cnn"), config_lib.experiment("x", "wsl_tiny_cnn"))
  assert "6 channels" in repr(wsl) and "pool 'mean'" in repr(wsl)


def test_checkpoint_config_and_metadata_read_quietly(workdir, caplog):
  with caplog.at_level(logging.WARNING), workdir_lib.manager(workdir) as m:
    meta = workdir_lib.checkpoint_metadata(m, 2)
    config = workdir_lib.checkpoint_config(m, 2)
  assert meta["step"] == 2 and meta["images_seen"] == 2 * 8
  assert config.model.name == "vit_tiny"
  assert "could not be restored" not in caplog.text  # Orbax's noise about unread items.


@pytest.mark.faults
def test_damaged_newest_checkpoint_loads_the_previous_with_one_warning(workdir, tmp_path, capsys):
  copy = tmp_path / "copy"
  shutil.copytree(workdir, copy)
  for root, _, files in os.walk(copy / "checkpoints" / "4" / "state"):
    for f in files:
      if not f.startswith("_") and not f.endswith(".txt"):
        open(os.path.join(root, f), "wb").close()
  model = maejax.load(copy)
  out = capsys.readouterr()
  assert model.step == 2
  lines = [l for l in (out.out + out.err).splitlines() if "checkpoint step 4" in l]
  assert len(lines) == 1 and "loading the previous one" in lines[0]
  assert "Traceback" not in out.out + out.err
  with pytest.raises(ValueError, match="no checkpoint .* can be read .*step 4"):
    maejax.load(copy, step=4)


def _bucket(root):
  """epath calls on gs://bucket/... served from the local folder `root`."""
  def local(path):
    text = os.fspath(path)
    return str(root / text[len("gs://bucket/"):]) if text.startswith("gs://bucket/") else text

  def fn(original, path, *args, **kwargs):
    args = [local(a) if isinstance(a, (str, os.PathLike)) else a for a in args]
    return original(local(path), *args, **kwargs)
  names = ("copy", "exists", "glob", "isdir", "listdir", "makedirs", "mkdir", "open", "remove",
           "rename", "replace", "rmtree", "stat", "walk")
  return epath_testing.mock_epath(**{n: fn for n in names})


def test_gs_workdir_config_metrics_and_plots_go_through_epath(tmp_path):
  config = _tiny_config()
  with _bucket(tmp_path):
    run = workdir_lib.path("gs://bucket/run")
    assert str(run) == "gs://bucket/run"
    workdir_lib.write_config(run, config)
    back = workdir_lib.read_config("gs://bucket/run")
    assert back.sharding_rules == config.sharding_rules  # Tuples survive the round trip.
    writer = metrics_lib.Writer(run, start_step=0)
    writer.write(1, {"loss": 1.5})
    writer.write(2, {"loss": float("nan")})
    writer.close()
    image = np.zeros((8, 8, 2), np.float32)
    metrics_lib.save_reconstruction_png(run / "plots" / "r.png",
                                        {"pred": image, "target": image, "mask": image}, 2)
    writer = metrics_lib.Writer(run, start_step=2)
    writer.config(config, 2)
    writer.reconstruction(run / "plots" / "r3.png",
                          {"pred": image, "target": image, "mask": image}, 3, ["dna", "er"])
    writer.close()
  assert (tmp_path / "run" / "config.json").is_file()
  assert (tmp_path / "run" / "metrics.jsonl").read_text().splitlines() == [
      '{"step": 1, "loss": 1.5}', '{"step": 2, "loss": null}']
  assert os.listdir(tmp_path / "run" / "tensorboard")
  assert (tmp_path / "run" / "plots" / "r.png").read_bytes()[:4] == b"\x89PNG"
  assert (tmp_path / "run" / "plots" / "r3.png").read_bytes()[:4] == b"\x89PNG"
  events = b"".join(f.read_bytes() for f in (tmp_path / "run" / "tensorboard").iterdir())
  assert b"reconstruction" in events and b"config/text_summary" in events


def test_resumed_writer_drops_rows_of_the_lost_segment(tmp_path):
  writer = metrics_lib.Writer(tmp_path)
  for step in (1, 2, 3, 4):
    writer.write(step, {"loss": float(step)})
  writer.close()
  writer = metrics_lib.Writer(tmp_path, start_step=2)  # Resumed from the step-2 checkpoint.
  writer.write(3, {"loss": 30.0})
  writer.close()
  rows = (tmp_path / "metrics.jsonl").read_text().splitlines()
  assert rows == ['{"step": 1, "loss": 1.0}', '{"step": 2, "loss": 2.0}',
                  '{"step": 3, "loss": 30.0}']
