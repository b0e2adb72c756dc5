"""The benchmark at scale: blocked cosines, blocked mAP against copairs, float32 kept through
correction and aggregation, and `python -m maejax.bench benchmark` on a tiny table."""

import json

import numpy as np
import pandas as pd
import pytest
from copairs import map as copairs_map
from sklearn.metrics.pairwise import cosine_similarity

from maejax.cli import bench as bench_cli
from maejax.eval import aggregate
from maejax.eval import correct
from maejax.eval import mean_ap
from maejax.eval import similarity


@pytest.mark.parametrize("pairs", [30, 5000])  # gathered, then blocks of the matrix
def test_pair_cosines_equal_sklearn(pairs):
  rng = np.random.default_rng(0)
  x = rng.standard_normal((60, 16)).astype(np.float32)
  i, j = rng.integers(0, 60, size=(2, pairs))
  got = similarity.pair_cosines(similarity.unit_rows(x), i, j, block_size=200)
  assert got.dtype == np.float32
  np.testing.assert_allclose(got, cosine_similarity(x)[i, j], atol=1e-6)


def _wells(rng, perts=10, replicates=4, controls=15, d=8, dtype=np.float64):
  centres = rng.standard_normal((perts, d))
  labels = np.r_[np.repeat([f"G{p}" for p in range(perts)], replicates), ["EMPTY"] * controls]
  feats = np.r_[centres[np.repeat(np.arange(perts), replicates)], np.zeros((controls, d))]
  feats = (feats + rng.standard_normal(feats.shape)).astype(dtype)
  table = pd.DataFrame(feats, columns=[f"f{k}" for k in range(d)])
  table.insert(0, "Metadata_perturbation", labels)
  table.insert(1, "Metadata_is_control", labels == "EMPTY")
  return table


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_replicate_ap_against_all_wells_equals_copairs_in_small_blocks(dtype):
  table = _wells(np.random.default_rng(1), dtype=dtype)
  ap, maps, _ = mean_ap.replicate_map(table, negatives="all", null_size=500, seed=2)
  blocked = mean_ap.replicate_ap(table.filter(like="f").to_numpy(),
                                 table.Metadata_perturbation, table.Metadata_is_control,
                                 negatives="all", block_size=7 * 55)
  meta = table[["Metadata_perturbation"]].copy()
  feats = table.filter(like="f").to_numpy().astype(np.float64)
  direct = copairs_map.average_precision(meta, feats, pos_sameby=["Metadata_perturbation"],
                                         pos_diffby=[], neg_sameby=[],
                                         neg_diffby=["Metadata_perturbation"],
                                         progress_bar=False)
  direct = direct[~table.Metadata_is_control].reset_index(drop=True)
  tol = 1e-9 if dtype == np.float64 else 1e-5
  np.testing.assert_allclose(ap.average_precision, direct.average_precision, atol=tol)
  np.testing.assert_allclose(blocked.average_precision, direct.average_precision, atol=tol)
  np.testing.assert_array_equal(ap.n_total_pairs, direct.n_total_pairs)
  np.testing.assert_allclose(ap.normalized_average_precision,
                             direct.normalized_average_precision, atol=tol)
  direct_maps = copairs_map.mean_average_precision(direct, sameby=["Metadata_perturbation"],
                                                   null_size=500, threshold=0.05, seed=2,
                                                   progress_bar=False)
  np.testing.assert_allclose(maps.p_value, direct_maps.p_value, atol=tol)


def test_float32_features_stay_float32_and_match_float64():
  rng = np.random.default_rng(3)
  x = rng.standard_normal((300, 12)) + 3.0
  is_control = np.arange(300) % 5 == 0
  batch = np.arange(300) % 3
  low = correct.tvn(x.astype(np.float32), is_control, batch)
  high = correct.tvn(x, is_control, batch)
  assert low.dtype == np.float32 and high.dtype == np.float64
  np.testing.assert_allclose(low, high, atol=2e-4)


def test_aggregate_float32_by_one_or_two_columns_equals_pandas():
  rng = np.random.default_rng(4)
  table = pd.DataFrame(rng.standard_normal((50, 4)).astype(np.float32),
                       columns=[f"f{k}" for k in range(4)])
  table.insert(0, "Metadata_perturbation", rng.choice(["A", "B", "C"], 50))
  table.insert(1, "Metadata_concentration", rng.choice([0.1, 1.0], 50))
  for by in (["Metadata_perturbation"], ["Metadata_perturbation", "Metadata_concentration"]):
    got = aggregate.aggregate(table, by=by if len(by) > 1 else by[0])
    expected = table.groupby(by)[[f"f{k}" for k in range(4)]].mean().reset_index()
    assert got.f0.dtype == np.float32
    pd.testing.assert_frame_equal(got[by].reset_index(drop=True), expected[by])
    np.testing.assert_allclose(got.filter(like="f").to_numpy(),
                               expected.filter(like="f").to_numpy(), atol=1e-6)


def test_bench_benchmark_reports_every_stage(capsys, tmp_path):
  code = bench_cli.main(["benchmark", "--wells", "600", "--features", "8", "--genes", "40",
                         "--pairs", "100", "--batches", "3", "--map-null-size", "50",
                         "--n-null", "20", "--workdir", str(tmp_path), "--json"])
  assert code == 0
  out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
  stages = [r["stage"] for r in out["stages"]]
  assert stages == ["build", "read", "check", "correct", "replicate_consistency", "aggregate",
                    "recall", "mean_ap", "write"]
  assert out["perturbations"] == 40 and all(r["peak_rss_gib"] > 0 for r in out["stages"])
  assert (tmp_path / "results" / "recall_curve.png").is_file()
