"""Running a stack of blocks: a Python loop or one `lax.scan`, with named remat policies.

Parameters stay per block (an `nnx.List`), so checkpoints, importers and `maejax.load` see one
layout whatever `scan_layers` says. Under scan the blocks' parameters are stacked on a leading
axis inside the traced function and XLA compiles the block body once instead of `depth` times
(compile time no longer grows with depth); the stacked copy is one more parameter-sized buffer.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from flax.core import spmd
from jax.sharding import PartitionSpec as P

# What the backward pass keeps from the forward pass of a rematerialised block.
REMAT_POLICIES = {
    "full": None,  # Nothing: recompute the whole block (least memory).
    "dots": jax.checkpoint_policies.checkpoint_dots,  # Every matmul output.
    # Matmuls against weights (not attention's batched q.k / p.v): most of the speed of
    # "dots" for a fraction of its memory at long sequence lengths.
    "dots_no_batch": jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
}


def remat_policy(name: str):
  if name not in REMAT_POLICIES:
    raise ValueError(f"model.remat_policy={name!r}: expected one of {', '.join(REMAT_POLICIES)}")
  return REMAT_POLICIES[name]


# Rules of a model replicated over a `data` mesh axis, its batch split (embedding).
DATA_PARALLEL_RULES = (("batch", "data"),)


def mesh_axes(logical: str, size: int) -> tuple[str, ...] | None:
  """The axes of the active mesh that the `logical` rule names, where they divide `size`;
  None without an active mesh and `nnx.logical_axis_rules`, or when they do not divide it."""
  mesh = jax.sharding.get_abstract_mesh()
  axes = dict(spmd.get_logical_axis_rules()).get(logical)
  if mesh.empty or not axes:
    return None
  axes = tuple(a for a in ((axes,) if isinstance(axes, str) else axes) if a in mesh.axis_names)
  if not axes or size % int(np.prod([mesh.shape[a] for a in axes])):
    return None
  return axes


def constrain_batch(x):
  """Pins dim 0 of an activation [batch, ...] to the mesh axes the `batch` rule names.

  Sharding propagation can lose the batch split inside long block stacks (and in scan
  bodies); this keeps every block boundary data-parallel. A no-op without an active mesh and
  `nnx.logical_axis_rules`, or when those axes do not divide the batch.
  """
  axes = mesh_axes("batch", x.shape[0])
  if axes is None:
    return x
  return jax.lax.with_sharding_constraint(x, P(axes, *([None] * (x.ndim - 1))))


def checkpointed(fn, remat: bool, policy: str = "full"):
  """`fn(module, x, ...)` rematerialised with the named policy when `remat`, else as is."""
  return nnx.remat(fn, policy=remat_policy(policy)) if remat else fn


def run(blocks, x, *per_block, scan: bool = False, remat: bool = False, policy: str = "full"):
  """x [b, ...] through `blocks[i](x, *args_i)` in order, batch pinned between blocks.

  per_block: arrays with a leading axis of len(blocks) (e.g. PRNG keys [n], drop-path rates
  [n]) or None, sliced per block. All blocks must have the same structure under `scan`.
  """
  blocks = list(blocks)
  if not scan or len(blocks) < 2:
    step = checkpointed(lambda blk, x, *a: blk(x, *a), remat, policy)
    for i, blk in enumerate(blocks):
      x = constrain_batch(step(blk, x, *[None if a is None else a[i] for a in per_block]))
    return x
  args = tuple(a if a is None or isinstance(a, jax.Array) else jnp.asarray(a) for a in per_block)
  graphdef, _ = nnx.split(blocks[0])
  stacked = jax.tree.map(lambda *a: jnp.stack(a), *[nnx.state(b) for b in blocks])

  def body(x, inputs):
    state, args = inputs
    return constrain_batch(nnx.merge(graphdef, state)(x, *args)), None

  if remat:
    body = jax.checkpoint(body, policy=remat_policy(policy), prevent_cse=False)
  x, _ = jax.lax.scan(body, x, (stacked, args))
  return x
