"""The per-feature flock that serialises task-file rewrites."""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from batchq.errors import UsageError
from batchq.files.locking import feature_lock


def test_the_lock_file_lives_in_the_features_batchq_folder(tmp_path: Path) -> None:
    with feature_lock(tmp_path) as lock_path:
        assert lock_path == tmp_path / ".batchq" / "lock"
        assert lock_path.is_file()


def test_the_lock_is_reentrant_within_one_thread(tmp_path: Path) -> None:
    with feature_lock(tmp_path), feature_lock(tmp_path), feature_lock(tmp_path):
        pass
    with feature_lock(tmp_path):
        pass


def test_another_thread_waits_until_the_lock_is_released(tmp_path: Path) -> None:
    order: list[str] = []
    with feature_lock(tmp_path):

        def take() -> None:
            with feature_lock(tmp_path):
                order.append("waiter")

        waiter = threading.Thread(target=take)
        waiter.start()
        time.sleep(0.2)
        order.append("holder")
    waiter.join(timeout=10)
    assert order == ["holder", "waiter"]


def test_a_missing_feature_folder_is_not_created(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="does not exist"), feature_lock(tmp_path / "gone"):
        pass
    assert not (tmp_path / "gone").exists()


def test_a_killed_holder_releases_the_lock(tmp_path: Path) -> None:
    (tmp_path / ".batchq").mkdir()
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import fcntl, sys, time\n"
            "f = open(sys.argv[1], 'a')\n"
            "fcntl.flock(f, fcntl.LOCK_EX)\n"
            "print('locked', flush=True)\n"
            "time.sleep(60)\n",
            str(tmp_path / ".batchq" / "lock"),
        ],
        stdout=subprocess.PIPE,
    )
    try:
        assert holder.stdout is not None
        assert holder.stdout.readline() == b"locked\n"
        holder.kill()
        holder.wait(timeout=10)
        with feature_lock(tmp_path):
            pass
    finally:
        if holder.poll() is None:
            holder.kill()
            holder.wait()
        if holder.stdout is not None:
            holder.stdout.close()
