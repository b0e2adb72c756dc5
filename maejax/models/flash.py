"""Fused softmax attention for TPUs: a Pallas kernel whose logits never leave VMEM.

XLA:TPU writes the f32 logits of `jax.nn.dot_product_attention` ([b, h, lq, lk]) to HBM
several times a step; for the short sequences of MAEs (65 to 1,025 tokens) with 32- and
64-wide heads that traffic, not the matmuls, sets the step time. Here each grid step holds
one example's keys and values whole in VMEM and attends a block of its queries to them, head
by head: one pass, no online softmax, no logits in HBM. The backward pass recomputes the
probabilities from the saved log-sum-exp and accumulates dk, dv over the query blocks in
VMEM. The query scale, the QK-norm (LayerNorm of q and k over head_dim; ViT-22B) and
rowsum(dO * O) are computed in the kernels too: outside, on [b, l, h, d] arrays whose
head_dim is narrower than the 128 lanes, XLA:TPU spends more on relayouts than the kernels
take. For the same reason `packed_attention` reads q, k and v where a fused QKV projection
put them, side by side in one [b, l, 3*h*d] array, and its backward pass writes their
gradients into one array of that shape. Keys past the last whole 128-key tile, when there are
at most TAIL_KEYS of them (a ViT's class token: 257 or 1,025 keys), are attended on the
vector units, so the MXU runs 2 or 8 full tiles instead of 3 or 9.

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
# Keys past the last whole 128-key tile that go on the vector units instead of the MXU: a
# ViT's class token makes 257 or 1,025 keys, which would otherwise fill 3 or 9 MXU tiles
# where 2 or 8 hold all but one.
TAIL_KEYS = 8
_NT = (((1,), (1,)), ((), ()))  # a @ b.T
_TN = (((0,), (0,)), ((), ()))  # a.T @ b
_F32 = jnp.float32
_PACKED = (0, 1, 2)  # q, k, v as column blocks 0, 1, 2 of one [b, l, 3*h*d] array


def _round_up(n, m):
  return -(-n // m) * m


def _query_rows(lq):
  """Queries per grid step: all of them, or about BLOCK_Q, as many per block as the blocks
  need (a multiple of 8 sublanes), so the last block wastes little (1,025 queries: 5 x 208,
  not 5 x 256 with one query in the last block)."""
  if lq <= 2 * BLOCK_Q:
    return lq
  return _round_up(pl.cdiv(lq, pl.cdiv(lq, BLOCK_Q)), 8)


def _mxu_keys(lk):
  """Keys the MXU takes: lk, or the whole 128-key tiles when at most TAIL_KEYS are left."""
  main = lk - lk % LANES
  return main if main and lk - main <= TAIL_KEYS else lk


def _valid_rows(rows, lq):
  """bool [rows, 1]: which rows of this grid step's query block lie inside [0, lq)."""
  row = pl.program_id(1) * rows + jax.lax.broadcasted_iota(jnp.int32, (rows, 1), 0)
  return row < lq


def _dot(a, b, dims=None):
  dims = dims or (((1,), (0,)), ((), ()))
  return jax.lax.dot_general(a, b, dims, preferred_element_type=_F32)


def _row_dots(a, b):
  """a [rows, d] . each row of b [t, d] on the vector units -> t f32 [rows, 1]."""
  a = a.astype(_F32)
  return [(a * b[j:j + 1].astype(_F32)).sum(axis=1, keepdims=True) for j in range(b.shape[0])]


def _outer_sum(cols, b, dtype):
  """sum_j cols[j] [rows, 1] (rounded to `dtype`, as the MXU's operand) * b[j] [d] -> f32
  [rows, d], or 0 for no columns."""
  return sum(cols[j].astype(dtype).astype(_F32) * b[j:j + 1].astype(_F32)
             for j in range(len(cols)))


def _col_sums(a, cols, dtype):
  """sum over rows of cols[j] [rows, 1] (rounded to `dtype`) * a [rows, d] -> f32 [t, d]
  rows, one per column."""
  a = a.astype(_F32)
  return [(c.astype(dtype).astype(_F32) * a).sum(axis=0, keepdims=True) for c in cols]


def _layer_norm(x, norm_ref, row, eps):
  """x f32 [rows, d] -> (LayerNorm(x) * norm[row] + norm[row + 1], x_hat, 1 / sigma)."""
  mean = x.mean(axis=1, keepdims=True)
  centred = x - mean
  inv = jax.lax.rsqrt((centred * centred).mean(axis=1, keepdims=True) + eps)
  x_hat = centred * inv
  return x_hat * norm_ref[row:row + 1, :] + norm_ref[row + 1:row + 2, :], x_hat, inv


def _layer_norm_grad(dy, x_hat, inv, scale):
  """d LayerNorm(x) * scale / dx, given dy = d loss / d output (all f32 [rows, d])."""
  dx_hat = dy * scale
  return inv * (dx_hat - dx_hat.mean(axis=1, keepdims=True)
                - x_hat * (dx_hat * x_hat).mean(axis=1, keepdims=True))


def _operand(x, norm_ref, row, eps, scale=1.0):
  """One head's q or k as the matmuls take it (QK-normed where `norm_ref`, times `scale`,
  in x's dtype), with the LayerNorm's (x_hat, 1 / sigma) or Nones."""
  if norm_ref is None and scale == 1.0:
    return x, None, None
  y, x_hat, inv = (_layer_norm(x.astype(_F32), norm_ref, row, eps) if norm_ref is not None
                   else (x.astype(_F32), None, None))
  return (y * scale).astype(x.dtype), x_hat, inv


def _fwd_kernel(*refs, heads, scale, eps, normed):
  """One example, one block of queries, all heads: q [rows, h*d], k/v [lk, h*d]."""
  if not normed:
    refs = refs[:3] + (None,) + refs[3:]
  q_ref, k_ref, v_ref, norm_ref, o_ref, lse_ref = refs
  d = q_ref.shape[1] // heads
  main = _mxu_keys(k_ref.shape[0])
  for i in range(heads):
    cols = pl.ds(i * d, d)
    q = _operand(q_ref[:, cols], norm_ref, 0, eps, scale)[0]
    k = _operand(k_ref[:, cols], norm_ref, 2, eps)[0]
    v = v_ref[:, cols]
    s = _dot(q, k[:main], _NT)
    s_tail = _row_dots(q, k[main:])
    m = functools.reduce(jnp.maximum, s_tail, s.max(axis=1, keepdims=True))
    p = jnp.exp(s - m)
    p_tail = [jnp.exp(t - m) for t in s_tail]
    total = p.sum(axis=1, keepdims=True) + sum(p_tail)
    o = _dot(p.astype(v.dtype), v[:main]) + _outer_sum(p_tail, v[main:], v.dtype)
    o_ref[:, cols] = (o / total).astype(o_ref.dtype)
    lse_ref[:, pl.ds(i, 1)] = m + jnp.log(total)


def _bwd_kernel(*refs, heads, scale, eps, normed, lq, packed):
  """One example, one block of queries: dq of the block; dk, dv (and the norm's
  gradients) summed over the blocks in VMEM, written at the last one. `packed`: one output
  [l, 3*h*d] (dq | dk | dv) for the example, dq copied in block by block."""
  rest = list(refs)
  q_ref, k_ref, v_ref, do_ref, o_ref, lse_ref = (rest.pop(0) for _ in range(6))
  norm_ref = rest.pop(0) if normed else None
  outs = [rest.pop(0) for _ in range(1 if packed else 3)]
  dnorm_ref = rest.pop(0) if normed else None
  dk_acc, dv_acc = rest.pop(0), rest.pop(0)
  width = q_ref.shape[1]
  # Where dq, dk and dv go (packed: dq to a VMEM buffer first) and their first columns there.
  if packed:
    (dq_ref, dk_ref, dv_ref), (dq_col, dk_col, dv_col) = (
        (rest.pop(0), outs[0], outs[0]), (0, width, 2 * width))
  else:
    (dq_ref, dk_ref, dv_ref), (dq_col, dk_col, dv_col) = outs, (0, 0, 0)
  block = pl.program_id(1)

  @pl.when(block == 0)
  def _():
    dk_acc[...] = jnp.zeros_like(dk_acc)
    dv_acc[...] = jnp.zeros_like(dv_acc)
    if normed:
      dnorm_ref[...] = jnp.zeros_like(dnorm_ref)

  rows, d = q_ref.shape[0], q_ref.shape[1] // heads
  lk = k_ref.shape[0]
  main = _mxu_keys(lk)
  # A partial last block holds rows past lq (unspecified values): they must add nothing.
  valid = _valid_rows(rows, lq)
  dtype = q_ref.dtype
  for i in range(heads):
    cols = pl.ds(i * d, d)
    q, q_hat, q_inv = _operand(jnp.where(valid, q_ref[:, cols], 0).astype(dtype),
                               norm_ref, 0, eps, scale)
    k = _operand(k_ref[:, cols], norm_ref, 2, eps)[0]
    v = v_ref[:, cols]
    do = jnp.where(valid, do_ref[:, cols], 0).astype(dtype)
    # rowsum(dP * P) = rowsum(dO * O).
    delta = (do.astype(_F32) * jnp.where(valid, o_ref[:, cols], 0).astype(_F32)).sum(
        axis=1, keepdims=True)
    lse = lse_ref[:, pl.ds(i, 1)]
    p = jnp.where(valid, jnp.exp(_dot(q, k[:main], _NT) - lse), 0.0)
    p_tail = [jnp.where(valid, jnp.exp(t - lse), 0.0) for t in _row_dots(q, k[main:])]
    ds = (p * (_dot(do, v[:main], _NT) - delta)).astype(dtype)
    ds_tail = [(pt * (dp - delta)).astype(dtype)
               for pt, dp in zip(p_tail, _row_dots(do, v[main:]))]
    dv_acc[pl.ds(0, main), cols] += _dot(p.astype(dtype), do, _TN)
    dk_acc[pl.ds(0, main), cols] += _dot(ds, q, _TN)
    for j, (dv, dk) in enumerate(zip(_col_sums(do, p_tail, dtype), _col_sums(q, ds_tail, dtype))):
      dv_acc[pl.ds(main + j, 1), cols] += dv
      dk_acc[pl.ds(main + j, 1), cols] += dk
    dq = (_dot(ds, k[:main]) + _outer_sum(ds_tail, k[main:], dtype)) * scale
    if normed:
      dnorm_ref[0:1, cols] += (dq * q_hat).sum(axis=0, keepdims=True)
      dnorm_ref[1:2, cols] += dq.sum(axis=0, keepdims=True)
      dq = _layer_norm_grad(dq, q_hat, q_inv, norm_ref[0:1, :])
    dq_ref[:, pl.ds(dq_col + i * d, d)] = dq.astype(dq_ref.dtype)
  if packed:
    _copy_rows(dq_ref, outs[0], block, lq)

  @pl.when(block == pl.num_programs(1) - 1)
  def _():
    for i in range(heads):
      cols = pl.ds(i * d, d)
      dk = dk_acc[:, cols]
      if normed:
        k_hat, k_inv = _operand(k_ref[:, cols], norm_ref, 2, eps)[1:]
        dnorm_ref[2:3, cols] += (dk * k_hat).sum(axis=0, keepdims=True)
        dnorm_ref[3:4, cols] += dk.sum(axis=0, keepdims=True)
        dk = _layer_norm_grad(dk, k_hat, k_inv, norm_ref[2:3, :])
      dk_ref[:, pl.ds(dk_col + i * d, d)] = dk.astype(dk_ref.dtype)
      dv_ref[:, pl.ds(dv_col + i * d, d)] = dv_acc[:, cols].astype(dv_ref.dtype)


def _copy_rows(src_ref, dst_ref, block, lq):
  """A query block's rows src [rows, w] into the first w columns of dst [lq, ...] at row
  block * rows; a partial last block copies only the rows inside [0, lq)."""
  rows, width = src_ref.shape
  blocks = pl.cdiv(lq, rows)
  last = lq - (blocks - 1) * rows
  cols = pl.ds(0, width)
  if blocks == 1:
    dst_ref[pl.ds(0, lq), cols] = src_ref[pl.ds(0, lq), :]
    return

  @pl.when(block < blocks - 1)
  def _():
    dst_ref[pl.ds(pl.multiple_of(block * rows, 8), rows), cols] = src_ref[...]

  @pl.when(block == blocks - 1)
  def _():
    dst_ref[pl.ds((blocks - 1) * rows, last), cols] = src_ref[pl.ds(0, last), :]


def _hbm_bytes(*arrays):
  """Bytes of [..., rows, cols] arrays in HBM, minor dim padded to 128 lanes."""
  return sum(math.prod(a.shape[:-1]) * _round_up(a.shape[-1], LANES) * a.dtype.itemsize
             for a in arrays if a is not None)


def _flops(b, lq, lk, h, d, matmuls):
  """FLOPs of `matmuls` products of [lq, d] or [lq, lk] operands per (example, head) as the
  hardware runs them: queries as the grid's blocks hold them; on the MXU, key length and
  head_dim rounded up to its 128-wide tiles (a 32-wide head occupies a quarter of each
  tile); the tail keys on the vector units, as they are."""
  rows = pl.cdiv(lq, _query_rows(lq)) * _round_up(_query_rows(lq), 8)
  main = _mxu_keys(lk)
  mxu = _round_up(main, LANES) * _round_up(d, LANES)
  return 2 * matmuls * b * h * rows * (mxu + (lk - main) * d)


def _specs(rows, lk, width, heads, norm, cols=(0, 0, 0)):
  """BlockSpecs over the grid (b, query blocks): a block of queries [rows, h*d], the whole
  sequence of keys and of values [lk, h*d] (column blocks `cols` of their arrays, in units of
  h*d: q, k and v may lie side by side in one array), per-(query, head) rows [rows, h] and
  the QK-norm's [4, d] (q scale, q bias, k scale, k bias)."""
  query = pl.BlockSpec((None, rows, width), lambda b, i: (b, i, cols[0]))
  key, value = (pl.BlockSpec((None, lk, width), lambda b, i, c=c: (b, 0, c)) for c in cols[1:])
  row = pl.BlockSpec((None, rows, heads), lambda b, i: (b, i, 0))
  whole = None if norm is None else pl.BlockSpec(norm.shape, lambda b, i: (0, 0))
  return query, key, value, row, whole


def _params(*semantics):
  # The backward pass holds q, k, v, dO, O and f32 dk, dv of a whole sequence: above the
  # default scoped VMEM for 1,025 tokens of width 1,024.
  return pltpu.CompilerParams(dimension_semantics=semantics, vmem_limit_bytes=64 * 2**20)


def _forward(q, k, v, norm, heads, eps, interpret, cols=(0, 0, 0)):
  """q, k, v [b, l, h*d] (or column blocks `cols` of wider arrays), norm f32 [4, d] or
  None -> o [b, lq, h*d], lse f32 [b, lq, h]."""
  (b, lq, _), lk, width = q.shape, k.shape[1], v.shape[2] // (max(cols) + 1)
  rows = _query_rows(lq)
  query, key, value, row, whole = _specs(rows, lk, width, heads, norm, cols)
  normed = norm is not None
  out_shape = [jax.ShapeDtypeStruct((b, lq, width), q.dtype),
               jax.ShapeDtypeStruct((b, lq, heads), _F32)]
  operands = (q,) if cols == _PACKED else (q, k, v)
  cost = pl.CostEstimate(
      flops=_flops(b, lq, lk, heads, width // heads, 2),
      transcendentals=b * heads * lq * lk,
      bytes_accessed=_hbm_bytes(*operands, norm, *out_shape))
  kernel = functools.partial(_fwd_kernel, heads=heads, scale=(width // heads) ** -0.5,
                             eps=eps, normed=normed)
  return pl.pallas_call(
      kernel, grid=(b, pl.cdiv(lq, rows)),
      in_specs=[query, key, value] + ([whole] if normed else []),
      out_specs=[_specs(rows, lk, width, heads, norm)[0], row],  # o's own query block
      out_shape=out_shape, compiler_params=_params("parallel", "parallel"),
      cost_estimate=cost, interpret=interpret)(q, k, v, *([norm] if normed else []))


def _backward(q, k, v, norm, o, lse, do, heads, eps, interpret, cols=(0, 0, 0)):
  """dq, dk, dv [b, l, h*d] and, with `norm`, per-example d norm f32 [b, 4, h*d]."""
  (b, lq, width), lk = o.shape, k.shape[1]
  rows = _query_rows(lq)
  query, key, value, row, whole = _specs(rows, lk, width, heads, norm, cols)
  own, own_keys = _specs(rows, lk, width, heads, norm)[:2]
  normed, packed = norm is not None, cols == _PACKED
  if packed:  # One [b, l, 3*h*d] gradient, each example's block in VMEM throughout.
    out_shape = [jax.ShapeDtypeStruct(q.shape, o.dtype)]
    out_specs = [pl.BlockSpec((None, lk, q.shape[2]), lambda b, i: (b, 0, 0))]
  else:
    out_shape = [jax.ShapeDtypeStruct((b, l, width), o.dtype) for l in (lq, lk, lk)]
    out_specs = [own, own_keys, own_keys]
  if normed:
    out_shape.append(jax.ShapeDtypeStruct((b, 4, width), _F32))
    out_specs.append(pl.BlockSpec((None, 4, width), lambda b, i: (b, 0, 0)))
  cost = pl.CostEstimate(
      flops=_flops(b, lq, lk, heads, width // heads, 5),
      transcendentals=b * heads * lq * lk,
      bytes_accessed=_hbm_bytes(*((q,) if packed else (q, k, v)), do, o, lse, norm, *out_shape))
  kernel = functools.partial(_bwd_kernel, heads=heads, scale=(width // heads) ** -0.5,
                             eps=eps, normed=normed, lq=lq, packed=packed)
  return pl.pallas_call(
      kernel, grid=(b, pl.cdiv(lq, rows)),
      in_specs=[query, key, value, own, own, row] + ([whole] if normed else []),
      out_specs=out_specs, out_shape=out_shape,
      scratch_shapes=[pltpu.VMEM((lk, width), _F32), pltpu.VMEM((lk, width), _F32)]
      + ([pltpu.VMEM((rows, width), o.dtype)] if packed else []),
      # dk and dv accumulate over the query blocks: that axis runs in order on one core.
      compiler_params=_params("parallel", "arbitrary"),
      cost_estimate=cost, interpret=interpret)(q, k, v, do, o, lse,
                                               *([norm] if normed else []))


def flash_attention(q, k, v, norm=None, eps=1e-6, interpret=False):
  """Softmax attention; q [b, lq, h, d], k/v [b, lk, h, d] -> [b, lq, h, d].

  Matches `jax.nn.dot_product_attention` (scale head_dim**-0.5, f32 softmax, no mask). With
  `norm` ([4, d]: q scale, q bias, k scale, k bias), q and k are first LayerNormed over
  head_dim (epsilon `eps`), as the model's QK-norm does. `interpret=True` runs the kernels in
  Pallas' interpreter (any backend).
  """
  b, lq, h, d = q.shape
  flat = lambda t: t.reshape(t.shape[0], t.shape[1], h * d)
  norm = None if norm is None else norm.astype(_F32)
  return _attend(flat(q), flat(k), flat(v), norm, h, eps, interpret).reshape(q.shape)


def packed_attention(qkv, heads, norm=None, eps=1e-6, interpret=False):
  """`flash_attention` of q, k, v side by side: qkv [b, l, 3*h*d] (q | k | v, each heads
  major) -> [b, l, h*d]. The kernels read q, k and v where they lie (h*d a multiple of 128),
  so a fused QKV projection's output goes in without slices or relayouts."""
  norm = None if norm is None else norm.astype(_F32)
  return _attend_packed(qkv, norm, heads, eps, interpret)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3, 4))
def _attend_packed(qkv, norm, heads, eps, interpret):
  return _forward(qkv, qkv, qkv, norm, heads, eps, interpret, _PACKED)[0]


def _attend_packed_fwd(qkv, norm, heads, eps, interpret):
  o, lse = _forward(qkv, qkv, qkv, norm, heads, eps, interpret, _PACKED)
  return o, (qkv, norm, o, lse)


def _attend_packed_bwd(heads, eps, interpret, res, do):
  qkv, norm, o, lse = res
  grads = _backward(qkv, qkv, qkv, norm, o, lse, do, heads, eps, interpret, _PACKED)
  return grads[0], _norm_grad(grads, heads, norm)


_attend_packed.defvjp(_attend_packed_fwd, _attend_packed_bwd)


def _norm_grad(grads, heads, norm):
  """The norm's gradient (None without a norm) from the kernel's per-example, per-head sums,
  the last of `grads`: every example and head shares the norm."""
  return None if norm is None else grads[-1].sum(axis=0).reshape(4, heads, -1).sum(axis=1)


@functools.partial(jax.custom_vjp, nondiff_argnums=(4, 5, 6))
def _attend(q, k, v, norm, heads, eps, interpret):
  """q, k, v [b, l, h*d], norm [4, d] or None -> o [b, lq, h*d]."""
  return _forward(q, k, v, norm, heads, eps, interpret)[0]


def _attend_fwd(q, k, v, norm, heads, eps, interpret):
  o, lse = _forward(q, k, v, norm, heads, eps, interpret)
  return o, (q, k, v, norm, o, lse)


def _attend_bwd(heads, eps, interpret, res, do):
  q, k, v, norm, o, lse = res
  grads = _backward(q, k, v, norm, o, lse, do, heads, eps, interpret)
  return (*grads[:3], _norm_grad(grads, heads, norm))


_attend.defvjp(_attend_fwd, _attend_bwd)
