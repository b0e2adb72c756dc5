"""`python -m maejax.bench model` prints figures and, with --json, one JSON object last."""

import json
import sys

import pytest

from maejax.cli import bench


def test_bench_model_json_last_line(capsys):
  bench.main(["model", "--model", "vit_tiny", "--batch-size", "2", "--steps", "1", "--json"])
  last = capsys.readouterr().out.strip().splitlines()[-1]
  result = json.loads(last)
  assert result["model"] == "vit_tiny" and result["batch_size"] == 2
  assert result["images_per_s"] > 0 and result["tflops_per_s"] > 0
  assert result["gflop_per_image"] == pytest.approx(0.01139328, rel=1e-6)
  # vit_tiny runs its blocks as a loop: the CPU default rematerialises scanned stacks only.
  assert result["remat"] is False and result["remat_policy"] is None


def test_bench_model_reports_the_cpu_default_remat(capsys):
  bench.main(["model", "--model", "vit_tiny", "--batch-size", "2", "--steps", "1", "--json",
              "--config.model.scan_layers=true"])
  result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
  assert result["remat"] is True and result["remat_policy"] == "dots_attention"


def test_bench_model_bad_channels_is_one_line_error(capsys):
  assert bench.main(["model", "--model", "vit_tiny", "--channels", "3", "--steps", "1"]) == 2
  err = capsys.readouterr().err
  assert "expects 6 channels, got 3" in err and len(err.strip().splitlines()) == 1


def test_bench_usage_lists_the_commands(capsys):
  assert bench.main(["--help"]) == 0
  out = capsys.readouterr().out
  assert all(f"  {name} " in out for name in ("model", "embed", "train", "compile", "data"))
  assert bench.main(["nope"]) == 2


def test_bench_model_compare_torch_times_both(capsys):
  pytest.importorskip("transformers")
  bench.main(["model", "--model", "vit_tiny", "--batch-size", "2", "--steps", "1",
              "--compare-torch", "--json"])
  result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
  assert result["torch_model"] == "transformers.ViTMAEForPreTraining"
  assert result["torch_step_s"] > 0
  assert result["speedup_vs_torch"] == pytest.approx(result["torch_step_s"] / result["step_s"])
  # The ceiling: the step's FLOPs at the faster framework's matmul speed, over PyTorch's step.
  torch_tflops = result["gflop_per_image"] * 2 / result["torch_step_s"] / 1e3
  assert result["torch_tflops_per_s"] == pytest.approx(torch_tflops)
  fastest = max(result["jax_matmul_tflops_per_s"], result["torch_matmul_tflops_per_s"])
  assert result["speedup_ceiling_vs_torch"] == pytest.approx(fastest / torch_tflops)


def test_bench_embed_compare_torch_times_both(capsys):
  pytest.importorskip("torch")
  bench.main(["embed", "--model", "camae_tiny", "--batch-size", "2", "--channels", "3",
              "--steps", "1", "--compare-torch", "--json"])
  result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
  assert result["bench"] == "embed" and result["tokens"] == 1 + 3 * 16
  assert result["embed_s"] > 0 and result["torch_embed_s"] > 0
  assert result["speedup_vs_torch"] == pytest.approx(result["torch_embed_s"] / result["embed_s"])


@pytest.mark.parametrize("argv", [["model", "--model", "camae_tiny"],
                                  ["embed", "--model", "vit_tiny"]])
def test_bench_compare_torch_of_another_architecture_is_one_line_error(capsys, argv):
  pytest.importorskip("transformers")
  assert bench.main(argv + ["--compare-torch", "--steps", "1"]) == 2
  err = capsys.readouterr().err
  assert "--compare-torch compares" in err and len(err.strip().splitlines()) == 1


def test_bench_compare_torch_without_the_extra_says_to_install_it(capsys, monkeypatch):
  monkeypatch.setitem(sys.modules, "transformers", None)  # As if not installed.
  assert bench.main(["model", "--model", "vit_tiny", "--compare-torch", "--steps", "1"]) == 2
  err = capsys.readouterr().err
  assert "pip install -e '.[torch]'" in err and len(err.strip().splitlines()) == 1


def test_bench_embed_bfloat16_against_torch_autocast(capsys):
  """bf16 on both sides: each crop's cosine to its own fp32 embedding, the host CPU's
  features, and the kernels each framework ran its products with."""
  pytest.importorskip("torch")
  bench.main(["embed", "--model", "camae_tiny", "--batch-size", "2", "--channels", "3",
              "--steps", "1", "--dtype", "bfloat16", "--compare-torch", "--json"])
  result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
  assert result["dtype"] == "bfloat16"
  for key in ("cosine_to_float32", "torch_cosine_to_float32"):
    assert 0.999 < result[key]["min"] <= result[key]["median"] < 1.0  # bf16, not fp32.
  assert set(result["cpu"]) >= {"model", "avx2", "amx_bf16", "amx_tile"}
  # Every product of the bf16 program multiplies bf16 operands (XLA:CPU's bf16 kernels, AMX
  # where present); none is converted to f32 first (layers.dot_general).
  assert set(result["xla_dots"]["dot_operand_dtypes"]) == {"bf16"}
  assert all(k.count(":") >= 1 for k in result["torch_onednn_kernels"])  # kind:implementation
  assert result["torch_used_amx"] == bench.used_amx(result["torch_onednn_kernels"])


def test_used_amx_counts_matrix_products_only():
  # oneDNN names element-wise kernels after the CPU's ISA, AMX or not.
  assert not bench.used_amx(["eltwise:jit:avx10_1_512_amx", "reorder:jit:blk"])
  assert bench.used_amx(["eltwise:jit:avx512_core", "matmul:brg_matmul:avx10_1_512_amx"])
  assert bench.used_amx(["convolution:brg_conv_fwd:avx512_core_amx"])
  assert not bench.used_amx(["matmul:brg_matmul:avx512_core"])


@pytest.mark.parametrize("dtype,torch_dtype", [("float32", "float32"),
                                                ("bfloat16", "bfloat16")])
def test_torch_train_step_computes_in_the_models_precision(dtype, torch_dtype):
  """The PyTorch step runs its forward under torch.autocast(bfloat16) exactly where maejax's
  model computes in bf16; its weights stay fp32 either way."""
  torch = pytest.importorskip("torch")
  pytest.importorskip("transformers")
  from maejax.train import bench as train_bench
  config = train_bench.model_config("vit_tiny", batch_size=2, dtype=dtype)
  step = bench._torch_train_step(config)
  seen = []
  linear = next(m for m in step.model.modules() if isinstance(m, torch.nn.Linear))
  linear.register_forward_hook(lambda m, i, o: seen.append(o.dtype))
  step()
  assert seen == [getattr(torch, torch_dtype)]
  assert all(p.dtype == torch.float32 for p in step.model.parameters())


def test_bench_model_bfloat16_against_torch_autocast(capsys):
  pytest.importorskip("transformers")
  bench.main(["model", "--model", "vit_tiny", "--batch-size", "2", "--steps", "1",
              "--dtype", "bfloat16", "--compare-torch", "--json"])
  result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
  assert result["dtype"] == "bfloat16" and result["torch_step_s"] > 0
  fastest = max(result["jax_matmul_tflops_per_s"], result["torch_matmul_tflops_per_s"])
  assert result["speedup_ceiling_vs_torch"] == pytest.approx(
      fastest / result["torch_tflops_per_s"])


def test_dot_kernels_reads_operand_dtypes_from_the_compiled_program():
  import jax
  import jax.numpy as jnp
  f = jax.jit(lambda a, b, c: (a @ b, c @ c))
  text = f.lower(jnp.ones((8, 16), jnp.float32), jnp.ones((16, 8), jnp.float32),
                 jnp.ones((8, 8), jnp.int32)).compile().as_text()
  dtypes = bench.dot_kernels(text)["dot_operand_dtypes"]
  assert dtypes.get("f32") == 1 and dtypes.get("s32") == 1


def test_host_cpu_names_model_and_matrix_features():
  from maejax import host
  sapphire = ("processor\t: 0\nvendor_id\t: GenuineIntel\ncpu family\t: 6\nmodel\t\t: 143\n"
              "model name\t: Intel(R) Xeon(R) Platinum 8480+\n"
              "flags\t\t: fpu avx2 avx512f avx512_bf16 amx_bf16 amx_tile\n\nprocessor\t: 1\n")
  cpu = host.cpu(sapphire)
  assert cpu["model"] == "Intel(R) Xeon(R) Platinum 8480+" and cpu["model_id"] == "143"
  assert cpu["amx_bf16"] and cpu["amx_tile"] and cpu["avx512_bf16"]
  milan = host.cpu("model name\t: AMD EPYC\ncpu family\t: 25\nflags\t\t: fpu avx2\n")
  assert milan["avx2"] and not (milan["amx_bf16"] or milan["avx512f"])
