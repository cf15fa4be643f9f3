"""``workspace = git`` and the end of a real `batchq run` (embedded mode): a Ctrl-C
that cancels the run deletes its refs from the remote, as a run that ends normally
does, so nothing a run pushed outlives it there.

The subtasks run in worktrees of the worker's cached clone, sandboxed with a private
``/tmp``: 02 says it started, and waits for ``go``, in its own worktree, where the test
finds it under the cache (no timing, as in ``test_interrupt``).
"""

from __future__ import annotations

import shutil
import signal
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.integration.test_embedded_run import (
    Sandbox,
    assert_no_process_left,
    sandbox,
    subtask_files,
)
from tests.integration.test_gitremote import commit_all
from tests.integration.test_interrupt import assert_settled, finish, wait_for

pytestmark = pytest.mark.integration
__all__ = ["sandbox"]  # the fixture, imported for these tests


def remote_refs(bare: Path) -> list[str]:
    """What ``git ls-remote <bare> 'refs/batchq/*'`` lists: the refs runs left there."""
    done = subprocess.run(
        ["git", "ls-remote", bare.as_uri(), "refs/batchq/*"],
        capture_output=True,
        text=True,
        check=True,
    )
    return [line.split("\t")[1] for line in done.stdout.splitlines()]


def step(seq: str) -> str:
    return f"mkdir -p out && echo ok > out/{seq}.txt"


GATED = "touch started-02 && while ! test -e go; do sleep 0.1; done && " + step("02")


def started(cache: Path, but: Path | None = None) -> Path | None:
    """The worktree where 02 runs now (not ``but``, an earlier run's)."""
    found = [p.parent for p in cache.rglob("started-02") if p.parent != but]
    return found[0] if found else None


def test_ctrl_c_that_cancels_a_git_run_deletes_its_refs_from_the_remote(
    sandbox: Sandbox,
    make_feature: Callable[..., Path],
    subtask_data: Callable[..., dict[str, Any]],
) -> None:
    root = make_feature(
        [
            subtask_data("01", command=step("01")),
            subtask_data("02", command=GATED),
            subtask_data("03", command=step("03"), depends_on=["01", "02"]),
        ],
        name="slow",
        root=sandbox.base / "proj",
    )
    shutil.rmtree(root / ".git")
    commit_all(root)
    bare = sandbox.base / "remote.git"
    subprocess.run(["git", "init", "-q", "--bare", str(bare)], check=True)
    cache = sandbox.base / "cache"
    env = {
        "BATCHQ_SHELL_ALLOW": "*",
        "BATCHQ_UNDECLARED_WRITES": "off",  # started-02 and go
        "BATCHQ_WORKSPACE": "git",
        "BATCHQ_GIT_REMOTE": bare.as_uri(),
        "BATCHQ_WORKER_CACHE": str(cache),
    }

    proc = sandbox.popen("run", "slow", "--root", str(root), **env)
    wait_for("02 running", lambda: started(cache) is not None, proc)
    first = started(cache)
    assert "refs/batchq/" in " ".join(remote_refs(bare))  # the snapshot is there, for one
    proc.send_signal(signal.SIGINT)  # what Ctrl-C sends to the foreground process
    out, err = finish(proc)

    assert proc.returncode == 130, out + err
    assert "interrupted" in err, err
    assert_no_process_left(sandbox.base)
    assert remote_refs(bare) == []  # the cancelled run's refs went with it
    files = subtask_files(root, "slow")
    assert files["02"]["status"] == "pending" and files["02"]["batchq"]["result"] == "cancelled"
    assert not (root / "out" / "02.txt").exists()
    assert_settled(root)

    again = sandbox.popen("run", "slow", "--root", str(root), **env)
    wait_for("02 running again", lambda: started(cache, but=first) is not None, again)
    where = started(cache, but=first)
    assert where is not None
    (where / "go").touch()
    out, err = finish(again)

    assert again.returncode == 0, out + err
    assert {s: d["status"] for s, d in subtask_files(root, "slow").items()} == dict.fromkeys(
        ["01", "02", "03"], "completed"
    )
    for seq in ("01", "02", "03"):
        assert (root / "out" / f"{seq}.txt").read_text() == "ok\n"  # merged back
    assert remote_refs(bare) == []  # and the run that ended normally deleted its own
    assert_no_process_left(sandbox.base)
