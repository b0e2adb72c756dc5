"""The synthetic screen: determinism, layout, planted biology, writing to disk."""

import json
import os
import warnings

import numpy as np
import pandas as pd
import pytest
from scipy import stats
from skimage import filters, measure

from maejax.data import synthetic
from maejax.cli import synthetic as synthetic_cli
from maejax.eval import embed, pipeline, plots

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


@pytest.fixture(scope="module")
def default_screen():
  """The default screen (every config's data), rendered once: (screen, sites uint8 list)."""
  s = synthetic.SyntheticScreen()
  return s, [s[i] for i in range(len(s))]


@pytest.fixture(scope="module")
def default_statistics(default_screen):
  """Per-channel intensity statistics of every default site (maejax's classical baseline:
  mean, std and percentiles), computed once: the site table of `embed.intensity_sites`."""
  _, sites = default_screen
  return embed.intensity_sites(sites)


def _features(site_table):
  """A site table's features [sites, 6 * 9]."""
  return site_table.filter(regex="^feature_").to_numpy(np.float64)


def _gene_profiles(s, site_features, floor):
  """Site features -> wells -> z-scores on each plate's control wells -> mean per gene."""
  m = s.metadata
  wells = pd.DataFrame(site_features).groupby([m.plate_index, m.well]).mean()
  pert = m.groupby(["plate_index", "well"]).perturbation.first().loc[wells.index]
  x = wells.to_numpy()
  plate = wells.index.get_level_values(0).to_numpy()
  control = (pert == synthetic.CONTROL).to_numpy()
  for p in np.unique(plate):
    sel, ctrl = plate == p, (plate == p) & control
    x[sel] = (x[sel] - x[ctrl].mean(0)) / (x[ctrl].std(0) + floor)
  return pd.DataFrame(x).groupby(pert.to_numpy()).mean()


def _pair_recall(profiles, pairs):
  """Fraction of pairs whose cosine is in the bottom or top 5% of all gene-gene cosines."""
  genes = profiles.drop(synthetic.CONTROL)
  x = genes.to_numpy() / np.linalg.norm(genes.to_numpy(), axis=1, keepdims=True)
  sim, names = x @ x.T, list(genes.index)
  lo, hi = np.quantile(sim[np.triu_indices(len(names), 1)], [0.05, 0.95])
  v = np.array([sim[names.index(a), names.index(b)] for a, b in pairs])
  return float(((v < lo) | (v > hi)).mean())


def _pairs(s, matched: bool):
  is_matched = s.genes.set_index("gene").intensity_matched
  rel = s.relationships[s.relationships.entity1 < s.relationships.entity2]
  keep = is_matched[rel.entity1].to_numpy() == matched
  return list(zip(rel.entity1[keep], rel.entity2[keep]))


def test_default_screen_has_intensity_matched_and_visible_complexes(default_screen):
  s, _ = default_screen
  genes = s.genes
  assert genes.intensity_matched.sum() == 4 * 4 and (genes.has_phenotype & ~genes.intensity_matched).sum() == 4 * 4
  morph = [synthetic.FACTOR_NAMES.index(f) for f in synthetic.MORPHOLOGY_ONLY]
  other = np.setdiff1d(np.arange(len(synthetic.FACTOR_NAMES)), morph)
  effects = s._effects  # pylint: disable=protected-access
  assert (effects[genes.intensity_matched.to_numpy()][:, other] == 0).all()
  visible = (genes.has_phenotype & ~genes.intensity_matched).to_numpy()
  assert (np.abs(effects[visible][:, other]).sum(1) > 0).all()
  # No two complexes alike: cross-complex pairs would rival the planted ones. One draw of
  # directions typically has a pair of complexes at cosine 0.7.
  means = np.stack([effects[genes.group.to_numpy() == g].mean(0) for g in s.clusters])
  unit = means / np.linalg.norm(means, axis=1, keepdims=True)
  assert (unit @ unit.T)[np.triu_indices(len(unit), 1)].max() < 0.45
  # Planted pairs are few among all gene pairs, as in real maps: they fit in the 5% tail.
  n = len(genes)
  assert len(s.relationships) / 2 < 0.05 * n * (n - 1) / 2


def test_visible_complexes_recovered_by_per_channel_statistics(default_screen, default_statistics):
  s, _ = default_screen
  profiles = _gene_profiles(s, _features(default_statistics), floor=1.0)
  # Random pairs land in the bottom or top 5% of cosines 10% of the time.
  assert _pair_recall(profiles, _pairs(s, matched=False)) > 0.6
  # Genes without phenotype look like controls: their profiles are small.
  genes = s.genes.set_index("gene")
  norms = np.sqrt((profiles ** 2).mean(1))
  visible = genes.index[genes.has_phenotype & ~genes.intensity_matched]
  assert norms[genes.index[~genes.has_phenotype]].mean() < 0.5 * norms[visible].mean()


def test_intensity_matched_complexes_keep_every_statistic_on_the_same_sites():
  # The same sites rendered without and with a complex's mean effect (same cells, noise and
  # acquisition): free of well-to-well noise and of the layout's confounders (edge wells).
  s = synthetic.SyntheticScreen()
  sites = np.arange(0, len(s), len(s) // 64)[:64]

  def statistics(effect):
    s._site_effect[:] = effect  # pylint: disable=protected-access
    return _features(embed.intensity_sites([s[i] for i in sites]))

  base = statistics(0.0)
  spread = base.std(0) + 1.0  # a 1 grey level floor: dark channels' low percentiles are 0
  shift = {}
  for group, members in s.clusters.items():
    effect = s._effects[s.genes.gene.isin(members).to_numpy()].mean(0)  # pylint: disable=protected-access
    shift[group] = np.abs((statistics(effect) - base).mean(0) / spread).max()
  matched = s.genes.groupby("group").intensity_matched.all()
  assert max(shift[g] for g in s.clusters if matched[g]) < 0.15, shift
  assert min(shift[g] for g in s.clusters if not matched[g]) > 0.5, shift


def test_intensity_matched_complexes_hidden_from_per_channel_statistics(default_screen,
                                                                        default_statistics):
  s, _ = default_screen
  profiles = _gene_profiles(s, _features(default_statistics), floor=1.0)
  genes = s.genes.set_index("gene")
  worst = profiles.abs().max(1)  # largest |z| over the 54 statistics, per gene
  matched = genes.index[genes.intensity_matched]
  visible = genes.index[genes.has_phenotype & ~genes.intensity_matched]
  null = genes.index[~genes.has_phenotype]
  # Matched knock-downs sit within the spread that genes without phenotype show ...
  assert worst[matched].median() < 1.5 * worst[null].median()
  assert worst[visible].median() > 2.5 * worst[matched].median()  # ... unlike the visible ones.
  # What a user sees: statistics -> wells -> TVN -> recall of each complex's own pairs.
  table = embed.sites_to_wells(default_statistics, s.metadata)
  settings = pipeline.Settings(n_null=20, map_null_size=0)
  with warnings.catch_warnings():
    warnings.simplefilter("ignore")  # dark channels' constant low percentiles are dropped
    result = pipeline.run_benchmark(table, {"planted": s.relationships}, settings,
                                    complexes=s.clusters)
  recall = result["complex_recall"].query("lower == 5").set_index("complex").recall
  is_matched = s.genes.groupby("group").intensity_matched.all()
  # Random pairs land in the 5% tails 10% of the time.
  assert recall[is_matched[recall.index]].mean() < 0.2, recall
  assert recall[~is_matched[recall.index]].mean() > 0.8, recall


def _nucleus_features(img):
  """Median nucleus area, solidity and eccentricity of a site: Otsu threshold of DNA,
  connected components."""
  dna = img[..., 0].astype(np.float64)
  labels = measure.label(dna > filters.threshold_otsu(dna))
  props = [p for p in measure.regionprops(labels) if p.area >= 10]
  return np.array([np.median([getattr(p, f) for p in props])
                   for f in ("area", "solidity", "eccentricity")])


def test_intensity_matched_complexes_seen_by_nucleus_segmentation(default_screen):
  s, sites = default_screen
  m = s.metadata
  feats = pd.DataFrame(np.stack([_nucleus_features(x) for x in sites]),
                       columns=["area", "solidity", "eccentricity"])
  wells = feats.groupby([m.plate_index, m.well]).mean()
  pert = m.groupby(["plate_index", "well"]).perturbation.first().loc[wells.index].to_numpy()
  control = wells[pert == synthetic.CONTROL]
  genes = s.genes
  for group, members in s.clusters.items():
    if not genes.set_index("group").intensity_matched[group].all():
      continue
    knocked = wells[np.isin(pert, members)]
    p = [stats.ttest_ind(knocked[f], control[f], equal_var=False).pvalue for f in wells.columns]
    assert min(p) < 1e-4, (group, p)
  null = wells[np.isin(pert, genes.gene[~genes.has_phenotype])]
  p_null = [stats.ttest_ind(null[f], control[f], equal_var=False).pvalue for f in wells.columns]
  assert min(p_null) > 1e-3, p_null


def test_clusters_are_the_planted_complexes(default_screen):
  s, _ = default_screen
  groups = s.genes[s.genes.group != ""].groupby("group").gene.apply(list).to_dict()
  assert s.clusters == groups and len(s.clusters) == s.spec.n_groups
  pairs = {(a, b) for members in s.clusters.values() for a in members for b in members if a != b}
  assert pairs == set(zip(s.relationships.entity1, s.relationships.entity2))


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
  assert plots.read_clusters(info["clusters"]) == s.clusters
  assert pipeline.find_clusters(str(tmp_path)) == tmp_path / "clusters.tsv"
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
