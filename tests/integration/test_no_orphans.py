"""Issue 12 item 8: commands and test fixtures stop the broker and worker they started when they
get SIGTERM or SIGHUP (as on Ctrl-C), and their children die with them on SIGKILL.

Each test runs the real command in a subprocess (its own Kafka on a free port, its own data
folder), waits until the broker JVM and the worker are its children, signals it and checks by
pid that no child is left.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from streams.procs import pid_alive
from streams.settings import REPO_ROOT
from vrec_tools.broker import find_free_port

pytestmark = pytest.mark.kafka  # starts real brokers (not the session one)


def _children(pid: int) -> dict[int, str]:
    """{pid: command line} of the live children of ``pid`` (from /proc)."""
    out: dict[int, str] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        fields = stat.rsplit(")", 1)[1].split()
        if int(fields[1]) == pid and fields[0] not in ("Z", "X"):
            out[int(entry.name)] = cmdline
    return out


def _env(tmp_path: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("VREC_")}
    env.update(VREC_BROKER=f"127.0.0.1:{find_free_port()}", VREC_DATA_DIR=str(tmp_path / "var"))
    return env


def _start(
    args: list[str], tmp_path: Path, want: tuple[str, ...]
) -> tuple[subprocess.Popen, list[int]]:
    """Start ``args``; wait until it has a child matching each of ``want``; their pids."""
    log = open(tmp_path / "cmd.log", "wb")  # noqa: SIM115 - lives as long as the process
    proc = subprocess.Popen(
        args, env=_env(tmp_path), cwd=REPO_ROOT, stdout=log, stderr=subprocess.STDOUT
    )
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline:
        kids = _children(proc.pid)
        found = {w: [p for p, cmd in kids.items() if w in cmd] for w in want}
        if all(found.values()):
            return proc, sorted(p for pids in found.values() for p in pids)
        if proc.poll() is not None:
            break
        time.sleep(0.3)
    proc.kill()
    pytest.fail(f"{args} never had children {want}:\n{(tmp_path / 'cmd.log').read_text()[-3000:]}")


def _assert_gone(pids: list[int], within: float, log: Path) -> float:
    t0 = time.monotonic()
    while time.monotonic() - t0 < within:
        if not any(pid_alive(p) for p in pids):
            return time.monotonic() - t0
        time.sleep(0.2)
    left = [p for p in pids if pid_alive(p)]
    for p in left:  # do not leave them to the next test
        os.kill(p, signal.SIGKILL)
    pytest.fail(f"children {left} outlived their parent:\n{log.read_text()[-3000:]}")


VREC = [sys.executable, "-m", "vrec_tools.cli"]
BROKER_AND_WORKER = ("kafka.Kafka", "vrec_tools.cli worker")
SAMPLE = REPO_ROOT / "tests" / "fixtures" / "hm_sample"


def _inputs(tmp_path: Path) -> list[str]:
    """--items / --log: a few products and two events (the run is stopped early anyway)."""
    rows = (SAMPLE / "items.csv").read_text().splitlines()[:6]
    (tmp_path / "items.csv").write_text("\n".join(rows) + "\n")
    events = [
        {"kind": "view", "event_id": f"e{i}", "user_id": "u1", "item_id": "0562245046",
         "ts": 1543921200.0 + i}
        for i in range(2)
    ]  # fmt: skip
    (tmp_path / "events.jsonl").write_text("".join(json.dumps(e) + "\n" for e in events))
    return ["--items", str(tmp_path / "items.csv"), "--log", str(tmp_path / "events.jsonl")]


@pytest.mark.parametrize(
    ("command", "sig"),
    [(["demo"], signal.SIGTERM), (["bench", "pipeline", "--repeat", "1"], signal.SIGHUP)],
    ids=["demo-SIGTERM", "bench-SIGHUP"],
)
def test_stop_signal_stops_broker_and_worker(tmp_path, command, sig):
    proc, pids = _start(VREC + command + _inputs(tmp_path), tmp_path, BROKER_AND_WORKER)
    time.sleep(1.0)  # the worker is booting: the signal lands mid-run
    proc.send_signal(sig)
    rc = proc.wait(90)  # the command itself stops them before it returns
    took = _assert_gone(pids, 5, tmp_path / "cmd.log")
    assert rc == 128 + sig, (rc, took)
    assert "stopped what it started" in (tmp_path / "cmd.log").read_text()


def test_killed_parent_takes_its_children(tmp_path):
    """SIGKILL leaves no cleanup to run: the children's parent-death signal ends them."""
    proc, pids = _start(VREC + ["demo", *_inputs(tmp_path)], tmp_path, BROKER_AND_WORKER)
    proc.kill()
    proc.wait(10)
    _assert_gone(pids, 60, tmp_path / "cmd.log")


def test_pytest_session_stops_its_broker_on_sigterm(tmp_path):
    """The suite's kafka_broker fixture: SIGTERM to pytest tears the session down."""
    suite_conftest = REPO_ROOT / "tests" / "conftest.py"
    (tmp_path / "conftest.py").write_text(  # the suite's fixtures and hooks, under another name
        textwrap.dedent(
            f"""
            import importlib.util
            import sys

            spec = importlib.util.spec_from_file_location("suite_conftest", {str(suite_conftest)!r})
            mod = sys.modules["suite_conftest"] = importlib.util.module_from_spec(spec)
            spec.loader.exec_module(mod)
            globals().update({{k: v for k, v in vars(mod).items() if not k.startswith("__")}})
            """
        )
    )
    (tmp_path / "test_hold.py").write_text(
        textwrap.dedent(
            """
            import time

            def test_hold(kafka_broker):
                print("BROKER UP", flush=True)
                time.sleep(300)
            """
        )
    )
    args = [
        sys.executable, "-m", "pytest", "-q", "-s", "-p", "no:cacheprovider",
        "--rootdir", str(tmp_path), str(tmp_path / "test_hold.py"),
    ]  # fmt: skip
    proc, pids = _start(args, tmp_path, ("kafka.Kafka",))
    time.sleep(0.5)
    proc.send_signal(signal.SIGTERM)
    proc.wait(90)
    _assert_gone(pids, 5, tmp_path / "cmd.log")
