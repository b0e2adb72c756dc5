"""Device mesh with axes (data, fsdp, tensor) from `config.mesh`; multi-host start-up.

Axis types: Auto by default, deliberately. The model code annotates parameters (logical
names -> NamedShardings given to `jit`) but not every activation, and with Auto axes XLA's
sharding propagation fills those in. Explicit axes (`config.mesh.axis_types="explicit"`)
make every op's sharding part of its type, which the model core would have to spell out
for each einsum; it is there for experiments, not the default.
"""

import logging
import os

import jax
import numpy as np
from jax.experimental import mesh_utils

AXES = ("data", "fsdp", "tensor")



def _launched_multiprocess() -> bool:
  """Whether the launcher (SLURM, Open MPI, a TPU pod, multi-slice) started several processes."""
  env = os.environ
  return (int(env.get("SLURM_NTASKS", "1") or 1) > 1
          or int(env.get("OMPI_COMM_WORLD_SIZE", "1") or 1) > 1
          or "," in env.get("TPU_WORKER_HOSTNAMES", "")
          or bool(env.get("MEGASCALE_COORDINATOR_ADDRESS")))


def axis_sizes(mesh_config, num_devices: int) -> tuple[int, int, int]:
  """(data, fsdp, tensor) sizes; at most one may be -1 (= the devices left over)."""
  sizes = [int(mesh_config[a]) for a in AXES]
  if sizes.count(-1) > 1 or any(s == 0 or s < -1 for s in sizes):
    raise ValueError(f"config.mesh: sizes {dict(zip(AXES, sizes))} must be positive, with at "
                     "most one -1 (= all remaining devices).")
  known = int(np.prod([s for s in sizes if s != -1]))
  if -1 in sizes:
    if num_devices % known:
      raise ValueError(f"config.mesh: {num_devices} devices do not split into "
                       f"{dict(zip(AXES, sizes))}; the fixed sizes' product {known} must "
                       "divide the device count.")
    sizes[sizes.index(-1)] = num_devices // known
  if int(np.prod(sizes)) != num_devices:
    raise ValueError(f"config.mesh: {dict(zip(AXES, sizes))} uses {int(np.prod(sizes))} "
                     f"devices but {num_devices} are present; set one axis to -1.")
  return tuple(sizes)


def make_mesh(mesh_config, devices=None) -> jax.sharding.Mesh:
  """Builds the mesh. With `dcn_data > 1` the `data` axis spans slices/nodes (slow network)
  and the other axes stay inside one slice (create_hybrid_device_mesh)."""
  devices = jax.devices() if devices is None else list(devices)
  sizes = axis_sizes(mesh_config, len(devices))
  kind = str(mesh_config.get("axis_types", "auto")).lower()
  if kind not in ("auto", "explicit"):
    raise ValueError(f"config.mesh.axis_types={kind!r}: expected 'auto' or 'explicit'.")
  axis_type = jax.sharding.AxisType.Auto if kind == "auto" else jax.sharding.AxisType.Explicit
  dcn = int(mesh_config.get("dcn_data", 1))
  if dcn > 1:
    if sizes[0] % dcn:
      raise ValueError(f"config.mesh.dcn_data={dcn} must divide the data axis ({sizes[0]}).")
    ici = (sizes[0] // dcn, sizes[1], sizes[2])
    if hasattr(devices[0], "slice_index"):  # TPU multi-slice: a granule is a slice.
      grid = mesh_utils.create_hybrid_device_mesh(ici, (dcn, 1, 1), devices)
    elif jax.process_count() > 1:  # GPU nodes: a granule is a process (one per node).
      grid = mesh_utils.create_hybrid_device_mesh(ici, (dcn, 1, 1), devices,
                                                  process_is_granule=True)
    else:  # One process (tests): consecutive device blocks stand in for granules.
      grid = np.asarray(devices).reshape(sizes)
  else:
    try:
      grid = mesh_utils.create_device_mesh(sizes, devices)
    except (ValueError, NotImplementedError, AssertionError):
      grid = np.asarray(devices).reshape(sizes)  # Topology unknown (e.g. a device subset).
  return jax.sharding.Mesh(grid, AXES, axis_types=(axis_type,) * len(AXES))


def maybe_initialize_distributed(dist_config) -> None:
  """Calls `jax.distributed.initialize` when configured or when the launcher says so.

  On TPU pods and under SLURM/Open MPI the arguments are found automatically; elsewhere set
  `config.distributed.coordinator_address`, `num_processes` and `process_id` (or the
  JAX_COORDINATOR_ADDRESS / JAX_NUM_PROCESSES / JAX_PROCESS_ID environment variables).
  """
  mode = str(dist_config.get("initialize", "auto")).lower()
  if mode not in ("auto", "always", "never"):
    raise ValueError(f"config.distributed.initialize={mode!r}: expected auto, always or never.")
  if mode == "never" or jax.distributed.is_initialized():
    return
  address = dist_config.get("coordinator_address") or os.environ.get("JAX_COORDINATOR_ADDRESS")
  if mode == "auto" and not (address or _launched_multiprocess()):
    return
  kwargs = {}
  if address:
    kwargs["coordinator_address"] = address
  num = int(dist_config.get("num_processes", -1))
  num = num if num > 0 else int(os.environ.get("JAX_NUM_PROCESSES", -1))
  pid = int(dist_config.get("process_id", -1))
  pid = pid if pid >= 0 else int(os.environ.get("JAX_PROCESS_ID", -1))
  if num > 0:
    kwargs["num_processes"] = num
  if pid >= 0:
    kwargs["process_id"] = pid
  # Only the CPU backend reads this; it lets CPU processes run collectives (tests, laptops).
  jax.config.update("jax_cpu_collectives_implementation", "gloo")
  logging.info("jax.distributed.initialize(%s)", kwargs)
  jax.distributed.initialize(**kwargs)
