"""`python -m maejax.bench train`: figures from the real step; analytic FLOPs vs XLA's count."""

import json

import numpy as np

from maejax.cli import bench as bench_cli


def test_bench_train_json_and_flops_match_xla(capsys):
  bench_cli.main(["train", "--config", "configs/demo.py", "--steps", "2", "--num-devices", "1",
                  "--config.batch_size=8", "--config.model.depth=2",
                  "--config.model.scan_layers=false",
                  "--config.peak_tflops_per_device=0.5", "--json"])
  result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
  assert result["bench"] == "train" and result["num_devices"] == 1
  assert result["images_per_s"] > 0
  np.testing.assert_allclose(result["tflops_per_s"],
                             result["images_per_s"] * result["gflop_per_image"] / 1e3, rtol=1e-9)
  np.testing.assert_allclose(result["mfu"], result["tflops_per_s"] / 0.5, rtol=1e-9)
  # Analytic matmul/attention FLOPs vs everything XLA counts in the compiled step (which
  # adds norms, activations, the loss and the optimizer update): within a few percent.
  ratio = result["gflop_per_image"] / result["xla_gflop_per_image"]
  assert 0.85 < ratio <= 1.02, ratio
