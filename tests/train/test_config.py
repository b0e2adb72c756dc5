"""Config files, typed command-line overrides and the CLI's argument errors."""

import pytest

from maejax import models
from maejax import workdir
from maejax.cli import train as cli
from maejax import config as config_lib

CONFIGS = ["vits16", "vitb16", "vitb8", "vitl16", "vitl8", "vitg8", "camae_s16", "camae_b16",
           "camae_l16", "demo"]


@pytest.mark.parametrize("name", CONFIGS)
def test_every_config_loads_and_names_a_registered_model(name):
  c = config_lib.load_config(f"configs/{name}.py")
  resolved = models.resolve(c.model)  # Raises on an unknown model or field.
  assert c.name == name
  assert resolved.img_size == c.data.crop_size
  assert resolved.channels == len(c.data.channels)
  assert c.data.source == "synthetic" and c.data.path == ""  # Laptop default: no data needed.


def test_paper_recipe_defaults():
  s, l = config_lib.load_config("configs/vits16.py"), config_lib.load_config("configs/vitl8.py")
  assert (s.lr, l.lr) == (1e-4, 3e-5)
  assert (s.model.drop_path, l.model.drop_path) == (0.1, 0.3)
  for c in (s, l):
    assert (c.b1, c.b2, c.weight_decay, c.warmup_frac) == (0.9, 0.95, 0.05, 0.1)
    assert c.model.mask_ratio == 0.75 and c.optimizer == "lion"
    assert c.model.fourier_weight == 0.0
  assert config_lib.load_config("configs/vitl8.py:plus").model.fourier_weight == 0.01
  assert l.mesh.fsdp == -1  # Large models shard parameters (FSDP).


def test_overrides_are_typed():
  c = config_lib.load_config("configs/demo.py")
  config_lib.apply_overrides(c, ["--config.batch_size=16", "--config.lr=3e-5",
                                 "--config.model.mask_ratio=0.5", "--config.async_checkpoint=false",
                                 "--config.data.path=/data/x", "--config.mesh.axis_types=explicit",
                                 "--config.sharding_rules=(('embed', 'fsdp'),)"])
  assert c.batch_size == 16 and isinstance(c.batch_size, int)
  assert c.lr == 3e-5 and c.model.mask_ratio == 0.5 and c.async_checkpoint is False
  assert c.data.path == "/data/x" and c.mesh.axis_types == "explicit"
  assert c.sharding_rules == (("embed", "fsdp"),)


@pytest.mark.parametrize("text, value", [("true", True), ("False", False), ("None", None)])
def test_unset_fields_take_bools_as_on_the_command_line(text, value):
  """`model.remat` is None (the platform's default) until set: `--config.model.remat=true`
  must give True, not the string "true"."""
  c = config_lib.load_config("configs/demo.py")
  assert c.model.remat is None
  config_lib.apply_overrides(c, [f"--config.model.remat={text}"])
  assert c.model.remat is value


@pytest.mark.parametrize("override, message", [
    ("--config.batch_sise=4", "batch_sise: no such config field"),
    ("--config.model.nope=1", "model.nope: no such config field"),
    ("--config.batch_size=abc", "expected an int"),
    ("--config.lr=fast", "expected a float"),
    ("--config.async_checkpoint=maybe", "expected a bool"),
    ("--config.model=vitl8", "is a group of fields"),
])
def test_bad_override_is_one_clear_error(override, message):
  c = config_lib.load_config("configs/demo.py")
  with pytest.raises(ValueError, match=message):
    config_lib.apply_overrides(c, [override])


def test_missing_config_file_names_the_path():
  with pytest.raises(FileNotFoundError, match="configs/nope.py"):
    config_lib.load_config("configs/nope.py")
  with pytest.raises(ValueError, match="'huge' not understood"):
    config_lib.load_config("configs/vits16.py:huge")


def test_configs_by_name_are_the_shipped_files():
  assert set(CONFIGS) <= set(config_lib.available_configs())
  assert config_lib.load_config("demo").to_dict() == config_lib.load_config(
      "configs/demo.py").to_dict()
  assert config_lib.load_config("vitl8:plus").model.fourier_weight == 0.01
  with pytest.raises(FileNotFoundError, match=r"no config named or at 'vitl9'.*names: .*vitl8"):
    config_lib.load_config("vitl9")


def test_cli_lists_configs_and_takes_names(capsys, monkeypatch):
  assert cli.main(["--list-configs"]) == 0
  lines = dict(line.split(maxsplit=1) for line in capsys.readouterr().out.splitlines())
  assert set(lines) == set(config_lib.available_configs())
  assert lines["demo"].startswith("Demo: a tiny MAE")
  seen = []
  monkeypatch.setattr(cli.loop, "train", lambda config, *a, **k: seen.append(config) or {})
  assert cli.main(["--config", "demo:plus", "--workdir", "unused"]) == 0
  assert seen[0].name == "demo_plus"
  assert cli.main([]) == 2 and "--config is required" in capsys.readouterr().err


def test_cli_help_and_errors(capsys):
  with pytest.raises(SystemExit) as e:
    cli.main(["--help"])
  assert e.value.code == 0 and "--config.batch_size" in capsys.readouterr().out
  assert cli.main(["--config", "configs/demo.py", "--config.total_step=3"]) == 2
  assert "total_step: no such config field" in capsys.readouterr().err
  with pytest.raises(SystemExit):
    cli.main(["--config", "configs/demo.py", "--wrkdir", "x"])
  assert "unrecognized arguments: --wrkdir" in capsys.readouterr().err


def test_cli_bad_data_is_one_line_error(tmp_path, capsys):
  (tmp_path / "metadata.csv").write_text("plate,well,site,perturbation,is_control\n1,A01,1,G1,False\n")
  code = cli.main(["--config", "configs/demo.py", f"--config.data.path={tmp_path}",
                   "--config.data.source=folder", f"--workdir={tmp_path / 'w'}", "--no-progress"])
  err = capsys.readouterr().err
  assert code == 2 and "Traceback" not in err
  assert err.startswith("error: ") and "metadata.csv" in err


def test_config_json_round_trip():
  c = config_lib.load_config("configs/camae_s16.py")
  back = config_lib.from_json(config_lib.to_json(c))
  assert back.sharding_rules == c.sharding_rules
  assert back.model.to_dict() == c.model.to_dict() and back.data.channels == c.data.channels
  assert workdir.default_workdir(c) == "runs/camae_s16"
