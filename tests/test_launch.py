"""The launch scripts: arguments reach `python -m maejax.train` as the caller meant them."""

import os
import pathlib
import subprocess

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]


@pytest.fixture
def fake_python(tmp_path):
  """A `python` on PATH that prints its working directory and arguments, one a line."""
  bin_dir = tmp_path / "bin"
  bin_dir.mkdir()
  exe = bin_dir / "python"
  exe.write_text('#!/usr/bin/env bash\npwd\nprintf "%s\\n" "$@"\n')
  exe.chmod(0o755)
  return {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}"}


def test_single_host_resolves_relative_paths_before_changing_directory(tmp_path, fake_python):
  caller = tmp_path / "caller"
  (caller / "my").mkdir(parents=True)
  (caller / "my" / "exp.py").write_text("")
  out = subprocess.run(["bash", str(ROOT / "launch/single_host.sh"), "my/exp.py:plus", "runs/x",
                        "--config.total_steps=5"], cwd=caller, env=fake_python,
                       capture_output=True, text=True, check=True).stdout.splitlines()
  assert out[0] == str(ROOT)  # The script runs from the checkout ...
  args = out[1:]
  # ... with the caller's files, not files of the same name under the checkout.
  assert args[args.index("--config") + 1] == f"{caller}/my/exp.py:plus"
  assert args[args.index("--workdir") + 1] == f"{caller}/runs/x"
  assert args[-1] == "--config.total_steps=5"


def test_single_host_keeps_config_names_and_remote_workdirs(tmp_path, fake_python):
  out = subprocess.run(["bash", str(ROOT / "launch/single_host.sh"), "vitl8", "gs://b/run"],
                       cwd=tmp_path, env=fake_python, capture_output=True, text=True,
                       check=True).stdout.splitlines()[1:]
  assert out[out.index("--config") + 1] == "vitl8"
  assert out[out.index("--workdir") + 1] == "gs://b/run"
