"""`config.init_from`: start a run at step 0 from another model's parameters, fresh optimizer.

The source is a pretrained folder (`python -m maejax.convert`, `maejax.save_pretrained`) or a
training workdir: its newest checkpoint, or one step named as `maejax.load` names it
(`DIR/checkpoints/STEP`). Parameters are matched by name and shape:

- every parameter of the run's model comes from the source, except the modules the source
  does not have at all (a WSL classifier's `head` started from an MAE), which keep their fresh
  initialisation; modules of the source the model lacks (an MAE's `decoder` under a WSL head)
  are not used;
- a parameter missing from the source or of another shape is one error naming it and both
  shapes, and so is a model field that changes what the same parameters compute (`norm_eps`,
  `max_channels`, ...): the run's model config must describe the source's architecture.
  Channel-agnostic models keep the source's channel mapping: channel id k reads the source's
  channel-k decoder token and stack.

`plan` reads only configs (before the run writes anything); `load` reads the values on the host
and places them with the state's shardings. The result is recorded in every checkpoint's
metadata under "init_from" (`provenance`).
"""

from __future__ import annotations

import dataclasses

import jax
import ml_collections
import numpy as np
from flax import nnx, traverse_util

from maejax import models
from maejax import workdir as workdir_lib
from maejax.train import checkpoint as checkpoint_lib

# Model fields a run may change from its source: how the same parameters are computed
# (checkpoint.COMPUTE_FIELDS), regularisation and objective, the input size, the name and kind,
# and a classifier head's own fields. Fields whose change shows in the parameters' shapes
# (channels of a standard MAE, width, ...) are caught by the shape check.
FREE_FIELDS = tuple(f.removeprefix("model.") for f in checkpoint_lib.COMPUTE_FIELDS) + (
    "name", "kind", "img_size", "channels", "drop_path", "mask_ratio", "norm_pix_loss",
    "fourier_weight", "num_classes", "label_smoothing", "pool")


@dataclasses.dataclass(frozen=True)
class Plan:
  """Which parameters of the run come from the source; paths are key tuples of the params."""
  where: str  # init_from as given.
  directory: str  # The pretrained folder or the workdir.
  step: int | None  # The workdir's checkpoint; None for a pretrained folder.
  source_model: ml_collections.ConfigDict
  source_note: object  # A converted folder's `source` entry (what it was converted from).
  loaded: tuple  # Paths read from the source.
  fresh: tuple  # Top-level modules kept as initialised.
  unused: tuple  # Top-level modules of the source the model lacks.

  def provenance(self) -> dict:
    """The JSON record kept in checkpoint metadata."""
    note = self.source_note
    return workdir_lib.jsonable({
        "path": self.directory, "step": self.step, "model": self.source_model.get("name"),
        "source": note.to_dict() if hasattr(note, "to_dict") else note,
        "loaded": len(self.loaded), "fresh": list(self.fresh), "unused": list(self.unused)})

  def summary(self, abstract_params) -> str:
    """One line: what was loaded from where, what stays fresh, what is not used."""
    flat = traverse_util.flatten_dict(abstract_params)
    size = sum(int(np.prod(flat[p].shape)) for p in self.loaded)
    where = self.directory + ("" if self.step is None else f" (step {self.step})")
    fresh = ", ".join(self.fresh) or "none"
    unused = ", ".join(self.unused) or "none"
    return (f"init_from: {len(self.loaded)} parameter arrays ({size:,} values) from {where}; "
            f"freshly initialised: {fresh}; not used from the source: {unused}")


def _error(where, text) -> ValueError:
  return ValueError(f"init_from {where}: {text}")


def _name(path) -> str:
  return ".".join(str(k) for k in path)


def _source_config(where: str):
  """(directory, step, model config, source note) of an init_from directory."""
  d = workdir_lib.path(where)
  if not d.is_dir():
    raise FileNotFoundError(
        f"init_from {where}: no such directory; pass a `python -m maejax.convert` or "
        "save_pretrained folder, or a training workdir (DIR/checkpoints/STEP for one step)")
  if workdir_lib.is_pretrained(d):
    config = workdir_lib.read_config(d)
    return str(d), None, config.model, config.get("source")
  workdir, step = workdir_lib.resolve(d)
  steps = workdir_lib.checkpoint_steps(workdir)
  if not steps:
    raise FileNotFoundError(
        f"init_from {where}: holds no maejax model (expected config.json + state/ of a "
        "converted or save_pretrained folder, or checkpoints/<step>/ of a training workdir); "
        "convert other projects' weights first with `python -m maejax.convert`")
  if step is None:
    step = steps[-1]
  elif step not in steps:
    raise _error(where, f"no checkpoint step {step}; kept steps: {steps}")
  with workdir_lib.manager(workdir) as m:
    config = workdir_lib.checkpoint_config(m, step)
  return str(workdir), step, config.model, None


def _field_differences(source_model, model) -> list[tuple[str, object, object]]:
  """[(field, source value, run value)] over the fields both configs have, FREE_FIELDS aside."""
  norm = lambda v: list(v) if isinstance(v, (tuple, list)) else v  # noqa: E731
  return [(k, source_model[k], model[k]) for k in sorted(set(source_model) & set(model))
          if k not in FREE_FIELDS and norm(source_model[k]) != norm(model[k])]


def _fields_hint(differences) -> str:
  if not differences:
    return ("; the run's model config must describe the checkpoint's architecture (pick the "
            "config it was trained or converted with)")
  what = ", ".join(f"model.{k} is {a!r} in the checkpoint, {b!r} in the config"
                   for k, a, b in differences)
  fix = " ".join(f"--config.model.{k}={a}" for k, a, _ in differences)
  return f" ({what}; set {fix})"


def plan(where: str, model_config, abstract_params: dict) -> Plan:
  """Matches the source's parameters to the run's (`abstract_params`: pure-dict shapes) from
  configs alone; raises one-line ValueErrors for what does not fit."""
  directory, step, source_model, note = _source_config(where)
  source_model = models.resolve(source_model)
  source = traverse_util.flatten_dict(nnx.to_pure_dict(nnx.state(
      nnx.eval_shape(lambda: models.create(source_model)), nnx.Param)))
  target = traverse_util.flatten_dict(abstract_params)
  differences = _field_differences(source_model, models.resolve(model_config))
  source_tops, target_tops = {p[0] for p in source}, {p[0] for p in target}
  fresh = tuple(sorted(target_tops - source_tops))
  unused = tuple(sorted(source_tops - target_tops))
  shared = source_tops & target_tops
  if not shared:
    raise _error(where, f"the checkpoint's modules ({', '.join(sorted(source_tops))}) share "
                        f"none with the model's ({', '.join(sorted(target_tops))})"
                        + _fields_hint(differences))
  loaded = tuple(p for p in target if p[0] in shared)
  missing = [p for p in loaded if p not in source]
  if missing:
    more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
    raise _error(where, f"parameter {_name(missing[0])} of shape {target[missing[0]].shape} in "
                        f"the model is missing from the checkpoint{more}"
                        + _fields_hint(differences))
  extra = [p for p in source if p[0] in shared and p not in target]
  if extra:
    more = f" (and {len(extra) - 1} more)" if len(extra) > 1 else ""
    raise _error(where, f"parameter {_name(extra[0])} of shape {source[extra[0]].shape} in the "
                        f"checkpoint has no place in the model{more}" + _fields_hint(differences))
  for p in loaded:
    if tuple(source[p].shape) != tuple(target[p].shape):
      raise _error(where, f"parameter {_name(p)} has shape {tuple(source[p].shape)} in the "
                          f"checkpoint but {tuple(target[p].shape)} in the model"
                          + _fields_hint(differences))
  if differences:
    raise _error(where, "the parameters fit, but the model config computes with them "
                        "differently" + _fields_hint(differences))
  return Plan(where, directory, step, source_model, note, loaded, fresh, unused)


def _on_local_device(x) -> jax.ShapeDtypeStruct:
  return jax.ShapeDtypeStruct(x.shape, x.dtype,
                              sharding=jax.sharding.SingleDeviceSharding(jax.local_devices()[0]))


def read(p: Plan) -> dict:
  """The planned parameters as host NumPy arrays: {path tuple: array}."""
  module = nnx.eval_shape(lambda: models.create(p.source_model))
  if p.step is None:
    abstract = jax.tree.map(_on_local_device, nnx.state(module))
    state = workdir_lib.restore_pretrained_state(p.directory, abstract)
    params = nnx.to_pure_dict(nnx.filter_state(state, nnx.Param))
  else:
    target = jax.tree.map(_on_local_device, nnx.to_pure_dict(nnx.state(module, nnx.Param)))
    with workdir_lib.manager(p.directory) as m:
      params = workdir_lib.restore_params(m, p.step, target)
  flat = traverse_util.flatten_dict(params)
  return {path: np.asarray(flat[path]) for path in p.loaded}


def place(values: dict, abstract_params: dict) -> dict:
  """{path: host array} -> the pure-dict subset of params, each array built on its devices
  with the sharding of `abstract_params` (every process holds the whole host array)."""
  target = traverse_util.flatten_dict(abstract_params)
  out = {}
  for path, value in values.items():
    a = target[path]
    host = value.astype(a.dtype)
    out[path] = jax.make_array_from_callback(a.shape, a.sharding, lambda i, h=host: h[i])
  return traverse_util.unflatten_dict(out)
