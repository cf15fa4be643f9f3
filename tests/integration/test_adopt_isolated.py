"""A SIGKILLed orchestrator of an isolated batch, with real processes: a `batchq up`
stack, a real `batchq run --isolate worktree`, a real git repository.

Under isolation the deliverables reach the workspace only when the orchestrator
merges the batch, after its last member is recorded. Here it is killed before that:
01 is recorded (its deliverable is only in its result commit, so its file does not
say completed) and 02 is still running. 02 then finishes on the workers with no
orchestrator. The next `batchq run` adopts the run: it merges both, 03 reads what
they made, and neither runs again.

Each command appends a line to ``marks/<seq>`` outside the project before anything
else (the number of lines is the number of executions) and 02 waits for a ``go``
file the test creates; both live outside the agents' worktrees, which the sandbox
hides by design, so these agents run unsandboxed (``BATCHQ_SANDBOX=off``).
"""

from __future__ import annotations

import os
import signal
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from batchq.files.taskfiles import load_feature
from batchq.run.orchestrator import saved_reports
from tests.integration.gitrepo import git
from tests.integration.test_embedded_run import (
    Sandbox,
    assert_no_process_left,
    sandbox,
)
from tests.integration.test_interrupt import adopted, finish, status, wait_for

pytestmark = pytest.mark.integration
__all__ = ["sandbox"]  # the fixture, imported for these tests

ENV = {"BATCHQ_SHELL_ALLOW": "*", "BATCHQ_SANDBOX": "off", "BATCHQ_ISOLATE": "worktree"}


def recorded(root: Path, seq: str) -> bool:
    """The workers recorded ``seq``'s result in the stack's Redis, for the feature's
    newest run (its file does not say completed before the merge)."""
    from batchq.local.stackfile import live_stack_url
    from batchq.models import feature_key
    from batchq.store.state import StateStore

    url = live_stack_url(root)
    if url is None:
        return False
    store = StateStore.from_url(url)
    try:
        runs = store.recent_runs(feature_key("slow", root.resolve()))
        return bool(runs) and seq in store.results(runs[0], [seq])
    finally:
        store.close()


def runs_of(marks: Path, seq: str) -> int:
    path = marks / seq
    return len(path.read_text().splitlines()) if path.exists() else 0


def test_sigkill_before_the_merge_the_next_run_merges_and_runs_nothing_again(
    sandbox: Sandbox,
    make_feature: Callable[..., Path],
    subtask_data: Callable[..., dict[str, Any]],
) -> None:
    root, marks, go = sandbox.base / "proj", sandbox.base / "marks", sandbox.base / "go"
    root.mkdir()
    marks.mkdir()
    git(root, "init", "-q", "-b", "main")
    git(root, "config", "user.email", "t@example.com")
    git(root, "config", "user.name", "t")
    (root / "README").write_text("project\n")
    git(root, "add", "-A")
    git(root, "commit", "-q", "-m", "init")

    def mark(seq: str) -> str:
        return f"echo run >> {marks / seq} && "

    gate = f"while ! test -e {go}; do sleep 0.1; done && "
    make_feature(
        [
            subtask_data("01", command=mark("01") + "mkdir -p out && echo one > out/01.txt"),
            subtask_data("02", command=mark("02") + gate + "mkdir -p out && echo two > out/02.txt"),
            subtask_data(
                "03",
                command=mark("03") + "cat out/01.txt out/02.txt > out/03.txt",
                depends_on=["01", "02"],
            ),
        ],
        name="slow",
        root=root,
    )
    up = sandbox.run("up", "--workers", "1", "--root", str(root), **ENV)
    assert up.returncode == 0, up.stdout + up.stderr
    try:
        proc = sandbox.popen("run", "slow", "--root", str(root), **ENV)
        wait_for("01 recorded", lambda: recorded(root, "01"), proc)
        wait_for("02 running", lambda: runs_of(marks, "02") == 1, proc)
        assert not (root / "out" / "01.txt").exists()  # recorded, not merged yet
        assert status(root, "01") != "completed"  # its file never says so before the merge
        os.kill(proc.pid, signal.SIGKILL)
        finish(proc)

        again = sandbox.popen("run", "slow", "--root", str(root), **ENV)
        wait_for("the next run holds the feature", lambda: adopted(root), again)
        go.touch()  # 02 finishes on the workers; its orchestrator is gone
        out, err = finish(again)
        assert again.returncode == 0, out + err
        assert "adopted the interrupted run" in err and "2 completed" in err, err
        assert "merged back 01, 02" in err, err
        assert (root / "out" / "01.txt").read_text() == "one\n"
        assert (root / "out" / "02.txt").read_text() == "two\n"
        assert (root / "out" / "03.txt").read_text() == "one\ntwo\n"  # read the merge
        assert [runs_of(marks, s) for s in ("01", "02", "03")] == [1, 1, 1]
        assert {s: status(root, s) for s in ("01", "02", "03")} == dict.fromkeys(
            ("01", "02", "03"), "completed"
        )
        # oldest submitted first: both runs may have started within one second
        saved = saved_reports(load_feature(root, "slow"))
        first = {r.seq: r for r in saved[0].results}  # the adopted run's batch 1
        assert saved[0].ok and sorted(first) == ["01", "02"]
        assert [(first[s].merged, first[s].merged_paths) for s in ("01", "02")] == [
            (True, ["out/01.txt"]), (True, ["out/02.txt"]),
        ]  # fmt: skip
    finally:
        sandbox.run("down", "--root", str(root))
    assert_no_process_left(sandbox.base)
