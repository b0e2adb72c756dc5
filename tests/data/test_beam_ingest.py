"""Ingest as a Beam pipeline (DirectRunner) equals the in-process ingest; the launch docs'
Beam commands parse with Beam's own option parser; a killed Beam ingest keeps the old output."""

import json
import os
import pathlib
import re
import shlex
import signal
import subprocess
import sys
import time

import numpy as np
import pandas as pd
import pytest
from array_record.python import array_record_module

import maejax.data as md
from maejax.cli import ingest as ingest_cli
from maejax.data import shards, synthetic

beam = pytest.importorskip("apache_beam", reason="apache-beam not installed: pip install "
                           "'maejax[beam]' to test the Beam ingest")
from maejax.data import beam_ingest  # noqa: E402

ROOT = pathlib.Path(__file__).resolve().parents[2]
TINY = dict(site_size=32, cell_radius=6.0, n_groups=2, genes_per_group=2, n_null_genes=1,
            n_experiments=1, plates_per_experiment=1, controls_per_plate=2, sites_per_well=2)
SYNTHETIC = [f"--config.data.synthetic.{k}={v}" for k, v in TINY.items()]


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
  """The TINY screen as a PNG folder, one channel file of site 3 damaged."""
  out = tmp_path_factory.mktemp("screen")
  screen = synthetic.SyntheticScreen(**TINY)
  synthetic.write_screen(screen, str(out), workers=1)
  bad = sorted(out.rglob("*.png"))[3 * 6 + 2]
  bad.write_bytes(b"not a png")
  return out, bad


def _records(out):
  """{record bytes: metadata row} of an ingest output, read with ArrayRecord's own reader."""
  info = json.loads((out / "info.json").read_text())
  records = []
  for name in info["shards"]:
    reader = array_record_module.ArrayRecordReader(str(out / name))
    records += reader.read_all()
    reader.close()
  meta = pd.read_parquet(out / "metadata.parquet")
  assert len(records) == len(meta)
  return {r: tuple(row) for r, row in zip(records, meta.itertuples(index=False))}, info


def _ingest(out, *flags):
  assert ingest_cli.main([f"--out={out}", "--no-progress", "--shards=3", *flags]) == 0


@pytest.mark.parametrize("kind", ["synthetic", "folder"])
def test_direct_runner_writes_the_same_records_as_the_local_ingest(tmp_path, folder, kind):
  flags = (["--source=synthetic", *SYNTHETIC] if kind == "synthetic" else
           ["--source=folder", f"--path={folder[0]}", "--skip-bad-images"])
  _ingest(tmp_path / "local", *flags)
  _ingest(tmp_path / "beam", *flags, "--runner=DirectRunner")
  local, local_info = _records(tmp_path / "local")
  piped, beam_info = _records(tmp_path / "beam")
  assert piped == local  # Decoded pixels (the record bytes) and their metadata rows.
  assert len(local) == len(synthetic.SyntheticScreen(**TINY)) - (kind == "folder")
  if kind == "folder":  # The damaged file is counted and named by both paths.
    assert [p for p, _ in beam_info["skipped"]] == [str(folder[1])]
  for k in ("seconds",):
    local_info.pop(k), beam_info.pop(k)
  assert beam_info == local_info
  assert sorted(os.listdir(tmp_path)) == ["beam", "local"]  # No staging folder left.
  batches = []
  for out in ("local", "beam"):
    c = md.default_config()
    c.source, c.path, c.crop_size = "arrayrecord", str(tmp_path / out), 16
    batches.append(next(md.train_iterator(c, batch_size=4, seed=3, shard_index=0,
                                          shard_count=1))["image"])
  np.testing.assert_array_equal(batches[0], batches[1])


def test_bad_image_on_a_beam_worker_is_one_error_naming_the_file(tmp_path, folder, capsys):
  code = ingest_cli.main([f"--out={tmp_path / 'ar'}", "--no-progress", "--source=folder",
                          f"--path={folder[0]}", "--runner=DirectRunner"])
  err = capsys.readouterr().err.strip().splitlines()
  assert code == 2 and len(err) == 1 and err[0].startswith("error: "), err
  assert str(folder[1]) in err[0] and "skip_bad_images" in err[0]
  assert os.listdir(tmp_path) == []  # Nothing half-written.


def test_runner_without_beam_installed_says_to_install_the_extra(tmp_path, monkeypatch, capsys):
  monkeypatch.setitem(sys.modules, "apache_beam", None)  # As if not installed.
  monkeypatch.delitem(sys.modules, "maejax.data.beam_ingest")
  monkeypatch.delattr(md, "beam_ingest")  # `from maejax.data import beam_ingest` imports anew.
  assert ingest_cli.main([f"--out={tmp_path / 'ar'}", "--source=synthetic", *SYNTHETIC,
                          "--runner=DirectRunner"]) == 2
  err = capsys.readouterr().err.strip()
  assert err.startswith("error: ") and "pip install 'maejax[beam]'" in err and "\n" not in err


def test_gs_output_is_written_through_epath(tmp_path):
  """OUT = gs://bucket/ar, with etils' epath mock putting the bucket in a local folder."""
  from etils import epath
  from etils.epath import testing
  bucket = tmp_path / "bucket"
  bucket.mkdir()
  local = lambda p: (str(p).replace("gs://bucket", str(bucket))  # noqa: E731
                     if str(p).startswith("gs://") else p)
  to_local = lambda fn, *a, **k: fn(*map(local, a), **k)  # noqa: E731
  with testing.mock_epath(**{f: to_local for f in (
      "copy", "exists", "glob", "isdir", "listdir", "makedirs", "mkdir", "open", "remove",
      "rename", "replace", "rmtree", "stat", "walk")}):
    for _ in range(2):  # A second ingest replaces the first.
      info = shards.ingest(md.make_source(_synthetic_config()), "gs://bucket/ar", num_shards=2,
                           beam_args=["--runner=DirectRunner"])
      assert sorted(p.name for p in epath.Path("gs://bucket/ar").iterdir()) == sorted(
          info["shards"] + ["info.json", "metadata.parquet"])
  assert sorted(os.listdir(bucket)) == ["ar"]
  c = md.default_config()
  c.source, c.path = "arrayrecord", str(bucket / "ar")
  assert len(md.make_source(c)) == len(synthetic.SyntheticScreen(**TINY))


def _synthetic_config():
  c = md.default_config()
  c.synthetic.update(TINY)
  return c


def _launch_commands():
  """The `python -m maejax.data.ingest ... --runner` commands of launch/README.md."""
  text = (ROOT / "launch" / "README.md").read_text()
  text = re.sub(r"\\\n\s*", "", text)
  return [line.strip() for line in text.splitlines()
          if line.strip().startswith("python -m maejax.data.ingest") and "--runner" in line]


def test_launch_doc_commands_parse_with_beams_option_parser(caplog):
  commands = _launch_commands()
  runners = set()
  for command in commands:
    args, _ = ingest_cli.parse_args(shlex.split(command)[3:])
    caplog.clear()
    opts = beam_ingest.options(args.beam_args).get_all_options()
    discarded = [r.message for r in caplog.records if "Discarding" in r.message]
    assert not discarded, f"{command}: {discarded}"  # Beam's parser knows every option.
    runners.add(opts["runner"])
    if opts["runner"] == "DataflowRunner":
      assert opts["region"] and opts["temp_location"].startswith("gs://") and (
          opts["machine_type"]) and (opts["requirements_file"] or opts["sdk_container_image"])
  assert "DataflowRunner" in runners and runners & {"FlinkRunner", "SparkRunner"}, commands


@pytest.mark.faults
def test_killed_beam_ingest_keeps_the_old_dataset(tmp_path):
  from tests.faults.test_faults_workdir import _digest  # pylint: disable=g-import-not-at-top
  out = tmp_path / "ar"
  flags = ["--source=synthetic", *SYNTHETIC, "--config.data.synthetic.sites_per_well=200",
           "--shards=100", "--no-progress", f"--out={out}", "--threads=1"]
  _ingest(out, "--source=synthetic", *SYNTHETIC)
  before = _digest(out)
  proc = subprocess.Popen([sys.executable, "-m", "maejax.data.ingest", *flags,
                           "--runner=DirectRunner"], cwd=tmp_path, stderr=subprocess.PIPE)
  staging = f"ar{shards.TMP_SUFFIX}{proc.pid}"
  deadline = time.time() + 120
  while not (tmp_path / staging).is_dir() or not any((tmp_path / staging).glob("sites-*")):
    assert proc.poll() is None and time.time() < deadline, proc.stderr.read()
    time.sleep(0.05)
  proc.send_signal(signal.SIGKILL)  # Mid-pipeline: some shards written, no info.json yet.
  proc.wait()
  assert _digest(out) == before
  c = md.default_config()
  c.source, c.path = "arrayrecord", str(out)
  assert len(md.make_source(c)) == sum(json.loads((out / "info.json").read_text())["shard_sizes"])
