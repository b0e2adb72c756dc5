"""Block stacks: `scan_layers` and remat policies compute exactly what the Python loop does."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from maejax import models
from maejax.models import stack

# Tiny but with everything scan has to carry: 3 blocks, per-block drop-path rates, LayerScale.
TINY = dict(depth=3, drop_path=0.2, layerscale=1e-1, decoder_depth=2)


def _images(c, seed=0):
  return jax.random.randint(jax.random.key(seed), (2, 32, 32, c), 0, 256).astype(jnp.uint8)


def _pair(name, **kw):
  """The same weights twice: run as a loop, and scanned."""
  loop = models.create(name, rngs=nnx.Rngs(0), **{**TINY, **kw, "scan_layers": False})
  scan = models.create(name, rngs=nnx.Rngs(0), **{**TINY, **kw, "scan_layers": True})
  return loop, scan


def _loss_and_grads(model, batch, key):
  graphdef, params = nnx.split(model)
  def loss(p):
    return nnx.merge(graphdef, p).compute_loss(batch, key)[0]
  return jax.jit(jax.value_and_grad(loss))(params)


@pytest.mark.parametrize("name,kw", [
    ("vit_tiny", {}),  # Default remat=None: the scan with "dots_attention", the loop without.
    ("camae_tiny", {}),  # Parallel blocks; decoder stacks per channel (vmapped, then scanned).
    ("vit_tiny", {"remat": True, "remat_policy": "dots_no_batch"}),
])
def test_scan_equals_loop_loss_and_gradients(name, kw):
  loop, scan = _pair(name, **kw)
  batch = {"image": _images(6 if name == "vit_tiny" else 4)}
  key = jax.random.key(3)  # Drives masks and drop-path: both paths must draw the same.
  (l1, g1), (l2, g2) = _loss_and_grads(loop, batch, key), _loss_and_grads(scan, batch, key)
  np.testing.assert_allclose(l1, l2, rtol=1e-6)
  flat1, flat2 = jax.tree.leaves(g1), jax.tree.leaves(g2)
  assert len(flat1) == len(flat2) and any(float(jnp.abs(g).max()) > 0 for g in flat1)
  for a, b in zip(flat1, flat2):
    np.testing.assert_allclose(a, b, rtol=2e-5, atol=1e-7)


def test_scan_keeps_per_block_drop_path_rates():
  """Rates 0, 0.5, 1 over three blocks (block 3 always drops its branches): the scan must
  apply each block's own rate, as the loop does."""
  loop, scan = _pair("vit_tiny", drop_path=1.0)
  tokens = loop.encoder.tokenize(_images(6))
  key = jax.random.key(1)
  out = scan.encoder(tokens, key=key)
  np.testing.assert_allclose(out, loop.encoder(tokens, key=key), rtol=1e-6, atol=1e-6)
  assert [b.drop_path for b in scan.encoder.blocks] == [0.0, 0.5, 1.0]
  assert not np.allclose(out, scan.encoder(tokens), atol=1e-3)  # Drop-path did something.


@pytest.mark.parametrize("block", [1, 2, 3])
def test_scan_intermediate_block_embeddings(block):
  loop, scan = _pair("vit_tiny")
  images = _images(6)
  np.testing.assert_allclose(scan.embed(images, block=block), loop.embed(images, block=block),
                             rtol=1e-5, atol=1e-6)


def test_scan_compiles_one_block_body():
  """The scanned encoder's program holds one block body: its matmuls do not grow with depth."""
  def matmuls(depth, scan):
    model = models.create("vit_tiny", rngs=nnx.Rngs(0), depth=depth, scan_layers=scan)
    graphdef, params = nnx.split(model)
    f = jax.jit(lambda p, x: nnx.merge(graphdef, p).embed(x))
    return f.lower(params, _images(6)).as_text().count("dot_general")
  assert matmuls(8, True) == matmuls(2, True)
  assert matmuls(8, False) - matmuls(2, False) == 6 * (matmuls(2, True) - 1)  # 6 per block.


def test_default_remat_is_for_scanned_stacks_on_cpus():
  assert stack.resolve_remat(None, "full", scan=True) == (True, "dots_attention")
  assert stack.resolve_remat(None, "full", scan=False) == (False, "full")
  for platform in ("gpu", "tpu"):
    with stack.traced_for(platform):
      assert stack.resolve_remat(None, "full", scan=True) == (False, "full")
  assert stack.resolve_remat(False, "full", scan=True) == (False, "full")
  assert stack.resolve_remat(True, "dots", scan=False) == (True, "dots")


def _exps_in_gradient(policy):
  """Exponentials in the gradient program of a rematerialised scanned vit_tiny: attention's
  softmax, and GELU's erf, each counted once per program (the scan body is traced once)."""
  model = models.create("vit_tiny", rngs=nnx.Rngs(0), **{
      **TINY, "scan_layers": True, "remat": True, "remat_policy": policy})
  graphdef, params = nnx.split(model)
  batch = {"image": _images(6)}
  loss = lambda p: nnx.merge(graphdef, p).compute_loss(batch, jax.random.key(0))[0]  # noqa: E731
  return str(jax.make_jaxpr(jax.grad(loss))(params)).count(" exp ")


def test_dots_attention_keeps_attention_for_the_backward_pass():
  """Under "dots_no_batch" the backward pass runs attention's forward again (its softmax);
  "dots_attention" keeps attention's outputs, so its gradient program has fewer exps."""
  assert _exps_in_gradient("dots_attention") < _exps_in_gradient("dots_no_batch")


def test_unknown_remat_policy_is_a_clear_error():
  with pytest.raises(ValueError,
                     match="remat_policy='fast'.*full, dots, dots_no_batch, dots_attention"):
    stack.remat_policy("fast")


def test_constrain_batch_pins_the_batch_axis():
  mesh = jax.make_mesh((2, 4), ("data", "fsdp"),
                       axis_types=(jax.sharding.AxisType.Auto,) * 2)
  x = jnp.ones((8, 5, 3))
  with jax.set_mesh(mesh), nnx.logical_axis_rules((("batch", ("data", "fsdp")),)):
    y = jax.jit(stack.constrain_batch)(x)
    odd = jax.jit(stack.constrain_batch)(jnp.ones((6, 5, 3)))  # 8 devices do not divide 6.
  assert y.sharding.spec[0] == ("data", "fsdp")
  assert odd.shape == (6, 5, 3)
  assert stack.constrain_batch(x) is x  # No mesh, no rules: untouched.


@pytest.mark.parametrize("name", ["vit_tiny", "camae_tiny", "wsl_tiny_vit"])
def test_scan_keeps_the_parameter_layout(name):
  """Checkpoints, importers and maejax.load see one layout: a loop model's parameters load
  into the scanned model unchanged (and give the same embedding)."""
  loop = models.create(name, rngs=nnx.Rngs(0), scan_layers=False)
  scan = models.create(name, rngs=nnx.Rngs(1), scan_layers=True)
  params = nnx.state(loop, nnx.Param)
  assert jax.tree.structure(params) == jax.tree.structure(nnx.state(scan, nnx.Param))
  nnx.update(scan, params)
  images = _images(6 if name != "camae_tiny" else 3)
  np.testing.assert_allclose(scan.embed(images), loop.embed(images), rtol=1e-5, atol=1e-6)
