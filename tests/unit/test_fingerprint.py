"""Fingerprints: the pure "why does it rerun" comparison, and hashing real files."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from batchq.cli.views import format_changed, format_reruns
from batchq.files.fingerprint import (
    MISSING,
    Recorder,
    changes,
    digest,
    fingerprint,
    hash_file_set,
    inputs,
    outputs,
    stale,
)
from batchq.files.taskfiles import load_feature, update_subtasks
from batchq.models import BatchqBlock, ResultState, SubtaskStatus
from batchq.settings import load_settings

MakeFeature = Callable[..., Path]
SubtaskData = Callable[..., dict[str, Any]]


def recorded(parts: dict[str, str], outs: dict[str, str]) -> BatchqBlock:
    return BatchqBlock(
        result=ResultState.COMPLETED, fingerprint=digest(parts), inputs=parts, outputs=outs
    )


PARTS = {
    "definition": "d1",
    "agent": "a1",
    "context:docs/api.md": "c1",
    "reference:docs/ref.md": "r1",
    "dependency:02:src/a.py": "x1",
}
OUTS = {"src/b.py": "o1"}


def texts(block: BatchqBlock | None, parts: dict[str, str], outs: dict[str, str]) -> list[str]:
    return [str(c) for c in changes(block, parts, outs)]


# --- pure comparison ----------------------------------------------------------------------


def test_nothing_changed_means_no_reason_to_rerun() -> None:
    assert texts(recorded(PARTS, OUTS), dict(PARTS), dict(OUTS)) == []


@pytest.mark.parametrize(
    ("part", "value", "reason"),
    [
        ("definition", "d2", "definition changed"),
        ("agent", "a2", "agent changed"),
        ("context:docs/api.md", "c2", "context file docs/api.md changed"),
        ("context:docs/api.md", MISSING, "context file docs/api.md missing"),
        ("reference:docs/ref.md", "r2", "reference file docs/ref.md changed"),
        ("dependency:02:src/a.py", "x2", "dependency 02's deliverable src/a.py changed"),
    ],
)
def test_each_changed_part_is_named(part: str, value: str, reason: str) -> None:
    assert texts(recorded(PARTS, OUTS), {**PARTS, part: value}, OUTS) == [reason]


def test_added_and_removed_parts_are_named() -> None:
    now = {k: v for k, v in PARTS.items() if k != "reference:docs/ref.md"}
    now["dependency:03:src/c.py"] = "y"
    assert texts(recorded(PARTS, OUTS), now, OUTS) == [
        "reference file docs/ref.md removed",
        "dependency 03's deliverable src/c.py added",
    ]


def test_a_changed_or_missing_deliverable_is_named() -> None:
    block = recorded(PARTS, {"src/b.py": "o1", "src/c.py": "o2"})
    assert texts(block, PARTS, {"src/b.py": "o9", "src/c.py": MISSING}) == [
        "deliverable src/b.py changed since completion",
        "deliverable src/c.py missing",
    ]


def test_dependency_changes_say_which_dependency() -> None:
    found = changes(recorded(PARTS, OUTS), {**PARTS, "dependency:02:src/a.py": "x2"}, OUTS)
    assert [c.dependency for c in found] == ["02"]


@pytest.mark.parametrize(
    "block",
    [None, BatchqBlock(result=ResultState.COMPLETED), BatchqBlock(result=ResultState.FAILED)],
)
def test_a_subtask_without_fingerprint_is_reported_as_such(block: BatchqBlock | None) -> None:
    assert texts(block, PARTS, OUTS) == [
        "no fingerprint recorded (completed before fingerprints or by hand)"
    ]


def test_the_block_keeps_its_established_shape_without_a_fingerprint() -> None:
    assert set(BatchqBlock(result=ResultState.FAILED).model_dump(mode="json")) == {
        "result",
        "error",
        "attempts",
        "run_id",
        "log",
    }
    block = recorded(PARTS, OUTS)
    again = BatchqBlock.model_validate(json.loads(json.dumps(block.model_dump(mode="json"))))
    assert again == block


def test_digest_is_canonical_whatever_the_key_order() -> None:
    assert digest({"a": 1, "b": [1, 2]}) == digest({"b": [1, 2], "a": 1})
    assert digest({"a": 1}) != digest({"a": 2})


def test_rerun_lines_list_every_reason() -> None:
    lines = format_reruns({"02": ["definition changed", "agent changed"]})
    assert lines == ["↻ 02 reruns: definition changed; agent changed"]


# --- files ---------------------------------------------------------------------------------


def test_hash_file_set_hashes_contents_folders_and_marks_what_it_does_not_read(
    tmp_path: Path,
) -> None:
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "a.py").write_text("a")
    (tmp_path / "b.txt").write_text("b")
    (tmp_path / "app.env").write_text("SECRET=1")
    paths = ["b.txt", "src/", "nope.txt", "app.env", "../outside", "/etc/passwd"]
    first = hash_file_set(tmp_path, paths, [".git/", "*.env*"])
    assert first["nope.txt"] == MISSING
    assert first["app.env"].startswith("protected")
    assert first["../outside"].startswith("outside") and first["/etc/passwd"].startswith("outside")
    assert len(first["b.txt"]) == 64 and len(first["src/"]) == 64
    (tmp_path / "src" / "a.py").write_text("changed")
    (tmp_path / "app.env").write_text("SECRET=2")
    second = hash_file_set(tmp_path, paths, [".git/", "*.env*"])
    assert second["src/"] != first["src/"]
    assert second["b.txt"] == first["b.txt"] and second["app.env"] == first["app.env"]


@pytest.fixture
def feature_root(make_feature: MakeFeature, subtask_data: SubtaskData) -> Path:
    first = subtask_data("01", command="true", deliverables=["src/a.py"])
    first["context_files"] = [{"path": "docs/api.md", "lines": "1-2"}]
    second = subtask_data("02", command="true", deliverables=["src/b.py"], depends_on=["01"])
    root = make_feature([first, second])
    (root / "docs").mkdir()
    (root / "docs" / "api.md").write_text("api v1\n")
    (root / "src").mkdir()
    (root / "src" / "a.py").write_text("a = 1\n")
    (root / "src" / "b.py").write_text("b = 1\n")
    return root


def test_inputs_cover_definition_agent_context_and_dependency_deliverables(
    feature_root: Path,
) -> None:
    settings = load_settings(feature_root)
    feature = load_feature(feature_root, "feat")
    by_seq = feature.by_seq()
    assert set(inputs(by_seq["01"], feature, settings)) == {
        "definition",
        "agent",
        "context:docs/api.md",
    }
    assert set(inputs(by_seq["02"], feature, settings)) == {
        "definition",
        "agent",
        "dependency:01:src/a.py",
    }
    before = fingerprint(by_seq["02"], feature, settings)
    (feature_root / "src" / "a.py").write_text("a = 2\n")
    assert fingerprint(by_seq["02"], feature, settings) != before
    assert outputs(by_seq["02"], feature_root) == hash_file_set(feature_root, ["src/b.py"], [])


def test_a_shared_cache_changes_no_part_and_keeps_one_agent_hash_for_the_batch(
    feature_root: Path,
) -> None:
    settings = load_settings(feature_root)
    feature = load_feature(feature_root, "feat")
    by_seq = feature.by_seq()
    cache: dict[str, str] = {}
    shared = [inputs(by_seq[seq], feature, settings, cache, by_seq) for seq in ("01", "02")]
    assert shared == [inputs(by_seq[seq], feature, settings) for seq in ("01", "02")]
    # Both members run the same agent: their blocks keep one string, not a copy each.
    assert shared[0]["agent"] is shared[1]["agent"]
    # The agent's entry cannot be mistaken for a file's: no path holds a NUL.
    assert [key for key in cache if "\0" in key] == ["\0agent shell"]


def test_run_fields_do_not_change_the_definition_but_criteria_and_commands_do(
    feature_root: Path,
) -> None:
    settings = load_settings(feature_root)
    feature = load_feature(feature_root, "feat")
    sub = feature.by_seq()["01"]
    base = inputs(sub, feature, settings)
    ran = sub.model_copy(
        update={"status": SubtaskStatus.COMPLETED, "completion_summary": "x", "agent_id": "w"}
    )
    assert inputs(ran, feature, settings) == base
    edited = sub.model_copy(update={"acceptance_criteria": ["something else"]})
    assert inputs(edited, feature, settings)["definition"] != base["definition"]


def test_a_cli_agents_command_template_is_part_of_its_fingerprint(
    make_feature: MakeFeature, subtask_data: SubtaskData
) -> None:
    root = make_feature([subtask_data("01", agent="Coder")])
    feature = load_feature(root, "feat")
    sub = feature.subtasks[0]
    one = load_settings(root, agents={"Coder": {"command": "coder {prompt_file}"}})
    two = load_settings(root, agents={"Coder": {"command": "coder --fast {prompt_file}"}})
    limited = load_settings(
        root, agents={"Coder": {"command": "coder {prompt_file}", "max_concurrency": 2}}
    )
    assert inputs(sub, feature, one)["agent"] != inputs(sub, feature, two)["agent"]
    assert inputs(sub, feature, one)["agent"] == inputs(sub, feature, limited)["agent"]


def _complete_with_recorder(root: Path, seqs: list[str]) -> None:
    settings = load_settings(root)
    feature = load_feature(root, "feat")
    recorder = Recorder.for_batch(feature, seqs, settings)

    def mark(seq: str) -> Callable[[dict[str, Any]], None]:
        def mutate(data: dict[str, Any]) -> None:
            block = recorder.stamp(seq, BatchqBlock(result=ResultState.COMPLETED))
            data["status"] = "completed"
            data["batchq"] = block.model_dump(mode="json")

        return mutate

    update_subtasks(root, "feat", {seq: mark(seq) for seq in seqs})


def test_stale_finds_what_changed_since_completion_and_only_that(feature_root: Path) -> None:
    settings = load_settings(feature_root)
    _complete_with_recorder(feature_root, ["01"])
    _complete_with_recorder(feature_root, ["02"])
    assert stale(load_feature(feature_root, "feat"), settings) == {}
    (feature_root / "docs" / "api.md").write_text("api v2\n")
    found = stale(load_feature(feature_root, "feat"), settings)
    assert {seq: [str(c) for c in why] for seq, why in found.items()} == {
        "01": ["context file docs/api.md changed"]
    }
    (feature_root / "src" / "a.py").unlink()
    found = stale(load_feature(feature_root, "feat"), settings)
    assert [str(c) for c in found["01"]] == [
        "context file docs/api.md changed",
        "deliverable src/a.py missing",
    ]
    assert [str(c) for c in found["02"]] == ["dependency 01's deliverable src/a.py missing"]
    assert list(stale(load_feature(feature_root, "feat"), settings, ["02"])) == ["02"]


def test_changed_view_says_when_nothing_changed(feature_root: Path) -> None:
    feature = load_feature(feature_root, "feat")
    assert format_changed(feature, {}) == [
        "Nothing changed: every completed subtask of feat is up to date."
    ]
