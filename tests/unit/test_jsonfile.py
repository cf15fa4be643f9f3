"""Format-preserving JSON documents and atomic replacement."""

from __future__ import annotations

import copy
import itertools
import json
import os
import stat
import threading
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from batchq.files import jsonfile
from batchq.files.jsonfile import (
    JsonDocument,
    JsonFormat,
    JsonReadError,
    read_document,
    same_json,
    write_atomic,
    write_many,
)


def write(path: Path, text: str) -> Path:
    path.write_bytes(text.encode("utf-8"))
    return path


def test_files_laid_out_alike_share_one_format_and_others_keep_theirs(tmp_path: Path) -> None:
    one = read_document(write(tmp_path / "a.json", '{\n  "a": 1\n}\n'))
    two = read_document(write(tmp_path / "b.json", '{\n  "b": [1, 2]\n}\n'))
    tabs = read_document(write(tmp_path / "c.json", '{\n\t"a": 1\n}'))
    assert one.format is two.format
    assert tabs.format != one.format
    assert (tabs.format.indent, tabs.format.tail) == ("\t", "")


def test_an_unread_document_reads_the_file_again_with_every_check(tmp_path: Path) -> None:
    target = write(tmp_path / "a.json", '{\n  "a": 1\n}\n')
    unread = read_document(target).unread()
    write(target, '{"a": 2, "b": [true]}')  # another version, another layout
    assert unread.data == {"a": 2, "b": [True]}
    assert unread.format.indent is None
    assert unread.render({"a": 3, "b": [True]}) == '{"a": 3, "b": [true]}'
    again = read_document(target).unread()
    write(target, '{"a": 1, "a": 2}')
    with pytest.raises(JsonReadError, match="duplicate key"):
        _ = again.data


def test_a_document_keeps_its_path_as_a_string_and_still_answers_with_a_path(
    tmp_path: Path,
) -> None:
    target = write(tmp_path / "a.json", '{"a": 1}')
    doc = read_document(target)
    for kept in (doc, doc.compact(), doc.unread()):
        assert type(kept.fspath) is str
        assert kept.path == target
        assert isinstance(kept.path, Path)
        assert kept.name == "a.json"
    assert doc.unread().data == {"a": 1}  # read again through the string


def test_compact_documents_decode_as_read_and_share_their_repeated_strings(
    tmp_path: Path,
) -> None:
    texts = [
        '{"agent": "python", "n": 123456789012345678901234567890, "x": [1e400, -0.0, 0.1]}',
        '{"agent": "python", "k": {"agent": null}}',
    ]
    docs = [read_document(write(tmp_path / f"{i}.json", t)).compact() for i, t in enumerate(texts)]
    assert [doc.data for doc in docs] == [json.loads(t) for t in texts]
    # One object for a value many files repeat: the models made from them keep it.
    assert docs[0].data["agent"] is docs[1].data["agent"]


def test_a_compact_text_only_pythons_decoder_takes_still_decodes() -> None:
    # The strict read refuses a lone surrogate; a text made otherwise is still data.
    doc = JsonDocument("x.json", None, '{"odd": "\\ud800 alone"}', JsonFormat())
    assert doc.data == {"odd": "\ud800 alone"}


def test_equal_data_renders_nothing_so_the_file_is_not_rewritten(tmp_path: Path) -> None:
    doc = read_document(write(tmp_path / "a.json", '{"a": [1, 2.50, 1e3], "b": "\\u00e9"}'))
    assert doc.render(copy.deepcopy(doc.data)) is None


def test_json_equality_tells_numbers_booleans_and_key_order_apart() -> None:
    assert same_json({"a": 1, "b": [True]}, {"a": 1, "b": [True]})
    assert not same_json({"a": 1}, {"a": 1.0})
    assert not same_json({"a": 1}, {"a": True})
    assert not same_json({"a": 1, "b": 2}, {"b": 2, "a": 1})
    assert same_json([1, [2]], ([1, (2,)]))


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ('{"a":1,"b":[1,2]}', '{"a":2,"b":[1,2],"c":[true]}'),
        ('{"a": 1, "b": [1,2]}', '{"a": 2, "b": [1,2], "c": [true]}'),
    ],
    ids=["javascript-compact", "python-compact"],
)
def test_single_line_files_stay_on_one_line_with_their_separators(
    tmp_path: Path, text: str, expected: str
) -> None:
    doc = read_document(write(tmp_path / "a.json", text))
    new = copy.deepcopy(doc.data)
    new["a"] = 2
    new["c"] = [True]
    assert doc.render(new) == expected


def test_a_byte_order_mark_and_crlf_newlines_are_kept(tmp_path: Path) -> None:
    text = '\ufeff{\r\n    "a": 1,\r\n    "b": {\r\n        "c": 2\r\n    }\r\n}\r\n'
    doc = read_document(write(tmp_path / "a.json", text))
    new = copy.deepcopy(doc.data)
    new["a"] = {"x": None}
    assert doc.render(new) == (
        '\ufeff{\r\n    "a": {\r\n        "x": null\r\n    },\r\n'
        '    "b": {\r\n        "c": 2\r\n    }\r\n}\r\n'
    )


def test_an_empty_object_gets_two_space_indentation(tmp_path: Path) -> None:
    doc = read_document(write(tmp_path / "a.json", "{}"))
    assert doc.render({"k": ["v"]}) == '{\n  "k": [\n    "v"\n  ]\n}'


def test_unchanged_items_of_a_changed_list_keep_their_text(tmp_path: Path) -> None:
    doc = read_document(write(tmp_path / "a.json", '{\n  "l": [1e2, {"k": "v"}]\n}\n'))
    new = copy.deepcopy(doc.data)
    new["l"].append("é")
    assert doc.render(new) == '{\n  "l": [\n    1e2,\n    {"k": "v"},\n    "é"\n  ]\n}\n'


def test_a_value_json_cannot_hold_is_refused(tmp_path: Path) -> None:
    doc = read_document(write(tmp_path / "a.json", '{"a": 1}'))
    with pytest.raises(ValueError, match="set"):
        doc.render({"a": {1, 2}})
    with pytest.raises(ValueError):
        doc.render({"a": float("nan")})


@pytest.mark.parametrize(
    ("content", "reason"),
    [
        (b"\xef\xbb\xbf" + b"[]", "got an array"),
        (b'"text"', "got a string"),
        (b'{"a": Infinity}', "malformed JSON: Infinity is not valid JSON"),
        (b'{"a": 1,}', "malformed JSON at line 1 column 9"),
        (b'{"a": "\xc3"}', "not valid UTF-8: byte 0xc3 at offset 7"),
        (b"", "malformed JSON at line 1 column 1"),
    ],
)
def test_unreadable_content_gives_a_one_line_reason(
    tmp_path: Path, content: bytes, reason: str
) -> None:
    (tmp_path / "a.json").write_bytes(content)
    with pytest.raises(JsonReadError) as caught:
        read_document(tmp_path / "a.json")
    assert reason in caught.value.reason
    assert "\n" not in caught.value.reason


def test_a_file_over_the_limit_is_refused_before_parsing(tmp_path: Path) -> None:
    (tmp_path / "a.json").write_bytes(b'{"a": "' + b"x" * 100 + b'"}')
    with pytest.raises(JsonReadError, match="file is 109 bytes; the limit is 50 bytes"):
        read_document(tmp_path / "a.json", max_bytes=50)


def test_a_file_exactly_at_the_limit_reads_whole(tmp_path: Path) -> None:
    text = '{"a": "' + "x" * 41 + '"}'
    (tmp_path / "a.json").write_text(text)
    assert len(text) == 50
    assert read_document(tmp_path / "a.json", max_bytes=50).data == {"a": "x" * 41}


def test_a_fifo_is_refused_without_waiting_for_a_writer(tmp_path: Path) -> None:
    """``task.json`` replaced by a FIFO used to block the reader until a writer came."""
    fifo = tmp_path / "task.json"
    os.mkfifo(fifo)
    outcome: list[BaseException] = []

    def read() -> None:
        try:
            read_document(fifo)
        except BaseException as exc:  # the assertion below names it
            outcome.append(exc)

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    reader.join(timeout=60)  # a liveness guard, not a speed check: it used to hang forever
    if reader.is_alive():
        with open(fifo, "wb"):  # release the reader before failing
            pass
    assert not reader.is_alive(), "read_document blocked on a FIFO"
    assert len(outcome) == 1 and isinstance(outcome[0], JsonReadError)
    assert "not a regular file" in outcome[0].reason


def test_a_folder_is_still_an_os_error(tmp_path: Path) -> None:
    with pytest.raises(IsADirectoryError):
        read_document(tmp_path)


def test_atomic_write_replaces_the_file_and_keeps_its_permissions(tmp_path: Path) -> None:
    target = write(tmp_path / "a.json", "old")
    target.chmod(0o640)
    write_atomic(target, "néw")
    assert target.read_bytes() == "néw".encode()
    assert stat.S_IMODE(target.stat().st_mode) == 0o640
    assert os.listdir(tmp_path) == ["a.json"]


def test_a_failed_atomic_write_leaves_the_original_and_no_temp_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    target = write(tmp_path / "a.json", "old")

    def broken_replace(src: Any, dst: Any) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", broken_replace)
    with pytest.raises(OSError, match="No space"):
        write_atomic(target, "new")
    assert target.read_text() == "old"
    assert os.listdir(tmp_path) == ["a.json"]


def test_bytes_and_bytes_in_parts_are_written_as_given(tmp_path: Path) -> None:
    target = write(tmp_path / "a.json", "old")
    write_atomic(target, "néw\n".encode())
    assert target.read_bytes() == "néw\n".encode()
    write_atomic(target, iter([b"{", b'"a": ', b"", b"1}\n"]))
    assert target.read_bytes() == b'{"a": 1}\n'
    assert os.listdir(tmp_path) == ["a.json"]


def test_parts_that_fail_half_way_leave_the_original_and_no_temp_file(tmp_path: Path) -> None:
    """A part that cannot be made (its serialization raises) after others were written
    to the temp file: nothing is replaced."""
    target = write(tmp_path / "a.json", "old")

    def parts() -> Any:
        yield b"new, half"
        raise ValueError("cannot serialize")

    with pytest.raises(ValueError, match="cannot serialize"):
        write_atomic(target, parts())
    assert target.read_text() == "old"
    assert os.listdir(tmp_path) == ["a.json"]


class _Counted:
    """Counts calls of a real function and passes them on."""

    def __init__(self, real: Any) -> None:
        self.real, self.calls = real, 0

    def __call__(self, *args: Any) -> Any:
        self.calls += 1
        return self.real(*args)


def _many(tmp_path: Path, n: int) -> list[tuple[Path, str]]:
    items = []
    for i in range(n):
        target = write(tmp_path / f"s{i:03}.json", "old")
        target.chmod(0o600 if i % 2 else 0o644)
        items.append((target, f"new {i}"))
    return items


def test_many_files_are_flushed_by_one_syncfs_before_any_rename(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    syncfs = jsonfile._syncfs()
    if syncfs is None:
        pytest.skip("this system has no syncfs")
    counted = _Counted(syncfs)
    fsyncs = _Counted(os.fsync)
    replaced: list[str] = []
    real_replace = os.replace

    def replace(src: Any, dst: Any) -> None:
        assert counted.calls == 1, "a file was renamed into place before the flush"
        replaced.append(Path(dst).name)
        real_replace(src, dst)

    monkeypatch.setattr(jsonfile, "_syncfs", lambda: counted)
    monkeypatch.setattr(os, "fsync", fsyncs)
    monkeypatch.setattr(os, "replace", replace)
    items = _many(tmp_path, jsonfile.SYNCFS_FROM + 3)
    write_many(items)
    assert (counted.calls, fsyncs.calls) == (1, 0)
    assert len(replaced) == len(items)
    for i, (target, text) in enumerate(items):
        assert target.read_text() == text
        assert stat.S_IMODE(target.stat().st_mode) == (0o600 if i % 2 else 0o644)
    assert sorted(os.listdir(tmp_path)) == sorted(t.name for t, _ in items)


@pytest.mark.parametrize("syncfs", [None, lambda fd: -1], ids=["absent", "failing"])
def test_without_a_working_syncfs_each_of_many_files_is_fsynced(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, syncfs: Any
) -> None:
    fsyncs = _Counted(os.fsync)
    monkeypatch.setattr(jsonfile, "_syncfs", lambda: syncfs)
    monkeypatch.setattr(os, "fsync", fsyncs)
    items = _many(tmp_path, jsonfile.SYNCFS_FROM)
    write_many(items)
    assert fsyncs.calls == len(items)
    assert [t.read_text() for t, _ in items] == [text for _, text in items]


def test_a_failure_while_staging_many_files_replaces_none(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    items = _many(tmp_path, jsonfile.SYNCFS_FROM + 1)
    real_write = os.write
    writes = itertools.count()

    def write_until_full(fd: int, data: Any) -> int:
        if next(writes) == 7:
            raise OSError(28, "No space left on device")
        return real_write(fd, data)

    monkeypatch.setattr(os, "write", write_until_full)
    with pytest.raises(OSError, match="No space"):
        write_many(items)
    assert all(t.read_text() == "old" for t, _ in items)
    assert sorted(os.listdir(tmp_path)) == sorted(t.name for t, _ in items)


@pytest.mark.parametrize("count", [1, 3, jsonfile.SYNCFS_FROM + 1], ids=["one", "few", "many"])
def test_many_files_may_be_named_by_str_paths(tmp_path: Path, count: int) -> None:
    """A big rewrite names its files by ``str`` (a ``Path`` each would be held until the
    renames): every way of staging takes them, and leaves no temp file behind."""
    items = _many(tmp_path, count)
    write_many([(str(target), text) for target, text in items])
    assert [t.read_text() for t, _ in items] == [text for _, text in items]
    assert sorted(os.listdir(tmp_path)) == sorted(t.name for t, _ in items)


def test_many_files_from_a_generator_are_staged_as_they_come(tmp_path: Path) -> None:
    """Past the first ``SYNCFS_FROM`` (read ahead: are they many?), a generator's files
    are written to temp files as it yields them (a rewrite of thousands of files never
    holds every text at once), and renamed only after the last."""
    items = _many(tmp_path, jsonfile.SYNCFS_FROM + 8)
    seen: list[int] = []

    def texts() -> Any:
        for target, text in items:
            temps = [n for n in os.listdir(tmp_path) if n.endswith(".tmp")]
            seen.append(len(temps))
            assert all(t.read_text() == "old" for t, _ in items)  # nothing renamed yet
            yield target, text

    write_many(texts())
    ahead = jsonfile.SYNCFS_FROM
    assert seen == [0] * ahead + list(range(ahead, len(items)))  # each earlier one staged
    assert [t.read_text() for t, _ in items] == [text for _, text in items]
    assert sorted(os.listdir(tmp_path)) == sorted(t.name for t, _ in items)


@pytest.mark.parametrize("count", [3, jsonfile.SYNCFS_FROM + 3])
def test_what_a_generator_raises_midway_replaces_nothing(tmp_path: Path, count: int) -> None:
    items = _many(tmp_path, count)

    def texts() -> Any:
        yield from items[:-1]
        raise ValueError("the last file cannot be rendered")

    with pytest.raises(ValueError, match="cannot be rendered"):
        write_many(texts())
    assert all(t.read_text() == "old" for t, _ in items)
    assert sorted(os.listdir(tmp_path)) == sorted(t.name for t, _ in items)  # no temp left


def test_a_leftover_temp_file_with_the_same_name_is_left_alone(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    target = write(tmp_path / "a.json", "old")
    monkeypatch.setattr(jsonfile, "_TMP_COUNTER", itertools.count())
    leftover = write(tmp_path / f".a.json.{os.getpid()}.0.tmp", "a crashed run's")
    write_atomic(target, "new")
    assert target.read_text() == "new"
    assert leftover.read_text() == "a crashed run's"
    assert sorted(os.listdir(tmp_path)) == [leftover.name, "a.json"]


json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=20,
)
json_objects = st.dictionaries(st.text(max_size=8), json_values, min_size=1, max_size=6)


@given(
    data=json_objects,
    indent=st.sampled_from([2, 4, "\t"]),
    tail=st.sampled_from(["", "\n"]),
    extra=json_values,
)
def test_any_object_round_trips_and_an_edit_matches_a_fresh_dump(
    tmp_path_factory: pytest.TempPathFactory,
    data: dict[str, Any],
    indent: int | str,
    tail: str,
    extra: Any,
) -> None:
    path = tmp_path_factory.mktemp("prop") / "a.json"
    write(path, json.dumps(data, indent=indent, ensure_ascii=False) + tail)
    doc = read_document(path)
    assert doc.render(copy.deepcopy(doc.data)) is None
    new = copy.deepcopy(doc.data)
    new["\x00added"] = extra
    assert doc.render(new) == json.dumps(new, indent=indent, ensure_ascii=False) + tail
