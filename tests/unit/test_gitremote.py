"""The remote side of ``workspace = git`` that needs no remote: prompts off, refs by run."""

from __future__ import annotations

import fcntl
import logging
import os
from pathlib import Path

import pytest

from batchq import layout
from batchq.errors import UsageError
from batchq.executor.gitcache import Cache, log_ref
from batchq.files import gitremote
from batchq.run import remote
from batchq.settings import Settings


def test_remote_calls_never_prompt_and_keep_the_users_ssh_command(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("GIT_SSH_COMMAND", raising=False)
    monkeypatch.delenv("GIT_SSH", raising=False)
    env = gitremote.remote_env()
    assert env["GIT_TERMINAL_PROMPT"] == "0"
    assert env["GIT_SSH_COMMAND"].startswith("ssh ") and "BatchMode=yes" in env["GIT_SSH_COMMAND"]
    monkeypatch.setenv("GIT_SSH_COMMAND", "ssh -i /keys/deploy")
    assert gitremote.remote_env()["GIT_SSH_COMMAND"].startswith("ssh -i /keys/deploy -o BatchMode")


def test_each_remote_gets_its_own_clone_named_after_it(tmp_path: Path) -> None:
    one = Cache(tmp_path, "ssh://git@host/team/project.git", 10.0)
    two = Cache(tmp_path, "ssh://git@other/team/project.git", 10.0)
    assert one.repo.parent == tmp_path / "repos"
    assert one.repo.name.startswith("project-") and one.repo.name.endswith(".git")
    assert one.repo != two.repo
    assert one.log_file("R", "03") == tmp_path / "logs" / "R" / "03.log"
    assert log_ref("R", "03") == "refs/batchq/R/log-03"


def test_gc_knows_this_roots_runs_and_which_still_run(tmp_path: Path) -> None:
    feature = tmp_path / ".tmp" / "tasks" / "feat"
    archived = tmp_path / ".tmp" / "tasks" / "completed" / "old"
    for folder, run_id in ((feature, "R1"), (archived, "R0")):
        layout.runs_dir(folder).mkdir(parents=True)
        layout.token_file(folder, run_id).write_text("t\n")
    assert remote.known_runs(tmp_path) == {"R0": False, "R1": False}
    fd = os.open(layout.orchestrator_lock(feature), os.O_RDWR | os.O_CREAT)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        assert remote.known_runs(tmp_path) == {"R0": False, "R1": True}
    finally:
        os.close(fd)


def test_gc_and_adoption_never_hand_git_a_url_with_a_password(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Settings load such a URL (so ``validate`` can list it); everything that would
    give it to git refuses it first, masked."""
    url = "https://me:hunter2@example.com/p.git"
    with pytest.raises(UsageError, match=r"https://me:\*\*\*@example.com/p.git") as caught:
        remote.collect(tmp_path, Settings(git_remote=url))
    assert "hunter2" not in str(caught.value)
    with caplog.at_level(logging.WARNING, logger="batchq.run.remote"):
        remote.fetch_run(tmp_path, url, "R1", 10.0)
    assert "holds a password" in caplog.text and "hunter2" not in caplog.text
