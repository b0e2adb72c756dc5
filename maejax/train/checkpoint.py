"""Orbax checkpoints of the train state, the Grain iterator and the config.

Layout: `<workdir>/checkpoints/<step>/{state,data,config}` plus Orbax metadata holding
`custom_metadata` = {"step", "train_flops" (cumulative, analytic), "images_seen"}. A
checkpoint directory is self-describing: `config` is the ConfigDict it was trained with.
Every process writes its own shards (and its own iterator state).
"""

import logging
import os
import shutil
import time
from typing import Any

import grain
import jax
import orbax.checkpoint as ocp
from jax.experimental import multihost_utils

from maejax.train import config as config_lib

ITEMS = ("state", "data", "config")

# Replica-parallel saving splits each replicated array across its replicas; for small arrays
# the slicing (one compiled slice per shape) costs more than the write it spreads.
def _register_array_handler():
  absl_log = logging.getLogger("absl")
  level = absl_log.level
  absl_log.setLevel(logging.ERROR)  # The override is intended: no "overriding" warning.
  try:
    ocp.type_handlers.register_type_handler(
        jax.Array, ocp.type_handlers.ArrayHandler(min_slice_bytes_for_replica_parallel=1 << 20),
        override=True)
  finally:
    absl_log.setLevel(level)


_register_array_handler()


class Checkpointer:
  """Async saves every `ckpt_every` steps; keeps the last `keep_last` plus every multiple of
  `keep_every`; restores the newest readable checkpoint onto any mesh."""

  def __init__(self, directory: str, config, *, async_save: bool | None = None):
    self.directory = os.path.abspath(directory)
    self.config = config
    async_save = config.get("async_checkpoint", True) if async_save is None else async_save
    keep_every = int(config.get("keep_every", 0))
    options = ocp.CheckpointManagerOptions(
        max_to_keep=max(int(config.get("keep_last", 3)), 1),
        keep_period=keep_every if keep_every > 0 else None,
        enable_async_checkpointing=bool(async_save), create=True)
    self.manager = ocp.CheckpointManager(self.directory, options=options, item_names=ITEMS)

  def all_steps(self) -> list[int]:
    return list(self.manager.all_steps())

  def latest_step(self) -> int | None:
    return self.manager.latest_step()

  def save(self, step: int, state: dict, data_iter=None, *, train_flops: float = 0.0,
           images_seen: int = 0, force: bool = False) -> bool:
    """Starts saving (async); returns False when a checkpoint for `step` already exists."""
    if step in self.manager.all_steps():
      return False
    args = {"state": ocp.args.StandardSave(state),
            "config": ocp.args.JsonSave(self.config.to_dict())}
    if data_iter is not None:
      args["data"] = grain.checkpoint.CheckpointSave(data_iter)
    meta = {"step": int(step), "train_flops": float(train_flops), "images_seen": int(images_seen)}
    return self.manager.save(step, args=ocp.args.Composite(**args), custom_metadata=meta,
                             force=force)

  def wait(self) -> None:
    self.manager.wait_until_finished()

  def close(self) -> None:
    self.manager.wait_until_finished()
    self.manager.close()

  def metadata(self, step: int) -> dict[str, Any]:
    return dict(self.manager.metadata(step).custom_metadata or {})

  def restore(self, abstract_state: dict, data_iter=None, step: int | None = None):
    """Restores onto the shardings in `abstract_state` (any mesh).

    Returns (step, state, metadata), or None when there is no checkpoint. With `step=None`
    the newest checkpoint is used; one that cannot be read (corrupt, half-written) is moved
    aside to `<step>.corrupt-<time>` with a warning and the previous one is tried.
    """
    steps = sorted(self.all_steps(), reverse=True) if step is None else [step]
    for s in steps:
      args = {"state": ocp.args.StandardRestore(abstract_state)}
      if data_iter is not None:
        args["data"] = grain.checkpoint.CheckpointRestore(data_iter)
      try:
        restored = self.manager.restore(s, args=ocp.args.Composite(**args))
        meta = self.metadata(s)
      except Exception as e:  # pylint: disable=broad-except
        if step is not None:
          raise
        self._set_aside(s, e)
        continue
      return s, restored["state"], meta
    return None

  def _set_aside(self, step: int, error: Exception) -> None:
    src = os.path.join(self.directory, str(step))
    dst = f"{src}.corrupt-{int(time.time())}"
    logging.warning("checkpoint %s cannot be restored (%s: %s); moved it to %s and trying the "
                    "previous one.", src, type(error).__name__, str(error)[:300], dst)
    print(f"WARNING: checkpoint step {step} in {self.directory} is unreadable "
          f"({type(error).__name__}); falling back to the previous checkpoint (kept the "
          f"unreadable one at {dst}).", flush=True)
    if jax.process_index() == 0 and os.path.exists(src):
      shutil.move(src, dst)
    if jax.process_count() > 1:
      multihost_utils.sync_global_devices(f"maejax_ckpt_set_aside_{step}")
    self.manager.reload()


def read_config(checkpoint_dir: str):
  """The ConfigDict stored in `<workdir>/checkpoints` (newest step) or a workdir's config.json."""
  path = os.path.join(checkpoint_dir, "config.json")
  if os.path.isfile(path):
    with open(path) as f:
      return config_lib.from_json(f.read())
  steps = sorted((int(d) for d in os.listdir(checkpoint_dir) if d.isdigit()), reverse=True)
  if not steps:
    raise FileNotFoundError(f"{checkpoint_dir}: no config.json and no checkpoint step folders; "
                            "give a workdir written by `python -m maejax.train`.")
  with open(os.path.join(checkpoint_dir, str(steps[0]), "config", "metadata")) as f:
    return config_lib.from_json(f.read())
