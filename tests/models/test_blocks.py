"""Transformer blocks (models/layers.py): LayerScale folded into the residual projections;
which attention kernel GPUs run."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from maejax.models import layers


@pytest.mark.parametrize("kind", ["prenorm", "parallel"])
def test_folded_layerscale_equals_scaling_the_branch(kind):
  """x + gamma * branch(x), as CaiT writes it, with the branch's output projections unscaled:
  the blocks fold gamma into those projections' kernels and biases instead."""
  with nnx.use_eager_sharding(False):
    block = layers.make_block(kind, 64, 4, qkv_bias=True, layerscale=0.5, rngs=nnx.Rngs(0))
  gammas = [m.gamma for _, m in nnx.iter_graph(block) if isinstance(m, layers.LayerScale)]
  for i, g in enumerate(gammas):
    g[...] = jax.random.uniform(jax.random.key(i), g.shape, minval=0.1, maxval=2.0)
  x = jax.random.normal(jax.random.key(9), (2, 17, 64))
  gelu = lambda t: jax.nn.gelu(t, approximate=False)  # noqa: E731
  if kind == "prenorm":
    h = x + block.ls1.gamma[...] * block.attn(block.norm1(x))
    want = h + block.ls2.gamma[...] * block.mlp.fc2(gelu(block.mlp.fc1(block.norm2(h))))
  else:
    y = block.norm(x)
    q, k, v = block.qkv(y)
    q, k = block.qk_norm(q, k)
    branch = (block.attn_out.proj(jax.nn.dot_product_attention(q, k, v))
              + block.mlp_out(gelu(block.mlp_in(y))))
    want = x + block.ls.gamma[...] * branch
  np.testing.assert_allclose(block(x), want, atol=1e-5, rtol=1e-5)


def np_layer_norm(x, scale, bias, eps=1e-6):
  return (x - x.mean(-1, keepdims=True)) / np.sqrt(x.var(-1, keepdims=True) + eps) * scale + bias


def test_prenorm_block_with_layerscale_matches_numpy():
  """timm's pre-norm ViT block with LayerScale (CaiT), written in float64 NumPy:
  x + g1 * proj(attn(qkv(LN1(x)))), then + g2 * fc2(gelu(fc1(LN2(x)))), exact GELU."""
  from scipy.special import erf
  with nnx.use_eager_sharding(False):
    block = layers.make_block("prenorm", 64, 4, qkv_bias=True, layerscale=0.5, rngs=nnx.Rngs(0))
  params = {".".join(map(str, k)): np.asarray(v.get_value(), np.float64)
            for k, v in nnx.to_flat_state(nnx.state(block, nnx.Param))}
  for i, key in enumerate(sorted(params)):  # Every parameter far from its init.
    params[key] = params[key] + np.random.default_rng(i).normal(0, 0.3, params[key].shape)
  nnx.update(block, nnx.from_flat_state({tuple(k.split(".")): v.astype(np.float32)
                                         for k, v in params.items()}))
  p = lambda name: params[name]  # noqa: E731
  x = np.random.default_rng(9).normal(size=(2, 17, 64))
  y = np_layer_norm(x, p("norm1.scale"), p("norm1.bias"))
  qkv = np.einsum("bld,dthe->tbhle", y, p("attn.qkv.proj.kernel")) \
      + p("attn.qkv.proj.bias")[:, None, :, None, :]  # [3, b, heads, l, head_dim]
  s = np.einsum("bhqe,bhke->bhqk", qkv[0], qkv[1]) / np.sqrt(16)
  a = np.exp(s - s.max(-1, keepdims=True))
  o = np.einsum("bhqk,bhke->bqhe", a / a.sum(-1, keepdims=True), qkv[2])
  attn = np.einsum("bqhe,hed->bqd", o, p("attn.out.proj.kernel")) + p("attn.out.proj.bias")
  h = x + p("ls1.gamma") * attn
  z = np_layer_norm(h, p("norm2.scale"), p("norm2.bias")) @ p("mlp.fc1.kernel") + p("mlp.fc1.bias")
  gelu = 0.5 * z * (1 + erf(z / np.sqrt(2)))
  want = h + p("ls2.gamma") * (gelu @ p("mlp.fc2.kernel") + p("mlp.fc2.bias"))
  got = np.asarray(block(jnp.asarray(x, jnp.float32)), np.float64)
  np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4 * np.abs(want).max())


@pytest.mark.parametrize("dtype,head_dim,cuda,want", [
    ("bfloat16", 64, True, "cudnn"), ("float16", 128, True, "cudnn"),
    ("float32", 64, True, "xla"),    # cuDNN's flash kernel takes 16-bit inputs only.
    ("bfloat16", 132, True, "xla"),  # head_dim over 128.
    ("bfloat16", 60, True, "xla"),   # not a multiple of 8.
    ("bfloat16", 64, False, "xla")])  # traced for GPUs on another backend (FLOP counts).
def test_gpu_attention_takes_cudnn_where_it_applies(dtype, head_dim, cuda, want):
  assert layers.gpu_attention_implementation(dtype, head_dim, cuda) == want
  with layers.gpu_attention("xla"):
    assert layers.gpu_attention_implementation(dtype, head_dim, cuda) == "xla"
  with pytest.raises(ValueError, match="expected auto, cudnn or xla"):
    with layers.gpu_attention("flash"):
      pass


def test_bf16_product_on_cpu_is_the_rounded_exact_product():
  """`layers.dot_general` in bf16 on XLA:CPU: f32 accumulation of the bf16 operands, rounded
  once to bf16 (NumPy float64 reference); fp32 products are jax.lax.dot_general's own."""
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.standard_normal((3, 5, 64)), jnp.bfloat16)
  w = jnp.asarray(rng.standard_normal((64, 7)), jnp.bfloat16)
  dims = (((2,), (0,)), ((), ()))
  y = jax.jit(lambda a, b: layers.dot_general(a, b, dims))(x, w)
  assert y.dtype == jnp.bfloat16
  exact = np.asarray(x, np.float64) @ np.asarray(w, np.float64)
  np.testing.assert_allclose(np.asarray(y, np.float64), exact, rtol=2 ** -8, atol=1e-6)
  x32, w32 = x.astype(jnp.float32), w.astype(jnp.float32)
  np.testing.assert_array_equal(layers.dot_general(x32, w32, dims),
                                jax.lax.dot_general(x32, w32, dims))


@pytest.mark.parametrize("n", [1, 2])
def test_bf16_product_gradients_on_cpu(n):
  """The gradients of a bf16 product (n contracted axes, as Linear and LinearGeneral take
  them) are bf16 products too, within bf16 rounding of the float64 ones: for
  loss = sum(c * x.w), dx = c.w^T and dw = x^T.c."""
  rng = np.random.default_rng(1)
  x = jnp.asarray(rng.standard_normal((4, 3, 48) if n == 1 else (4, 3, 8, 6)), jnp.bfloat16)
  k = x.shape[x.ndim - n:]
  w = jnp.asarray(rng.standard_normal(k + (5,)), jnp.bfloat16)
  c = jnp.asarray(rng.standard_normal(x.shape[:x.ndim - n] + (5,)), jnp.bfloat16)
  dims = ((tuple(range(x.ndim - n, x.ndim)), tuple(range(n))), ((), ()))
  loss = lambda a, b: (layers.dot_general(a, b, dims).astype(jnp.float32) * c).sum()  # noqa
  dx, dw = jax.jit(jax.grad(loss, argnums=(0, 1)))(x, w)
  assert dx.dtype == dw.dtype == jnp.bfloat16
  x64, w64, c64 = (np.asarray(t, np.float64) for t in (x, w, c))
  lead = x.ndim - n
  want_dx = np.tensordot(c64, w64, axes=([c.ndim - 1], [w.ndim - 1]))
  want_dw = np.tensordot(x64, c64, axes=(list(range(lead)), list(range(lead))))
  np.testing.assert_allclose(np.asarray(dx, np.float64), want_dx, rtol=2 ** -7, atol=1e-2)
  np.testing.assert_allclose(np.asarray(dw, np.float64), want_dw, rtol=2 ** -7, atol=1e-2)


@pytest.mark.parametrize("dtype,want", [("float32", {"f32"}), ("bfloat16", {"bf16"})])
def test_cpu_program_multiplies_in_the_models_precision(dtype, want):
  """Every product of a ViT's compiled CPU embedding takes operands of the model's dtype: in
  bf16 none is converted to f32 before it (XLA:CPU does that to bf16 x bf16 -> bf16 dots,
  which leaves AMX and YNNPACK's bf16 kernels unused)."""
  from maejax import models
  from maejax.cli import bench
  model = models.create("vit_tiny", rngs=nnx.Rngs(0), dtype=dtype)
  x = jnp.asarray(np.random.default_rng(0).integers(0, 256, (2, 32, 32, 6), np.uint8))
  graph, state = nnx.split(model)
  text = jax.jit(lambda s: nnx.merge(graph, s).embed(x)).lower(state).compile().as_text()
  assert set(bench.dot_kernels(text)["dot_operand_dtypes"]) == want
