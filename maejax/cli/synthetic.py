"""`python -m maejax.data.synthetic --out DIR [--site-size 256 ...] [--json]`: writes the
embedded synthetic screen to disk (images + metadata.csv + relationships.csv)."""

from __future__ import annotations

import dataclasses
import functools
from typing import Sequence

from maejax import cli
from maejax.data import synthetic


def _bool(text: str) -> bool:
  return text.lower() in ("1", "true", "yes")


def parse_args(argv):
  p = cli.parser("python -m maejax.data.synthetic",
                 "Write a synthetic Cell Painting screen (images + metadata.csv + "
                 "relationships.csv) to --out.", progress=True)
  p.add_argument("--out", required=True, help="output directory")
  for f in dataclasses.fields(synthetic.ScreenSpec):
    kind = {"bool": _bool, "float": float}.get(str(f.type), int)
    p.add_argument("--" + f.name.replace("_", "-"), type=kind, default=f.default,
                   help=f"(default {f.default})")
  p.add_argument("--format", choices=("png", "tif"), default="png")
  p.add_argument("--workers", type=int, default=None, help="processes (default: cores)")
  return p.parse_args(argv)


def write(args) -> dict:
  spec = synthetic.ScreenSpec(**{f.name: getattr(args, f.name)
                                 for f in dataclasses.fields(synthetic.ScreenSpec)})
  return synthetic.write_screen(synthetic.SyntheticScreen(spec), args.out, fmt=args.format,
                                workers=args.workers, progress=args.progress)


def main(argv: Sequence[str] | None = None) -> int:
  args = parse_args(argv)
  return cli.report(args, functools.partial(write, args),
                    lambda s: print(f"wrote {s['sites']} sites to {args.out} in {s['seconds']} s"))
