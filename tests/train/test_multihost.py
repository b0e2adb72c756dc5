"""Two processes on loopback (jax.distributed + gloo, 2 CPU devices each) train, checkpoint
and resume together; host batches become one global batch."""

import json
import os
import socket
import subprocess
import sys

WORKER = os.path.join(os.path.dirname(__file__), "multihost_worker.py")
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _free_port():
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def test_two_process_training_checkpoint_and_resume(tmp_path):
  port, workdir = _free_port(), str(tmp_path / "run")
  env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=2",
             JAX_PLATFORMS="cpu", PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
  procs = [subprocess.Popen([sys.executable, WORKER, str(i), str(port), workdir,
                             str(tmp_path / f"out{i}.json")], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
           for i in range(2)]
  try:
    logs = [p.communicate(timeout=240)[0] for p in procs]
  finally:
    for p in procs:
      if p.poll() is None:
        p.kill()
  for p, log in zip(procs, logs):
    assert p.returncode == 0, log[-3000:]
  outs = [json.load(open(tmp_path / f"out{i}.json")) for i in range(2)]
  for out in outs:
    assert out["process_count"] == 2 and out["devices"] == 4
    assert out["global_shape"] == [8, 2, 2, 1] and out["global_sum"] == (4 * 1 + 4 * 2) * 4
    assert out["first"]["status"] == "finished" and out["first"]["step"] == 4
    assert out["second"]["status"] == "finished" and out["second"]["step"] == 6
  # Both processes computed the same global step, so they report the same loss.
  assert outs[0]["second"]["final_loss"] == outs[1]["second"]["final_loss"]
  # Only process 0 writes logs; every process wrote its own data-iterator state.
  rows = [json.loads(line) for line in open(os.path.join(workdir, "metrics.jsonl"))]
  assert [r["step"] for r in rows] == [1, 2, 3, 4, 5, 6]
  data_dir = os.path.join(workdir, "checkpoints", "6", "data")
  assert {"process_0-of-2.json", "process_1-of-2.json"} <= set(os.listdir(data_dir))
