"""The organelle screen (the second generator): determinism, RxRx1's layout on disk, and
planted phenotypes that per-channel intensity statistics see for some complexes and not for
others."""

import json
import pickle

import numpy as np
import pandas as pd
import pytest
from scipy import ndimage

import maejax.data as md
from maejax.cli import synthetic as synthetic_cli
from maejax.data import synthetic
from maejax.data.synthetic import organelles
from maejax.eval import embed, pipeline, plots

SMALL = dict(site_size=64, n_groups=3, genes_per_group=3, n_null_genes=2, n_experiments=1,
             plates_per_experiment=2, controls_per_plate=3, sites_per_well=1)


def test_sites_are_a_pure_function_of_seed_and_index():
  a = organelles.OrganelleScreen(**SMALL)
  b = organelles.OrganelleScreen(**SMALL)
  for i in (5, 0, 3):  # Access order must not matter.
    np.testing.assert_array_equal(a[i], b[i])
  np.testing.assert_array_equal(a[5], b[5])
  copy = pickle.loads(pickle.dumps(a))  # What Grain workers and write_screen's processes get.
  np.testing.assert_array_equal(copy[7], a[7])
  pd.testing.assert_frame_equal(copy.metadata, a.metadata)
  assert not np.array_equal(a[0], organelles.OrganelleScreen(**{**SMALL, "seed": 1})[0])
  img = a[0]
  assert img.dtype == np.uint8 and img.shape == a.site_shape == (64, 64, 6)
  assert (img.reshape(-1, 6).std(0) > 1).all()  # every channel has structure
  with pytest.raises(IndexError):
    a[len(a)]


def test_layout_genes_and_relationships():
  s = organelles.OrganelleScreen(**SMALL)
  m = s.metadata
  assert len(m) == 2 * (3 * 3 + 2 + 3)
  for _, plate in m.groupby("plate"):
    assert (plate.perturbation == synthetic.CONTROL).sum() == plate.is_control.sum() == 3
    assert set(plate.perturbation[~plate.is_control]) == set(s.genes.gene)
  assert set(m.experiment) == {"ORG-01"}
  genes = s.genes
  assert list(genes.program[genes.group != ""].unique()) == [
      name for name, _, _ in organelles.COMPLEXES[:3]]
  assert genes.has_phenotype.sum() == 9 and (genes.mechanism[genes.has_phenotype] != "").all()
  groups = genes.set_index("gene").group
  expected = {(a, b) for a in groups.index for b in groups.index
              if a != b and groups[a] and groups[a] == groups[b]}
  assert set(zip(s.relationships.entity1, s.relationships.entity2)) == expected
  with pytest.raises(ValueError, match="n_groups=9"):
    organelles.OrganelleScreen(n_groups=9)


def test_written_screen_is_read_by_the_rxrx1_source(tmp_path, assert_one_well_id):
  s = organelles.OrganelleScreen(**SMALL)
  info = synthetic.write_screen(s, str(tmp_path), workers=1)
  meta = pd.read_csv(tmp_path / "metadata.csv")
  assert list(meta.columns) == list(synthetic.RXRX1_COLUMNS) and len(meta) == info["sites"]
  assert meta.site_id.iloc[0] == f"{meta.well_id.iloc[0]}_{meta.site.iloc[0]}"
  c = md.default_config()
  c.source, c.path = "rxrx1", str(tmp_path)
  src = md.make_source(c)
  assert len(src) == len(s)
  assert src.metadata.perturbation.tolist() == s.metadata.perturbation.tolist()
  assert src.metadata.is_control.tolist() == s.metadata.is_control.tolist()
  for i in (0, len(s) - 1):
    np.testing.assert_array_equal(src[i], s[i])
  assert_one_well_id(src, "well_id", meta.well_id)
  assert plots.read_clusters(info["clusters"]) == s.clusters
  assert pipeline.find_clusters(str(tmp_path / "relationships.csv")) == tmp_path / "clusters.tsv"
  assert pd.read_csv(tmp_path / "genes.csv").program.fillna("").tolist() == s.genes.program.tolist()


def test_cli_writes_the_organelle_screen(tmp_path, capsys):
  out = tmp_path / "screen"
  assert synthetic_cli.main([
      "--generator", "organelles", "--out", str(out), "--site-size", "32", "--n-groups", "1",
      "--genes-per-group", "2", "--n-null-genes", "1", "--n-experiments", "1",
      "--plates-per-experiment", "1", "--controls-per-plate", "2", "--sites-per-well", "1",
      "--cells-per-site", "60", "--workers", "1", "--no-progress", "--json"]) == 0
  summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
  assert summary["sites"] == 5 and summary["generator"] == "organelles"
  assert len(list((out / "images" / "ORG-01" / "Plate1").iterdir())) == 5 * 6
  assert json.load(open(out / "spec.json"))["cells_per_site"] == 60
  with pytest.raises(SystemExit):  # The default generator has no such field.
    synthetic_cli.main(["--out", str(out), "--cells-per-site", "60"])


def _complex_effect(s, name):
  """The mean effect [n_phenotypes] of the genes of the complex with program `name`."""
  members = (s.genes.program == name).to_numpy()
  return s._effects[members].mean(0)  # pylint: disable=protected-access


def test_intensity_statistics_see_the_visible_complexes():
  # A screen with its batch effects, one site a well: each site's 99th percentile of every
  # channel (the stain's brightness in cells, little moved by how many cells the site has),
  # z-scored on its plate's control sites, summed over a complex's wells as a t statistic.
  s = organelles.OrganelleScreen(site_size=192, n_groups=3, n_null_genes=4, n_experiments=1,
                                 sites_per_well=1)
  p99 = embed.intensity_sites(s).filter(regex="^feature_").to_numpy()[:, 8::9]  # [sites, 6]
  m = s.metadata
  z = np.zeros_like(p99)
  for plate in m.plate.unique():
    rows, control = (m.plate == plate).to_numpy(), (m.plate == plate).to_numpy() & m.is_control
    z[rows] = (p99[rows] - p99[control].mean(0)) / p99[control].std(0)
  program = m.perturbation.map(s.genes.set_index("gene").program).fillna("").to_numpy()
  t = pd.DataFrame(z[~m.is_control], columns=synthetic.CHANNEL_NAMES).groupby(
      program[~m.is_control]).agg(lambda v: v.mean() * np.sqrt(len(v)))
  assert t.loc["er_stress", "er"] > 5  # ER stain 1.5x
  assert t.loc["focal_adhesion", "actin"] > 5  # more stress fibres
  # Genes without phenotype look like controls.
  assert t.loc[""].abs().max() < 3


def test_golgi_dispersal_changes_puncta_counts_at_the_same_intensities():
  # The same sites with no effect and with golgi_trafficking's (Golgi puncta scattered from
  # a ribbon beside the nucleus, mitochondria spread): as many emitters, elsewhere.
  s = organelles.OrganelleScreen(site_size=128, batch_effects=False)
  sites = range(0, 240, 20)

  def render(effect):
    s._site_effect[:] = effect  # pylint: disable=protected-access
    return np.stack([s[i] for i in sites]).astype(np.float64)  # [sites, H, W, 6]

  control, dispersed = render(0.0), render(_complex_effect(s, "golgi_trafficking"))
  mean_control, mean_dispersed = control.mean((0, 1, 2)), dispersed.mean((0, 1, 2))
  np.testing.assert_allclose(mean_dispersed, mean_control, rtol=0.01)

  def puncta(images):  # Golgi objects brighter than the plasma membrane, per site.
    return np.mean([ndimage.label(img[:, :, 5] > 60)[1] for img in images])

  assert puncta(dispersed) > 1.25 * puncta(control)
  # A visible complex on the same sites changes the means by far more.
  arrest = render(_complex_effect(s, "cell_cycle_arrest")).mean((0, 1, 2))
  assert np.abs(arrest / mean_control - 1).max() > 0.1
