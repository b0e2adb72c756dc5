"""The layer order of maejax/__init__.py, read from the source: who may import whom, no
import cycles, no deferred imports of the package's own modules, commands only in maejax.cli."""

import ast
import pathlib

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1] / "maejax"

# Layer -> the layers it may import (itself included).
ALLOWED = {
    "models": {"models"},
    "data": {"data"},
    "shared": {"shared", "models", "data"},
    "train": {"train", "shared", "models", "data"},
    "api": {"api", "shared", "models"},
    "eval": {"eval", "api", "shared", "models", "data"},
    "cli": {"cli", "eval", "api", "train", "shared", "models", "data"},
    "entry": {"cli"},
}
SHARED = {"maejax.config", "maejax.workdir", "maejax.host"}
API = {"maejax", "maejax.api", "maejax.convert"}
# `python -m <module>` targets: two-line shims into maejax.cli (plus every __main__).
ENTRY = {"maejax.bench", "maejax.benchmark", "maejax.compare", "maejax.embed", "maejax.probe",
         "maejax.data.ingest"}
# Modules that import an optional extra (torch, beam) at module level: imported only by the
# commands that ask for it, so that no other command pays for or needs the extra.
OPTIONAL = {"maejax.cli.torch_reference", "maejax.data.beam_ingest"}


def _modules() -> dict[str, pathlib.Path]:
  out = {}
  for path in ROOT.rglob("*.py"):
    parts = path.relative_to(ROOT.parent).with_suffix("").parts
    name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
    out[name] = path
  return out


MODULES = _modules()


def layer(module: str) -> str:
  if module in ENTRY or module.endswith(".__main__"):
    return "entry"
  if module in SHARED:
    return "shared"
  if module in API:
    return "api"
  return module.split(".")[1]


def _resolve(name: str) -> str:
  """The maejax module an imported name belongs to (`maejax.models.mae.MAE` -> its module)."""
  while name not in MODULES and "." in name:
    name = name.rsplit(".", 1)[0]
  return name


def imports(module: str) -> list[tuple[str, bool]]:
  """[(imported maejax module, at module level?)] of one module."""
  tree = ast.parse(MODULES[module].read_text())
  top = {id(n) for n in tree.body}
  found = []
  for node in ast.walk(tree):
    if isinstance(node, ast.Import):
      names = [a.name for a in node.names]
    elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
      names = [f"{node.module}.{a.name}" for a in node.names]
    else:
      continue
    for name in names:
      if name == "maejax" or name.startswith("maejax."):
        found.append((_resolve(name), id(node) in top))
  return found


def test_the_layers_exist():
  layers = {layer(m) for m in MODULES}
  assert layers == set(ALLOWED), layers
  assert ENTRY | SHARED | API <= set(MODULES), sorted(ENTRY | SHARED | API - set(MODULES))


@pytest.mark.parametrize("module", sorted(MODULES))
def test_imports_point_down_the_layer_order(module):
  bad = [(m, layer(m)) for m, _ in imports(module)
         if layer(m) not in ALLOWED[layer(module)]]
  assert not bad, f"{module} ({layer(module)}) imports {bad}"


@pytest.mark.parametrize("module", sorted(MODULES))
def test_no_deferred_imports_of_maejax(module):
  deferred = sorted({m for m, top in imports(module) if not top and m not in OPTIONAL})
  assert not deferred, f"{module} imports {deferred} inside a function"


@pytest.mark.parametrize("module", sorted(m for m in MODULES if layer(m) == "entry"))
def test_entry_points_are_shims_into_cli(module):
  code = [line for line in MODULES[module].read_text().splitlines()
          if line.strip() and not line.startswith(('"""', "#"))]
  assert len(code) <= 4, f"{module}: a command's logic belongs in maejax/cli, not here"
  assert {m for m, _ in imports(module)} <= {m for m in MODULES if m.startswith("maejax.cli")}


def test_no_module_imports_an_entry_point():
  for module in MODULES:
    assert not [m for m, _ in imports(module) if layer(m) == "entry"], module


def test_no_import_cycles():
  graph = {m: {i for i, top in imports(m) if top and i != m} for m in MODULES}
  # A package's __init__ runs before its submodules: importing maejax.x.y imports maejax.x.
  for m in MODULES:
    parts = m.split(".")
    for k in range(2, len(parts)):
      graph[m].discard(".".join(parts[:k]))
  state, stack = {}, []

  def visit(m):
    state[m] = "open"
    stack.append(m)
    for n in sorted(graph.get(m, ())):
      if state.get(n) == "open":
        raise AssertionError("import cycle: " + " -> ".join(stack[stack.index(n):] + [n]))
      if n not in state:
        visit(n)
    stack.pop()
    state[m] = "done"

  for m in sorted(graph):
    if m not in state:
      visit(m)


def test_a_cycle_is_detected(monkeypatch):
  """The checks above can fail: a planted back-edge is reported."""
  real = imports
  monkeypatch.setitem(globals(), "imports", lambda m: real(m) + (
      [("maejax.api", True)] if m == "maejax.workdir" else []))
  with pytest.raises(AssertionError, match="import cycle"):
    test_no_import_cycles()
  with pytest.raises(AssertionError, match="imports"):
    test_imports_point_down_the_layer_order("maejax.workdir")
