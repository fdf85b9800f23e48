"""Resolving ``module:attr`` worker classes and checking their arguments, with one-line errors."""

from __future__ import annotations

import importlib
import sys
import textwrap
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from pipecat_workers_cli.topology import (
    TopologyError,
    WorkerClassError,
    check_args,
    load_topology,
    resolve_class,
)

from pipecat_workers import BaseWorker

ROOT = Path(__file__).resolve().parents[2]
CONFIGS = sorted((ROOT / "configs").glob("*.yaml"))

Write = Callable[[str, str], Path]

WORKERS = """\
from pipecat_workers import BaseWorker

class Greeter(BaseWorker):
    def __init__(self, name, *, greeting, loud=False):
        super().__init__(name)
        self.greeting = greeting

class Open(BaseWorker):
    def __init__(self, name, **options):
        super().__init__(name)

class Nameless(BaseWorker):
    def __init__(self, *, size):
        super().__init__("fixed")

class Explodes(BaseWorker):
    def __init__(self, name):
        raise RuntimeError("constructed")

class Outer:
    class Inner(BaseWorker):
        pass

class NotAWorker:
    pass

def function():
    pass
"""


@pytest.fixture
def write(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Write]:
    """Write modules into an import directory; forget them afterwards."""
    monkeypatch.syspath_prepend(str(tmp_path))
    before = set(sys.modules)

    def write_module(name: str, source: str) -> Path:
        path = tmp_path.joinpath(*name.split(".")).with_suffix(".py")
        path.parent.mkdir(parents=True, exist_ok=True)
        for parent in path.relative_to(tmp_path).parents:
            if parent != Path("."):
                (tmp_path / parent / "__init__.py").touch()
        path.write_text(textwrap.dedent(source))
        importlib.invalidate_caches()  # the finder caches directory listings
        return path

    yield write_module
    for name in set(sys.modules) - before:
        del sys.modules[name]


def failure(class_path: str) -> str:
    with pytest.raises(WorkerClassError) as info:
        resolve_class(class_path)
    message = str(info.value)
    assert "\n" not in message and "Traceback" not in message
    assert info.value.file is None
    return message


def test_resolves_a_worker_class(write: Write) -> None:
    write("tw_ok", WORKERS)
    cls = resolve_class("tw_ok:Greeter")
    assert issubclass(cls, BaseWorker) and cls.__name__ == "Greeter"
    assert resolve_class("tw_ok:Outer.Inner").__qualname__ == "Outer.Inner"


def test_resolves_in_a_package(write: Write) -> None:
    write("tw_pkg.sub.workers", WORKERS)
    assert resolve_class("tw_pkg.sub.workers:Open").__module__ == "tw_pkg.sub.workers"


@pytest.mark.parametrize("path", ["Greeter", "a:b:c", "a.:B", "1a:B", "a:B.", ":B", "a b:C", ""])
def test_bad_format(path: str) -> None:
    assert failure(path) == (
        f"expected 'module:attr' (e.g. 'examples.handoff.main:MainWorker'), got {path!r}")


def test_module_not_found(write: Write) -> None:
    assert failure("tw_missing_module:A") == "module 'tw_missing_module' not found"
    assert failure("tw_missing_pkg.sub:A") == (
        "module 'tw_missing_pkg.sub' not found (no module named 'tw_missing_pkg')")
    write("tw_here.present", WORKERS)
    assert failure("tw_here.absent:A") == "module 'tw_here.absent' not found"


def test_import_error_inside_the_module(write: Write) -> None:
    path = write("tw_bad_import", "import os\nimport tw_not_installed_anywhere\n")
    assert failure("tw_bad_import:A") == (
        "importing 'tw_bad_import' failed: ModuleNotFoundError: "
        f"No module named 'tw_not_installed_anywhere' ({path}:2)")


def test_failing_from_import_inside_the_module(write: Write) -> None:
    path = write("tw_bad_from", "\n\nfrom os import tw_nothing\n")
    message = failure("tw_bad_from:A")
    assert message.startswith("importing 'tw_bad_from' failed: ImportError: "
                              "cannot import name 'tw_nothing' from 'os'")
    assert message.endswith(f"({path}:3)")


def test_exception_at_import(write: Write) -> None:
    path = write("tw_raises", "X = 1\n\nraise RuntimeError('no config\\nsecond line')\n")
    assert failure("tw_raises:A") == (
        f"importing 'tw_raises' failed: RuntimeError: no config ({path}:3)")


def test_exception_at_import_names_the_users_line_not_the_librarys(write: Write) -> None:
    path = write("tw_json", "import json\n\nCONFIG = json.loads('{bad')\n")
    assert failure("tw_json:A") == (
        "importing 'tw_json' failed: JSONDecodeError: Expecting property name enclosed in "
        f"double quotes: line 1 column 2 (char 1) ({path}:3)")


def test_exit_at_import(write: Write) -> None:
    path = write("tw_exits", "import sys\nsys.exit(3)\n")
    assert failure("tw_exits:A") == f"importing 'tw_exits' failed: SystemExit: 3 ({path}:2)"


def test_syntax_error(write: Write) -> None:
    path = write("tw_syntax", "class A:\n    def f(self)\n        pass\n")
    assert failure("tw_syntax:A") == (
        f"importing 'tw_syntax' failed: syntax error in {path}:2: expected ':'")


def test_missing_attribute(write: Write) -> None:
    write("tw_attr", WORKERS)
    assert failure("tw_attr:Greter") == (
        "module 'tw_attr' has no attribute 'Greter' (did you mean 'Greeter'?)")
    assert failure("tw_attr:Outer.Iner") == (
        "'tw_attr:Outer' has no attribute 'Iner' (did you mean 'Inner'?)")
    assert failure("tw_attr:Zzz") == "module 'tw_attr' has no attribute 'Zzz'"


def test_not_a_class(write: Write) -> None:
    write("tw_kinds", WORKERS)
    assert failure("tw_kinds:function") == "'tw_kinds:function' is not a class (got function)"
    assert failure("tw_kinds:BaseWorker.EVENTS") == (
        "'tw_kinds:BaseWorker.EVENTS' is not a class (got frozenset)")


def test_not_a_worker(write: Write) -> None:
    write("tw_plain", WORKERS)
    assert failure("tw_plain:NotAWorker") == "'tw_plain:NotAWorker' is not a BaseWorker subclass"


def test_errors_are_topology_errors() -> None:
    with pytest.raises(TopologyError):
        resolve_class("nope")


# -- check_args -----------------------------------------------------------------------------

def args_failure(cls: type[BaseWorker], args: dict[str, object]) -> str:
    with pytest.raises(WorkerClassError) as info:
        check_args(cls, "w", args)
    return str(info.value)


def test_check_args_accepts_what_binds(write: Write) -> None:
    write("tw_args", WORKERS)
    check_args(resolve_class("tw_args:Greeter"), "w", {"greeting": "hi", "loud": True})
    check_args(resolve_class("tw_args:Open"), "w", {"anything": 1})
    check_args(BaseWorker, "w", {"active": False})


def test_check_args_constructs_nothing(write: Write) -> None:
    write("tw_boom", WORKERS)
    check_args(resolve_class("tw_boom:Explodes"), "w", {})  # would raise if constructed


def test_check_args_errors(write: Write) -> None:
    write("tw_bad_args", WORKERS)
    greeter = resolve_class("tw_bad_args:Greeter")
    assert args_failure(greeter, {}) == (
        "tw_bad_args:Greeter: missing a required argument: 'greeting'")
    assert args_failure(greeter, {"greting": "hi"}) == (
        "tw_bad_args:Greeter takes no argument 'greting' (did you mean 'greeting'?)")
    assert args_failure(greeter, {"greeting": "hi", "volume": 1}) == (
        "tw_bad_args:Greeter takes no argument 'volume'")
    assert args_failure(greeter, {"greeting": "hi", "name": "x"}) == (
        "tw_bad_args:Greeter: multiple values for argument 'name' "
        "(the worker name is passed first)")
    assert args_failure(resolve_class("tw_bad_args:Nameless"), {"size": 1}) == (
        "tw_bad_args:Nameless: it does not take the worker name as its first argument")


# -- the examples, and the host's import budget ------------------------------------------------

@pytest.mark.parametrize("path", CONFIGS or [
    pytest.param(None, marks=pytest.mark.skip(reason="configs/ has no *.yaml yet"))],
    ids=lambda p: p.name if p else "none")
def test_example_classes_resolve_and_accept_their_args(
    path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    topology = load_topology(path, env={})
    monkeypatch.syspath_prepend(str(topology.root))  # as the worker host does
    for spec in topology.workers.values():
        cls = resolve_class(spec.class_path)
        for name in spec.instance_names():
            check_args(cls, name, spec.args)


def test_classes_module_imports_no_cli_libraries(monkeypatch: pytest.MonkeyPatch) -> None:
    """The worker host imports it first: yaml, click and rich would only slow it down."""
    heavy = ("yaml", "click", "rich")
    for name in list(sys.modules):
        if name.split(".")[0] in (*heavy, "cli"):
            monkeypatch.delitem(sys.modules, name)  # restored after the test
    importlib.import_module("pipecat_workers_cli.topology.classes")
    assert [m for m in sys.modules if m.split(".")[0] in heavy] == []
