"""Folder / RxRx1 / RxRx3-core / ArrayRecord sources, ingest, and every bad-input error."""

import json
import logging
import os

import numpy as np
import pandas as pd
import pytest
import tifffile
from PIL import Image

import maejax.data as md
from maejax.cli import ingest
from maejax.data import sources, synthetic

TINY = dict(site_size=32, cell_radius=6.0, n_groups=2, genes_per_group=2, n_null_genes=1,
            n_experiments=1, plates_per_experiment=1, controls_per_plate=2, sites_per_well=1)


@pytest.fixture(scope="module")
def screen_dir(tmp_path_factory):
  out = tmp_path_factory.mktemp("screen")
  screen = synthetic.SyntheticScreen(**TINY)
  synthetic.write_screen(screen, str(out), workers=1)
  return out, screen


def _folder_config(path, **kw):
  c = md.default_config()
  c.source, c.path = "folder", str(path)
  c.update(kw)
  return c


def _copy_screen(src, dst):
  import shutil
  shutil.copytree(src, dst)
  return dst


def test_folder_source_reads_back_the_written_pngs(screen_dir):
  path, screen = screen_dir
  src = md.make_source(_folder_config(path, channels=(5, 0)))
  assert len(src) == len(screen)
  for i in range(len(src)):
    np.testing.assert_array_equal(src[i], screen[i][..., [5, 0]])
  np.testing.assert_array_equal(src.channel_ids, [5, 0])
  assert src.channel_names == ("golgi", "nuclei")
  assert src.metadata.is_control.sum() == 2
  assert list(src.metadata.perturbation) == list(screen.metadata.perturbation)


def test_rxrx1_preset(tmp_path, screen_dir, rxrx1_layout, assert_one_well_id):
  path, screen = screen_dir
  root = _copy_screen(path, tmp_path / "rxrx1")
  meta = rxrx1_layout(root)
  c = md.default_config()
  c.source, c.path = "rxrx1", str(root)
  src = md.make_source(c)
  assert src.metadata.is_control.tolist() == (meta.well_type == "negative_control").tolist()
  assert src.metadata.perturbation.tolist() == meta.sirna.tolist()
  np.testing.assert_array_equal(src[2], screen[2])
  assert_one_well_id(src, "well_id", meta.well_id)


def test_long_form_csv_with_real_fluorescence_16bit(tmp_path):
  """A folder dataset from PartSegData's 4-channel confocal stack, one TIFF per channel."""
  partsegdata = pytest.importorskip("PartSegData", reason="partsegdata ships the stack.tif test image")
  stack = tifffile.imread(os.path.join(partsegdata.images_dir, "stack.tif"))  # [4, 1024, 1024]
  scale = np.percentile(stack, 99.9, axis=(1, 2), keepdims=True)
  stack12 = np.clip(np.round(stack / scale * 3000), 0, 4095).astype(np.uint16)  # a 12-bit camera
  rows = []
  for site, (y, x) in enumerate([(0, 0), (512, 512)], start=1):
    for ch in range(4):
      name = f"P1/B02_s{site}_ch{ch}.tif"
      os.makedirs(tmp_path / "P1", exist_ok=True)
      tifffile.imwrite(tmp_path / name, stack12[ch, y:y + 512, x:x + 512])
      rows.append(dict(plate="P1", well="B02", site=site, ch=ch, file=name, treatment="DMSO"))
  pd.DataFrame(rows).to_csv(tmp_path / "files.csv", index=False)
  folder = dict(file_column="file", channel_column="ch", channel_numbers=(0, 1, 2, 3),
                channel_names=("a", "b", "c", "d"), control_column="treatment",
                control_values=("DMSO",))
  c = _folder_config(tmp_path, metadata_csv="files.csv", channels=(0, 1, 2, 3))
  c.folder.update(folder)
  c.folder.columns.update(experiment="", perturbation="treatment")
  with pytest.raises(sources.BadImageError, match=r"B02_s1_ch0.tif: 16-bit image .*uint16='shift'"):
    md.make_source(c)[0]
  c.uint16, c.bit_depth = "shift", 12
  src = md.make_source(c)
  assert len(src) == 2 and src.metadata.is_control.all()
  ref = np.moveaxis(stack12[:, 512:, 512:] >> 4, 0, -1).astype(np.uint8)
  np.testing.assert_array_equal(src[1], ref)
  assert src[1].std() > 1  # real structure survived
  c.uint16 = "percentile"
  plane = stack12[3, :512, :512].astype(np.float64)
  lo, hi = np.percentile(plane, [0.1, 99.9])
  assert hi > lo + 100
  ref = np.clip(np.round((plane - lo) * 255 / (hi - lo)), 0, 255)
  np.testing.assert_allclose(md.make_source(c)[0][..., 3], ref, atol=1)
  c.bit_depth = 8  # values above 255 are not 8-bit: an error, never clipping
  c.uint16 = "shift"
  with pytest.raises(sources.BadImageError, match="exceeds 8-bit range"):
    md.make_source(c)[0]


def test_float_tiff_is_rejected(tmp_path):
  tifffile.imwrite(tmp_path / "f.tif", np.zeros((8, 8), np.float32))
  with pytest.raises(sources.BadImageError, match="f.tif: pixel type float32"):
    sources.to_uint8(sources.read_channel(str(tmp_path / "f.tif")), path=str(tmp_path / "f.tif"))


def test_missing_file_errors_or_is_skipped_and_logged(tmp_path, screen_dir, caplog):
  path, screen = screen_dir
  root = _copy_screen(path, tmp_path / "s")
  row = screen.metadata.iloc[1]
  gone = root / "images" / row.experiment / f"Plate{row.plate}" / f"{row.well}_s{row.site}_w3.png"
  os.remove(gone)
  with pytest.raises(FileNotFoundError, match=f"{gone.name}: image not found \\(metadata row 1"):
    md.make_source(_folder_config(root))
  with caplog.at_level(logging.WARNING):
    src = md.make_source(_folder_config(root, skip_bad_images=True))
  assert len(src) == len(screen) - 1 and src.skipped == [(str(gone), "not found")]
  assert str(gone) in caplog.text
  assert row.well not in src.metadata.well.tolist()


def test_unreadable_and_mismatched_images(tmp_path, screen_dir, caplog):
  path, screen = screen_dir
  root = _copy_screen(path, tmp_path / "s")
  m = screen.metadata
  site = lambda i, w: root / "images" / m.experiment[i] / f"Plate{m.plate[i]}" / f"{m.well[i]}_s{m.site[i]}_w{w}.png"  # noqa: E731
  site(0, 2).write_bytes(b"not a png")
  Image.fromarray(np.zeros((16, 32), np.uint8)).save(site(3, 4))
  src = md.make_source(_folder_config(root))
  with pytest.raises(sources.BadImageError, match=f"{site(0, 2).name}: unreadable image"):
    src[0]
  with pytest.raises(sources.BadImageError, match=r"differ in size \(.*w4.png=\(16, 32\)"):
    src[3]
  # skip_bad_images in training: the two bad sites are skipped and logged, the rest all come.
  c = _folder_config(root, skip_bad_images=True, crop_size=32, num_epochs=1, shuffle=False,
                     flips=False, rotations=False)
  with caplog.at_level(logging.WARNING):
    batches = list(md.train_iterator(c, batch_size=1, shard_index=0, shard_count=1))
  assert len(batches) == len(screen) - 2
  assert site(0, 2).name in caplog.text and "differ in size" in caplog.text
  tiles = list(md.eval_tiles(md.make_source(c), 32, 100, skip_bad_images=True))
  assert tiles[0][1].site_index.tolist() == [i for i in range(len(screen)) if i not in (0, 3)]


def test_missing_channel_and_missing_columns(tmp_path, screen_dir):
  path, _ = screen_dir
  rows = [dict(plate=1, well="A01", site=1, channel=c, file=f"x{c}.png") for c in (1, 2, 4)]
  pd.DataFrame(rows).to_csv(tmp_path / "long.csv", index=False)
  c = _folder_config(tmp_path, metadata_csv="long.csv", channels=(0, 1, 2))
  c.folder.update(file_column="file", control_column="")
  c.folder.columns.update(experiment="", perturbation="")
  with pytest.raises(ValueError, match=r"long.csv: site plate=1, well=A01, site=1 \(rows \[0, 1, 2\]\) has no file for channel\(s\) \[3\]"):
    md.make_source(c)
  meta = pd.read_csv(path / "metadata.csv").drop(columns=["perturbation"])
  meta.to_csv(tmp_path / "nopert.csv", index=False)
  c = _folder_config(path, metadata_csv=str(tmp_path / "nopert.csv"))
  with pytest.raises(ValueError, match=r"missing column\(s\) 'perturbation' \(config.data.folder.columns.perturbation\)"):
    md.make_source(c)
  c = _folder_config(path)
  c.folder.path_template = "{plate_name}/{well}_w{channel}.png"
  with pytest.raises(ValueError, match=r"uses column\(s\) \['plate_name'\]"):
    md.make_source(c)
  with pytest.raises(FileNotFoundError, match="metadata CSV .*nothere.csv not found"):
    md.make_source(_folder_config(path, metadata_csv="nothere.csv"))
  with pytest.raises(ValueError, match=r"config.data.channels=\(0, 7\)"):
    md.make_source(_folder_config(path, channels=(0, 7)))


def test_ingest_arrayrecord_round_trip(tmp_path, screen_dir, capsys):
  path, screen = screen_dir
  out = tmp_path / "ar"
  assert ingest.main(["--source", "folder", "--path", str(path), "--out", str(out), "--shards",
                      "2", "--json"]) == 0
  summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
  assert summary["num_sites"] == len(screen) and summary["shards"] == 2
  c = md.default_config()
  c.source, c.path, c.channels = "arrayrecord", str(out), (3, 1)
  src = md.make_source(c)
  for i in range(len(screen)):
    np.testing.assert_array_equal(src[i], screen[i][..., [3, 1]])
  assert src.metadata.well.tolist() == screen.metadata.well.tolist()
  batch = next(md.train_iterator(c.update(crop_size=16) or c, batch_size=4, shard_index=0,
                                 shard_count=1))
  assert batch["image"].shape == (4, 16, 16, 2)
  c.channels = (0, 9)
  with pytest.raises(ValueError, match=r"channel\(s\) \[9\] not in"):
    md.make_source(c)
  c.path = str(tmp_path / "nothing")
  with pytest.raises(FileNotFoundError, match="info.json not found"):
    md.make_source(c)


def test_folder_csv_and_its_ingest_keep_their_own_well_id(tmp_path, screen_dir,
                                                          assert_one_well_id):
  path, _ = screen_dir
  root = _copy_screen(path, tmp_path / "folder")
  meta = pd.read_csv(root / "metadata.csv")
  meta["Well_ID"] = "plate-map-" + meta.well  # Any case: still a second well id.
  meta.to_csv(root / "metadata.csv", index=False)
  src = md.make_source(_folder_config(root))
  assert_one_well_id(src, "Well_ID", meta.Well_ID)
  assert ingest.main(["--source", "folder", "--path", str(root), "--out", str(tmp_path / "ar"),
                      "--no-progress"]) == 0
  c = md.default_config()
  c.source, c.path = "arrayrecord", str(tmp_path / "ar")
  assert_one_well_id(md.make_source(c), "Well_ID", meta.Well_ID)


def test_ingest_synthetic_with_overrides(tmp_path, capsys):
  out = tmp_path / "syn"
  assert ingest.main(["--source", "synthetic", "--out", str(out), "--channels", "0,4"] +
                     [f"--config.data.synthetic.{k}={v}" for k, v in TINY.items()]) == 0
  info = json.load(open(out / "info.json"))
  assert info["channel_ids"] == [0, 4] and info["site_shape"] == [32, 32, 2]
  assert "ingest: 100%" in capsys.readouterr().err  # The progress bar ...
  assert ingest.main(["--source", "synthetic", "--out", str(tmp_path / "quiet"), "--no-progress"]
                     + [f"--config.data.synthetic.{k}={v}" for k, v in TINY.items()]) == 0
  assert "ingest:" not in capsys.readouterr().err  # ... and --no-progress.
  assert ingest.main(["--source", "synthetic", "--out", str(out),
                      "--config.data.synthetic.sitesize=3"]) == 2
  assert "--config.data.synthetic.sitesize: no such config field" in capsys.readouterr().err


def test_rxrx3_core_parquet_shards(tmp_path, assert_one_well_id):
  import imagecodecs
  import pyarrow as pa
  import pyarrow.parquet as pq
  rng = np.random.default_rng(0)
  wells = [("gene-001", 1, "AA01", "EMPTY_control"), ("gene-001", 1, "AB02", "TP53"),
           ("gene-002", 3, "AC03", "TP53"), ("gene-002", 3, "AD04", "MTOR")]
  images = {}
  keys, blobs = [], []
  for exp, plate, addr, _ in wells[:3]:  # the 4th well's shard was not downloaded
    for ch in range(1, 7):
      plane = rng.integers(0, 256, (24, 24), dtype=np.uint8)
      images[(addr, ch)] = plane
      keys.append(f"{exp}/Plate{plate}/{addr}_s1_{ch}")
      blobs.append(imagecodecs.jpeg2k_encode(plane, level=0))
  os.makedirs(tmp_path / "data")
  table = pa.table({"__key__": keys, "jp2": blobs})
  pq.write_table(table.slice(0, 10), tmp_path / "data" / "train-00000-of-00002.parquet", row_group_size=4)
  pq.write_table(table.slice(10), tmp_path / "data" / "train-00001-of-00002.parquet", row_group_size=4)
  pd.DataFrame([dict(well_id=f"{e}_{p}_{a}", experiment_name=e, plate=p, address=a, gene=g,
                     treatment=f"{g}_guide_1", perturbation_type="CRISPR") for e, p, a, g in wells]
               ).to_csv(tmp_path / "metadata_rxrx3_core.csv", index=False)
  c = md.default_config()
  c.source, c.path, c.channels = "rxrx3_core", str(tmp_path), (0, 5, 2)
  src = md.make_source(c)
  assert len(src) == 3
  assert src.metadata.is_control.tolist() == [True, False, False]
  for i, addr in enumerate(["AA01", "AB02", "AC03"]):
    ref = np.stack([images[(addr, ch)] for ch in (1, 6, 3)], -1)
    np.testing.assert_array_equal(src[i], ref)
  assert_one_well_id(src, "well_id", [f"{e}_{p}_{a}" for e, p, a, _ in wells[:3]])
  # A well with some channels missing is an error (or skipped).
  keep = [k for k in keys if k != "gene-002/Plate3/AC03_s1_4"]
  pq.write_table(pa.table({"__key__": keep, "jp2": [b for k, b in zip(keys, blobs) if k in keep]}),
                 tmp_path / "data" / "train-00001-of-00002.parquet")
  os.remove(tmp_path / "data" / "train-00000-of-00002.parquet")
  c.channels = (0, 1, 2, 3, 4, 5)
  with pytest.raises(ValueError, match=r"row 2 \(gene-002/Plate3/AC03_s1_\*\): channel\(s\) \[4\] missing"):
    md.make_source(c)
  c.skip_bad_images = True
  src = md.make_source(c)
  assert len(src) == 2 and src.skipped == [("gene-002/Plate3/AC03_s1_", "missing channels")]


def test_tfds_builder_over_manual_dir(tmp_path, screen_dir):
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  from maejax.data import tfds_builder
  path, screen = screen_dir
  c = md.default_config()
  c.source = "folder"
  builder = tfds_builder.CellPaintingSites(data_config=c, data_dir=str(tmp_path))
  builder.download_and_prepare(download_config=tfds.download.DownloadConfig(manual_dir=str(path)))
  ds = builder.as_data_source("train")
  assert len(ds) == len(screen)
  for k in range(3):
    ex = ds[k]
    i = int(ex["site_index"])
    np.testing.assert_array_equal(ex["image"], screen[i])
    assert ex["well"].decode() == screen.metadata.well[i]
    assert bool(ex["is_control"]) == bool(screen.metadata.is_control[i])


def test_cache_sites_reads_each_site_once_and_returns_read_only_copies():
  from maejax.data import default_config, make_source
  config = default_config()
  config.synthetic.site_size = 32
  config.cache_sites = True
  source = make_source(config)
  reads = []
  read = source._read  # pylint: disable=protected-access
  source._read = lambda i: reads.append(i) or read(i)  # pylint: disable=protected-access
  first = source[3]
  again = source[3]
  assert reads == [3] and again is first
  np.testing.assert_array_equal(first, read(3))
  with pytest.raises(ValueError):
    first[0, 0, 0] = 1  # Cached sites are shared: no caller may change them.
  config.cache_sites = False
  plain = make_source(config)
  assert plain.cache is None and plain[3] is not plain[3]
