"""Known-relationship recall and replicate consistency of a perturbation map.

Definitions follow the EFAAR benchmark (Celik et al. 2024; Kraus et al. 2024):
- null: cosine similarities of all pairs of distinct perturbations in the map (each unordered
  pair once; a uniform random sample of pairs when there are more than `max_null_pairs`).
- a database's query: its gene pairs made undirected, self pairs and duplicates dropped, kept
  only when both genes are in the map.
- recall at (lower, upper) percent: the fraction of query pairs whose cosine is in the bottom
  `lower`% or the top (100 - `upper`)% of the null. "In the bottom p%" means at most p% of the
  null is <= the pair's cosine; "in the top" means at least `upper`% of the null is < it
  (the empirical-CDF percentile rank, as EFAAR's compute_recall). Random pairs score
  (lower + 100 - upper) / 100, e.g. 0.10 at (5, 95); `random_baseline` gives the exact value
  for the null at hand. With `tails="right"` (EFAAR's right-tail recall) only the top tail
  counts: random pairs then score (100 - upper) / 100.

Where the pairs come from (`relationships_for`): files or directories of entity1,entity2 pairs;
`efaar`, the CORUM / HuMAP / Reactome / SIGNOR / StringDB tables shipped in Recursion's
`efaar-benchmarking` package (located through its installed files, never imported; CORUM and
SIGNOR are CC BY-NC 4.0, non-commercial use only; HuMAP and StringDB CC BY 4.0; Reactome CC0);
or, given none, the planted pairs and complexes of the embedded synthetic screen when the table
is one of it.
"""

from __future__ import annotations

import importlib.metadata
import re
import warnings
from pathlib import Path
from typing import Iterable, Mapping, Sequence

import numpy as np
import pandas as pd
from scipy import stats

from maejax.data import synthetic
from maejax.eval import compound
from maejax.eval import io
from maejax.eval import similarity

THRESHOLDS = ((5, 95), (10, 90))
TAILS = ("both", "right")
CURVE_PERCENTILES = tuple(range(1, 51))
MAX_NULL_PAIRS = 10_000_000
EFAAR = "efaar"  # --relationships efaar: the tables of the efaar-benchmarking package.
EFAAR_DISTRIBUTION = "efaar-benchmarking"
EFAAR_DATABASES = ("CORUM", "HuMAP", "Reactome", "SIGNOR", "StringDB")
EFAAR_INSTALL = "pip install --no-deps efaar-benchmarking"
EFAAR_LICENCES = ("CORUM and SIGNOR are CC BY-NC 4.0 (non-commercial use only), HuMAP and "
                  "StringDB CC BY 4.0, Reactome CC0 1.0")


# ----------------------------------------------------------------------------- relationships

def undirected_pairs(pairs: pd.DataFrame) -> pd.DataFrame:
  """entity1,entity2 rows -> unique unordered pairs with entity1 < entity2, no self pairs."""
  a = pairs["entity1"].astype(str).str.strip().to_numpy()
  b = pairs["entity2"].astype(str).str.strip().to_numpy()
  first, second = np.where(a < b, a, b), np.where(a < b, b, a)
  out = pd.DataFrame({"entity1": first, "entity2": second})
  out = out[out.entity1 != out.entity2].drop_duplicates(ignore_index=True)
  return out


def _read_pairs(path: Path) -> pd.DataFrame | None:
  with open(path, encoding="utf-8", errors="replace") as f:
    header = f.readline()
  sep = "\t" if "\t" in header else ","
  if not {"entity1", "entity2"} <= {h.strip() for h in header.split(sep)}:
    return None
  frame = pd.read_csv(path, sep=sep, dtype=str, skipinitialspace=True)
  frame.columns = [c.strip() for c in frame.columns]
  return frame[["entity1", "entity2"]].dropna()


def load_relationships(sources: str | Path | Iterable[str | Path]) -> dict[str, pd.DataFrame]:
  """Reads relationship databases: a directory (every *.txt/*.csv with an entity1,entity2
  header), explicit files, or `efaar` (efaar_files). Returns {database name (file stem):
  undirected pairs}."""
  databases = {}
  for source in map(Path, expand_sources(sources)):
    if source.is_dir():
      files = sorted(p for p in source.iterdir() if p.suffix.lower() in (".txt", ".csv"))
      found = {p.stem: _read_pairs(p) for p in files}
      skipped = [k for k, v in found.items() if v is None]
      if skipped:
        warnings.warn(f"{source}: skipping files without an entity1,entity2 header: {skipped}",
                      stacklevel=2)
      found = {k: v for k, v in found.items() if v is not None}
      if not found:
        raise FileNotFoundError(
            f"no relationship files in {source}: expected *.txt or *.csv files whose header "
            "is entity1,entity2 (e.g. ../shared/benchmarks/relationships)")
      databases.update(found)
    elif source.is_file():
      pairs = _read_pairs(source)
      if pairs is None:
        raise ValueError(f"relationship file {source} has no entity1,entity2 header; expected "
                         "a CSV with columns entity1,entity2 (one gene pair a line)")
      databases[source.stem] = pairs
    else:
      raise FileNotFoundError(f"relationships {source} does not exist; pass a directory of "
                              "entity1,entity2 files or the files themselves")
  return {name: undirected_pairs(pairs) for name, pairs in databases.items()}


def efaar_files() -> list[Path]:
  """The relationship tables of the installed efaar-benchmarking package, found through its
  installed-files record (importlib.metadata), so none of its heavy modules is imported.

  Returns: [benchmark_annotations/<db>.txt for db in EFAAR_DATABASES].
  """
  try:
    dist = importlib.metadata.distribution(EFAAR_DISTRIBUTION)
  except importlib.metadata.PackageNotFoundError:
    raise FileNotFoundError(
        f"--relationships {EFAAR} reads the relationship tables of Recursion's "
        f"{EFAAR_DISTRIBUTION} package, which is not installed: {EFAAR_INSTALL} "
        f"({EFAAR_LICENCES})") from None
  found = {Path(f).stem: Path(dist.locate_file(f)) for f in dist.files or ()
           if Path(f).parent.name == "benchmark_annotations" and Path(f).suffix == ".txt"}
  missing = [d for d in EFAAR_DATABASES if d not in found or not found[d].is_file()]
  if missing:
    raise FileNotFoundError(
        f"{EFAAR_DISTRIBUTION} {dist.version} (at {dist.locate_file('')}) lacks "
        f"benchmark_annotations/{missing[0]}.txt; reinstall it: {EFAAR_INSTALL} "
        "--force-reinstall")
  return [found[d] for d in EFAAR_DATABASES]


def _synthetic_screen(genes: np.ndarray, experiments: np.ndarray | None):
  """The default embedded synthetic screen when a table holds exactly its genes (`G000`...)
  besides `EMPTY` controls, in `SYN-<k>` experiments; None for other tables. Other sets of
  `G<nnn>` genes (a non-default screen, whose complexes are unknown here) are an error."""
  screen = synthetic.SyntheticScreen()
  names = set(genes) - {synthetic.CONTROL}
  if experiments is not None and not all(re.fullmatch(r"SYN-\d+", e) for e in set(experiments)):
    return None
  if names == set(screen.spec.genes):  # A smaller screen's genes are a prefix: not enough.
    return screen
  if all(re.fullmatch(r"G\d{3}", g) for g in names):
    raise ValueError(
        f"the table looks like a synthetic screen ({len(names)} G<nnn> perturbations) but not "
        f"the default one ({len(screen.spec.genes)} genes), so its planted pairs are unknown "
        "here: write that screen with python -m maejax.data.synthetic --out SCREEN (same "
        "settings) and pass --relationships SCREEN/relationships.csv")
  return None


def expand_sources(sources) -> list:
  """Relationship sources as a list, `efaar` replaced by the package's files (efaar_files)."""
  sources = [sources] if isinstance(sources, (str, Path)) else list(sources)
  return [f for s in sources for f in (efaar_files() if str(s) == EFAAR else [s])]


def relationships_for(table: pd.DataFrame, sources, perturbation_col: str = "perturbation",
                      concentration_col: str = compound.CONCENTRATION):
  """The relationship databases (and clusters) a well table is scored against.

  Args:
    table: the well table (Metadata_* columns).
    sources: files / directories of entity1,entity2 pairs, `efaar` among them, or None: the
      planted pairs of the embedded synthetic screen, when the table's gene wells (those
      without a value in `concentration_col`; compounds are no genes) are one of it.
  Returns: (sources with `efaar` replaced by its files, or {"planted": pairs}; the planted
    complexes {name: genes} when planted, else None).
  """
  if sources is not None:
    return expand_sources(sources), None
  column = io.resolve_column(table, perturbation_col, what="perturbation",
                             flag="--perturbation-col")
  experiment = next((c for c in ("experiment", io.METADATA_PREFIX + "experiment")
                     if c in table.columns), None)
  concentration = compound.concentration_column(table, concentration_col)
  if concentration is not None:
    table = table[table[concentration].isna()]
  screen = _synthetic_screen(table[column].astype(str).to_numpy(),
                             None if experiment is None else table[experiment].astype(str))
  if screen is None:
    raise ValueError(
        "no --relationships given and the table is not one of the embedded synthetic screen "
        "(whose planted pairs are the default): pass --relationships DIR_OR_FILES (entity1,"
        f"entity2 pairs) or --relationships {EFAAR} ({EFAAR_INSTALL})")
  return {"planted": undirected_pairs(screen.relationships)}, dict(screen.clusters)


# ----------------------------------------------------------------------------- similarity

unit_rows = similarity.unit_rows


def cosine_similarity(features) -> np.ndarray:
  """[n, d] -> [n, n] cosine similarities."""
  u = unit_rows(features)
  return u @ u.T


def null_cosines(features, *, max_pairs: int = MAX_NULL_PAIRS, seed: int = 0) -> np.ndarray:
  """Sorted cosines of all unordered pairs of distinct rows (or `max_pairs` random pairs)."""
  u = unit_rows(features)
  n = len(u)
  if n < 2:
    raise ValueError(f"the map has {n} perturbation(s); similarities need at least 2")
  if n * (n - 1) // 2 <= max_pairs:
    i, j = np.triu_indices(n, k=1)
  else:
    rng = np.random.default_rng(seed)
    i = rng.integers(0, n, size=max_pairs)
    j = (i + rng.integers(1, n, size=max_pairs)) % n  # uniform over j != i
  return np.sort(similarity.pair_cosines(u, i, j))


def _tail_counts(sorted_null, values):
  """(#null <= v, #null < v) for each value v."""
  return (np.searchsorted(sorted_null, values, side="right"),
          np.searchsorted(sorted_null, values, side="left"))


def _in_tails(le, lt, size, lower, upper, tails="both"):
  top = lt * 100.0 >= upper * size
  return top if tails == "right" else (le * 100.0 <= lower * size) | top


def query_pairs(genes: Sequence[str], pairs: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
  """Row indices (i, j) of the pairs whose genes are both in `genes`."""
  index = pd.Index(np.asarray(genes, dtype=str))
  i = index.get_indexer(pairs["entity1"].to_numpy(dtype=str))
  j = index.get_indexer(pairs["entity2"].to_numpy(dtype=str))
  keep = (i >= 0) & (j >= 0)
  return i[keep], j[keep]


def score_relationships(features, genes: Sequence[str], relationships: Mapping[str, pd.DataFrame],
                        *, thresholds=THRESHOLDS, percentiles=CURVE_PERCENTILES,
                        max_null_pairs: int = MAX_NULL_PAIRS, seed: int = 0,
                        perturbation_col: str = "perturbation", tails: str = "both"
                        ) -> tuple[pd.DataFrame, pd.DataFrame]:
  """Known-relationship recall of a perturbation map.

  Args:
    features: [perturbations, d] one vector per perturbation (controls already removed).
    genes: [perturbations] the gene symbol of each row (unique).
    relationships: {database: DataFrame entity1,entity2}; made undirected here (again).
    thresholds: (lower, upper) percent pairs for the recall table.
    percentiles: p values of the recall curve, each scored at (p, 100 - p).
    perturbation_col: the table column `genes` came from (named when no database has a pair).
    tails: "both" (bottom `lower`% or top) or "right" (the top (100 - `upper`)% only).
  Returns:
    recall: DataFrame [database, lower, upper, recall, pairs, random_baseline, genes_in_map].
    curve: DataFrame [database, percentile, recall, random_baseline] (database "random" too).
  """
  if tails not in TAILS:
    raise ValueError(f"tails={tails!r}: expected one of {TAILS}")
  genes = np.asarray(genes, dtype=str)
  features = np.asarray(features)
  if features.shape[0] != len(genes):
    raise ValueError(f"{features.shape[0]} feature rows but {len(genes)} gene names")
  duplicated = pd.Index(genes)[pd.Index(genes).duplicated()].unique().tolist()
  if duplicated:
    raise ValueError(f"genes occur more than once in the map ({duplicated[:10]}); aggregate "
                     "wells to one row per perturbation first (maejax.eval.aggregate)")
  null = null_cosines(features, max_pairs=max_null_pairs, seed=seed)
  null_le, null_lt = _tail_counts(null, null)  # both non-decreasing along the sorted null
  u = unit_rows(features)

  def baseline(lower, upper):
    # _in_tails over the null itself: the lower tail is a prefix, the upper tail a suffix.
    prefix = np.searchsorted(null_le, lower * len(null) / 100.0, side="right")
    suffix = np.searchsorted(null_lt, upper * len(null) / 100.0, side="left")
    if tails == "right":
      return float(len(null) - suffix) / len(null)
    return float(prefix + len(null) - suffix - max(0, prefix - suffix)) / len(null)

  queries = {name: query_pairs(genes, undirected_pairs(pairs))
             for name, pairs in relationships.items()}
  if relationships and not any(len(i) for i, _ in queries.values()):
    raise ValueError(
        f"no pair of {', '.join(relationships)} has both genes in the map: the perturbation "
        f"column {perturbation_col} holds {len(genes)} names such as "
        f"{', '.join(genes[:4])}; name the column of gene symbols with --perturbation-col, "
        "or pass relationships over these names with --relationships")
  recall_rows, curve_rows = [], []
  for p in percentiles:
    curve_rows.append(dict(database="random", percentile=p, recall=baseline(p, 100 - p)))
  for name, (i, j) in queries.items():
    pairs = undirected_pairs(relationships[name])
    in_map = len(np.intersect1d(np.unique(np.r_[pairs.entity1, pairs.entity2]), genes))
    if len(i) == 0:
      warnings.warn(f"database {name}: none of its {len(pairs)} pairs has both genes in the "
                    f"map ({in_map} of its genes are in the map); recall is NaN", stacklevel=2)
    le, lt = _tail_counts(null, similarity.pair_cosines(u, i, j))

    def recall(lower, upper):
      return (float(np.mean(_in_tails(le, lt, len(null), lower, upper, tails))) if len(i)
              else np.nan)

    for lower, upper in thresholds:
      recall_rows.append(dict(database=name, lower=lower, upper=upper, recall=recall(lower, upper),
                              pairs=len(i), random_baseline=baseline(lower, upper),
                              genes_in_map=in_map))
    for p in percentiles:
      curve_rows.append(dict(database=name, percentile=p, recall=recall(p, 100 - p)))
  curve = pd.DataFrame(curve_rows, columns=["database", "percentile", "recall"])
  base = curve[curve.database == "random"].set_index("percentile").recall
  curve["random_baseline"] = curve.percentile.map(base)
  recall = pd.DataFrame(recall_rows, columns=["database", "lower", "upper", "recall", "pairs",
                                              "random_baseline", "genes_in_map"])
  return recall, curve


def complex_recall(features, genes: Sequence[str], complexes: Mapping[str, Sequence[str]], *,
                   thresholds=THRESHOLDS, max_null_pairs: int = MAX_NULL_PAIRS,
                   seed: int = 0) -> pd.DataFrame:
  """Recall of each complex's own pairs against the map's null (which complexes a map finds).

  Args:
    features: [perturbations, d] the map, as for score_relationships (same null).
    genes: [perturbations] unique gene symbols of the rows.
    complexes: {name: member genes} (a clusters TSV; CORUM's complexes).
  Returns: DataFrame [complex, genes_in_map, pairs, lower, upper, recall], one row per complex
    with 2 or more genes in the map and threshold; the others are left out.
  """
  index = pd.Index(np.asarray(genes, dtype=str))
  null = null_cosines(features, max_pairs=max_null_pairs, seed=seed)
  u = unit_rows(features)
  rows = []
  for name, members in complexes.items():
    rows_in_map = np.unique(index.get_indexer(np.asarray(members, dtype=str)))
    rows_in_map = rows_in_map[rows_in_map >= 0]
    if len(rows_in_map) < 2:
      continue
    a, b = np.triu_indices(len(rows_in_map), k=1)
    i, j = rows_in_map[a], rows_in_map[b]
    le, lt = _tail_counts(null, similarity.pair_cosines(u, i, j))
    for lower, upper in thresholds:
      rows.append(dict(complex=name, genes_in_map=len(rows_in_map), pairs=len(i), lower=lower,
                       upper=upper,
                       recall=float(np.mean(_in_tails(le, lt, len(null), lower, upper)))))
  return pd.DataFrame(rows, columns=["complex", "genes_in_map", "pairs", "lower", "upper",
                                     "recall"])


# ----------------------------------------------------------------------------- replicates

def _mean_pairwise_cosine(unit_sum, norms_sq_sum, k):
  """Mean cosine over the k(k-1) ordered pairs of a set from sum of unit vectors."""
  return (np.sum(unit_sum**2, axis=-1) - norms_sq_sum) / (k * (k - 1))


def _draw_without_replacement(rng, pool, count, n_null):
  """[n_null, count] rows of `pool`, distinct within each row (with replacement if huge)."""
  if count >= len(pool):
    return np.broadcast_to(pool, (n_null, len(pool)))
  if n_null * len(pool) > 20_000_000:  # repeats are then negligible
    return pool[rng.integers(0, len(pool), size=(n_null, count))]
  return pool[np.argpartition(rng.random((n_null, len(pool))), count, axis=1)[:, :count]]


def replicate_consistency(features, perturbation: Sequence, batch: Sequence | None = None, *,
                          n_null: int = 1000, seed: int = 0, alpha: float = 0.05
                          ) -> tuple[pd.DataFrame, dict]:
  """Do replicate wells of a perturbation agree more than random wells?

  For each perturbation with k >= 2 wells: the mean cosine similarity over pairs of its wells,
  against a null of `n_null` random sets of k wells with the same batches (as EFAAR: a
  perturbation with 2 wells in batch A and 1 in B is compared with random sets of 2 wells of A
  and 1 of B, so shared batch effects do not count as consistency; one batch when `batch` is
  None); p = (1 + #null >= observed) / (1 + n_null).
  Args: features [wells, d] (controls removed), perturbation [wells] labels, batch [wells].
  Returns: per-perturbation DataFrame [perturbation, replicates, cosine, null_mean, p_value] and
    a summary dict: perturbations, median_cosine, median_null_cosine, fraction_significant
    (p < alpha; random = alpha) and binomial_p_value of that fraction against alpha.
  """
  u = unit_rows(features)
  norms_sq = np.sum(u**2, axis=1)
  codes, labels = pd.factorize(np.asarray(perturbation), sort=True)
  batch_codes = (np.zeros(len(u), dtype=np.int64) if batch is None
                 else pd.factorize(np.asarray(batch))[0])
  pools = [np.flatnonzero(batch_codes == b) for b in range(batch_codes.max() + 1)]
  rng = np.random.default_rng(seed)
  sums: dict[tuple[int, int], tuple[np.ndarray, np.ndarray]] = {}  # (batch, count) -> draws
  nulls: dict[tuple, np.ndarray] = {}
  order = np.argsort(codes, kind="stable")
  groups = np.split(order, np.flatnonzero(np.diff(codes[order])) + 1) if len(order) else []
  rows = []
  for label, members in zip(labels, groups):
    k = len(members)
    if k < 2:
      continue
    observed = _mean_pairwise_cosine(u[members].sum(0), norms_sq[members].sum(), k)
    composition = tuple(zip(*np.unique(batch_codes[members], return_counts=True)))
    if composition not in nulls:
      for part in composition:
        if part not in sums:
          draws = _draw_without_replacement(rng, pools[part[0]], part[1], n_null)
          sums[part] = (u[draws].sum(1), norms_sq[draws].sum(1))
      unit_sum = sum(sums[part][0] for part in composition)
      norm_sum = sum(sums[part][1] for part in composition)
      nulls[composition] = _mean_pairwise_cosine(unit_sum, norm_sum, k)
    null = nulls[composition]
    rows.append(dict(perturbation=label, replicates=k, cosine=float(observed),
                     null_mean=float(null.mean()),
                     p_value=float((1 + np.sum(null >= observed)) / (1 + n_null))))
  table = pd.DataFrame(rows, columns=["perturbation", "replicates", "cosine", "null_mean",
                                      "p_value"])
  n = len(table)
  if n == 0:
    warnings.warn("no perturbation has 2 or more replicate wells; replicate consistency is "
                  "NaN", stacklevel=2)
  significant = int(np.sum(table.p_value < alpha))
  summary = dict(
      perturbations=n,
      median_cosine=float(table.cosine.median()) if n else np.nan,
      median_null_cosine=float(np.median(np.concatenate(list(nulls.values())))) if n else np.nan,
      fraction_significant=significant / n if n else np.nan,
      alpha=alpha,
      binomial_p_value=float(stats.binomtest(significant, n, alpha, alternative="greater").pvalue)
      if n else np.nan,
  )
  return table, summary
