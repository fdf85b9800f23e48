"""The examples and the README's code run as a newcomer would run them."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=30)


def test_handoff_example_hands_the_conversation_over_and_back():
    out = run("-m", "examples.handoff")
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert "  [support] active (from greeter: I have a question about my invoice.)" in lines
    assert lines.index("  [greeter] inactive") < lines.index(
        "  [support] active (from greeter: I have a question about my invoice.)")
    assert lines[-1] == "done: 4 turns answered, 0 errors"


def test_research_example_streams_every_finding_and_summary():
    out = run("-m", "examples.research")
    assert out.returncode == 0, out.stderr
    findings = [line for line in out.stdout.splitlines() if ", point " in line]
    assert len(findings) == 9
    assert out.stdout.count("3 points on the") == 3


def test_family_example_runs_children_and_reports_their_errors():
    out = run("-m", "examples.family")
    assert out.returncode == 0, out.stderr
    assert out.stdout.count("child ready:") == 3
    assert "reported: cannot transcode 'cover.png'" in out.stdout
    assert "{'clip': 'outro.opus'}" in out.stdout


def test_sensors_example_reacts_to_readings_and_ends_at_its_limit():
    out = run("-m", "examples.sensors")
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert "[sensor] controller subscribed" in lines
    assert sum(line.startswith("[controller] reading ") for line in lines) == 20
    assert "[controller]   set_heater: heater on (100%)" in lines
    assert lines.index("[controller] 20 readings: ending the session") > lines.index(
        "[controller]   set_heater: heater off (100%)")


def test_readme_main_command_runs_the_handoff_topology_to_its_end():
    """The README's first command, as a newcomer runs it (piped, so plain lines)."""
    out = subprocess.run([str(Path(sys.executable).with_name("workers")), "up",
                          "configs/handoff.yaml"], cwd=ROOT, capture_output=True, text=True,
                         timeout=60)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert "support |   [support] active (from greeter: I have a question about my invoice.)" \
        in lines
    assert "greeter |   [greeter] inactive" in lines
    # Lines of different processes arrive in any order; one process's keep theirs.
    said = [line.removeprefix("acme    | ") for line in lines if line.startswith("acme ")]
    assert said.index("greeter -> user: Let me get you to support.") < said.index(
        "user -> support: It charges me twice for March.") < said.index(
        "support -> user: Let me get you to greeter.")
    assert sum(line.endswith("[exited with code 0]") for line in lines) == 3
    assert "Traceback" not in out.stderr


def test_readme_topology_example_loads(tmp_path):
    from pipecat_workers_cli.topology import load_topology

    block = re.search(r"```yaml\n(.*?)```", (ROOT / "README.md").read_text(), re.S)
    assert block is not None
    (tmp_path / "configs").mkdir()
    path = tmp_path / "configs" / "research.yaml"
    path.write_text(block.group(1))
    (tmp_path / "configs" / "coordinator.env").write_text("TOPICS=wind,solar\n")  # it names one
    topology = load_topology(path)
    assert topology.root == tmp_path
    assert topology.workers["coordinator"].env["TOPICS"] == "wind,solar"
    assert [w.stop_timeout for w in topology.workers.values()] == [10.0, 10.0]
    assert topology.workers["researcher"].instance_names() == [
        "researcher.1", "researcher.2", "researcher.3"]


@pytest.mark.parametrize("index", [0])
def test_readme_python_example(index, tmp_path):
    blocks = re.findall(r"```python\n(.*?)```", (ROOT / "README.md").read_text(), re.S)
    script = tmp_path / "readme_example.py"
    script.write_text(blocks[index])
    out = run(str(script))
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines() == ["HELLO", "THERE", "{'words': 2}"]


@pytest.mark.redis
def test_distributed_example_runs_one_worker_per_process(redis_url: str) -> None:
    channel = f"example-{uuid.uuid4().hex[:8]}"
    agents = [subprocess.Popen([sys.executable, "-m", "examples.distributed", name, "--redis",
                                redis_url, "--channel", channel], cwd=ROOT, text=True,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE)
              for name in ("greeter", "support")]
    try:
        out = run("-m", "examples.distributed", "acme", "--redis", redis_url,
                  "--channel", channel)
        assert out.returncode == 0, out.stderr
        assert "support -> user: Billing support here." in out.stdout
        # the conversation's end ends every runner on the channel
        outputs = [agent.communicate(timeout=15)[0] for agent in agents]
        assert [agent.returncode for agent in agents] == [0, 0]
        assert "[support] active (from greeter" in outputs[1]
    finally:
        for agent in agents:
            agent.kill()


# One worker of a topology file in a process of its own, the way the `workers` host runs it:
# import `class`, build `cls(name, **args)`, run it with `run(auto_end=True)` on the channel.
HOST = """
import asyncio, importlib, json, sys
from pipecat_workers import WorkerRunner
from pipecat_workers.bus import RedisBus

async def main(url, channel, name, class_path, args):
    module, _, attribute = class_path.partition(":")
    worker = getattr(importlib.import_module(module), attribute)(name, **json.loads(args))
    runner = WorkerRunner(name=f"{name}-runner", bus=RedisBus(url, channel=channel))
    await runner.add_workers(worker)
    await runner.run(auto_end=True)

asyncio.run(main(*sys.argv[1:]))
"""


@pytest.mark.redis
def test_handoff_topology_runs_one_process_per_worker_and_ends_them_all(
        redis_url: str) -> None:
    workers = yaml.safe_load((ROOT / "configs" / "handoff.redis.yaml").read_text())["workers"]
    channel = f"topology-{uuid.uuid4().hex[:8]}"
    # The conversation first: nothing may depend on the order in which the processes join.
    processes = {name: subprocess.Popen(
        [sys.executable, "-c", HOST, redis_url, channel, name, entry["class"],
         json.dumps(entry.get("args") or {})],
        cwd=ROOT, text=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        for name, entry in sorted(workers.items())}
    try:
        outputs = {name: process.communicate(timeout=20)[0]
                   for name, process in processes.items()}
        codes = {name: process.returncode for name, process in processes.items()}
        assert codes == {"acme": 0, "greeter": 0, "support": 0}
        assert "support -> user: Billing support here." in outputs["acme"]
        assert outputs["acme"].count(" -> user: ") == 4
        assert "[support] active (from greeter: I have a question" in outputs["support"]
        assert "[greeter] active (new customer)" in outputs["greeter"]
        assert "[greeter] inactive" in outputs["greeter"]
    finally:
        for process in processes.values():
            process.kill()
