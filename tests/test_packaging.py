"""What gets installed: every package of both trees, under names no user project has."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pipecat_workers_cli

ROOT = Path(__file__).resolve().parent.parent


def _packages_below(top: Path, base: Path) -> set[str]:
    return {".".join(init.parent.relative_to(base).parts) for init in top.rglob("__init__.py")
            if "__pycache__" not in init.parts}


def test_the_package_list_names_every_package_of_both_trees():
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    on_disk = (_packages_below(ROOT / "pipecat_workers", ROOT)
               | _packages_below(ROOT / "cli" / "pipecat_workers_cli", ROOT / "cli"))
    assert set(config["packages"]) == on_disk
    assert config["package-dir"] == {"pipecat_workers_cli": "cli/pipecat_workers_cli"}


def test_the_command_is_not_installed_as_a_package_called_cli():
    assert pipecat_workers_cli.__name__ == "pipecat_workers_cli"
    assert Path(pipecat_workers_cli.__file__).parent == ROOT / "cli" / "pipecat_workers_cli"
    assert not (ROOT / "cli" / "__init__.py").exists()
