"""Ingest as an Apache Beam pipeline: the shards of `shards.ingest` written by Beam workers.

    info = shards.ingest(source, out, num_shards=2000, beam_args=["--runner=DataflowRunner", ...])

The pipeline is Create(shard ids) -> Reshuffle -> the same `shards.ShardWriter` (one shard,
a contiguous range of sites, per element), which also writes the shard's summary to
OUT.ingest-tmp-<pid>/_parts/<k>.json (a retried shard rewrites both). This process then writes
metadata.parquet and info.json and renames the staging folder into place exactly as the
in-process ingest does, so the output is the same files. A bad image without skip_bad_images
comes back as its shard's summary and is raised here as one BadImageError naming the file
(not as the runner's wrapped traceback).

Workers unpickle the source, so they must see its image paths (a shared or FUSE-mounted
folder); OUT may be gs:// (everything is written through `etils.epath`, which needs gcsfs).
Needs the `beam` extra: `pip install "maejax[beam]"`.
"""

from __future__ import annotations

import json
from typing import Sequence

import apache_beam as beam
from apache_beam.options import pipeline_options
from etils import epath

from maejax.data import sources as sources_lib

PARTS = "_parts"  # Per-shard summaries inside the staging folder, removed before the rename.


def options(args: Sequence[str]) -> pipeline_options.PipelineOptions:
  """Beam's own pipeline options from command-line flags (`--runner=...`, `--region=...`)."""
  return pipeline_options.PipelineOptions(list(args))


def map_shards(args: Sequence[str]):
  """run(write, shard_ids): `write(k)` for every shard id as a Beam pipeline with pipeline
  options `args` (what `shards.ingest(beam_args=args)` does); returns the shards' summaries."""
  opts = options(args)

  def run(write, shard_ids) -> list[dict]:
    parts_dir = epath.Path(write.out_dir) / PARTS
    parts_dir.mkdir()
    with beam.Pipeline(options=opts) as p:
      _ = (p | "shards" >> beam.Create(list(shard_ids))
           | "spread" >> beam.Reshuffle()
           | "write" >> beam.Map(_write_shard, write, str(parts_dir)))
    parts = [json.loads(f.read_text()) for f in parts_dir.glob("*.json")]
    parts_dir.rmtree()
    errors = sorted((p for p in parts if "error" in p), key=lambda p: p["shard"])
    if errors:
      raise sources_lib.BadImageError(errors[0]["error"], errors[0]["path"])
    return parts

  return run


def _write_shard(k: int, write, parts_dir: str) -> None:
  """Writes shard k and its summary, `parts_dir/k.json` (a bad image: its error)."""
  try:
    part = write(k)
  except sources_lib.BadImageError as e:
    part = dict(shard=k, error=str(e), path=e.path)
  (epath.Path(parts_dir) / f"{k:05d}.json").write_text(json.dumps(part))
