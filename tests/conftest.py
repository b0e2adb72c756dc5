"""Tests run on an emulated 8-device CPU mesh (set before JAX is imported)."""

import os

if "xla_force_host_platform_device_count" not in os.environ.get("XLA_FLAGS", ""):
  os.environ["XLA_FLAGS"] = (
      os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8").strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")

# As every command does: keep freed memory for the next step (maejax.host.keep_freed_memory).
import maejax  # noqa: E402,F401

import pandas as pd  # noqa: E402
import pytest  # noqa: E402

from maejax.data import synthetic  # noqa: E402
from maejax.eval import embed, io, pipeline  # noqa: E402


@pytest.fixture(scope="session")
def rxrx1_layout():
  """rewrite(root): the metadata.csv of a screen written by synthetic.write_screen, in RxRx1's
  columns (synthetic.RXRX1_COLUMNS: perturbation as sirna, no is_control, its own `well_id`,
  experiment_plate_well); returns the table."""
  def rewrite(root):
    meta = synthetic.rxrx1_metadata(pd.read_csv(root / "metadata.csv"), "HUVEC")
    meta.to_csv(root / "metadata.csv", index=False)
    return meta
  return rewrite


@pytest.fixture(scope="session")
def assert_one_well_id(tmp_path_factory):
  """check(src, column, values): the well table of a source whose metadata has its
  own well id `column` (`values` per site, from the test's CSV) has maejax's well id as its
  index and only `Metadata_well_id`; the source's is kept as `Metadata_source_<column>` in
  every table format, and the table passes the benchmark's well check."""
  def check(src, column, values):
    out = tmp_path_factory.mktemp("wells")
    wells = embed.sites_to_wells(embed.intensity_sites(src), src.metadata)
    keys = [k for k in ("experiment", "plate", "well") if k in src.metadata]
    expected = sorted(map(str, pd.Series(list(values)).groupby(
        [src.metadata[k].astype(str) for k in keys]).first()))
    for suffix in (".parquet", ".csv", ".h5ad"):
      table = pipeline.check_wells(io.read_embeddings(io.write_embeddings(
          wells, out / f"wells{suffix}")))
      assert table.index.name == "Metadata_well_id" and table.index.is_unique, suffix
      assert [c for c in table.columns if "well_id" in c.lower()] == [
          f"Metadata_source_{column}"], suffix
      assert sorted(table[f"Metadata_source_{column}"].astype(str)) == expected, suffix
  return check
