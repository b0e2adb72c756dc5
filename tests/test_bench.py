"""`python -m maejax.bench model` prints figures and, with --json, one JSON object last."""

import json

import pytest

from maejax.cli import bench


def test_bench_model_json_last_line(capsys):
  bench.main(["model", "--model", "vit_tiny", "--batch-size", "2", "--steps", "1", "--json"])
  last = capsys.readouterr().out.strip().splitlines()[-1]
  result = json.loads(last)
  assert result["model"] == "vit_tiny" and result["batch_size"] == 2
  assert result["images_per_s"] > 0 and result["tflops_per_s"] > 0
  assert result["gflop_per_image"] == pytest.approx(0.01139328, rel=1e-6)


def test_bench_model_bad_channels_is_one_line_error(capsys):
  assert bench.main(["model", "--model", "vit_tiny", "--channels", "3", "--steps", "1"]) == 2
  err = capsys.readouterr().err
  assert "expects 6 channels, got 3" in err and len(err.strip().splitlines()) == 1


def test_bench_usage_lists_the_commands(capsys):
  assert bench.main(["--help"]) == 0
  out = capsys.readouterr().out
  assert all(name in out for name in ("model", "train", "data"))
  assert bench.main(["nope"]) == 2
