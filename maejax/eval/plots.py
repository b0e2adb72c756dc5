"""PNG figures of the benchmark: recall curves, complex heat-map, replicate consistency,
recall against training compute or encoder block.

Each `*_figure` function builds and returns the matplotlib figure (every one titled; recall
plots carry the random baseline); `plot_*` writes it as a PNG and returns the path.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import matplotlib
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from maejax import workdir
from maejax.eval import benchmark

matplotlib.use("Agg")  # PNG files only; no display (headless hosts).


def plot_recall_curves(curve: pd.DataFrame, path: str | Path, title: str = "") -> Path:
  """`recall_curves_figure` as a PNG at `path`."""
  return save_figure(recall_curves_figure(curve, title), path)


def recall_curves_figure(curve: pd.DataFrame, title: str = ""):
  """Recall vs percentile p (tails p and 100 - p), one line per database plus random.

  curve: [database, percentile, recall] rows, database "random" the baseline.
  """
  fig, ax = plt.subplots(figsize=(6, 4.5))
  for name, rows in curve[curve.database != "random"].groupby("database", sort=True):
    ax.plot(rows.percentile, rows.recall, label=name, lw=1.5)
  random = curve[curve.database == "random"]
  ax.plot(random.percentile, random.recall, "k--", lw=1, label="random")
  ax.set_xlabel("percentile p (pairs in the bottom p% or top p% of cosines)")
  ax.set_ylabel("recall of known relationships")
  ax.set_xlim(0, max(curve.percentile.max(), 1))
  ax.set_ylim(0, 1)
  ax.grid(alpha=0.3)
  ax.legend(fontsize=8)
  ax.set_title(title or "known-relationship recall")
  return fig


def random_recall(column: str) -> float:
  """The recall expected by chance for a `recall_<lower>_<upper>` column: the fraction of
  pairs the two tails select, (lower + 100 - upper) / 100 (0.10 for recall_5_95)."""
  lower, upper = (float(v) for v in column.split("_")[1:3])
  return (lower + 100.0 - upper) / 100.0


def sweep_figure(table: pd.DataFrame, x: str, y: str, *, database: str, logx: bool,
                 xlabel: str, title: str):
  """One line per run of recall column `y` (`recall_5_95`, ...) against `x` (training FLOPs,
  encoder block) for one database, with the random baseline as a dashed line.

  table: one row per (run, x, database) with columns run, model, `x`, `y`, database.
  """
  rows = table[table.database == database]
  fig, ax = plt.subplots(figsize=(6, 4.5))
  for run, part in rows.groupby("run", sort=True):
    part = part.sort_values(x)
    ax.plot(part[x], part[y], "o-", label=f"{run} ({part.model.iloc[0]})")
  ax.axhline(random_recall(y), color="k", ls="--", lw=1, label="random")
  if logx:
    ax.set_xscale("log")
  ax.set_xlabel(xlabel)
  ax.set_ylabel(f"recall {y[len('recall_'):].replace('_', '/')} ({database})")
  ax.set_ylim(0, 1)
  ax.grid(alpha=0.3, which="both")
  ax.legend(fontsize=8)
  ax.set_title(title)
  return fig


def plot_sweep(table: pd.DataFrame, x: str, y: str, path, **kwargs) -> Path:
  """`sweep_figure` as a PNG at `path` (recall_vs_flops.png, recall_vs_block.png)."""
  return save_figure(sweep_figure(table, x, y, **kwargs), path)


def read_clusters(path: str | Path, min_genes: int = 2) -> dict[str, list[str]]:
  """A clusters TSV: `name<TAB>gene gene gene` per line -> {name: genes}."""
  clusters = {}
  with open(path, encoding="utf-8") as f:
    for number, line in enumerate(f, 1):
      if not line.strip():
        continue
      parts = line.rstrip("\n").split("\t")
      if len(parts) < 2:
        raise ValueError(f"{path}:{number}: expected 'name<TAB>space-separated genes', got "
                         f"{line.strip()[:80]!r}")
      genes = list(dict.fromkeys(parts[-1].split()))
      if len(genes) >= min_genes:
        clusters[parts[0].strip()] = genes
  return clusters


def select_complexes(clusters: dict[str, list[str]], genes: Sequence[str], *,
                     min_genes: int = 3, max_complexes: int = 8, max_genes: int = 60
                     ) -> list[tuple[str, list[str]]]:
  """The largest complexes (by genes in the map), each gene used once, at most max_genes."""
  in_map = set(genes)
  candidates = sorted(((name, [g for g in members if g in in_map])
                       for name, members in clusters.items()),
                      key=lambda item: (-len(item[1]), item[0]))
  chosen, used = [], set()
  for name, members in candidates:
    members = [g for g in members if g not in used]
    if len(members) < min_genes or sum(len(m) for _, m in chosen) + len(members) > max_genes:
      continue
    chosen.append((name, members))
    used.update(members)
    if len(chosen) == max_complexes:
      break
  return chosen


def plot_complex_heatmap(features, genes: Sequence[str], clusters: dict[str, list[str]],
                         path: str | Path, **select_kwargs) -> Path | None:
  """`complex_heatmap_figure` as a PNG at `path`; None when no complex has enough genes in
  the map."""
  fig = complex_heatmap_figure(features, genes, clusters, **select_kwargs)
  return None if fig is None else save_figure(fig, path)


def complex_heatmap_figure(features, genes: Sequence[str], clusters: dict[str, list[str]],
                           **select_kwargs):
  """Cosine-similarity heat-map of the genes of known complexes, grouped by complex.

  features: [genes, dim], one row per entry of `genes`. Returns None when no complex has
  enough genes in the map.
  """
  chosen = select_complexes(clusters, genes, **select_kwargs)
  if not chosen:
    return None
  index = pd.Index(np.asarray(genes, dtype=str))
  order = [g for _, members in chosen for g in members]
  similarity = benchmark.cosine_similarity(np.asarray(features)[index.get_indexer(order)])
  size = 3 + 0.12 * len(order)
  fig, ax = plt.subplots(figsize=(size + 3, size + 1))
  image = ax.imshow(similarity, cmap="RdBu_r", vmin=-1, vmax=1, interpolation="nearest")
  fig.colorbar(image, ax=ax, orientation="horizontal", fraction=0.04, pad=0.12,
               label="cosine similarity")
  ax.set_xticks(range(len(order)), order, rotation=90, fontsize=6)
  ax.set_yticks(range(len(order)), order, fontsize=6)
  start, centers = 0, []
  for _, members in chosen:
    ax.add_patch(plt.Rectangle((start - 0.5, start - 0.5), len(members), len(members),
                               fill=False, lw=1.2, ec="k"))
    centers.append(start + (len(members) - 1) / 2)
    start += len(members)
  names = ax.secondary_yaxis("right")
  names.set_yticks(centers, [name[:40] for name, _ in chosen], fontsize=7)
  ax.set_title("known complexes (cosine similarity of gene profiles)")
  return fig


def plot_replicate_consistency(per_perturbation: pd.DataFrame, null_mean: float,
                               path: str | Path, correction: str = "") -> Path | None:
  """`replicate_figure` as a PNG at `path`; None when there are no replicates."""
  fig = replicate_figure(per_perturbation, null_mean, correction)
  return None if fig is None else save_figure(fig, path)


def replicate_figure(per_perturbation: pd.DataFrame, null_mean: float, correction: str = ""):
  """Histogram of replicate cosines (one per perturbation, column `cosine`) against the
  median cosine of random wells; the title names the batch correction. None when empty."""
  if per_perturbation.empty:
    return None
  fig, ax = plt.subplots(figsize=(5, 3.5))
  ax.hist(per_perturbation.cosine, bins=30, color="tab:blue", alpha=0.8, label="replicates")
  ax.axvline(null_mean, color="k", ls="--", label="random wells (median)")
  ax.set_xlabel("mean cosine between replicate wells")
  ax.set_ylabel("perturbations")
  ax.legend(fontsize=8)
  ax.set_title("replicate consistency" + (f" (correction: {correction})" if correction else ""))
  return fig


def plot_compound_auc(per_compound: pd.DataFrame, path: str | Path) -> Path | None:
  """`compound_auc_figure` as a PNG at `path`; None when no compound was scored."""
  fig = compound_auc_figure(per_compound)
  return None if fig is None else save_figure(fig, path)


def compound_auc_figure(per_compound: pd.DataFrame):
  """Histogram of per-compound AUCs of known targets (column `auc`) against the shuffled-target
  baseline (`baseline_auc`), medians dashed (maejax.eval.compound). None when empty."""
  if per_compound.empty:
    return None
  fig, ax = plt.subplots(figsize=(5, 3.5))
  bins = np.linspace(0, 1, 21)
  baseline = per_compound.baseline_auc.dropna()
  ax.hist(per_compound.auc, bins=bins, color="tab:blue", alpha=0.8, label="known targets")
  ax.hist(baseline, bins=bins, color="tab:gray", alpha=0.5, label="shuffled targets")
  ax.axvline(per_compound.auc.median(), color="tab:blue", ls="--", lw=1)
  if len(baseline):
    ax.axvline(baseline.median(), color="k", ls="--", lw=1)
  ax.set_xlabel("AUC of the compound's targets among all genes (|cosine|, max over doses)")
  ax.set_ylabel("compounds")
  ax.legend(fontsize=8)
  ax.set_title("compound-gene benchmark")
  return fig


def save_figure(fig, path) -> Path:
  """Writes a figure as PNG (creating its folder; local or bucket) and closes it."""
  fig.tight_layout()
  file = workdir.write_figure(fig, path)
  plt.close(fig)
  return file
