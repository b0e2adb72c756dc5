"""Train state: a pytree of plain dicts, created directly sharded on the mesh.

    {"step": int32 [], "params": {...}, "opt_state": optax state over params,
     "key": uint32 PRNG key data}

Models hold parameters only (fixed tables such as sin-cos positions are computed at call
time), so params and the graphdef rebuild the whole model. The NNX model is split once (`graphdef` kept on the host); the step merges it back inside
`jit`. Parameters never exist on one host: `init` runs under `jit` with `out_shardings` (a run
started from other weights reads those on each host and places them shard by shard first:
maejax.train.init_from).
"""

import dataclasses
from typing import Any, Callable

import jax
import jax.numpy as jnp
import optax
from flax import nnx

from maejax.train import sharding as sharding_lib


@dataclasses.dataclass(frozen=True)
class StateSpec:
  """What is needed to build, shard, merge and restore a train state."""
  graphdef: Any
  abstract: dict  # ShapeDtypeStructs carrying their NamedShardings.
  shardings: dict  # NamedSharding per leaf of the state.


def abstract_model(model_fn: Callable[[jax.Array], nnx.Module]):
  """(graphdef, abstract params State) without allocating anything."""
  model = nnx.eval_shape(lambda: model_fn(jax.random.key(0)))
  graphdef, params = nnx.split(model, nnx.Param)
  return graphdef, params


def make_spec(model_fn: Callable[[jax.Array], nnx.Module], tx: optax.GradientTransformation,
              mesh: jax.sharding.Mesh, rules) -> StateSpec:
  """Shapes and shardings of the whole train state (params, optimizer state, ...)."""
  graphdef, params = abstract_model(model_fn)
  replicated = sharding_lib.replicated(mesh)
  params_sh = nnx.to_pure_dict(sharding_lib.state_shardings(params, mesh, rules))
  abstract = jax.eval_shape(lambda: _fresh_state(model_fn, tx, jax.random.key(0)))
  opt_sh = optax.tree_map_params(tx, lambda _, s: s, abstract["opt_state"], params_sh,
                                 transform_non_params=lambda _: replicated)
  shardings = {"step": replicated, "params": params_sh, "opt_state": opt_sh, "key": replicated}
  abstract = jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
                          abstract, shardings)
  return StateSpec(graphdef, abstract, shardings)


def _fresh_state(model_fn, tx, key, loaded=None):
  init_key, train_key = jax.random.split(key)
  params = nnx.to_pure_dict(nnx.state(model_fn(init_key), nnx.Param))
  if loaded:  # Replaced leaves: XLA drops their random init.
    params = _overlay(params, loaded)
  return {"step": jnp.zeros((), jnp.int32), "params": params, "opt_state": tx.init(params),
          "key": jax.random.key_data(train_key)}


def _overlay(params: dict, loaded: dict) -> dict:
  """`params` with the leaves that the nested subset `loaded` holds replaced by its own."""
  return {k: (_overlay(v, loaded[k]) if isinstance(v, dict) else loaded[k]) if k in loaded
          else v for k, v in params.items()}


def init_state(model_fn, tx, spec: StateSpec, seed: int, compiler_options=None,
               loaded: dict | None = None) -> dict:
  """A fresh train state, each array created on its devices (no host copy).

  loaded: a pure-dict subset of the params, already on the state's shardings (from another
  model: maejax.train.init_from), that replaces the fresh leaves; the optimizer state is
  initialised over the result. Its buffers are donated.
  """
  init = jax.jit(lambda k, p: _fresh_state(model_fn, tx, k, p), out_shardings=spec.shardings,
                 donate_argnums=1, compiler_options=compiler_options)
  return init(jax.random.key(seed), loaded or {})


def merge(spec: StateSpec, params) -> nnx.Module:
  """The NNX model from pure-dict params (use inside jit)."""
  return nnx.merge(spec.graphdef, params)


def num_params(spec: StateSpec) -> int:
  return sum(int(x.size) for x in jax.tree.leaves(spec.abstract["params"]))
