"""Embed a model into a cached well table and score it: the one scorer of compare and sweep.

    scorer = Scorer("results/wells", pipeline.Settings(n_null=200, map_null_size=0))
    table = scorer.wells("demo_step1000", config, 1000, functools.partial(maejax.load, wd))
    source = scorer.source(scorer.data_config(config))
    result = scorer.score(table, source)      # run_benchmark result, planted pairs by default

Well tables are kept as `<wells_dir>/<name>.parquet` with what they were embedded from in
`<name>.json` (the run config, step, data, block and crop size); a table is reused only while
all of that is unchanged, so an interrupted sweep resumes and a retrained run is re-embedded.
Sources are made once per distinct data config (rendering a synthetic screen is the slow part).
"""

from __future__ import annotations

import copy
import dataclasses
import json
from typing import Callable, Sequence

import ml_collections
import pandas as pd

from maejax import api
from maejax import data as data_lib
from maejax import workdir
from maejax.eval import benchmark as bench
from maejax.eval import embed as embed_lib
from maejax.eval import io
from maejax.eval import pipeline

THRESHOLD_COLUMNS = {(5, 95): "recall_5_95", (10, 90): "recall_10_90"}


class Scorer:
  """Cached well tables of models on their screens, scored against known relationships.

  Args:
    wells_dir: where well tables are kept (local or gs://).
    settings: the benchmark settings (correction, n_null, ...) of `score`.
    overrides: `--config.data.<field>=<value>` applied to every embedded screen.
    relationships: {database: pairs}; None = the screen's planted pairs (synthetic source).
    clusters: a clusters TSV or {complex: genes} for the recall of each complex and the
      heat-map; None = the screen's planted complexes (synthetic source) when
      `relationships` is None too.
    crop_size: embedding tile size (None: each screen's data.crop_size; 0: whole sites).
    crop_stats: append each crop's per-channel mean and std to its embedding
      (api.crop_statistics).
    pool: token pooling of every model (models.pools; None: each model's own).
  """

  def __init__(self, wells_dir, settings: pipeline.Settings = pipeline.Settings(), *,
               overrides: Sequence[str] = (), relationships: dict | None = None,
               clusters=None, crop_size: int | None = None, crop_stats: bool = False,
               pool: str | None = None, batch_size: int = 64, progress: bool = True,
               log: Callable[[str], None] = print):
    self.wells_dir = workdir.path(wells_dir)
    self.settings, self.overrides = settings, list(overrides)
    self.relationships, self.crop_size, self.crop_stats = relationships, crop_size, crop_stats
    self.pool = pool
    self.clusters = pipeline.read_complexes(clusters)
    self.batch_size, self.progress, self.log = batch_size, progress, log
    self._sources = {}

  def with_pool(self, pool: str | None) -> "Scorer":
    """The same scorer embedding by `pool`; it shares the rendered sources."""
    other = copy.copy(self)
    other.pool = pool
    return other

  def data_config(self, config) -> ml_collections.ConfigDict:
    """The screen `config`'s model is embedded on: its data with the overrides."""
    return embed_lib.data_config(config, self.overrides)

  def source(self, data: ml_collections.ConfigDict) -> data_lib.Source:
    """The source of a data config, made once per distinct config."""
    key = json.dumps(workdir.jsonable(data.to_dict()), sort_keys=True)
    if key not in self._sources:
      self._sources[key] = data_lib.make_source(data)
    return self._sources[key]

  def path(self, name: str):
    return self.wells_dir / f"{name}.parquet"

  def wells(self, name: str, config, step: int, load: Callable[[], api.Model], *,
            block: int | None = None) -> pd.DataFrame:
    """The well table of the model of run `config` at `step` (0: initial weights).

    load() returns the model; it is called only when no kept table fits. block: embed the
    K-th encoder block (None: the last).
    """
    data = self.data_config(config)
    crop = embed_lib.crop_size_for(data, self.crop_size)
    key = workdir.jsonable(dict(config=config.to_dict(), step=step, data=data.to_dict(),
                                block=block, crop_size=crop))
    if self.crop_stats:  # Only then: tables kept before the option still fit.
      key["crop_stats"] = True
    if self.pool is not None:
      key["pool"] = self.pool
    table_file, key_file = self.path(name), self.wells_dir / f"{name}.json"
    if table_file.is_file() and key_file.is_file() and json.loads(key_file.read_text()) == key:
      return io.read_embeddings(table_file)
    source = self.source(data)
    self.log(f"{name}: embedding {len(source)} sites")
    embedder = embed_lib.make_embedder(load(), source, crop, batch_size=self.batch_size,
                                       pool=self.pool, block=block, crop_stats=self.crop_stats)
    table = embed_lib.embed_wells(embedder, source, crop,
                                  skip_bad_images=bool(data.get("skip_bad_images", False)),
                                  progress=self.progress)
    io.write_embeddings(table, table_file)
    workdir.write_text(key_file, json.dumps(key, sort_keys=True))
    return table

  def relationships_for(self, source) -> dict[str, pd.DataFrame]:
    """The given relationships, else the source's planted pairs as database `planted`."""
    if self.relationships is not None:
      return self.relationships
    pairs = getattr(source, "relationships", None)
    if pairs is None:
      raise ValueError("the screen has no planted relationships (not the synthetic screen); "
                       "pass --relationships DIR_OR_FILES")
    return {"planted": bench.undirected_pairs(pairs)}

  def clusters_for(self, source) -> dict | None:
    """{complex: genes} of `source`'s scores: the given clusters, else the source's planted
    complexes when scoring its planted pairs; None when there are none."""
    if self.clusters is not None or self.relationships is not None:
      return self.clusters
    return getattr(source, "clusters", None)

  def score(self, table: pd.DataFrame, source, *, correction: str | None = None,
            name: str = "the well table", parts=None) -> dict:
    """run_benchmark of a well table of `source`'s screen (correction: default the settings');
    `name` is the table's name in messages, `parts` its joined feature sets (or None)."""
    settings = self.settings
    if correction is not None:
      settings = dataclasses.replace(settings, correction=correction)
    return pipeline.run_benchmark(table, self.relationships_for(source), settings,
                                  complexes=self.clusters_for(source), source=name,
                                  compound_targets=compound_targets_for(source), parts=parts)


def compound_targets_for(source) -> pd.DataFrame | None:
  """The known compound targets of a synthetic screen with compounds, else None."""
  targets = getattr(getattr(source, "screen", None), "compound_targets", None)
  return targets if targets is not None and len(targets) else None


def recall_columns(result: dict) -> pd.DataFrame:
  """A run_benchmark result's recall as one row per database: [database, recall_5_95,
  recall_10_90 (other thresholds recall_<lower>_<upper>), pairs]."""
  recall = result["recall"]
  wide = recall.pivot_table(index="database", columns=["lower", "upper"], values="recall")
  wide.columns = [THRESHOLD_COLUMNS.get(tuple(int(v) for v in c), f"recall_{c[0]:g}_{c[1]:g}")
                  for c in wide.columns]
  wide["pairs"] = recall.groupby("database").pairs.first()
  return wide.reset_index()
