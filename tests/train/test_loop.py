"""End to end: the demo's loss falls; kill (SIGTERM) and resume reproduces the losses exactly;
NaN stops the run with the last good checkpoint kept."""

import glob
import hashlib
import io
import json
import logging
import os
import signal
import struct
import subprocess
import sys
import textwrap
import time

import jax
import numpy as np
import pytest
from PIL import Image
from tensorboardX.proto import event_pb2

from maejax import config as config_lib
from maejax import workdir as workdir_lib
from maejax.cli import train as train_cli
from maejax.train import checkpoint as checkpoint_lib
from maejax.train import loop
from maejax.train import metrics as metrics_lib
from maejax.train import step as step_lib

FAST = step_lib.FAST_COMPILE
STEPS = 30


def _demo(**kw):
  c = config_lib.load_config("configs/demo.py")
  c.batch_size, c.total_steps, c.log_every, c.ckpt_every, c.plot_every = 16, STEPS, 1, 10, STEPS
  c.lr = 3e-3
  c.data.synthetic.site_size = 64  # Renders 16x faster than the demo's 256 px sites.
  c.update(kw)
  return c


def _summaries(workdir):
  """[(step, tag, value kind, plugin, Summary.Value)] of every summary in the workdir's
  TensorBoard event files (TFRecords: u64 length, u32 crc, an Event proto, u32 crc)."""
  out = []
  for file in sorted(glob.glob(os.path.join(workdir, "tensorboard", "events.*"))):
    with open(file, "rb") as f:
      data = f.read()
    i = 0
    while i < len(data):
      (n,) = struct.unpack("<Q", data[i:i + 8])
      event = event_pb2.Event.FromString(data[i + 12:i + 12 + n])
      i += 12 + n + 4
      out += [(event.step, v.tag, v.WhichOneof("value"), v.metadata.plugin_data.plugin_name, v)
              for v in event.summary.value]
  return out


def _losses(workdir):
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    rows = [json.loads(line) for line in f]
  return rows, {r["step"]: r["loss"] for r in rows}


# Runs of one config compile identical programs: the later runs load them.
pytestmark = pytest.mark.usefixtures("compilation_cache")


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
  workdir = str(tmp_path_factory.mktemp("uninterrupted"))
  summary = loop.train(_demo(), workdir, progress=False, compiler_options=FAST)
  return workdir, summary


def test_demo_loss_falls_and_outputs_are_written(uninterrupted):
  workdir, summary = uninterrupted
  rows, losses = _losses(workdir)
  assert summary["status"] == "finished" and summary["step"] == STEPS
  assert sorted(losses) == list(range(1, STEPS + 1))
  first, last = np.mean([losses[s] for s in (1, 2, 3)]), np.mean([losses[s] for s in (28, 29, 30)])
  assert last < first - 0.02, (first, last)
  assert {"step", "loss", "lr", "grad_norm", "images_per_s", "train_flops"} <= set(rows[-1])
  assert os.path.isfile(os.path.join(workdir, "plots", f"reconstruction_{STEPS:08d}.png"))
  # The run directory describes itself: the config comes back from it.
  back = workdir_lib.read_config(workdir)
  assert back.model.to_dict() == _demo().model.to_dict()
  ckpt = checkpoint_lib.Checkpointer(workdir, _demo())
  assert ckpt.all_steps() == [10, 20, 30]
  meta = ckpt.metadata(30)
  assert meta["images_seen"] == 30 * 16
  np.testing.assert_allclose(meta["train_flops"], loop.flops_per_image(_demo()) * 16 * 30,
                             rtol=1e-9)
  ckpt.close()


def test_tensorboard_has_scalars_reconstruction_images_and_the_config(uninterrupted):
  workdir, _ = uninterrupted
  summaries = _summaries(workdir)
  assert {s for s, tag, *_ in summaries if tag == "loss"} == set(range(1, STEPS + 1))
  images = [(s, v) for s, tag, kind, _, v in summaries if tag == "reconstruction"]
  assert [s for s, _ in images] == [STEPS] and images[0][1].WhichOneof("value") == "image"
  png = Image.open(io.BytesIO(images[0][1].image.encoded_image_string))
  assert png.size == (images[0][1].image.width, images[0][1].image.height)
  assert png.height > 1.5 * png.width  # The PNG's panels: 6 channel rows, 3 columns.
  texts = [(s, v) for s, tag, kind, plugin, v in summaries if plugin == "text"]
  assert len(texts) == 1 and texts[0][0] == 0 and texts[0][1].tag.startswith("config")
  text = texts[0][1].tensor.string_val[0].decode()
  saved = (workdir_lib.path(workdir) / workdir_lib.CONFIG).read_text()
  assert json.loads(text) == json.loads(saved)


def test_reconstruction_rows_are_named_by_the_stains(tmp_path):
  rng = np.random.default_rng(0)
  recon = {k: rng.normal(size=(16, 16, 3)) for k in ("pred", "target")}
  recon["mask"] = (rng.uniform(size=(16, 16, 3)) > 0.5).astype(np.float32)
  fig = metrics_lib.reconstruction_figure(recon, 7, ["nuclei", "er", "actin"])
  axes = np.asarray(fig.axes).reshape(3, 3)
  assert [ax.get_ylabel() for ax in axes[:, 0]] == ["nuclei", "er", "actin"]
  assert [ax.get_title() for ax in axes[0]] == ["masked input", "reconstruction", "target"]
  assert fig.texts[0].get_text() == "step 7"
  unnamed = metrics_lib.reconstruction_figure(recon, 7)  # No names known: numbered rows.
  assert [ax.get_ylabel() for ax in unnamed.axes[::3]] == ["channel 0", "channel 1", "channel 2"]


@pytest.mark.faults
def test_sigterm_saves_and_resume_reproduces_losses(uninterrupted, tmp_path, monkeypatch,
                                                    capsys, caplog):
  workdir = str(tmp_path / "run")
  write = metrics_lib.Writer.write

  def write_then_preempt(self, step, scalars):
    write(self, step, scalars)
    if step == 13:  # As if the scheduler pre-empted the job during step 14.
      signal.raise_signal(signal.SIGTERM)

  monkeypatch.setattr(metrics_lib.Writer, "write", write_then_preempt)
  first = loop.train(_demo(), workdir, progress=False, compiler_options=FAST)
  assert first["status"] == "preempted" and first["step"] == 14
  assert first["checkpoint_step"] == 14  # Saved on the way out (not a ckpt_every step).
  monkeypatch.setattr(metrics_lib.Writer, "write", write)
  capsys.readouterr()
  with caplog.at_level(logging.WARNING):
    second = loop.train(_demo(), workdir, progress=False, compiler_options=FAST)
  assert "could not be restored" not in caplog.text  # Orbax's noise about unread items.
  assert second["status"] == "finished" and second["step"] == STEPS
  # No progress bar (as in a cluster log): one plain line per logged step, from the resume on.
  lines = [l for l in capsys.readouterr().out.splitlines() if l.startswith("step ")]
  assert [int(l.split()[1].split("/")[0]) for l in lines] == list(range(15, STEPS + 1))
  assert lines[-1].startswith(f"step {STEPS}/{STEPS}: loss ") and "img/s" in lines[-1]
  assert "ETA" in lines[0] and "MFU" in lines[0]
  _, resumed = _losses(workdir)
  _, reference = _losses(uninterrupted[0])
  assert sorted(resumed) == list(range(1, STEPS + 1))
  assert [resumed[s] for s in range(1, STEPS + 1)] == [reference[s] for s in range(1, STEPS + 1)]


def test_nan_loss_stops_with_last_good_checkpoint(tmp_path):
  workdir = str(tmp_path / "nan")
  config = _demo(optimizer="lion", lr=1e30, warmup_frac=0.0, ckpt_every=1, total_steps=20,
                 plot_every=0)
  with pytest.raises(loop.NonFiniteLossError, match=r"at step (\d+); stopped. Last good "
                     r"checkpoint: step \d+ in .*Try a lower --config.lr") as e:
    loop.train(config, workdir, progress=False, compiler_options=FAST)
  bad_step = int(e.value.args[0].split("at step ")[1].split(";")[0])
  ckpt = checkpoint_lib.Checkpointer(workdir, config)
  assert ckpt.latest_step() == bad_step - 1  # Nothing written after the NaN.
  ckpt.close()


def _tree_digest(directory):
  """{relative path: sha256} of every file under `directory`."""
  out = {}
  for root, _, files in os.walk(directory):
    for f in files:
      path = os.path.join(root, f)
      with open(path, "rb") as fh:
        out[os.path.relpath(path, directory)] = hashlib.sha256(fh.read()).hexdigest()
  return out


def _cli_args(workdir, *extra):
  return ["--config", "configs/demo.py", f"--workdir={workdir}", "--no-progress",
          "--config.batch_size=16", f"--config.total_steps={STEPS}", "--config.log_every=1",
          "--config.ckpt_every=10", f"--config.plot_every={STEPS}", "--config.lr=3e-3",
          "--config.data.synthetic.site_size=64", *extra]


@pytest.mark.faults
def test_resume_with_changed_model_field_is_one_line_error_and_touches_nothing(
    uninterrupted, tmp_path, capsys):
  workdir = tmp_path / "copy"
  subprocess.run(["cp", "-r", uninterrupted[0], str(workdir)], check=True)
  before = _tree_digest(workdir)
  code = train_cli.main(_cli_args(workdir, "--config.model.width=32"))
  err = capsys.readouterr().err
  assert code == 2 and len(err.strip().splitlines()) == 1 and "Traceback" not in err
  assert "model.width 64 in the checkpoint, 32 requested" in err
  assert "--config.model.width=64" in err and "another --workdir" in err
  assert _tree_digest(workdir) == before  # Checkpoints, config.json, metrics: byte-identical.
  # --no-resume on a workdir with checkpoints refuses before writing anything too.
  assert train_cli.main(_cli_args(workdir, "--no-resume")) == 2
  assert "resume is off" in capsys.readouterr().err
  assert _tree_digest(workdir) == before


_WORKER = textwrap.dedent("""
    import sys
    sys.path.insert(0, {tests!r})
    from train import test_loop as t
    t.loop.train(t._demo(), {workdir!r}, progress=False, compiler_options=t.FAST)
""")


@pytest.mark.faults
def test_kill_9_then_resume_holds_each_step_once_with_the_uninterrupted_losses(
    uninterrupted, tmp_path):
  workdir = str(tmp_path / "killed")
  code = _WORKER.format(tests=os.path.dirname(os.path.dirname(__file__)), workdir=workdir)
  env = dict(os.environ, JAX_COMPILATION_CACHE_DIR=str(tmp_path / "cache"))
  proc = subprocess.Popen([sys.executable, "-c", code], env=env, stdout=subprocess.DEVNULL,
                          stderr=subprocess.DEVNULL)
  metrics = os.path.join(workdir, "metrics.jsonl")
  deadline = time.time() + 300
  try:
    while time.time() < deadline:  # Killed after checkpoint 10, having logged steps past it.
      done = workdir_lib.checkpoint_steps(workdir) if os.path.isdir(workdir) else []
      if 10 in done and os.path.isfile(metrics) and _losses(workdir)[0][-1]["step"] >= 14:
        break
      assert proc.poll() is None, "training ended before it could be killed"
      time.sleep(0.2)
    proc.kill()  # SIGKILL: no handler runs, nothing is saved on the way out.
  finally:
    proc.wait()
  rows, _ = _losses(workdir)
  assert max(r["step"] for r in rows) < STEPS, "killed too late to test a resume"
  summary = loop.train(_demo(), workdir, progress=False, compiler_options=FAST)
  assert summary["status"] == "finished" and summary["step"] == STEPS
  rows, resumed = _losses(workdir)
  steps = [r["step"] for r in rows]
  assert steps == sorted(set(steps)) == list(range(1, STEPS + 1))  # Strictly increasing.
  _, reference = _losses(uninterrupted[0])
  assert [resumed[s] for s in steps] == [reference[s] for s in steps]


@pytest.mark.faults
def test_truncated_newest_checkpoint_falls_back_with_one_warning_line(uninterrupted, tmp_path):
  workdir = tmp_path / "truncated"
  subprocess.run(["cp", "-r", uninterrupted[0], str(workdir)], check=True)
  for root, _, files in os.walk(workdir / "checkpoints" / "30" / "state"):
    for f in files:
      if not f.startswith("_") and not f.endswith(".txt"):
        path = os.path.join(root, f)
        os.truncate(path, os.path.getsize(path) // 2)
  proc = subprocess.run(
      [sys.executable, "-m", "maejax.train", *_cli_args(workdir, "--config.total_steps=31")],
      capture_output=True, text=True, timeout=300)
  output = proc.stdout + proc.stderr
  assert proc.returncode == 0, output
  assert "Traceback" not in output and "could not be restored" not in output
  warnings = [line for line in output.splitlines() if "checkpoint step 30" in line]
  assert len(warnings) == 1 and "resumed from step 20" in warnings[0], output
  assert "finished at step 31/31" in proc.stdout
  assert any(d.startswith("30.corrupt-") for d in os.listdir(workdir / "checkpoints"))


def test_plain_progress_line_has_step_loss_rate_mfu_and_eta():
  out = io.StringIO()
  bar = metrics_lib.Progress(0, 1000, enabled=True, batch_size=32, stream=out)
  assert bar.plain  # stderr is not a terminal under pytest: lines, not a bar.
  bar.log(400, {"loss": 0.51234, "images_per_s": 64.0, "tflops": 1.5, "mfu": 0.123})
  bar.log(1000, {"loss": 0.4, "images_per_s": 64.0})
  assert out.getvalue().splitlines() == [
      "step 400/1000: loss 0.5123, 64.0 img/s, TFLOP/s 1.50, MFU 12.3%, ETA 5m00s",
      "step 1000/1000: loss 0.4000, 64.0 img/s, MFU n/a, ETA 0s"]
