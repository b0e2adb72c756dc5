"""`python -m maejax.train --config configs/vitl8.py [--workdir DIR] [--config.field=value ...]`."""

import argparse
import json
import logging
import sys

from maejax.train import config as config_lib

EPILOG = """overrides: any config field, typed like its default, e.g.
  --config.batch_size=64 --config.model.mask_ratio=0.5 --config.mesh.fsdp=8
  --config.data.source=folder --config.data.path=/data/screen
an unknown field or a value of the wrong type is an error."""


def parse_args(argv):
  parser = argparse.ArgumentParser(
      prog="python -m maejax.train", description="Train (or resume) a masked autoencoder.",
      epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--config", required=True,
                      help="config file, optionally with an argument: configs/vitl8.py[:arg]")
  parser.add_argument("--workdir", default=None,
                      help="checkpoints, metrics.jsonl, TensorBoard events and plots go here "
                           "(default: ./runs/<config name>)")
  parser.add_argument("--resume", action=argparse.BooleanOptionalAction, default=True,
                      help="continue from the newest checkpoint in --workdir (default: on)")
  parser.add_argument("--progress", action=argparse.BooleanOptionalAction, default=True,
                      help="show the progress bar")
  parser.add_argument("--json", action="store_true",
                      help="print the run summary as one JSON object on the last line")
  return config_lib.parse_known_overrides(parser, argv)


def load(args, overrides):
  config = config_lib.load_config(args.config)
  config_lib.apply_overrides(config, overrides)
  return config


def main(argv=None) -> int:
  argv = sys.argv[1:] if argv is None else argv
  args, overrides = parse_args(argv)
  try:
    config = load(args, overrides)
  except (ValueError, FileNotFoundError) as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  from maejax.train import loop  # pylint: disable=g-import-not-at-top  (jax after arg checks)
  workdir = config_lib.workdir_for(config, args.workdir)
  try:
    summary = loop.train(config, workdir, resume=args.resume, progress=args.progress)
  except loop.NonFiniteLossError as e:
    print(f"error: {e}", file=sys.stderr)
    return 1
  except (ValueError, FileNotFoundError) as e:  # Bad input (data, config): one line, no trace.
    logging.debug("training stopped", exc_info=True)
    print(f"error: {e}", file=sys.stderr)
    return 2
  if args.json:
    print(json.dumps(summary))
  return 0


if __name__ == "__main__":
  sys.exit(main())
