"""Ingest: any source, once, into ArrayRecord shards of uint8 sites + metadata (the fast path).

The command is `python -m maejax.data.ingest` (maejax/cli/ingest.py). `ingest` writes
OUT/sites-XXXXX-of-YYYYY.array_record (record i = metadata row i, `sources.encode_site`),
OUT/metadata.parquet and OUT/info.json; train with config.data.source="arrayrecord",
config.data.path=OUT. It writes into OUT.ingest-tmp-<pid> beside OUT and renames that into
place when complete, so a killed (re-)ingest leaves an earlier OUT as it was.

Shard k holds the sites `shard_range(k)` (a contiguous range of source indices, bad images
left out), written by `write_shard`: one shard is the unit of work, run in this process
(`ingest`, shards one after another) or as a Beam pipeline (maejax/data/beam_ingest.py, the
same `write_shard` on each worker). OUT may be any `etils.epath` path (`gs://...`): shards are
written to a local file and copied there when OUT is not local.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import json
import logging
import os
import tempfile
import time

import tqdm
from array_record.python import array_record_module
from etils import epath

from maejax.data import sources as sources_lib

log = logging.getLogger(__name__)
TMP_SUFFIX = ".ingest-tmp-"  # OUT.ingest-tmp-<pid>: an ingest in progress (or killed).


def default_num_shards(n: int) -> int:
  """About one shard per 1000 sites, at most 64 (pass `num_shards` for more, e.g. on Beam)."""
  return max(1, min(64, n // 1000 + 1))


def shard_name(k: int, num_shards: int) -> str:
  return f"sites-{k:05d}-of-{num_shards:05d}.array_record"


def shard_range(k: int, num_shards: int, n: int) -> range:
  """The source indices of shard k: contiguous, so record order == metadata row order."""
  return range(k * n // num_shards, (k + 1) * n // num_shards)


def ingest(source, out_dir: str, *, num_shards: int | None = None, skip_bad_images: bool = False,
           options: str = "group_size:1,uncompressed", num_threads: int = 4,
           description: str = "", progress: bool = False, beam_args=()) -> dict:
  """Writes every site of `source` to ArrayRecord shards under `out_dir`; returns info.json.
  progress: a tqdm bar of sites read. The shards are written here, one after another, or with
  `beam_args` (Beam's pipeline options, `--runner=...` first) as an Apache Beam pipeline."""
  t0 = time.time()
  final = _resolve(out_dir)
  _check_replaceable(final)
  n = len(source)
  if n == 0:
    raise ValueError("ingest: the source has no sites; check config.data.path and the CSV")
  num_shards = num_shards or default_num_shards(n)
  tmp = final.parent / f"{final.name}{TMP_SUFFIX}{os.getpid()}"
  _rmtree(tmp)
  tmp.mkdir(parents=True)
  try:
    with tqdm.tqdm(total=n, unit="site", desc="ingest", dynamic_ncols=True,
                   disable=not progress or bool(beam_args)) as bar:
      write = ShardWriter(source, str(tmp), num_shards, skip_bad_images, options, num_threads,
                          on_sites=bar.update)
      parts = _map_shards(beam_args)(write, range(num_shards))
    info = _finish(source, tmp, num_shards, parts, options, description, t0)
  except BaseException:
    _rmtree(tmp)
    raise
  _replace(tmp, final)
  return info


def _map_shards(beam_args):
  """map_shards(write, shard_ids) -> [write(k) for k in shard_ids], here or on Beam."""
  if not beam_args:
    return lambda write, shard_ids: [write(k) for k in shard_ids]
  try:
    from maejax.data import beam_ingest  # pylint: disable=g-import-not-at-top  (the beam extra)
  except ModuleNotFoundError as e:
    raise ImportError(f"a Beam ingest (--runner) needs Apache Beam ({e}); "
                      "pip install 'maejax[beam]'") from e
  return beam_ingest.map_shards(beam_args)


def _resolve(out_dir) -> epath.Path:
  path = epath.Path(out_dir)
  return path if _remote(path) else epath.Path(os.path.abspath(out_dir))


def _remote(path) -> bool:
  return "://" in str(path)


def _rmtree(path: epath.Path) -> None:
  if path.exists():
    path.rmtree()


def _check_replaceable(out_dir: epath.Path) -> None:
  """Only an earlier ingest output (or an empty folder) may be replaced."""
  if not out_dir.is_dir():
    return
  ours = lambda f: f.endswith(".array_record") or f in (  # noqa: E731
      sources_lib.ARRAYRECORD_INFO, sources_lib.ARRAYRECORD_METADATA)
  others = [p.name for p in out_dir.iterdir() if not ours(p.name)]
  if others:
    raise ValueError(f"--out {out_dir} holds files that are not an ingest output "
                     f"({sorted(others)[:5]}); pick a new or empty directory")


def _replace(tmp: epath.Path, final: epath.Path) -> None:
  """Renames the finished `tmp` to `final`; an earlier `final` goes only after that.
  (On object stores such as gs:// a rename copies: the swap is not atomic there, but a run
  killed before it leaves the earlier `final` untouched.)"""
  old = final.parent / f"{final.name}.old-{os.getpid()}"
  if final.exists():
    final.rename(old)
  tmp.rename(final)
  _rmtree(old)


class ShardWriter:
  """`write(k)` reads, encodes and writes shard k of `source` into `out_dir`; returns its part
  (`kept` source indices, `skipped` [(index, path, message)], site `shapes`, pixel `bytes`).
  Picklable, so a Beam worker runs the same code as the in-process ingest."""

  def __init__(self, source, out_dir: str, num_shards: int, skip_bad_images: bool, options: str,
               num_threads: int, on_sites=None):
    self.source, self.out_dir, self.num_shards = source, out_dir, num_shards
    self.skip_bad_images, self.options, self.num_threads = skip_bad_images, options, num_threads
    self.on_sites = on_sites

  def __getstate__(self):
    return {**self.__dict__, "on_sites": None}  # A progress bar stays with its process.

  def __call__(self, k: int) -> dict:
    part = dict(shard=k, kept=[], skipped=[], shapes=[], bytes=0)
    name = shard_name(k, self.num_shards)
    remote = _remote(self.out_dir)
    with tempfile.TemporaryDirectory() if remote else contextlib.nullcontext(self.out_dir) as local:
      writer = array_record_module.ArrayRecordWriter(os.path.join(local, name), self.options)
      try:
        self._write(k, writer, part)
      finally:
        writer.close()
      if remote:
        epath.Path(local, name).copy(epath.Path(self.out_dir, name), overwrite=True)
    return part

  def _write(self, k, writer, part) -> None:
    indices = shard_range(k, self.num_shards, len(self.source))
    read = lambda i: sources_lib.read_site(  # noqa: E731
        self.source, i, self.skip_bad_images,
        on_skip=lambda i, e: part["skipped"].append((i, e.path, str(e))))
    chunk = 4 * self.num_threads
    with concurrent.futures.ThreadPoolExecutor(self.num_threads) as pool:
      for start in range(0, len(indices), chunk):
        batch = indices[start:start + chunk]
        for i, img in zip(batch, pool.map(read, batch)):
          if img is None:
            continue
          writer.write(sources_lib.encode_site(img))
          part["kept"].append(i)
          shape = [int(s) for s in img.shape]
          if shape not in part["shapes"]:
            part["shapes"].append(shape)
          part["bytes"] += img.nbytes
        if self.on_sites is not None:
          self.on_sites(len(batch))


def _finish(source, out_dir: epath.Path, num_shards, parts, options, description, t0) -> dict:
  """metadata.parquet and (last) info.json of the written shards in `out_dir`."""
  parts = sorted(parts, key=lambda p: p["shard"])
  kept = [i for p in parts for i in p["kept"]]
  meta = source.metadata.iloc[kept].reset_index(drop=True)
  for col in meta.columns:
    if meta[col].dtype == object:
      meta[col] = meta[col].astype(str)
  with (out_dir / sources_lib.ARRAYRECORD_METADATA).open("wb") as f:
    meta.to_parquet(f, index=False)
  skipped = list(getattr(source, "skipped", [])) + [
      (path, msg) for p in parts for _, path, msg in p["skipped"]]
  shapes = {tuple(s) for p in parts for s in p["shapes"]}
  info = dict(
      shards=[shard_name(k, num_shards) for k in range(num_shards)],
      shard_sizes=[len(p["kept"]) for p in parts], num_sites=len(kept),
      channel_ids=[int(c) for c in source.channel_ids],
      channel_names=list(source.channel_names),
      site_shape=list(shapes.pop()) if len(shapes) == 1 else None,
      bytes=int(sum(p["bytes"] for p in parts)), options=options, description=description,
      skipped=[list(map(str, s)) for s in skipped], seconds=round(time.time() - t0, 2))
  (out_dir / sources_lib.ARRAYRECORD_INFO).write_text(json.dumps(info, indent=1))
  return info
