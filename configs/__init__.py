"""The shipped configs, one experiment a file (`get_config(arg=None) -> ConfigDict`).

Installed as the package `maejax.configs` (pyproject.toml), so every command takes them by name
(`--config vitl8`, `--config demo:plus`) as well as by path (`--config configs/vitl8.py`).
`python -m maejax.train --list-configs` lists them.
"""
