"""Transformer building blocks: attention, MLP, pre-norm and parallel ViT blocks.

Every parameter carries logical axis names (`embed`, `mlp`, `heads`, `kv`) through
`nnx.with_partitioning`; the training code maps them to mesh axes with a rules table.
Activations are `[batch, length, embed]`.
"""

from __future__ import annotations

import contextlib
import contextvars
import functools
import math

import jax
import jax.numpy as jnp
from flax import nnx
from jax.ad_checkpoint import checkpoint_name
from jax.extend import backend as jax_backend
from jax.sharding import PartitionSpec as P

from maejax.models import flash, stack

xavier = nnx.initializers.xavier_uniform()
zeros = nnx.initializers.zeros_init()
ones = nnx.initializers.ones_init()


def part(init, names):
  return nnx.with_partitioning(init, names)


def layer_norm(dim, eps, dtype=None, *, rngs, name="embed"):
  """LayerNorm with exact (two-pass) variance, annotated on its feature axis."""
  return nnx.LayerNorm(
      dim, epsilon=eps, dtype=dtype, use_fast_variance=False, rngs=rngs,
      scale_init=part(ones, (name,)), bias_init=part(zeros, (name,)))


def dot_general(lhs, rhs, dimension_numbers, precision=None, preferred_element_type=None,
                **kwargs):
  """`jax.lax.dot_general`, except that a bf16 x bf16 product traced for XLA:CPU asks for an
  f32 result and rounds it to bf16. XLA:CPU (jaxlib 0.10) has a bf16 matmul kernel only in
  that form (YNNPACK's, on AMX where the CPU has it: 1.7 TFLOP/s against 0.26 on a 2-core
  Xeon); a bf16 result makes it convert both operands to f32 and run an f32 product.
  Every dense layer of the models (`dense`, `linear_general`, `project`) multiplies with it."""
  (lhs_contract, rhs_contract), batch = dimension_numbers
  n = len(lhs_contract)
  if (preferred_element_type is None and lhs.dtype == rhs.dtype == jnp.bfloat16
      and stack.platform() == "cpu" and batch == ((), ())
      and tuple(lhs_contract) == tuple(range(lhs.ndim - n, lhs.ndim))
      and tuple(rhs_contract) == tuple(range(n))):
    return checkpoint_name(_bf16_tensordot(lhs, rhs, n), stack.DENSE)
  return jax.lax.dot_general(lhs, rhs, dimension_numbers, precision,
                             preferred_element_type=preferred_element_type, **kwargs)


def _bf16_contract(a, b, a_axes, b_axes):
  out = jax.lax.dot_general(a, b, ((tuple(a_axes), tuple(b_axes)), ((), ())),
                            preferred_element_type=jnp.float32)
  return out.astype(jnp.bfloat16)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def _bf16_tensordot(x, w, n):
  """x [..., *k] . w [*k, *o] (k: n axes) in the f32-result form, and its gradients in the same
  form: autodiff would hand the products an f32 cotangent (the rounding's), and XLA:CPU would
  run them in f32."""
  return _bf16_contract(x, w, range(x.ndim - n, x.ndim), range(n))


def _bf16_tensordot_fwd(x, w, n):
  return _bf16_tensordot(x, w, n), (x, w)


def _bf16_tensordot_bwd(n, res, g):
  x, w = res
  o, lead = w.ndim - n, x.ndim - n
  dx = _bf16_contract(g, w, range(g.ndim - o, g.ndim), range(n, w.ndim))
  dw = _bf16_contract(x, g, range(lead), range(lead))
  return dx, dw


_bf16_tensordot.defvjp(_bf16_tensordot_fwd, _bf16_tensordot_bwd)


def dense(din, dout, names, *, use_bias=True, dtype=None, rngs, init=xavier):
  """Linear layer [..., din] -> [..., dout] with kernel axes `names`."""
  return nnx.Linear(
      din, dout, use_bias=use_bias, dtype=dtype, rngs=rngs, dot_general=dot_general,
      kernel_init=part(init, names), bias_init=part(zeros, names[1:]))


def linear_general(din, dout, names, *, axis=-1, use_bias=True, dtype=None, rngs, init=None):
  """LinearGeneral [..., *din] -> [..., *dout] (`din` in x's `axis` axes), kernel axes `names`
  (bias axes: the output's), initialised by `init` (default Xavier over the flat fan-in and
  fan-out)."""
  size = lambda d: math.prod(d) if isinstance(d, tuple) else d  # noqa: E731
  init = init or _fan_xavier(size(din), size(dout))
  n_out = len(dout) if isinstance(dout, tuple) else 1
  return nnx.LinearGeneral(
      din, dout, axis=axis, use_bias=use_bias, dtype=dtype, rngs=rngs, dot_general=dot_general,
      kernel_init=part(init, names), bias_init=part(zeros, names[-n_out:]))


def drop_path(x, rate, key):
  """Stochastic depth: drops the whole residual branch per example.

  rate: a Python float, or a traced scalar (a scanned stack's per-block rate).
  """
  if key is None or (isinstance(rate, (int, float)) and rate == 0.0):
    return x
  keep = jax.random.bernoulli(key, 1.0 - rate, (x.shape[0],) + (1,) * (x.ndim - 1))
  return jnp.where(keep, x / (1.0 - rate), 0.0).astype(x.dtype)


class LayerScale(nnx.Module):
  """Per-channel learned residual scale (CaiT): gamma [dim].

  Blocks fold it into the projection that feeds the residual, (x @ W + b) * gamma =
  x @ (W * gamma) + b * gamma: a [dim] scale of the kernel's columns instead of a product
  and, for gamma's gradient, a reduction over every token.
  """

  def __init__(self, dim, init):
    self.gamma = nnx.Param(jnp.full((dim,), init, jnp.float32), out_sharding=("embed",))


def _gamma(layerscale):
  """The scale a LayerScale (or None) folds into a projection."""
  return None if layerscale is None else layerscale.gamma[...]


class QKVProjection(nnx.Module):
  """[b, l, embed] -> q, k, v each [b, l, heads, head_dim]."""

  def __init__(self, dim, num_heads, *, use_bias, dtype, rngs):
    self.num_heads, self.head_dim = num_heads, dim // num_heads
    self.proj = linear_general(dim, (3, num_heads, self.head_dim),
                               ("embed", None, "heads", "kv"), use_bias=use_bias, dtype=dtype,
                               rngs=rngs)

  def __call__(self, x):
    qkv = self.proj(x)
    return qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2]

  def packed(self, x):
    """[b, l, embed] -> [b, l, 3 * heads * head_dim]: q | k | v side by side."""
    return project(self.proj, x, 1)


def _fan_xavier(fan_in, fan_out):
  """Xavier-uniform for a kernel whose output is split over several axes."""
  def init(key, shape, dtype=jnp.float32):
    limit = (6.0 / (fan_in + fan_out)) ** 0.5
    return jax.random.uniform(key, shape, dtype, -limit, limit)
  return init


class OutProjection(nnx.Module):
  """[b, l, heads, head_dim] or [b, l, heads * head_dim] -> [b, l, embed]."""

  def __init__(self, num_heads, head_dim, dim, *, dtype, rngs):
    self.proj = linear_general((num_heads, head_dim), dim, ("heads", "kv", "embed"),
                               axis=(-2, -1), dtype=dtype, rngs=rngs)

  def __call__(self, x, scale=None):
    """scale: an [embed] LayerScale gamma folded into the product, or None."""
    return project(self.proj, x, 2 if x.ndim == 4 else 1, scale)


def project(proj, x, in_axes, scale=None):
  """x through a Linear or LinearGeneral `proj`, its input features in x's last `in_axes`
  axes: x [..., *inputs] -> [..., prod(outputs)]; `scale` [prod(outputs)] multiplies the
  kernel's columns and the bias (a LayerScale folded into the product)."""
  kernel, bias = proj.kernel[...], proj.bias[...] if proj.bias is not None else None
  kernel = kernel.reshape(*x.shape[x.ndim - in_axes:], -1)
  bias = None if bias is None else bias.reshape(-1)
  if scale is not None:
    kernel, bias = kernel * scale, None if bias is None else bias * scale
  dtype = proj.dtype or jnp.result_type(x, kernel)
  contract = (tuple(range(x.ndim - in_axes, x.ndim)), tuple(range(in_axes)))
  y = dot_general(x.astype(dtype), kernel.astype(dtype), (contract, ((), ())))
  return y if bias is None else y + bias.astype(dtype)


class QKNorm(nnx.Module):
  """LayerNorm of queries and keys over the head dimension (stabilises large ViTs)."""

  def __init__(self, head_dim, eps, dtype, *, rngs):
    self.q_norm = layer_norm(head_dim, eps, dtype, rngs=rngs, name="kv")
    self.k_norm = layer_norm(head_dim, eps, dtype, rngs=rngs, name="kv")

  def __call__(self, q, k):
    return self.q_norm(q), self.k_norm(k)

  def params(self):
    """(f32 [4, head_dim]: q scale, q bias, k scale, k bias; epsilon) for fused kernels."""
    norms = (self.q_norm, self.k_norm)
    return (jnp.stack([t[...].astype(jnp.float32) for n in norms for t in (n.scale, n.bias)]),
            self.q_norm.epsilon)


# jax.nn.dot_product_attention's `implementation` on GPUs: "auto" (cuDNN where it applies),
# "cudnn" or "xla". jax's own default is XLA's attention, which writes [b, h, lq, lk] logits
# to memory; cuDNN's flash kernel does not, and takes bf16/fp16 with head_dim a multiple of 8
# up to 128 (jax/_src/cudnn/fused_attention_stablehlo.py: check_is_flash_attention).
_GPU_ATTENTION = contextvars.ContextVar("gpu_attention", default="auto")


@contextlib.contextmanager
def gpu_attention(implementation: str):
  """Within the block, GPU attention traces with `implementation` ("auto", "cudnn", "xla")."""
  if implementation not in ("auto", "cudnn", "xla"):
    raise ValueError(f"gpu attention {implementation!r}: expected auto, cudnn or xla")
  token = _GPU_ATTENTION.set(implementation)
  try:
    yield
  finally:
    _GPU_ATTENTION.reset(token)


def gpu_attention_implementation(dtype, head_dim: int, cuda: bool) -> str:
  """"cudnn" or "xla": the `gpu_attention` choice, or under "auto" cuDNN's flash kernel where
  it applies (a CUDA backend, bf16/fp16, head_dim a multiple of 8 up to 128)."""
  choice = _GPU_ATTENTION.get()
  if choice != "auto":
    return choice
  fits = jnp.dtype(dtype) in (jnp.bfloat16, jnp.float16) and head_dim % 8 == 0 and head_dim <= 128
  return "cudnn" if cuda and fits else "xla"


def _cuda() -> bool:
  """Whether the default backend is CUDA (not merely traced for GPUs, as FLOP counts are)."""
  return (jax.default_backend() == "gpu"
          and "cuda" in jax_backend.get_backend().platform_version.lower())


def attention(q, k, v, qk_norm=None):
  """Softmax attention; q [b, lq, h, d], k/v [b, lk, h, d] -> [b, lq, h, d]; q and k
  through `qk_norm` (a QKNorm) first where given.

  On GPUs `jax.nn.dot_product_attention`, with cuDNN's flash kernel where it applies
  (`gpu_attention_implementation`); on TPUs, where XLA writes its logits to HBM, the Pallas
  kernel `flash.flash_attention`, which also applies the QK-norm (on [b, l, h, d] with
  head_dim under 128 lanes XLA:TPU relayouts cost more than the norm); on XLA:CPU, where it
  runs 2-4x slower than attention computed a cache-sized group of heads at a time,
  `chunked_attention`.
  """
  platform = stack.platform()
  if platform == "tpu":
    norm, eps = qk_norm.params() if qk_norm is not None else (None, 1e-6)
    return _per_shard(functools.partial(flash.flash_attention, eps=eps), q, k, v, norm)
  if qk_norm is not None:
    q, k = qk_norm(q, k)
  if platform == "cpu":
    return chunked_attention(q, k, v)
  return jax.nn.dot_product_attention(
      q, k, v, implementation=gpu_attention_implementation(q.dtype, q.shape[-1], _cuda()))


def self_attention(qkv, out, x, qk_norm=None, scale=None):
  """out(attention(qkv(x)), scale): x [b, l, embed] through a QKVProjection, softmax
  attention and an OutProjection (with a LayerScale's gamma folded in where given).

  On TPUs, where heads are not split over devices, the kernel reads q, k and v in place from
  one [b, l, 3 * heads * head_dim] product and the output projection takes its
  [b, l, heads * head_dim] result: no slices, and none of the relayouts that
  [b, l, heads, head_dim] arrays with head_dim under 128 lanes cost XLA:TPU.
  """
  heads = qkv.num_heads
  if (stack.platform() == "tpu" and not _split(stack.mesh_axes("heads", heads))
      and (heads * qkv.head_dim) % flash.LANES == 0):
    norm, eps = qk_norm.params() if qk_norm is not None else (None, 1e-6)
    fn = lambda t, norm: flash.packed_attention(t, heads, norm, eps)  # noqa: E731
    return out(_per_shard(fn, qkv.packed(x), norm), scale)
  return out(attention(*qkv(x), qk_norm), scale)


def _split(axes):
  """Whether mesh `axes` (or None) of the active mesh have more than one device."""
  mesh = jax.sharding.get_abstract_mesh()
  return bool(axes) and math.prod(mesh.shape[a] for a in axes) > 1


def _per_shard(fn, *args):
  """`fn(*arrays, norm)` on each device's block of examples (and heads, for [b, l, h, d]
  arrays: the `batch` and `heads` rules' mesh axes), `norm` (the last argument) whole: XLA
  cannot partition a Pallas kernel itself."""
  *arrays, norm = args
  if jax.sharding.get_abstract_mesh().empty:
    return fn(*arrays, norm)
  x = arrays[0]
  heads = stack.mesh_axes("heads", x.shape[2]) if x.ndim == 4 else None
  spec = P(stack.mesh_axes("batch", x.shape[0]), None, heads)
  return jax.shard_map(fn, in_specs=(spec,) * len(arrays) + (P(),), out_specs=spec,
                       check_vma=False)(*arrays, norm)


# Bytes of f32 logits per group of (example, head) pairs: a group's logits stay in cache
# between the matmuls and the softmax instead of going through memory ([b, h, l, l] at once).
CHUNK_BYTES = 4 * 2**20
# Query blocks are unrolled in the program: a bound on its size for very long sequences.
MAX_BLOCKS = 16


def _head_groups(t, group):
  """[b, l, h, d] -> [b*h/group, group, l, d], heads major."""
  b, l, h, d = t.shape
  return jnp.swapaxes(t, 1, 2).reshape(b * h // group, group, l, d)


def _from_head_groups(t, shape):
  b, l, h, d = shape
  return jnp.swapaxes(t.reshape(b, h, l, d), 1, 2)


def _group_size(n, lq, lk):
  """The largest divisor of n (example, head) pairs whose logits fit CHUNK_BYTES."""
  g = max(1, min(n, CHUNK_BYTES // (4 * lq * lk)))
  while n % g:
    g -= 1
  return g


def _query_blocks(g, lq, lk):
  """Static row slices splitting lq queries into blocks whose g x rows x lk f32 logits fit
  CHUNK_BYTES (one block unless a single pair's logits do not fit), at most MAX_BLOCKS."""
  n = min(MAX_BLOCKS, max(1, -(-4 * g * lq * lk // CHUNK_BYTES)))
  rows = -(-lq // n)
  return [slice(i, min(i + rows, lq)) for i in range(0, lq, rows)]


@jax.custom_vjp
def chunked_attention(q, k, v):
  """`attention` over groups of (example, head) pairs in a `lax.map`, f32 softmax; the
  backward pass recomputes each group's probabilities from the saved log-sum-exp (as flash
  attention does) rather than keeping [b, h, lq, lk] probabilities. Where one pair's logits
  exceed CHUNK_BYTES (long sequences), each pair's queries go in blocks: the blocks of a
  group are independent work the CPU runs side by side, each within cache."""
  return _chunked_fwd(q, k, v)[0]


def _chunked_fwd(q, k, v):
  b, lq, h, d = q.shape
  g = _group_size(b * h, lq, k.shape[1])
  blocks = _query_blocks(g, lq, k.shape[1])
  scaled = q * jnp.asarray(d ** -0.5, q.dtype)

  def attend(q, k, v):
    s = jnp.einsum("gqd,gkd->gqk", q, k, preferred_element_type=jnp.float32)
    m = s.max(-1, keepdims=True)
    p = jnp.exp(s - m)
    total = p.sum(-1, keepdims=True)
    # Normalised after the product: [g, q, d] divisions instead of [g, q, k].
    o = jnp.einsum("gqk,gkd->gqd", p.astype(v.dtype), v, preferred_element_type=jnp.float32)
    return (o / total).astype(v.dtype), (m + jnp.log(total))[..., 0]

  def group(qkv):
    q, k, v = qkv
    out = [attend(q[:, rows], k, v) for rows in blocks]
    return tuple(jnp.concatenate(t, axis=1) for t in zip(*out))

  o, lse = jax.lax.map(group, (_head_groups(scaled, g), _head_groups(k, g), _head_groups(v, g)))
  # Named, so that a remat policy can keep them (stack.REMAT_POLICIES["dots_attention"]).
  o, lse = checkpoint_name(o, stack.ATTENTION), checkpoint_name(lse, stack.ATTENTION)
  return _from_head_groups(o, q.shape), (q, k, v, o, lse)


def _chunked_bwd(res, do):
  q, k, v, o, lse = res
  d, g = q.shape[-1], o.shape[1]
  blocks = _query_blocks(g, q.shape[1], k.shape[1])
  scale = jnp.asarray(d ** -0.5, q.dtype)
  do_g = _head_groups(do, g)
  delta = (do_g.astype(jnp.float32) * o.astype(jnp.float32)).sum(-1)  # rowsum(dP * P).

  def block(q, k, v, do, lse, delta):
    s = jnp.einsum("gqd,gkd->gqk", q, k, preferred_element_type=jnp.float32)
    p = jnp.exp(s - lse[..., None])
    dv = jnp.einsum("gqk,gqd->gkd", p.astype(do.dtype), do, preferred_element_type=jnp.float32)
    dp = jnp.einsum("gqd,gkd->gqk", do, v, preferred_element_type=jnp.float32)
    ds = (p * (dp - delta[..., None])).astype(q.dtype)
    dk = jnp.einsum("gqk,gqd->gkd", ds, q, preferred_element_type=jnp.float32)
    dq = jnp.einsum("gqk,gkd->gqd", ds, k, preferred_element_type=jnp.float32)
    return dq.astype(q.dtype), dk, dv

  def group(args):
    q, k, v, do, lse, delta = args
    dq, dk, dv = zip(*[block(q[:, rows], k, v, do[:, rows], lse[:, rows], delta[:, rows])
                       for rows in blocks])
    return (jnp.concatenate(dq, axis=1), sum(dk).astype(k.dtype), sum(dv).astype(v.dtype))

  dq, dk, dv = jax.lax.map(group, (_head_groups(q * scale, g), _head_groups(k, g),
                                   _head_groups(v, g), do_g, lse, delta))
  return (_from_head_groups(dq, q.shape) * scale, _from_head_groups(dk, k.shape),
          _from_head_groups(dv, v.shape))


chunked_attention.defvjp(_chunked_fwd, _chunked_bwd)


class Attention(nnx.Module):
  """Multi-head self-attention with optional QK-norm."""

  def __init__(self, dim, num_heads, *, qkv_bias, qk_norm, eps, dtype, rngs):
    self.qkv = QKVProjection(dim, num_heads, use_bias=qkv_bias, dtype=dtype, rngs=rngs)
    self.qk_norm = QKNorm(dim // num_heads, eps, dtype, rngs=rngs) if qk_norm else None
    self.out = OutProjection(num_heads, dim // num_heads, dim, dtype=dtype, rngs=rngs)

  def __call__(self, x, scale=None):
    """x [b, l, dim]; scale: a LayerScale gamma [dim] folded into the output projection."""
    return self_attention(self.qkv, self.out, x, self.qk_norm, scale)


class Mlp(nnx.Module):
  """Two-layer GELU MLP [..., dim] -> [..., dim]."""

  def __init__(self, dim, hidden, *, dtype, rngs):
    self.fc1 = dense(dim, hidden, ("embed", "mlp"), dtype=dtype, rngs=rngs)
    self.fc2 = dense(hidden, dim, ("mlp", "embed"), dtype=dtype, rngs=rngs)

  def __call__(self, x, scale=None):
    """scale: a LayerScale gamma [dim] folded into fc2."""
    return project(self.fc2, jax.nn.gelu(self.fc1(x), approximate=False), 1, scale)


class Block(nnx.Module):
  """Standard pre-norm ViT block: x + attn(norm(x)); x + mlp(norm(x))."""

  def __init__(self, dim, num_heads, *, mlp_ratio=4.0, qkv_bias=False, qk_norm=False,
               layerscale=None, drop_path=0.0, eps=1e-6, dtype=None, rngs):
    self.norm1 = layer_norm(dim, eps, dtype, rngs=rngs)
    self.attn = Attention(dim, num_heads, qkv_bias=qkv_bias, qk_norm=qk_norm, eps=eps,
                          dtype=dtype, rngs=rngs)
    self.norm2 = layer_norm(dim, eps, dtype, rngs=rngs)
    self.mlp = Mlp(dim, int(dim * mlp_ratio), dtype=dtype, rngs=rngs)
    self.ls1 = LayerScale(dim, layerscale) if layerscale else None
    self.ls2 = LayerScale(dim, layerscale) if layerscale else None
    self.drop_path = drop_path

  def __call__(self, x, key=None, rate=None):
    """x [b, l, dim] -> [b, l, dim]; key drives drop-path at `rate` (default: the block's)."""
    rate = self.drop_path if rate is None else rate
    k1, k2 = jax.random.split(key) if key is not None else (None, None)
    x = x + drop_path(self.attn(self.norm1(x), _gamma(self.ls1)), rate, k1)
    return x + drop_path(self.mlp(self.norm2(x), _gamma(self.ls2)), rate, k2)


class ParallelBlock(nnx.Module):
  """Parallel attention + MLP from one input norm (ViT-22B; Recursion's released weights).

  x + gamma * (attn(norm(x)) + mlp(norm(x))); the qkv and MLP-in projections have no bias,
  the MLP hidden layer has its own bias.
  """

  def __init__(self, dim, num_heads, *, mlp_ratio=4.0, qkv_bias=False, qk_norm=True,
               layerscale=None, drop_path=0.0, eps=1e-6, dtype=None, rngs):
    hidden = int(dim * mlp_ratio)
    self.norm = layer_norm(dim, eps, dtype, rngs=rngs)
    self.qkv = QKVProjection(dim, num_heads, use_bias=qkv_bias, dtype=dtype, rngs=rngs)
    self.mlp_in = dense(dim, hidden, ("embed", "mlp"), use_bias=True, dtype=dtype, rngs=rngs)
    self.qk_norm = QKNorm(dim // num_heads, eps, dtype, rngs=rngs) if qk_norm else None
    self.attn_out = OutProjection(num_heads, dim // num_heads, dim, dtype=dtype, rngs=rngs)
    self.mlp_out = dense(hidden, dim, ("mlp", "embed"), dtype=dtype, rngs=rngs)
    self.ls = LayerScale(dim, layerscale) if layerscale else None
    self.drop_path = drop_path

  def __call__(self, x, key=None, rate=None):
    """x [b, l, dim] -> [b, l, dim]; key drives drop-path at `rate` (default: the block's)."""
    rate = self.drop_path if rate is None else rate
    y = self.norm(x)
    gamma = _gamma(self.ls)
    h = self_attention(self.qkv, self.attn_out, y, self.qk_norm, gamma)
    h = h + project(self.mlp_out, jax.nn.gelu(self.mlp_in(y), approximate=False), 1, gamma)
    return x + drop_path(h, rate, key)


class CrossAttention(nnx.Module):
  """Queries [b, lq, dim] attend to context [b, lk, dim]; q/kv without bias."""

  def __init__(self, dim, num_heads, *, dtype, rngs):
    hd = dim // num_heads
    self.q = linear_general(dim, (num_heads, hd), ("embed", "heads", "kv"), use_bias=False,
                            dtype=dtype, rngs=rngs)
    self.kv = linear_general(dim, (2, num_heads, hd), ("embed", None, "heads", "kv"),
                             use_bias=False, dtype=dtype, rngs=rngs)
    self.out = OutProjection(num_heads, hd, dim, dtype=dtype, rngs=rngs)

  def __call__(self, x, context):
    kv = self.kv(context)
    return self.out(attention(self.q(x), kv[:, :, 0], kv[:, :, 1]))


def make_block(kind, dim, num_heads, **kw):
  """`kind` is "prenorm" (standard) or "parallel"."""
  if kind == "prenorm":
    return Block(dim, num_heads, **kw)
  if kind == "parallel":
    return ParallelBlock(dim, num_heads, **kw)
  raise ValueError(f"block kind must be 'prenorm' or 'parallel', got {kind!r}")
