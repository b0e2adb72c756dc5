"""Known-relationship recall and replicate consistency against hand / brute-force answers."""

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics.pairwise import cosine_similarity as sk_cosine

from maejax.eval import benchmark

SHARED = Path(__file__).resolve().parents[2] / ".." / "shared" / "benchmarks" / "relationships"


def _pairs(rows):
  return pd.DataFrame(rows, columns=["entity1", "entity2"])


def _recall_table(features, genes, relationships, **kwargs):
  """The recall table of the real scorer (no curve)."""
  return benchmark.score_relationships(features, genes, relationships, percentiles=(),
                                       **kwargs)[0]


def _numpy_recall(features, genes, pairs, lower, upper):
  """An independent NumPy reference: explicit cosines, every null pair, the EFAAR tail rule."""
  x = np.asarray(features, np.float64)
  u = x / np.linalg.norm(x, axis=1, keepdims=True)
  sim = u @ u.T
  null = sim[np.triu_indices(len(genes), k=1)]
  index = {g: i for i, g in enumerate(genes)}
  query = sorted({tuple(sorted((a, b))) for a, b in pairs
                  if a != b and a in index and b in index})
  q = np.array([sim[index[a], index[b]] for a, b in query])
  le = (null[None, :] <= q[:, None]).mean(1)
  lt = (null[None, :] < q[:, None]).mean(1)
  return float(np.mean((le <= lower / 100) | (lt >= upper / 100))), len(query)


def _angles_map(degrees):
  """Unit vectors in 2-D at the given angles: cosine(i, j) = cos(angle_i - angle_j)."""
  radians = np.deg2rad(degrees)
  return np.stack([np.cos(radians), np.sin(radians)], axis=1)


def test_recall_hand_made_example():
  # Angles 0, 10, 30, 70, 115 degrees: the 10 pairs differ by 10, 20, 30, 40, 45, 60, 70, 85,
  # 105, 115 degrees (distinct cosines). (A, B) is the most similar pair (10 deg), (A, E) the
  # least (115 deg), (B, D) (60 deg) is in the middle.
  genes = ["A", "B", "C", "D", "E"]
  features = _angles_map([0, 10, 30, 70, 115])
  query = {"db": _pairs([("A", "B"), ("E", "A"), ("B", "D")])}
  recall = _recall_table(features, genes, query, thresholds=[(10, 90), (20, 80), (5, 95)])
  by_threshold = dict(zip(zip(recall.lower, recall.upper), recall.recall))
  # 10/90 of 10 pairs: the bottom pair (A, E) and the top pair (A, B) count; (B, D) does not.
  assert by_threshold[(10, 90)] == pytest.approx(2 / 3)
  # 20/80: bottom two (A,E) 115, (B,E) 105; top two (A,B) 10, (B,C) 20; (B, D) still out.
  assert by_threshold[(20, 80)] == pytest.approx(2 / 3)
  # 5/95 of 10 pairs: half a pair per tail -> nothing qualifies.
  assert by_threshold[(5, 95)] == 0.0
  assert set(recall.pairs) == {3}
  # random baseline for 10 distinct cosines: exactly the tail fraction.
  assert dict(zip(recall.lower, recall.random_baseline)) == {10: 0.2, 20: 0.4, 5: 0.0}


def _brute_force_recall(features, genes, pairs, lower, upper):
  sim = sk_cosine(features)
  n = len(genes)
  null = [sim[i, j] for i in range(n) for j in range(i + 1, n)]
  index = {g: i for i, g in enumerate(genes)}
  seen, hits = set(), []
  for a, b in pairs:
    if a == b or a not in index or b not in index:
      continue
    key = tuple(sorted((a, b)))
    if key in seen:
      continue
    seen.add(key)
    q = sim[index[a], index[b]]
    le = sum(v <= q for v in null)
    lt = sum(v < q for v in null)
    hits.append(le / len(null) <= lower / 100 or lt / len(null) >= upper / 100)
  return np.mean(hits), len(hits)


def test_recall_matches_brute_force_on_random_map():
  rng = np.random.default_rng(0)
  genes = [f"G{i}" for i in range(60)]
  features = rng.normal(size=(60, 8))
  features[:10] += rng.normal(size=8) * 3  # a correlated block, so recall is not ~0.1
  rows = [(genes[rng.integers(60)], genes[rng.integers(10)]) for _ in range(150)]
  rows += [("G1", "G1"), ("G2", "NOT_IN_MAP")]
  recall, curve = benchmark.score_relationships(
      features, genes, {"db": _pairs(rows)}, thresholds=[(5, 95), (10, 90), (2.5, 97.5)],
      percentiles=(1, 7, 25))
  for _, row in recall.iterrows():
    expected, used = _brute_force_recall(features, genes, rows, row.lower, row.upper)
    assert row.recall == pytest.approx(expected)
    assert row.pairs == used
  null = np.sort(sk_cosine(features)[np.triu_indices(60, k=1)])
  le = np.array([np.sum(null <= v) for v in null])
  lt = np.array([np.sum(null < v) for v in null])
  for _, row in recall.iterrows():
    expected = np.mean((le / len(null) <= row.lower / 100) | (lt / len(null) >= row.upper / 100))
    assert row.random_baseline == pytest.approx(expected)
  for _, row in curve[curve.database == "db"].iterrows():
    expected, _ = _brute_force_recall(features, genes, rows, row.percentile, 100 - row.percentile)
    assert row.recall == pytest.approx(expected)


def test_random_pairs_score_about_the_tail_fraction():
  rng = np.random.default_rng(1)
  genes = [f"G{i}" for i in range(200)]
  features = rng.normal(size=(200, 16))
  rows = [(genes[a], genes[b]) for a, b in rng.integers(0, 200, size=(3000, 2))]
  recall = _recall_table(features, genes, {"db": _pairs(rows)})
  five, ten = recall.recall
  assert recall.random_baseline.tolist() == pytest.approx([0.10, 0.20], abs=1e-3)
  assert abs(five - 0.10) < 0.03 and abs(ten - 0.20) < 0.04
  for (lower, upper), got, pairs in zip(benchmark.THRESHOLDS, recall.recall, recall.pairs):
    expected, used = _numpy_recall(features, genes, rows, lower, upper)
    assert got == pytest.approx(expected) and pairs == used


def test_sampled_null_agrees_with_exact_null():
  rng = np.random.default_rng(2)
  genes = [f"G{i}" for i in range(150)]
  features = rng.normal(size=(150, 8))
  features[:20] += 2.0
  rows = [(genes[a], genes[b]) for a, b in rng.integers(0, 20, size=(100, 2))]
  exact = _recall_table(features, genes, {"db": _pairs(rows)})
  sampled = _recall_table(features, genes, {"db": _pairs(rows)}, max_null_pairs=5000, seed=3)
  np.testing.assert_allclose(sampled.recall, exact.recall, atol=0.06)
  np.testing.assert_allclose(
      exact.recall, [_numpy_recall(features, genes, rows, lo, hi)[0]
                     for lo, hi in benchmark.THRESHOLDS])


def test_undirected_pairs_drop_self_and_duplicates():
  out = benchmark.undirected_pairs(_pairs([("B", "A"), ("A", "B"), ("A", "A"), ("C", "A")]))
  assert sorted(map(tuple, out.to_numpy())) == [("A", "B"), ("A", "C")]


def test_database_without_overlap_warns_and_gives_nan():
  features = _angles_map([0, 40, 80, 120])
  with pytest.warns(UserWarning, match="database empty: none of its 1 pairs"):
    recall = _recall_table(
        features, list("ABCD"), {"empty": _pairs([("X", "Y")]), "ok": _pairs([("A", "B")])})
  empty = recall[recall.database == "empty"]
  assert empty.recall.isna().all() and (empty.pairs == 0).all()
  ok = recall[recall.database == "ok"]
  assert ok.recall.notna().all()
  assert ok.recall.tolist() == pytest.approx(
      [_numpy_recall(features, list("ABCD"), [("A", "B")], lo, hi)[0]
       for lo, hi in zip(ok.lower, ok.upper)])


def test_duplicate_genes_in_map_are_rejected():
  with pytest.raises(ValueError, match="aggregate wells"):
    benchmark.score_relationships(np.eye(3), ["A", "A", "B"], {"db": _pairs([("A", "B")])})


def test_load_relationships_directory_and_files(tmp_path):
  (tmp_path / "One.txt").write_text("entity1,entity2\nA,B\nB,A\nC,C\n")
  (tmp_path / "Two.csv").write_text("entity1,entity2,score\nA,C,0.9\n")
  (tmp_path / "notes.txt").write_text("not a relationship file\n")
  (tmp_path / "complexes_clusters.tsv").write_text("cx\tA B C\n")
  with pytest.warns(UserWarning, match="notes"):
    databases = benchmark.load_relationships(tmp_path)
  assert sorted(databases) == ["One", "Two"]
  assert databases["One"].to_numpy().tolist() == [["A", "B"]]
  assert list(benchmark.load_relationships([tmp_path / "Two.csv"])) == ["Two"]
  with pytest.raises(ValueError, match="notes.txt has no entity1,entity2 header"):
    benchmark.load_relationships(tmp_path / "notes.txt")
  with pytest.raises(FileNotFoundError, match="missing.txt does not exist"):
    benchmark.load_relationships(tmp_path / "missing.txt")


def test_replicate_consistency_matches_brute_force_and_detects_signal():
  rng = np.random.default_rng(4)
  centers = rng.normal(size=(12, 10)) * 2
  labels = np.repeat([f"P{i}" for i in range(12)], 3)
  features = centers.repeat(3, axis=0) + rng.normal(size=(36, 10))
  table, summary = benchmark.replicate_consistency(features, labels, n_null=200, seed=0)
  for _, row in table.iterrows():
    sim = sk_cosine(features[labels == row.perturbation])
    assert row.cosine == pytest.approx(sim[np.triu_indices(3, k=1)].mean())
  assert summary["perturbations"] == 12
  assert summary["fraction_significant"] > 0.8
  assert summary["binomial_p_value"] < 1e-6
  # shuffled labels: replicates are random wells, about alpha of them look significant
  shuffled = rng.permutation(labels)
  _, null_summary = benchmark.replicate_consistency(features, shuffled, n_null=200, seed=0)
  assert null_summary["fraction_significant"] < 0.35
  assert null_summary["binomial_p_value"] > 1e-3


def test_replicate_consistency_without_replicates_warns():
  with pytest.warns(UserWarning, match="no perturbation has 2 or more"):
    table, summary = benchmark.replicate_consistency(np.eye(3), ["A", "B", "C"])
  assert table.empty and np.isnan(summary["median_cosine"])


def test_shared_relationship_files_load_undirected():
  if not SHARED.is_dir():
    pytest.skip(f"shared relationship files not found at {SHARED} (../shared beside the repo)")
  databases = benchmark.load_relationships(SHARED)
  assert {"CORUM", "HuMAP", "Reactome", "SIGNOR", "StringDB"} <= set(databases)
  raw = pd.read_csv(SHARED / "CORUM.txt")
  expected = {tuple(sorted(p)) for p in raw[["entity1", "entity2"]].astype(str).to_numpy()
              if p[0] != p[1]}
  corum = databases["CORUM"]
  assert len(corum) == len(expected)
  assert (corum.entity1 < corum.entity2).all()


def test_replicate_null_matches_batches():
  # No perturbation signal, but each perturbation sits in one batch with a strong batch effect:
  # a pooled null calls that consistency, a batch-matched null does not.
  rng = np.random.default_rng(5)
  batch = np.repeat(["b0", "b1", "b2", "b3"], 30)
  features = rng.normal(size=(120, 8)) + np.repeat(rng.normal(size=(4, 8)) * 3, 30, axis=0)
  labels = np.array([f"P{i // 3}" for i in range(120)])
  _, pooled = benchmark.replicate_consistency(features, labels, n_null=300)
  _, matched = benchmark.replicate_consistency(features, labels, batch, n_null=300)
  assert pooled["fraction_significant"] > 0.5
  assert matched["fraction_significant"] < 0.25


def test_random_baseline_with_tied_cosines():
  # Rounded features give many identical cosines; the baseline must follow the same rule.
  rng = np.random.default_rng(6)
  features = np.round(rng.normal(size=(40, 2)))
  genes = [f"G{i}" for i in range(40)]
  recall, curve = benchmark.score_relationships(features, genes, {}, thresholds=[(5, 95)],
                                                percentiles=(5, 20, 50))
  null = np.sort(sk_cosine(features)[np.triu_indices(40, k=1)])
  for _, row in curve.iterrows():
    p = row.percentile
    expected = np.mean([(np.sum(null <= v) / len(null) <= p / 100)
                        or (np.sum(null < v) / len(null) >= 1 - p / 100) for v in null])
    assert row.random_baseline == pytest.approx(expected)
