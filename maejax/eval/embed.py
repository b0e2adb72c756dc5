"""Whole-screen embeddings: sites -> non-overlapping crops -> model -> sites -> wells.

Every site is tiled into non-overlapping `crop_size` crops (maejax.data.eval_tiles); crops are
embedded data-parallel over all local devices (maejax.api.ShardedEmbedder: params replicated,
batch split over a `data` mesh axis), averaged to sites, then sites to wells. A well table has
one row per well: `Metadata_*` columns (experiment, plate, well, perturbation, is_control, ...
plus n_sites, n_crops; names as categories) and `feature_<i>` columns, indexed by the well id
`Metadata_well_id` (`<experiment>_<plate>_<well>`), with the run's provenance (`provenance`) in
`table.attrs["maejax"]`: the layout `python -m maejax.benchmark` reads (maejax.eval.io).

The parts, one job each:
- `data_config`: the data ConfigDict to embed (a run config's `data` + typed overrides);
- `make_embedder`: a ShardedEmbedder checked against the source's sites;
- `plan_shards` / `my_shards`: fixed blocks of sites, and which of them a process embeds;
- `embed_shards`: site embeddings of some shards, each written to a `Partial` folder if given;
- `sites_to_wells`: site tables -> the well table;
- `embed_wells`: all of that for one process in memory (maejax.eval.scorer).
`python -m maejax.embed` (maejax/cli/embed.py) resumes from `<out>.partial/` and runs on
several processes.
"""

from __future__ import annotations

import inspect
import json
import os
from typing import Mapping, Sequence

import ml_collections
import numpy as np
import pandas as pd
import tqdm
from etils import epath
from flax import nnx

from maejax import api
from maejax import config as config_lib
from maejax import data as data_lib
from maejax import models
from maejax import workdir
from maejax.eval import io

WELL_KEYS = ("experiment", "plate", "well")
SETTINGS = "settings.json"
INTENSITY_PERCENTILES = (1, 5, 25, 50, 75, 95, 99)


# ----------------------------------------------------------------------------- what to embed

def data_config(config, overrides: Sequence[str] = (),
                channels: Sequence[int] | None = None) -> ml_collections.ConfigDict:
  """The data to embed: `config.data` (a run config's) over the data defaults.

  overrides: `--config.data.<field>=<value>` strings, typed by the field (maejax.config);
    a field outside `data` is an error.
  channels: physical channel ids to read (sets `data.channels`).
  """
  base = config.get("data") if config is not None else None
  root = ml_collections.ConfigDict({"data": data_lib.default_config()})
  if base is not None:  # Typed like the defaults (JSON turned tuples into lists).
    plain = base.to_dict() if hasattr(base, "to_dict") else dict(base)
    root.data.update(config_lib.from_json(json.dumps(workdir.jsonable(plain))))
  config_lib.apply_overrides(root, overrides)
  if channels is not None:
    root.data.channels = tuple(int(c) for c in channels)
  return root.data


def crop_size_for(data: ml_collections.ConfigDict, crop_size: int | None = None) -> int | None:
  """The tile size: `crop_size`, else `data.crop_size`; None (0) = whole sites."""
  return int(data.crop_size if crop_size is None else crop_size) or None


def random_model(config, seed: int | None = None) -> api.Model:
  """`config.model`'s architecture with its initial (untrained) weights, the baseline an
  embedding must beat (seed: default `config.seed`)."""
  seed = int(config.get("seed", 0)) if seed is None else int(seed)
  return api.Model(models.create(config.model, rngs=nnx.Rngs(seed)), config)


def make_embedder(model, source, crop_size: int | None, *, batch_size: int = 64,
                  pool: str | None = None, block: int | None = None, crop_stats: bool = False,
                  devices=None) -> api.ShardedEmbedder:
  """A ShardedEmbedder of `model`, its crop shape checked against the source's sites now."""
  embedder = api.ShardedEmbedder(model, batch_size=batch_size, pool=pool, block=block,
                                 crop_stats=crop_stats, devices=devices)
  shape = getattr(source, "site_shape", None)
  if shape is not None:
    if crop_size is not None and min(shape[:2]) < crop_size:
      raise ValueError(f"--crop-size {crop_size} exceeds the sites ({shape[0]}x{shape[1]}); "
                       f"pass --crop-size {min(shape[:2])} or smaller (0 = whole sites)")
    embedder.check((crop_size or shape[0], crop_size or shape[1], len(source.channel_ids)))
  return embedder


# ----------------------------------------------------------------------------- shards

def plan_shards(n_sites: int, sites_per_shard: int) -> list[list[int]]:
  """Site indices of each shard: consecutive blocks of `sites_per_shard` sites."""
  if sites_per_shard < 1:
    raise ValueError(f"sites_per_shard={sites_per_shard}: expected >= 1")
  return [list(range(i, min(i + sites_per_shard, n_sites)))
          for i in range(0, n_sites, sites_per_shard)]


def my_shards(n_shards: int, process_index: int = 0, process_count: int = 1) -> list[int]:
  """The shards process `process_index` of `process_count` embeds: k % count == index."""
  return [k for k in range(n_shards) if k % process_count == process_index]


def embed_sites(embedder, source, indices: Sequence[int], crop_size: int | None, *,
                skip_bad_images: bool = False, on_site=None) -> pd.DataFrame:
  """Mean crop embedding of each site in `indices` (embedder: a maejax.api.ShardedEmbedder).

  Returns a DataFrame [site_index, n_crops, feature_0..] (sites that were skipped as bad
  images are absent). on_site(k) is called with the number of sites just finished.
  """
  sums, counts = {}, {}
  for batch, rows in data_lib.eval_tiles(source, crop_size, embedder.batch_size,
                                         skip_bad_images=skip_bad_images, indices=indices):
    emb = embedder(batch["image"], batch["channel_ids"]).astype(np.float64)
    sites = rows["site_index"].to_numpy()
    before = len(counts)
    for site in np.unique(sites):
      take = sites == site
      sums[site] = sums.get(site, 0.0) + emb[take].sum(0)
      counts[site] = counts.get(site, 0) + int(take.sum())
    if on_site is not None and len(counts) > before:
      on_site(len(counts) - before)
  order = sorted(counts)
  if not order:
    return pd.DataFrame({"site_index": np.zeros(0, np.int64), "n_crops": np.zeros(0, np.int64)})
  features = np.stack([sums[s] / counts[s] for s in order]).astype(np.float32)
  return io.join_table(pd.DataFrame({"site_index": order,
                                     "n_crops": [counts[s] for s in order]}), features)


def embed_shards(embedder, source, shards: Mapping[int, Sequence[int]], crop_size: int | None,
                 *, partial: Partial | None = None, skip_bad_images: bool = False,
                 progress: bool = True) -> dict[int, pd.DataFrame]:
  """Site tables of `shards` ({shard k: site indices}) -> {k: [site_index, n_crops,
  feature_<i>]}; each is written to `partial` as soon as it is done (resumable)."""
  tables = {}
  total = sum(len(sites) for sites in shards.values())
  with tqdm.tqdm(total=total, unit="site", desc="embed", dynamic_ncols=True,
                 disable=not progress) as bar:
    for k, sites in shards.items():
      tables[k] = embed_sites(embedder, source, sites, crop_size,
                              skip_bad_images=skip_bad_images, on_site=bar.update)
      if partial is not None:
        partial.write(k, tables[k])
  return tables


# ----------------------------------------------------------------------------- wells

def sites_to_wells(site_table: pd.DataFrame, metadata: pd.DataFrame) -> pd.DataFrame:
  """Site embeddings [site_index, n_crops, features] + the source's site metadata -> wells.

  Each well's features are the mean of its sites' (each site weighs the same); metadata
  columns constant within every well are kept as `Metadata_<name>` (io.metadata_name: a
  source's own `well_id`, e.g. RxRx1's, becomes `Metadata_source_well_id`), plus n_sites and
  n_crops; the index is maejax's well id (`Metadata_well_id`).
  """
  if site_table.empty:
    raise ValueError("no site could be embedded (all skipped as bad images?)")
  keys = [k for k in WELL_KEYS if k in metadata.columns]
  if "well" not in keys:
    raise ValueError(f"the data's metadata has no `well` column (columns: "
                     f"{list(metadata.columns)}); wells cannot be formed")
  sites = metadata.iloc[site_table["site_index"].to_numpy()].reset_index(drop=True)
  names = [c for c in site_table.columns if str(c).startswith("feature_")]
  features = site_table[names].to_numpy(np.float64)
  codes, _ = pd.factorize(pd.MultiIndex.from_frame(sites[keys].astype(str)))
  n = codes.max() + 1
  counts = np.bincount(codes, minlength=n)
  sums = np.zeros((n, features.shape[1]))
  np.add.at(sums, codes, features)
  grouped = sites.groupby(codes, sort=True)
  constant = [c for c in sites.columns
              if c in keys or (grouped[c].nunique(dropna=False) <= 1).all()]
  wells = grouped[constant].first().reset_index(drop=True)
  ids = io.well_ids(wells[keys])
  wells = wells.rename(columns=io.metadata_name)  # Before the counts: a source's n_sites stays.
  wells["Metadata_n_sites"] = counts
  wells["Metadata_n_crops"] = np.bincount(codes, weights=site_table["n_crops"].to_numpy(),
                                          minlength=n).astype(np.int64)
  wells.index = ids
  return io.categorize(io.join_table(wells, (sums / counts[:, None]).astype(np.float32), names))


def embed_wells(embedder, source, crop_size: int | None, *, skip_bad_images: bool = False,
                progress: bool = True) -> pd.DataFrame:
  """The well table of every site of `source`, embedded by this process in memory."""
  sites = embed_shards(embedder, source, {0: range(len(source))}, crop_size,
                       skip_bad_images=skip_bad_images, progress=progress)[0]
  wells = sites_to_wells(sites, source.metadata)
  return io.with_provenance(wells, provenance(embedder, source, crop_size))


def provenance(embedder, source, crop_size: int | None, *, checkpoint=None) -> dict:
  """What made a well table: model, checkpoint (path, step), compute dtype, crop size, pooling,
  block, crop statistics appended or not, channels (ids and names) and the feature prefix (plus
  the maejax version, io.with_provenance)."""
  model = embedder.model
  pool = embedder.pool or (inspect.signature(model.module.embed).parameters["pool"].default
                           or model.config.model.get("pool"))
  return dict(model=str(model.config.model.name),
              checkpoint=None if checkpoint is None else os.fspath(checkpoint),
              step=model.step, dtype=str(model.config.model.get("dtype", "float32")),
              crop_size=crop_size, pool=pool, block=embedder.block,
              crop_stats=embedder.crop_stats,
              channels=[int(c) for c in source.channel_ids],
              channel_names=[str(n) for n in source.channel_names],
              feature_prefix=io.FEATURE_PREFIX)


def intensity_sites(source, indices: Sequence[int] | None = None) -> pd.DataFrame:
  """The classical baseline: per-channel mean, std and percentiles of each whole site.

  Returns a DataFrame [site_index, n_crops (= 1), feature_<i>] with the features of channel c
  at i = c * 9 + k for k over (mean, std, p1, p5, p25, p50, p75, p95, p99); sites_to_wells
  turns it into wells like model embeddings.
  """
  indices = list(range(len(source)) if indices is None else indices)
  rows = []
  for i in indices:
    image = np.asarray(source[i], np.float64)
    x = image.reshape(-1, image.shape[-1])  # [pixels, c]
    stats = np.concatenate([x.mean(0, keepdims=True), x.std(0, keepdims=True),
                            np.percentile(x, INTENSITY_PERCENTILES, axis=0)])  # [9, c]
    rows.append(stats.T.ravel())
  return io.join_table(pd.DataFrame({"site_index": indices,
                                     "n_crops": np.ones(len(indices), np.int64)}),
                       np.asarray(rows, np.float32))


# ----------------------------------------------------------------------------- resume folder

def partial_dir_for(out) -> epath.Path:
  """`<out>.partial`, the resume folder of the table `out` (local or gs://)."""
  out = workdir.path(out)
  return out.parent / (out.name + ".partial")


class Partial:
  """A resume folder: settings.json + shard_<k>.parquet (a site table) per finished shard.

  `settings` identify the run; a folder holding other settings is refused, so a rerun resumes
  only the run it belongs to.
  """

  def __init__(self, directory, settings: dict):
    self.dir = workdir.path(directory)
    self.settings = workdir.jsonable(settings)
    file = self.dir / SETTINGS
    if file.is_file():
      stored = json.loads(file.read_text())
      if stored != self.settings:
        changed = sorted(k for k in set(stored) | set(self.settings)
                         if stored.get(k) != self.settings.get(k))
        raise ValueError(
            f"{self.dir} holds a partial embedding run with other settings ({changed}); "
            "rerun with the same arguments to resume, or pass --restart to start over")
    else:  # Atomic: every process of a multi-host run writes the same file.
      workdir.write_text(file, json.dumps(self.settings, indent=1, sort_keys=True))

  def finished(self) -> list[int]:
    """Sorted shard numbers written so far."""
    return sorted(int(f.name[len("shard_"):-len(".parquet")])
                  for f in self.dir.glob("shard_*.parquet"))

  def read(self, k: int) -> pd.DataFrame:
    with (self.dir / _shard_name(k)).open("rb") as f:
      return pd.read_parquet(f)

  def write(self, k: int, table: pd.DataFrame) -> None:
    workdir.write_bytes(self.dir / _shard_name(k), table.to_parquet(None, index=False))


def _shard_name(k: int) -> str:
  return f"shard_{k:06d}.parquet"
