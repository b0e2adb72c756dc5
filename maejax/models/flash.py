"""Fused softmax attention for TPUs: a Pallas kernel whose logits never leave VMEM.

XLA:TPU writes the f32 logits of `jax.nn.dot_product_attention` ([b, h, lq, lk]) to HBM
several times a step; for the short sequences of MAEs (65 to 1,025 tokens) with 32- and
64-wide heads that traffic, not the matmuls, sets the step time. Here each grid step holds
one (example, head)'s keys and values whole in VMEM and attends a block of queries to them:
one pass, no online softmax, no logits in HBM. The backward pass recomputes the probabilities
from the saved log-sum-exp and accumulates dk, dv over the query blocks in VMEM.

Both kernels declare their cost (`pl.CostEstimate`), which is all XLA's cost model knows of
a custom call: the matmul FLOPs counted as the MXU executes them (head_dim and padded key
lengths rounded up to the MXU's 128-wide tiles), one exp per logit, and the HBM bytes of
their operands and results as stored (minor dims padded to 128 lanes).

On CPU the kernels run in Pallas' interpreter (`interpret=True`), which the tests use to
check them against NumPy.
"""

import functools
import math

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl
from jax.experimental.pallas import tpu as pltpu

# The MXU's tile width and the vector registers' lane count.
LANES = 128
# Queries attended per grid step when the sequence does not fit in one block.
BLOCK_Q = 256
_NEG = -0.7 * float(jnp.finfo(jnp.float32).max)
_NT = (((1,), (1,)), ((), ()))  # a @ b.T
_TN = (((0,), (0,)), ((), ()))  # a.T @ b


def _round_up(n, m):
  return -(-n // m) * m


def _query_rows(lq):
  """Queries per grid step: all of them, or BLOCK_Q (the last block may be partial)."""
  return lq if lq <= 2 * BLOCK_Q else BLOCK_Q


def _valid_rows(rows, lq, shape):
  """bool [rows, 1]: which rows of this grid step's query block lie inside [0, lq)."""
  row = pl.program_id(1) * rows + jax.lax.broadcasted_iota(jnp.int32, shape, 0)
  return row < lq


def _fwd_kernel(q_ref, k_ref, v_ref, o_ref, lse_ref, *, heads):
  """One example, one block of queries, all heads: q [rows, h*d], k/v [lk, h*d]."""
  d = q_ref.shape[1] // heads
  for i in range(heads):
    cols = pl.ds(i * d, d)
    q, k, v = q_ref[:, cols], k_ref[:, cols], v_ref[:, cols]
    s = jax.lax.dot_general(q, k, _NT, preferred_element_type=jnp.float32)
    m = s.max(axis=1, keepdims=True)
    p = jnp.exp(s - m)
    total = p.sum(axis=1, keepdims=True)
    o = jnp.dot(p.astype(v.dtype), v, preferred_element_type=jnp.float32)
    o_ref[:, cols] = (o / total).astype(o_ref.dtype)
    lse_ref[:, pl.ds(i, 1)] = m + jnp.log(total)


def _bwd_kernel(q_ref, k_ref, v_ref, do_ref, lse_ref, delta_ref, dq_ref, dk_ref, dv_ref, *,
                heads, lq):
  @pl.when(pl.program_id(1) == 0)
  def _():
    dk_ref[...] = jnp.zeros_like(dk_ref)
    dv_ref[...] = jnp.zeros_like(dv_ref)

  rows, d = q_ref.shape[0], q_ref.shape[1] // heads
  # A partial last block holds rows past lq (unspecified values): they must add nothing.
  valid = _valid_rows(rows, lq, (rows, 1))
  for i in range(heads):
    cols = pl.ds(i * d, d)
    q = jnp.where(valid, q_ref[:, cols], 0).astype(q_ref.dtype)
    do = jnp.where(valid, do_ref[:, cols], 0).astype(do_ref.dtype)
    k, v = k_ref[:, cols], v_ref[:, cols]
    s = jax.lax.dot_general(q, k, _NT, preferred_element_type=jnp.float32)
    p = jnp.where(valid, jnp.exp(s - lse_ref[:, pl.ds(i, 1)]), 0.0)
    dv_ref[:, cols] += jax.lax.dot_general(p.astype(do.dtype), do, _TN,
                                           preferred_element_type=jnp.float32)
    dp = jax.lax.dot_general(do, v, _NT, preferred_element_type=jnp.float32)
    ds = jnp.where(valid, p * (dp - delta_ref[:, pl.ds(i, 1)]), 0.0).astype(q.dtype)
    dq_ref[:, cols] = jnp.dot(ds, k, preferred_element_type=jnp.float32).astype(dq_ref.dtype)
    dk_ref[:, cols] += jax.lax.dot_general(ds, q, _TN, preferred_element_type=jnp.float32)


def _hbm_bytes(*arrays):
  """Bytes of [..., rows, cols] arrays in HBM, minor dim padded to 128 lanes."""
  return sum(math.prod(a.shape[:-1]) * _round_up(a.shape[-1], LANES) * a.dtype.itemsize
             for a in arrays)


def _mxu_flops(b, lq, lk, h, d, matmuls):
  """FLOPs of `matmuls` products of [lq, d] or [lq, lk] operands per (example, head) as the
  MXU runs them: lengths and head_dim rounded up to its 128-wide tiles (a 32-wide head
  occupies a quarter of each tile)."""
  return (2 * matmuls * b * h * _round_up(lq, 8) * _round_up(lk, LANES)
          * _round_up(d, LANES))


def _specs(rows, lk, width, heads):
  """BlockSpecs over the grid (b, query blocks): a block of queries [rows, h*d], the whole
  sequence of keys [lk, h*d], and per-(query, head) rows [rows, h]."""
  query = pl.BlockSpec((None, rows, width), lambda b, i: (b, i, 0))
  key = pl.BlockSpec((None, lk, width), lambda b, i: (b, 0, 0))
  row = pl.BlockSpec((None, rows, heads), lambda b, i: (b, i, 0))
  return query, key, row


def _params(*semantics):
  # The backward pass holds q, k, v, dO and f32 dk, dv of a whole sequence: above the
  # default scoped VMEM for 1,025 tokens of width 1,024.
  return pltpu.CompilerParams(dimension_semantics=semantics, vmem_limit_bytes=64 * 2**20)


def _forward(q, k, v, heads, interpret):
  """q (scaled) [b, lq, h*d], k, v [b, lk, h*d] -> o [b, lq, h*d], lse f32 [b, lq, h]."""
  (b, lq, width), lk = q.shape, k.shape[1]
  rows = _query_rows(lq)
  query, key, row = _specs(rows, lk, width, heads)
  out_shape = [jax.ShapeDtypeStruct(q.shape, q.dtype),
               jax.ShapeDtypeStruct((b, lq, heads), jnp.float32)]
  cost = pl.CostEstimate(
      flops=_mxu_flops(b, lq, lk, heads, width // heads, 2),
      transcendentals=b * heads * lq * lk, bytes_accessed=_hbm_bytes(q, k, v, *out_shape))
  return pl.pallas_call(
      functools.partial(_fwd_kernel, heads=heads), grid=(b, pl.cdiv(lq, rows)),
      in_specs=[query, key, key], out_specs=[query, row], out_shape=out_shape,
      compiler_params=_params("parallel", "parallel"),
      cost_estimate=cost, interpret=interpret)(q, k, v)


def _backward(q, k, v, do, lse, delta, heads, interpret):
  """dq [b, lq, h*d] (w.r.t. the scaled q), dk, dv f32 [b, lk, h*d]."""
  (b, lq, width), lk = q.shape, k.shape[1]
  rows = _query_rows(lq)
  query, key, row = _specs(rows, lk, width, heads)
  out_shape = [jax.ShapeDtypeStruct(q.shape, q.dtype),
               jax.ShapeDtypeStruct(k.shape, jnp.float32),
               jax.ShapeDtypeStruct(v.shape, jnp.float32)]
  cost = pl.CostEstimate(
      flops=_mxu_flops(b, lq, lk, heads, width // heads, 5),
      transcendentals=b * heads * lq * lk,
      bytes_accessed=_hbm_bytes(q, k, v, do, lse, delta, *out_shape))
  return pl.pallas_call(
      functools.partial(_bwd_kernel, heads=heads, lq=lq), grid=(b, pl.cdiv(lq, rows)),
      in_specs=[query, key, key, query, row, row], out_specs=[query, key, key],
      out_shape=out_shape,
      # dk and dv accumulate over the query blocks: that axis runs in order on one core.
      compiler_params=_params("parallel", "arbitrary"),
      cost_estimate=cost, interpret=interpret)(q, k, v, do, lse, delta)


def flash_attention(q, k, v, interpret=False):
  """Softmax attention; q [b, lq, h, d], k/v [b, lk, h, d] -> [b, lq, h, d].

  Matches `jax.nn.dot_product_attention` (scale head_dim**-0.5, f32 softmax, no mask).
  `interpret=True` runs the kernels in Pallas' interpreter (any backend).
  """
  b, lq, h, d = q.shape
  scale = jnp.asarray(d ** -0.5, q.dtype)
  flat = lambda t: t.reshape(t.shape[0], t.shape[1], h * d)
  o = _attend(flat(q * scale), flat(k), flat(v), h, interpret)
  return o.reshape(q.shape)


@functools.partial(jax.custom_vjp, nondiff_argnums=(3, 4))
def _attend(q, k, v, heads, interpret):
  """q (scaled) [b, lq, h*d], k, v [b, lk, h*d] -> o [b, lq, h*d]."""
  return _forward(q, k, v, heads, interpret)[0]


def _attend_fwd(q, k, v, heads, interpret):
  o, lse = _forward(q, k, v, heads, interpret)
  return o, (q, k, v, o, lse)


def _attend_bwd(heads, interpret, res, do):
  q, k, v, o, lse = res
  b, lq, width = q.shape
  # rowsum(dP * P) = rowsum(dO * O) per head: one small reduction outside the kernel.
  delta = (do.astype(jnp.float32) * o.astype(jnp.float32)).reshape(
      b, lq, heads, width // heads).sum(-1)
  dq, dk, dv = _backward(q, k, v, do, lse, delta, heads, interpret)
  return dq, dk.astype(k.dtype), dv.astype(v.dtype)


_attend.defvjp(_attend_fwd, _attend_bwd)
