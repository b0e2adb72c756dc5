"""Aggregation to perturbations and the embeddings-table reader/writer: well ids, categories
and provenance that plain pandas / pyarrow / anndata see, JUMP-cased input."""

import json

import anndata
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from maejax.eval import aggregate, io, pipeline


def _wells():
  return pd.DataFrame({
      "Metadata_experiment": ["e1", "e1", "e2", "e1", "e2"],
      "Metadata_well": ["A01", "A02", "A01", "B01", "B02"],
      "Metadata_perturbation": ["TP53", "TP53", "TP53", "MDM2", "MDM2"],
      "Metadata_gene_id": [7157, 7157, 7157, 4193, 4193],
      "Metadata_is_control": [False] * 5,
      "f0": [1.0, 2.0, 6.0, 10.0, 20.0],
      "f1": [0.0, 3.0, 3.0, -1.0, 1.0],
  })


def test_aggregate_means_and_keeps_metadata():
  out = aggregate.aggregate(_wells())
  assert out.Metadata_perturbation.tolist() == ["MDM2", "TP53"]
  expected = _wells().groupby("Metadata_perturbation")[["f0", "f1"]].mean()
  np.testing.assert_allclose(out[["f0", "f1"]].to_numpy(), expected.to_numpy())
  assert out.Metadata_gene_id.tolist() == [4193, 7157]          # constant per gene: kept
  assert out.Metadata_is_control.tolist() == [False, False]
  assert out.Metadata_experiment.tolist() == ["e1;e2", "e1;e2"]  # varying: unique values
  assert out.Metadata_well.tolist() == ["B01;B02", "A01;A02"]
  assert out.Metadata_n_wells.tolist() == [2, 3]
  assert list(out.columns[-2:]) == ["f0", "f1"]


def test_aggregate_median_and_column_override():
  wells = _wells().rename(columns={"Metadata_perturbation": "Metadata_gene"})
  out = aggregate.aggregate(wells, by="gene", method="median")
  assert out.Metadata_gene.tolist() == ["MDM2", "TP53"]
  np.testing.assert_allclose(out.f0, [15.0, 2.0])
  with pytest.raises(ValueError, match="neither 'perturbation' nor 'Metadata_perturbation'"):
    aggregate.aggregate(wells)


def test_split_table_errors_and_warnings():
  wells = _wells()
  with pytest.raises(ValueError, match="no feature columns"):
    io.split_table(wells[[c for c in wells.columns if c.startswith("Metadata_")]])
  wells["FileName_DNA"] = "a.tif"
  with pytest.warns(UserWarning, match="FileName_DNA"):
    _, features, names = io.split_table(wells)
  assert names == ["f0", "f1"] and features.shape == (5, 2)
  wells = _wells()
  wells.loc[2, "f1"] = np.nan
  with pytest.raises(ValueError, match=r"1 NaN/inf values in 1 feature columns \(\['f1'\]\)"):
    io.split_table(wells)
  with pytest.warns(UserWarning, match="dropping 1 feature columns"):
    _, features, names = io.split_table(wells, drop_nan_features=True)
  assert names == ["f0"]


def test_control_flags_from_strings_and_key():
  meta = pd.DataFrame({"Metadata_is_control": ["True", "false", "1", "0"],
                       "Metadata_perturbation": ["EMPTY", "A", "EMPTY", "B"]})
  assert io.control_flags(meta).tolist() == [True, False, True, False]
  assert io.control_flags(meta, control_key="EMPTY").tolist() == [True, False, True, False]
  with pytest.raises(ValueError, match="no row has Metadata_perturbation == 'DMSO'"):
    io.control_flags(meta, control_key="DMSO")
  meta["Metadata_is_control"] = ["yes", "maybe", "no", "no"]
  with pytest.raises(ValueError, match="found \\['maybe'\\]"):
    io.control_flags(meta)


@pytest.mark.parametrize("suffix", [".parquet", ".csv"])
def test_write_read_round_trip(tmp_path, suffix):
  path = io.write_embeddings(_wells(), tmp_path / f"wells{suffix}")
  back = io.read_embeddings(path)
  pd.testing.assert_frame_equal(io.plain(back), _wells(), check_dtype=False)


PROVENANCE = {"model": "vit_tiny", "checkpoint": "runs/demo", "step": 1000, "crop_size": 32,
              "pool": "mean", "channels": [0, 1, 2], "channel_names": ["DNA", "ER", "AGP"]}


def _tagged_wells():
  wells = _wells()
  wells["Metadata_plate"] = [1, 1, 2, 1, 2]  # RxRx1-style integer plates.
  wells["Metadata_n_sites"] = [2, 2, 2, 1, 2]
  wells.index = io.well_ids(wells[["Metadata_experiment", "Metadata_plate", "Metadata_well"]])
  return io.with_provenance(wells, PROVENANCE)


def test_parquet_carries_index_categories_and_provenance_for_plain_pandas(tmp_path):
  io.write_embeddings(_tagged_wells(), tmp_path / "wells.parquet")
  back = pd.read_parquet(tmp_path / "wells.parquet")  # No maejax in the way.
  assert back.index.name == "Metadata_well_id"
  assert back.index.tolist() == ["e1_1_A01", "e1_1_A02", "e2_2_A01", "e1_1_B01", "e2_2_B02"]
  for column in ("Metadata_experiment", "Metadata_well", "Metadata_perturbation"):
    assert isinstance(back[column].dtype, pd.CategoricalDtype), column
  assert back.Metadata_n_sites.dtype == np.int64 and back.Metadata_is_control.dtype == bool
  stored = json.loads(pq.read_schema(tmp_path / "wells.parquet").metadata[b"maejax"])
  assert {k: stored[k] for k in PROVENANCE} == PROVENANCE and stored["maejax_version"]
  assert back.filter(regex=f"^{io.FEATURE_PREFIX}").shape[1] == 0  # f0, f1 are not maejax's
  assert io.provenance_of(io.read_embeddings(tmp_path / "wells.parquet"))["step"] == 1000


def test_h5ad_carries_obs_names_categories_and_uns_for_plain_anndata(tmp_path):
  io.write_embeddings(_tagged_wells(), tmp_path / "wells.h5ad")
  adata = anndata.read_h5ad(tmp_path / "wells.h5ad")
  assert adata.obs_names.tolist() == _tagged_wells().index.tolist()
  for column in ("experiment", "plate", "well", "perturbation"):  # scanpy colours discretely
    assert isinstance(adata.obs[column].dtype, pd.CategoricalDtype), column
  assert adata.obs.plate.cat.categories.tolist() == [1, 2]
  assert adata.obs.n_sites.dtype == np.int64
  uns = adata.uns["maejax"]
  assert uns["model"] == "vit_tiny" and uns["step"] == 1000 and list(uns["channels"]) == [0, 1, 2]
  back = io.read_embeddings(tmp_path / "wells.h5ad")
  assert back.index.tolist() == adata.obs_names.tolist()
  assert io.provenance_of(back)["channel_names"] == ["DNA", "ER", "AGP"]


def test_csv_keeps_the_well_id_column(tmp_path):
  io.write_embeddings(_tagged_wells(), tmp_path / "wells.csv")
  assert pd.read_csv(tmp_path / "wells.csv").columns[0] == "Metadata_well_id"
  back = io.read_embeddings(tmp_path / "wells.csv")
  assert back.index.tolist() == _tagged_wells().index.tolist()


def test_well_ids_are_unique_even_when_names_collide():
  keys = pd.DataFrame({"experiment": ["a_b", "a"], "plate": ["c", "b_c"], "well": ["A1", "A1"]})
  ids = io.well_ids(keys)
  assert ids.is_unique and ids.name == "Metadata_well_id"


def test_jump_cased_columns_map_to_canonical_names():
  jump = pd.DataFrame({"Metadata_Plate": ["P1", "P2"], "Metadata_WELL": ["A01", "A02"],
                       "Metadata_Batch": ["b1", "b1"], "Metadata_JCP2022": ["JCP1", "JCP2"],
                       "Metadata_Symbol": ["TP53", "non-targeting"],
                       "Metadata_pert_type": ["trt", "negcon"], "f0": [1.0, 2.0]})
  out = io.canonical_columns(jump)
  assert out.Metadata_plate.tolist() == ["P1", "P2"] and "Metadata_Plate" not in out
  assert out.Metadata_well.tolist() == ["A01", "A02"] and out.Metadata_batch.tolist() == ["b1"] * 2
  assert out.Metadata_perturbation.tolist() == ["TP53", "non-targeting"]  # Symbol before JCP
  assert out.Metadata_Symbol.tolist() == ["TP53", "non-targeting"]       # the original stays
  assert out.Metadata_is_control.tolist() == [False, True]
  assert io.resolve_column(out, "Metadata_Plate", what="batch", flag="--batch-col") == \
      "Metadata_plate"
  kept = io.canonical_columns(jump.assign(Metadata_perturbation=["x", "y"]))
  assert kept.Metadata_perturbation.tolist() == ["x", "y"]  # a canonical column wins


def test_jump_cased_table_is_benchmarked(tmp_path, capsys):
  from maejax.cli import benchmark  # pylint: disable=import-outside-toplevel
  rng = np.random.default_rng(0)
  genes = [f"G{i}" for i in range(8)]
  centers = {g: rng.normal(size=6) * 2 for g in genes}
  for a, b in zip(genes[::2], genes[1::2]):
    centers[b] = centers[a] + rng.normal(size=6) * 0.3
  rows = []
  for plate in ("BR1", "BR2"):
    shift = rng.normal(size=6) * 3
    for k, g in enumerate(genes * 2 + ["non-targeting"] * 6):
      x = centers.get(g, np.zeros(6)) + rng.normal(size=6) * 0.3 + shift
      rows.append({"Metadata_Source": "source_13", "Metadata_Batch": plate[-1],
                   "Metadata_Plate": plate, "Metadata_Well": f"W{k:02d}",
                   "Metadata_JCP2022": f"JCP2022_{g}", "Metadata_Symbol": g,
                   "Metadata_pert_type": "negcon" if g == "non-targeting" else "trt",
                   **{f"X_{j}": v for j, v in enumerate(x)}})
  pd.DataFrame(rows).to_parquet(tmp_path / "jump.parquet")
  rel = tmp_path / "rel"
  rel.mkdir()
  pd.DataFrame({"entity1": genes[::2], "entity2": genes[1::2]}).to_csv(rel / "Pairs.csv",
                                                                       index=False)
  assert benchmark.main(["--embeddings", str(tmp_path / "jump.parquet"), "--relationships",
                         str(rel), "--out", str(tmp_path / "out"), "--n-null", "50",
                         "--map-null-size", "0", "--json"]) == 0
  summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
  assert summary["perturbations"] == 8 and summary["wells"] == 2 * (16 + 6)
  assert summary["provenance"] == {"correction": "tvn"}
  recall = summary["recall"][0]
  assert recall["pairs"] == 4 and recall["recall"] > recall["random_baseline"]
  stored = json.loads(pq.read_schema(tmp_path / "out" / "perturbation_map.parquet")
                      .metadata[b"maejax"])
  assert stored["correction"] == "tvn"


def test_h5ad_round_trip(tmp_path):
  path = io.write_embeddings(_wells(), tmp_path / "wells.h5ad")
  back = io.read_embeddings(path)
  np.testing.assert_allclose(back[["f0", "f1"]].to_numpy(), _wells()[["f0", "f1"]].to_numpy())
  assert back.Metadata_perturbation.tolist() == _wells().Metadata_perturbation.tolist()


def test_read_errors(tmp_path):
  with pytest.raises(FileNotFoundError, match="nope.parquet does not exist"):
    io.read_embeddings(tmp_path / "nope.parquet")
  (tmp_path / "x.npy").write_bytes(b"")
  with pytest.raises(ValueError, match="unknown format '.npy'"):
    io.read_embeddings(tmp_path / "x.npy")


def test_table_with_a_source_well_id_beside_the_index_reads_back(tmp_path):
  """A well table written before a source's own well_id (RxRx1's) was renamed holds
  `Metadata_well_id` twice, as index and column: it reads back with one, and is scored."""
  wells = _tagged_wells()
  wells.insert(0, "Metadata_well_id", [f"rxrx1-{i}" for i in range(len(wells))])
  pq.write_table(pa.Table.from_pandas(wells), tmp_path / "old.parquet")
  back = io.read_embeddings(tmp_path / "old.parquet")
  assert back.index.tolist() == wells.index.tolist() and back.index.name == "Metadata_well_id"
  assert back.Metadata_source_well_id.tolist() == [f"rxrx1-{i}" for i in range(len(wells))]
  assert "Metadata_well_id" not in back.columns
  pipeline.check_wells(back)


@pytest.mark.parametrize("suffix", [".parquet", ".csv", ".h5ad"])
def test_aggregated_integer_plates_are_text_in_every_row_and_write(tmp_path, suffix):
  """A perturbation on two integer plates: its plates are joined, so the whole column is text
  (a column of numbers and text fails to write to Parquet); missing values stay missing."""
  wells = _wells().assign(Metadata_plate=[1, 1, 2, 3, 3],
                          Metadata_dose=[np.nan, np.nan, np.nan, 0.5, np.nan])
  out = aggregate.aggregate(wells)
  back = io.plain(io.read_embeddings(io.write_embeddings(out, tmp_path / f"map{suffix}")))
  for table in (out, back):
    assert table.Metadata_plate.tolist() == ["3", "1;2"]
    assert table.Metadata_dose.iloc[0] == "0.5;nan" and pd.isna(table.Metadata_dose.iloc[1])
  assert out.Metadata_gene_id.tolist() == [4193, 7157]  # constant per gene: a number still
  np.testing.assert_allclose(back[["f0", "f1"]], out[["f0", "f1"]])
