"""Logical axis names -> mesh shardings, for parameters (NNX metadata) and batches.

Parameters carry logical names in their `out_sharding` metadata (`nnx.with_partitioning`);
`config.sharding_rules` maps each logical name to mesh axes. A dimension that the mapped
mesh axes do not divide is replicated instead (one warning counts them), so odd sizes never
stop a run.
"""

import logging
from typing import Any, Sequence

import jax
import numpy as np
from flax import nnx
from jax.sharding import NamedSharding, PartitionSpec as P

Rules = Sequence[tuple[str, Any]]


def rules_dict(rules: Rules) -> dict[str, tuple[str, ...]]:
  """((logical, mesh axes or None), ...) -> {logical: tuple of mesh axes}."""
  out = {}
  for pair in rules:
    if len(pair) != 2:
      raise ValueError(f"config.sharding_rules: entry {pair!r} is not a (logical, mesh axes) pair.")
    logical, axes = pair
    if axes is None:
      axes = ()
    elif isinstance(axes, str):
      axes = (axes,)
    out[logical] = tuple(axes)
  return out


def logical_to_spec(logical_axes: Sequence[str | None], rules: Rules,
                    shape: Sequence[int] | None = None,
                    mesh: jax.sharding.Mesh | None = None,
                    replicated: list | None = None) -> P:
  """Maps logical names to a PartitionSpec; a mesh axis is used at most once (first wins).

  With `shape` and `mesh`, a dimension not divisible by its mesh axes is replicated, and
  (name, size, axes, ways) is appended to `replicated`.
  """
  table = rules_dict(rules)
  used, spec = set(), []
  for dim, name in enumerate(logical_axes):
    if name is None:
      spec.append(None)
      continue
    if name not in table:
      raise ValueError(
          f"logical axis {name!r} has no entry in config.sharding_rules "
          f"({', '.join(table)}); add e.g. (\"{name}\", None) to replicate it.")
    axes = tuple(a for a in table[name] if a not in used)
    if mesh is not None:
      for a in axes:
        if a not in mesh.axis_names:
          raise ValueError(f"config.sharding_rules: {name!r} -> mesh axis {a!r}, but the mesh "
                           f"has axes {mesh.axis_names}.")
    if shape is not None and mesh is not None and axes:
      size = int(np.prod([mesh.shape[a] for a in axes]))
      if shape[dim] % size:
        if replicated is not None:
          replicated.append((name, int(shape[dim]), axes, size))
        axes = ()
    used.update(axes)
    spec.append(None if not axes else axes[0] if len(axes) == 1 else axes)
  return P(*spec)


def _variable_spec(var: nnx.Variable, rules: Rules, mesh: jax.sharding.Mesh,
                   replicated: list) -> P:
  value = var.get_value()
  logical = var.get_metadata().get("out_sharding") or ()
  if not logical:
    return P()
  if len(logical) != len(value.shape):
    raise ValueError(f"parameter of shape {value.shape} has logical axes {logical} "
                     "(one name per dimension expected).")
  return logical_to_spec(logical, rules, value.shape, mesh, replicated)


def state_shardings(abstract_state: nnx.State, mesh: jax.sharding.Mesh, rules: Rules):
  """NamedSharding for every leaf of an (abstract) NNX state, from its logical axes.

  Dimensions the rules shard but the mesh does not divide are replicated, with one warning
  that counts them (each replicated copy costs memory on every device).
  """
  replicated = []

  def one(var):
    if isinstance(var, nnx.Variable):
      return var.replace(NamedSharding(mesh, _variable_spec(var, rules, mesh, replicated)))
    return NamedSharding(mesh, P())
  out = jax.tree.map(one, abstract_state, is_leaf=lambda x: isinstance(x, nnx.Variable))
  if replicated:
    kinds = sorted({f"{name} {size} over {'x'.join(axes)} ({ways})"
                    for name, size, axes, ways in replicated})
    logging.warning("%d parameter dimensions replicated instead of sharded (not divisible by "
                    "their mesh axes): %s", len(replicated), "; ".join(kinds))
  return out


def batch_spec(rules: Rules, ndim: int) -> P:
  return logical_to_spec(("batch",) + (None,) * (ndim - 1), rules)


def batch_sharding(mesh: jax.sharding.Mesh, rules: Rules, ndim: int) -> NamedSharding:
  return NamedSharding(mesh, batch_spec(rules, ndim))


def batch_shards(mesh: jax.sharding.Mesh, rules: Rules) -> int:
  """How many ways the batch dimension is split."""
  spec = batch_spec(rules, 1)[0]
  axes = () if spec is None else (spec,) if isinstance(spec, str) else spec
  return int(np.prod([mesh.shape[a] for a in axes]))


def to_global_batch(local: dict[str, np.ndarray], mesh: jax.sharding.Mesh,
                    rules: Rules) -> dict[str, jax.Array]:
  """This host's slice of the batch -> global arrays sharded over the batch mesh axes."""
  out = {}
  for key, value in local.items():
    value = np.asarray(value)
    sharding = batch_sharding(mesh, rules, value.ndim)
    global_shape = (value.shape[0] * jax.process_count(),) + value.shape[1:]
    out[key] = jax.make_array_from_process_local_data(sharding, value, global_shape)
  return out


def replicated(mesh: jax.sharding.Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())
