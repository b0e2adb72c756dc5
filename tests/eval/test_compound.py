"""Compound-gene benchmark and right-tail recall against NumPy / scikit-learn written from the
definitions here."""

import functools

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import average_precision_score, roc_auc_score
from sklearn.metrics.pairwise import cosine_similarity

from maejax.cli import benchmark as benchmark_cli
from maejax.data import sources
from maejax.data import synthetic
from maejax.eval import benchmark
from maejax.eval import compound
from maejax.eval import embed
from maejax.eval import pipeline

CONCENTRATIONS = (0.1, 1.0, 10.0)


def _screen(seed=0, genes=30, compounds=8, replicates=3, d=12):
  """Gene wells and compound wells (a concentration each); compound c mimics genes c, c + 1
  at its highest concentration, compounds >= 6 are inactive."""
  rng = np.random.default_rng(seed)
  phenotype = rng.standard_normal((genes, d))
  rows, feats = [], []
  for g in range(genes):
    for _ in range(replicates):
      rows.append(dict(Metadata_perturbation=f"G{g:02d}", Metadata_concentration=np.nan))
      feats.append(phenotype[g] + 0.5 * rng.standard_normal(d))
  for c in range(compounds):
    for k, dose in enumerate(CONCENTRATIONS):
      effect = (phenotype[c] + phenotype[c + 1]) * k / 2 if c < 6 else 0.0
      for _ in range(replicates):
        rows.append(dict(Metadata_perturbation=f"CPD{c}", Metadata_concentration=dose))
        feats.append(effect + 0.5 * rng.standard_normal(d))
  table = pd.DataFrame(rows)
  table["Metadata_experiment"] = "E1"
  table = pd.concat([table, pd.DataFrame(np.array(feats), columns=[f"f{i}" for i in range(d)])],
                    axis=1)
  targets = pd.DataFrame({"compound": [f"CPD{c}" for c in range(8) for _ in (0, 1)],
                          "gene": [f"G{c + k:02d}" for c in range(8) for k in (0, 1)]})
  return table, targets


def _reference(table, targets, seed):
  """The definition: means per gene and per (compound, concentration), |cosine| maximised over
  concentrations, AUC / AP of each compound's targets against every other gene; the baseline
  permutes the gene column of the in-map target rows with default_rng(seed)."""
  feats = [c for c in table.columns if c.startswith("f")]
  is_compound = table.Metadata_concentration.notna()
  genes = table[~is_compound].groupby("Metadata_perturbation")[feats].mean()
  doses = table[is_compound].groupby(["Metadata_perturbation", "Metadata_concentration"])[
      feats].mean()
  scores = pd.DataFrame(np.abs(cosine_similarity(doses.to_numpy(), genes.to_numpy())),
                        index=doses.index.get_level_values(0), columns=genes.index)
  scores = scores.groupby(level=0).max()
  in_map = targets[targets.compound.isin(scores.index) & targets.gene.isin(genes.index)]

  def per_compound(t):
    out = {}
    for name, rows in t.groupby("compound"):
      labels = scores.columns.isin(rows.gene)
      if 0 < labels.sum() < len(labels):
        out[name] = (roc_auc_score(labels, scores.loc[name]),
                     average_precision_score(labels, scores.loc[name]))
    return out

  shuffled = in_map.assign(gene=np.random.default_rng(seed).permutation(in_map.gene.to_numpy()))
  return per_compound(in_map), per_compound(shuffled.drop_duplicates())


@pytest.mark.filterwarnings("ignore:no control flags")
def test_compound_gene_auc_ap_equal_the_definition():
  table, targets = _screen()
  settings = pipeline.Settings(correction="none", map_null_size=0, n_null=10)
  result = pipeline.run_benchmark(table, {"none": pd.DataFrame(
      {"entity1": ["G00"], "entity2": ["G01"]})}, settings, compound_targets=targets)
  per_compound, summary = result["compound_gene"]
  real, shuffled = _reference(table, targets, compound.SEED)
  assert len(result["map"]) == 30  # compound wells stay out of the gene map
  assert sorted(per_compound.compound) == sorted(real) and len(real) == 8
  for row in per_compound.itertuples():
    assert row.auc == pytest.approx(real[row.compound][0], abs=1e-9)
    assert row.average_precision == pytest.approx(real[row.compound][1], abs=1e-9)
    if row.compound in shuffled:
      assert row.baseline_auc == pytest.approx(shuffled[row.compound][0], abs=1e-9)
  assert summary["median_auc"] == pytest.approx(np.median([v[0] for v in real.values()]),
                                                abs=1e-9)
  assert summary["baseline_median_auc"] == pytest.approx(
      np.median([v[0] for v in shuffled.values()]), abs=1e-9)
  # Active compounds find their targets better than shuffled targets do.
  active = per_compound[per_compound.compound.isin([f"CPD{c}" for c in range(6)])]
  assert active.auc.median() > 0.85 and summary["median_auc"] > summary["baseline_median_auc"]


def test_compound_targets_cli_writes_csv_plot_and_json(tmp_path, capsys):
  table, targets = _screen()
  table.to_parquet(tmp_path / "wells.parquet")
  targets.to_csv(tmp_path / "targets.csv", index=False)
  pd.DataFrame({"entity1": ["G00", "G02"], "entity2": ["G01", "G03"]}).to_csv(
      tmp_path / "pairs.csv", index=False)
  code = benchmark_cli.main(["--embeddings", str(tmp_path / "wells.parquet"), "--relationships",
                             str(tmp_path / "pairs.csv"), "--out", str(tmp_path / "out"),
                             "--correction", "none", "--map-null-size", "0", "--n-null", "10",
                             "--compound-targets", str(tmp_path / "targets.csv"),
                             "--tails", "right", "--json"])
  assert code == 0
  import json
  info = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
  assert info["compound_gene"]["compounds"] == 8
  assert (tmp_path / "out" / "compound_gene.csv").is_file()
  assert (tmp_path / "out" / "compound_auc.png").is_file()
  (tmp_path / "bad.csv").write_text("drug,target\nA,B\n")
  code = benchmark_cli.main(["--embeddings", str(tmp_path / "wells.parquet"), "--out",
                             str(tmp_path / "out2"), "--relationships",
                             str(tmp_path / "pairs.csv"), "--compound-targets",
                             str(tmp_path / "bad.csv")])
  assert code == 2 and "compound,gene" in capsys.readouterr().err


def test_right_tail_recall_equals_the_definition():
  rng = np.random.default_rng(1)
  features = rng.standard_normal((50, 8))
  genes = [f"G{i}" for i in range(50)]
  pairs = pd.DataFrame(rng.choice(50, size=(80, 2)), columns=["a", "b"])
  pairs = pd.DataFrame({"entity1": [genes[i] for i in pairs.a],
                        "entity2": [genes[j] for j in pairs.b]})
  recall, curve = benchmark.score_relationships(features, genes, {"db": pairs},
                                                thresholds=[(5, 95), (10, 90)],
                                                percentiles=(5, 20), tails="right")
  cos = cosine_similarity(features)
  null = cos[np.triu_indices(50, k=1)]
  query = benchmark.undirected_pairs(pairs)
  index = {g: i for i, g in enumerate(genes)}
  values = np.array([cos[index[a], index[b]] for a, b in zip(query.entity1, query.entity2)])
  for row in recall.itertuples():
    top = lambda v: np.mean(null < v) >= row.upper / 100  # noqa: E731
    assert row.recall == pytest.approx(np.mean([top(v) for v in values]), abs=1e-12)
    assert row.random_baseline == pytest.approx(np.mean([top(v) for v in null]), abs=1e-12)
  both, _ = benchmark.score_relationships(features, genes, {"db": pairs},
                                          thresholds=[(5, 95)], percentiles=())
  assert both.recall[0] >= recall.recall[0]
  with pytest.raises(ValueError, match="tails"):
    benchmark.score_relationships(features, genes, {"db": pairs}, tails="left")


# 20 genes, 4 gene plates of 28 wells (8 controls each), one site per well.
SMALL_SCREEN = dict(site_size=32, n_groups=4, genes_per_group=3, n_null_genes=8,
                    sites_per_well=1)


@functools.cache
def _statistics_wells(compounds=0, inactive_compounds=0, concentrations=8):
  """The per-channel statistics well table of a small synthetic screen, and the screen."""
  screen = synthetic.SyntheticScreen(**SMALL_SCREEN, compounds=compounds,
                                     inactive_compounds=inactive_compounds,
                                     concentrations=concentrations)
  source = sources.SyntheticSource(screen, range(len(synthetic.CHANNEL_NAMES)))
  return embed.sites_to_wells(embed.intensity_sites(source), source.metadata), source.screen


@pytest.mark.filterwarnings("ignore:.*features constant over all wells")
@pytest.mark.parametrize("correction", ["tvn", "center_scale"])
@pytest.mark.parametrize("own_experiment", [False, True])
def test_compound_plates_leave_the_gene_benchmark_as_it_is(correction, own_experiment):
  """Gene wells render the same with or without compound plates, so the gene map and its
  scores are the same: the compound plates' controls fit no correction of the gene wells (with
  them TVN kept 47 components instead of 31) and are no negatives of their replicate mAP;
  compound plates in experiments of their own (as RxRx3-core's) are whitened by their controls.
  Tolerance: float32 rounding of the same products over more rows (~1e-6 of the features);
  recall counts pairs, equal unless a pair ties a null cosine within that."""
  genes, screen = _statistics_wells()
  both, with_compounds = _statistics_wells(compounds=3, inactive_compounds=1, concentrations=3)
  if own_experiment:
    experiment = both.Metadata_experiment.astype(str)
    both = both.assign(Metadata_experiment=experiment.where(
        both.Metadata_plate <= screen.spec.plates_per_experiment, "CPD-" + experiment))
  relationships = {"planted": benchmark.undirected_pairs(screen.relationships)}
  settings = pipeline.Settings(correction=correction, n_null=20, map_null_size=100)
  alone = pipeline.run_benchmark(genes, relationships, settings)
  result = pipeline.run_benchmark(both, relationships, settings,
                                  compound_targets=with_compounds.compound_targets)
  assert result["compound_gene"][1]["compounds"] == 4
  assert result["map"].Metadata_concentration.isna().all()  # no compound in the gene map
  pd.testing.assert_frame_equal(result["map"].drop(columns="Metadata_concentration"),
                                alone["map"], check_exact=False, rtol=1e-5, atol=1e-5)
  pd.testing.assert_frame_equal(result["recall"], alone["recall"])
  pd.testing.assert_frame_equal(result["replicates"], alone["replicates"], check_exact=False)
  assert (result["mean_ap"]["summary"]["replicates"]["mean_average_precision"]
          == pytest.approx(alone["mean_ap"]["summary"]["replicates"]["mean_average_precision"]))


def test_compound_wells_do_not_hide_the_planted_pairs():
  """A synthetic screen's table with compound wells still scores the planted pairs by default:
  compound ids are no genes."""
  screen = synthetic.SyntheticScreen(site_size=8, compounds=2, inactive_compounds=1)
  table = screen.metadata.add_prefix("Metadata_")
  sources_, clusters = benchmark.relationships_for(table, None)
  pd.testing.assert_frame_equal(sources_["planted"],
                                benchmark.undirected_pairs(screen.relationships))
  assert clusters == screen.clusters
