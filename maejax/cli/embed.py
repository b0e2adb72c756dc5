"""`python -m maejax.embed --checkpoint DIR --out F.parquet [--config FILE] [--config.data.x=v]`.

    python -m maejax.embed --checkpoint runs/demo --out embeddings.parquet
    python -m maejax.embed --checkpoint openphenom/ --config configs/rxrx1.py --channels 0,1,2 ...

Embeds every well of a screen (maejax.eval.embed): one row per well, `Metadata_*` columns and
`feature_<i>` columns, indexed by the well id, with the model, checkpoint, step, crop size,
pooling and channels in the Parquet metadata / AnnData uns under "maejax" (maejax.eval.io).
The screen is the checkpoint's own `config.data` unless `--config`
(a config file, a config.json or a workdir) names another; `--config.data.<field>=<value>`
changes one field of it (typed; an unknown field is an error).

Resumable: finished sites go to `<out>.partial/shard_<k>.parquet` (site embeddings of a fixed
block of sites) with the run settings in `<out>.partial/settings.json`; a rerun with the same
settings skips finished shards, and the folder is removed once the table is written.

While it runs, `<out>.lock` (host, pid, start time) keeps a second run off the same --out.

Multi-host: started on N processes (jax.distributed, as `python -m maejax.train`: the
launcher's environment or JAX_COORDINATOR_ADDRESS / JAX_NUM_PROCESSES / JAX_PROCESS_ID),
process i embeds the shards k with k % N == i on its own devices; after a barrier process 0
assembles the table from all shards in `<out>.partial/` (which every host must see) and
writes it, the others write nothing.
"""

from __future__ import annotations

import argparse
import functools
import os
import time
from typing import Sequence

import jax
import ml_collections
import pandas as pd
from jax.experimental import multihost_utils

from maejax import api
from maejax import cli
from maejax import data as data_lib
from maejax import workdir
from maejax.eval import embed as embed_lib
from maejax.eval import io
from maejax.train import mesh as mesh_lib

OUT_SUFFIXES = (".parquet", ".pq", ".csv", ".csv.gz")


def _channels(text):
  try:
    values = tuple(int(v) for v in text.split(",") if v.strip() != "")
  except ValueError:
    raise argparse.ArgumentTypeError(
        f"--channels {text!r}: expected comma-separated channel ids, e.g. 0,1,2") from None
  if not values or min(values) < 0:
    raise argparse.ArgumentTypeError(f"--channels {text!r}: expected ids >= 0, e.g. 0,1,2")
  return values


def parse_args(argv):
  p = cli.parser("python -m maejax.embed", "Embed every well of a screen (one row per well: "
                 "Metadata_* + feature_<i> columns).",
                 ml_collections.ConfigDict({"data": data_lib.default_config()}), progress=True)
  p.add_argument("--checkpoint", required=True,
                 help="training workdir, save_pretrained or `maejax.convert` folder")
  p.add_argument("--step", type=int, default=None,
                 help="checkpoint step of a training workdir (default: newest)")
  p.add_argument("--config", default=None,
                 help="the screen: a config name or file (demo, configs/X.py[:arg]), a "
                 "config.json or a "
                 "workdir, whose `data` is embedded; default: the checkpoint's own config.data")
  p.add_argument("--out", required=True, help="output table (.parquet or .csv; local or gs://)")
  cli.add_embedding_flags(p, "tile size in pixels (default: config.data.crop_size; 0 = whole "
                          "sites)")
  p.add_argument("--block", type=int, default=None,
                 help="embed the output of encoder block K (1-based; default: last)")
  p.add_argument("--dtype", default=None, choices=api.DTYPES,
                 help="compute precision (default: the model's own); bfloat16 halves memory "
                 "traffic and runs on AMX tiles or tensor cores where the backend has them")
  p.add_argument("--channels", type=_channels, default=None,
                 help="physical channels to read, e.g. 0,1,2 (channel-agnostic models take any "
                 "subset)")
  p.add_argument("--sites-per-shard", type=int, default=256,
                 help="sites per resume shard (written to <out>.partial/)")
  p.add_argument("--restart", action="store_true",
                 help="discard an unfinished run's <out>.partial/ and start over")
  p.add_argument("--h5ad", action="store_true",
                 help="also write <out stem>.h5ad (AnnData: X = features, obs = metadata)")
  p.add_argument("--distributed", default="auto", choices=("auto", "always", "never"),
                 help="jax.distributed.initialize: auto = when the launcher (SLURM, Open MPI, "
                 "TPU pod) or JAX_COORDINATOR_ADDRESS / JAX_NUM_PROCESSES / JAX_PROCESS_ID say "
                 "several processes run this command")
  return cli.parse(p, argv)


def _check(args) -> None:
  if not workdir.path(args.out).name.lower().endswith(OUT_SUFFIXES):
    raise ValueError(f"--out {args.out}: use a .parquet or .csv file name")
  if args.batch_size < 1 or args.sites_per_shard < 1:
    raise ValueError("--batch-size and --sites-per-shard must be >= 1")


def data_config(model: api.Model, spec: str | None, overrides: Sequence[str],
                channels=None) -> ml_collections.ConfigDict:
  """The screen to embed: `--config`'s data (default the checkpoint's), overridden."""
  base = cli.load_config(spec) if spec is not None else model.config
  if spec is not None and base.get("data") is None:
    raise ValueError(f"--config {spec} has no `data` entry; give a config that names a screen")
  return embed_lib.data_config(base, overrides, channels)


def _barrier(name: str) -> None:
  if jax.process_count() > 1:
    multihost_utils.sync_global_devices(name)


def _open_partial(args, model: api.Model, data: ml_collections.ConfigDict) -> embed_lib.Partial:
  """`<out>.partial/` (emptied first with --restart) with this run's settings."""
  directory = embed_lib.partial_dir_for(args.out)
  if args.restart and jax.process_index() == 0:
    directory.rmtree(missing_ok=True)
  _barrier("maejax_embed_start")  # No host writes shards before the folder is (re)made.
  settings = dict(checkpoint=os.fspath(workdir.path(args.checkpoint)), step=model.step,
                  data=data.to_dict(), crop_size=args.crop_size, pool=args.pool,
                  dtype=str(model.config.model.get("dtype", "float32")),
                  block=args.block, sites_per_shard=args.sites_per_shard)
  if args.crop_stats:  # Only then: a partial run of before the option still resumes.
    settings["crop_stats"] = True
  return embed_lib.Partial(directory, settings)


def _site_table(partial: embed_lib.Partial, n_shards: int) -> pd.DataFrame:
  """The site tables of all shards, in order (every process has written its own)."""
  done = set(partial.finished())
  missing = [k for k in range(n_shards) if k not in done]
  if missing:
    raise ValueError(f"{partial.dir} lacks shards {missing} after all {jax.process_count()} "
                     "processes finished; is the folder shared by every host (same path)?")
  return pd.concat([partial.read(k) for k in range(n_shards)], ignore_index=True)


def _embed_mine(embedder, source, shards, crop, partial: embed_lib.Partial, data,
                progress: bool) -> dict:
  """Embeds this process's unfinished shards into `partial`; returns what it did."""
  index, count = jax.process_index(), jax.process_count()
  mine = embed_lib.my_shards(len(shards), index, count)
  done = set(partial.finished())
  todo = {k: shards[k] for k in mine if k not in done}
  embed_lib.embed_shards(embedder, source, todo, crop, partial=partial,
                         skip_bad_images=bool(data.get("skip_bad_images", False)),
                         progress=progress)
  info = dict(resumed_sites=sum(len(shards[k]) for k in mine if k in done))
  if count > 1:
    info.update(process_index=index, process_count=count, shards=sorted(todo),
                local_sites=sum(len(v) for v in todo.values()))
  return info


def _write_table(partial: embed_lib.Partial, n_shards: int, source, args, embedder,
                 crop) -> dict:
  """Process 0: all shards -> the well table at --out (and .h5ad), with its provenance; the
  partial folder goes."""
  sites = _site_table(partial, n_shards)
  wells = embed_lib.sites_to_wells(sites, source.metadata)
  io.with_provenance(wells, embed_lib.provenance(
      embedder, source, crop, checkpoint=workdir.path(args.checkpoint)))
  out = workdir.path(args.out)
  files = [str(io.write_embeddings(wells, out))]
  if args.h5ad:
    files.append(str(io.write_embeddings(wells, out.parent / (out.name.split(".")[0] + ".h5ad"))))
  partial.dir.rmtree(missing_ok=True)
  return dict(sites=len(sites), skipped_sites=len(source) - len(sites),
              crops=int(sites["n_crops"].sum()), wells=len(wells),
              dim=sum(str(c).startswith("feature_") for c in sites.columns), files=files)


def run(args, overrides: Sequence[str]) -> dict:
  """Embeds (this process's shards of) the screen; returns the summary."""
  t0 = time.time()
  _check(args)
  mesh_lib.maybe_initialize_distributed(
      ml_collections.ConfigDict({"initialize": args.distributed}))
  model = api.load(args.checkpoint, step=args.step, dtype=args.dtype)
  data = data_config(model, args.config, overrides, args.channels)
  source = data_lib.make_source(data)
  crop = embed_lib.crop_size_for(data, args.crop_size)
  embedder = embed_lib.make_embedder(model, source, crop, batch_size=args.batch_size,
                                     pool=args.pool, block=args.block,
                                     crop_stats=args.crop_stats)
  with workdir.locked(workdir.output_lock_file(args.out), flag="--out"):
    return _run_locked(args, t0, model, data, source, crop, embedder)


def _run_locked(args, t0, model, data, source, crop, embedder) -> dict:
  """`run` while holding `<out>.lock`."""
  partial = _open_partial(args, model, data)
  shards = embed_lib.plan_shards(len(source), args.sites_per_shard)
  info = dict(checkpoint=os.fspath(workdir.path(args.checkpoint)), step=model.step,
              model=str(model.config.model.name), channels=list(data.channels), pool=args.pool,
              block=args.block, crop_size=crop, devices=int(embedder.mesh.devices.size),
              batch_size=embedder.batch_size,
              **_embed_mine(embedder, source, shards, crop, partial, data, args.progress))
  _barrier("maejax_embed_shards_written")
  if jax.process_index() != 0:  # Process 0 assembles and writes the table.
    return dict(info, files=[], wall_s=round(time.time() - t0, 2))
  return dict(info, **_write_table(partial, len(shards), source, args, embedder, crop),
              wall_s=round(time.time() - t0, 2))


def _report(info: dict) -> None:
  if "wells" not in info:
    print(f"process {info['process_index']} of {info['process_count']}: embedded shards "
          f"{info['shards']} ({info['local_sites']} sites) in {info['wall_s']:.0f} s; process 0 "
          "writes the table")
    return
  step = "" if info["step"] is None else f" step {info['step']}"
  print(f"{info['wells']} wells ({info['sites']} sites, {info['crops']} crops of "
        f"{info['crop_size'] or 'whole-site'} px, {info['dim']} features) from "
        f"{info['model']}{step} in {info['wall_s']:.0f} s on {info['devices']} device(s) -> "
        f"{', '.join(info['files'])}")


def main(argv: Sequence[str] | None = None) -> int:
  args, overrides = parse_args(argv)
  return cli.report(args, functools.partial(run, args, overrides), _report)
