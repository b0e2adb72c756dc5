"""The command-line layer: every `python -m maejax.<name>` lives here, one module a command.

The modules that `python -m` runs (`maejax/train/__main__.py`, `maejax/embed.py`, ...) are
two-line shims into this package. Commands share one config language (maejax.config:
`--config FILE[:arg]` and typed `--config.<field>=<value>`), one way to report a bad input
(`error: ...` on one line, exit 2) and one JSON form of their figures (`--json`: one object
on the last line).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import warnings
from typing import Callable, Sequence

import ml_collections

from maejax import config as config_lib
from maejax import workdir as workdir_lib

USER_ERRORS = (ValueError, FileNotFoundError, ImportError)


def parser(prog: str, description: str, fields=None, *,
           progress: bool = False) -> argparse.ArgumentParser:
  """An argparse parser with `--json` (and `--progress` if asked) whose `--help` ends with the
  config fields `--config.<field>=` sets."""
  p = argparse.ArgumentParser(
      prog=prog, description=description, formatter_class=argparse.RawDescriptionHelpFormatter,
      epilog=config_lib.fields_help(fields) if fields is not None else None)
  add_json_flag(p)
  if progress:
    p.add_argument("--progress", action=argparse.BooleanOptionalAction, default=True,
                   help="show progress bars (default: on)")
  return p


def add_json_flag(p: argparse.ArgumentParser) -> None:
  p.add_argument("--json", action="store_true",
                 help="print one JSON object (the figures) as the last stdout line")


def add_embedding_flags(p: argparse.ArgumentParser, crop_help: str, *,
                        several_pools: bool = False) -> None:
  """--crop-size, --batch-size, --crop-stats and --pool of every command that embeds screens
  (several_pools: --pool takes one or more, each scored as rows of its own)."""
  p.add_argument("--crop-size", type=int, default=None, help=crop_help)
  p.add_argument("--batch-size", type=int, default=64,
                 help="crops per embedding step, rounded up to a multiple of the device count")
  p.add_argument("--crop-stats", action="store_true",
                 help="append each crop's per-channel mean and std (what the model's per-crop "
                 "input standardization removes) to its embedding")
  p.add_argument("--pool", default=None, choices=("mean", "cls", "channelwise"),
                 nargs="+" if several_pools else None,
                 help="token pooling of ViT embeddings: mean of patch tokens, the CLS token, or "
                 "each channel's mean (channel-agnostic models; default: the model's own)"
                 + ("; several (e.g. --pool mean cls): each model is scored by each, rows "
                    "'<name> [<pool>]', tables <name>_<pool>*.parquet" if several_pools else ""))


def parse(p: argparse.ArgumentParser, argv: Sequence[str] | None):
  """(args, ["--config.field=value", ...]); other unknown flags are a usage error."""
  return config_lib.parse_known_overrides(p, sys.argv[1:] if argv is None else list(argv))


def load_config(spec: str | None, overrides: Sequence[str] = (),
                default: ml_collections.ConfigDict | None = None) -> ml_collections.ConfigDict:
  """`--config` (a config file, a config.json, or a workdir / pretrained folder holding one;
  `default` when not given) with the overrides applied."""
  if spec is None:
    if default is None:
      raise ValueError("--config is required (e.g. --config demo or --config configs/demo.py)")
    config = ml_collections.ConfigDict(default.to_dict())
  elif workdir_lib.path(spec.partition(":")[0]).is_dir():
    config = workdir_lib.read_config(spec)
  else:
    config = config_lib.load_config(spec)
  return config_lib.apply_overrides(config, overrides)


def _quiet_closed_loop(hook):
  """An unraisablehook that logs, instead of printing, the "Event loop is closed" errors
  Orbax's reader threads raise after a failed read of a damaged checkpoint."""
  def quiet(unraisable):
    if isinstance(unraisable.exc_value, RuntimeError) and "Event loop is closed" in str(
        unraisable.exc_value):
      logging.debug("after a failed checkpoint read: %s", unraisable.exc_value)
      return
    hook(unraisable)
  return quiet


def _one_line_warnings(format_warning):
  """A formatwarning that prints maejax's own warnings (expected situations, e.g. a database
  with no gene in the map) as one `warning: ...` line, without the source line echo."""
  package = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  def fmt(message, category, filename, lineno, line=None):
    if os.path.abspath(filename).startswith(package + os.sep):
      return f"warning: {message}\n"
    return format_warning(message, category, filename, lineno, line)
  return fmt


# Once per process, not per command run: commands run repeatedly in one process (tests).
sys.unraisablehook = _quiet_closed_loop(sys.unraisablehook)
warnings.formatwarning = _one_line_warnings(warnings.formatwarning)


def run(main: Callable[[], int | None]) -> int:
  """Runs a command's body: bad input is one `error: ...` line and exit 2, never a trace."""
  try:
    return int(main() or 0)
  except USER_ERRORS as e:
    print(f"error: {e}", file=sys.stderr)
    return 2


def report(args, compute: Callable[[], dict], show: Callable[[dict], None]) -> int:
  """`run` of the common command body: figures = compute(); show(figures); the --json line."""
  def body():
    figures = compute()
    show(figures)
    if args.json:
      print_json(figures)
  return run(body)


def print_json(obj) -> None:
  """The `--json` line: one object, last on stdout."""
  print(json.dumps(workdir_lib.jsonable(obj)))
