"""Grain pipelines: random crops for training, fixed non-overlapping tiles for evaluation.

    it = train_iterator(config.data, batch_size=256, seed=0)
    batch = next(it)   # {"image": uint8 [B, crop, crop, C], "channel_ids": int32 [B, C]}
    state = it.get_state(); ...; it.set_state(state)  # resumes at the identical next batch

`batch_size` is the GLOBAL batch: each of `shard_count` hosts gets `batch_size // shard_count`
examples from its own disjoint shard of the sites (default: one shard per JAX process).
"""

from __future__ import annotations

import concurrent.futures
from typing import Iterator

import grain
import numpy as np
import pandas as pd

from maejax.data import sources as sources_lib


def draw_augment(rng: np.random.Generator, site_hw: tuple[int, int], crop_size: int, *,
                 flips: bool, rotations: bool) -> dict:
  """Draws crop offset, flip and rotation for one example (channel subsets are drawn per
  batch, by `SampleChannels`)."""
  h, w = site_hw
  return dict(y=int(rng.integers(0, h - crop_size + 1)), x=int(rng.integers(0, w - crop_size + 1)),
              flip=bool(rng.integers(2)) if flips else False,
              k=int(rng.integers(4)) if rotations else 0)


def apply_augment(image: np.ndarray, params: dict, crop_size: int) -> np.ndarray:
  """uint8 [H, W, C] -> [crop, crop, C]: crop, then left-right flip, then rot90 k times."""
  y, x = params["y"], params["x"]
  out = image[y:y + crop_size, x:x + crop_size]
  if params["flip"]:
    out = out[:, ::-1]
  if params["k"]:
    out = np.rot90(out, params["k"], axes=(0, 1))
  return np.ascontiguousarray(out)


class _Sites:
  """Grain random-access view of a source: index -> {"image", optional "label"} or None (bad)."""

  def __init__(self, source, labels: np.ndarray | None, skip_bad_images: bool):
    self.source, self.labels, self.skip_bad_images = source, labels, skip_bad_images

  def __len__(self):
    return len(self.source)

  def __getitem__(self, index):
    image = sources_lib.read_site(self.source, index, self.skip_bad_images)
    if image is None:
      return None
    element = {"image": image}
    if self.labels is not None:
      element["label"] = self.labels[index]
    return element


class RandomCrop(grain.transforms.RandomMap):
  """Random crop + flip + 90-degree rotation of one site; adds channel_ids."""

  def __init__(self, crop_size: int, channel_ids: np.ndarray, *, flips: bool = True,
               rotations: bool = True):
    self.crop_size, self.channel_ids = crop_size, np.asarray(channel_ids, np.int32)
    self.flips, self.rotations = flips, rotations

  def random_map(self, element, rng: np.random.Generator):
    image = element["image"]
    h, w, _ = image.shape
    if h < self.crop_size or w < self.crop_size:
      raise ValueError(f"site of size {h}x{w} is smaller than config.data.crop_size="
                       f"{self.crop_size}; lower crop_size")
    params = draw_augment(rng, (h, w), self.crop_size, flips=self.flips,
                          rotations=self.rotations)
    element["image"] = apply_augment(image, params, self.crop_size)
    element["channel_ids"] = self.channel_ids
    return element


class SampleChannels(grain.transforms.RandomMap):
  """One random subset of `sample_channels` channels for a whole batch.

  Channel-agnostic decoders pick one block stack per channel id, so every example of a batch
  carries the same channel set: [b, H, W, C] -> [b, H, W, sample_channels].
  """

  def __init__(self, sample_channels: int):
    self.sample_channels = sample_channels

  def random_map(self, batch, rng: np.random.Generator):
    n = batch["image"].shape[-1]
    slots = np.sort(rng.choice(n, size=self.sample_channels, replace=False))
    batch["image"] = np.ascontiguousarray(batch["image"][..., slots])
    batch["channel_ids"] = np.ascontiguousarray(batch["channel_ids"][:, slots])
    return batch


def _labels(source, column: str) -> np.ndarray | None:
  if not column:
    return None
  if column not in source.metadata.columns:
    raise ValueError(f"config.data.label_column={column!r} is not a metadata column; columns "
                     f"are {list(source.metadata.columns)}")
  return pd.Categorical(source.metadata[column]).codes.astype(np.int32)


def num_classes(source, column: str) -> int:
  """Number of distinct labels `train_iterator` emits for `label_column=column`."""
  return int(pd.Categorical(source.metadata[column]).categories.size)


def _shard(shard_index: int | None, shard_count: int | None) -> tuple[int, int]:
  if shard_index is None or shard_count is None:
    opts = grain.sharding.ShardByJaxProcess(drop_remainder=False)
    return opts.shard_index, opts.shard_count
  if not 0 <= shard_index < shard_count:
    raise ValueError(f"shard_index={shard_index} must be in [0, shard_count={shard_count})")
  return shard_index, shard_count


def train_dataset(config, *, batch_size: int, seed: int = 0, shard_index: int | None = None,
                  shard_count: int | None = None, source=None) -> grain.IterDataset:
  """The training pipeline as a Grain IterDataset (see `train_iterator`)."""
  source = source if source is not None else sources_lib.make_source(config)
  shard_index, shard_count = _shard(shard_index, shard_count)
  if batch_size % shard_count:
    raise ValueError(f"batch_size={batch_size} (global) is not divisible by shard_count="
                     f"{shard_count} (hosts); pick a multiple of {shard_count}")
  if len(source) < shard_count:
    raise ValueError(f"{len(source)} sites cannot be split across {shard_count} hosts")
  n_channels = len(source.channel_ids)
  if not 0 <= config.sample_channels <= n_channels:
    raise ValueError(f"config.data.sample_channels={config.sample_channels} must be in "
                     f"[0, {n_channels}] (the number of config.data.channels)")
  shape = getattr(source, "site_shape", None)
  if shape and min(shape[:2]) < config.crop_size:
    raise ValueError(f"config.data.crop_size={config.crop_size} exceeds the sites "
                     f"({shape[0]}x{shape[1]}); lower crop_size")
  ds = grain.MapDataset.source(_Sites(source, _labels(source, config.label_column),
                                      config.skip_bad_images))
  ds = ds[shard_index::shard_count]
  if config.shuffle:
    ds = ds.shuffle(seed=seed)
  ds = ds.repeat(config.num_epochs or None)
  ds = ds.random_map(RandomCrop(config.crop_size, source.channel_ids, flips=config.flips,
                                rotations=config.rotations), seed=seed)
  read = grain.ReadOptions(num_threads=config.read_threads) if config.read_threads else None
  it = ds.to_iter_dataset(read).batch(batch_size // shard_count, drop_remainder=True)
  if config.sample_channels:
    it = it.random_map(SampleChannels(config.sample_channels), seed=seed)
  if config.worker_count:
    _mark_flags_parsed()
    it = it.mp_prefetch(grain.MultiprocessingOptions(
        num_workers=config.worker_count, per_worker_buffer_size=config.worker_buffer_size))
  return it


def train_iterator(config, *, batch_size: int, seed: int = 0, shard_index: int | None = None,
                   shard_count: int | None = None, source=None) -> grain.DatasetIterator:
  """Iterator of training batches for this host; checkpointable via get_state()/set_state().

  Args:
    config: `config.data` (see `maejax.data.default_config`).
    batch_size: global batch size; this host yields `batch_size // shard_count` per batch.
    seed: seeds the shuffle and the augmentations (deterministic per seed and position).
    shard_index, shard_count: this host's shard (default: `jax.process_index()` of
      `jax.process_count()`); shards are disjoint and together cover every site.
    source: a prebuilt source (default: `make_source(config)`).

  Yields:
    {"image": uint8 [b, crop, crop, C], "channel_ids": int32 [b, C], "label": int32 [b] (only
    with config.label_column)}, with C = sample_channels or len(config.channels).
  """
  return iter(train_dataset(config, batch_size=batch_size, seed=seed, shard_index=shard_index,
                            shard_count=shard_count, source=source))


def _mark_flags_parsed():
  from absl import flags  # pylint: disable=g-import-not-at-top
  if not flags.FLAGS.is_parsed():
    flags.FLAGS.mark_as_parsed()


def tile_grid(site_hw: tuple[int, int], crop_size: int) -> list[tuple[int, int]]:
  """Top-left corners of the non-overlapping crops of a site, row-major (remainders unused)."""
  h, w = site_hw
  return [(y, x) for y in range(0, h - crop_size + 1, crop_size)
          for x in range(0, w - crop_size + 1, crop_size)]


def eval_tiles(source, crop_size: int | None, batch_size: int, *, skip_bad_images: bool = False,
               num_threads: int = 4, indices=None) -> Iterator[tuple[dict, pd.DataFrame]]:
  """Tiles every site into non-overlapping crops in a fixed order (site, then row-major tiles).

  Yields (batch, rows): batch = {"image": uint8 [b, crop, crop, C], "channel_ids": int32 [b, C]}
  and rows = the sites' metadata, one row per crop, plus `site_index`, `tile`, `tile_y`,
  `tile_x`. Every batch has `batch_size` crops except possibly the last. `crop_size=None` uses
  whole sites. Sites with bad images raise unless `skip_bad_images` (then they are logged).
  """
  indices = range(len(source)) if indices is None else indices
  channel_ids = np.asarray(source.channel_ids, np.int32)
  images, rows = [], []

  def read(i):
    return sources_lib.read_site(source, i, skip_bad_images)

  def flush():
    batch = {"image": np.stack(images),
             "channel_ids": np.broadcast_to(channel_ids, (len(images), channel_ids.size)).copy()}
    frame = pd.DataFrame(rows).reset_index(drop=True)
    images.clear()
    rows.clear()
    return batch, frame

  meta = source.metadata
  chunk = max(2 * num_threads, 1)
  indices = list(indices)
  with concurrent.futures.ThreadPoolExecutor(max(num_threads, 1)) as pool:
    for start in range(0, len(indices), chunk):
      part = indices[start:start + chunk]
      for i, image in zip(part, pool.map(read, part)):
        if image is None:
          continue
        size = crop_size or min(image.shape[:2])
        if min(image.shape[:2]) < size:
          raise ValueError(f"site {i} of size {image.shape[:2]} is smaller than crop_size={size}")
        row = meta.iloc[i].to_dict()
        for t, (y, x) in enumerate(tile_grid(image.shape[:2], size)):
          images.append(image[y:y + size, x:x + size])
          rows.append({**row, "site_index": i, "tile": t, "tile_y": y, "tile_x": x})
          if len(images) == batch_size:
            yield flush()
  if images:
    yield flush()
