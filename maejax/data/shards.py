"""Ingest: any source, once, into ArrayRecord shards of uint8 sites + metadata (the fast path).

The command is `python -m maejax.data.ingest` (maejax/cli/ingest.py). `ingest` writes
OUT/sites-XXXXX-of-YYYYY.array_record (record i = metadata row i, `sources.encode_site`),
OUT/metadata.parquet and OUT/info.json; train with config.data.source="arrayrecord",
config.data.path=OUT. It writes into OUT.ingest-tmp-<pid> beside OUT and renames that into
place when complete, so a killed (re-)ingest leaves an earlier OUT as it was.
"""

from __future__ import annotations

import concurrent.futures
import json
import logging
import os
import shutil
import time

import numpy as np
import tqdm
from array_record.python import array_record_module

from maejax.data import sources as sources_lib

log = logging.getLogger(__name__)
TMP_SUFFIX = ".ingest-tmp-"  # OUT.ingest-tmp-<pid>: an ingest in progress (or killed).


def ingest(source, out_dir: str, *, num_shards: int | None = None, skip_bad_images: bool = False,
           options: str = "group_size:1,uncompressed", num_threads: int = 4,
           description: str = "", progress: bool = False) -> dict:
  """Writes every site of `source` to ArrayRecord shards under `out_dir`; returns info.json.
  progress: a tqdm bar of sites read."""
  t0 = time.time()
  final = os.path.abspath(out_dir)
  _check_replaceable(final)
  n = len(source)
  if n == 0:
    raise ValueError("ingest: the source has no sites; check config.data.path and the CSV")
  out_dir = f"{final}{TMP_SUFFIX}{os.getpid()}"
  shutil.rmtree(out_dir, ignore_errors=True)
  os.makedirs(out_dir)
  try:
    info = _write(source, out_dir, n, num_shards, skip_bad_images, options, num_threads,
                  description, progress, t0)
  except BaseException:
    shutil.rmtree(out_dir, ignore_errors=True)
    raise
  _replace(out_dir, final)
  return info


def _check_replaceable(out_dir: str) -> None:
  """Only an earlier ingest output (or an empty folder) may be replaced."""
  if not os.path.isdir(out_dir) or not os.listdir(out_dir):
    return
  ours = lambda f: f.endswith(".array_record") or f in (  # noqa: E731
      sources_lib.ARRAYRECORD_INFO, sources_lib.ARRAYRECORD_METADATA)
  others = [f for f in os.listdir(out_dir) if not ours(f)]
  if others:
    raise ValueError(f"--out {out_dir} holds files that are not an ingest output "
                     f"({sorted(others)[:5]}); pick a new or empty directory")


def _replace(tmp: str, final: str) -> None:
  """Renames the finished `tmp` to `final`; an earlier `final` goes only after that."""
  old = f"{final}.old-{os.getpid()}"
  if os.path.exists(final):
    os.rename(final, old)
  os.rename(tmp, final)
  shutil.rmtree(old, ignore_errors=True)


def _write(source, out_dir, n, num_shards, skip_bad_images, options, num_threads, description,
           progress, t0) -> dict:
  """The shards, metadata.parquet and (last) info.json of `source` in `out_dir`."""
  num_shards = num_shards or max(1, min(64, n // 1000 + 1))
  names = [f"sites-{k:05d}-of-{num_shards:05d}.array_record" for k in range(num_shards)]
  writers = [array_record_module.ArrayRecordWriter(os.path.join(out_dir, s), options)
             for s in names]
  kept, skipped, shapes, nbytes = [], [], set(), 0
  written = np.zeros(num_shards, np.int64)

  def read(i):
    return sources_lib.read_site(source, i, skip_bad_images,
                                 on_skip=lambda i, e: skipped.append((i, e.path, str(e))))

  try:
    with concurrent.futures.ThreadPoolExecutor(num_threads) as pool, tqdm.tqdm(
        total=n, unit="site", desc="ingest", dynamic_ncols=True, disable=not progress) as bar:
      chunk = 4 * num_threads
      for start in range(0, n, chunk):
        part = list(range(start, min(n, start + chunk)))
        for i, img in zip(part, pool.map(read, part)):
          if img is None:
            continue
          # Contiguous ranges per shard keep record order == metadata row order.
          shard = len(kept) * num_shards // n
          writers[shard].write(sources_lib.encode_site(img))
          written[shard] += 1
          kept.append(i)
          shapes.add(tuple(int(s) for s in img.shape))
          nbytes += img.nbytes
        bar.update(len(part))
  finally:
    for w in writers:
      w.close()
  meta = source.metadata.iloc[kept].reset_index(drop=True)
  for col in meta.columns:
    if meta[col].dtype == object:
      meta[col] = meta[col].astype(str)
  meta.to_parquet(os.path.join(out_dir, sources_lib.ARRAYRECORD_METADATA), index=False)
  skipped_paths = list(getattr(source, "skipped", [])) + [(p, m) for _, p, m in skipped]
  info = dict(
      shards=names, shard_sizes=written.tolist(), num_sites=len(kept),
      channel_ids=[int(c) for c in source.channel_ids],
      channel_names=list(source.channel_names),
      site_shape=list(shapes.pop()) if len(shapes) == 1 else None,
      bytes=int(nbytes), options=options, description=description,
      skipped=[list(map(str, s)) for s in skipped_paths], seconds=round(time.time() - t0, 2))
  with open(os.path.join(out_dir, sources_lib.ARRAYRECORD_INFO), "w") as f:
    json.dump(info, f, indent=1)
  return info
