"""maejax data: sources of uint8 sites, Grain training pipelines, evaluation tiles.

    config.data = maejax.data.default_config()
    source = maejax.data.make_source(config.data)        # source[i] -> uint8 [H, W, C]
    it = maejax.data.train_iterator(config.data, batch_size=64, seed=0)
    for batch, rows in maejax.data.eval_tiles(source, crop_size=256, batch_size=64): ...
"""

from maejax.data.config import default_config
from maejax.data.pipeline import eval_tiles, num_classes, train_dataset, train_iterator
from maejax.data.sources import (ArrayRecordSource, BadImageError, FolderSource,
                                 Rxrx3CoreSource, Source, SyntheticSource, make_source, to_uint8)
from maejax.data.synthetic import ScreenSpec, SyntheticScreen, write_screen

__all__ = [
    "default_config", "make_source", "train_iterator", "train_dataset", "eval_tiles",
    "num_classes", "SyntheticScreen", "ScreenSpec", "write_screen", "Source", "SyntheticSource",
    "FolderSource", "Rxrx3CoreSource", "ArrayRecordSource", "BadImageError", "to_uint8",
]
