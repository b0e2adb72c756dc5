"""Whole-screen embeddings: sites -> non-overlapping crops -> model -> sites -> wells.

    python -m maejax.embed --checkpoint runs/demo --out embeddings.parquet
    python -m maejax.embed --checkpoint openphenom/ --data configs/rxrx1.py --channels 0,1,2 ...

Every site is tiled into non-overlapping `crop_size` crops (maejax.data.eval_tiles); crops are
embedded data-parallel over all local devices (params replicated, batch split over a `data`
mesh axis), averaged to sites, then sites to wells. The output has one row per well:
`Metadata_*` columns (experiment, plate, well, perturbation, is_control, ... plus n_sites,
n_crops) and `feature_<i>` columns, the layout `python -m maejax.benchmark` reads.

Resumable: finished sites go to `<out>.partial/shard_<k>.parquet` (site embeddings of a fixed
block of sites) with the run settings in `<out>.partial/settings.json`; a rerun with the same
settings skips finished shards, and the folder is removed once the table is written.

Multi-host: started on N processes (jax.distributed, as `python -m maejax.train`: the
launcher's environment or JAX_COORDINATOR_ADDRESS / JAX_NUM_PROCESSES / JAX_PROCESS_ID),
process i embeds the shards k with k % N == i on its own devices; after a barrier process 0
assembles the table from all shards in `<out>.partial/` (which every host must see) and
writes it, the others write nothing.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from pathlib import Path
from typing import Sequence

import ml_collections
import numpy as np
import pandas as pd

from maejax.eval import io

DATA_SOURCES = ("synthetic", "folder", "rxrx1", "rxrx3_core", "arrayrecord")
WELL_KEYS = ("experiment", "plate", "well")
SETTINGS = "settings.json"


# ----------------------------------------------------------------------------- data config

def data_config_for(model_config, data: str | None = None, overrides: Sequence[str] = (),
                    channels: Sequence[int] | None = None):
  """The data ConfigDict to embed: the checkpoint's own `config.data` by default.

  data: None (the checkpoint's), a source name (`folder`, ...: the checkpoint's fields with
    that source), a config file `configs/X.py[:arg]` or a `config.json` / workdir (their data).
  overrides: `data.<field>=<value>` strings typed by the field (maejax.train.config.set_field).
  channels: physical channel ids to read (sets `data.channels`).
  """
  # pylint: disable=g-import-not-at-top
  from maejax import data as data_lib
  from maejax.train import config as config_lib
  base = model_config.get("data") if model_config is not None else None
  if data and data not in DATA_SOURCES:
    path = data.partition(":")[0]
    if path.endswith(".py"):
      base = config_lib.load_config(data).data
    elif os.path.isdir(path) or path.endswith(".json"):
      file = os.path.join(path, "config.json") if os.path.isdir(path) else path
      if not os.path.isfile(file):
        raise FileNotFoundError(f"--data {data}: no {file}; give a config file (configs/X.py), "
                                f"a workdir, or a source name ({', '.join(DATA_SOURCES)})")
      with open(file) as f:
        base = config_lib.from_json(f.read()).get("data")
      if base is None:
        raise ValueError(f"--data {data}: {file} has no `data` entry")
    else:
      raise ValueError(f"--data {data!r}: expected a source name ({', '.join(DATA_SOURCES)}), a "
                       "config file (configs/X.py[:arg]) or a workdir / config.json")
  config = data_lib.default_config()
  if base is not None:  # Typed like the defaults (JSON turned tuples into lists).
    config.update(config_lib.from_json(json.dumps(_to_dict(base))))
  root = ml_collections.ConfigDict({"data": config})
  if data in DATA_SOURCES:
    root.data.source = data
  for item in overrides:
    key, sep, text = item.lstrip("-").partition("=")
    if not key.startswith("data.") or not sep:
      raise ValueError(f"data override {item!r}: expected --data.<field>=<value>, e.g. "
                       "--data.source=folder --data.path=/data/screen")
    try:
      config_lib.set_field(root, key, text)
    except ValueError as e:
      raise ValueError(str(e).replace("--config.", "--")) from None
  if channels is not None:
    root.data.channels = tuple(int(c) for c in channels)
  return root.data


def _to_dict(config):
  return config.to_dict() if hasattr(config, "to_dict") else dict(config)


# ----------------------------------------------------------------------------- embedding

def embed_sites(embedder, source, indices: Sequence[int], crop_size: int | None, *,
                skip_bad_images: bool = False, on_site=None) -> pd.DataFrame:
  """Mean crop embedding of each site in `indices` (embedder: a maejax.api.ShardedEmbedder).

  Returns a DataFrame [site_index, n_crops, feature_0..] (sites that were skipped as bad
  images are absent). on_site(k) is called with the number of sites just finished.
  """
  from maejax import data as data_lib  # pylint: disable=g-import-not-at-top
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
  table = io.join_table(pd.DataFrame({"site_index": order,
                                      "n_crops": [counts[s] for s in order]}), features)
  return table


INTENSITY_PERCENTILES = (1, 5, 25, 50, 75, 95, 99)


def intensity_sites(source, indices: Sequence[int] | None = None) -> pd.DataFrame:
  """The classical baseline: per-channel mean, std and percentiles of each whole site.

  Returns a DataFrame [site_index, n_crops (= 1), feature_<i>] with the features of channel c
  at i = c * 9 + k for k over (mean, std, p1, p5, p25, p50, p75, p95, p99); sites_to_wells
  turns it into wells like model embeddings.
  """
  indices = range(len(source)) if indices is None else indices
  rows = []
  for i in indices:
    image = np.asarray(source[i], np.float64)
    x = image.reshape(-1, image.shape[-1])  # [pixels, c]
    stats = np.concatenate([x.mean(0, keepdims=True), x.std(0, keepdims=True),
                            np.percentile(x, INTENSITY_PERCENTILES, axis=0)])  # [9, c]
    rows.append(stats.T.ravel())
  indices = list(indices)
  return io.join_table(pd.DataFrame({"site_index": indices, "n_crops": np.ones(len(indices),
                                                                               np.int64)}),
                       np.asarray(rows, np.float32))


def sites_to_wells(site_table: pd.DataFrame, metadata: pd.DataFrame) -> pd.DataFrame:
  """Site embeddings [site_index, n_crops, features] + the source's site metadata -> wells.

  Each well's features are the mean of its sites' (each site weighs the same); metadata
  columns constant within every well are kept as `Metadata_<name>`, plus n_sites and n_crops.
  """
  keys = [k for k in WELL_KEYS if k in metadata.columns]
  if "well" not in keys:
    raise ValueError(f"the data's metadata has no `well` column (columns: "
                     f"{list(metadata.columns)}); wells cannot be formed")
  sites = metadata.iloc[site_table["site_index"].to_numpy()].reset_index(drop=True)
  names = [c for c in site_table.columns if str(c).startswith("feature_")]
  features = site_table[names].to_numpy(np.float64)
  codes, _ = pd.factorize(pd.MultiIndex.from_frame(sites[keys].astype(str)))
  n = codes.max() + 1 if len(codes) else 0
  counts = np.bincount(codes, minlength=n)
  sums = np.zeros((n, features.shape[1]))
  np.add.at(sums, codes, features)
  grouped = sites.groupby(codes, sort=True)
  constant = [c for c in sites.columns if c in keys or (grouped[c].nunique(dropna=False) <= 1).all()]
  wells = grouped[constant].first().reset_index(drop=True)
  wells["n_sites"] = counts
  wells["n_crops"] = np.bincount(codes, weights=site_table["n_crops"].to_numpy(),
                                 minlength=n).astype(np.int64)
  wells = wells.rename(columns=lambda c: c if str(c).startswith(io.METADATA_PREFIX)
                       else io.METADATA_PREFIX + str(c))
  return io.join_table(wells, (sums / counts[:, None]).astype(np.float32), names)


def embed_wells(model, data_config, *, crop_size: int | None = None, batch_size: int = 64,
                pool: str | None = None, block: int | None = None,
                partial_dir: str | os.PathLike | None = None, settings: dict | None = None,
                sites_per_shard: int = 256, progress: bool = True, source=None,
                devices=None) -> tuple[pd.DataFrame | None, dict]:
  """Embeds every site of `data_config`'s source and averages to wells.

  With several JAX processes each embeds its share of the shards (k % process_count ==
  process_index) into `partial_dir`, which is then required; process 0 returns the table
  of all shards, the others (None, info).

  Args:
    model: a `maejax.Model` (maejax.load) or anything with `graphdef`, `state`, `module`.
    data_config: a data ConfigDict (maejax.data.default_config fields).
    crop_size: tile size (default `data_config.crop_size`; 0 = whole sites).
    partial_dir: resume folder; finished blocks of `sites_per_shard` sites are kept there.
    settings: what identifies the run (checked against the partial folder's on resume).
  Returns: (well table, info dict with sites, crops, wells, dim, wall_s, resumed_sites; with
    several processes also process_index, process_count and the shards embedded here).
  """
  import jax  # pylint: disable=g-import-not-at-top
  from maejax import api, data as data_lib  # pylint: disable=g-import-not-at-top
  t0 = time.time()
  index, count = jax.process_index(), jax.process_count()
  if count > 1 and partial_dir is None:
    raise ValueError(f"embedding on {count} processes needs a partial_dir (a folder every "
                     "host sees) to exchange the shards through")
  source = source if source is not None else data_lib.make_source(data_config)
  crop = int(data_config.crop_size if crop_size is None else crop_size) or None
  embedder = api.ShardedEmbedder(model, batch_size=batch_size, pool=pool, block=block,
                                 devices=devices)
  shape = getattr(source, "site_shape", None)
  if shape is not None:
    if crop is not None and min(shape[:2]) < crop:
      raise ValueError(f"--crop-size {crop} exceeds the sites ({shape[0]}x{shape[1]}); pass "
                       f"--crop-size {min(shape[:2])} or smaller (0 = whole sites)")
    embedder.check((crop or shape[0], crop or shape[1], len(source.channel_ids)))
  indices = list(range(len(source)))
  blocks = [indices[i:i + sites_per_shard] for i in range(0, len(indices), sites_per_shard)]
  partial = _Partial(partial_dir, settings or {}) if partial_dir is not None else None
  done = partial.finished() if partial is not None else {}
  mine = [k for k in range(len(blocks)) if k % count == index]
  resumed = sum(len(blocks[k]) for k in done if k < len(blocks) and k % count == index)
  bar = _progress(sum(len(blocks[k]) for k in mine), resumed, progress)
  tables, embedded = [], []
  try:
    for k in mine:
      block_indices = blocks[k]
      if k in done:
        tables.append(done[k])
        continue
      table = embed_sites(embedder, source, block_indices, crop,
                          skip_bad_images=bool(data_config.get("skip_bad_images", False)),
                          on_site=bar.update if bar is not None else None)
      if partial is not None:
        partial.write(k, table)
      tables.append(table)
      embedded.append(k)
  finally:
    if bar is not None:
      bar.close()
  hosts = {}
  if count > 1:
    hosts = dict(process_index=index, process_count=count, shards=embedded,
                 local_sites=sum(len(blocks[k]) for k in embedded))
    _barrier("maejax_embed_shards_written")
    if index != 0:
      return None, dict(hosts, crop_size=crop, devices=len(embedder.mesh.devices.ravel()),
                        batch_size=embedder.batch_size, resumed_sites=int(resumed),
                        wall_s=round(time.time() - t0, 2))
    done = partial.finished()
    missing = [k for k in range(len(blocks)) if k not in done]
    if missing:
      raise ValueError(f"{partial.dir} lacks shards {missing} after all {count} processes "
                       "finished; is the folder shared by every host (same path)?")
    tables = [done[k] for k in range(len(blocks))]
  sites = pd.concat(tables, ignore_index=True)
  if sites.empty:
    raise ValueError("no site could be embedded (all skipped as bad images?)")
  wells = sites_to_wells(sites, source.metadata)
  info = dict(sites=int(len(sites)), skipped_sites=int(len(indices) - len(sites)),
              crops=int(sites["n_crops"].sum()), wells=int(len(wells)),
              dim=int(sum(str(c).startswith("feature_") for c in sites.columns)),
              crop_size=crop, devices=len(embedder.mesh.devices.ravel()),
              batch_size=embedder.batch_size, resumed_sites=int(resumed),
              wall_s=round(time.time() - t0, 2), **hosts)
  return wells, info


def _barrier(name: str) -> None:
  from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
  multihost_utils.sync_global_devices(name)


def _progress(total, initial, enabled):
  if not enabled:
    return None
  from tqdm import tqdm  # pylint: disable=g-import-not-at-top
  return tqdm(total=total, initial=initial, unit="site", desc="embed", dynamic_ncols=True)


class _Partial:
  """The resume folder: settings.json + shard_<k>.parquet per finished block of sites."""

  def __init__(self, directory, settings: dict):
    self.dir = Path(directory)
    self.settings = json.loads(json.dumps(settings, default=str))
    path = self.dir / SETTINGS
    if path.is_file():
      stored = json.loads(path.read_text())
      if stored != self.settings:
        changed = sorted(k for k in set(stored) | set(self.settings)
                         if stored.get(k) != self.settings.get(k))
        raise ValueError(
            f"{self.dir} holds a partial embedding run with other settings ({changed}); "
            "rerun with the same arguments to resume, or pass --restart to start over")
    else:  # Atomic, as every process of a multi-host run writes the same file.
      self.dir.mkdir(parents=True, exist_ok=True)
      tmp = self.dir / f".{SETTINGS}.{os.getpid()}.tmp"
      tmp.write_text(json.dumps(self.settings, indent=1, sort_keys=True))
      os.replace(tmp, path)

  def finished(self) -> dict[int, pd.DataFrame]:
    out = {}
    for path in sorted(self.dir.glob("shard_*.parquet")):
      out[int(path.stem.split("_")[1])] = pd.read_parquet(path)
    return out

  def write(self, k: int, table: pd.DataFrame) -> None:
    tmp = self.dir / f".shard_{k:06d}.parquet.tmp"
    table.to_parquet(tmp, index=False)
    os.replace(tmp, self.dir / f"shard_{k:06d}.parquet")  # Atomic: no half-written shard.

  def remove(self) -> None:
    shutil.rmtree(self.dir, ignore_errors=True)


# ----------------------------------------------------------------------------- command line

def partial_dir_for(out) -> Path:
  out = Path(out)
  return out.with_name(out.name + ".partial")


def _channels(text):
  try:
    values = tuple(int(v) for v in text.split(",") if v.strip() != "")
  except ValueError:
    raise argparse.ArgumentTypeError(
        f"--channels {text!r}: expected comma-separated channel ids, e.g. 0,1,2") from None
  if not values or min(values) < 0:
    raise argparse.ArgumentTypeError(f"--channels {text!r}: expected ids >= 0, e.g. 0,1,2")
  return values


EPILOG = """data overrides: any field of config.data, typed like its default, e.g.
  --data.source=folder --data.path=/data/screen --data.synthetic.site_size=128
an unknown field or a value of the wrong type is an error."""


def parse_args(argv):
  parser = argparse.ArgumentParser(
      prog="python -m maejax.embed", description="Embed every well of a screen (one row per "
      "well: Metadata_* + feature_<i> columns).", epilog=EPILOG,
      formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--checkpoint", required=True,
                      help="training workdir, save_pretrained or `maejax.convert` folder")
  parser.add_argument("--step", type=int, default=None,
                      help="checkpoint step of a training workdir (default: newest)")
  parser.add_argument("--data", default=None,
                      help="the screen: a config file (configs/X.py[:arg]), a workdir / "
                      "config.json, or a source name (synthetic, folder, rxrx1, rxrx3_core, "
                      "arrayrecord); default: the checkpoint's own config.data")
  parser.add_argument("--out", required=True, help="output table (.parquet or .csv)")
  parser.add_argument("--crop-size", type=int, default=None,
                      help="tile size in pixels (default: config.data.crop_size; 0 = whole "
                      "sites)")
  parser.add_argument("--batch-size", type=int, default=64,
                      help="crops per step, rounded up to a multiple of the device count")
  parser.add_argument("--block", type=int, default=None,
                      help="embed the output of encoder block K (1-based; default: last)")
  parser.add_argument("--pool", default=None, choices=("mean", "cls", "channelwise"),
                      help="token pooling (default: the model's own)")
  parser.add_argument("--channels", type=_channels, default=None,
                      help="physical channels to read, e.g. 0,1,2 (channel-agnostic models "
                      "take any subset)")
  parser.add_argument("--sites-per-shard", type=int, default=256,
                      help="sites per resume shard (written to <out>.partial/)")
  parser.add_argument("--restart", action="store_true",
                      help="discard an unfinished run's <out>.partial/ and start over")
  parser.add_argument("--h5ad", action="store_true",
                      help="also write <out stem>.h5ad (AnnData: X = features, obs = metadata)")
  parser.add_argument("--progress", action=argparse.BooleanOptionalAction, default=True)
  parser.add_argument("--distributed", default="auto", choices=("auto", "always", "never"),
                      help="jax.distributed.initialize: auto = when the launcher (SLURM, Open "
                      "MPI, TPU pod) or JAX_COORDINATOR_ADDRESS / JAX_NUM_PROCESSES / "
                      "JAX_PROCESS_ID say several processes run this command")
  parser.add_argument("--json", action="store_true",
                      help="print one JSON summary object as the last stdout line")
  from maejax.train import config as config_lib  # pylint: disable=g-import-not-at-top
  return config_lib.parse_known_overrides(parser, argv, ("--data.",))


def run(args, overrides) -> dict:
  # pylint: disable=g-import-not-at-top
  import jax
  import maejax
  from maejax.train import mesh as mesh_lib
  out = Path(args.out)
  if not out.name.lower().endswith((".parquet", ".pq", ".csv", ".csv.gz")):
    raise ValueError(f"--out {out}: use a .parquet or .csv file name")
  if args.batch_size < 1 or args.sites_per_shard < 1:
    raise ValueError("--batch-size and --sites-per-shard must be >= 1")
  mesh_lib.maybe_initialize_distributed(
      ml_collections.ConfigDict({"initialize": args.distributed}))
  model = maejax.load(args.checkpoint, step=args.step)
  data_config = data_config_for(model.config, args.data, overrides, args.channels)
  settings = dict(checkpoint=os.path.abspath(args.checkpoint), step=model.step,
                  data=data_config.to_dict(), crop_size=args.crop_size, pool=args.pool,
                  block=args.block, sites_per_shard=args.sites_per_shard)
  partial = partial_dir_for(out)
  if args.restart and jax.process_index() == 0:
    shutil.rmtree(partial, ignore_errors=True)
  if jax.process_count() > 1:  # No host writes shards before the folder is (re)made.
    _barrier("maejax_embed_start")
  wells, info = embed_wells(model, data_config, crop_size=args.crop_size,
                            batch_size=args.batch_size, pool=args.pool, block=args.block,
                            partial_dir=partial, settings=settings,
                            sites_per_shard=args.sites_per_shard, progress=args.progress)
  summary = dict(checkpoint=os.path.abspath(args.checkpoint), step=model.step,
                 model=str(model.config.model.name), channels=list(data_config.channels),
                 pool=args.pool, block=args.block)
  if wells is None:  # Another process assembles and writes the table.
    return dict(info, **summary, files=[])
  files = [str(io.write_embeddings(wells, out))]
  if args.h5ad:
    files.append(str(io.write_embeddings(wells, out.with_name(out.name.split(".")[0] + ".h5ad"))))
  shutil.rmtree(partial, ignore_errors=True)
  return dict(info, **summary, files=files)


def main(argv: Sequence[str] | None = None) -> int:
  args, overrides = parse_args(sys.argv[1:] if argv is None else argv)
  try:
    info = run(args, overrides)
  except (ValueError, FileNotFoundError) as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  if "wells" not in info:
    print(f"process {info['process_index']} of {info['process_count']}: embedded shards "
          f"{info['shards']} ({info['local_sites']} sites) in {info['wall_s']:.0f} s; process 0 "
          "writes the table")
  else:
    print(f"{info['wells']} wells ({info['sites']} sites, {info['crops']} crops of "
          f"{info['crop_size'] or 'whole-site'} px, {info['dim']} features) from "
          f"{info['model']}{'' if info['step'] is None else ' step %d' % info['step']} in "
          f"{info['wall_s']:.0f} s on {info['devices']} device(s) -> {', '.join(info['files'])}")
  if args.json:
    print(json.dumps(info))
  return 0
