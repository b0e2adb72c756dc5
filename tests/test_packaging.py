"""pyproject.toml declares what the package imports."""

import ast
import importlib.metadata
import pathlib
import re
import sys
import tomllib

ROOT = pathlib.Path(__file__).resolve().parents[1]


def _third_party_imports() -> set[str]:
  names = set()
  for path in (ROOT / "maejax").rglob("*.py"):
    for node in ast.walk(ast.parse(path.read_text())):
      if isinstance(node, ast.Import):
        names.update(a.name.split(".")[0] for a in node.names)
      elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
        names.add(node.module.split(".")[0])
  return {n for n in names if n != "maejax" and n not in sys.stdlib_module_names}


def _normalize(name: str) -> str:
  return re.sub(r"[-_.]+", "-", name).lower()


def test_every_imported_distribution_is_declared():
  project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
  specs = project["dependencies"] + [d for ds in project["optional-dependencies"].values()
                                     for d in ds]
  declared = {_normalize(re.split(r"[\s\[<>=!~;]", s, maxsplit=1)[0]) for s in specs}
  providers = importlib.metadata.packages_distributions()
  # etils comes with orbax-checkpoint / tensorflow-datasets (both declared).
  missing = {m: providers.get(m, [m]) for m in _third_party_imports() - {"etils"}
             if not {_normalize(d) for d in providers.get(m, [m])} & declared}
  assert not missing, f"imported but not declared in pyproject.toml: {missing}"


def test_every_package_is_shipped():
  setuptools = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
  found = {".".join(p.parent.relative_to(ROOT).parts) for p in (ROOT / "maejax").rglob(
      "__init__.py")}
  assert set(setuptools["packages"]) == found | {"maejax.configs"}
  assert setuptools["package-dir"] == {"maejax.configs": "configs"}
