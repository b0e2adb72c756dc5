"""Running a stack of blocks: a Python loop or one `lax.scan`, with named remat policies.

Parameters stay per block (an `nnx.List`), so checkpoints, importers and `maejax.load` see one
layout whatever `scan_layers` says. Under scan the blocks' parameters are stacked on a leading
axis inside the traced function and XLA compiles the block body once instead of `depth` times
(compile time no longer grows with depth); the stacked copy is one more parameter-sized buffer.
"""

from __future__ import annotations

import contextlib
import contextvars

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from flax.core import spmd
from jax.sharding import PartitionSpec as P

# The checkpoint name of what attention keeps for its backward pass (output, log-sum-exp).
ATTENTION = "attention"

# The checkpoint name of a weight matmul's output where it is not a dot to remat policies: the
# custom-gradient bf16 product on CPUs (layers.dot_general).
DENSE = "dense"


def _with_names(policy, *names):
  return jax.checkpoint_policies.save_from_both_policies(
      policy, jax.checkpoint_policies.save_only_these_names(*names))


# What the backward pass keeps from the forward pass of a rematerialised block.
REMAT_POLICIES = {
    "full": None,  # Nothing: recompute the whole block (least memory).
    "dots": _with_names(jax.checkpoint_policies.checkpoint_dots, DENSE),  # Every matmul output.
    # Matmuls against weights (not attention's batched q.k / p.v): most of the speed of
    # "dots" for a fraction of its memory at long sequence lengths.
    "dots_no_batch": _with_names(jax.checkpoint_policies.dots_with_no_batch_dims_saveable, DENSE),
    # "dots_no_batch" plus the outputs of CPU attention (named ATTENTION), so the backward
    # pass does not run attention's forward again: the CPU default for scanned stacks.
    "dots_attention": _with_names(jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
                                  DENSE, ATTENTION),
}


# The platform blocks are traced for, where it is not the default backend (a TPU program
# compiled ahead of time on a CPU host; FLOP counts, which need loop-free programs).
_PLATFORM = contextvars.ContextVar("traced_platform", default=None)


@contextlib.contextmanager
def traced_for(platform: str):
  """Within the block, blocks trace as they would on `platform` ("cpu", "gpu", "tpu"):
  attention's kernel and the default remat."""
  token = _PLATFORM.set(platform)
  try:
    yield
  finally:
    _PLATFORM.reset(token)


def platform() -> str:
  return _PLATFORM.get() or jax.default_backend()


def resolve_remat(remat: bool | None, policy: str, scan: bool) -> tuple[bool, str]:
  """(remat, policy) a stack runs with. `remat=None` (the models' default) rematerialises
  scanned stacks on CPUs with "dots_attention" and nothing elsewhere: a scan stacks every
  residual of every block into [depth, ...] buffers that XLA:CPU zero-fills and copies slice
  by slice, which costs a ViT-S/16 step more than recomputing norms and GELU (3.7 s -> 3.1 s
  on 2 cores); GPUs and TPUs keep the residuals."""
  if remat is None:
    return (True, "dots_attention") if scan and platform() == "cpu" else (False, policy)
  return bool(remat), policy


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


def checkpointed(fn, remat: bool | None, policy: str = "full"):
  """`fn(module, x, ...)` rematerialised with the named policy when `remat` (None: not, as
  for any unscanned stack), else as is."""
  return nnx.remat(fn, policy=remat_policy(policy)) if remat else fn


def run(blocks, x, *per_block, scan: bool = False, remat: bool | None = False,
        policy: str = "full"):
  """x [b, ...] through `blocks[i](x, *args_i)` in order, batch pinned between blocks.

  per_block: arrays with a leading axis of len(blocks) (e.g. PRNG keys [n], drop-path rates
  [n]) or None, sliced per block. All blocks must have the same structure under `scan`.
  remat=None: the platform's default (`resolve_remat`).
  """
  blocks = list(blocks)
  scan = scan and len(blocks) > 1
  remat, policy = resolve_remat(remat, policy, scan)
  if not scan:
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
