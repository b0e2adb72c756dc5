"""`python -m maejax.benchmark --sweep WORKDIR... --out DIR [--blocks all|K,L] [--config.data.x=v]`.

    python -m maejax.benchmark --sweep runs/demo [runs/other ...] --out results/sweep
    python -m maejax.benchmark --sweep runs/demo --blocks all --out results/blocks

`--sweep`: for each training workdir, every kept checkpoint is embedded on its own screen
(its config.data; `--config.data.<field>=<value>` changes a field of it), batch-corrected and
scored against the screen's planted pairs (or --relationships), against its cumulative
training FLOPs. Writes `sweep.csv` (run, model, step, train_flops, images_seen, database,
recall at each threshold) and `recall_vs_flops.png` (recall of one database at 5/95 against
FLOPs on a log axis, one line per run), and with complexes (a synthetic screen's planted
ones, or a `*clusters*.tsv` beside --relationships) `sweep_complexes.csv`: the recall of each
complex's own pairs at each checkpoint (which complexes emerge with training).

`--blocks K,L,...|all`: the newest checkpoint of each run embedded from intermediate encoder
blocks (ViT blocks, MU-Net levels, ResNet stages; 1-based); writes `blocks.csv`,
`recall_vs_block.png` and `blocks_complexes.csv`.

Well tables are kept in `<out>/wells/` and reused on a rerun, so an interrupted sweep resumes
(maejax.eval.sweep, maejax.eval.scorer).
"""

from __future__ import annotations

import argparse
import functools
from typing import Sequence

import ml_collections

from maejax import cli
from maejax import data as data_lib
from maejax import workdir
from maejax.eval import correct as correct_lib
from maejax.eval import pipeline
from maejax.eval import scorer as scorer_lib
from maejax.eval import sweep


def _blocks(text):
  if text == "all":
    return "all"
  try:
    return [int(v) for v in text.split(",")]
  except ValueError:
    raise argparse.ArgumentTypeError(f"--blocks {text!r}: expected all or K,L,... "
                                     "(1-based)") from None


def parse_args(argv):
  p = cli.parser("python -m maejax.benchmark --sweep", __doc__,
                 ml_collections.ConfigDict({"data": data_lib.default_config()}), progress=True)
  p.add_argument("--sweep", nargs="+", required=True, metavar="WORKDIR",
                 help="training workdirs (python -m maejax.train)")
  p.add_argument("--out", required=True, help="output directory")
  p.add_argument("--blocks", type=_blocks, default=None,
                 help="sweep encoder blocks of the newest checkpoint instead: all or K,L")
  p.add_argument("--relationships", nargs="+", default=None,
                 help="relationship files/directory (default: the screen's planted pairs)")
  p.add_argument("--database", default=None,
                 help="database plotted (default: StringDB if scored, else the first)")
  p.add_argument("--correction", default="tvn", choices=correct_lib.METHODS,
                 help="batch correction (default tvn)")
  cli.add_embedding_flags(p, "embedding tile size (default: each screen's data.crop_size)")
  p.add_argument("--n-null", type=int, default=200,
                 help="random well sets per replicate count (replicate consistency)")
  return cli.parse(p, argv)


def make_scorer(args, overrides: Sequence[str]) -> scorer_lib.Scorer:
  relationships, clusters = pipeline.known_relationships(args.relationships)
  settings = pipeline.Settings(correction=args.correction, n_null=args.n_null, map_null_size=0)
  return scorer_lib.Scorer(workdir.path(args.out) / "wells", settings, overrides=overrides,
                           relationships=relationships, clusters=clusters,
                           crop_size=args.crop_size, crop_stats=args.crop_stats,
                           pool=args.pool,
                           batch_size=args.batch_size, progress=args.progress)


def _main(args, overrides) -> int:
  result = sweep.run(args.sweep, args.out, make_scorer(args, overrides), blocks=args.blocks,
                     database=args.database)
  print(result["table"].to_string(index=False, float_format=lambda v: f"{v:.3g}"))
  if result["complexes"] is not None:
    point = "step" if args.blocks is None else "block"
    shown = result["complexes"].query("threshold == '5-95'").pivot_table(
        index=["run", "complex"], columns=point, values="recall")
    print(f"recall 5/95 of each complex's own pairs, by {point}:")
    print(shown.to_string(float_format=lambda v: f"{v:.2f}"))
  print(f"wrote {', '.join(result['files'])} ({result['wall_s']:.0f} s)")
  if args.json:
    cli.print_json(dict(rows=result["table"].to_dict("records"), database=result["database"],
                        files=result["files"], wall_s=result["wall_s"]))
  return 0


def main(argv: Sequence[str] | None = None) -> int:
  args, overrides = parse_args(argv)
  return cli.run(functools.partial(_main, args, overrides))
