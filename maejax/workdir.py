"""The on-disk layout of a training workdir and of imported weights; all I/O through epath.

A training workdir (`python -m maejax.train`), local or on a bucket (`gs://...`):

    config.json            the config of the latest run in it
    checkpoints/<step>/    Orbax items: state (params, optimizer state, ...), data (the Grain
                           iterator of each process), config (what this checkpoint trained
                           with), and custom metadata {"step", "train_flops", "images_seen",
                           "init_from" (when the run started from other weights: path, step,
                           source, counts of loaded / fresh / unused)}
    metrics.jsonl          one JSON object per logged step
    tensorboard/, plots/
    lock.json              while a run holds the workdir: {"host", "pid", "since"} (`Lock`)

A pretrained folder (`maejax.save_pretrained`, `python -m maejax.convert`):

    config.json            the run config; its `model` entry describes the architecture
    state/                 an Orbax checkpoint of the model's parameters

Only this module knows these names; train, the API and eval read and write through it.
"""

from __future__ import annotations

import contextlib
import datetime
import errno
import io
import json
import logging
import math
import os
import signal
import socket
import sys
import threading
from typing import Any

import ml_collections
import numpy as np
import pandas as pd
import jax
import orbax.checkpoint as ocp
from etils import epath
from jax.experimental import multihost_utils

from maejax import config as config_lib

CONFIG = "config.json"
CHECKPOINTS = "checkpoints"
STATE = "state"
METRICS = "metrics.jsonl"
TENSORBOARD = "tensorboard"
PLOTS = "plots"
LOCK = "lock.json"
ITEMS = ("state", "data", "config")  # The items of one training checkpoint.


class _OrbaxReadTasks(logging.Filter):
  """Drops asyncio's "Task exception was never retrieved" reports of Orbax read tasks: when
  one array of a damaged checkpoint fails, its sibling reads fail too and are never awaited;
  the failure itself reaches the caller, which names the checkpoint in one line."""

  def filter(self, record):
    if not str(record.msg).startswith("Task exception was never retrieved"):
      return True
    tb = record.exc_info[2] if record.exc_info else None
    while tb is not None:
      if "orbax" in tb.tb_frame.f_code.co_filename:
        logging.getLogger(__name__).debug("unawaited failed read: %s", record.exc_info[1])
        return False
      tb = tb.tb_next
    return True


logging.getLogger("asyncio").addFilter(_OrbaxReadTasks())


def path(directory) -> epath.Path:
  """An epath (local paths made absolute, `~` expanded; `gs://...` kept as is)."""
  text = os.fspath(directory)
  if "://" in text:
    return epath.Path(text)
  return epath.Path(os.path.abspath(os.path.expanduser(text)))


def default_workdir(config) -> str:
  """`runs/<config name>`: where a run goes without --workdir."""
  return os.path.join("runs", config.get("name", "default"))


def write_bytes(file, data: bytes) -> None:
  """Writes `file` whole, so no reader sees half of it: via a temporary file and a rename
  where the storage allows."""
  file = path(file)
  file.parent.mkdir(parents=True, exist_ok=True)
  if "://" in os.fspath(file):  # Object stores write whole objects.
    file.write_bytes(data)
    return
  tmp = file.parent / f".{file.name}.{os.getpid()}.tmp"
  tmp.write_bytes(data)
  tmp.replace(file)


@contextlib.contextmanager
def output_set(out_dir, names):
  """Yields a staging folder beside `out_dir` for one command's set of output files, which
  then replaces the set in `out_dir` as a whole: the files written, and those of `names` that
  were not written removed (an earlier run's). Where `out_dir` holds only such outputs (or
  does not exist) and is local, the folders swap by rename, so a reader sees the old set or the
  new one, never a mixture; beside other files the outputs move in one by one. Nothing in
  `out_dir` changes when the body raises.
  """
  out = path(out_dir)
  stage = out.parent / f".{out.name}.staging-{os.getpid()}"
  if stage.exists():
    stage.rmtree()
  stage.mkdir(parents=True)
  try:
    yield stage
  except BaseException:
    stage.rmtree()
    raise
  written = {f.name for f in stage.iterdir()}
  # The working directory (or one above it) is never swapped away under the process.
  swappable = "://" not in os.fspath(out) and not os.path.join(os.getcwd(), "").startswith(
      os.path.join(os.fspath(out), ""))
  if swappable and (not out.exists() or {f.name for f in out.iterdir()} <= set(names)):
    old = out.parent / f".{out.name}.old-{os.getpid()}"
    if out.exists():
      out.rename(old)
    stage.rename(out)
    if old.exists():
      old.rmtree()
    return
  out.mkdir(parents=True, exist_ok=True)
  for name in written:
    (stage / name).replace(out / name)
  for name in set(names) - written:
    if (out / name).exists():
      (out / name).unlink()
  stage.rmtree()


def write_text(file, text: str) -> None:
  write_bytes(file, text.encode())


def write_figure(fig, file, dpi: int = 120) -> epath.Path:
  """Saves a matplotlib figure as PNG at `file` (local or bucket); the caller closes it."""
  buffer = io.BytesIO()
  fig.savefig(buffer, format="png", dpi=dpi)
  write_bytes(file, buffer.getvalue())
  return path(file)


def write_config(directory, config) -> epath.Path:
  """`<directory>/config.json` (see `read_config`)."""
  file = path(directory) / CONFIG
  write_text(file, config_lib.to_json(ml_collections.ConfigDict(_as_dict(config))))
  return file


def read_config(directory) -> ml_collections.ConfigDict:
  """The ConfigDict in `<directory>/config.json`, tuples restored."""
  file = path(directory) / CONFIG
  if not file.is_file():
    raise FileNotFoundError(
        f"{file} not found: pass a directory written by maejax (a training workdir, "
        "save_pretrained or `python -m maejax.convert`)")
  return config_lib.from_json(file.read_text())


def jsonable(value):
  """Numbers, arrays, pandas and NumPy scalars as JSON values (NaN, inf and NA -> null):
  the one JSON form of figures, in metrics.jsonl and in every `--json` line."""
  if isinstance(value, dict):
    return {str(k): jsonable(v) for k, v in value.items()}
  if isinstance(value, (list, tuple)):
    return [jsonable(v) for v in value]
  if isinstance(value, np.ndarray):
    return jsonable(value.tolist())
  if isinstance(value, (bool, np.bool_)):
    return bool(value)
  if isinstance(value, (int, np.integer)):
    return int(value)
  if isinstance(value, (float, np.floating)):
    return None if math.isnan(value) or math.isinf(value) else float(value)
  if value is None or isinstance(value, str):
    return value
  if value is pd.NA:
    return None
  return str(value)


def _as_dict(config) -> dict:
  return config.to_dict() if hasattr(config, "to_dict") else dict(config)


# ----------------------------------------------------------------------------- locks

class LockedError(ValueError):
  """Another run holds a workdir or output; the message names it (host, pid, since) and the fix."""


def lock_file(workdir) -> epath.Path:
  """`<workdir>/lock.json`, held while a training run uses the workdir."""
  return path(workdir) / LOCK


def output_lock_file(out) -> epath.Path:
  """`<out>.lock`, held while a run writes the output file `out` (maejax.embed)."""
  out = path(out)
  return out.parent / (out.name + ".lock")


class Lock:
  """An exclusive lock file holding {"host", "pid", "since"} as JSON.

  Locally the file is created with O_EXCL, so of two runs exactly one gets it. A lock whose
  pid no longer runs on this host (the run was killed with -9 or the machine rebooted) is stale
  and taken over with one warning line; one from another host cannot be checked and stays an
  error whose fix is deleting the file. On object stores (gs://) there is no exclusive create:
  the lock is best effort (look, then write), which stops a run started while another runs,
  not two started in the same instant.
  """

  def __init__(self, file, *, flag: str = "--workdir"):
    self.file, self.flag = path(file), flag
    self.held = False
    self._made_dir = False

  def acquire(self) -> Lock:
    """Takes the lock or raises LockedError; writes nothing when it raises."""
    if not self.file.parent.exists():
      self.file.parent.mkdir(parents=True, exist_ok=True)
      self._made_dir = True
    mine = dict(host=socket.gethostname(), pid=os.getpid(),
                since=datetime.datetime.now().astimezone().isoformat(timespec="seconds"))
    for _ in range(3):
      if self._create(json.dumps(mine)):
        self.held = True
        return self
      holder = self.holder()
      if holder is None:  # Released meanwhile.
        continue
      if not _stale(holder):
        self._remove_made_dir()
        raise LockedError(
            f"{self.file.parent} is in use by another run (pid {holder.get('pid')} on "
            f"{holder.get('host')}, since {holder.get('since')}); wait for it to end or pick "
            f"another {self.flag}; if that run is gone, delete {self.file}")
      print(f"WARNING: taking over the stale lock {self.file} (pid {holder['pid']} on "
            f"{holder['host']}, since {holder.get('since')}, no longer runs).",
            file=sys.stderr, flush=True)
      self.file.unlink(missing_ok=True)
    self._remove_made_dir()
    raise LockedError(f"could not take the lock {self.file}; another run keeps taking it")

  def holder(self) -> dict | None:
    """The lock's record ({"host", "pid", "since"}); None when there is no lock file."""
    try:
      text = self.file.read_text()
    except FileNotFoundError:
      return None
    try:
      return dict(json.loads(text))
    except ValueError:  # Being written by its creator this instant.
      return dict(host="?", pid="?", since="now (lock being written)")

  def release(self) -> None:
    if self.held:
      holder = self.holder() or {}
      if holder.get("pid") == os.getpid() and holder.get("host") == socket.gethostname():
        self.file.unlink(missing_ok=True)
      self.held = False
    self._remove_made_dir()

  def _create(self, text: str) -> bool:
    if "://" in os.fspath(self.file):
      if self.file.exists():
        return False
      self.file.write_text(text)
      return True
    try:
      fd = os.open(self.file, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
    except FileExistsError:
      return False
    with os.fdopen(fd, "w") as f:
      f.write(text)
    return True

  def _remove_made_dir(self) -> None:
    if self._made_dir and self.file.parent.is_dir() and not any(self.file.parent.iterdir()):
      self.file.parent.rmdir()
    self._made_dir = False


def _stale(holder: dict) -> bool:
  """Whether a lock's process is gone (decidable only on its own host)."""
  if holder.get("host") != socket.gethostname() or not isinstance(holder.get("pid"), int):
    return False
  try:
    os.kill(holder["pid"], 0)
  except ProcessLookupError:
    return True
  except PermissionError:  # Alive, another user's.
    return False
  return False


@contextlib.contextmanager
def locked(file, *, flag: str = "--workdir"):
  """Holds `Lock(file)` for the block: on process 0 only, the others follow its outcome.

  SIGTERM inside the block exits through the block's `finally`s (the lock is released) unless
  the block installs its own handler (training saves a checkpoint first).
  """
  lock, error = Lock(file, flag=flag), None
  if jax.process_index() == 0:
    try:
      lock.acquire()
    except LockedError as e:
      error = e
  if jax.process_count() > 1:
    ok = bool(multihost_utils.broadcast_one_to_all(np.int32(error is None)))
    if not ok and error is None:
      error = LockedError(f"process 0 could not lock {lock.file}; see its error")
  if error is not None:
    raise error
  old = _exit_on_sigterm()
  try:
    yield lock
  finally:
    if old is not None:
      signal.signal(signal.SIGTERM, old)
    lock.release()


def _exit_on_sigterm():
  """Turns SIGTERM into SystemExit(143) (returns the old handler; None when not changed)."""
  if threading.current_thread() is not threading.main_thread():
    return None
  old = signal.getsignal(signal.SIGTERM)
  if old is not signal.SIG_DFL:
    return None

  def handler(signum, frame):
    del frame
    raise SystemExit(128 + signum)
  signal.signal(signal.SIGTERM, handler)
  return old


# ----------------------------------------------------------------------------- pretrained

def is_pretrained(directory) -> bool:
  d = path(directory)
  return (d / STATE).is_dir() and (d / CONFIG).is_file()


def save_pretrained_state(directory, state) -> None:
  with ocp.StandardCheckpointer() as ckptr:
    ckptr.save(path(directory) / STATE, state, force=True)


def restore_pretrained_state(directory, abstract_state):
  """The model state of a pretrained folder onto `abstract_state`'s shardings."""
  with ocp.StandardCheckpointer() as ckptr:
    try:
      return ckptr.restore(path(directory) / STATE, abstract_state)
    except ValueError as e:
      raise ValueError(f"{path(directory) / STATE} does not fit the model in its {CONFIG}: "
                       f"{e}") from None


# ----------------------------------------------------------------------------- training

def checkpoints_dir(workdir) -> epath.Path:
  return path(workdir) / CHECKPOINTS


def resolve(directory, step: int | None = None) -> tuple[epath.Path, int | None]:
  """(workdir, step) from `<workdir>`, `<workdir>/checkpoints` or `.../checkpoints/<step>`."""
  d = path(directory)
  if d.name.isdigit() and d.parent.name == CHECKPOINTS:
    if step is not None and int(step) != int(d.name):
      raise ValueError(f"step={step} contradicts the checkpoint folder {d}")
    return d.parent.parent, int(d.name)
  if d.name == CHECKPOINTS:
    return d.parent, step
  return d, step


def manager(workdir, *, keep_last: int = 3, keep_every: int = 0, async_save: bool = False,
            create: bool = False) -> ocp.CheckpointManager:
  """The Orbax manager of `<workdir>/checkpoints` (created only with `create`; a manager
  writes nothing until it saves)."""
  options = ocp.CheckpointManagerOptions(
      max_to_keep=max(int(keep_last), 1), keep_period=int(keep_every) or None,
      enable_async_checkpointing=bool(async_save), create=create)
  return ocp.CheckpointManager(checkpoints_dir(workdir), options=options, item_names=ITEMS)


def checkpoint_steps(workdir) -> list[int]:
  """Sorted steps of the finished checkpoints in a training workdir (half-written saves and
  folders set aside as corrupt are not listed)."""
  # A listing, not a manager: opening a manager is a barrier on multi-host runs.
  if not checkpoints_dir(workdir).is_dir():
    return []
  return sorted(int(s) for s in ocp.step.checkpoint_steps(checkpoints_dir(workdir)))


def checkpoint_config(m: ocp.CheckpointManager, step: int) -> ml_collections.ConfigDict:
  """The config a checkpoint was trained with (its `config` item)."""
  raw = m.restore(int(step), args=ocp.args.Composite(config=ocp.args.JsonRestore()))["config"]
  return config_lib.from_json(config_lib.to_json(ml_collections.ConfigDict(raw)))


def checkpoint_metadata(m: ocp.CheckpointManager, step: int) -> dict[str, Any]:
  """{"step", "train_flops", "images_seen"[, "init_from"]} saved with a checkpoint."""
  # The step's metadata file alone: m.metadata(step) also reads each item's metadata and logs
  # 'Item "state" ... could not be restored' for every item no restore has named yet.
  step_dir = m.directory / str(int(step))
  return dict(ocp.metadata.get_step_metadata(step_dir).custom_metadata or {})


def restore_params(m: ocp.CheckpointManager, step: int, target: dict) -> dict:
  """Only `state["params"]` of a checkpoint (the optimizer state stays on disk), onto the
  shapes and shardings of `target` (pure-dict ShapeDtypeStructs)."""
  item = {"params": target}
  restored = m.restore(int(step), args=ocp.args.Composite(state=ocp.args.PyTreeRestore(
      item=item, partial_restore=True,
      restore_args=ocp.checkpoint_utils.construct_restore_args(item))))
  return restored["state"]["params"]
