"""Benchmark figures: every one titled, recall plots with the random baseline, PNGs written."""

import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
from matplotlib import pyplot as plt
from PIL import Image

from maejax.eval import plots


def _png(path):
  with Image.open(path) as image:
    assert image.format == "PNG" and min(image.size) > 100
    return image.size


def _lines(ax):
  return {line.get_label(): line for line in ax.get_lines()}


def test_recall_curves_have_each_database_the_random_baseline_and_a_title(tmp_path):
  p = np.arange(1, 51)
  curve = pd.concat([pd.DataFrame(dict(database=db, percentile=p, recall=r))
                     for db, r in (("CORUM", np.sqrt(p / 50)), ("StringDB", p / 60),
                                   ("random", 2 * p / 100))])
  fig = plots.recall_curves_figure(curve, title="recall (tvn)")
  ax = fig.axes[0]
  lines = _lines(ax)
  assert set(lines) == {"CORUM", "StringDB", "random"}
  assert lines["random"].get_linestyle() == "--"
  np.testing.assert_allclose(lines["random"].get_ydata(), 2 * p / 100)
  assert ax.get_title() == "recall (tvn)"
  plt.close(fig)
  _png(plots.plot_recall_curves(curve, tmp_path / "recall_curve.png"))


def _sweep_table():
  rows = []
  for run, scale in (("demo", 1.0), ("munet_demo", 0.5)):
    for flops in (1e10, 1e11, 1e12):
      for db in ("CORUM", "StringDB"):
        rows.append(dict(run=run, model=run, train_flops=flops, database=db,
                         recall_5_95=scale * np.log10(flops) / 20, recall_10_90=0.3))
  return pd.DataFrame(rows)


def test_recall_vs_flops_has_a_line_per_run_the_random_baseline_and_a_title(tmp_path):
  kw = dict(database="StringDB", logx=True, xlabel="cumulative training FLOPs",
            title="recall vs training compute")
  fig = plots.sweep_figure(_sweep_table(), "train_flops", "recall_5_95", **kw)
  ax = fig.axes[0]
  lines = _lines(ax)
  assert set(lines) == {"demo (demo)", "munet_demo (munet_demo)", "random"}
  np.testing.assert_allclose(lines["random"].get_ydata(), [0.10, 0.10])  # Pairs selected.
  assert lines["random"].get_linestyle() == "--"
  np.testing.assert_allclose(lines["demo (demo)"].get_ydata(), [0.5, 0.55, 0.6])
  assert ax.get_title() == "recall vs training compute" and ax.get_xscale() == "log"
  assert ax.get_ylabel() == "recall 5/95 (StringDB)"
  plt.close(fig)
  png = plots.plot_sweep(_sweep_table(), "train_flops", "recall_5_95",
                         tmp_path / "recall_vs_flops.png", **kw)
  _png(png)


@pytest.mark.parametrize("column,expected", [("recall_5_95", 0.10), ("recall_10_90", 0.20),
                                             ("recall_2.5_97.5", 0.05)])
def test_random_recall_is_the_fraction_of_pairs_selected(column, expected):
  assert plots.random_recall(column) == pytest.approx(expected)


def test_replicate_histogram_has_a_title_naming_the_correction(tmp_path):
  table = pd.DataFrame({"cosine": np.random.default_rng(0).uniform(0.2, 0.9, 40)})
  fig = plots.replicate_figure(table, 0.05, "tvn")
  ax = fig.axes[0]
  assert ax.get_title() == "replicate consistency (correction: tvn)"
  null = _lines(ax)["random wells (median)"]
  np.testing.assert_allclose(null.get_xdata(), [0.05, 0.05])
  assert sum(p.get_height() for p in ax.patches) == 40  # Every perturbation in a bar.
  plt.close(fig)
  _png(plots.plot_replicate_consistency(table, 0.05, tmp_path / "r.png", correction="tvn"))
  assert plots.replicate_figure(table.iloc[:0], 0.05, "tvn") is None


def test_complex_heatmap_is_titled_and_groups_complexes(tmp_path):
  genes = [f"G{i}" for i in range(8)]
  features = np.random.default_rng(1).normal(size=(8, 5))
  clusters = {"complex A": genes[:4], "complex B": genes[4:7], "pair": genes[6:]}
  fig = plots.complex_heatmap_figure(features, genes, clusters)
  ax = fig.axes[0]
  assert ax.get_title().startswith("known complexes")
  assert [t.get_text() for t in ax.get_xticklabels()] == genes[:7]  # "pair" is too small.
  assert len(ax.patches) == 2  # One outline per complex.
  plt.close(fig)
  _png(plots.plot_complex_heatmap(features, genes, clusters, tmp_path / "h.png"))
  assert plots.plot_complex_heatmap(features, genes, {"x": ["G0", "Z"]}, tmp_path / "n.png") is None


def test_benchmark_command_writes_its_plots_and_warns_in_one_line(tmp_path):
  rng = np.random.default_rng(2)
  genes = [f"G{i}" for i in range(8)] * 2 + ["EMPTY"] * 12
  table = pd.DataFrame({"Metadata_perturbation": genes,
                        "Metadata_experiment": [f"E{i % 2}" for i in range(len(genes))],
                        "Metadata_is_control": [g == "EMPTY" for g in genes],
                        **{f"f{k}": rng.normal(size=len(genes)) for k in range(6)}})
  table.to_csv(tmp_path / "wells.csv", index=False)
  rel = tmp_path / "relationships"
  rel.mkdir()
  (rel / "Known.txt").write_text("entity1,entity2\nG0,G1\nG2,G3\nG4,G5\n")
  (rel / "Elsewhere.txt").write_text("entity1,entity2\nTP53,MDM2\n")  # No gene in the map.
  proc = subprocess.run(
      [sys.executable, "-W", "default", "-m", "maejax.benchmark", "--embeddings",
       str(tmp_path / "wells.csv"), "--relationships", str(rel), "--out", str(tmp_path / "out"),
       "--n-null", "20"], capture_output=True, text=True, timeout=300, cwd=tmp_path)
  assert proc.returncode == 0, proc.stderr
  ours = [l for l in proc.stderr.splitlines() if "Elsewhere" in l]
  assert len(ours) == 1 and ours[0].startswith("warning: database Elsewhere: none of its"), (
      proc.stderr)
  assert "UserWarning" not in proc.stderr and "warnings.warn" not in proc.stderr
  for name in ("recall_curve.png", "replicate_consistency.png"):
    _png(tmp_path / "out" / name)
