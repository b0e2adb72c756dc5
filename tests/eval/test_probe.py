"""CellProfiler feature probe: planted linear features, category coverage, segmentation,
and the CLI on PartSegData's real confocal stack with a random-weights tiny model."""

import json

import numpy as np
import pandas as pd
import pytest

from maejax.cli import probe as probe_cli
from maejax.eval import probe


def test_probe_recovers_a_linear_feature_and_not_an_independent_one():
  rng = np.random.default_rng(0)
  n, d = 150, 24
  emb = rng.standard_normal((n, d))
  linear = emb @ rng.standard_normal(d) + 0.05 * rng.standard_normal(n)
  independent = rng.standard_normal(n)
  features = pd.DataFrame({"Metadata_n_nuclei": np.ones(n, int), "nuclei_Area": linear,
                           "nuclei_Intensity_MeanIntensity__dna": independent,
                           "nuclei_Location_Center_X": rng.standard_normal(n)})
  cats = {"nuclei_Area": "shape", "nuclei_Intensity_MeanIntensity__dna": "intensity",
          "nuclei_Location_Center_X": "location"}
  groups = np.arange(n) // 10
  per_feature, summary = probe.run_probe(features, cats, {"m": emb}, groups=groups, folds=5)
  r2 = per_feature.set_index("feature").r2
  assert r2["nuclei_Area"] > 0.98
  assert r2["nuclei_Intensity_MeanIntensity__dna"] < 0.1
  assert "nuclei_Location_Center_X" not in r2  # positions are not reported
  assert set(summary.category) == {"shape", "intensity"}
  # An independent reference: scikit-learn's plain Ridge at a fixed small alpha, same folds.
  from sklearn import linear_model, metrics, model_selection
  pred = model_selection.cross_val_predict(linear_model.Ridge(alpha=1e-3), emb, linear,
                                           cv=model_selection.GroupKFold(5), groups=groups)
  assert abs(metrics.r2_score(linear, pred) - r2["nuclei_Area"]) < 0.01


def test_categories_cover_every_cp_measure_function_and_feature():
  from cp_measure import bulk
  functions = set(bulk.get_core_measurements()) | set(bulk.get_correlation_measurements())
  assert functions <= set(probe.CATEGORY_OF), functions - set(probe.CATEGORY_OF)
  assert set(probe.CATEGORY_OF.values()) == set(probe.CATEGORIES)
  yy, xx = np.mgrid[:48, :48]
  labels = ((yy - 20) ** 2 + (xx - 22) ** 2 < 81).astype(np.int32)
  rng = np.random.default_rng(1)
  crop = (rng.random((48, 48, 2)) * 200 * labels[..., None] + 20).astype(np.uint8)
  values, cats = probe.measure_crop(crop, {"nuclei": labels}, ["a", "b"],
                                    functions=list(functions))
  assert set(cats.values()) == set(probe.CATEGORIES) | {probe.LOCATION}
  assert cats["nuclei_Area"] == "shape" and cats["nuclei_Intensity_MeanIntensity__a"] == "intensity"
  assert cats["nuclei_Correlation_Pearson__a__b"] == "correlation"
  assert values["nuclei_Area"] == labels.sum()  # one object: the mean is its area


def test_segmentation_finds_planted_nuclei_and_their_cells():
  yy, xx = np.mgrid[:64, :64]
  crop = np.full((64, 64, 2), 10, np.uint8)
  centres = [(14, 14), (16, 46), (46, 30)]
  for y, x in centres:
    crop[..., 0][(yy - y) ** 2 + (xx - x) ** 2 < 36] = 200   # nucleus, radius 6
    crop[..., 1][(yy - y) ** 2 + (xx - x) ** 2 < 121] = 120  # cell, radius 11
  thresholds = probe.otsu_thresholds(crop[None], (0, 1))
  nuclei, cells = probe.segment(crop, 0, 1, thresholds, max_objects=8)
  assert nuclei.max() == 3 and cells.max() == 3
  for label in range(1, 4):
    assert np.all(cells[nuclei == label] == label)  # a cell contains its own nucleus
    assert 90 < (nuclei == label).sum() < 130 and 300 < (cells == label).sum() < 420
  assert probe.segment(crop, 0, 1, thresholds, max_objects=2)[0].max() == 2
  empty = np.full((64, 64, 2), 10, np.uint8)
  assert probe.segment(empty, 0, 1, thresholds)[0].max() == 0


def test_cli_on_partseg_crops_with_random_tiny_model(tmp_path, capsys):
  pytest.importorskip("PartSegData", reason="partsegdata ships the real confocal stack")
  code = probe_cli.main(["--model", "vit_tiny", "--data", "partseg", "--out", str(tmp_path),
                         "--max-crops", "40", "--folds", "3", "--json"])
  assert code == 0
  captured = capsys.readouterr()
  info = json.loads(captured.out.strip().splitlines()[-1])
  assert "measure: 100%" in captured.err and "40/40" in captured.err  # The progress bar.
  assert info["crops"] == 40 and info["crops_with_nuclei"] >= 10
  medians = info["median_r2"]["vit_tiny (random)"]
  assert set(medians) == set(probe.CATEGORIES) - {"correlation"} or \
      set(medians) == set(probe.CATEGORIES)
  assert all(np.isfinite(v) and v <= 1 for v in medians.values())
  summary = pd.read_csv(tmp_path / "probe_summary.csv")
  assert list(summary.columns) == ["model", "category", "median_r2", "n_features"]
  features = pd.read_parquet(tmp_path / "cellprofiler_features.parquet")
  assert len(features) == 40 and features.shape[1] > 300
  assert (tmp_path / "probe.png").stat().st_size > 1000


def test_bad_inputs_give_clear_errors():
  crops = np.zeros((4, 32, 32, 2), np.uint8)
  with pytest.raises(ValueError, match="nuclei channel 5 out of range"):
    probe.measure(crops, ["a", "b"], nuclei_channel=5, cell_channel=0)
  with pytest.raises(ValueError, match="uint8"):
    probe.measure(crops.astype(np.float32), ["a", "b"], nuclei_channel=0, cell_channel=1)
  with pytest.raises(ValueError, match="expected synthetic, partseg or folder"):
    probe_cli.load_crops("imagenet", 64, 10, 0)


def test_config_overrides_set_the_screen_and_the_random_models(capsys, tmp_path):
  data = probe_cli.data_config_for("synthetic", ["--config.data.synthetic.site_size=128"])
  assert data.source == "synthetic" and data.synthetic.site_size == 128
  configs = probe_cli.random_configs(["vit_tiny"], 4, ["--config.model.depth=1"])
  assert configs["vit_tiny"].depth == 1 and configs["vit_tiny"].channels == 4
  with pytest.raises(ValueError, match="--config.data.synthetic.nope: no such config field"):
    probe_cli.data_config_for("synthetic", ["--config.data.synthetic.nope=1"])
  with pytest.raises(ValueError, match="--config.model.depth='x': expected an int"):
    probe_cli.random_configs(["vit_tiny"], 4, ["--config.model.depth=x"])
  with pytest.raises(ValueError, match="--data partseg reads one fixed stack"):
    probe_cli.data_config_for("partseg", ["--config.data.crop_size=32"])
  assert probe_cli.main(["--model", "vit_tiny", "--out", str(tmp_path),
                         "--config.model.nope=1"]) == 2
  err = capsys.readouterr().err
  assert err.startswith("error: --config.model.nope: no such config field") and \
      err.count("\n") == 1, err
