"""Input-pipeline speed: crops/s and MB/s per worker for the synthetic source, a PNG folder and
ArrayRecord shards (`python -m maejax.bench data`, maejax/cli/bench.py).

Each source is read through `train_iterator` in the main process with one reading thread, so
the figures are per CPU core; `--workers N` also times N Grain worker processes. The PNG folder
and the ArrayRecord shards are written once from the synthetic screen into --workdir.
`--ingest` instead times the ingest of that PNG folder (sites/s, MB/s of uint8 sites written)
in this process and as a Beam pipeline on the DirectRunner with 1 and 2 worker processes
(pipeline start-up included).
"""

from __future__ import annotations

import os
import time

from maejax.data import config as config_lib
from maejax.data import shards
from maejax.data import pipeline
from maejax.data import sources
from maejax.data import synthetic


def _time_iterator(config, batch_size: int, seconds: float, min_batches: int = 3) -> dict:
  it = pipeline.train_iterator(config, batch_size=batch_size, seed=0, shard_index=0, shard_count=1)
  batch = next(it)  # warm-up: worker start, file opening
  crop_bytes = batch["image"][0].nbytes
  n, t0 = 0, time.perf_counter()
  while n < min_batches or time.perf_counter() - t0 < seconds:
    next(it)
    n += 1
  dt = time.perf_counter() - t0
  if hasattr(it, "close"):
    it.close()
  crops = n * batch_size / dt
  return dict(crops_per_s=round(crops, 1), mb_per_s=round(crops * crop_bytes / 1e6, 1),
              crop_shape=list(batch["image"].shape[1:]), batches=n, seconds=round(dt, 2))


SOURCES = ("synthetic", "png_folder", "arrayrecord")
# Beam's pipeline options of each timed ingest (none: in this process).
INGEST_RUNS = {
    "local": [],
    "beam_direct_1_worker": ["--runner=DirectRunner", "--direct_num_workers=1"],
    "beam_direct_2_workers": ["--runner=DirectRunner", "--direct_num_workers=2",
                              "--direct_running_mode=multi_processing"],
}


def _spec(sites: int, site_size: int) -> dict:
  return dict(site_size=site_size, n_groups=4, genes_per_group=4, n_null_genes=0,
              n_experiments=1, plates_per_experiment=1, controls_per_plate=4,
              sites_per_well=max(1, sites // 20))


def ingest_rates(*, workdir: str, sites: int, site_size: int, num_shards: int,
                 num_threads: int, runs=tuple(INGEST_RUNS)) -> dict:
  """Times `shards.ingest` of a PNG folder of the synthetic screen for each of `runs`."""
  spec = _spec(sites, site_size)
  screen = synthetic.SyntheticScreen(**spec)
  png_dir = os.path.join(workdir, "png")
  synthetic.write_screen(screen, png_dir)
  c = config_lib.default_config()
  c.source, c.path = "folder", png_dir
  source = sources.make_source(c)
  results = {}
  for name in runs:
    args = INGEST_RUNS[name]
    t0 = time.perf_counter()
    info = shards.ingest(source, os.path.join(workdir, name), num_shards=num_shards,
                         num_threads=num_threads, beam_args=args)
    dt = time.perf_counter() - t0
    results[name] = dict(sites_per_s=round(info["num_sites"] / dt, 1),
                         mb_per_s=round(info["bytes"] / dt / 1e6, 1), seconds=round(dt, 2),
                         beam_options=args or None)
  return dict(bench="ingest", sites=len(screen), site_shape=info["site_shape"],
              shards=num_shards, threads_per_shard=num_threads, cpu_count=os.cpu_count(),
              runs=results)


def run(*, workdir: str, sites: int, site_size: int, crop_size: int, batch_size: int,
        seconds: float, workers: int, timed=SOURCES, write_workers: int | None = None) -> dict:
  """Writes the test data (with `write_workers` processes; default: up to 8), then times each
  source named in `timed` (of SOURCES)."""
  spec = _spec(sites, site_size)
  screen = synthetic.SyntheticScreen(**spec)
  png_dir, ar_dir = os.path.join(workdir, "png"), os.path.join(workdir, "arrayrecord")
  t0 = time.perf_counter()
  synthetic.write_screen(screen, png_dir, workers=write_workers)
  write_s = time.perf_counter() - t0

  def cfg(source, path="", n_workers=0):
    c = config_lib.default_config()
    c.source, c.path, c.crop_size = source, path, crop_size
    c.synthetic.update(spec)
    c.read_threads, c.worker_count = 1, n_workers
    return c

  t0 = time.perf_counter()
  shards.ingest(sources.make_source(cfg("folder", png_dir)), ar_dir, num_shards=4)
  ingest_s = time.perf_counter() - t0
  results = {}
  for name, c in [("synthetic", cfg("synthetic")), ("png_folder", cfg("folder", png_dir)),
                  ("arrayrecord", cfg("arrayrecord", ar_dir))]:
    if name not in timed:
      continue
    results[name] = _time_iterator(c, batch_size, seconds)
    if workers:
      multi = _time_iterator(cfg(c.source, c.path, workers), batch_size, seconds)
      results[name][f"crops_per_s_{workers}_workers"] = multi["crops_per_s"]
  return dict(bench="data", sites=len(screen), site_size=site_size, crop_size=crop_size,
              batch_size=batch_size, cpu_count=os.cpu_count(), per_worker=results,
              write_png_sites_per_s=round(len(screen) / write_s, 1),
              ingest_sites_per_s=round(len(screen) / ingest_s, 1))
