"""Aggregation to perturbations and the embeddings-table reader/writer."""


import numpy as np
import pandas as pd
import pytest

from maejax.eval import aggregate, io


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
  pd.testing.assert_frame_equal(back, _wells(), check_dtype=False)


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
