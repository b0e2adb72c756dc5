"""pyproject.toml declares what the package imports; the built wheel ships every module and
config, and installed (not editable) trains the demo outside the checkout."""

import ast
import importlib.metadata
import os
import pathlib
import re
import shutil
import subprocess
import sys
import tomllib
import zipfile

import pytest

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


def _entry_modules() -> list[str]:
  """The modules `python -m` runs: those with a `__main__` block."""
  return sorted(".".join(p.relative_to(ROOT).with_suffix("").parts)
                for p in (ROOT / "maejax").rglob("*.py") if '__name__ == "__main__"' in
                p.read_text())


def test_no_python_m_module_is_imported_by_its_package():
  # runpy's RuntimeWarning ("found in sys.modules after import of package ...") is exactly
  # this: the package's __init__ importing the module `python -m` is about to run.
  modules = _entry_modules()
  assert "maejax.data.synthetic.__main__" in modules and "maejax.embed" in modules
  code = ("import importlib, sys\n"
          f"for m in {modules!r}:\n"
          "  importlib.import_module(m.rpartition('.')[0])\n"
          "  assert m not in sys.modules, m\n")
  proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                        timeout=300, cwd=ROOT)
  assert proc.returncode == 0, proc.stderr
  proc = subprocess.run([sys.executable, "-W", "error::RuntimeWarning", "-m",
                         "maejax.data.synthetic", "--help"], capture_output=True, text=True,
                        timeout=300, cwd=ROOT)
  assert proc.returncode == 0 and "RuntimeWarning" not in proc.stderr, proc.stderr


@pytest.fixture(scope="module")
def wheel(tmp_path_factory):
  """The wheel `pip wheel .` builds (offline, from a copy: the build writes build/ and
  *.egg-info next to the sources)."""
  src = tmp_path_factory.mktemp("src")
  for name in ("pyproject.toml", "README.md"):
    shutil.copy(ROOT / name, src / name)
  for name in ("maejax", "configs"):
    shutil.copytree(ROOT / name, src / name, ignore=shutil.ignore_patterns("__pycache__"))
  dist = tmp_path_factory.mktemp("dist")
  proc = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-index",
                         "--no-build-isolation", "-w", str(dist), str(src)],
                        capture_output=True, text=True, timeout=600)
  assert proc.returncode == 0, proc.stdout + proc.stderr
  (file,) = dist.glob("maejax-*.whl")
  return file


def test_wheel_ships_every_module_and_config(wheel):
  names = set(zipfile.ZipFile(wheel).namelist())
  modules = {p.relative_to(ROOT).as_posix() for p in (ROOT / "maejax").rglob("*.py")}
  configs = {f"maejax/configs/{p.name}" for p in (ROOT / "configs").glob("*.py")}
  assert {"maejax/configs/demo.py", "maejax/configs/vitl8.py",
          "maejax/configs/__init__.py"} <= configs
  assert modules | configs <= names, sorted((modules | configs) - names)
  assert not [n for n in names if n.startswith(("tests/", "configs/", "launch/"))]


def test_installed_wheel_trains_the_demo_by_name_outside_the_checkout(wheel, tmp_path):
  site = tmp_path / "site"
  proc = subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "--no-index",
                         "--target", str(site), str(wheel)], capture_output=True, text=True,
                        timeout=600)
  assert proc.returncode == 0, proc.stdout + proc.stderr
  # PYTHONPATH comes before site-packages, where the checkout's editable install lives.
  env = dict(os.environ, PYTHONPATH=str(site))
  cwd = tmp_path / "elsewhere"
  cwd.mkdir()
  where = subprocess.run([sys.executable, "-c", "import maejax; print(maejax.__file__)"],
                         capture_output=True, text=True, timeout=300, cwd=cwd, env=env)
  assert where.stdout.strip() == str(site / "maejax" / "__init__.py"), where.stderr
  proc = subprocess.run(
      [sys.executable, "-m", "maejax.train", "--config", "demo", "--config.total_steps=3",
       "--config.batch_size=8", "--config.data.synthetic.site_size=64",
       "--no-progress"], capture_output=True, text=True, timeout=600, cwd=cwd, env=env)
  assert proc.returncode == 0, proc.stdout + proc.stderr
  assert "finished at step 3/3" in proc.stdout
  run = cwd / "runs" / "demo"
  assert (run / "checkpoints" / "3").is_dir() and (run / "metrics.jsonl").is_file()
  assert (run / "plots" / "reconstruction_00000003.png").is_file()
