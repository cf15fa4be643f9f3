"""Child processes never outlive us: groups, logs, TERM-then-KILL, reapers.

These start real (tiny) processes: process groups cannot be faked meaningfully.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from batchq import procs


@pytest.fixture(autouse=True)
def _no_leftovers() -> Iterator[None]:
    yield
    procs.reap_all(grace_s=0.5)


def _wait_for(predicate: object, timeout_s: float = 5.0) -> None:
    assert callable(predicate)
    deadline = time.monotonic() + timeout_s
    while not predicate():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.02)


def _read_pid(path: Path) -> int:
    _wait_for(lambda: path.exists() and path.read_text().strip())
    return int(path.read_text().split()[0])


def test_a_child_leads_its_own_group_and_writes_to_its_log(tmp_path: Path) -> None:
    log = tmp_path / "out.log"
    child = procs.spawn(["bash", "-c", "echo out; echo err >&2"], log)
    assert child.wait(5.0) == 0
    assert child.pgid == child.pid
    assert child.pgid != os.getpgid(0)
    assert log.read_text() == "out\nerr\n"
    child.kill()


def test_a_restarted_child_reads_only_its_own_part_of_the_log(tmp_path: Path) -> None:
    log = tmp_path / "out.log"
    first = procs.spawn(["echo", "first"], log)
    first.wait(5.0)
    first.kill()
    second = procs.spawn(["echo", "second"], log)
    second.wait(5.0)
    assert second.read_log() == "second\n"
    assert "first" in second.read_log(since_start=False)
    second.kill()


def test_killing_a_group_leaves_no_grandchild_behind(tmp_path: Path) -> None:
    pidfile = tmp_path / "grandchild.pid"
    child = procs.spawn(["bash", "-c", f"sleep 60 & echo $! > {pidfile}; wait"], tmp_path / "log")
    grandchild = _read_pid(pidfile)
    assert procs.pid_alive(grandchild)
    assert set(procs.group_members(child.pgid)) == {child.pid, grandchild}
    child.kill()
    assert procs.group_members(child.pgid) == []
    assert not procs.pid_alive(grandchild)
    assert child not in procs.live_children()


def _record_events(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, float]]:
    """The signals procs sends to groups and the sleeps it asks for, in order."""
    events: list[tuple[str, float]] = []
    real_signal, real_sleep = procs._signal_group, time.sleep

    def signal_group(pgid: int, sig: int) -> None:
        events.append(("signal", sig))
        real_signal(pgid, sig)

    me = threading.get_ident()

    def sleep(seconds: float) -> None:
        if threading.get_ident() == me:  # other threads of the test process sleep too
            events.append(("sleep", seconds))
        real_sleep(seconds)

    monkeypatch.setattr(procs, "_signal_group", signal_group)
    monkeypatch.setattr(time, "sleep", sleep)  # procs sleeps through the time module
    return events


def _slept_before_kill(events: list[tuple[str, float]]) -> float:
    """The sleeps asked for before the first SIGKILL: each lasts at least what it
    asked for, so their sum bounds how long the TERM phase went on, without a clock."""
    kill = events.index(("signal", signal.SIGKILL))
    return sum(value for kind, value in events[:kill] if kind == "sleep")


def test_terminate_escalates_to_sigkill_when_term_is_ignored(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    ready = tmp_path / "ready"
    script = f"trap '' TERM; touch {ready}; while true; do sleep 0.05; done"
    child = procs.spawn(["bash", "-c", script], tmp_path / "log")
    _wait_for(ready.exists)
    events = _record_events(monkeypatch)
    assert child.terminate(grace_s=0.3) == -signal.SIGKILL
    assert events[0] == ("signal", signal.SIGTERM)
    # The grace ends the TERM phase: at most one poll interval past it.
    assert _slept_before_kill(events) <= 0.3 + procs._POLL_S + 1e-9
    assert not child.group_alive()


@pytest.mark.timeout(30)
def test_terminate_returns_early_when_the_group_exits_on_term(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    child = procs.spawn(["sleep", "60"], tmp_path / "log")
    events = _record_events(monkeypatch)
    # An hour's grace: waiting it out would blow the test's timeout.
    assert child.terminate(grace_s=3600.0) == -signal.SIGTERM
    assert events[0] == ("signal", signal.SIGTERM)
    assert _slept_before_kill(events) < 3600.0


def test_leader_only_term_spares_the_rest_of_the_group_until_the_leader_is_done(
    tmp_path: Path,
) -> None:
    # Celery's warm shutdown depends on this: the pool must not get TERM directly.
    marker = tmp_path / "marker"
    ready = tmp_path / "ready"
    script = (
        f"sleep 60 & kid=$!; trap 'kill -0 $kid && echo alive > {marker}; exit 0' TERM; "
        f"touch {ready}; wait"
    )
    child = procs.spawn(["bash", "-c", script], tmp_path / "log")
    _wait_for(ready.exists)
    child.terminate(grace_s=0.5, leader_only=True)
    assert marker.read_text() == "alive\n"
    assert procs.group_members(child.pgid) == []


def test_child_pids_lists_direct_children(tmp_path: Path) -> None:
    pidfile = tmp_path / "kid.pid"
    child = procs.spawn(["bash", "-c", f"sleep 60 & echo $! > {pidfile}; wait"], tmp_path / "log")
    kid = _read_pid(pidfile)
    assert procs.child_pids(child.pid) == [kid]
    child.kill()


def test_pid_reuse_is_detectable_by_start_time(tmp_path: Path) -> None:
    child = procs.spawn(["sleep", "60"], tmp_path / "log")
    assert child.start_ticks is not None
    assert procs.process_start_ticks(child.pid) == child.start_ticks
    child.kill()
    assert procs.process_start_ticks(child.pid) is None


def test_reap_all_stops_every_registered_group(tmp_path: Path) -> None:
    children = [procs.spawn(["sleep", "60"], tmp_path / f"{i}.log") for i in range(3)]
    assert procs.reap_all(grace_s=1.0) == 3
    assert procs.live_children() == []
    assert all(not c.group_alive() for c in children)


def test_a_detached_child_is_not_reaped(tmp_path: Path) -> None:
    child = procs.spawn(["sleep", "60"], tmp_path / "log")
    child.detach()
    assert procs.reap_all(grace_s=0.1) == 0
    assert child.alive()
    os.killpg(child.pgid, signal.SIGKILL)
    _wait_for(lambda: not procs.pid_alive(child.pid))
    procs.reap_detached()


_PARENT = textwrap.dedent(
    """
    import sys, time
    from pathlib import Path
    from batchq import procs
    installed = procs.install_sigterm_reaper()
    child = procs.spawn(["sleep", "60"], Path(sys.argv[1]))
    print(child.pid, installed, flush=True)
    if sys.argv[2] == "wait":
        time.sleep(60)
    """
)


def _run_parent(tmp_path: Path, mode: str) -> tuple[subprocess.Popen[str], int]:
    parent = subprocess.Popen(
        [sys.executable, "-c", _PARENT, str(tmp_path / "child.log"), mode],
        stdout=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    assert parent.stdout is not None
    pid_text, installed = parent.stdout.readline().split()
    assert installed == "True"
    return parent, int(pid_text)


def _cleanup(parent: subprocess.Popen[str], grandchild: int) -> None:
    for pgid in (parent.pid, grandchild):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pgid, signal.SIGKILL)
    parent.wait(5.0)
    if parent.stdout is not None:
        parent.stdout.close()


def test_children_die_when_the_parent_exits_normally(tmp_path: Path) -> None:
    parent, grandchild = _run_parent(tmp_path, "exit")
    try:
        assert parent.wait(10.0) == 0
        assert not procs.pid_alive(grandchild)
    finally:
        _cleanup(parent, grandchild)


def test_children_die_when_the_parent_gets_sigterm(tmp_path: Path) -> None:
    parent, grandchild = _run_parent(tmp_path, "wait")
    try:
        assert procs.pid_alive(grandchild)
        parent.send_signal(signal.SIGTERM)
        assert parent.wait(10.0) == 128 + signal.SIGTERM
        assert not procs.pid_alive(grandchild)
    finally:
        _cleanup(parent, grandchild)
