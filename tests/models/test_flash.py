"""The TPU attention kernel (models/flash.py): values and gradients in Pallas' interpreter
against float64 NumPy, and its compiled TPU program (ahead of time, libtpu) against XLA's."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from maejax.models import flash


def np_attention(q, k, v, do):
  """float64 softmax attention [b, l, h, d] and its gradients w.r.t. q, k, v given dO."""
  q, k, v, do = (np.float64(t) for t in (q, k, v, do))
  scale = q.shape[-1] ** -0.5
  s = np.einsum("bqhd,bkhd->bhqk", q, k) * scale
  p = np.exp(s - s.max(-1, keepdims=True))
  p /= p.sum(-1, keepdims=True)
  o = np.einsum("bhqk,bkhd->bqhd", p, v)
  dp = np.einsum("bqhd,bkhd->bhqk", do, v)
  ds = p * (dp - (dp * p).sum(-1, keepdims=True))
  dq = np.einsum("bhqk,bkhd->bqhd", ds, k) * scale
  dk = np.einsum("bhqk,bqhd->bkhd", ds, q) * scale
  dv = np.einsum("bhqk,bqhd->bkhd", p, do)
  return o, (dq, dk, dv)


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
@pytest.mark.parametrize("b, lq, lk, h, d, block_q", [
    (2, 7, 9, 3, 8, 256),     # one block of queries, lq != lk
    (1, 21, 21, 2, 16, 4),    # blocks of 8 queries (4 rounded up): 2 whole, a partial one
    (2, 65, 130, 1, 32, 8),   # keys past one 128-lane tile: 2 on the vector units
    (1, 33, 257, 2, 16, 16),  # a class token past 2 tiles (a ViT's 256 patches + 1)
    (1, 9, 140, 1, 8, 256),   # 12 keys past the tile: all on the MXU
])
def test_flash_attention_matches_numpy(dtype, b, lq, lk, h, d, block_q, monkeypatch):
  monkeypatch.setattr(flash, "BLOCK_Q", block_q)
  keys = jax.random.split(jax.random.key(0), 4)
  q, k, v, do = (jax.random.normal(key, (b, l, h, d)).astype(dtype)
                 for key, l in zip(keys, (lq, lk, lk, lq)))
  ref, ref_grads = np_attention(q.astype(jnp.float32), k.astype(jnp.float32),
                                v.astype(jnp.float32), do.astype(jnp.float32))
  out, vjp = jax.vjp(lambda *a: flash.flash_attention(*a, interpret=True), q, k, v)
  tol = 2e-6 if dtype == jnp.float32 else 4e-2
  np.testing.assert_allclose(np.float64(out.astype(jnp.float32)), ref, atol=tol, rtol=tol)
  for got, want in zip(vjp(do), ref_grads):
    assert got.dtype == dtype
    np.testing.assert_allclose(np.float64(got.astype(jnp.float32)), want,
                               atol=5 * tol, rtol=5 * tol)


@pytest.mark.parametrize("b, lq, lk, h, d, block_q", [
    (2, 7, 9, 3, 8, 256),     # one block of queries
    (1, 21, 13, 2, 16, 4),    # blocks of 8 queries, a partial last one: dk's norm at the end
    (1, 21, 131, 2, 16, 4),   # 3 keys past the tile, on the vector units
])
def test_flash_attention_with_qk_norm_matches_torch(b, lq, lk, h, d, block_q, monkeypatch):
  """The fused QK-norm (LayerNorm of q and k over head_dim, then attention): values and
  gradients w.r.t. q, k, v and the norm's scales and biases, against float64 torch autograd."""
  torch = pytest.importorskip("torch")
  monkeypatch.setattr(flash, "BLOCK_Q", block_q)
  keys = jax.random.split(jax.random.key(1), 5)
  q, k, v, do = (3 * jax.random.normal(key, (b, l, h, d)) + 1
                 for key, l in zip(keys, (lq, lk, lk, lq)))
  norm = 1 + 0.5 * jax.random.normal(keys[4], (4, d))
  eps = 1e-6
  out, vjp = jax.vjp(lambda *a: flash.flash_attention(*a, eps=eps, interpret=True),
                     q, k, v, norm)

  t = [torch.tensor(np.float64(x), requires_grad=True) for x in (q, k, v, norm)]
  ln = lambda x, g, bias: torch.nn.functional.layer_norm(x, (d,), g, bias, eps)
  tq, tk = ln(t[0], t[3][0], t[3][1]), ln(t[1], t[3][2], t[3][3])
  s = torch.einsum("bqhd,bkhd->bhqk", tq, tk) * d ** -0.5
  ref = torch.einsum("bhqk,bkhd->bqhd", torch.softmax(s, -1), t[2])
  ref.backward(torch.tensor(np.float64(do)))
  np.testing.assert_allclose(np.float64(out), ref.detach().numpy(), atol=2e-5, rtol=2e-5)
  for got, want in zip(vjp(do), t):
    np.testing.assert_allclose(np.float64(got), want.grad.numpy(), atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("normed", [False, True])
def test_packed_attention_matches_separate_operands(normed, monkeypatch):
  """q, k, v read in place from one [b, l, 3*h*d] array: the same values and gradients as
  the kernels on three arrays, with a partial last query block and a tail key."""
  monkeypatch.setattr(flash, "BLOCK_Q", 64)
  b, l, h, d = 2, 129, 4, 32
  keys = jax.random.split(jax.random.key(2), 3)
  qkv = jax.random.normal(keys[0], (b, l, 3 * h * d))
  do = jax.random.normal(keys[1], (b, l, h * d))
  norm = 1 + 0.5 * jax.random.normal(keys[2], (4, d)) if normed else None

  def separate(qkv, norm):
    q, k, v = (t.reshape(b, l, h, d) for t in jnp.split(qkv, 3, axis=-1))
    return flash.flash_attention(q, k, v, norm, interpret=True).reshape(b, l, h * d)

  packed = lambda qkv, norm: flash.packed_attention(qkv, h, norm, interpret=True)
  want, want_vjp = jax.vjp(separate, qkv, norm)
  got, got_vjp = jax.vjp(packed, qkv, norm)
  np.testing.assert_allclose(got, want, atol=1e-6, rtol=1e-6)
  for g, w in zip(got_vjp(do), want_vjp(do)):
    if normed or w is not None:
      np.testing.assert_allclose(g, w, atol=1e-5, rtol=1e-5)


def test_flash_attention_keeps_logits_out_of_hbm_on_tpu():
  """Compiled for a v5p chip ahead of time: the kernel's forward and backward pass need
  no HBM buffer as large as the f32 logits, where XLA's attention does."""
  from maejax.train import aot
  device = aot.topology("v5p:2x2x1").devices[0]
  sharding = jax.sharding.SingleDeviceSharding(device)
  b, l, h, d = 8, 513, 4, 32
  x = jax.ShapeDtypeStruct((b, l, h, d), jnp.bfloat16, sharding=sharding)
  logits_bytes = b * h * l * l * 4

  def temporaries(attention):
    grads = lambda q, k, v, do: jax.vjp(attention, q, k, v)[1](do)
    compiled = jax.jit(grads).lower(x, x, x, x).compile()
    return compiled.memory_analysis().temp_size_in_bytes, compiled.as_text()

  flash_temp, text = temporaries(flash.flash_attention)
  xla_temp, _ = temporaries(jax.nn.dot_product_attention)
  assert "tpu_custom_call" in text
  assert xla_temp >= logits_bytes
  assert flash_temp < logits_bytes / 2


def test_keys_past_the_last_tile_go_to_the_vector_units():
  """A class token's key (257, 1,025 keys) leaves whole 128-key tiles to the MXU; more than
  TAIL_KEYS left over, or under one tile, all keys stay on the MXU."""
  assert [flash._mxu_keys(n) for n in (1025, 257, 264, 265, 140, 128, 65)] == [
      1024, 256, 256, 265, 140, 128, 65]
  # The declared MXU work drops by the 9th tile the class token no longer fills.
  assert flash._flops(1, 1025, 1025, 1, 32, 1) == 2 * 1040 * (1024 * 128 + 1 * 32)


def test_query_blocks_cover_the_sequence_with_little_padding():
  """Long sequences go in blocks of about BLOCK_Q queries whose padding is under 8 rows a
  block (1,025 queries: 5 x 208, where 256-row blocks would compute 1,280 rows)."""
  assert flash._query_rows(1025) == 208
  for lq in range(1, 3000):
    rows = flash._query_rows(lq)
    blocks = -(-lq // rows)
    assert rows == lq if lq <= 2 * flash.BLOCK_Q else rows % 8 == 0 and rows <= flash.BLOCK_Q + 7
    assert 0 <= blocks * rows - lq < 8 * blocks


@pytest.mark.parametrize("kind", ["prenorm", "parallel"])
def test_blocks_traced_for_tpus_match_the_cpu_path(kind, monkeypatch):
  """A block as it runs on TPUs (fused QKV product, kernel reading q, k, v in place, QK-norm
  inside; per device under a data-parallel mesh), kernels in Pallas' interpreter: the same
  values and parameter gradients as the [b, l, h, d] path CPUs take."""
  from flax import nnx
  from maejax.models import layers, stack
  for name in ("flash_attention", "packed_attention"):
    monkeypatch.setattr(flash, name, functools.partial(getattr(flash, name), interpret=True))
  with nnx.use_eager_sharding(False):
    block = layers.make_block(kind, 128, 4, qk_norm=True, qkv_bias=True, layerscale=0.1,
                              rngs=nnx.Rngs(0))
  x = jax.random.normal(jax.random.key(3), (4, 130, 128))
  graph, params = nnx.split(block)
  loss = lambda p, x: (nnx.merge(graph, p)(x) ** 2).mean()  # noqa: E731

  def run(platform):
    with stack.traced_for(platform):
      return jax.jit(jax.value_and_grad(loss))(params, x)

  want, want_grads = run("cpu")
  mesh = jax.make_mesh((2,), ("data",), axis_types=(jax.sharding.AxisType.Auto,),
                       devices=jax.devices()[:2])
  with jax.set_mesh(mesh), nnx.logical_axis_rules((("batch", "data"),)):
    got, got_grads = run("tpu")
  np.testing.assert_allclose(got, want, rtol=1e-5)
  for g, w in zip(jax.tree.leaves(got_grads), jax.tree.leaves(want_grads)):
    np.testing.assert_allclose(g, w, atol=1e-6, rtol=1e-4)
