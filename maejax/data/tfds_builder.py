"""A tensorflow-datasets builder over local Cell Painting files (manual_dir), for TFDS users.

    builder = CellPaintingSites(data_config=cfg, data_dir="~/tensorflow_datasets",
                                config_kwargs... )   # cfg.source in folder | rxrx1 | rxrx3_core
    builder.download_and_prepare(download_config=tfds.download.DownloadConfig(manual_dir=ROOT))
    ds = builder.as_data_source("train")   # random access; ds[i]["image"] uint8 [H, W, C]

Examples are whole sites (uint8 [H, W, C]) plus the standard metadata fields. The files are
written as ArrayRecord (no TensorFlow needed); `manual_dir` is the dataset root (the role of
`config.data.path`).
"""

from __future__ import annotations

import copy

from etils import epath
import numpy as np
import tensorflow_datasets as tfds

from maejax.data import config as config_lib
from maejax.data import sources as sources_lib

_TEXT = ("experiment", "plate", "well", "site", "perturbation")


class CellPaintingSites(tfds.core.GeneratorBasedBuilder):
  """Sites of a local screen (folder / RxRx1 / RxRx3-core layout) as a TFDS dataset."""

  # TFDS derives this via importlib_resources (absent from the venv); a plain path suffices.
  code_path = epath.Path(__file__)
  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "Initial release."}
  MANUAL_DOWNLOAD_INSTRUCTIONS = (
      "Place the dataset root (images + metadata CSV, or RxRx3-core parquet shards + "
      "metadata_rxrx3_core.csv) in manual_dir; data_config.source names its layout.")

  def __init__(self, *, data_config=None, **kwargs):
    self._data_config = copy.deepcopy(data_config or config_lib.default_config())
    if self._data_config.source not in ("folder", "rxrx1", "rxrx3_core"):
      raise ValueError(f"CellPaintingSites: data_config.source={self._data_config.source!r}; "
                       "expected 'folder', 'rxrx1' or 'rxrx3_core'")
    kwargs.setdefault("file_format", "array_record")
    super().__init__(**kwargs)

  def _info(self) -> tfds.core.DatasetInfo:
    channels = len(self._data_config.channels)
    features = {"image": tfds.features.Tensor(shape=(None, None, channels), dtype=np.uint8,
                                               encoding="bytes"),
                "channel_ids": tfds.features.Tensor(shape=(channels,), dtype=np.int32),
                "is_control": tfds.features.Scalar(dtype=np.bool_),
                "site_index": tfds.features.Scalar(dtype=np.int64)}  # row of source.metadata
    features.update({k: tfds.features.Text() for k in _TEXT})
    return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict(features),
                                 description=self.__doc__)

  def _split_generators(self, dl_manager):
    return {"train": self._generate_examples(str(dl_manager.manual_dir))}

  def _generate_examples(self, root: str):
    config = copy.deepcopy(self._data_config)
    config.path = root
    source = sources_lib.make_source(config)
    for i in range(len(source)):
      row = source.metadata.iloc[i]
      image = sources_lib.read_site(source, i, config.skip_bad_images)
      if image is None:
        continue
      example = {"image": image, "channel_ids": source.channel_ids,
                 "is_control": bool(row.is_control), "site_index": i}
      example.update({k: str(row[k]) for k in _TEXT})
      yield i, example
