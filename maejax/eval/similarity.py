"""Cosine similarities of large tables, in blocks that bound memory.

Features keep their precision: float32 rows give float32 similarities (a genome-scale map of
wells is 250k x 1,024: 1 GiB in float32), anything else float64.
"""

from __future__ import annotations

import numpy as np

BLOCK_SIZE = 1 << 24  # similarities per block: 64 MiB in float32


def float_dtype(features) -> np.dtype:
  """float32 for float32 input, else float64."""
  return np.dtype(np.float32 if np.asarray(features).dtype == np.float32 else np.float64)


def unit_rows(features) -> np.ndarray:
  """Rows scaled to unit L2 norm; zero rows stay zero (cosine 0 with everything)."""
  x = np.asarray(features, dtype=float_dtype(features))
  norm = np.linalg.norm(x, axis=1, keepdims=True)
  return x / np.where(norm == 0.0, 1.0, norm)


def row_blocks(rows: int, columns: int, block_size: int = BLOCK_SIZE):
  """Slices of `rows` whose blocks of [block rows, columns] hold about `block_size` values."""
  step = max(1, block_size // max(columns, 1))
  return [slice(start, min(start + step, rows)) for start in range(0, rows, step)]


def pair_cosines(u: np.ndarray, i: np.ndarray, j: np.ndarray, *,
                 block_size: int = BLOCK_SIZE) -> np.ndarray:
  """Cosines u[i[p]] . u[j[p]] of unit rows u [n, d] for pairs p, in bounded memory.

  Many pairs per row (all pairs, or a sampled null): the rows' similarity blocks
  u[block] @ u.T are computed once and the pairs read out of them (the values of u @ u.T);
  few pairs: gathered in chunks of pairs.
  Returns: [pairs] in u's dtype.
  """
  i, j = np.asarray(i, dtype=np.int64), np.asarray(j, dtype=np.int64)
  n, d = u.shape
  out = np.empty(len(i), dtype=u.dtype)
  # Dense (every pair, or many per row): a matmul per row block costs less than the gathers.
  if len(i) * d > 4 * n * n or len(i) >= n * (n - 1) // 2:
    order = np.argsort(i, kind="stable")
    starts = np.searchsorted(i[order], np.arange(0, n + 1))
    for rows in row_blocks(n, n, block_size):
      picked = order[starts[rows.start]:starts[rows.stop]]
      block = u[rows] @ u.T
      out[picked] = block[i[picked] - rows.start, j[picked]]
    return out
  step = max(1, block_size // max(d, 1))
  for start in range(0, len(i), step):
    part = slice(start, start + step)
    out[part] = np.einsum("pd,pd->p", u[i[part]], u[j[part]])
  return out
