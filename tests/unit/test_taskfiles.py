"""Task files: tolerant loading, precise refusals, format-preserving locked rewrites."""

from __future__ import annotations

import fcntl
import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from batchq.errors import InfrastructureError, SpecError, UsageError
from batchq.files.taskfiles import (
    archive_feature,
    complete_subtask,
    feature_dir,
    find_root,
    list_features,
    load_feature,
    load_raw,
    mark_blocked,
    mark_completed,
    mark_in_progress,
    mark_pending,
    tasks_dir,
    update_subtasks,
    utc_timestamp,
)
from batchq.models import BatchqBlock, ResultState, SubtaskStatus, TaskStatus

DATA = Path(__file__).resolve().parents[1] / "data" / "features"
REPO = Path(__file__).resolve().parents[2]
TIMESTAMP = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")


def subtask_doc(name: str, seq: str, **fields: Any) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "id": f"{name}-{seq}",
        "seq": seq,
        "title": f"Subtask {seq}",
        "status": "pending",
        "depends_on": [],
        "parallel": True,
        "suggested_agent": "shell",
        "context_files": [],
        "reference_files": [],
        "acceptance_criteria": ["it works"],
        "deliverables": [f"out/{seq}.txt"],
    }
    doc.update(fields)
    return doc


def write_json(path: Path, data: Any, indent: int | str | None = 2, tail: str = "\n") -> None:
    text = json.dumps(data, indent=indent, ensure_ascii=False) + tail
    path.write_text(text, encoding="utf-8", newline="")


def make_feature(root: Path, name: str = "feat", count: int = 3, **task: Any) -> Path:
    folder = root / ".tmp" / "tasks" / name
    folder.mkdir(parents=True)
    header = {"id": name, "name": f"Feature {name}", "status": "active", "objective": "o"}
    header.update(task)
    write_json(folder / "task.json", header)
    for number in range(1, count + 1):
        seq = f"{number:02d}"
        write_json(folder / f"subtask_{seq}.json", subtask_doc(name, seq))
    return folder


def snapshot(folder: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(folder)): p.read_bytes()
        for p in sorted(folder.rglob("*"))
        if p.is_file() and ".batchq" not in p.parts
    }


def copy_fixture(root: Path, name: str = "auth-system") -> Path:
    target = root / ".tmp" / "tasks" / name
    shutil.copytree(DATA / name, target)
    return target


# --- locations -------------------------------------------------------------------


def test_root_is_the_nearest_folder_with_git(tmp_path: Path) -> None:
    (tmp_path / "proj" / ".git").mkdir(parents=True)
    nested = tmp_path / "proj" / "src" / "deep"
    nested.mkdir(parents=True)
    assert find_root(nested) == (tmp_path / "proj").resolve()


def test_root_is_the_nearest_folder_with_package_json(tmp_path: Path) -> None:
    (tmp_path / ".git").mkdir()
    (tmp_path / "web").mkdir()
    (tmp_path / "web" / "package.json").write_text("{}")
    (tmp_path / "web" / "lib").mkdir()
    assert find_root(tmp_path / "web" / "lib") == (tmp_path / "web").resolve()


def test_an_explicit_root_wins_over_discovery(tmp_path: Path) -> None:
    (tmp_path / ".git").mkdir()
    other = tmp_path / "elsewhere"
    other.mkdir()
    assert find_root(tmp_path, root=other) == other.resolve()


def test_an_explicit_root_that_does_not_exist_is_a_usage_error(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="not an existing folder"):
        find_root(root=tmp_path / "missing")


def test_no_root_found_suggests_the_root_option(tmp_path: Path) -> None:
    if any((p / m).exists() for p in tmp_path.parents for m in (".git", "package.json")):
        pytest.skip("a folder above the temp dir is itself a project root")
    with pytest.raises(UsageError, match="--root"):
        find_root(tmp_path)


def test_root_discovery_starts_from_the_working_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "package.json").write_text("{}")
    (tmp_path / "sub").mkdir()
    monkeypatch.chdir(tmp_path / "sub")
    assert find_root() == tmp_path.resolve()


def test_only_active_features_are_listed(tmp_path: Path) -> None:
    make_feature(tmp_path, "beta")
    make_feature(tmp_path, "alpha")
    (tasks_dir(tmp_path) / "completed" / "old").mkdir(parents=True)
    write_json(tasks_dir(tmp_path) / "completed" / "old" / "task.json", {"id": "old", "name": "o"})
    (tasks_dir(tmp_path) / "no-task-json").mkdir()
    assert list_features(tmp_path) == ["alpha", "beta"]
    assert list_features(tmp_path / "nowhere") == []


@pytest.mark.parametrize("name", ["", "..", ".batchq", "completed", "a/b"])
def test_a_name_that_is_not_a_feature_folder_is_refused(tmp_path: Path, name: str) -> None:
    with pytest.raises(UsageError):
        feature_dir(tmp_path, name)


# --- tolerant loading ---------------------------------------------------------------


def test_a_feature_written_by_the_established_tools_loads(tmp_path: Path) -> None:
    copy_fixture(tmp_path)
    feature = load_feature(tmp_path, "auth-system")
    assert feature.task.name == "Authentication System Implementation"
    assert [s.seq for s in feature.subtasks] == ["01", "02", "03", "04"]
    assert feature.subtasks[1].context_files[0].lines == "10-50"  # type: ignore[union-attr]
    assert feature.subtasks[1].agent_id is None
    assert feature.subtasks[2].execution is not None
    assert feature.subtasks[2].execution.timeout_s == 600
    assert feature.warnings == []


def test_missing_optional_progress_fields_load_as_none(tmp_path: Path) -> None:
    make_feature(tmp_path, count=1)
    sub = load_feature(tmp_path, "feat").subtasks[0]
    assert (sub.agent_id, sub.started_at, sub.completed_at, sub.completion_summary) == (
        None,
        None,
        None,
        None,
    )


def test_a_long_existing_summary_loads_with_a_warning(tmp_path: Path) -> None:
    folder = make_feature(tmp_path, count=1)
    doc = subtask_doc("feat", "01", status="completed", completion_summary="x" * 250)
    write_json(folder / "subtask_01.json", doc)
    feature = load_feature(tmp_path, "feat")
    assert feature.subtasks[0].completion_summary == "x" * 250
    assert len(feature.warnings) == 1
    assert "subtask_01.json" in feature.warnings[0] and "250" in feature.warnings[0]


def test_subtasks_are_ordered_numerically_past_99(tmp_path: Path) -> None:
    folder = make_feature(tmp_path, count=0)
    for seq in ("100", "10", "02", "99"):
        write_json(folder / f"subtask_{seq}.json", subtask_doc("feat", seq))
    (folder / ".batchq").mkdir()
    write_json(folder / ".batchq" / "subtask_50.json", subtask_doc("feat", "50"))
    assert [s.seq for s in load_feature(tmp_path, "feat").subtasks] == ["02", "10", "99", "100"]


def test_duplicate_seqs_load_and_are_both_kept(tmp_path: Path) -> None:
    folder = make_feature(tmp_path, count=1)
    write_json(folder / "subtask_001.json", subtask_doc("feat", "01", title="twin"))
    feature = load_feature(tmp_path, "feat")
    assert [(s.seq, s.title) for s in feature.subtasks] == [("01", "Subtask 01"), ("01", "twin")]


def test_load_raw_keeps_key_order_and_reports_the_layout(tmp_path: Path) -> None:
    folder = make_feature(tmp_path, count=1)
    data, layout = load_raw(folder / "subtask_01.json")
    assert list(data)[:3] == ["id", "seq", "title"]
    assert (layout.indent, layout.tail) == ("  ", "\n")


def test_an_unknown_feature_names_the_known_ones(tmp_path: Path) -> None:
    make_feature(tmp_path, "alpha")
    make_feature(tmp_path, "beta")
    with pytest.raises(UsageError, match="unknown feature 'gamma'; known features: alpha, beta"):
        load_feature(tmp_path, "gamma")


# --- refusals -------------------------------------------------------------------


def _break(folder: Path, file: str, content: bytes) -> None:
    (folder / file).write_bytes(content)


def _sub(**fields: Any) -> bytes:
    doc = subtask_doc("feat", "02")
    doc.update(fields)
    return json.dumps(doc, indent=2).encode()


def _without(key: str) -> bytes:
    doc = subtask_doc("feat", "02")
    del doc[key]
    return json.dumps(doc).encode()


BROKEN: list[tuple[str, str, bytes, str | None, str]] = [
    ("oversize", "subtask_02.json", b" " * (1024 * 1024) + _sub(), None, "1 MiB"),
    ("not-utf8", "subtask_02.json", _sub(title="caf\xe9").replace(b"caf", b"\xff"), None, "UTF-8"),
    ("malformed", "subtask_02.json", b'{\n  "id": "feat-02",\n  "seq": 02\n}', None, "line 3"),
    ("nan", "subtask_02.json", b'{"id": NaN}', None, "malformed JSON"),
    ("array", "subtask_02.json", b"[1, 2]", None, "JSON object"),
    ("no-deliverables", "subtask_02.json", _without("deliverables"), "deliverables", "missing"),
    ("empty-deliverables", "subtask_02.json", _sub(deliverables=[]), "deliverables", "at least"),
    ("bad-status", "subtask_02.json", _sub(status="done"), "status", "'pending'"),
    ("bad-seq", "subtask_02.json", _sub(seq="2"), "seq", "2 to 6 ASCII digits"),
    ("seq-mismatch", "subtask_02.json", _sub(seq="03"), "seq", "match the file name"),
    ("bad-dep", "subtask_02.json", _sub(depends_on=[1]), "depends_on.0", "string"),
    (
        "bad-timeout",
        "subtask_02.json",
        _sub(execution={"timeout_s": "soon"}),
        "execution.timeout_s",
        "number",
    ),
    (
        "bad-callable",
        "subtask_02.json",
        _sub(execution={"callable": "not a callable"}),
        "execution.callable",
        "expected 'package.module:function'; got",
    ),
    (
        "ref-without-path",
        "subtask_02.json",
        _sub(context_files=["a.py", {"lines": "1-2"}]),
        "context_files.1.path",
        "missing",
    ),
    ("ref-number", "subtask_02.json", _sub(reference_files=[7]), "reference_files.0", "path"),
    ("bad-name", "subtask_2.json", _sub(seq="02"), None, "subtask_NN.json"),
    ("task-no-name", "task.json", b'{"id": "feat"}', "name", "missing"),
    (
        "task-count",
        "task.json",
        b'{"id": "feat", "name": "n", "subtask_count": "x"}',
        "subtask_count",
        "integer",
    ),
]


@pytest.mark.parametrize(
    ("file", "content", "field", "expected"),
    [case[1:] for case in BROKEN],
    ids=[case[0] for case in BROKEN],
)
def test_a_broken_file_is_refused_naming_file_and_field(
    tmp_path: Path, file: str, content: bytes, field: str | None, expected: str
) -> None:
    folder = make_feature(tmp_path)
    _break(folder, file, content)
    before = snapshot(folder)
    with pytest.raises(SpecError) as caught:
        load_feature(tmp_path, "feat")
    error = caught.value
    assert error.path == folder / file
    assert error.field == field
    assert expected in error.expected
    assert "\n" not in str(error)
    assert str(error).startswith(str(folder / file))
    with pytest.raises(SpecError):
        complete_subtask(tmp_path, "feat", "01", "done")
    assert snapshot(folder) == before


def test_an_invalid_mutation_is_refused_and_nothing_is_written(tmp_path: Path) -> None:
    folder = make_feature(tmp_path)
    before = snapshot(folder)

    def fail(data: dict[str, Any]) -> None:
        data["status"] = "failed"

    with pytest.raises(SpecError) as caught:
        update_subtasks(tmp_path, "feat", {"01": mark_completed("ok", utc_timestamp()), "02": fail})
    assert caught.value.field == "status"
    assert caught.value.path == folder / "subtask_02.json"
    assert snapshot(folder) == before


def test_a_mutation_may_not_move_a_subtask_to_another_seq(tmp_path: Path) -> None:
    folder = make_feature(tmp_path)

    def renumber(data: dict[str, Any]) -> None:
        data["seq"] = "07"

    before = snapshot(folder)
    with pytest.raises(SpecError) as caught:
        update_subtasks(tmp_path, "feat", {"01": renumber})
    assert caught.value.field == "seq"
    assert snapshot(folder) == before


# --- format-preserving rewrites -----------------------------------------------------

LAYOUTS = [
    pytest.param(2, "\n", id="two-spaces"),
    pytest.param(4, "\n", id="four-spaces"),
    pytest.param("\t", "\n", id="tabs"),
    pytest.param(2, "", id="no-trailing-newline"),
    pytest.param(4, "\n\n", id="two-trailing-newlines"),
]


@pytest.mark.parametrize(("indent", "tail"), LAYOUTS)
def test_an_untouched_file_round_trips_byte_for_byte(
    tmp_path: Path, indent: int | str, tail: str
) -> None:
    folder = make_feature(tmp_path, count=2)
    doc = subtask_doc("feat", "02", notes="Größe — 日本語 ✓", extra={"nested": [1, 2.5, None]})
    write_json(folder / "subtask_02.json", doc, indent, tail)
    before = (folder / "subtask_02.json").read_bytes()
    update_subtasks(tmp_path, "feat", {"01": mark_in_progress("w1", utc_timestamp())})
    update_subtasks(tmp_path, "feat", {"02": lambda data: None})
    assert (folder / "subtask_02.json").read_bytes() == before


@pytest.mark.parametrize(("indent", "tail"), LAYOUTS)
def test_a_rewrite_keeps_the_files_own_layout(tmp_path: Path, indent: int | str, tail: str) -> None:
    folder = make_feature(tmp_path, count=1)
    doc = subtask_doc("feat", "01", notes="naïve café ✓")
    write_json(folder / "subtask_01.json", doc, indent, tail)
    update_subtasks(tmp_path, "feat", {"01": mark_in_progress("w1", "2026-01-01T00:00:00.000Z")})
    expected = dict(doc, status="in_progress", agent_id="w1")
    expected["started_at"] = "2026-01-01T00:00:00.000Z"
    text = (folder / "subtask_01.json").read_bytes().decode("utf-8")
    assert text == json.dumps(expected, indent=indent, ensure_ascii=False) + tail


def test_crlf_files_keep_their_line_endings(tmp_path: Path) -> None:
    folder = make_feature(tmp_path, count=1)
    text = json.dumps(subtask_doc("feat", "01"), indent=2).replace("\n", "\r\n") + "\r\n"
    (folder / "subtask_01.json").write_bytes(text.encode())
    update_subtasks(tmp_path, "feat", {"01": mark_in_progress("w1", "t")})
    raw = (folder / "subtask_01.json").read_bytes()
    assert raw.count(b"\n") == raw.count(b"\r\n")
    assert raw.endswith(b"}\r\n")


def test_unknown_fields_stay_in_place_and_new_keys_are_appended(tmp_path: Path) -> None:
    folder = make_feature(tmp_path, count=1)
    doc = {"custom_first": {"keep": True}, **subtask_doc("feat", "01"), "zz_last": "é"}
    write_json(folder / "subtask_01.json", doc)
    update_subtasks(tmp_path, "feat", {"01": mark_completed("done", "2026-01-01T00:00:00.000Z")})
    data, _ = load_raw(folder / "subtask_01.json")
    assert list(data) == [*doc, "completed_at", "completion_summary"]
    assert data["custom_first"] == {"keep": True}
    assert data["status"] == "completed"
    assert "é" in (folder / "subtask_01.json").read_text(encoding="utf-8")


def test_unchanged_values_are_copied_verbatim_from_the_original_text(tmp_path: Path) -> None:
    folder = copy_fixture(tmp_path)
    path = folder / "subtask_02.json"
    original = path.read_text(encoding="utf-8")
    path.write_text(original.replace('"notes"', '"weird": 1e3,\n  "esc": "caf\\u00e9",\n  "notes"'))
    update_subtasks(tmp_path, "auth-system", {"02": mark_in_progress("w1", "t")})
    text = path.read_text(encoding="utf-8")
    assert '"depends_on": ["01"],' in text
    assert '"reference_files": ["docs/db.md"],' in text
    assert '"weird": 1e3,' in text and '"esc": "caf\\u00e9",' in text
    assert '"notes": "Postgres 16 — keep the migration idempotent",' in text
    assert text.endswith('"agent_id": "w1",\n  "started_at": "t"\n}\n')


def test_absent_optional_fields_stay_absent(tmp_path: Path) -> None:
    folder = make_feature(tmp_path, count=1)
    block = BatchqBlock(result=ResultState.FAILED, error="exit 1", attempts=2, run_id="r1", log="l")
    update_subtasks(tmp_path, "feat", {"01": mark_blocked(block)})
    data, _ = load_raw(folder / "subtask_01.json")
    assert not {"agent_id", "started_at", "completed_at", "completion_summary"} & set(data)
    assert data["status"] == "blocked"
    assert data["batchq"] == {
        "result": "failed",
        "error": "exit 1",
        "attempts": 2,
        "run_id": "r1",
        "log": "l",
    }


def test_mark_pending_clears_the_stale_claim_and_records_the_cancellation(tmp_path: Path) -> None:
    folder = make_feature(tmp_path, count=1)
    update_subtasks(tmp_path, "feat", {"01": mark_in_progress("w1", "t")})
    block = BatchqBlock(result=ResultState.CANCELLED, attempts=1, run_id="r1")
    update_subtasks(tmp_path, "feat", {"01": mark_pending(block)})
    data, _ = load_raw(folder / "subtask_01.json")
    assert (data["status"], data["agent_id"], data["started_at"]) == ("pending", None, None)
    assert data["batchq"]["result"] == "cancelled"


def test_mark_completed_truncates_long_summaries_to_200_characters(tmp_path: Path) -> None:
    make_feature(tmp_path, count=1)
    feature = update_subtasks(tmp_path, "feat", {"01": mark_completed("y" * 500, "t")})
    summary = feature.subtasks[0].completion_summary
    assert summary is not None and len(summary) == 200 and summary.endswith("…")


# --- complete, counts, archive ------------------------------------------------------


def test_complete_marks_the_subtask_and_refreshes_the_counts(tmp_path: Path) -> None:
    folder = copy_fixture(tmp_path)
    feature = complete_subtask(tmp_path, "auth-system", "02", "Configured Postgres")
    sub = feature.by_seq()["02"]
    assert sub.status is SubtaskStatus.COMPLETED
    assert sub.completion_summary == "Configured Postgres"
    assert sub.completed_at is not None and TIMESTAMP.match(sub.completed_at)
    task, _ = load_raw(folder / "task.json")
    assert (task["subtask_count"], task["completed_count"], task["status"]) == (4, 2, "active")
    assert list(task)[-1] == "owner"


def test_completing_the_last_subtask_completes_the_feature(tmp_path: Path) -> None:
    folder = make_feature(tmp_path, count=2)
    complete_subtask(tmp_path, "feat", "01", "one")
    feature = complete_subtask(tmp_path, "feat", "2", "two")
    assert feature.task.status is TaskStatus.COMPLETED
    assert feature.task.completed_at is not None and TIMESTAMP.match(feature.task.completed_at)
    task, _ = load_raw(folder / "task.json")
    assert (task["subtask_count"], task["completed_count"]) == (2, 2)
    feature = update_subtasks(tmp_path, "feat", {"02": mark_pending()})
    assert (feature.task.status, feature.task.completed_at) == (TaskStatus.ACTIVE, None)


def test_a_summary_over_200_characters_is_refused_and_nothing_written(tmp_path: Path) -> None:
    folder = make_feature(tmp_path)
    before = snapshot(folder)
    with pytest.raises(UsageError, match="summary is 201 characters; the limit is 200"):
        complete_subtask(tmp_path, "feat", "01", "s" * 201)
    assert snapshot(folder) == before


def test_an_unknown_seq_is_a_usage_error_naming_the_known_ones(tmp_path: Path) -> None:
    make_feature(tmp_path, count=2)
    with pytest.raises(UsageError, match="no subtask '07'; its subtasks: 01, 02"):
        complete_subtask(tmp_path, "feat", "07", "done")


def test_an_ambiguous_seq_is_refused(tmp_path: Path) -> None:
    folder = make_feature(tmp_path, count=1)
    write_json(folder / "subtask_001.json", subtask_doc("feat", "01"))
    with pytest.raises(UsageError, match="ambiguous"):
        complete_subtask(tmp_path, "feat", "01", "done")


def test_archive_moves_the_feature_out_of_the_active_list(tmp_path: Path) -> None:
    make_feature(tmp_path, "feat")
    make_feature(tmp_path, "other")
    target = archive_feature(tmp_path, "feat")
    assert target == tasks_dir(tmp_path) / "completed" / "feat"
    assert (target / "task.json").is_file() and (target / "subtask_03.json").is_file()
    assert list_features(tmp_path) == ["other"]
    with pytest.raises(UsageError, match="archived"):
        load_feature(tmp_path, "feat")


def test_archive_refuses_to_overwrite_an_earlier_archive(tmp_path: Path) -> None:
    folder = make_feature(tmp_path, "feat")
    (tasks_dir(tmp_path) / "completed" / "feat").mkdir(parents=True)
    with pytest.raises(UsageError, match="already exists"):
        archive_feature(tmp_path, "feat")
    assert (folder / "task.json").is_file()


def test_timestamps_follow_javascripts_iso_format() -> None:
    assert TIMESTAMP.match(utc_timestamp())


# --- real concurrent processes -------------------------------------------------------

# Only batchq.files.taskfiles and what it imports are loaded in the children: registering a
# bare `batchq` package skips batchq/__init__.py, whose public API may pull in Celery,
# so the test measures file locking rather than interpreter start-up. The children wait
# at a gate (a shared flock the test holds exclusively) so they start together without
# burning the CPU the slower ones still need for their imports.
CHILD = """
import fcntl, sys, types
from pathlib import Path
package = types.ModuleType("batchq")
package.__path__ = [sys.argv[1]]
sys.modules["batchq"] = package
from batchq.files.taskfiles import complete_subtask
root, seq, gate = Path(sys.argv[2]), sys.argv[3], sys.argv[4]
Path(sys.argv[5]).touch()
with open(gate) as handle:
    fcntl.flock(handle, fcntl.LOCK_SH)
complete_subtask(root, "feat", seq, "completed by process " + seq)
"""


@pytest.mark.slow
@pytest.mark.parametrize("count", [12, 100])
def test_concurrent_completions_from_real_processes_are_all_recorded(
    tmp_path: Path, count: int
) -> None:
    folder = make_feature(tmp_path, count=count)
    ready = tmp_path / "ready"
    ready.mkdir()
    gate_path = tmp_path / "gate"
    gate_path.touch()
    child = [sys.executable, "-c", CHILD, str(REPO / "batchq"), str(tmp_path)]
    with gate_path.open() as gate:
        fcntl.flock(gate, fcntl.LOCK_EX)
        procs = [
            subprocess.Popen(
                [*child, f"{n:02d}", str(gate_path), str(ready / str(n))],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
            )
            for n in range(1, count + 1)
        ]
        try:
            deadline = time.monotonic() + 60
            while len(os.listdir(ready)) < count and time.monotonic() < deadline:
                if any(p.poll() not in (None, 0) for p in procs):
                    break
                time.sleep(0.02)
            fcntl.flock(gate, fcntl.LOCK_UN)
            errors = [p.communicate(timeout=60)[1].decode() for p in procs]
        finally:
            for proc in procs:
                if proc.poll() is None:
                    proc.kill()
                    proc.wait()
    assert [p.returncode for p in procs] == [0] * count, "\n".join(e for e in errors if e)

    for file in folder.glob("*.json"):
        json.loads(file.read_text(encoding="utf-8"))
    assert not [p for p in folder.iterdir() if p.name.endswith(".tmp")]
    feature = load_feature(tmp_path, "feat")
    assert all(s.status is SubtaskStatus.COMPLETED for s in feature.subtasks)
    assert len(feature.subtasks) == count
    task, _ = load_raw(folder / "task.json")
    assert (task["subtask_count"], task["completed_count"]) == (count, count)
    assert task["status"] == "completed"


def test_an_env_value_of_the_wrong_type_names_the_env_key(tmp_path: Path) -> None:
    root = tmp_path
    (root / ".git").mkdir()
    folder = root / ".tmp" / "tasks" / "feat"
    folder.mkdir(parents=True)
    (folder / "task.json").write_text('{"id": "feat", "name": "Feat"}\n')
    sub = {
        "id": "feat-01",
        "seq": "01",
        "title": "t",
        "acceptance_criteria": ["a"],
        "deliverables": ["a.txt"],
        "execution": {"command": "echo", "env": {"MODE": 3}},
    }
    (folder / "subtask_01.json").write_text(json.dumps(sub) + "\n")
    with pytest.raises(SpecError) as info:
        load_feature(root, "feat")
    assert info.value.field == "execution.env.MODE"
    assert "got 3" in str(info.value) or "string" in str(info.value)


def test_what_a_rewrite_caches_is_what_a_fresh_read_finds(tmp_path: Path) -> None:
    """update_subtasks remembers the files it wrote instead of reading them back; the
    next rewrite must render from that exactly as from a fresh parse."""
    import batchq.files.taskfiles as taskfiles

    folder = make_feature(tmp_path, count=3)
    block = BatchqBlock(result=ResultState.COMPLETED, attempts=1, run_id="r1")
    update_subtasks(tmp_path, "feat", {"01": mark_in_progress("w1", utc_timestamp())})
    update_subtasks(tmp_path, "feat", {"01": mark_completed("done", utc_timestamp(), block)})
    cached = load_feature(tmp_path, "feat")
    raw_cached = load_raw(folder / "subtask_01.json")
    update_subtasks(tmp_path, "feat", {"02": mark_blocked(block)})
    after_cached = snapshot(folder)

    taskfiles._PARSED.clear()
    assert load_feature(tmp_path, "feat").subtasks[0] == cached.subtasks[0]
    assert load_raw(folder / "subtask_01.json") == raw_cached
    update_subtasks(tmp_path, "feat", {"02": mark_blocked(block)})  # no change: no write
    assert snapshot(folder) == after_cached
    assert json.loads((folder / "subtask_01.json").read_text())["batchq"]["run_id"] == "r1"


def _edit_in_place(file: Path, **fields: Any) -> None:
    """What an editor that writes in place does: same inode, new content."""
    data = json.loads(file.read_text())
    data.update(fields)
    with open(file, "r+", encoding="utf-8") as handle:
        handle.truncate(0)
        handle.write(json.dumps(data, indent=2) + "\n")


def test_a_quick_rewrite_sees_files_replaced_by_others(tmp_path: Path) -> None:
    """Every rewrite by batchq or ``batchq complete`` is an ``os.replace`` (a new inode):
    the mirror's quick rewrite counts it without a stat of the unchanged files."""
    folder = make_feature(tmp_path, count=3)
    load_feature(tmp_path, "feat")  # the cache, as the pre-flight leaves it
    complete_subtask(tmp_path, "feat", "02", "by hand")
    feature = update_subtasks(
        tmp_path, "feat", {"01": mark_completed("done", utc_timestamp())}, quick=True
    )
    assert [s.status for s in feature.subtasks][:2] == [SubtaskStatus.COMPLETED] * 2
    assert json.loads((folder / "task.json").read_text())["completed_count"] == 2


def test_a_quick_rewrite_never_writes_over_an_in_place_edit_of_its_file(tmp_path: Path) -> None:
    folder = make_feature(tmp_path, count=2)
    load_feature(tmp_path, "feat")
    target = folder / "subtask_01.json"
    inode = target.stat().st_ino
    _edit_in_place(target, title="Retitled by hand", notes="keep me")
    assert target.stat().st_ino == inode  # the case a quick load cannot see by itself
    update_subtasks(tmp_path, "feat", {"01": mark_completed("done", utc_timestamp())}, quick=True)
    written = json.loads(target.read_text())
    assert (written["title"], written["notes"], written["status"]) == (
        "Retitled by hand",
        "keep me",
        "completed",
    )


def test_an_in_place_edit_of_another_file_shows_at_the_next_full_load(tmp_path: Path) -> None:
    """The staleness a quick rewrite allows, and its bound: the next full load."""
    folder = make_feature(tmp_path, count=2)
    load_feature(tmp_path, "feat")
    _edit_in_place(folder / "subtask_02.json", status="completed")
    quick = update_subtasks(
        tmp_path, "feat", {"01": mark_in_progress("w1", utc_timestamp())}, quick=True
    )
    assert quick.subtasks[1].status is SubtaskStatus.PENDING  # the cached view
    full = update_subtasks(tmp_path, "feat", {"01": mark_completed("done", utc_timestamp())})
    assert [s.status for s in full.subtasks] == [SubtaskStatus.COMPLETED] * 2
    task = json.loads((folder / "task.json").read_text())
    assert (task["completed_count"], task["status"]) == (2, "completed")


def test_a_quick_rewrite_by_an_unpadded_seq_loads_everything(tmp_path: Path) -> None:
    folder = make_feature(tmp_path, count=2)
    load_feature(tmp_path, "feat")
    _edit_in_place(folder / "subtask_01.json", notes="edited")
    update_subtasks(tmp_path, "feat", {"1": mark_completed("done", utc_timestamp())}, quick=True)
    written = json.loads((folder / "subtask_01.json").read_text())
    assert (written["notes"], written["status"]) == ("edited", "completed")


def test_the_parse_cache_keeps_only_the_features_used_last(tmp_path: Path) -> None:
    """A long-lived process that runs many features does not keep every file it read."""
    import batchq.files.taskfiles as taskfiles

    taskfiles._PARSED.clear()
    names = [f"f{i}" for i in range(taskfiles._ParseCache.FOLDERS + 2)]
    for name in names:
        make_feature(tmp_path, name, count=2)
        load_feature(tmp_path, name)
    cached = {folder.name for folder in taskfiles._PARSED.folders}
    assert cached == set(names[-taskfiles._ParseCache.FOLDERS :])
    assert all(len(files) == 2 for files in taskfiles._PARSED.folders.values())
    load_feature(tmp_path, names[0])  # read again, correctly, after eviction
    assert next(reversed(taskfiles._PARSED.folders)).name == names[0]


def _claimed(run_id: str = "r-old") -> dict[str, Any]:
    """A subtask file as an agent left it after ``batchq complete`` during run r2."""
    return {
        "seq": "01",
        "status": "completed",
        "completed_at": "2024-05-01T12:00:00Z",
        "completion_summary": "my own words",
        "batchq": {"result": "failed", "run_id": run_id},
    }


def test_a_completion_the_agent_recorded_itself_keeps_its_words_and_is_noted() -> None:
    from batchq.files.taskfiles import mark_completed
    from batchq.models import BatchqBlock, ResultState

    data, claims = _claimed(), {}
    block = BatchqBlock(result=ResultState.COMPLETED, run_id="r2")
    mark_completed("last output line", "2024-05-01T12:05:00Z", block, claims)(data)
    assert data["completion_summary"] == "my own words"
    assert data["completed_at"] == "2024-05-01T12:00:00Z"
    assert data["batchq"]["run_id"] == "r2"
    assert claims == {"01": "my own words"}


def test_our_own_completion_is_not_mistaken_for_an_agents_claim() -> None:
    from batchq.files.taskfiles import mark_blocked, mark_in_progress
    from batchq.models import BatchqBlock, ResultState

    data, claims = _claimed(run_id="r2"), {}
    data["batchq"]["result"] = "completed"
    mark_blocked(BatchqBlock(result=ResultState.FAILED, run_id="r2"), claims)(data)
    assert claims == {} and data["completion_summary"] == "my own words"
    fresh = _claimed()
    mark_in_progress("w1", "2024-05-01T12:01:00Z", "r2")(fresh)
    assert fresh["status"] == "completed"  # the late progress event does not undo the claim


def test_a_contradicted_claim_leaves_no_stale_completion_fields() -> None:
    from batchq.files.taskfiles import mark_blocked
    from batchq.models import BatchqBlock, ResultState

    data, claims = _claimed(), {}
    mark_blocked(BatchqBlock(result=ResultState.FAILED, run_id="r2"), claims)(data)
    assert data["status"] == "blocked"
    assert data["completed_at"] is None and data["completion_summary"] is None
    assert claims == {"01": "my own words"}


def test_declared_deliverables_read_each_file_without_validating_the_feature(
    make_feature: Any, subtask_data: Any
) -> None:
    """Another feature's claims count even when one of its files is broken; a file that
    is not JSON, or lists no paths, declares nothing; a rewrite is read again; a folder
    without task.json, a hidden one and the archive are no features; the run's own
    feature is not read."""
    from batchq.files.taskfiles import declared_by_features
    from batchq.run.producer import foreign_deliverables

    root = make_feature(
        [subtask_data("01", deliverables=["b.txt", "a.txt"]), subtask_data("02")], name="other"
    )
    folder = root / ".tmp/tasks/other"
    (folder / "subtask_03.json").write_text("{not json", encoding="utf-8")
    (folder / "subtask_04.json").write_text('{"deliverables": "x.txt"}', encoding="utf-8")
    with pytest.raises(SpecError):
        load_feature(root, "other")
    assert declared_by_features(root, "mine") == {"other": ["a.txt", "b.txt", "out/02.txt"]}
    (folder / "subtask_04.json").write_text('{"deliverables": ["new.txt"]}', encoding="utf-8")
    assert "new.txt" in declared_by_features(root, "mine")["other"]
    for name in ("loose", ".hidden", "completed"):
        (root / ".tmp/tasks" / name).mkdir()
        (root / ".tmp/tasks" / name / "subtask_01.json").write_text(
            '{"deliverables": ["z.txt"]}', encoding="utf-8"
        )
    (root / ".tmp/tasks/.hidden/task.json").write_text("{}", encoding="utf-8")
    (root / ".tmp/tasks/completed/task.json").write_text("{}", encoding="utf-8")
    assert list(declared_by_features(root, "mine")) == ["other"]
    assert declared_by_features(root, "other") == {}
    make_feature([subtask_data("01")], name="mine", root=root)
    foreign = foreign_deliverables(load_feature(root, "mine"))
    assert foreign == {"feature other": ["a.txt", "b.txt", "new.txt", "out/02.txt"]}


def test_a_rewrite_lets_each_replaced_model_go_before_the_next_file(tmp_path: Path) -> None:
    """A caller that holds no feature of its own (the mirror) never has the old and new
    models of every rewritten file at once: when the next file's change runs, the
    previous file's old model is gone (nothing refers to it any more)."""
    import gc
    import weakref

    make_feature(tmp_path, count=4)
    old = [weakref.ref(sub) for sub in load_feature(tmp_path, "feat").subtasks]
    gc.collect()
    assert all(ref() is not None for ref in old)  # held by the parse cache only
    alive: list[list[bool]] = []

    def seen(data: dict[str, Any]) -> None:
        alive.append([ref() is not None for ref in old])
        data["status"] = SubtaskStatus.COMPLETED.value

    feature = update_subtasks(tmp_path, "feat", {f"{i:02d}": seen for i in range(1, 5)})
    assert alive == [
        [True, True, True, True],
        [False, True, True, True],
        [False, False, True, True],
        [False, False, False, True],
    ]
    assert all(ref() is None for ref in old)
    assert [s.status for s in feature.subtasks] == [SubtaskStatus.COMPLETED] * 4
    assert load_feature(tmp_path, "feat").subtasks == feature.subtasks


def test_a_rewrite_refused_half_way_leaves_every_file_and_the_next_load_as_before(
    tmp_path: Path,
) -> None:
    """The first files' cached models are dropped before a later file is refused: the
    files are untouched, and the next load (quick or full) reads them again, correctly."""
    folder = make_feature(tmp_path, count=3)
    first = load_feature(tmp_path, "feat")
    before = snapshot(folder)

    def fail(data: dict[str, Any]) -> None:
        data["status"] = "failed"

    done = mark_completed("ok", utc_timestamp())
    with pytest.raises(SpecError):
        update_subtasks(tmp_path, "feat", {"01": done, "02": done, "03": fail})
    assert snapshot(folder) == before
    assert load_feature(tmp_path, "feat").subtasks == first.subtasks
    quick = update_subtasks(tmp_path, "feat", {"03": done}, quick=True)
    assert [s.status for s in quick.subtasks] == [
        SubtaskStatus.PENDING,
        SubtaskStatus.PENDING,
        SubtaskStatus.COMPLETED,
    ]


def test_a_rewrite_whose_write_fails_leaves_old_files_and_a_correct_next_load(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A failure while staging (a full disk) replaces nothing: every file is the old one,
    whole, and the models dropped from the parse cache are read back from disk."""
    import errno

    import batchq.files.jsonfile as jsonfile

    folder = make_feature(tmp_path, count=40)  # past SYNCFS_FROM: the batched path
    first = load_feature(tmp_path, "feat")
    before = snapshot(folder)
    real = jsonfile._stage
    calls = 0

    def full_disk(path: Path, text: str, durable: bool = True) -> tuple[Path, Path]:
        nonlocal calls
        calls += 1
        if calls == 30:
            raise OSError(errno.ENOSPC, "No space left on device", str(path))
        return real(path, text, durable)

    monkeypatch.setattr(jsonfile, "_stage", full_disk)
    done = mark_completed("ok", utc_timestamp())
    with pytest.raises(InfrastructureError):
        update_subtasks(tmp_path, "feat", {f"{i:02d}": done for i in range(1, 41)})
    monkeypatch.undo()
    assert snapshot(folder) == before  # no temp file left either
    assert load_feature(tmp_path, "feat").subtasks == first.subtasks
    again = update_subtasks(tmp_path, "feat", {"01": done}, quick=True)
    assert [s.status for s in again.subtasks].count(SubtaskStatus.COMPLETED) == 1


def test_a_big_rewrite_stages_each_file_before_it_renders_the_next(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The texts of a rewrite are made as they are written: at most ``SYNCFS_FROM``
    (read ahead) wait at once, not one per file (20,000 texts were some 30 MiB)."""
    import batchq.files.jsonfile as jsonfile

    count = jsonfile.SYNCFS_FROM + 20
    make_feature(tmp_path, count=count)
    waiting, most = 0, 0
    real_render, real_stage = jsonfile.JsonDocument.render, jsonfile._stage

    def render(self: Any, *args: Any) -> Any:
        nonlocal waiting, most
        text = real_render(self, *args)
        waiting += text is not None
        most = max(most, waiting)
        return text

    def stage(*args: Any, **kwargs: Any) -> Any:
        nonlocal waiting
        waiting -= 1
        return real_stage(*args, **kwargs)

    monkeypatch.setattr(jsonfile.JsonDocument, "render", render)
    monkeypatch.setattr(jsonfile, "_stage", stage)
    done = mark_completed("ok", utc_timestamp())
    feature = update_subtasks(tmp_path, "feat", {f"{i:02d}": done for i in range(1, count + 1)})
    monkeypatch.undo()
    assert waiting == 0 and most <= jsonfile.SYNCFS_FROM + 1
    assert [s.status for s in feature.subtasks] == [SubtaskStatus.COMPLETED] * count
    assert load_feature(tmp_path, "feat").subtasks == feature.subtasks


def test_the_cache_keeps_no_text_of_a_completed_file_and_a_rewrite_reads_it_again(
    tmp_path: Path,
) -> None:
    """A completed file's text stays on disk; rewritten later (a reset for a rerun), it is
    read again and changed as an edit: what batchq did not change keeps its bytes."""
    import batchq.files.taskfiles as taskfiles

    folder = make_feature(tmp_path, count=2)
    target = folder / "subtask_01.json"
    block = BatchqBlock(result=ResultState.COMPLETED, attempts=1, run_id="r1")
    update_subtasks(tmp_path, "feat", {"01": mark_completed("done", utc_timestamp(), block)})
    cached = taskfiles._PARSED.folder(folder)
    assert cached["subtask_01.json"][2]._text is None  # on disk only
    assert cached["subtask_02.json"][2]._text is not None  # pending: kept
    completed = target.read_text()
    update_subtasks(tmp_path, "feat", {"01": mark_pending()})
    text = target.read_text()
    assert json.loads(text)["status"] == "pending"
    assert text.replace('"status": "pending"', '"status": "completed"') == completed
    assert load_feature(tmp_path, "feat").subtasks[0].status is SubtaskStatus.PENDING


def test_the_cache_knows_a_file_version_by_a_packed_key_and_a_replace_is_a_new_one(
    tmp_path: Path,
) -> None:
    """The key is 32 bytes (not four big ints), its inode is the one a listing gives,
    and a file replaced with the same size and times is still read again."""
    import batchq.files.taskfiles as taskfiles

    folder = make_feature(tmp_path, count=1)
    target = folder / "subtask_01.json"
    load_feature(tmp_path, "feat")
    key = taskfiles._PARSED.folder(folder)["subtask_01.json"][0]
    assert isinstance(key, bytes) and len(key) == 32
    assert taskfiles._inode_of(key) == os.stat(target).st_ino
    before = os.stat(target)
    data = json.loads(target.read_text())
    data["title"] = "retitled, same length"[: len(data["title"])].ljust(len(data["title"]))
    fresh = folder / "fresh.tmp"
    fresh.write_text(json.dumps(data, indent=2) + "\n")
    os.utime(fresh, ns=(before.st_atime_ns, before.st_mtime_ns))
    os.replace(fresh, target)
    assert taskfiles._file_key(os.stat(target)) != key
    assert load_feature(tmp_path, "feat").subtasks[0].title == data["title"]
