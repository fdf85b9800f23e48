"""The public surface: sorted and complete ``__all__``, and a library free of CLI imports."""

from __future__ import annotations

import ast
import inspect
import subprocess
import sys

import pytest

import pipecat_workers
import pipecat_workers.bus
from pipecat_workers import BaseWorker, MissingDependencyError

SPEC_NAMES = {
    "BaseWorker", "WorkerActivationArgs", "WorkerRunner", "WorkerRegistry", "WorkerReadyData",
    "WorkerErrorData", "WorkerLostData", "job", "worker_ready", "JobStatus", "JobEvent",
    "JobGroupEvent", "JobEventType", "JobContext", "JobGroupContext", "JobGroupResponse",
    "JobError", "JobGroupError", "WorkersError",
}

BUS_SPEC_NAMES = {
    "WorkerBus", "AsyncQueueBus", "BusMessage", "BusDataMessage", "BusSystemMessage",
    "BusLocalMessage", "MessageSerializer", "JSONMessageSerializer", "register_message",
    "RedisBus", "PgmqBus", "BusFrameMessage", "BusTTSSpeakMessage", "BusActivateWorkerMessage",
    "BusDeactivateWorkerMessage", "BusEndMessage", "BusEndWorkerMessage", "BusCancelMessage",
    "BusCancelWorkerMessage", "BusAddWorkerMessage", "BusWorkerRegistryMessage",
    "BusWorkerReadyMessage", "BusWorkerErrorMessage", "BusWorkerLocalErrorMessage",
    "BusJobRequestMessage", "BusJobResponseMessage", "BusJobResponseUrgentMessage",
    "BusJobResponseAgainMessage", "BusJobStreamEndAgainMessage",
    "BusJobUpdateMessage", "BusJobUpdateUrgentMessage", "BusJobUpdateRequestMessage",
    "BusJobCancelMessage", "BusJobCheckMessage", "BusJobStreamStartMessage",
    "BusJobStreamDataMessage", "BusJobStreamEndMessage", "BusHeartbeatMessage",
    "BusRunnerLeaveMessage", "BusUnregisteredMessage",
}


@pytest.mark.parametrize("module", [pipecat_workers, pipecat_workers.bus])
def test_all_is_sorted_and_unique(module):
    assert module.__all__ == sorted(set(module.__all__))


def test_package_exports_what_the_spec_names():
    assert set(pipecat_workers.__all__) >= SPEC_NAMES
    for name in pipecat_workers.__all__:
        assert getattr(pipecat_workers, name) is not None


def test_type_checkers_see_what_runs():
    """The ``TYPE_CHECKING`` imports, re-exported as ``X as X``, match the lazy ``_EXPORTS``
    that ``__all__`` is built from."""
    tree = ast.parse(inspect.getsource(pipecat_workers))
    block = next(node for node in tree.body
                 if isinstance(node, ast.If) and ast.unparse(node.test) == "TYPE_CHECKING")
    imports = [node for node in block.body if isinstance(node, ast.ImportFrom)]
    assert all(alias.asname == alias.name for node in imports for alias in node.names)
    assert {alias.name: node.module for node in imports for alias in node.names} == (
        pipecat_workers._EXPORTS)
    assert set(pipecat_workers.__all__) == {*pipecat_workers._EXPORTS, "__version__"}


def test_bus_exports_what_the_spec_names():
    assert set(pipecat_workers.bus.__all__) >= BUS_SPEC_NAMES


def test_every_exception_descends_from_the_root():
    errors = [getattr(pipecat_workers, n) for n in pipecat_workers.__all__
              if n.endswith("Error")]
    assert len(errors) >= 10
    for error in errors:
        assert issubclass(error, pipecat_workers.WorkersError), error


def test_missing_driver_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "redis", None)  # makes `import redis` fail
    with pytest.raises(MissingDependencyError, match=r"pipecat-workers\[redis\]"):
        pipecat_workers.bus.RedisBus  # noqa: B018


def test_unknown_bus_attribute_is_an_attribute_error():
    with pytest.raises(AttributeError):
        pipecat_workers.bus.NoSuchBus  # noqa: B018


SEED_SIGNATURES = {
    # The seed's keywords first and unchanged; then label, cancellable and params (pipecat 1.14).
    "request_job": "(self, worker_name: 'str', *, name: 'str | None' = None, "
                   "payload: 'dict[str, Any] | None' = None, timeout: 'float | None' = None, "
                   "label: 'str | None' = None, cancellable: 'bool | None' = None, "
                   "params: 'JobParams | None' = None) -> 'str'",
    "activate_worker": "(self, worker_name: 'str', *, args: 'WorkerActivationArgs | None' = None, "
                       "deactivate_self: 'bool' = False) -> 'None'",
    "send_job_response": "(self, job_id: 'str', response: 'dict[str, Any] | None' = None, *, "
                         "status: 'JobStatus' = <JobStatus.COMPLETED: 'completed'>, "
                         "urgent: 'bool' = False) -> 'None'",
}


@pytest.mark.parametrize("method", sorted(SEED_SIGNATURES))
def test_seed_signatures(method):
    assert str(inspect.signature(getattr(BaseWorker, method))) == SEED_SIGNATURES[method]


SEED_HOOKS = [
    "on_activated", "on_deactivated", "on_worker_ready", "on_worker_failed", "on_job_request",
    "on_job_response", "on_job_update", "on_job_update_requested", "on_job_completed",
    "on_job_error", "on_job_stream_start", "on_job_stream_data", "on_job_stream_end",
    "on_job_cancelled", "on_bus_message", "on_worker_lost",
]


@pytest.mark.parametrize("hook", SEED_HOOKS)
def test_every_hook_is_a_coroutine_and_an_event(hook):
    assert inspect.iscoroutinefunction(getattr(BaseWorker, hook))
    assert hook in BaseWorker.EVENTS


def test_library_never_imports_the_cli_stack():
    code = ("import sys, pipecat_workers, pipecat_workers.bus; "
            "stack = ('click', 'rich', 'pipecat_workers_cli', 'yaml', 'watchfiles'); "
            "print(','.join(m for m in stack if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""


def test_import_installs_no_signal_handler():
    code = ("import signal; before = signal.getsignal(signal.SIGINT); "
            "import pipecat_workers; from pipecat_workers import WorkerRunner; WorkerRunner(); "
            "print(signal.getsignal(signal.SIGINT) is before)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "True"
