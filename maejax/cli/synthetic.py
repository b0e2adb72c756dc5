"""`python -m maejax.data.synthetic --out DIR [--generator factors|organelles] [--site-size 256
...] [--json]`: writes a synthetic screen to disk (images + metadata.csv + relationships.csv +
clusters.tsv + genes.csv + spec.json).

Generators: `factors` (the default, the embedded screen every config uses:
maejax.data.synthetic) and `organelles` (a second screen drawn another way, in RxRx1's
metadata columns: maejax.data.synthetic.organelles; read it back with
--config.data.source=rxrx1). Each takes its own spec's fields as flags:
`--generator organelles --help` lists them.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
from typing import Sequence

from maejax import cli
from maejax.data import synthetic
from maejax.data.synthetic import organelles

GENERATORS = {"factors": (synthetic.ScreenSpec, synthetic.SyntheticScreen),
              "organelles": (organelles.OrganelleSpec, organelles.OrganelleScreen)}


def _bool(text: str) -> bool:
  return text.lower() in ("1", "true", "yes")


def _generator_flag(p: argparse.ArgumentParser) -> None:
  p.add_argument("--generator", choices=tuple(GENERATORS), default="factors",
                 help="factors (default: the embedded screen) or organelles (RxRx1's columns)")


def parse_args(argv):
  first = argparse.ArgumentParser(add_help=False)
  _generator_flag(first)
  spec_type, _ = GENERATORS[first.parse_known_args(argv)[0].generator]
  p = cli.parser("python -m maejax.data.synthetic", __doc__, progress=True)
  _generator_flag(p)
  p.add_argument("--out", required=True, help="output directory")
  for f in dataclasses.fields(spec_type):
    kind = {"bool": _bool, "float": float}.get(str(f.type), int)
    p.add_argument("--" + f.name.replace("_", "-"), type=kind, default=f.default,
                   help=f"(default {f.default})")
  p.add_argument("--format", choices=("png", "tif"), default="png")
  p.add_argument("--workers", type=int, default=None, help="processes (default: cores)")
  return p.parse_args(argv)


def write(args) -> dict:
  spec_type, screen_type = GENERATORS[args.generator]
  spec = spec_type(**{f.name: getattr(args, f.name) for f in dataclasses.fields(spec_type)})
  summary = synthetic.write_screen(screen_type(spec), args.out, fmt=args.format,
                                   workers=args.workers, progress=args.progress)
  return dict(summary, generator=args.generator)


def main(argv: Sequence[str] | None = None) -> int:
  args = parse_args(argv)
  return cli.report(args, functools.partial(write, args),
                    lambda s: print(f"wrote {s['sites']} sites ({s['generator']}) to {args.out} "
                                    f"in {s['seconds']} s"))
