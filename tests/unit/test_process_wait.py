"""run_process notices a child's exit at once, not at the next poll (issue #24).

No clock is read here: each test runs with a poll interval of an hour
(``poll_s=3600``) under a 30 s test timeout, so a loop that waited for a poll
interval before noticing an exit, a deadline or output could not pass; what is
asserted is how the call ended and how often ``should_stop`` was consulted. Every
test runs twice: with a pidfd in the selector, and with the fallback that has none.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from batchq.agents import process
from batchq.agents.process import ProcessResult, run_process
from batchq.procs import group_members, wait_group_gone

HOUR = 3600.0

pytestmark = pytest.mark.timeout(30)


@pytest.fixture(params=["pidfd", "no-pidfd"], autouse=True)
def pidfd_mode(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    if request.param == "pidfd":
        if not _pidfd_available():
            pytest.skip("no os.pidfd_open on this platform or kernel")
    else:
        monkeypatch.setattr(process, "_PIDFD_OK", False)
    yield request.param


def _pidfd_available() -> bool:
    opener = getattr(os, "pidfd_open", None)
    if opener is None:
        return False
    try:
        os.close(opener(os.getpid()))
    except OSError:
        return False
    return True


class Counter:
    """A ``should_stop`` that counts its calls and says stop from call ``stop_at`` on."""

    def __init__(self, stop_at: int | None = None, raise_at: int | None = None) -> None:
        self.calls = 0
        self.stop_at = stop_at
        self.raise_at = raise_at

    def __call__(self) -> bool:
        self.calls += 1
        if self.raise_at is not None and self.calls >= self.raise_at:
            raise RuntimeError("stop check failed")
        return self.stop_at is not None and self.calls >= self.stop_at


def _pgid(result: ProcessResult | str) -> int:
    text = result if isinstance(result, str) else result.output
    match = re.search(r"pgid=(\d+)", text)
    assert match, text
    return int(match.group(1))


def _group_gone(pgid: int) -> bool:
    # SIGKILL is delivered asynchronously: give the kernel a moment to finish them.
    return wait_group_gone(pgid, 10.0) and group_members(pgid) == []


def test_the_pidfd_is_used_where_the_platform_has_one(pidfd_mode: str) -> None:
    opened = process._open_pidfd(os.getpid())
    try:
        assert (opened is not None) == (pidfd_mode == "pidfd")
    finally:
        if opened is not None:
            os.close(opened)


@pytest.mark.parametrize("command", ["true", "touch out", "echo hi; touch out"])
def test_a_finished_child_is_noticed_without_waiting_for_a_poll(
    tmp_path: Path, command: str
) -> None:
    stop = Counter()
    result = run_process(command, cwd=tmp_path, should_stop=stop, poll_s=HOUR)
    assert result.ok
    assert result.exit_code == 0
    assert stop.calls <= 1  # the check at the start (none if the child was already done)
    if "touch" in command:
        assert (tmp_path / "out").is_file()


def test_an_exit_after_the_output_closed_is_noticed_at_once(tmp_path: Path) -> None:
    # EOF first, exit a little later: the old loop slept poll_s between the two.
    stop = Counter()
    result = run_process(
        "echo before; exec >&- 2>&-; sleep 0.2; touch out",
        cwd=tmp_path,
        should_stop=stop,
        poll_s=HOUR,
    )
    assert result.ok
    assert result.output == "before\n"
    assert (tmp_path / "out").is_file()
    assert stop.calls <= 1


def test_an_exit_without_should_stop_or_deadline_is_noticed(tmp_path: Path) -> None:
    result = run_process("exec >&-; sleep 0.1; exit 3", cwd=tmp_path, poll_s=HOUR)
    assert result.exit_code == 3
    assert result.describe() == "exit code 3"


def test_output_does_not_make_should_stop_run_more_often(tmp_path: Path) -> None:
    stop = Counter()
    log = tmp_path / "out.log"
    result = run_process(
        "for i in $(seq 20); do echo line $i; sleep 0.01; done",
        cwd=tmp_path,
        should_stop=stop,
        log_path=log,
        poll_s=HOUR,
    )
    assert result.ok
    assert stop.calls <= 1
    expected = "".join(f"line {i}\n" for i in range(1, 21))
    assert result.output == expected
    assert log.read_text() == expected


def test_the_deadline_fires_without_waiting_for_a_poll(tmp_path: Path) -> None:
    stop = Counter()
    result = run_process(
        "echo pgid=$$; sleep 30 & sleep 30",
        cwd=tmp_path,
        timeout_s=0.3,
        should_stop=stop,
        poll_s=HOUR,
    )
    assert result.timed_out
    assert not result.ok
    assert result.error_type == "Timeout"
    assert "[batchq] timed out after 0.3s" in result.output
    assert stop.calls <= 1
    assert _group_gone(_pgid(result))


def test_the_deadline_fires_after_the_output_closed(tmp_path: Path) -> None:
    result = run_process(
        "exec >&- 2>&-; sleep 30", cwd=tmp_path, timeout_s=0.3, should_stop=Counter(), poll_s=HOUR
    )
    assert result.timed_out


def test_cancellation_fires_within_a_bounded_number_of_checks(tmp_path: Path) -> None:
    stop = Counter(stop_at=3)
    result = run_process(
        "echo pgid=$$; sleep 30 & sleep 30", cwd=tmp_path, should_stop=stop, poll_s=0.01
    )
    assert result.cancelled
    assert result.error_type == "Cancelled"
    assert stop.calls == 3
    assert "[batchq] cancelled" in result.output
    assert _group_gone(_pgid(result))


def test_cancellation_fires_while_output_streams(tmp_path: Path) -> None:
    stop = Counter(stop_at=3)
    result = run_process(
        "echo pgid=$$; while true; do echo x; done",
        cwd=tmp_path,
        should_stop=stop,
        poll_s=0.01,
        tail_bytes=4096,
    )
    assert result.cancelled
    assert stop.calls == 3


def test_a_background_grandchild_is_killed_after_the_child_exits(tmp_path: Path) -> None:
    stop = Counter()
    result = run_process("sleep 30 & echo pgid=$$", cwd=tmp_path, should_stop=stop, poll_s=HOUR)
    assert result.ok
    assert stop.calls <= 1
    assert _group_gone(_pgid(result))


def test_a_grandchild_that_ignores_term_is_killed_too(tmp_path: Path) -> None:
    result = run_process(
        "(trap '' TERM; exec >&- 2>&-; sleep 30) & echo pgid=$$",
        cwd=tmp_path,
        grace_s=0.2,
        poll_s=HOUR,
    )
    assert result.ok
    assert _group_gone(_pgid(result))


def test_an_escaped_grandchild_holding_the_pipe_is_drained_for_a_bounded_time(
    tmp_path: Path,
) -> None:
    pidfile = tmp_path / "escaped.pid"
    try:
        result = run_process(
            f"setsid sleep 30 & echo $! > {pidfile}; echo done",
            cwd=tmp_path,
            should_stop=Counter(),
            poll_s=HOUR,
        )
        assert result.ok
        assert result.output == "done\n"
    finally:
        with contextlib.suppress(ValueError, OSError):
            os.kill(int(pidfile.read_text()), signal.SIGKILL)


@pytest.mark.parametrize("fail", ["should_stop", "signal"])
def test_an_exception_raised_into_the_loop_still_kills_the_group(tmp_path: Path, fail: str) -> None:
    log = tmp_path / "out.log"
    stop = Counter(raise_at=3) if fail == "should_stop" else Counter()
    poll_s = 0.01 if fail == "should_stop" else HOUR
    # A soft time limit arrives as a signal whose handler raises, mid-wait. SIGUSR1 to
    # the main thread (SIGALRM is pytest-timeout's), once the child is running.
    main = threading.get_ident()

    def raise_soft_limit(signum: int, frame: object) -> None:
        raise TimeoutError("soft time limit")

    def send_when_started() -> None:
        while not (log.exists() and "pgid=" in log.read_text()):
            threading.Event().wait(0.01)
        signal.pthread_kill(main, signal.SIGUSR1)

    previous = signal.signal(signal.SIGUSR1, raise_soft_limit)
    sender = threading.Thread(target=send_when_started, daemon=True)
    try:
        if fail == "signal":
            sender.start()
        with pytest.raises((RuntimeError, TimeoutError)):
            run_process(
                "echo pgid=$$; sleep 30 & sleep 30",
                cwd=tmp_path,
                should_stop=stop,
                log_path=log,
                poll_s=poll_s,
            )
    finally:
        if sender.is_alive():
            sender.join()
        signal.signal(signal.SIGUSR1, previous)
    assert _group_gone(_pgid(log.read_text()))
