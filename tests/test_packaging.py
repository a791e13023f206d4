"""`pip install .` (the README's Quick start) installs every package of the source tree.

CI's subprocesses (`python -m forkops` from a sandbox folder) import the installed copy, not the
checkout: a subpackage missing from pyproject's list works in a checkout and breaks installed.
"""

from __future__ import annotations

import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_every_forkops_package_is_installed() -> None:
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())
    listed = set(config["tool"]["setuptools"]["packages"])
    in_tree = {".".join(p.parent.relative_to(ROOT).parts) for p in (ROOT / "forkops").rglob("__init__.py")}
    assert in_tree - listed == set(), "add these to [tool.setuptools] packages in pyproject.toml"


def test_package_data_ships_every_data_file() -> None:
    """What forkops reads with importlib.resources (the sandbox's templates, the bundled models,
    the CI workflow) is in the wheel: every file below forkops/data matches a package-data glob."""
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())
    package = ROOT / "forkops"
    shipped = {p for pattern in config["tool"]["setuptools"]["package-data"]["forkops"] for p in package.glob(pattern)}
    files = {p for p in (package / "data").rglob("*") if p.is_file()}
    assert (package / "data" / "sandbox" / "env.cc.in") in files
    assert sorted(str(p.relative_to(ROOT)) for p in files - shipped) == []
