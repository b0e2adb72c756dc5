"""mAP through copairs: agreement with direct copairs calls and with scikit-learn's AP,
planted structure beats shuffled labels, clear errors."""

import numpy as np
import pandas as pd
import pytest
from copairs import map as copairs_map
from copairs.map import normalization

from maejax.eval import mean_ap


def _wells(seed=0, n_perts=8, replicates=4, controls=12, effect=1.5, shuffle=False):
  rng = np.random.default_rng(seed)
  centres = rng.standard_normal((n_perts, 16)) * effect
  perts = np.repeat([f"G{i}" for i in range(n_perts)], replicates)
  feats = centres[np.repeat(np.arange(n_perts), replicates)] + rng.standard_normal(
      (n_perts * replicates, 16))
  feats = np.concatenate([feats, rng.standard_normal((controls, 16))])
  perts = np.concatenate([perts, ["EMPTY"] * controls])
  if shuffle:
    treated = perts != "EMPTY"
    perts[treated] = rng.permutation(perts[treated])
  table = pd.DataFrame(feats, columns=[f"f{i}" for i in range(16)])
  table.insert(0, "Metadata_perturbation", perts)
  table.insert(1, "Metadata_is_control", perts == "EMPTY")
  return table


def test_replicate_map_agrees_with_a_direct_copairs_call():
  table = _wells()
  ap, maps, summary = mean_ap.replicate_map(table, null_size=2000, seed=3)
  # The copairs recipe for replicate retrieval against controls, written out.
  meta = table[["Metadata_perturbation", "Metadata_is_control"]].copy()
  meta["Metadata_reference_index"] = np.where(meta.Metadata_is_control, meta.index, -1)
  feats = table[[f"f{i}" for i in range(16)]].to_numpy()
  keys = ["Metadata_perturbation", "Metadata_reference_index"]
  direct_ap = copairs_map.average_precision(meta, feats, pos_sameby=keys, pos_diffby=[],
                                            neg_sameby=[], neg_diffby=keys, progress_bar=False)
  direct_ap = direct_ap[~direct_ap.Metadata_is_control]
  direct = copairs_map.mean_average_precision(direct_ap, sameby=["Metadata_perturbation"],
                                              null_size=2000, threshold=0.05, seed=3,
                                              progress_bar=False)
  np.testing.assert_allclose(ap.average_precision, direct_ap.average_precision.to_numpy())
  np.testing.assert_allclose(ap.normalized_average_precision,
                             direct_ap.normalized_average_precision.to_numpy())
  merged = maps.merge(direct, on="Metadata_perturbation", suffixes=("", "_direct"))
  assert len(merged) == 8 == len(maps)
  for column in ("mean_average_precision", "mean_normalized_average_precision", "p_value",
                 "corrected_p_value"):
    np.testing.assert_allclose(merged[column], merged[f"{column}_direct"])
  assert summary["fraction_retrieved"] == pytest.approx(direct.below_corrected_p.mean())
  assert (ap.n_pos_pairs == 3).all() and (ap.n_total_pairs == 3 + 12).all()


def test_normalized_ap_equals_copairs_normalize_ap():
  """Once per distinct count, as copairs computes it per query: mixed counts and the edge
  cases (every candidate positive, one candidate, no negatives)."""
  rng = np.random.default_rng(0)
  n_pos, n_neg = rng.integers(1, 40, 600), rng.integers(0, 3000, 600)
  n_pos[:4], n_neg[:4] = [1, 7, 1, 3], [0, 0, 5, 20_000]
  ap = rng.random(600)
  np.testing.assert_array_equal(mean_ap.normalized_ap(ap, n_pos, n_neg),
                                normalization.normalize_ap(ap, n_pos, n_neg))


def test_planted_replicates_beat_shuffled_labels():
  _, _, planted = mean_ap.replicate_map(_wells(), null_size=1000)
  _, _, shuffled = mean_ap.replicate_map(_wells(shuffle=True), null_size=1000)
  assert planted["mean_average_precision"] > 0.8 > 0.5 > shuffled["mean_average_precision"]
  assert planted["fraction_retrieved"] == 1.0 and shuffled["fraction_retrieved"] < 0.5
  _, _, against_all = mean_ap.replicate_map(_wells(), negatives="all", null_size=1000)
  assert against_all["mean_average_precision"] > 0.8


def _map_table(seed=0, groups=5, per_group=4, nulls=6):
  rng = np.random.default_rng(seed)
  centres = rng.standard_normal((groups, 12)) * 2
  genes, feats, pairs = [], [], []
  for g in range(groups):
    members = [f"C{g}_{k}" for k in range(per_group)]
    genes += members
    feats.append(centres[g] + 0.7 * rng.standard_normal((per_group, 12)))
    pairs += [(a, b) for a in members for b in members if a < b]
  genes += [f"N{k}" for k in range(nulls)]
  feats.append(rng.standard_normal((nulls, 12)))
  table = pd.DataFrame(np.concatenate(feats), columns=[f"f{i}" for i in range(12)])
  table.insert(0, "Metadata_perturbation", genes)
  pairs += [("C0_0", "NOT_IN_MAP"), ("N0", "N0")]  # ignored: absent gene, self pair
  return table, pd.DataFrame(pairs, columns=["entity1", "entity2"])


def test_relationship_ap_equals_sklearn_average_precision():
  from sklearn.metrics import average_precision_score
  table, pairs = _map_table()
  feats = table.filter(like="f").to_numpy()
  genes = table.Metadata_perturbation.to_numpy()
  ap = mean_ap.relationship_ap(feats, genes, pairs, block_size=50 * 26).set_index("gene")
  assert len(ap) == 20 and (ap.n_pos_pairs == 3).all() and (ap.n_total_pairs == 25).all()
  unit = feats / np.linalg.norm(feats, axis=1, keepdims=True)
  for i, gene in enumerate(genes[:20]):
    others = np.arange(len(genes)) != i
    labels = np.array([g.split("_")[0] == gene.split("_")[0] for g in genes])[others]
    reference = average_precision_score(labels, unit[others] @ unit[i])
    assert ap.loc[gene, "average_precision"] == pytest.approx(reference, abs=1e-9)


def test_relationship_map_planted_beats_shuffled_pairs():
  table, pairs = _map_table()
  rng = np.random.default_rng(1)
  genes = table.Metadata_perturbation.to_numpy()
  shuffled_pairs = pairs.assign(entity1=rng.choice(genes, len(pairs)),
                                entity2=rng.choice(genes, len(pairs)))
  maps, summary = mean_ap.relationship_map(
      table, {"planted": pairs, "shuffled": shuffled_pairs, "none": pairs.iloc[:0]},
      null_size=1000)
  assert summary["planted"]["mean_average_precision"] > 0.8
  assert summary["shuffled"]["mean_average_precision"] < 0.5
  assert summary["planted"]["fraction_retrieved"] > summary["shuffled"]["fraction_retrieved"]
  assert summary["none"]["n"] == 0
  assert set(maps.database) == {"planted", "shuffled"}
  assert {"gene", "mean_average_precision", "p_value", "corrected_p_value"} <= set(maps.columns)


def test_errors_are_clear():
  table = _wells()
  with pytest.raises(ValueError, match="negatives='others'"):
    mean_ap.replicate_map(table, negatives="others")
  single = table.drop_duplicates("Metadata_perturbation")
  with pytest.raises(ValueError, match="no perturbation has 2 or more treated wells"):
    mean_ap.replicate_map(single)
  with pytest.raises(ValueError, match="one row per perturbation"):
    mean_ap.relationship_ap(np.zeros((2, 3)), ["A", "A"], pd.DataFrame(
        {"entity1": ["A"], "entity2": ["B"]}))


def test_score_runs_both_and_skips_replicates_without_replicates():
  wells = _wells()
  table, pairs = _map_table()
  out = mean_ap.score(wells, table, {"planted": pairs}, null_size=500)
  assert out["summary"]["replicates"]["mean_average_precision"] > 0.8
  assert out["summary"]["relationships"]["planted"]["n"] == 20
  single = wells.drop_duplicates("Metadata_perturbation")
  with pytest.warns(UserWarning, match="replicate mAP skipped"):
    out = mean_ap.score(single, table, {"planted": pairs}, null_size=500)
  assert out["replicates"] is None and out["summary"]["replicates"] is None
