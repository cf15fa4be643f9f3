"""The worker opens a subtask's log, in a folder every agent of the run can write,
never through what an agent may have put there (files/agentlog.py): a symlink to a
file of the worker's user, a FIFO that would block it, a folder."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from batchq.agents.process import run_process
from batchq.files.agentlog import append_bytes, append_text, read_bytes_from


def test_a_log_is_created_and_appended_to(tmp_path: Path) -> None:
    log = tmp_path / "logs" / "run1" / "01.log"
    with append_bytes(log) as handle:
        handle.write(b"one\n")
    with append_text(log) as handle:
        handle.write("two\n")
    with read_bytes_from(log) as handle:
        assert handle.read() == b"one\ntwo\n"


def test_a_symlinked_log_is_refused_and_its_target_untouched(tmp_path: Path) -> None:
    target = tmp_path / "bashrc"
    target.write_text("# the worker user's own file\n")
    log = tmp_path / "02.log"
    log.symlink_to(target)
    for opener in (append_bytes, append_text, read_bytes_from):
        with pytest.raises(OSError):
            opener(log)
    with pytest.raises(OSError):
        run_process("echo injected", cwd=tmp_path, log_path=log)
    assert target.read_text() == "# the worker user's own file\n"


def test_a_fifo_or_a_folder_is_refused_without_waiting(tmp_path: Path) -> None:
    fifo = tmp_path / "01.log"
    os.mkfifo(fifo)
    with pytest.raises(OSError):  # no reader: opening to write would block
        append_bytes(fifo)
    with pytest.raises(OSError):
        read_bytes_from(fifo)  # opens at once (non-blocking), then is refused
    (tmp_path / "02.log").mkdir()
    with pytest.raises(OSError):
        append_text(tmp_path / "02.log")
