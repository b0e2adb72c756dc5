"""`python -m maejax.train --config vitl8 [--workdir DIR] [--config.field=value ...]`.

`--config` takes a shipped config's name (`--list-configs` lists them) or a config file.
"""

from __future__ import annotations

import argparse
import sys
from typing import Sequence

from maejax import config as config_lib
from maejax import workdir as workdir_lib
from maejax import cli
from maejax.train import loop


def parse_args(argv):
  p = cli.parser("python -m maejax.train", "Train (or resume) a masked autoencoder.",
                 config_lib.default_config(), progress=True)
  p.add_argument("--config", default=None,
                 help="a shipped config's name or a config file, optionally with an argument: "
                      "vitl8[:arg] or configs/vitl8.py[:arg] (required)")
  p.add_argument("--list-configs", action="store_true",
                 help="list the shipped configs (names for --config) and exit")
  p.add_argument("--workdir", default=None,
                 help="checkpoints, metrics.jsonl, TensorBoard events and plots go here, local "
                      "or gs://... (default: ./runs/<config name>)")
  p.add_argument("--resume", action=argparse.BooleanOptionalAction, default=True,
                 help="continue from the newest checkpoint in --workdir (default: on; "
                      "--no-resume refuses a workdir that holds checkpoints)")
  return cli.parse(p, argv)


def main(argv: Sequence[str] | None = None) -> int:
  args, overrides = parse_args(argv)
  if args.list_configs:
    for name, doc in config_lib.describe_configs():
      print(f"{name:<12} {doc}")
    return 0

  def body():
    config = cli.load_config(args.config, overrides)
    workdir = args.workdir or workdir_lib.default_workdir(config)
    try:
      summary = loop.train(config, workdir, resume=args.resume, progress=args.progress)
    except loop.NonFiniteLossError as e:
      print(f"error: {e}", file=sys.stderr)
      return 1
    if args.json:
      cli.print_json(summary)
    return 0

  return cli.run(body)
