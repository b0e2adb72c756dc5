"""Orbax checkpoints of the train state, the Grain iterator and the config.

Where they live is maejax.workdir's business; this module saves them and restores the newest
one that can be read, onto any mesh. Every process writes its own shards (and its own
iterator state).
"""

import logging
import time

import grain
import jax
import orbax.checkpoint as ocp
from jax.experimental import multihost_utils

from maejax import config as config_lib
from maejax import workdir as workdir_lib

# Fields whose change makes a checkpoint's state mean something else (its shapes, the
# optimizer's moments, the channels or crops the data iterator yields); resuming with another
# value is refused. Everything else (lr, total_steps, log_every, ...) may change on resume.
STATE_FIELDS = ("model.", "optimizer", "b1", "b2", "data.source", "data.channels",
                "data.sample_channels", "data.crop_size")
# How the same state is computed: free to change on resume.
COMPUTE_FIELDS = ("model.remat", "model.remat_policy", "model.scan_layers", "model.dtype")


def _register_array_handler():
  # Replica-parallel saving splits each replicated array across its replicas; for small arrays
  # the slicing (one compiled slice per shape) costs more than the write it spreads.
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


class CheckpointError(ValueError):
  """No checkpoint of a workdir can be used; nothing in the workdir was changed."""


def changed_fields(saved, requested) -> list[tuple[str, object, object]]:
  """[(field, saved value, requested value)] over STATE_FIELDS."""
  old, new = config_lib.flatten(saved), config_lib.flatten(requested)
  names = sorted(n for n in set(old) | set(new)
                 if n not in COMPUTE_FIELDS
                 and any(n == f or (f.endswith(".") and n.startswith(f)) for f in STATE_FIELDS))
  norm = lambda v: list(v) if isinstance(v, (tuple, list)) else v  # noqa: E731
  return [(n, old.get(n), new.get(n)) for n in names if norm(old.get(n)) != norm(new.get(n))]


def check_resumable(workdir, config, *, resume: bool) -> None:
  """Raises CheckpointError (one line: the fields, both values, the fix) when `workdir`'s
  checkpoints cannot continue as `config`; reads only, writes nothing."""
  steps = workdir_lib.checkpoint_steps(workdir)
  if not steps:
    return
  where = workdir_lib.checkpoints_dir(workdir)
  if not resume:
    raise CheckpointError(f"{where} already holds checkpoints (latest step {steps[-1]}) and "
                          "resume is off; pick another --workdir.")
  with workdir_lib.manager(workdir) as m:
    for step in reversed(steps):
      try:
        saved = workdir_lib.checkpoint_config(m, step)
      except Exception:  # pylint: disable=broad-except  (unreadable: restore falls back)
        continue
      changed = changed_fields(saved, config)
      if changed:
        what = "; ".join(f"{n} {_show(a)} in the checkpoint, {_show(b)} requested"
                         for n, a, b in changed)
        fix = " ".join(f"--config.{n}={_show(a)}" for n, a, _ in changed if a is not None)
        raise CheckpointError(
            f"{where} holds checkpoints (step {step}) of another setup: {what}. Nothing was "
            f"changed. Resume with the old values ({fix}) or train the new setup in another "
            "--workdir.")
      return


def _show(value) -> str:
  return str(list(value) if isinstance(value, tuple) else value).replace(" ", "")


class Checkpointer:
  """Async saves every `ckpt_every` steps; keeps the last `keep_last` plus every multiple of
  `keep_every`; restores the newest readable checkpoint onto any mesh."""

  def __init__(self, workdir, config, *, async_save: bool | None = None):
    self.directory = workdir_lib.checkpoints_dir(workdir)
    self.config = config
    self.init_from = None  # The run's start (init_from.Plan.provenance), kept in every save.
    async_save = config.get("async_checkpoint", True) if async_save is None else async_save
    self.manager = workdir_lib.manager(
        workdir, keep_last=int(config.get("keep_last", 3)),
        keep_every=max(int(config.get("keep_every", 0)), 0), async_save=async_save, create=True)

  def all_steps(self) -> list[int]:
    return sorted(self.manager.all_steps())

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
    if self.init_from is not None:
      meta["init_from"] = self.init_from
    return self.manager.save(step, args=ocp.args.Composite(**args), custom_metadata=meta,
                             force=force)

  def wait(self) -> None:
    self.manager.wait_until_finished()

  def close(self) -> None:
    self.manager.wait_until_finished()
    self.manager.close()

  def metadata(self, step: int) -> dict:
    return workdir_lib.checkpoint_metadata(self.manager, step)

  def restore(self, abstract_state: dict, data_iter=None):
    """Restores the newest readable checkpoint onto the shardings in `abstract_state`.

    Returns (step, state, metadata), or None when there is no checkpoint. A checkpoint that
    cannot be read (truncated, missing files) is moved aside to `<step>.corrupt-<time>`, with
    one warning line, only once an earlier one has restored; when none can be read, raises
    CheckpointError and changes nothing.
    """
    unreadable = []
    for step in sorted(self.all_steps(), reverse=True):
      # The config item too: Orbax warns about every item a restore leaves out.
      args = {"state": ocp.args.StandardRestore(abstract_state),
              "config": ocp.args.JsonRestore()}
      if data_iter is not None:
        args["data"] = grain.checkpoint.CheckpointRestore(data_iter)
      try:
        restored = self.manager.restore(step, args=ocp.args.Composite(**args))
        meta = self.metadata(step)
      except Exception as e:  # pylint: disable=broad-except
        logging.debug("checkpoint %d unreadable", step, exc_info=True)
        unreadable.append((step, e))
        continue
      for bad, error in unreadable:
        self._set_aside(bad, error, step)
      return step, restored["state"], meta
    if unreadable:
      step, error = unreadable[0]
      raise CheckpointError(
          f"no checkpoint in {self.directory} can be read (steps "
          f"{', '.join(str(s) for s, _ in unreadable)}; step {step}: {_first_line(error)}). "
          "Nothing was changed; repair or remove them, or pick another --workdir.")
    return None

  def _set_aside(self, step: int, error: Exception, restored: int) -> None:
    src = self.directory / str(step)
    dst = self.directory / f"{step}.corrupt-{int(time.time())}"
    if jax.process_index() == 0:
      print(f"WARNING: checkpoint step {step} in {self.directory} is unreadable "
            f"({_first_line(error)}); resumed from step {restored} and moved it to {dst}.",
            flush=True)
      if src.exists():
        src.rename(dst)
    if jax.process_count() > 1:
      multihost_utils.sync_global_devices(f"maejax_ckpt_set_aside_{step}")
    self.manager.reload()


def _first_line(error: Exception) -> str:
  text = str(error).strip().splitlines()
  return f"{type(error).__name__}: {text[0][:200] if text else ''}"
