"""`python -m maejax.train --config configs/vitl8.py [--workdir DIR] [--config.field=value ...]`."""

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
  p.add_argument("--config", required=True,
                 help="config file, optionally with an argument: configs/vitl8.py[:arg]")
  p.add_argument("--workdir", default=None,
                 help="checkpoints, metrics.jsonl, TensorBoard events and plots go here, local "
                      "or gs://... (default: ./runs/<config name>)")
  p.add_argument("--resume", action=argparse.BooleanOptionalAction, default=True,
                 help="continue from the newest checkpoint in --workdir (default: on; "
                      "--no-resume refuses a workdir that holds checkpoints)")
  return cli.parse(p, argv)


def main(argv: Sequence[str] | None = None) -> int:
  args, overrides = parse_args(argv)

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
