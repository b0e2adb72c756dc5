"""The data ConfigDict (`config.data`) every config starts from."""

from __future__ import annotations

import dataclasses

import ml_collections

from maejax.data import sources, synthetic


def default_config() -> ml_collections.ConfigDict:
  """`config.data` defaults: the synthetic screen, 256-pixel crops, all 6 channels."""
  c = ml_collections.ConfigDict()
  c.source = "synthetic"      # synthetic | folder | rxrx1 | rxrx3_core | arrayrecord
  c.path = ""                 # dataset root (folder, rxrx1, rxrx3_core, arrayrecord)
  c.metadata_csv = ""         # relative to path; default metadata.csv (rxrx3_core: metadata_rxrx3_core.csv)
  c.crop_size = 256           # random square crops of this size (eval: tiles of this size)
  c.channels = (0, 1, 2, 3, 4, 5)  # physical channels to read, in this order
  c.sample_channels = 0       # >0: random subset of this many channels per batch (+ channel_ids)
  c.flips = True
  c.rotations = True          # random multiples of 90 degrees
  c.shuffle = True
  c.num_epochs = 0            # 0 = repeat forever
  c.worker_count = 0          # Grain worker processes (0 = in the main process)
  c.worker_buffer_size = 2    # batches buffered per worker
  c.read_threads = 0          # threads reading sites (0 = Grain's default)
  c.label_column = ""         # e.g. "perturbation": batches get "label" int32 (weak supervision)
  c.skip_bad_images = False   # True: skip, count and log sites with bad images instead of raising
  c.cache_sites = False       # True: keep every site in memory once read (small screens, demos)
  c.uint16 = "error"          # 16-bit images: error | shift | percentile (see sources.to_uint8)
  c.bit_depth = 16            # for uint16="shift": camera bit depth (value >> (bit_depth - 8))
  c.percentiles = (0.1, 99.9)  # for uint16="percentile"
  c.synthetic = ml_collections.ConfigDict(dataclasses.asdict(synthetic.ScreenSpec()))
  rxrx1 = sources.RXRX1_FOLDER
  c.folder = ml_collections.ConfigDict(dict(
      # One CSV row per site: any CSV column and {channel} (= channel_numbers[c]) may appear.
      # Default: RxRx1's file layout with the standard column names.
      path_template=rxrx1["path_template"],
      channel_numbers=rxrx1["channel_numbers"],
      channel_names=rxrx1["channel_names"],
      # Or one CSV row per site and channel: set file_column (and channel_column).
      file_column="",
      channel_column="",
      # Or a CellProfiler LoadData CSV (found by its FileName_<Channel> columns; PathName_<Channel>
      # relative to the CSV's folder): the <Channel> of physical channels 0, 1, ..., e.g.
      # "DNA,ER,AGP,RNA,Mito" (also matches FileName_OrigDNA); "" = the CSV's column order.
      loaddata_channels="",
      columns=ml_collections.ConfigDict(dict(
          experiment="experiment", plate="plate", well="well", site="site",
          perturbation="perturbation")),
      control_column="is_control",  # rows whose value is in control_values are controls
      control_values=("True", "true", "1"),
      check_files=True,
  ))
  c.rxrx3_core = ml_collections.ConfigDict(dict(image_column="jp2", key_column="__key__"))
  return c
