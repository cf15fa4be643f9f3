"""The old versions of replaced files are freed by the closer thread, never lost early
or held for ever (batchq.files.retire, used by every atomic write)."""

from __future__ import annotations

import os
from contextlib import suppress
from pathlib import Path

import pytest

from batchq.files import jsonfile, retire


def _held_inodes() -> set[int]:
    """Inodes this process holds through descriptors now (O_PATH ones included)."""
    found = set()
    for fd in os.listdir("/proc/self/fd"):
        with suppress(OSError):  # closed since the listing
            found.add(os.stat(f"/proc/self/fd/{fd}").st_ino)
    return found


def test_a_held_file_stays_allocated_across_the_rename_until_released(tmp_path: Path) -> None:
    target, new = tmp_path / "t.json", tmp_path / "n.json"
    target.write_text("old", encoding="utf-8")
    new.write_text("new", encoding="utf-8")
    old_ino = target.stat().st_ino
    fd = retire.hold(target)
    assert fd is not None
    os.replace(new, target)
    assert os.fstat(fd).st_ino == old_ino and os.fstat(fd).st_nlink == 0  # nameless, not freed
    assert target.read_text(encoding="utf-8") == "new"
    retire.release([fd])
    retire.drain()
    assert old_ino not in _held_inodes()


def test_nothing_to_hold_for_a_new_name_or_past_the_limit(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert retire.hold(tmp_path / "missing") is None
    monkeypatch.setattr(retire, "MAX_HELD", 1)
    (tmp_path / "a").write_text("a", encoding="utf-8")
    first = retire.hold(tmp_path / "a")
    assert first is not None
    assert retire.hold(tmp_path / "a") is None  # the replace then frees inline, as before
    retire.release([first])
    retire.drain()
    again = retire.hold(tmp_path / "a")  # a closed one frees its place
    assert again is not None
    retire.release([again])
    retire.drain()


def test_a_symlink_is_held_as_itself_never_followed(tmp_path: Path) -> None:
    (tmp_path / "real").write_text("x", encoding="utf-8")
    (tmp_path / "link").symlink_to(tmp_path / "real")
    fd = retire.hold(tmp_path / "link")
    assert fd is not None
    try:
        assert os.fstat(fd).st_ino == os.lstat(tmp_path / "link").st_ino
        assert os.fstat(fd).st_ino != (tmp_path / "real").stat().st_ino
    finally:
        retire.release([fd])
        retire.drain()


def test_write_many_leaves_no_old_file_held(tmp_path: Path) -> None:
    files = [tmp_path / f"f{i}.json" for i in range(5)]
    jsonfile.write_many([(f, '{"v": 1}\n') for f in files])
    old = {f.stat().st_ino for f in files}
    jsonfile.write_many([(f, '{"v": 2}\n') for f in files])
    retire.drain()
    assert not old & _held_inodes()
    assert all(f.read_text(encoding="utf-8") == '{"v": 2}\n' for f in files)
    assert not retire._open


def test_a_forked_child_closes_the_descriptors_it_inherited(tmp_path: Path) -> None:
    (tmp_path / "a").write_text("a", encoding="utf-8")
    ino = (tmp_path / "a").stat().st_ino
    fd = retire.hold(tmp_path / "a")
    assert fd is not None
    pid = os.fork()
    if pid == 0:  # the child: nothing of the parent's held files stays open here
        code = 0 if ino not in _held_inodes() and not retire._open else 1
        os._exit(code)
    _, status = os.waitpid(pid, 0)
    retire.release([fd])
    retire.drain()
    assert os.waitstatus_to_exitcode(status) == 0
