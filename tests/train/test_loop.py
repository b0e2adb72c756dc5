"""End to end: the demo's loss falls; kill (SIGTERM) and resume reproduces the losses exactly;
NaN stops the run with the last good checkpoint kept."""

import json
import os
import signal

import jax
import numpy as np
import pytest

from maejax.train import checkpoint as checkpoint_lib
from maejax.train import config as config_lib
from maejax.train import loop
from maejax.train import metrics as metrics_lib

FAST = {"xla_backend_optimization_level": 0}
STEPS = 30


def _demo(**kw):
  c = config_lib.load_config("configs/demo.py")
  c.batch_size, c.total_steps, c.log_every, c.ckpt_every, c.plot_every = 16, STEPS, 1, 10, STEPS
  c.lr = 3e-3
  c.data.synthetic.site_size = 64  # Renders 16x faster than the demo's 256 px sites.
  c.update(kw)
  return c


def _losses(workdir):
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    rows = [json.loads(line) for line in f]
  return rows, {r["step"]: r["loss"] for r in rows}


@pytest.fixture(scope="module", autouse=True)
def compilation_cache(tmp_path_factory):
  """Runs of one config compile identical programs: let the later runs load them."""
  names = ("jax_compilation_cache_dir", "jax_persistent_cache_min_compile_time_secs",
           "jax_persistent_cache_min_entry_size_bytes")
  old = {n: getattr(jax.config, n) for n in names}
  jax.config.update(names[0], str(tmp_path_factory.mktemp("xla_cache")))
  jax.config.update(names[1], 0.0)
  jax.config.update(names[2], 0)
  yield
  for n, v in old.items():
    jax.config.update(n, v)


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
  assert os.listdir(os.path.join(workdir, "tensorboard"))
  assert os.path.isfile(os.path.join(workdir, "plots", f"reconstruction_{STEPS:08d}.png"))
  # The run directory describes itself: the config comes back from it.
  back = checkpoint_lib.read_config(workdir)
  assert back.model.to_dict() == _demo().model.to_dict()
  ckpt = checkpoint_lib.Checkpointer(os.path.join(workdir, "checkpoints"), _demo())
  assert ckpt.all_steps() == [10, 20, 30]
  meta = ckpt.metadata(30)
  assert meta["images_seen"] == 30 * 16
  flops = loop.flops_per_image(_demo())
  if flops is not None:
    np.testing.assert_allclose(meta["train_flops"], flops * 16 * 30, rtol=1e-9)
  ckpt.close()


def test_sigterm_saves_and_resume_reproduces_losses(uninterrupted, tmp_path, monkeypatch):
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
  second = loop.train(_demo(), workdir, progress=False, compiler_options=FAST)
  assert second["status"] == "finished" and second["step"] == STEPS
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
  ckpt = checkpoint_lib.Checkpointer(os.path.join(workdir, "checkpoints"), config)
  assert ckpt.latest_step() == bad_step - 1  # Nothing written after the NaN.
  ckpt.close()
