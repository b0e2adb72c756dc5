"""Converts any source once into ArrayRecord shards of uint8 sites + metadata (the fast path).

    python -m maejax.data.ingest --source rxrx1 --path /data/rxrx1 --out /data/rxrx1_ar
    python -m maejax.data.ingest --source folder --path DIR --metadata-csv plates.csv \
        --set folder.path_template='{plate}/{well}_s{site}_ch{channel}.tif' --set uint16=shift \
        --set bit_depth=12 --out OUT
    python -m maejax.data.ingest --source synthetic --set synthetic.site_size=128 --out OUT

Writes OUT/sites-XXXXX-of-YYYYY.array_record (record i = metadata row i, `sources.encode_site`),
OUT/metadata.parquet and OUT/info.json; train with config.data.source="arrayrecord",
config.data.path=OUT.
"""

from __future__ import annotations

import argparse
import ast
import concurrent.futures
import json
import logging
import os
import time

import numpy as np

from maejax.data import config as config_lib
from maejax.data import sources as sources_lib

log = logging.getLogger(__name__)


def ingest(source, out_dir: str, *, num_shards: int | None = None, skip_bad_images: bool = False,
           options: str = "group_size:1,uncompressed", num_threads: int = 4,
           description: str = "") -> dict:
  """Writes every site of `source` to ArrayRecord shards under `out_dir`; returns info.json."""
  from array_record.python import array_record_module  # pylint: disable=g-import-not-at-top
  t0 = time.time()
  os.makedirs(out_dir, exist_ok=True)
  n = len(source)
  if n == 0:
    raise ValueError("ingest: the source has no sites; check config.data.path and the CSV")
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
    with concurrent.futures.ThreadPoolExecutor(num_threads) as pool:
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


def apply_overrides(config, assignments) -> None:
  """Applies `key.sub=value` strings (values parsed as Python literals, else strings)."""
  for item in assignments or []:
    if "=" not in item:
      raise ValueError(f"--set {item!r}: expected key=value, e.g. --set crop_size=128")
    key, raw = item.split("=", 1)
    try:
      value = ast.literal_eval(raw)
    except (ValueError, SyntaxError):
      value = raw
    node = config
    *parents, leaf = key.split(".")
    for p in parents:
      node = node[p]
    if leaf not in node:
      raise ValueError(f"--set {key}: unknown field; valid fields here: {sorted(node.keys())}")
    if isinstance(node[leaf], tuple) and isinstance(value, list):
      value = tuple(value)
    node[leaf] = value


def main(argv=None) -> dict:
  p = argparse.ArgumentParser(prog="python -m maejax.data.ingest", description=__doc__,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--source", required=True,
                 choices=("synthetic", "folder", "rxrx1", "rxrx3_core", "arrayrecord"))
  p.add_argument("--path", default="", help="dataset root (not for synthetic)")
  p.add_argument("--metadata-csv", default="", help="metadata CSV (relative to --path)")
  p.add_argument("--channels", default="", help="physical channels, e.g. 0,1,2,3,4,5")
  p.add_argument("--out", required=True, help="output directory for the shards")
  p.add_argument("--shards", type=int, default=None, help="number of shards (default ~1 per 1000 sites)")
  p.add_argument("--options", default="group_size:1,uncompressed",
                 help="ArrayRecord writer options (e.g. 'group_size:1,zstd:1' to compress)")
  p.add_argument("--threads", type=int, default=4, help="threads decoding images")
  p.add_argument("--skip-bad-images", action="store_true", help="skip and log bad sites")
  p.add_argument("--set", action="append", metavar="KEY=VALUE",
                 help="override a config.data field, e.g. --set uint16=shift")
  p.add_argument("--json", action="store_true", help="print one JSON summary line last")
  args = p.parse_args(argv)
  logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
  cfg = config_lib.default_config()
  cfg.source, cfg.path, cfg.metadata_csv = args.source, args.path, args.metadata_csv
  cfg.skip_bad_images = args.skip_bad_images
  if args.channels:
    cfg.channels = tuple(int(c) for c in args.channels.split(","))
  apply_overrides(cfg, args.set)
  source = sources_lib.make_source(cfg)
  info = ingest(source, args.out, num_shards=args.shards, skip_bad_images=args.skip_bad_images,
                options=args.options, num_threads=args.threads,
                description=f"{args.source}:{args.path}")
  summary = {k: info[k] for k in ("num_sites", "site_shape", "channel_ids", "bytes", "seconds")}
  summary.update(out=args.out, shards=len(info["shards"]), skipped=len(info["skipped"]))
  if args.json:
    print(json.dumps(summary))
  else:
    print(f"wrote {summary['num_sites']} sites ({summary['bytes'] / 2**20:.1f} MiB) in "
          f"{summary['shards']} shards to {args.out} in {summary['seconds']} s; "
          f"skipped {summary['skipped']}")
  return summary


if __name__ == "__main__":
  main()
