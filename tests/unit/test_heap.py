"""batchq.run.heap: full collections deferred during runs, CPython's setting restored after."""

from __future__ import annotations

import gc
import threading

from batchq.run import heap


def test_overlapping_runs_restore_the_setting_only_when_the_last_one_ends() -> None:
    before = gc.get_threshold()
    first_in = threading.Event()
    release = threading.Event()

    def other_run() -> None:
        with heap.long_lived():
            first_in.set()
            release.wait(10)

    thread = threading.Thread(target=other_run)
    thread.start()
    assert first_in.wait(10)
    with heap.long_lived():
        assert gc.get_threshold()[2] == max(before[2], heap.RUN_THRESHOLD2)
        release.set()
        thread.join(10)
        assert gc.get_threshold()[2] == max(before[2], heap.RUN_THRESHOLD2)  # still running
    assert gc.get_threshold() == before


def test_a_failing_run_restores_the_setting() -> None:
    before = gc.get_threshold()
    try:
        with heap.long_lived():
            raise RuntimeError("boom")
    except RuntimeError:
        pass
    assert gc.get_threshold() == before
