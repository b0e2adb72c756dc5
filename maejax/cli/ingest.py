"""`python -m maejax.data.ingest`: images -> ArrayRecord shards (maejax.data.shards).

    python -m maejax.data.ingest --source rxrx1 --path /data/rxrx1 --out /data/rxrx1_ar
    python -m maejax.data.ingest --source folder --path DIR --metadata-csv plates.csv \\
        --config.data.folder.path_template='{plate}/{well}_s{site}_ch{channel}.tif' \\
        --config.data.uint16=shift --config.data.bit_depth=12 --out OUT
    python -m maejax.data.ingest --config configs/demo.py --out OUT   # a config's data
    python -m maejax.data.ingest ... --out gs://bucket/ar --shards 2000 \\
        --runner DataflowRunner -- --project P --region us-central1 ...   # Beam's options

Train from the output with --config.data.source=arrayrecord --config.data.path=OUT.
`--runner` (DirectRunner, DataflowRunner, FlinkRunner, SparkRunner, ...) runs the shards as an
Apache Beam pipeline (the `beam` extra; maejax/data/beam_ingest.py); the flags after `--` are
Beam's own pipeline options. Without it the shards are written here, `--threads` at a time.
"""

from __future__ import annotations

import functools
import logging
import sys
from typing import Sequence

from maejax import cli
from maejax import config as config_lib
from maejax import data
from maejax.data import shards


def parse_args(argv):
  p = cli.parser("python -m maejax.data.ingest", __doc__, config_lib.default_config().data,
                 progress=True)
  p.epilog = p.epilog.replace("--config.", "--config.data.")
  p.add_argument("--config", default=None,
                 help="take config.data from a config file, config.json or workdir "
                      "(default: the data defaults)")
  p.add_argument("--source", default=None,
                 choices=("synthetic", "folder", "rxrx1", "rxrx3_core", "arrayrecord"),
                 help="= --config.data.source")
  p.add_argument("--path", default=None, help="dataset root (= --config.data.path)")
  p.add_argument("--metadata-csv", default=None,
                 help="metadata CSV, relative to --path (= --config.data.metadata_csv)")
  p.add_argument("--channels", default=None,
                 help="physical channels, e.g. 0,1,2,3,4,5 (= --config.data.channels)")
  p.add_argument("--out", required=True, help="output directory for the shards")
  p.add_argument("--shards", type=int, default=None,
                 help="number of shards (default ~1 per 1000 sites)")
  p.add_argument("--options", default="group_size:1,uncompressed",
                 help="ArrayRecord writer options (e.g. 'group_size:1,zstd:1' to compress)")
  p.add_argument("--threads", type=int, default=4, help="threads decoding images")
  p.add_argument("--skip-bad-images", action="store_true",
                 help="skip and log bad sites (= --config.data.skip_bad_images=true)")
  p.add_argument("--runner", default=None,
                 help="run as an Apache Beam pipeline on this runner (e.g. DirectRunner, "
                      "DataflowRunner); Beam's pipeline options follow a bare `--`")
  argv = sys.argv[1:] if argv is None else list(argv)
  beam_args = argv[argv.index("--") + 1:] if "--" in argv else []
  args, overrides = cli.parse(p, argv[:len(argv) - len(beam_args) - bool(beam_args)])
  if beam_args and not args.runner:
    p.error("pipeline options after `--` need --runner (e.g. --runner DirectRunner)")
  args.beam_args = [f"--runner={args.runner}", *beam_args] if args.runner else []
  return args, overrides


def data_config(args, overrides):
  """config.data from --config, the shorthand flags, then the --config.* overrides."""
  flags = {"source": args.source, "path": args.path, "metadata_csv": args.metadata_csv,
           "channels": args.channels, "skip_bad_images": args.skip_bad_images or None}
  shorthand = [f"--config.data.{k}={'(' + v + ',)' if k == 'channels' else v}"
               for k, v in flags.items() if v is not None]
  return cli.load_config(args.config, shorthand + list(overrides),
                         default=config_lib.default_config()).data


def ingest(args, overrides) -> dict:
  """Writes the shards; returns the summary."""
  logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
  cfg = data_config(args, overrides)
  info = shards.ingest(data.make_source(cfg), args.out, num_shards=args.shards,
                       skip_bad_images=bool(cfg.skip_bad_images), options=args.options,
                       num_threads=args.threads, description=f"{cfg.source}:{cfg.path}",
                       progress=args.progress, beam_args=args.beam_args)
  summary = {k: info[k] for k in ("num_sites", "site_shape", "channel_ids", "bytes", "seconds")}
  summary.update(out=args.out, shards=len(info["shards"]), skipped=len(info["skipped"]),
                 runner=args.runner or "in-process")
  return summary


def _show(s: dict) -> None:
  print(f"wrote {s['num_sites']} sites ({s['bytes'] / 2**20:.1f} MiB) in {s['shards']} shards "
        f"to {s['out']} in {s['seconds']} s; skipped {s['skipped']}")


def main(argv: Sequence[str] | None = None) -> int:
  args, overrides = parse_args(argv)
  return cli.report(args, functools.partial(ingest, args, overrides), _show)
