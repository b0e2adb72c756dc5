"""Recall against training compute (every kept checkpoint) and against encoder block.

`sweep_checkpoints`: for each training workdir, every kept checkpoint is embedded, batch-
corrected and scored (maejax.eval.scorer); its cumulative training FLOPs come from the
checkpoint metadata (`train_flops`, the analytic count of maejax.train). `sweep_blocks`: the
newest checkpoint of each run embedded from intermediate encoder blocks (ViT blocks, MU-Net
levels, ResNet stages; 1-based). `run` writes `sweep.csv` + `recall_vs_flops.png` or
`blocks.csv` + `recall_vs_block.png`, and with complexes (planted, or a clusters TSV) the recall
of each complex at each point, `sweep_complexes.csv` or `blocks_complexes.csv`: which complexes
emerge with training or depth. The command line is `python -m maejax.benchmark --sweep`
(maejax/cli/sweep.py).
"""

from __future__ import annotations

import functools
import time
from typing import Sequence

import numpy as np
import pandas as pd

from maejax import api
from maejax import workdir as workdir_lib
from maejax.eval import io
from maejax.eval import plots
from maejax.eval import scorer as scorer_lib

CHECKPOINT_COLUMNS = ["run", "model", "step", "train_flops", "images_seen", "database"]
BLOCK_COLUMNS = ["run", "model", "step", "block", "blocks", "database"]


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


def checkpoints(workdir) -> dict[int, tuple]:
  """{step: (config, metadata {"train_flops", "images_seen", ...})} of a training workdir's
  kept checkpoints."""
  steps = workdir_lib.checkpoint_steps(workdir)
  if not steps:
    raise FileNotFoundError(f"{workdir}: no checkpoints (expected a `python -m maejax.train` "
                            "workdir with checkpoints/<step>/)")
  with workdir_lib.manager(workdir) as m:
    return {s: (workdir_lib.checkpoint_config(m, s), workdir_lib.checkpoint_metadata(m, s))
            for s in steps}


def _scores(scorer: scorer_lib.Scorer, workdir, step: int, config,
            block=None) -> tuple[pd.DataFrame, pd.DataFrame | None]:
  """One row per database of checkpoint `step` (embedded from `block`), and its recall of each
  complex (benchmark.complex_recall rows; None without complexes)."""
  name = f"{workdir_lib.path(workdir).name}_step{step}" + ("" if block is None
                                                           else f"_block{block}")
  load = functools.partial(api.load, workdir, step=step)
  table = scorer.wells(name, config, step, load, block=block)
  source = scorer.source(scorer.data_config(config))
  result = scorer.score(table, source, name=name)
  return scorer_lib.recall_columns(result), result["complex_recall"]


def _ordered(frames: list[pd.DataFrame], first: list[str]) -> pd.DataFrame | None:
  frames = [f for f in frames if f is not None]
  if not frames:
    return None
  table = pd.concat(frames, ignore_index=True)
  first = [c for c in first if c in table.columns]  # Complex rows have no database.
  return table[first + [c for c in table.columns if c not in first]]


def _points(frames: list[tuple], first: list[str]) -> tuple[pd.DataFrame, pd.DataFrame | None]:
  """(recall table, complex table) of [(recall, complexes, {column: value of the point})]."""
  recall = _ordered([r.assign(**point) for r, _, point in frames], first)
  by_complex = _ordered([None if c is None else c.assign(**point) for _, c, point in frames],
                        first)
  return recall, by_complex


def sweep_checkpoints(workdirs: Sequence,
                      scorer: scorer_lib.Scorer) -> tuple[pd.DataFrame, pd.DataFrame | None]:
  """One row per (run, kept checkpoint, database); and per (run, checkpoint, complex,
  threshold) when there are complexes (else None)."""
  frames = []
  for workdir in workdirs:
    for step, (config, meta) in checkpoints(workdir).items():
      recall, by_complex = _scores(scorer, workdir, step, config)
      frames.append((recall, by_complex, dict(
          run=workdir_lib.path(workdir).name, model=config.model.name, step=step,
          train_flops=float(meta.get("train_flops", np.nan)),
          images_seen=meta.get("images_seen"))))
  return _points(frames, CHECKPOINT_COLUMNS)


def sweep_blocks(workdirs: Sequence, blocks,
                 scorer: scorer_lib.Scorer) -> tuple[pd.DataFrame, pd.DataFrame | None]:
  """One row per (run, block, database) for the newest checkpoint of each run; and per (run,
  block, complex, threshold) when there are complexes (else None).

  blocks: "all" or 1-based block numbers.
  """
  frames = []
  for workdir in workdirs:
    step, (config, _) = max(checkpoints(workdir).items())
    n = num_blocks(config.model)
    wanted = list(range(1, n + 1)) if blocks == "all" else list(blocks)
    bad = [b for b in wanted if not 1 <= b <= n]
    if bad:
      raise ValueError(f"--blocks {bad}: {config.model.name} has blocks 1..{n}")
    for block in wanted:
      recall, by_complex = _scores(scorer, workdir, step, config, None if block == n else block)
      frames.append((recall, by_complex, dict(run=workdir_lib.path(workdir).name,
                                              model=config.model.name, step=step, block=block,
                                              blocks=n)))
  return _points(frames, BLOCK_COLUMNS)


def pick_database(table: pd.DataFrame, wanted: str | None) -> str:
  names = list(dict.fromkeys(table.database))
  if wanted is not None:
    if wanted not in names:
      raise ValueError(f"--database {wanted!r} is not among the scored databases {names}")
    return wanted
  return "StringDB" if "StringDB" in names else names[0]


def run(workdirs: Sequence, out_dir, scorer: scorer_lib.Scorer, *, blocks=None,
        database: str | None = None) -> dict:
  """The checkpoint sweep (blocks None) or the block sweep; writes its CSV and plot.

  Returns {"table", "complexes" (None without complexes), "database" (plotted), "files",
  "wall_s"}.
  """
  t0 = time.time()
  out = workdir_lib.path(out_dir)
  for workdir in workdirs:
    if not workdir_lib.path(workdir).is_dir():
      raise FileNotFoundError(f"--sweep {workdir}: no such directory")
  if blocks is None:
    table, by_complex = sweep_checkpoints(workdirs, scorer)
    csv, png, complex_csv = "sweep.csv", "recall_vs_flops.png", "sweep_complexes.csv"
    plot = dict(x="train_flops", logx=True, xlabel="cumulative training FLOPs",
                title="recall vs training compute")
  else:
    table, by_complex = sweep_blocks(workdirs, blocks, scorer)
    csv, png, complex_csv = "blocks.csv", "recall_vs_block.png", "blocks_complexes.csv"
    plot = dict(x="block", logx=False, xlabel="encoder block (1-based)",
                title="recall vs encoder block")
  database = pick_database(table, database)
  names = [csv, png] + ([] if by_complex is None else [complex_csv])
  with workdir_lib.output_set(out, {csv, png, complex_csv}) as stage:  # All or none.
    plots.plot_sweep(table, y="recall_5_95", path=stage / png, database=database, **plot)
    io.write_embeddings(table, stage / csv)
    if by_complex is not None:
      io.write_embeddings(by_complex, stage / complex_csv)
  return dict(table=table, complexes=by_complex, database=database,
              files=[str(out / name) for name in names], wall_s=round(time.time() - t0, 1))
