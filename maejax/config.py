"""The one config language of every maejax command.

A run is one ml_collections.ConfigDict. A config file is plain Python with
`get_config(arg=None) -> ConfigDict`; `--config configs/vitl8.py:arg` passes `arg` through,
`--config vitl8:arg` names a config shipped with the package (configs/ is the package
maejax.configs) and `--config run/config.json` reads a config a run wrote. `--config.<field>=<value>` overrides are
typed by the field they replace, so `--config.batch_size=abc` or `--config.no_such_field=1` is
one clear ValueError. `to_json` / `from_json` round-trip a config (tuples survive).
"""

import ast
import importlib.util
import json
import os
import textwrap
from typing import Any, Sequence

import ml_collections
from etils import epath
from ml_collections import config_dict

from maejax import data
from maejax import models

# Logical axis -> mesh axes. Parameters carry the logical names (maejax/models); activations
# use `batch` and `length`. Everything not named here is replicated.
DEFAULT_SHARDING_RULES = (
    ("batch", ("data", "fsdp")),
    ("length", None),
    ("embed", "fsdp"),
    ("mlp", "tensor"),
    ("heads", "tensor"),
    ("kv", None),
    ("vocab", None),
    ("channels", None),
    ("norm", None),
)


def default_config() -> ml_collections.ConfigDict:
  """Training defaults (the paper's recipe); config files override model/data/sizes."""
  c = ml_collections.ConfigDict()
  c.name = "default"
  c.model = ml_collections.ConfigDict({"name": "vits16"})
  c.data = _default_data_config()

  c.batch_size = 4096  # Global batch, all hosts together.
  c.grad_accum_steps = 1  # Micro-batches per optimizer step (scan inside the step).
  c.total_steps = 100_000
  c.optimizer = "lion"  # "lion" or "adamw".
  c.lr = 1e-4
  c.b1 = 0.9
  c.b2 = 0.95
  c.weight_decay = 0.05
  c.warmup_frac = 0.1
  c.min_lr_frac = 0.0  # Cosine ends at lr * min_lr_frac.
  c.grad_clip_norm = 1.0  # <= 0 turns clipping off.
  c.seed = 0
  c.init_from = ""  # A converted/pretrained folder or a workdir (FIELD_NOTES).

  c.log_every = 50
  c.ckpt_every = 1000
  c.keep_last = 3  # Newest checkpoints kept ...
  c.keep_every = 10_000  # ... plus every checkpoint whose step is a multiple of this.
  c.plot_every = 5000  # <= 0 turns reconstruction PNGs off.
  c.async_checkpoint = True
  c.peak_tflops_per_device = -1.0  # <= 0: look the accelerator up (unknown: MFU not shown).

  c.mesh = ml_collections.ConfigDict()
  c.mesh.data = -1  # -1: all devices not used by the other axes.
  c.mesh.fsdp = 1
  c.mesh.tensor = 1
  c.mesh.dcn_data = 1  # Slices/nodes joined by the slow network; they split `data`.
  c.mesh.axis_types = "auto"  # "auto" (GSPMD propagation) or "explicit".
  c.sharding_rules = DEFAULT_SHARDING_RULES

  c.distributed = ml_collections.ConfigDict()
  c.distributed.initialize = "auto"  # "auto" (when the env says so), "always", "never".
  c.distributed.coordinator_address = ""
  c.distributed.num_processes = -1
  c.distributed.process_id = -1
  return c


def _default_data_config() -> ml_collections.ConfigDict:
  """The data defaults (synthetic screen when no path is set)."""
  return data.default_config()


def load_config(spec: str) -> ml_collections.ConfigDict:
  """Loads a config: `NAME[:arg]` (a config shipped in maejax.configs, e.g. `vitl8:plus`),
  `path/to/config.py[:arg]` (its `get_config(arg)`) or a run's `config.json`."""
  path, _, arg = spec.partition(":")
  if path.endswith(".json") and not arg:
    file = epath.Path(path)
    if not file.is_file():
      raise FileNotFoundError(f"--config: no config file at {path!r}.")
    try:
      return from_json(file.read_text())
    except json.JSONDecodeError as e:
      raise ValueError(f"--config: {path} is not valid JSON ({e}).") from None
  if not os.path.isfile(path) and _is_name(path) and path in available_configs():
    path = os.path.join(configs_dir(), path + ".py")
  if not os.path.isfile(path):
    raise FileNotFoundError(
        f"--config: no config named or at {path!r}; give a name such as demo or vitl8:plus, or "
        f"a file such as configs/demo.py (names: {', '.join(available_configs())}).")
  module_name = "maejax_config_" + os.path.splitext(os.path.basename(path))[0]
  spec_ = importlib.util.spec_from_file_location(module_name, path)
  module = importlib.util.module_from_spec(spec_)
  spec_.loader.exec_module(module)
  if not hasattr(module, "get_config"):
    raise ValueError(f"--config: {path} defines no get_config(arg=None) function.")
  config = module.get_config(arg or None)
  if not isinstance(config, ml_collections.ConfigDict):
    raise ValueError(
        f"--config: {path}:get_config returned {type(config).__name__}, expected a "
        "ml_collections.ConfigDict.")
  return config


def _is_name(text: str) -> bool:
  return bool(text) and os.sep not in text and "/" not in text and not text.endswith(".py")


def configs_dir() -> str | None:
  """The folder of the shipped configs: the installed package maejax.configs (the checkout's
  configs/, see pyproject.toml), or configs/ beside the package in a checkout not installed."""
  try:
    spec = importlib.util.find_spec("maejax.configs")
  except ImportError:
    spec = None
  if spec is not None and spec.submodule_search_locations:
    return list(spec.submodule_search_locations)[0]
  checkout = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "configs")
  return os.path.normpath(checkout) if os.path.isdir(checkout) else None


def available_configs() -> list[str]:
  """Names of the shipped configs (`--config NAME`)."""
  root = configs_dir()
  if root is None:
    return []
  return sorted(f[:-3] for f in os.listdir(root) if f.endswith(".py") and not f.startswith("_"))


def describe_configs() -> list[tuple[str, str]]:
  """[(name, first line of its docstring)] of the shipped configs."""
  out = []
  for name in available_configs():
    with open(os.path.join(configs_dir(), name + ".py")) as f:
      doc = ast.get_docstring(ast.parse(f.read())) or ""
    first = doc.split("\n\n")[0].replace("\n", " ").split(". ")[0].rstrip(".")
    out.append((name, first if len(first) <= 90 else first[:87] + "..."))
  return out


def apply_overrides(config: ml_collections.ConfigDict,
                    overrides: Sequence[str]) -> ml_collections.ConfigDict:
  """Applies `--config.a.b=value` (or `config.a.b=value`) strings in order, in place."""
  for item in overrides:
    key, sep, text = item.lstrip("-").partition("=")
    if not key.startswith("config.") or not sep:
      raise ValueError(
          f"override {item!r}: expected --config.<field>=<value>, e.g. --config.batch_size=64.")
    set_field(config, key[len("config."):], text)
  return config


def parse_known_overrides(parser, argv: Sequence[str]):
  """`parser` arguments plus field overrides: (args, ["--config.field=value", ...]).

  Accepts `--config.x=v` and `--config.x v`; any other unknown argument is a parser error.
  """
  args, rest = parser.parse_known_args(argv)
  bad = [a for a in rest if a.startswith("--") and not a.startswith("--config.")]
  if bad:
    parser.error(f"unrecognized arguments: {' '.join(bad)} (fields are set with "
                 "--config.<field>=<value>)")
  out, i = [], 0
  while i < len(rest):
    item = rest[i]
    if not item.startswith("--"):
      parser.error(f"unrecognized argument: {item}")
    if "=" not in item:
      if i + 1 >= len(rest) or rest[i + 1].startswith("--"):
        parser.error(f"{item}: missing value (use {item}=<value>)")
      item, i = f"{item}={rest[i + 1]}", i + 1
    out.append(item)
    i += 1
  return args, out


def set_field(config: ml_collections.ConfigDict, dotted: str, text: str) -> None:
  """Sets `config.<dotted>` from its command-line text, typed by the current value."""
  *parents, leaf = dotted.split(".")
  node = config
  for i, name in enumerate(parents):
    child = node.get(name) if isinstance(node, ml_collections.ConfigDict) else None
    if not isinstance(child, ml_collections.ConfigDict):
      raise ValueError(_unknown(".".join(parents[:i + 1]), node))
    node = child
  if leaf not in node:
    raise ValueError(_unknown(dotted, node))
  field_type = node.get_type(leaf)
  if isinstance(node[leaf], ml_collections.ConfigDict):
    raise ValueError(f"--config.{dotted} is a group of fields; set one of its fields "
                     f"({', '.join(sorted(node[leaf].keys()))}).")
  value = _parse(text, field_type, dotted)
  try:
    node[leaf] = value
  except TypeError as e:
    raise ValueError(f"--config.{dotted}={text!r}: expected {field_type.__name__}.") from e


def _unknown(dotted: str, node) -> str:
  known = sorted(node.keys()) if isinstance(node, ml_collections.ConfigDict) else []
  return (f"--config.{dotted}: no such config field. Fields here: {', '.join(known)}.")


def _parse(text: str, field_type: type, dotted: str) -> Any:
  """Command-line text -> value of `field_type` (None-typed fields take a Python literal)."""
  where = f"--config.{dotted}={text!r}"
  if field_type is bool:
    lowered = text.strip().lower()
    if lowered in ("true", "1", "yes"):
      return True
    if lowered in ("false", "0", "no"):
      return False
    raise ValueError(f"{where}: expected a bool (true/false).")
  if field_type is int:
    try:
      return int(text.replace("_", ""))
    except ValueError:
      raise ValueError(f"{where}: expected an int, e.g. --config.{dotted}=64.") from None
  if field_type is float:
    try:
      return float(text)
    except ValueError:
      raise ValueError(f"{where}: expected a float, e.g. --config.{dotted}=3e-5.") from None
  if field_type is str:
    return text
  if field_type in (type(None), config_dict.FieldReference) and text.lower() in ("true", "false"):
    return text.lower() == "true"
  try:
    value = ast.literal_eval(text)
  except (ValueError, SyntaxError):
    if field_type in (type(None), config_dict.FieldReference):
      return text  # Unset field: a bare word is a string.
    raise ValueError(f"{where}: expected a {field_type.__name__} Python literal, e.g. "
                     "--config.sharding_rules=\"(('embed', 'fsdp'),)\".") from None
  if field_type in (tuple, list) and not isinstance(value, (tuple, list)):
    raise ValueError(f"{where}: expected a {field_type.__name__}.")
  if field_type in (tuple, list):
    value = field_type(value)
  return value


def flatten(config, prefix: str = "") -> dict[str, Any]:
  """{"model.width": 64, ...}: every leaf field of a ConfigDict (or dict) by dotted name."""
  items = config.items() if hasattr(config, "items") else ()
  out = {}
  for key, value in items:
    name = f"{prefix}{key}"
    if isinstance(value, (ml_collections.ConfigDict, dict)):
      out.update(flatten(value, name + "."))
    else:
      out[name] = value
  return out


# What a field means, where its name and default do not say it (`--help` shows these).
FIELD_NOTES = {
    "init_from": "start from a model's parameters with a fresh optimizer (saved as checkpoint "
                 "0): a `maejax.convert` or save_pretrained folder, or a training "
                 "workdir (its newest checkpoint; DIR/checkpoints/STEP for one); a WSL head on "
                 "an MAE encoder starts fresh; ignored once --workdir holds checkpoints",
}


def fields_help(config, prefix: str = "") -> str:
  """The `--help` epilog: every field of `config` that `--config.<field>=` can set."""
  lines = [f"  --config.{prefix}{name}={_show(value)}"
           + ("\n" + textwrap.fill(FIELD_NOTES[prefix + name], 96, initial_indent=" " * 6,
                                   subsequent_indent=" " * 6)
              if prefix + name in FIELD_NOTES else "")
           for name, value in sorted(flatten(config).items())]
  return ("fields (--config.<field>=<value>, typed like the default shown; an unknown field or "
          "a value of the wrong type is an error):\n" + "\n".join(lines))


def _show(value) -> str:
  return json.dumps(list(value) if isinstance(value, tuple) else value, default=str)


def to_json(config: ml_collections.ConfigDict) -> str:
  """The config as JSON (tuples become lists); `from_json` undoes it."""
  return config.to_json(indent=1, sort_keys=True)


def from_json(text: str) -> ml_collections.ConfigDict:
  """Inverse of `to_json`, restoring tuples where the defaults hold tuples."""
  raw = json.loads(text)
  return ml_collections.ConfigDict(_tuplify(raw))


def _tuplify(x):
  if isinstance(x, dict):
    return {k: _tuplify(v) for k, v in x.items()}
  if isinstance(x, list):
    return tuple(_tuplify(v) for v in x)
  return x


def experiment(name: str, model: str, **model_overrides) -> ml_collections.ConfigDict:
  """Defaults + the registered model `model` (all its fields, so each is overridable).

  The model sees crops of `config.data.crop_size` with `len(config.data.channels)` channels.
  """
  c = default_config()
  c.name = name
  c.model = models.get_config(model, **model_overrides)
  c.data.crop_size = int(c.model.img_size)
  c.data.channels = tuple(range(int(c.model.channels)))
  return c


def apply_arg(config: ml_collections.ConfigDict, arg: str | None) -> ml_collections.ConfigDict:
  """`configs/X.py:plus` -> the paper's "+" run (Fourier loss weight 0.01)."""
  if not arg:
    return config
  if arg == "plus":
    config.model.fourier_weight = 0.01
    config.name = config.name + "_plus"
    return config
  raise ValueError(f"config argument {arg!r} not understood; expected nothing or 'plus' "
                   f"(e.g. --config configs/{config.name}.py:plus).")
