"""Train state: a pytree of plain dicts, created directly sharded on the mesh.

    {"step": int32 [], "params": {...}, "opt_state": optax state over params,
     "rest": non-parameter model state, "key": uint32 PRNG key data}

The NNX model is split once (`graphdef` kept on the host); the step merges it back inside
`jit`. Parameters never exist on one host: `init` runs under `jit` with `out_shardings`.
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
  key_paths: frozenset  # Paths in "rest" holding typed PRNG keys (stored as key data).


def _is_key(x) -> bool:
  return jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key)


def _keys_to_data(tree):
  return jax.tree.map(lambda x: jax.random.key_data(x) if _is_key(x) else x, tree)


def _data_to_keys(tree, key_paths):
  return jax.tree_util.tree_map_with_path(
      lambda p, x: jax.random.wrap_key_data(x) if jax.tree_util.keystr(p) in key_paths else x,
      tree)


def abstract_model(model_fn: Callable[[jax.Array], nnx.Module]):
  """(graphdef, abstract params State, abstract rest State) without allocating anything."""
  with nnx.use_eager_sharding(False):
    model = nnx.eval_shape(lambda: model_fn(jax.random.key(0)))
  return nnx.split(model, nnx.Param, ...)


def make_spec(model_fn: Callable[[jax.Array], nnx.Module], tx: optax.GradientTransformation,
              mesh: jax.sharding.Mesh, rules) -> StateSpec:
  """Shapes and shardings of the whole train state (params, optimizer state, ...)."""
  graphdef, params, rest = abstract_model(model_fn)
  replicated = sharding_lib.replicated(mesh)
  params_sh = nnx.to_pure_dict(sharding_lib.state_shardings(params, mesh, rules))
  rest_sh = jax.tree.map(lambda _: replicated, nnx.to_pure_dict(rest))
  key_paths = frozenset(
      jax.tree_util.keystr(p) for p, x in jax.tree_util.tree_leaves_with_path(nnx.to_pure_dict(rest))
      if _is_key(x))
  abstract = jax.eval_shape(lambda: _fresh_state(model_fn, tx, jax.random.key(0)))
  opt_sh = optax.tree_map_params(tx, lambda _, s: s, abstract["opt_state"], params_sh,
                                 transform_non_params=lambda _: replicated)
  shardings = {"step": replicated, "params": params_sh, "opt_state": opt_sh, "rest": rest_sh,
               "key": replicated}
  abstract = jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
                          abstract, shardings)
  return StateSpec(graphdef, abstract, shardings, key_paths)


def _fresh_state(model_fn, tx, key):
  init_key, train_key = jax.random.split(key)
  with nnx.use_eager_sharding(False):
    model = model_fn(init_key)
  _, params, rest = nnx.split(model, nnx.Param, ...)
  params = nnx.to_pure_dict(params)
  return {"step": jnp.zeros((), jnp.int32), "params": params, "opt_state": tx.init(params),
          "rest": _keys_to_data(nnx.to_pure_dict(rest)),
          "key": jax.random.key_data(train_key)}


def init_state(model_fn, tx, spec: StateSpec, seed: int, compiler_options=None) -> dict:
  """A fresh train state, each array created on its devices (no host copy)."""
  init = jax.jit(lambda k: _fresh_state(model_fn, tx, k), out_shardings=spec.shardings,
                 compiler_options=compiler_options)
  return init(jax.random.key(seed))


def merge(spec: StateSpec, params, rest) -> nnx.Module:
  """The NNX model from pure-dict params/rest (use inside jit)."""
  return nnx.merge(spec.graphdef, params, _data_to_keys(rest, spec.key_paths))


def split_rest(model: nnx.Module):
  """A model's non-parameter state as a storable pure dict."""
  _, _, rest = nnx.split(model, nnx.Param, ...)
  return _keys_to_data(nnx.to_pure_dict(rest))


def num_params(spec: StateSpec) -> int:
  return sum(int(x.size) for x in jax.tree.leaves(spec.abstract["params"]))
