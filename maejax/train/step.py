"""The train step: a pure function of (state, batch), jitted with shardings and donation."""

from typing import Callable

import jax
import jax.numpy as jnp
import optax
from jax.sharding import NamedSharding

from maejax.train import sharding as sharding_lib
from maejax.train import state as state_lib


def make_train_step(spec: state_lib.StateSpec, tx: optax.GradientTransformation,
                    schedule: optax.Schedule, grad_accum_steps: int = 1) -> Callable:
  """Returns `train_step(state, batch) -> (state, metrics)`, pure and unjitted.

  batch: {"image": uint8 [batch, height, width, channels], "channel_ids": int32 [batch,
  channels], ...}. With `grad_accum_steps = A` the batch is split into A micro-batches of
  batch/A (a `scan`, so memory is that of one micro-batch) and their gradients averaged.
  The step's PRNG key is fold_in(state key, step), so a resumed run draws the same masks.
  """

  def loss_fn(params, batch, key):
    return state_lib.merge(spec, params).compute_loss(batch, key)

  grad_fn = jax.value_and_grad(loss_fn, has_aux=True)

  def accumulate(params, batch, key):
    if grad_accum_steps == 1:
      (loss, metrics), grads = grad_fn(params, batch, key)
      return loss, metrics, grads
    micro = jax.tree.map(lambda x: _split_micro(x, grad_accum_steps), batch)

    def body(grads_sum, inputs):
      i, mb = inputs
      (loss, metrics), grads = grad_fn(params, mb, jax.random.fold_in(key, i))
      return jax.tree.map(jnp.add, grads_sum, grads), (loss, metrics)

    zeros = jax.tree.map(jnp.zeros_like, params)
    grads, (losses, metrics) = jax.lax.scan(body, zeros, (jnp.arange(grad_accum_steps), micro))
    grads = jax.tree.map(lambda g: g / grad_accum_steps, grads)
    return losses.mean(), jax.tree.map(jnp.mean, metrics), grads

  def train_step(state, batch):
    step = state["step"]
    key = jax.random.fold_in(jax.random.wrap_key_data(state["key"]), step)
    params = state["params"]
    loss, metrics, grads = accumulate(params, batch, key)
    updates, opt_state = tx.update(grads, state["opt_state"], params)
    params = optax.apply_updates(params, updates)
    metrics = dict(metrics)
    metrics.update(loss=loss, grad_norm=optax.tree.norm(grads), lr=schedule(step))
    new_state = {"step": step + 1, "params": params, "opt_state": opt_state,
                 "key": state["key"]}
    return new_state, metrics

  return train_step


def _split_micro(x, n):
  """[batch, ...] -> [n, batch / n, ...], micro-batch i = rows i, i+n, ... so every
  device's contiguous shard of the batch stays on that device."""
  if x.shape[0] % n:
    raise ValueError(f"batch of {x.shape[0]} does not split into grad_accum_steps={n} "
                     "micro-batches; make config.batch_size a multiple of it.")
  return jnp.swapaxes(x.reshape((x.shape[0] // n, n) + x.shape[1:]), 0, 1)


# XLA options for programs whose compile time matters more than their run time (tests,
# `gpu_check --tiny` on a CPU).
FAST_COMPILE = {"xla_backend_optimization_level": 0}


def jit_train_step(train_step: Callable, spec: state_lib.StateSpec,
                   mesh: jax.sharding.Mesh, rules, compiler_options=None) -> Callable:
  """jit with the state's shardings in and out, the batch sharded over its mesh axes,
  metrics replicated, and the old state's buffers donated to the new one.

  compiler_options: XLA options (tests use FAST_COMPILE).
  """
  batch_sh = NamedSharding(mesh, sharding_lib.batch_spec(rules, 1))
  return jax.jit(train_step, in_shardings=(spec.shardings, batch_sh),
                 out_shardings=(spec.shardings, sharding_lib.replicated(mesh)),
                 donate_argnums=(0,), compiler_options=compiler_options)
