"""Opt-in compounds of the synthetic screen: gene sites unchanged, dose-responses planted."""

import numpy as np
import pandas as pd

from maejax.cli import synthetic as synthetic_cli
from maejax.data import synthetic


def test_compounds_leave_every_gene_site_byte_identical():
  base = synthetic.SyntheticScreen(site_size=48)
  more = synthetic.SyntheticScreen(site_size=48, compounds=3, inactive_compounds=1)
  n = len(base)
  assert len(more) == n + 2 * (4 * 8 + 8) * base.spec.sites_per_well
  pd.testing.assert_frame_equal(base.metadata, more.metadata.iloc[:n].drop(
      columns="concentration"))
  for i in range(0, n, 37):
    np.testing.assert_array_equal(base[i], more[i])


def test_compound_dose_response_phenocopies_its_targets():
  screen = synthetic.SyntheticScreen(site_size=32, compounds=4, inactive_compounds=2)
  spec, meta = screen.spec, screen.metadata
  targets = screen.compound_targets
  assert set(targets.compound) == set(spec.compound_names)
  assert targets.groupby("compound").size().between(1, 2).all()
  effects = dict(zip(screen.genes.gene, screen._effects))
  for name in spec.compound_names:
    rows = meta.index[meta.perturbation == name]
    by_dose = {d: screen._site_effect[rows[meta.concentration[rows] == d][0]]
               for d in spec.doses}
    assert not np.any(by_dose[spec.doses[0]]) and not np.any(by_dose[spec.doses[1]])
    expected = np.mean([effects[g] for g in targets.gene[targets.compound == name]], axis=0)
    active = name in spec.compound_names[:spec.compounds]
    np.testing.assert_allclose(by_dose[spec.doses[-1]], expected if active else 0 * expected,
                               rtol=1e-6)


def test_cli_writes_the_target_table_beside_the_images(tmp_path):
  assert synthetic_cli.main(["--out", str(tmp_path), "--site-size", "16", "--n-groups", "2",
                             "--n-null-genes", "2", "--n-experiments", "1",
                             "--plates-per-experiment", "1", "--sites-per-well", "1",
                             "--compounds", "2", "--inactive-compounds", "1",
                             "--concentrations", "3", "--workers", "1", "--no-progress"]) == 0
  targets = pd.read_csv(tmp_path / "compound_targets.csv")
  assert list(targets.columns) == ["compound", "gene"] and set(targets.compound) == {
      "CPD000", "CPD001", "CPD002"}
  meta = pd.read_csv(tmp_path / "metadata.csv")
  assert meta.concentration.notna().sum() == 3 * 3
