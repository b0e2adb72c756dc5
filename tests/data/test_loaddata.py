"""CellProfiler LoadData CSVs (FileName_/PathName_ per channel, Metadata_*) in the folder source
and ingest: the pixels are those of the files, read directly with tifffile / Pillow."""

import json
import os

import numpy as np
import pandas as pd
import pytest
import tifffile
from PIL import Image

import maejax.data as md
from maejax.cli import ingest

SITES = [("BR00117010", "A01", 1, "TP53", "trt"), ("BR00117010", "A01", 2, "TP53", "trt"),
         ("BR00117010", "B02", 1, "non-targeting", "negcon"),
         ("BR00117011", "A01", 1, "MDM2", "trt")]


def _write_loaddata(root, absolute_rna=False):
  """A JUMP-like LoadData table: OrigDNA, OrigER as TIFF, OrigRNA as PNG (folder relative to
  the CSV, or absolute), an illumination function column, Metadata_* columns."""
  rng = np.random.default_rng(0)
  rows = []
  for plate, well, site, symbol, kind in SITES:
    row = {"Metadata_Source": "source_4", "Metadata_Batch": "2021_04_26_Batch1",
           "Metadata_Plate": plate, "Metadata_Well": well, "Metadata_Site": site}
    folder = root / "images" / plate
    folder.mkdir(parents=True, exist_ok=True)
    for channel, ext in (("OrigDNA", "tiff"), ("OrigER", "tif"), ("OrigRNA", "png")):
      name = f"r{well}f{site:02d}-{channel}.{ext}"
      image = rng.integers(0, 256, (24, 20), dtype=np.uint8)
      if ext == "png":
        Image.fromarray(image).save(folder / name)
      else:
        tifffile.imwrite(folder / name, image)
      relative = os.path.join("images", plate)
      row[f"FileName_{channel}"] = name
      row[f"PathName_{channel}"] = (str(folder) if absolute_rna and channel == "OrigRNA"
                                    else relative)
    row["FileName_IllumDNA"], row["PathName_IllumDNA"] = "illum.npy", "illum"
    row["Metadata_Symbol"], row["Metadata_pert_type"] = symbol, kind
    rows.append(row)
  pd.DataFrame(rows).to_csv(root / "load_data.csv", index=False)
  return pd.DataFrame(rows)


def _direct(root, row, channel):
  path = root / row[f"PathName_{channel}"] / row[f"FileName_{channel}"]
  if str(path).endswith(".png"):
    return np.asarray(Image.open(path))
  return tifffile.imread(path)


def _config(root, **folder):
  c = md.default_config()
  c.source, c.path, c.metadata_csv = "folder", str(root), "load_data.csv"
  c.channels = (0, 1, 2)
  c.folder.update(folder)
  return c


def test_loaddata_csv_is_read_in_column_order_with_metadata(tmp_path):
  table = _write_loaddata(tmp_path, absolute_rna=True)
  src = md.make_source(_config(tmp_path))
  assert src.channel_names == ("OrigDNA", "OrigER", "OrigRNA")  # IllumDNA left out.
  assert len(src) == len(SITES)
  for i, row in table.iterrows():
    expected = np.stack([_direct(tmp_path, row, c) for c in src.channel_names], axis=-1)
    np.testing.assert_array_equal(src[i], expected)
  meta = src.metadata
  assert meta.plate.tolist() == [s[0] for s in SITES] and "Metadata_Plate" not in meta
  assert meta.well.tolist() == [s[1] for s in SITES] and meta.site.tolist() == [1, 2, 1, 1]
  assert meta.experiment.tolist() == ["2021_04_26_Batch1"] * 4
  assert meta.perturbation.tolist() == [s[3] for s in SITES]
  assert meta.is_control.tolist() == [False, False, True, False]
  assert not [c for c in meta.columns if c.startswith(("FileName_", "PathName_"))]


def test_loaddata_metadata_well_id_stays_apart_from_maejax_well_id(tmp_path,
                                                                   assert_one_well_id):
  table = _write_loaddata(tmp_path)
  table["Metadata_well_id"] = table.Metadata_Plate + "-" + table.Metadata_Well
  table.to_csv(tmp_path / "load_data.csv", index=False)
  assert_one_well_id(md.make_source(_config(tmp_path)), "well_id", table.Metadata_well_id)


def test_loaddata_channels_field_orders_and_subsets(tmp_path):
  table = _write_loaddata(tmp_path)
  c = _config(tmp_path, loaddata_channels="RNA,dna")
  c.channels = (1, 0)
  src = md.make_source(c)
  assert src.channel_names == ("OrigDNA", "OrigRNA")
  np.testing.assert_array_equal(src.channel_ids, [1, 0])
  row = table.iloc[3]
  np.testing.assert_array_equal(
      src[3], np.stack([_direct(tmp_path, row, "OrigDNA"), _direct(tmp_path, row, "OrigRNA")], -1))
  c.channels = (0, 2)
  with pytest.raises(ValueError, match=r"LoadData channels \('OrigRNA', 'OrigDNA'\)"):
    md.make_source(c)


def test_ingest_reads_the_same_pixels(tmp_path, capsys):
  table = _write_loaddata(tmp_path)
  out = tmp_path / "ar"
  assert ingest.main(["--source", "folder", "--path", str(tmp_path), "--metadata-csv",
                      "load_data.csv", "--channels", "0,1,2", "--out", str(out), "--json",
                      "--no-progress"]) == 0
  assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["num_sites"] == len(SITES)
  c = md.default_config()
  c.source, c.path, c.channels = "arrayrecord", str(out), (0, 1, 2)
  ar = md.make_source(c)
  assert ar.channel_names == ("OrigDNA", "OrigER", "OrigRNA")
  for i, row in table.iterrows():
    direct = np.stack([_direct(tmp_path, row, ch) for ch in ar.channel_names], axis=-1)
    np.testing.assert_array_equal(ar[i], direct)
  assert ar.metadata.well.tolist() == [s[1] for s in SITES]


def test_loaddata_errors_name_the_file_row_and_column(tmp_path):
  table = _write_loaddata(tmp_path)
  csv = tmp_path / "load_data.csv"
  with pytest.raises(ValueError, match=r"loaddata_channels names 'Brightfield', but the CSV's "
                     r"FileName_ columns are \['OrigDNA', 'OrigER', 'OrigRNA', 'IllumDNA'\]"):
    md.make_source(_config(tmp_path, loaddata_channels="DNA,Brightfield"))
  table.drop(columns=["PathName_OrigER"]).to_csv(csv, index=False)
  with pytest.raises(ValueError, match=r"load_data.csv: column PathName_OrigER is missing"):
    md.make_source(_config(tmp_path))
  table.assign(FileName_OrigRNA=["a.png", "b.png", None, "d.png"]).to_csv(csv, index=False)
  with pytest.raises(ValueError, match=r"load_data.csv row 2: FileName_OrigRNA is empty"):
    md.make_source(_config(tmp_path))
  os.remove(tmp_path / "images" / "BR00117011" / table.FileName_OrigER[3])
  table.to_csv(csv, index=False)
  with pytest.raises(FileNotFoundError, match=r"rA01f01-OrigER.tif: image not found \(metadata "
                     r"row 3 of .*load_data.csv\)"):
    md.make_source(_config(tmp_path))
  c = _config(tmp_path)
  c.skip_bad_images = True
  assert len(md.make_source(c)) == 3
  table.drop(columns=["Metadata_Well"]).to_csv(csv, index=False)
  with pytest.raises(ValueError, match="LoadData CSV without a well column"):
    md.make_source(_config(tmp_path))
