"""The synthetic screen: determinism, layout, planted biology, writing to disk."""

import json
import os

import numpy as np
import pandas as pd
import pytest

from maejax.data import synthetic
from maejax.cli import synthetic as synthetic_cli

SMALL = dict(site_size=64, cell_radius=8.0, n_groups=3, genes_per_group=3, n_null_genes=2,
             n_experiments=1, plates_per_experiment=2, controls_per_plate=3, sites_per_well=1)


def test_deterministic_per_seed_and_index():
  a = synthetic.SyntheticScreen(**SMALL)
  b = synthetic.SyntheticScreen(**SMALL)
  order = [5, 0, 3]
  for i in order:  # access order must not matter: each site is a function of (seed, index)
    np.testing.assert_array_equal(a[i], b[i])
  np.testing.assert_array_equal(a[5], b[5])
  pd.testing.assert_frame_equal(a.metadata, b.metadata)
  c = synthetic.SyntheticScreen(**{**SMALL, "seed": 1})
  assert not np.array_equal(a[0], c[0])
  img = a[0]
  assert img.dtype == np.uint8 and img.shape == (64, 64, 6)
  assert (img.reshape(-1, 6).std(0) > 1).all()  # every channel has structure


def test_layout_controls_and_relationships():
  s = synthetic.SyntheticScreen(**SMALL)
  m = s.metadata
  assert len(m) == 2 * (3 * 3 + 2 + 3)
  for _, plate in m.groupby(["experiment", "plate"]):
    assert plate.is_control.sum() == 3
    assert set(plate.perturbation[~plate.is_control]) == set(s.genes.gene)
    assert not plate.well.duplicated().any()
  rel = s.relationships
  groups = s.genes.set_index("gene").group
  # Every ordered pair of distinct same-group genes, nothing else; null genes in no pair.
  expected = {(a, b) for a in groups.index for b in groups.index
              if a != b and groups[a] and groups[a] == groups[b]}
  assert set(zip(rel.entity1, rel.entity2)) == expected and len(rel) == 3 * 3 * 2
  assert list(rel.columns) == ["entity1", "entity2"]


def _site_features(img):
  x = img.astype(np.float32)
  return np.log1p(np.concatenate([x.mean((0, 1)), x.std((0, 1)),
                                  np.percentile(x, 99, axis=(0, 1))]))


def test_planted_groups_recoverable_from_per_channel_statistics():
  s = synthetic.SyntheticScreen(site_size=96, cell_radius=8.0, sites_per_well=2)
  feats = np.stack([_site_features(s[i]) for i in range(len(s))])
  m = s.metadata
  for plate in m.plate_index.unique():  # batch correction: center-scale on each plate's controls
    sel = (m.plate_index == plate).to_numpy()
    ctrl = sel & m.is_control.to_numpy()
    feats[sel] = (feats[sel] - feats[ctrl].mean(0)) / (feats[ctrl].std(0) + 1e-6)
  genes = pd.DataFrame(feats).groupby(m.perturbation.to_numpy()).mean().drop(synthetic.CONTROL)
  x = genes.to_numpy() / np.linalg.norm(genes.to_numpy(), axis=1, keepdims=True)
  sim = x @ x.T
  names = list(genes.index)
  iu = np.triu_indices(len(names), 1)
  threshold = np.quantile(sim[iu], 0.9)
  pairs = s.relationships
  hits = [sim[names.index(a), names.index(b)] > threshold
          for a, b in zip(pairs.entity1, pairs.entity2)]
  # Random pairs pass the top-10% threshold 10% of the time.
  assert np.mean(hits) > 0.6
  # Genes without phenotype look like controls: their profiles are small.
  null = s.genes.gene[~s.genes.has_phenotype]
  strong = s.genes.gene[s.genes.has_phenotype]
  norm = np.linalg.norm(genes.to_numpy(), axis=1)
  norms = pd.Series(norm, index=names)
  assert norms[null].mean() < 0.5 * norms[strong].mean()


def test_batch_effects_switch():
  spec = dict(SMALL, n_experiments=2, plates_per_experiment=1, controls_per_plate=4)
  on = synthetic.SyntheticScreen(**spec)
  off = synthetic.SyntheticScreen(**spec, batch_effects=False)

  def control_plate_means(s):
    m = s.metadata
    return np.stack([np.mean([s[i].reshape(-1, 6).mean(0) for i in np.flatnonzero(
        (m.plate_index == p) & m.is_control)], 0) for p in sorted(m.plate_index.unique())])

  gap_on = np.abs(np.diff(control_plate_means(on), axis=0)).mean()
  gap_off = np.abs(np.diff(control_plate_means(off), axis=0)).mean()
  assert gap_on > 3 * gap_off


@pytest.mark.parametrize("fmt", ["png", "tif"])
def test_write_screen_round_trip(tmp_path, fmt):
  import tifffile
  from PIL import Image
  s = synthetic.SyntheticScreen(**{**SMALL, "plates_per_experiment": 1})
  info = synthetic.write_screen(s, str(tmp_path), fmt=fmt, workers=1)
  assert info["sites"] == len(s)
  meta = pd.read_csv(tmp_path / "metadata.csv")
  assert {"experiment", "plate", "well", "site", "perturbation", "is_control"} <= set(meta.columns)
  rel = pd.read_csv(tmp_path / "relationships.csv")
  assert list(rel.columns) == ["entity1", "entity2"] and len(rel) == len(s.relationships)
  row = meta.iloc[3]
  for c in range(6):
    path = tmp_path / "images" / row.experiment / f"Plate{row.plate}" / f"{row.well}_s{row.site}_w{c + 1}.{fmt}"
    plane = tifffile.imread(path) if fmt == "tif" else np.asarray(Image.open(path))
    np.testing.assert_array_equal(plane, s[3][:, :, c])


def test_cli_writes_and_prints_json(tmp_path, capsys):
  out = tmp_path / "screen"
  assert synthetic_cli.main([
      "--out", str(out), "--site-size", "32", "--n-groups", "2", "--genes-per-group", "2",
      "--n-null-genes", "1", "--n-experiments", "1", "--plates-per-experiment", "1",
      "--controls-per-plate", "2", "--sites-per-well", "1", "--workers", "1",
      "--cell-radius", "6", "--json"]) == 0
  captured = capsys.readouterr()
  summary = json.loads(captured.out.strip().splitlines()[-1])
  assert summary["sites"] == 7
  assert "write: 100%" in captured.err and "7/7" in captured.err  # The progress bar.
  assert len(os.listdir(out / "images" / "SYN-1" / "Plate1")) == 7 * 6
  assert json.load(open(out / "spec.json"))["site_size"] == 32
