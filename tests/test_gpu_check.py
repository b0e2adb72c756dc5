"""`python -m maejax.bench gpu-check`: the whole flow with --tiny on the CPU, one part in a
process of its own, and the pieces that read a GPU's results (HLO, traces, memory)."""

import json
import os
import subprocess
import sys
import types

import numpy as np
import pytest

from maejax.cli import gpu_check

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _run(out, *args):
  env = {**os.environ, "JAX_PLATFORMS": "cpu"}
  p = subprocess.run([sys.executable, "-m", "maejax.bench", "gpu-check", "--tiny", "--out",
                      str(out), "--json", *args], capture_output=True, text=True, env=env,
                     cwd=ROOT, timeout=600)
  assert p.returncode == 0, p.stderr[-3000:]
  with open(out / "gpu_check.json") as f:
    return json.loads(p.stdout.strip().splitlines()[-1]), json.load(f)


# Every kind of part; the other train parts run the same code as these (CI time).
PARTS = ("env", "train_vitl16", "numerics", "train_vits16", "embed_camae_s16", "data",
         "profile_vitl16")


def test_tiny_check_measures_each_kind_of_part(tmp_path):
  last, result = _run(tmp_path, "--parts", ",".join(PARTS))
  assert last == result["summary"] and result["summary"]["failed_parts"] == []
  assert result["gpu_check"]["tiny"] and not result["gpu_check"]["isolated"]
  assert set(PARTS) <= set(result)
  env = result["env"]
  assert env["backend"] == "cpu" and env["jax"] and env["jaxlib"] and "jax" in env["packages"]
  for name in ("train_vitl16", "train_vits16"):
    r = result[name]
    assert r["dtype"] == "bfloat16" and r["batch_size"] == 4 and r["step_s"] > 0
    assert r["images_per_s"] == pytest.approx(4 / r["step_s"])
    assert r["tflops_per_s"] == pytest.approx(r["images_per_s"] * r["gflop_per_image"] / 1e3)
    assert r["mfu"] is None  # No known peak for a CPU.
    # Read from the compiled program: XLA:CPU has no cuDNN attention.
    assert r["cudnn_flash_attention"] is False and r["program_gib"]["total"] > 0
  cases = result["numerics"]["cases"]  # --tiny: fp32 at the highest precision only.
  assert [(c["dtype"], c["matmul_precision"], c["rtol"]) for c in cases] == [
      ("float32", "highest", 1e-4)]
  for c in cases:  # The same CPU both times: the same numbers.
    assert np.isfinite(c["loss"]) and c["loss_rel_diff"] == 0 and c["update_rel_diff"] == 0
  assert result["embed_camae_s16"]["crops_per_s"] > 0
  loader = result["summary"]["loader"]
  assert loader["crops_per_s"] == result["data"]["per_worker"]["arrayrecord"]["crops_per_s"] > 0
  assert loader["ratio"] == pytest.approx(loader["crops_per_s"]
                                          / result["train_vitl16"]["images_per_s"])
  assert result["profile_vitl16"]["top_ops"] and result["profile_vitl16"]["total_ms"] > 0
  log = (tmp_path / "gpu_check.log").read_text()
  assert all(f"{name}: ok" in log for name in PARTS)


def test_isolated_part(tmp_path):
  _, result = _run(tmp_path, "--isolate", "--parts", "env")
  assert "error" not in result["env"], result["env"]
  assert result["gpu_check"]["isolated"] and result["env"]["backend"] == "cpu"
  assert result["env"]["part_s"] > 0 and result["summary"]["failed_parts"] == []


def test_parts_past_the_budget_are_skipped(tmp_path, capsys):
  assert gpu_check.main(["--tiny", "--out", str(tmp_path), "--parts", "env,data",
                         "--budget-s", "10", "--json"]) == 0
  last = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
  assert last["failed_parts"] == ["env", "data"]  # Less than 15 s of the budget left for each.
  result = json.loads((tmp_path / "gpu_check.json").read_text())
  assert result["env"]["error"].startswith("skipped") and "nvidia_smi" in result


def test_unknown_part_is_one_line_error(tmp_path, capsys):
  assert gpu_check.main(["--out", str(tmp_path), "--parts", "env,nope"]) == 2
  err = capsys.readouterr().err
  assert "--parts nope" in err and len(err.strip().splitlines()) == 1


def test_attention_kernels_reads_cudnn_fmha_custom_calls():
  hlo = ('%a = bf16[8,65,16,64] custom-call(...), custom_call_target="__cudnn$fmhaSoftmax"\n'
         '%b = f32[8,1024] custom-call(...), custom_call_target="__cublas$lt$matmul"\n')
  got = gpu_check.attention_kernels(hlo)
  assert got["cudnn_flash_attention"] and got["cudnn_attention_targets"] == ["__cudnn$fmhaSoftmax"]
  assert got["custom_call_targets"] == ["__cublas$lt$matmul", "__cudnn$fmhaSoftmax"]
  # A cuDNN GEMM fusion is not attention.
  assert not gpu_check.attention_kernels('custom_call_target="__cudnn$fusion"')[
      "cudnn_flash_attention"]


def test_top_ops_sums_device_tracks():
  trace = {"traceEvents": [
      {"ph": "M", "name": "process_name", "pid": 1, "args": {"name": "/host:CPU"}},
      {"ph": "M", "name": "process_name", "pid": 7, "args": {"name": "/device:GPU:0"}},
      {"ph": "X", "pid": 1, "name": "python", "dur": 1e6},
      {"ph": "X", "pid": 7, "name": "fmha", "dur": 300.0},
      {"ph": "X", "pid": 7, "name": "gemm", "dur": 400.0},
      {"ph": "X", "pid": 7, "name": "fmha", "dur": 200.0}]}
  got = gpu_check.top_ops(trace, top=5)
  assert got["tracks"] == "device" and got["total_ms"] == pytest.approx(0.9)
  assert [(o["name"], o["ms"], o["share"]) for o in got["top_ops"]] == [
      ("fmha", 0.5, round(5 / 9, 4)), ("gemm", 0.4, round(4 / 9, 4))]


class _Bench:
  """A StepBench stand-in: a device with `free` bytes, programs needing `per_example` bytes
  per example plus `fixed`."""

  def __init__(self, free, per_example, fixed):
    stats = {"bytes_limit": free, "bytes_in_use": 0}
    self.devices = [types.SimpleNamespace(memory_stats=lambda: stats)]
    self.config = types.SimpleNamespace(batch_size=0)
    self.per_example, self.fixed, self.compiled = per_example, fixed, []

  def batch(self):
    return self.config.batch_size

  def compile(self, state, batch):
    self.compiled.append(batch)
    m = types.SimpleNamespace(output_size_in_bytes=10, alias_size_in_bytes=10,
                              argument_size_in_bytes=10,
                              temp_size_in_bytes=self.fixed + self.per_example * batch)
    return types.SimpleNamespace(memory_analysis=lambda: m), 1.0


# 100,000 bytes free, 300 a example + 10,000 fixed: 90% of it holds 266 examples. Up: by the
# ratio of 90% of free memory to the whole need (the fixed part makes it undershoot); down: the
# ratio times 0.85 (there it overshoots); within [1, 1.25): kept.
@pytest.mark.parametrize("first,expected", [(64, [64, 192]), (1024, [1024, 240]),
                                            (256, [256]), (300, [300, 224])])
def test_fit_batch_scales_to_free_memory(first, expected):
  bench = _Bench(free=100_000, per_example=300, fixed=10_000)
  _, batch, _, tries = gpu_check.fit_batch(bench, None, first)
  assert bench.compiled == expected == [t["batch_size"] for t in tries]
  assert batch == expected[-1]


def test_fit_batch_keeps_the_batch_without_a_memory_limit():
  bench = _Bench(free=100_000, per_example=300, fixed=10_000)
  bench.devices = [types.SimpleNamespace(memory_stats=lambda: None)]  # XLA:CPU
  assert gpu_check.fit_batch(bench, None, 64)[1] == 64 and bench.compiled == [64]



def test_each_compilation_cache_context_caches_in_its_own_folder(tmp_path):
  # A process of its own: JAX opens one cache per process, at the first compile.
  script = f"""
import os
import jax, jax.numpy as jnp
from maejax.cli import gpu_check
first, second = {str(tmp_path / "first")!r}, {str(tmp_path / "second")!r}
with gpu_check.compilation_cache(first):
  jax.jit(lambda x: x * 3.0)(jnp.ones(4)).block_until_ready()
n_first = len(os.listdir(first))
assert n_first, "nothing cached in the first context"
with gpu_check.compilation_cache(second):
  jax.jit(lambda x: x + 5.0)(jnp.ones(4)).block_until_ready()
assert len(os.listdir(first)) == n_first, "the second context cached in the first's folder"
assert os.listdir(second), "nothing cached in the second context"
assert "JAX_COMPILATION_CACHE_DIR" not in os.environ
"""
  env = {k: v for k, v in os.environ.items() if not k.startswith("JAX_COMPILATION")}
  p = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                     env={**env, "JAX_PLATFORMS": "cpu"}, cwd=ROOT, timeout=300)
  assert p.returncode == 0, p.stderr[-3000:]
