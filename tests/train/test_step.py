"""The sharded train step equals the single-device step and compiles once; accumulation."""

import chex
import jax
import ml_collections
import numpy as np
import pytest
from flax import nnx

from maejax import config as config_lib
from maejax.train import loop
from maejax.train import mesh as mesh_lib
from maejax.train import optimizer as optimizer_lib
from maejax.train import sharding as sharding_lib
from maejax.train import state as state_lib
from maejax.train import step as step_lib
from tests.train.tiny_model import TinyMAE

RULES = config_lib.DEFAULT_SHARDING_RULES
FAST = step_lib.FAST_COMPILE


def _config(**kw):
  c = config_lib.load_config("configs/demo.py")
  c.model.depth = 1
  c.model.channels = c.model.decoder_channels = 2
  c.data.channels = (0, 1)
  c.optimizer = "adamw"  # Smooth in its inputs, unlike Lion's sign(): a fair comparison.
  c.lr, c.total_steps = 1e-3, 10
  c.update(kw)
  return c


def _batches(n=2, batch=8, size=32, channels=2, seed=0):
  rng = np.random.default_rng(seed)
  return [{"image": rng.integers(0, 256, (batch, size, size, channels), dtype=np.uint8),
           "channel_ids": np.tile(np.arange(channels, dtype=np.int32), (batch, 1))}
          for _ in range(n)]


def _run(config, mesh_sizes, batches, model_fn=None, accum=1):
  chex.clear_trace_counter()  # Counts are per function source, shared by every _run.
  devices = jax.devices()[:int(np.prod(mesh_sizes))]
  mesh = mesh_lib.make_mesh(ml_collections.ConfigDict(
      dict(zip(("data", "fsdp", "tensor"), mesh_sizes))), devices)
  model_fn = model_fn or loop.model_fn_for(config.model)
  tx = optimizer_lib.make_optimizer(config)
  spec = state_lib.make_spec(model_fn, tx, mesh, RULES)
  state = state_lib.init_state(model_fn, tx, spec, seed=0, compiler_options=FAST)
  fn = step_lib.jit_train_step(
      # Every call after the first must reuse the compiled step (new data, new step count).
      chex.assert_max_traces(
          step_lib.make_train_step(spec, tx, optimizer_lib.schedule(config), accum), n=1),
      spec, mesh, RULES, FAST)
  losses = []
  with jax.set_mesh(mesh), nnx.logical_axis_rules(RULES):
    for b in batches:
      state, metrics = fn(state, sharding_lib.to_global_batch(b, mesh, RULES))
      losses.append(float(metrics["loss"]))
  return losses, jax.device_get(state["params"]), metrics


@pytest.fixture(scope="module")
def single_device():
  return _run(_config(), (1, 1, 1), _batches())


@pytest.mark.parametrize("mesh_sizes", [(8, 1, 1), (2, 4, 1), (4, 1, 2)],
                         ids=["data", "fsdp", "tensor"])
def test_sharded_step_equals_single_device(single_device, mesh_sizes):
  losses, params, metrics = _run(_config(), mesh_sizes, _batches())
  ref_losses, ref_params, _ = single_device
  np.testing.assert_allclose(losses, ref_losses, rtol=1e-5)
  diff = max(float(np.abs(a - b).max())
             for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(ref_params)))
  # Adam divides by sqrt(v): gradients that differ in the last bits move tiny-gradient
  # parameters by a visible fraction of one update (lr = 1e-3), so allow 5% of it.
  assert diff < 5e-5, f"max abs parameter difference {diff}"
  assert {"loss", "grad_norm", "lr", "mse"} <= set(metrics)
  # lr of step index 1 under a 1-step warm-up then cosine over 10 steps: lr * cos-decay.
  np.testing.assert_allclose(float(metrics["lr"]), 1e-3 * 0.5 * (1 + np.cos(np.pi * 0 / 9)),
                             rtol=1e-6)
  print(f"sharded {mesh_sizes} vs single device: max abs parameter diff {diff:.2e}")


def test_grad_accumulation_equals_one_big_batch():
  # A fixed mask (key unused) makes micro-batches and the whole batch see the same loss terms,
  # so two accumulated halves must give the whole batch's gradient.
  config = _config()
  def model_fn(key):  # As models.create builds: no eager sharding (the state jits do).
    with nnx.use_eager_sharding(False):
      return TinyMAE(rngs=nnx.Rngs(key), fixed_mask=True)
  batches = [{"image": b["image"]} for b in _batches(n=1, size=8)]
  one, p_one, m_one = _run(config, (1, 1, 1), batches, model_fn=model_fn, accum=1)
  two, p_two, m_two = _run(config, (2, 1, 1), batches, model_fn=model_fn, accum=2)
  np.testing.assert_allclose(two, one, rtol=1e-5)
  np.testing.assert_allclose(float(m_two["grad_norm"]), float(m_one["grad_norm"]), rtol=1e-4)
  for a, b in zip(jax.tree.leaves(p_one), jax.tree.leaves(p_two)):
    np.testing.assert_allclose(a, b, atol=1e-6)
