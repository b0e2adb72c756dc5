"""Known-relationship recall and replicate consistency against hand / brute-force answers."""

import importlib.metadata
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics.pairwise import cosine_similarity as sk_cosine

from maejax.cli import benchmark as benchmark_cli
from maejax.data import synthetic
from maejax.eval import benchmark
from maejax.eval import compare as compare_lib
from maejax.eval import pipeline
from maejax.eval import scorer as scorer_lib

REPO = Path(__file__).resolve().parents[2]
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


def test_complex_recall_matches_numpy_per_complex():
  rng = np.random.default_rng(1)
  genes = [f"G{i}" for i in range(40)]
  features = rng.normal(size=(40, 6))
  features[:5] += 3 * rng.normal(size=6)  # complex "tight" is found, "loose" is not
  complexes = {"tight": genes[:5], "loose": [genes[9], genes[20], genes[33]],
               "one_in_map": [genes[3], "NOT_IN_MAP"], "repeated": [genes[7], genes[7], genes[8]]}
  table = benchmark.complex_recall(features, genes, complexes, thresholds=[(5, 95), (10, 90)])
  assert set(table.complex) == {"tight", "loose", "repeated"}  # 2+ genes in the map only
  for _, row in table.iterrows():
    members = list(dict.fromkeys(g for g in complexes[row.complex] if g in genes))
    pairs = [(a, b) for k, a in enumerate(members) for b in members[k + 1:]]
    expected, used = _numpy_recall(features, genes, pairs, row.lower, row.upper)
    assert row.recall == pytest.approx(expected) and row.pairs == used
    assert row.genes_in_map == len(members)
  tight = table[table.complex == "tight"]
  assert (tight.recall > 0.5).all() and (tight.pairs == 10).all()


def test_complex_recall_weighted_by_pairs_is_the_recall_of_all_complex_pairs():
  table, screen = _synthetic_wells()
  result = pipeline.run_benchmark(table, {"planted": benchmark.undirected_pairs(
      screen.relationships)}, pipeline.Settings(n_null=20), complexes=screen.clusters)
  by_complex = result["complex_recall"]
  assert set(by_complex.complex) == set(screen.clusters)
  assert set(by_complex.threshold) == {"5-95", "10-90"}
  for (lower, upper), rows in by_complex.groupby(["lower", "upper"]):
    overall = result["recall"].set_index(["lower", "upper"]).recall[(lower, upper)]
    assert np.average(rows.recall, weights=rows.pairs) == pytest.approx(overall)


def test_compare_scores_each_entry_against_its_own_complexes():
  table, screen = _synthetic_wells()
  planted = {"planted": benchmark.undirected_pairs(screen.relationships)}

  def by_correction(complexes):
    return {c: pipeline.run_benchmark(table, planted, pipeline.Settings(correction=c, n_null=20),
                                      complexes=complexes)
            for c in compare_lib.CORRECTIONS}

  entries = [compare_lib.Entry(name, name, "trained", table, None) for name in ("a", "b")]
  without = by_correction(None)
  assert compare_lib.complex_table(entries, [without, without]) is None
  rows = compare_lib.complex_table(entries, [without, by_correction(screen.clusters)])
  assert set(rows.model) == {"b"}
  assert len(rows) == len(screen.clusters) * len(compare_lib.CORRECTIONS) * 2  # 2 thresholds


def test_compare_warns_once_per_entry_naming_it(tmp_path):
  """A table with a constant feature is scored under every correction; its warning comes once,
  with the entry's name."""
  table, source = _synthetic_wells()
  table["feature_const"] = 1.0
  scorer = scorer_lib.Scorer(tmp_path, pipeline.Settings(n_null=20, map_null_size=0))
  entry = compare_lib.Entry("stats", "stats", "none", table, source)
  with pytest.warns(UserWarning) as caught:
    results = compare_lib.score_corrections(scorer, entry)
  assert set(results) == set(compare_lib.CORRECTIONS) and len(compare_lib.CORRECTIONS) > 1
  constant = [str(w.message) for w in caught if "constant over all wells" in str(w.message)]
  assert len(constant) == 1 and constant[0].startswith("stats: dropping 1 features")


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


# ----------------------------------------------------------------------------- where pairs come from

def _synthetic_wells(seed=0, **spec):
  """Well table of a synthetic screen's layout (no images): each gene's wells carry its planted
  complex's direction plus noise, and each experiment a shift and a scale."""
  screen = synthetic.SyntheticScreen(**spec)
  wells = screen.metadata.drop_duplicates(["experiment", "plate", "well"]).reset_index(drop=True)
  rng = np.random.default_rng(seed)
  group = dict(zip(screen.genes.gene, screen.genes.group))
  centers = {g: rng.normal(size=8) * 2 for g in set(group.values()) - {""}}
  x = np.stack([centers.get(group.get(p, ""), np.zeros(8)) for p in wells.perturbation])
  x += rng.normal(size=x.shape) * 0.5
  shift = {e: (rng.normal(size=8) * 3, rng.uniform(0.5, 2, 8)) for e in wells.experiment.unique()}
  x = np.stack([v * shift[e][1] + shift[e][0] for v, e in zip(x, wells.experiment)])
  table = pd.concat([wells[["experiment", "plate", "well", "perturbation", "is_control"]]
                     .add_prefix("Metadata_"),
                     pd.DataFrame(x, columns=[f"feature_{i}" for i in range(8)])], axis=1)
  return table, screen


def _run_cli(argv, capsys):
  rc = benchmark_cli.main(argv + ["--n-null", "50", "--map-null-size", "0", "--json"])
  captured = capsys.readouterr()
  return rc, captured.out, captured.err


def test_embedded_screen_tables_use_the_planted_pairs_and_complexes(tmp_path, capsys):
  table, screen = _synthetic_wells()
  table.to_parquet(tmp_path / "wells.parquet")
  rc, out, err = _run_cli(["--embeddings", str(tmp_path / "wells.parquet"),
                           "--out", str(tmp_path / "out")], capsys)
  assert rc == 0, err
  recall = pd.read_csv(tmp_path / "out" / "recall.csv")
  assert set(recall.database) == {"planted"}
  # Unordered pairs within each planted complex, counted from the genes table.
  sizes = screen.genes[screen.genes.group != ""].groupby("group").size()
  assert (recall.pairs == int((sizes * (sizes - 1) // 2).sum())).all()
  assert (recall.recall > 3 * recall.random_baseline).all()
  assert (tmp_path / "out" / "complex_heatmap.png").is_file()
  by_complex = pd.read_csv(tmp_path / "out" / "complex_recall.csv")
  assert set(by_complex.complex) == set(screen.clusters)


def test_unknown_table_without_relationships_is_an_error(tmp_path, capsys):
  table, _ = _synthetic_wells()
  table["Metadata_perturbation"] = table.Metadata_perturbation.str.replace("G", "GENE")
  table.to_csv(tmp_path / "wells.csv", index=False)
  rc, _, err = _run_cli(["--embeddings", str(tmp_path / "wells.csv"),
                         "--out", str(tmp_path / "out")], capsys)
  assert rc == 2 and err.count("\n") == 1
  assert "no --relationships given" in err and "--relationships efaar" in err


@pytest.mark.parametrize("spec", [dict(n_groups=12), dict(n_groups=3, genes_per_group=3)])
def test_other_synthetic_screen_without_relationships_names_the_fix(tmp_path, capsys, spec):
  # More genes than the default screen, or fewer (a prefix of its names, grouped differently).
  table, _ = _synthetic_wells(**spec)
  table.to_csv(tmp_path / "wells.csv", index=False)
  rc, _, err = _run_cli(["--embeddings", str(tmp_path / "wells.csv"),
                         "--out", str(tmp_path / "out")], capsys)
  assert rc == 2 and "python -m maejax.data.synthetic --out SCREEN" in err


def test_no_pair_in_any_database_is_one_line_exit_2(tmp_path):
  table, _ = _synthetic_wells()
  table.to_csv(tmp_path / "wells.csv", index=False)
  (tmp_path / "CORUM.txt").write_text("entity1,entity2\nTP53,MDM2\nPOLR2A,POLR2B\n")
  proc = subprocess.run(
      [sys.executable, "-m", "maejax.benchmark", "--embeddings", str(tmp_path / "wells.csv"),
       "--relationships", str(tmp_path / "CORUM.txt"), "--out", str(tmp_path / "out"),
       "--n-null", "20"], cwd=REPO, capture_output=True, text=True, timeout=300, check=False)
  assert proc.returncode == 2, proc.stderr
  assert proc.stderr.count("\n") == 1 and proc.stderr.startswith("error: no pair of CORUM")
  assert "Metadata_perturbation" in proc.stderr and "G000" in proc.stderr
  assert not (tmp_path / "out" / "recall.csv").exists()


def test_no_pair_error_names_the_column_and_values():
  with pytest.raises(ValueError, match=r"no pair of A, B .* column Gene holds 3 names such as "
                     r"x, y, z; name the column"):
    benchmark.score_relationships(np.eye(3), ["x", "y", "z"],
                                  {"A": _pairs([("P", "Q")]), "B": _pairs([("x", "Q")])},
                                  perturbation_col="Gene")


def _fake_efaar(root, genes):
  """An installed efaar-benchmarking as pip leaves it (dist-info with RECORD and the
  annotation files); importing its package fails, as its heavy imports would."""
  package = root / "efaar_benchmarking"
  annotations = package / "benchmark_annotations"
  annotations.mkdir(parents=True)
  (package / "__init__.py").write_text("raise ImportError('efaar_benchmarking was imported')\n")
  files = ["efaar_benchmarking/__init__.py"]
  for k, name in enumerate(benchmark.EFAAR_DATABASES):
    pairs = "".join(f"{genes[i]},{genes[i + 1 + k % 2]}\n" for i in range(0, len(genes) - 2, 3))
    (annotations / f"{name}.txt").write_text("entity1,entity2\n" + pairs)
    files.append(f"efaar_benchmarking/benchmark_annotations/{name}.txt")
  (annotations / "CORUM_clusters.tsv").write_text(f"cx\t{' '.join(genes[:4])}\n")
  files.append("efaar_benchmarking/benchmark_annotations/CORUM_clusters.tsv")
  info = root / "efaar_benchmarking-1.0.dist-info"
  info.mkdir()
  (info / "METADATA").write_text(
      "Metadata-Version: 2.1\nName: efaar_benchmarking\nVersion: 1.0\n")
  files += [f"{info.name}/METADATA", f"{info.name}/RECORD"]
  (info / "RECORD").write_text("".join(f"{f},,\n" for f in files))
  return annotations


def test_relationships_efaar_finds_the_installed_tables(tmp_path, capsys, monkeypatch):
  table, screen = _synthetic_wells()
  table.to_parquet(tmp_path / "wells.parquet")
  annotations = _fake_efaar(tmp_path / "site", screen.spec.genes)
  monkeypatch.syspath_prepend(str(tmp_path / "site"))
  files = benchmark.efaar_files()
  assert files == [annotations / f"{d}.txt" for d in benchmark.EFAAR_DATABASES]
  rc, out, err = _run_cli(["--embeddings", str(tmp_path / "wells.parquet"), "--relationships",
                           "efaar", "--out", str(tmp_path / "out")], capsys)
  assert rc == 0, err
  assert "efaar_benchmarking" not in sys.modules  # Located, never imported.
  recall = pd.read_csv(tmp_path / "out" / "recall.csv")
  assert sorted(set(recall.database)) == sorted(benchmark.EFAAR_DATABASES)
  expected = {d: len(benchmark.undirected_pairs(pd.read_csv(annotations / f"{d}.txt")))
              for d in benchmark.EFAAR_DATABASES}
  assert dict(zip(recall.database, recall.pairs)) == expected
  assert (tmp_path / "out" / "complex_heatmap.png").is_file()  # CORUM_clusters.tsv beside.


def test_relationships_efaar_missing_says_how_to_install(tmp_path, capsys, monkeypatch):
  def not_installed(name):
    raise importlib.metadata.PackageNotFoundError(name)
  monkeypatch.setattr(importlib.metadata, "distribution", not_installed)
  table, _ = _synthetic_wells()
  table.to_parquet(tmp_path / "wells.parquet")
  rc, _, err = _run_cli(["--embeddings", str(tmp_path / "wells.parquet"), "--relationships",
                         "efaar", "--out", str(tmp_path / "out")], capsys)
  assert rc == 2 and err.count("\n") == 1
  assert "pip install --no-deps efaar-benchmarking" in err and "non-commercial" in err


def test_real_efaar_package_tables_load():
  try:
    importlib.metadata.distribution(benchmark.EFAAR_DISTRIBUTION)
  except importlib.metadata.PackageNotFoundError:
    pytest.skip("efaar-benchmarking is not installed (pip install --no-deps "
                "efaar-benchmarking, or --target DIR on PYTHONPATH: see the README)")
  files = benchmark.efaar_files()
  databases = benchmark.load_relationships(files)
  assert list(databases) == list(benchmark.EFAAR_DATABASES)
  raw = pd.read_csv(files[0])
  assert len(databases["CORUM"]) == len({tuple(sorted(p)) for p in raw.astype(str).to_numpy()
                                         if p[0] != p[1]}) > 1000
  assert pipeline.find_clusters(files).name == "CORUM_clusters.tsv"


def test_load_relationships_reads_efaar_as_a_source(tmp_path, monkeypatch):
  # compare and sweep pass --relationships straight to load_relationships.
  annotations = _fake_efaar(tmp_path / "site", [f"G{i:03d}" for i in range(12)])
  monkeypatch.syspath_prepend(str(tmp_path / "site"))
  (tmp_path / "Extra.txt").write_text("entity1,entity2\nG000,G005\n")
  databases = benchmark.load_relationships(["efaar", tmp_path / "Extra.txt"])
  assert list(databases) == list(benchmark.EFAAR_DATABASES) + ["Extra"]
  for name in benchmark.EFAAR_DATABASES:
    raw = pd.read_csv(annotations / f"{name}.txt")
    assert len(databases[name]) == len(benchmark.undirected_pairs(raw)) > 0
