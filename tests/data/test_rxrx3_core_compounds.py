"""RxRx3-core compound wells: perturbation is the compound, concentration kept."""

import os

import numpy as np
import pandas as pd

import maejax.data as md


def test_rxrx3_core_compound_wells_name_the_compound_and_keep_concentration(tmp_path):
  import imagecodecs
  import pyarrow as pa
  import pyarrow.parquet as pq
  rng = np.random.default_rng(0)
  wells = [("gene-001", 1, "AA01", "TP53", "TP53_guide_1", np.nan, "CRISPR"),
           ("compound-001", 1, "AB02", np.nan, "RXC-000123", 2.5, "COMPOUND"),
           ("compound-001", 1, "AC03", "EMPTY_control", "EMPTY_control", np.nan, "CONTROL")]
  keys, blobs = [], []
  for exp, plate, addr, *_ in wells:
    for ch in range(1, 7):
      keys.append(f"{exp}/Plate{plate}/{addr}_s1_{ch}")
      blobs.append(imagecodecs.jpeg2k_encode(rng.integers(0, 256, (16, 16), dtype=np.uint8),
                                             level=0))
  os.makedirs(tmp_path / "data")
  pq.write_table(pa.table({"__key__": keys, "jp2": blobs}), tmp_path / "data" / "a.parquet")
  pd.DataFrame([dict(well_id=f"{e}_{p}_{a}", experiment_name=e, plate=p, address=a, gene=g,
                     treatment=t, SMILES="C" if k == "COMPOUND" else "", concentration=c,
                     perturbation_type=k, cell_type="HUVEC")
                for e, p, a, g, t, c, k in wells]).to_csv(tmp_path / "metadata_rxrx3_core.csv",
                                                          index=False)
  c = md.default_config()
  c.source, c.path = "rxrx3_core", str(tmp_path)
  meta = md.make_source(c).metadata
  assert meta.perturbation.tolist() == ["TP53", "RXC-000123", "EMPTY_control"]
  assert meta.is_control.tolist() == [False, False, True]
  assert meta.concentration.isna().tolist() == [True, False, True]
