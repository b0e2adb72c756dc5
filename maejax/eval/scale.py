"""The benchmark at genome scale: a synthetic well table of any size, and the time and memory
of each step of maejax.benchmark's real path on it (`python -m maejax.bench benchmark`).

Memory is the process's resident-set high-water mark (VmHWM of /proc/self/status: NumPy's
buffers included, which tracemalloc misses), reset before each step by writing 5 to
/proc/self/clear_refs, so a step's peak is its own; where the kernel refuses the reset the
peaks are cumulative (`peak_reset` False in the result).
"""

from __future__ import annotations

import contextlib
import time
from pathlib import Path

import numpy as np
import pandas as pd

from maejax.eval import benchmark as bench
from maejax.eval import io
from maejax.eval import mean_ap
from maejax.eval import pipeline

CONTROL = "EMPTY"
COMPLEX_SIZE = 5


def synthetic_wells(wells: int, features: int, genes: int, *, control_fraction: float = 0.08,
                    batches: int = 50, pairs: int = 300_000, effect: float = 0.3,
                    seed: int = 0) -> tuple[pd.DataFrame, pd.DataFrame]:
  """A random well table shaped like a genome-wide screen, and known pairs over its genes.

  Genes fall into complexes of COMPLEX_SIZE sharing a random phenotype (`effect` standard
  deviations a feature); every batch adds its own offset; features are float32 N(0, 1) noise
  on top. Pairs: every pair within a complex, then random gene pairs up to `pairs`.
  Returns: (table: Metadata_perturbation, _is_control, _experiment, _plate, _well and
    `features` float32 columns, one row per well; pairs: entity1, entity2).
  """
  rng = np.random.default_rng(seed)
  names = np.array([f"GENE{g:05d}" for g in range(genes)])
  is_control = rng.random(wells) < control_fraction
  gene = rng.integers(0, genes, size=wells)
  first_wells = np.flatnonzero(~is_control)[:genes]
  gene[first_wells] = np.arange(len(first_wells))  # every gene has a well
  batch = np.sort(rng.integers(0, batches, size=wells))
  phenotype = rng.standard_normal((genes // COMPLEX_SIZE + 1, features), dtype=np.float32)
  x = rng.standard_normal((wells, features), dtype=np.float32)
  x[~is_control] += effect * phenotype[gene[~is_control] // COMPLEX_SIZE]
  x += 0.5 * rng.standard_normal((batches, features), dtype=np.float32)[batch]
  table = pd.DataFrame(x, columns=[f"feature_{i}" for i in range(features)], copy=False)
  metadata = pd.DataFrame({
      "Metadata_perturbation": np.where(is_control, CONTROL, names[gene]),
      "Metadata_is_control": is_control,
      "Metadata_experiment": [f"BATCH-{b:03d}" for b in batch],
      "Metadata_plate": [f"P{p}" for p in batch * 100 + np.arange(wells) // 1380 % 100],
      "Metadata_well": [f"W{i % 1380:04d}" for i in range(wells)],
  })
  a, b = np.triu_indices(COMPLEX_SIZE, k=1)
  first = np.arange(0, genes - COMPLEX_SIZE + 1, COMPLEX_SIZE)[:, None]
  planted = np.stack([(first + a).ravel(), (first + b).ravel()], axis=1)
  extra = rng.integers(0, genes, size=(max(0, pairs - len(planted)), 2))
  pair_rows = np.concatenate([planted, extra])[:pairs]
  pair_table = pd.DataFrame({"entity1": names[pair_rows[:, 0]], "entity2": names[pair_rows[:, 1]]})
  return pd.concat([metadata, table], axis=1), pair_table


def _status_gib(field: str) -> float:
  with open("/proc/self/status") as f:
    for line in f:
      if line.startswith(field + ":"):
        return int(line.split()[1]) / 2**20
  return float("nan")


def _reset_peak() -> bool:
  try:
    with open("/proc/self/clear_refs", "w") as f:
      f.write("5")
    return True
  except OSError:
    return False


class Stages:
  """`with stages("name"): ...` records the step's wall and CPU seconds (all threads), the
  resident set before it and its peak (GiB) in `stages.rows`; `log` gets each row's line as
  the step ends."""

  def __init__(self, log=None):
    self.rows: list[dict] = []
    self.peak_reset = True
    self.log = log

  @contextlib.contextmanager
  def __call__(self, name: str):
    before = _status_gib("VmRSS")
    self.peak_reset &= _reset_peak()
    start, cpu = time.perf_counter(), time.process_time()
    yield
    row = dict(stage=name, seconds=time.perf_counter() - start,
               cpu_seconds=time.process_time() - cpu, rss_before_gib=before,
               peak_rss_gib=_status_gib("VmHWM"))
    self.rows.append(row)
    if self.log is not None:
      self.log(format_stage(row))


def format_stage(row: dict) -> str:
  return (f"{row['stage']:>22}: {row['seconds']:8.1f} s wall {row['cpu_seconds']:8.1f} s CPU  "
          f"peak RSS {row['peak_rss_gib']:6.2f} GiB (from {row['rss_before_gib']:.2f})")


def run(wells: int, features: int, genes: int, out_dir, *, pairs: int = 300_000,
        batches: int = 50, map_null_size: int = mean_ap.NULL_SIZE, n_null: int = 1000,
        seed: int = 0, with_plots: bool = True, log=None) -> dict:
  """Builds synthetic_wells, writes it as Parquet and the pairs as CSV into `out_dir`, then
  times maejax.benchmark's path on them: read, the steps of pipeline.run_benchmark, and
  write_outputs (CSVs, the map, the plots).

  log: called with each step's line as it ends (e.g. print).
  Returns: dict(stages=[{stage, seconds, cpu_seconds, rss_before_gib, peak_rss_gib}],
    total_seconds, total_cpu_seconds,
    peak_rss_gib (the largest step peak), peak_reset, the benchmark's summary figures).
  """
  out_dir = Path(out_dir)
  out_dir.mkdir(parents=True, exist_ok=True)
  stages = Stages(log)
  with stages("build"):
    table, pair_table = synthetic_wells(wells, features, genes, pairs=pairs, batches=batches,
                                        seed=seed)
    io.write_embeddings(table, out_dir / "wells.parquet")
    pair_table.to_csv(out_dir / "pairs.csv", index=False)
    del table, pair_table
  start, cpu = time.perf_counter(), time.process_time()
  with stages("read"):
    table = io.read_embeddings(out_dir / "wells.parquet")
    relationships = bench.load_relationships(out_dir / "pairs.csv")
  settings = pipeline.Settings(map_null_size=map_null_size, n_null=n_null, seed=seed)
  result = pipeline.run_benchmark(table, relationships, settings, stage=stages,
                                  source=out_dir / "wells.parquet")
  del table
  files = []
  if with_plots:
    with stages("write"):
      files = pipeline.write_outputs(result, out_dir / "results")
  summary = pipeline.summary(result, files)
  timed = [r for r in stages.rows if r["stage"] != "build"]
  return dict(wells=wells, features=features, genes=genes, pairs=pairs, batches=batches,
              map_null_size=map_null_size, stages=stages.rows,
              total_seconds=time.perf_counter() - start,
              total_cpu_seconds=time.process_time() - cpu,
              peak_rss_gib=max(r["peak_rss_gib"] for r in timed), peak_reset=stages.peak_reset,
              perturbations=summary["perturbations"], recall=summary["recall"],
              mean_average_precision=summary["mean_average_precision"])
