"""Fault injection: locked workdirs, stale locks, invalid settings, killed re-ingest.

Each test asserts the exit code, the one-line message and that no earlier output changed.
"""

import hashlib
import json
import os
import socket
import subprocess

import pytest

from maejax import workdir as workdir_lib
from maejax.cli import ingest as ingest_cli
from maejax.cli import train as train_cli
from maejax.data import shards

pytestmark = pytest.mark.faults


def _digest(directory):
  out = {}
  for root, _, files in os.walk(directory):
    for f in files:
      p = os.path.join(root, f)
      with open(p, "rb") as fh:
        out[os.path.relpath(p, directory)] = hashlib.sha256(fh.read()).hexdigest()
  return out


def _train_args(workdir, *extra):
  return ["--config", "demo", f"--workdir={workdir}", "--no-progress", "--config.batch_size=16",
          "--config.total_steps=2", "--config.data.synthetic.site_size=64", *extra]


def _one_error(capsys):
  err = capsys.readouterr().err.strip()
  assert len(err.splitlines()) == 1 and err.startswith("error: ") and "Traceback" not in err, err
  return err


def test_second_run_on_a_locked_workdir_is_one_line_and_writes_nothing(tmp_path, capsys):
  workdir = tmp_path / "run"
  held = workdir_lib.Lock(workdir_lib.lock_file(workdir)).acquire()  # A live run: this pid.
  before = _digest(workdir)
  assert train_cli.main(_train_args(workdir)) == 2
  err = _one_error(capsys)
  assert f"pid {os.getpid()} on {socket.gethostname()}" in err and "since" in err
  assert "another --workdir" in err and "delete" in err
  assert _digest(workdir) == before and not (workdir / "config.json").exists()
  held.release()
  assert not workdir.exists()  # The lock made the folder; releasing it leaves nothing.


def test_lock_of_a_dead_pid_is_taken_over_with_one_warning(tmp_path, capsys):
  dead = subprocess.Popen(["true"])
  dead.wait()
  file = workdir_lib.lock_file(tmp_path)
  file.write_text(json.dumps(dict(host=socket.gethostname(), pid=dead.pid, since="then")))
  lock = workdir_lib.Lock(file).acquire()
  err = capsys.readouterr().err.strip().splitlines()
  assert len(err) == 1 and "stale lock" in err[0] and str(dead.pid) in err[0]
  assert json.loads(file.read_text())["pid"] == os.getpid()
  lock.release()
  assert not file.exists()


def test_lock_from_another_host_is_never_taken(tmp_path):
  file = workdir_lib.lock_file(tmp_path)
  file.write_text(json.dumps(dict(host="elsewhere", pid=1, since="then")))
  with pytest.raises(workdir_lib.LockedError, match="pid 1 on elsewhere, since then"):
    workdir_lib.Lock(file).acquire()
  assert json.loads(file.read_text())["host"] == "elsewhere"


@pytest.mark.parametrize("override, field", [
    ("--config.lr=0", "config.lr=0"),
    ("--config.model.mask_ratio=1.0", "config.model.mask_ratio=1.0"),
    ("--config.model.mask_ratio=0.999", "config.model.mask_ratio=0.999"),
    ("--config.data.crop_size=36", "config.data.crop_size=36"),
    ("--config.data.crop_size=128", "config.data.crop_size=128"),
    ("--config.total_steps=-5", "config.total_steps=-5"),
    ("--config.ckpt_every=0", "config.ckpt_every=0"),
    ("--config.batch_size=12", "config.batch_size=12"),
])
def test_invalid_settings_are_one_line_and_write_nothing(tmp_path, capsys, override, field):
  workdir = tmp_path / "run"
  assert train_cli.main(_train_args(workdir, override)) == 2
  err = _one_error(capsys)
  assert field in err and "must" in err, err
  assert not workdir.exists()


def test_killed_reingest_keeps_the_old_dataset(tmp_path, monkeypatch, capsys):
  out = tmp_path / "ar"
  args = ["--config", "demo", "--config.data.synthetic.site_size=32", f"--out={out}",
          "--no-progress"]
  assert ingest_cli.main(args) == 0
  before = _digest(out)

  def killed(*a, **k):
    raise KeyboardInterrupt  # As if killed while writing the shards.
  monkeypatch.setattr(shards, "_finish", killed)
  with pytest.raises(KeyboardInterrupt):
    ingest_cli.main(args)
  assert _digest(out) == before
  assert sorted(os.listdir(tmp_path)) == ["ar"]  # The temp dir went too.


def test_half_written_ingest_output_is_named_with_the_fix(tmp_path, capsys):
  out = tmp_path / "ar"
  out.mkdir()
  (out / "sites-00000-of-00001.array_record").write_bytes(b"\0" * 10)
  code = train_cli.main(_train_args(tmp_path / "run", "--config.data.source=arrayrecord",
                                    f"--config.data.path={out}"))
  err = _one_error(capsys)
  assert code == 2 and "half-written ingest output" in err and "maejax.data.ingest" in err


def test_ingest_refuses_an_out_with_foreign_files(tmp_path, capsys):
  out = tmp_path / "mine"
  out.mkdir()
  (out / "notes.txt").write_text("keep me")
  assert ingest_cli.main(["--config", "demo", f"--out={out}", "--no-progress"]) == 2
  assert "not an ingest output" in _one_error(capsys)
  assert (out / "notes.txt").read_text() == "keep me"
