"""What the process template preloads: found by reading the workers' modules, never the
project's own files; and ``preload:`` in the topology."""

from __future__ import annotations

import importlib
import sys
import textwrap
from pathlib import Path

import pytest
from pipecat_workers_cli.forkserver.environment import common_env, refused
from pipecat_workers_cli.forkserver.preloads import (
    LIBRARY,
    infer_imports,
    is_project_module,
    plan_preloads,
)
from pipecat_workers_cli.imported import inherit, project_imports
from test_topology import check, load


def _write(root: Path, files: dict[str, str]) -> None:
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text))


def test_third_party_imports_are_followed_through_the_projects_modules(tmp_path: Path) -> None:
    _write(tmp_path, {
        "agents.py": """\
            import json
            import numpy as np
            from common import helper
            from . import sibling
            from typing import TYPE_CHECKING
            if TYPE_CHECKING:
                import only_for_types
            try:
                import fast_json
            except ImportError:
                fast_json = None

            def later():
                import inside_a_function

            class Agent:
                import in_a_class_body
            """,
        "common.py": "from openai import AsyncOpenAI\nimport pkg.sub\n",
        "pkg/__init__.py": "import yaml\n",
        "pkg/sub.py": "from .. import nothing\nfrom .inner import thing\n",
        "pkg/inner.py": "import httpx\n",
    })
    found = infer_imports(tmp_path, ["agents"])
    # ``typing.TYPE_CHECKING`` may be a submodule as far as reading can tell: trying it
    # costs nothing (a failed optional preload is skipped).
    assert found == ["json", "numpy", "typing", "typing.TYPE_CHECKING", "fast_json",
                     "in_a_class_body", "openai", "openai.AsyncOpenAI", "yaml", "httpx"]
    assert not any(n.startswith(("common", "pkg", "agents")) for n in found)


def test_the_project_is_never_preloaded_but_the_library_is(tmp_path: Path) -> None:
    _write(tmp_path, {"agents.py": "import pipecat_workers.bus\nimport helpers\n",
                      "helpers/__init__.py": "", "compiled.cpython-311-x86_64-linux-gnu.so": ""})
    assert is_project_module(tmp_path, "helpers.x")
    assert is_project_module(tmp_path, "compiled")
    assert not is_project_module(tmp_path, "pipecat_workers.bus")  # even in an editable tree
    plan = plan_preloads(tmp_path, modules=["agents"], backends=["local", "redis"],
                         explicit=["numpy", "helpers"], excluded=["pipecat_workers.bus"])
    assert plan.required == LIBRARY
    assert plan.explicit == ("numpy", "helpers")  # named by the user: imported as asked
    assert plan.optional == ("pipecat_workers.bus.backends.redis",)


def test_unreadable_or_broken_files_are_left_to_the_worker(tmp_path: Path) -> None:
    _write(tmp_path, {"agents.py": "import broken\nimport requests\n",
                      "broken.py": "def (:\n"})
    assert infer_imports(tmp_path, ["agents", "missing_module"]) == ["missing_module",
                                                                   "requests"]


def test_a_forked_worker_reports_the_templates_project_files_and_its_own(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _write(tmp_path, {"first_mod.py": "X = 1\n", "second_mod.py": "Y = 2\n",
                      ".hidden/skip_mod.py": "Z = 3\n"})
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.syspath_prepend(str(tmp_path / ".hidden"))
    importlib.import_module("first_mod")
    importlib.import_module("skip_mod")

    root = tmp_path.resolve()
    monkeypatch.setattr("pipecat_workers_cli.imported._inherited_root", "")
    assert inherit(root) == [str(root / "first_mod.py")]
    importlib.import_module("second_mod")  # imported "after the fork"

    assert project_imports(root) == [str(root / "first_mod.py"), str(root / "second_mod.py")]
    monkeypatch.delitem(sys.modules, "first_mod")
    # What the template imported counts even when looked up by name no more.
    assert str(root / "first_mod.py") in project_imports(root)


def test_preload_in_the_topology(tmp_path: Path) -> None:
    text = "preload: [numpy, pipecat.services.openai.llm]\nworkers:\n  a: {class: 'm:A'}\n"
    assert load(tmp_path, text).preload == ("numpy", "pipecat.services.openai.llm")
    assert load(tmp_path, "workers:\n  a: {class: 'm:A'}\n").preload == ()


@pytest.mark.parametrize(("text", "line", "message"), [
    ("preload: numpy\n", 1, "expected a list of module names, got 'numpy'"),
    ("preload:\n  - numpy\n  - 'not-a-module'\n", 3,
     "expected a module name (such as 'numpy' or 'pipecat.frames.frames'), got "
     "'not-a-module'"),
    ("preload:\n  - numpy\n  - numpy\n", 3, "'numpy' is listed twice"),
])
def test_a_bad_preload_is_one_line_naming_its_place(tmp_path: Path, text: str, line: int,
                                                    message: str) -> None:
    check(tmp_path, text + "workers:\n  a: {class: 'm:A'}\n", line, "preload", message)


def test_the_template_takes_the_value_most_worker_processes_get(tmp_path: Path) -> None:
    text = """\
        workers:
          a: {class: 'm:A', replicas: 3, env: {LEVEL: quiet, ONLY_A: x}}
          b: {class: 'm:A', env: {LEVEL: loud, TIE: one}}
          c: {class: 'm:A', env: {TIE: two, SAME: '1'}}
          d: {class: 'm:A', env: {SAME: '1'}}
        """
    topology = load(tmp_path, textwrap.dedent(text))
    # LEVEL: quiet 3, loud 1, unset 2. ONLY_A: x 3 against 3 unset, a tie: the supervisor's
    # (unset) stays. TIE: one 1, two 1, unset 4. SAME: '1' 2, unset 4.
    assert common_env(topology, {}) == {"LEVEL": "quiet"}
    assert common_env(topology, {"LEVEL": "quiet"}) == {}  # the supervisor's already
    assert common_env(topology, {"SAME": "1"}) == {"LEVEL": "quiet"}


def test_a_worker_that_changes_or_unsets_what_a_preload_read_is_not_forked() -> None:
    template = {"A": "1", "HF_HOME": "/x", "PATH": "/bin"}
    info = {"env": ["HF_HOME"]}
    assert refused({"A": "2", "HF_HOME": "/x", "PATH": "/bin"}, template, info["env"]) is None
    assert refused({"A": "1", "PATH": "/bin"}, template, info["env"]) == (
        "its env unsets HF_HOME, which a preloaded module read when imported")
    assert refused({**template, "HF_HOME": "/y"}, template, info["env"]) == (
        "its env sets HF_HOME, which a preloaded module read when imported")
    assert refused({**template, "PYTHONPATH": "/p"}, template, info["env"]) == (
        "its env sets PYTHONPATH, which Python reads when it starts")
