"""Recall against training compute (every kept checkpoint) and against encoder block.

    python -m maejax.eval.sweep --sweep runs/demo [runs/other ...] --out results/sweep
    python -m maejax.eval.sweep --blocks all --sweep runs/demo --out results/blocks

`--sweep`: for each training workdir, every kept checkpoint is embedded (maejax.eval.embed),
batch-corrected and scored (maejax.benchmark.run_benchmark); its cumulative training FLOPs
come from the checkpoint metadata (`train_flops`, the analytic count of maejax.train).
Writes `sweep.csv` (run, model, step, train_flops, images_seen, database, recall at each
threshold) and `recall_vs_flops.png` (recall of one database at 5/95 against FLOPs on a log
axis, one line per run).

`--blocks K,L,...|all`: the newest checkpoint of each run embedded from intermediate encoder
blocks (ViT blocks, MU-Net levels, ResNet stages; 1-based); writes `blocks.csv` and
`recall_vs_block.png`.

Well tables are kept in `<out>/wells/` and reused on a rerun, so an interrupted sweep resumes.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd

from maejax.eval import embed as embed_lib
from maejax.eval import io
from maejax.eval import plots

THRESHOLD_COLUMNS = {(5, 95): "recall_5_95", (10, 90): "recall_10_90"}


def num_blocks(model_config) -> int:
  """How many intermediate embeddings `embed(block=K)` offers (K = 1..n)."""
  kind = model_config.get("kind", "mae")
  if kind in ("mae", "wsl_vit"):
    return int(model_config.depth)
  if kind == "munet":
    return len(model_config.widths)
  if kind == "wsl_cnn":
    return len(model_config.stage_sizes)
  raise ValueError(f"model kind {kind!r} has no known block structure")


def checkpoint_metadata(workdir: str) -> dict[int, dict]:
  """{step: {"train_flops", "images_seen", ...}} of a training workdir's kept checkpoints."""
  # pylint: disable=g-import-not-at-top
  from maejax import api
  from maejax.train import checkpoint as train_checkpoint
  steps = api.checkpoint_steps(workdir)
  if not steps:
    raise FileNotFoundError(f"{workdir}: no checkpoints (expected a `python -m maejax.train` "
                            "workdir with checkpoints/<step>/)")
  ckpt_dir = api.checkpoint_dir(workdir)
  ckptr = train_checkpoint.Checkpointer(ckpt_dir, train_checkpoint.read_config(ckpt_dir),
                                        async_save=False)
  try:
    return {s: ckptr.metadata(s) for s in steps}
  finally:
    ckptr.manager.close()


class Scorer:
  """Embeds a checkpoint (cached as a well table) and scores it against the relationships."""

  def __init__(self, out: Path, *, eval_overrides=(), relationships=None, correction="tvn",
               crop_size=None, batch_size=64, n_null=200, progress=True, log=print):
    self.out, self.eval_overrides, self.relationships = out, list(eval_overrides), relationships
    self.correction, self.crop_size, self.batch_size = correction, crop_size, batch_size
    self.n_null, self.progress, self.log = n_null, progress, log
    self.sources = {}

  def source(self, data_config):
    from maejax import data as data_lib  # pylint: disable=g-import-not-at-top
    key = json.dumps(data_config.to_dict(), sort_keys=True, default=str)
    if key not in self.sources:
      self.sources[key] = data_lib.make_source(data_config)
    return self.sources[key]

  def wells(self, workdir, step, block=None) -> pd.DataFrame:
    import maejax  # pylint: disable=g-import-not-at-top
    name = f"{Path(workdir).name}_step{step}" + ("" if block is None else f"_block{block}")
    path = self.out / "wells" / f"{name}.parquet"
    if path.is_file():
      return io.read_embeddings(path)
    model = maejax.load(workdir, step=step)
    data_config = embed_lib.data_config_for(model.config, overrides=self.eval_overrides)
    self.log(f"{name}: embedding")
    table, _ = embed_lib.embed_wells(model, data_config, crop_size=self.crop_size,
                                     batch_size=self.batch_size, block=block,
                                     progress=self.progress, source=self.source(data_config))
    io.write_embeddings(table, path)
    return table

  def relationships_for(self, workdir):
    if self.relationships is not None:
      return self.relationships
    from maejax.eval import benchmark as bench  # pylint: disable=g-import-not-at-top
    from maejax.train import checkpoint as train_checkpoint  # pylint: disable=g-import-not-at-top
    from maejax import api  # pylint: disable=g-import-not-at-top
    config = train_checkpoint.read_config(api.checkpoint_dir(workdir))
    data_config = embed_lib.data_config_for(config, overrides=self.eval_overrides)
    pairs = getattr(self.source(data_config), "relationships", None)
    if pairs is None:
      raise ValueError(f"{workdir}'s screen has no planted relationships; pass --relationships")
    return {"planted": bench.undirected_pairs(pairs)}

  def score(self, table, workdir) -> pd.DataFrame:
    from maejax import benchmark  # pylint: disable=g-import-not-at-top
    result = benchmark.run_benchmark(table, self.relationships_for(workdir),
                                     correction=self.correction, n_null=self.n_null,
                                     map_null_size=0)
    recall = result["recall"]
    wide = recall.pivot_table(index="database", columns=["lower", "upper"], values="recall")
    wide.columns = [THRESHOLD_COLUMNS.get(tuple(int(v) for v in c), f"recall_{c[0]:g}_{c[1]:g}")
                    for c in wide.columns]
    wide["pairs"] = recall.groupby("database").pairs.first()
    return wide.reset_index()


def sweep_checkpoints(workdirs, scorer: Scorer) -> pd.DataFrame:
  """One row per (run, kept checkpoint, database)."""
  from maejax.train import checkpoint as train_checkpoint  # pylint: disable=g-import-not-at-top
  from maejax import api  # pylint: disable=g-import-not-at-top
  frames = []
  for workdir in workdirs:
    meta = checkpoint_metadata(workdir)
    model_name = train_checkpoint.read_config(api.checkpoint_dir(workdir)).model.name
    for step, m in meta.items():
      scores = scorer.score(scorer.wells(workdir, step), workdir)
      frames.append(scores.assign(run=Path(workdir).name, model=model_name, step=step,
                                  train_flops=float(m.get("train_flops", np.nan)),
                                  images_seen=m.get("images_seen")))
  table = pd.concat(frames, ignore_index=True)
  first = ["run", "model", "step", "train_flops", "images_seen", "database"]
  return table[first + [c for c in table.columns if c not in first]]


def sweep_blocks(workdirs, blocks, scorer: Scorer) -> pd.DataFrame:
  """One row per (run, block, database) for the newest checkpoint of each run."""
  from maejax.train import checkpoint as train_checkpoint  # pylint: disable=g-import-not-at-top
  from maejax import api  # pylint: disable=g-import-not-at-top
  frames = []
  for workdir in workdirs:
    config = train_checkpoint.read_config(api.checkpoint_dir(workdir))
    n = num_blocks(config.model)
    wanted = list(range(1, n + 1)) if blocks == "all" else list(blocks)
    bad = [b for b in wanted if not 1 <= b <= n]
    if bad:
      raise ValueError(f"--blocks {bad}: {config.model.name} has blocks 1..{n}")
    step = api.checkpoint_steps(workdir)[-1]
    for block in wanted:
      scores = scorer.score(scorer.wells(workdir, step, None if block == n else block), workdir)
      frames.append(scores.assign(run=Path(workdir).name, model=config.model.name, step=step,
                                  block=block, blocks=n))
  table = pd.concat(frames, ignore_index=True)
  first = ["run", "model", "step", "block", "blocks", "database"]
  return table[first + [c for c in table.columns if c not in first]]


def plot_lines(table: pd.DataFrame, x: str, y: str, path, *, database: str, logx: bool,
               xlabel: str, title: str) -> Path:
  """One line per run of `y` against `x` for one database."""
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  rows = table[table.database == database]
  fig, ax = plt.subplots(figsize=(6, 4.5))
  for run, part in rows.groupby("run", sort=True):
    part = part.sort_values(x)
    ax.plot(part[x], part[y], "o-", label=f"{run} ({part.model.iloc[0]})")
  if logx:
    ax.set_xscale("log")
  ax.set_xlabel(xlabel)
  ax.set_ylabel(f"recall {y[len('recall_'):].replace('_', '/')} ({database})")
  ax.set_ylim(0, 1)
  ax.grid(alpha=0.3, which="both")
  ax.legend(fontsize=8)
  ax.set_title(title)
  return plots.save_figure(fig, path)


def pick_database(table: pd.DataFrame, wanted: str | None) -> str:
  names = list(dict.fromkeys(table.database))
  if wanted is not None:
    if wanted not in names:
      raise ValueError(f"--database {wanted!r} is not among the scored databases {names}")
    return wanted
  return "StringDB" if "StringDB" in names else names[0]


def _blocks(text):
  if text == "all":
    return "all"
  try:
    return [int(v) for v in text.split(",")]
  except ValueError:
    raise argparse.ArgumentTypeError(f"--blocks {text!r}: expected all or K,L,... "
                                     "(1-based)") from None


def parse_args(argv):
  parser = argparse.ArgumentParser(prog="python -m maejax.eval.sweep", description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--sweep", nargs="+", required=True, metavar="WORKDIR",
                      help="training workdirs (python -m maejax.train)")
  parser.add_argument("--out", required=True, help="output directory")
  parser.add_argument("--blocks", type=_blocks, default=None,
                      help="sweep encoder blocks of the newest checkpoint instead: all or K,L")
  parser.add_argument("--relationships", nargs="+", default=None,
                      help="relationship files/directory (default: the screen's planted pairs)")
  parser.add_argument("--database", default=None,
                      help="database plotted (default: StringDB if scored, else the first)")
  parser.add_argument("--correction", default="tvn", help="batch correction (default tvn)")
  parser.add_argument("--crop-size", type=int, default=None)
  parser.add_argument("--batch-size", type=int, default=64)
  parser.add_argument("--n-null", type=int, default=200,
                      help="random well sets per replicate count (replicate consistency)")
  parser.add_argument("--progress", action=argparse.BooleanOptionalAction, default=True)
  parser.add_argument("--json", action="store_true",
                      help="print one JSON summary object as the last stdout line")
  from maejax.train import config as config_lib  # pylint: disable=g-import-not-at-top
  args, rest = config_lib.parse_known_overrides(parser, argv, ("--eval-data.",))
  return args, [r[len("--eval-"):] for r in rest]


def run(args, eval_overrides) -> dict:
  t0 = time.time()
  out = Path(args.out)
  relationships = None
  if args.relationships:
    from maejax.eval import benchmark as bench  # pylint: disable=g-import-not-at-top
    relationships = bench.load_relationships(args.relationships)
  for workdir in args.sweep:
    if not os.path.isdir(workdir):
      raise FileNotFoundError(f"--sweep {workdir}: no such directory")
  scorer = Scorer(out, eval_overrides=eval_overrides, relationships=relationships,
                  correction=args.correction, crop_size=args.crop_size,
                  batch_size=args.batch_size, n_null=args.n_null, progress=args.progress)
  if args.blocks is None:
    table = sweep_checkpoints(args.sweep, scorer)
    database = pick_database(table, args.database)
    csv, png = out / "sweep.csv", out / "recall_vs_flops.png"
    plot_lines(table, "train_flops", "recall_5_95", png, database=database, logx=True,
               xlabel="cumulative training FLOPs", title="recall vs training compute")
  else:
    table = sweep_blocks(args.sweep, args.blocks, scorer)
    database = pick_database(table, args.database)
    csv, png = out / "blocks.csv", out / "recall_vs_block.png"
    plot_lines(table, "block", "recall_5_95", png, database=database, logx=False,
               xlabel="encoder block (1-based)", title="recall vs encoder block")
  table.to_csv(csv, index=False)
  return dict(table=table, database=database, files=[str(csv), str(png)],
              wall_s=round(time.time() - t0, 1))


def main(argv: Sequence[str] | None = None) -> int:
  args, eval_overrides = parse_args(sys.argv[1:] if argv is None else argv)
  try:
    result = run(args, eval_overrides)
  except (ValueError, FileNotFoundError) as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  table = result["table"]
  print(table.to_string(index=False, float_format=lambda v: f"{v:.3g}"))
  print(f"wrote {', '.join(result['files'])} ({result['wall_s']:.0f} s)")
  if args.json:
    rows = [{k: (None if isinstance(v, float) and math.isnan(v) else
                 v.item() if hasattr(v, "item") else v) for k, v in r.items()}
            for r in table.to_dict("records")]
    print(json.dumps(dict(rows=rows, database=result["database"], files=result["files"],
                          wall_s=result["wall_s"])))
  return 0


if __name__ == "__main__":
  sys.exit(main())
