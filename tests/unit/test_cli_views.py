"""The pure formatters of the established task-file output (SPEC appendix)."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from batchq.cli import views
from batchq.core import planner
from batchq.files.taskfiles import load_feature
from batchq.models import Feature

MakeFeature = Callable[..., Path]
SubtaskData = Callable[..., dict[str, Any]]


def load(root: Path, name: str = "feat") -> Feature:
    return load_feature(root, name)


@pytest.fixture
def appendix(make_feature: MakeFeature, subtask_data: SubtaskData) -> Feature:
    """The feature behind every block of the SPEC appendix."""
    root = make_feature(
        [
            subtask_data("01", title="Setup project structure", status="completed"),
            subtask_data("02", title="Configure database"),
            subtask_data("03", title="Install dependencies", status="in_progress"),
            subtask_data(
                "04",
                title="Implement auth service",
                depends_on=["01", "02", "03"],
                parallel=False,
            ),
        ],
        name="auth-system",
    )
    task = root / ".tmp/tasks/auth-system/task.json"
    data = json.loads(task.read_text(encoding="utf-8"))
    data["name"] = "Authentication System Implementation"
    task.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")
    return load(root, "auth-system")


@pytest.mark.parametrize(
    ("done", "total", "percent"),
    [
        (0, 0, 0),
        (1, 8, 13),
        (3, 8, 38),
        (5, 8, 63),
        (1, 3, 33),
        (2, 3, 67),
        (1, 4, 25),
        (4, 4, 100),
    ],
)
def test_progress_rounds_half_up_like_javascript_math_round(
    done: int, total: int, percent: int
) -> None:
    assert views.progress_percent(done, total) == percent


def test_status_keeps_the_established_header_then_one_line_per_subtask(
    appendix: Feature,
) -> None:
    assert views.format_status(appendix) == [
        "[auth-system] Authentication System Implementation",
        "  Status: active | Progress: 25% (1/4)",
        "  Pending: 2 | In Progress: 1 | Completed: 1 | Blocked: 0",
        "  ✓ 01 - Setup project structure [completed]",
        "  ○ 02 - Configure database [pending]",
        "  ~ 03 - Install dependencies [in_progress]",
        "  ○ 04 - Implement auth service [pending]",
    ]


def test_status_marks_a_blocked_subtask_with_a_cross_and_its_reason(
    make_feature: MakeFeature, subtask_data: SubtaskData
) -> None:
    failed = subtask_data("02", status="blocked")
    failed["batchq"] = {"result": "failed", "error": "deliverable missing: out/02.txt\nmore"}
    feature = load(make_feature([subtask_data("01", status="blocked"), failed]))
    lines = views.format_status(feature)
    assert lines[2] == "  Pending: 0 | In Progress: 0 | Completed: 0 | Blocked: 2"
    assert lines[3] == "  ✗ 01 - Subtask 01 [blocked]"
    assert lines[4] == "  ✗ 02 - Subtask 02 [blocked] (failed: deliverable missing: out/02.txt)"


def test_status_names_problems_after_the_established_lines(
    make_feature: MakeFeature, subtask_data: SubtaskData
) -> None:
    feature = load(make_feature([subtask_data("01", depends_on=["09"])]))
    problems = planner.problems(feature)
    lines = views.format_status(feature, problems)
    assert lines[:4] == [
        "[feat] Feature feat",
        "  Status: active | Progress: 0% (0/1)",
        "  Pending: 1 | In Progress: 0 | Completed: 0 | Blocked: 0",
        "  ○ 01 - Subtask 01 [pending]",
    ]
    assert lines[4].startswith("  ⚠ subtask_01.json: depends_on: '09'")


def test_next_lists_ready_subtasks_marked_parallel_or_sequential(
    appendix: Feature, make_feature: MakeFeature, subtask_data: SubtaskData
) -> None:
    assert views.format_next([(appendix, [])]) == [
        "=== Ready Tasks (deps satisfied) ===",
        "",
        "[auth-system]",
        "  02 - Configure database  [parallel]",
        "",
    ]
    solo = make_feature([subtask_data("01", title="Alone", parallel=False)], name="solo")
    other = load(solo, "solo")
    assert views.format_next([(other, [])])[2:4] == ["[solo]", "  01 - Alone  [sequential]"]


def test_next_skips_a_feature_with_nothing_ready(appendix: Feature) -> None:
    for sub in appendix.subtasks:
        sub.status = sub.status.COMPLETED
    assert views.format_next([(appendix, [])]) == ["=== Ready Tasks (deps satisfied) ===", ""]


def test_parallel_keeps_the_established_lines_then_adds_projected_batches(
    appendix: Feature,
) -> None:
    plan = planner.plan(appendix)
    assert views.format_parallel([(appendix, [], plan)]) == [
        "=== Parallelizable Tasks Ready Now ===",
        "",
        "[auth-system] - 1 parallel tasks:",
        "  02 - Configure database",
        "  Projected batches:",
        "    Batch 1 (Ready now): 02, 03",
        "    Batch 2 (After Batch 1): 04",
        "",
    ]


def test_parallel_names_the_feature_before_its_problems_when_nothing_is_ready(
    make_feature: MakeFeature, subtask_data: SubtaskData
) -> None:
    feature = load(make_feature([subtask_data("01", depends_on=["01"])]))
    lines = views.format_parallel([(feature, planner.problems(feature), None)])
    assert lines[2] == "[feat]"
    assert lines[3].startswith("  ⚠ subtask_01.json: depends_on: '01' is the subtask itself")


def test_deps_prints_the_appendix_tree_byte_for_byte(appendix: Feature) -> None:
    assert views.format_deps(appendix, "04") == [
        "=== Dependency Tree: auth-system/04 ===",
        "",
        "04 - Implement auth service [pending]",
        "  ├── ✓ 01 - Setup project structure [completed]",
        "  ├── ○ 02 - Configure database [pending]",
        "  └── ~ 03 - Install dependencies [in_progress]",
    ]


def test_deps_recurses_with_the_established_indentation(
    make_feature: MakeFeature, subtask_data: SubtaskData
) -> None:
    feature = load(
        make_feature(
            [
                subtask_data("01", title="Setup database", status="completed"),
                subtask_data("02", title="Create API", depends_on=["01"]),
                subtask_data("03", title="Seed", depends_on=["02"]),
                subtask_data("04", title="Integration tests", depends_on=["03", "01"]),
            ]
        )
    )
    assert views.format_deps(feature, "04")[2:] == [
        "04 - Integration tests [pending]",
        "  ├── ○ 03 - Seed [pending]",
        "  │   └── ○ 02 - Create API [pending]",
        "  │       └── ✓ 01 - Setup database [completed]",
        "  └── ✓ 01 - Setup database [completed]",
    ]


def test_deps_marks_only_elided_subtrees_as_seen_above(
    make_feature: MakeFeature, subtask_data: SubtaskData
) -> None:
    feature = load(
        make_feature(
            [
                subtask_data("01"),
                subtask_data("02", depends_on=["01"]),
                subtask_data("03", depends_on=["02"]),
                subtask_data("04", depends_on=["03", "02"]),
            ]
        )
    )
    assert views.format_deps(feature, "04")[3:] == [
        "  ├── ○ 03 - Subtask 03 [pending]",
        "  │   └── ○ 02 - Subtask 02 [pending]",
        "  │       └── ○ 01 - Subtask 01 [pending]",
        "  └── ○ 02 - Subtask 02 [pending] (see above)",
    ]


def test_deps_without_dependencies_says_so(appendix: Feature) -> None:
    assert views.format_deps(appendix, "01")[2:] == [
        "01 - Setup project structure [completed]",
        "  └── (no dependencies)",
    ]


def test_deps_marks_a_cycle_and_an_unknown_dependency_and_stops(
    make_feature: MakeFeature, subtask_data: SubtaskData
) -> None:
    feature = load(
        make_feature(
            [subtask_data("01", depends_on=["02"]), subtask_data("02", depends_on=["01", "09"])]
        )
    )
    problems = planner.problems(feature)
    lines = views.format_deps(feature, "01", problems)
    assert lines[2:5] == [
        "01 - Subtask 01 [pending]",
        "  └── ○ 02 - Subtask 02 [pending]",
        "      ├── ○ 01 - Subtask 01 [pending] (cycle)",
    ]
    assert lines[5] == "      └── ? 09 - NOT FOUND"
    assert any("cycle 01 -> 02 -> 01" in line for line in lines[6:])


def test_deps_of_a_chain_3000_deep_does_not_recurse(
    make_feature: MakeFeature, subtask_data: SubtaskData
) -> None:
    depth = 3000
    subs = [
        subtask_data(f"{n:04d}", depends_on=[f"{n - 1:04d}"] if n > 1 else [])
        for n in range(1, depth + 1)
    ]
    feature = load(make_feature(subs))
    limit = sys.getrecursionlimit()
    sys.setrecursionlimit(200)  # any recursion per level would fail long before 3000
    try:
        lines = views.format_deps(feature, f"{depth:04d}")
        rows = views.dep_rows(planner.dependency_tree(feature, f"{depth:04d}"))
    finally:
        sys.setrecursionlimit(limit)
    assert len(lines) == 3 + depth - 1
    assert lines[3] == "  └── ○ 2999 - Subtask 2999 [pending]"
    assert lines[-1] == " " * (2 + 4 * (depth - 2)) + "└── ○ 0001 - Subtask 0001 [pending]"
    assert [r.depth for r in rows] == list(range(1, depth))
    assert rows[-1].parent == "0002"


def test_blocked_lists_waiting_and_blocked_subtasks_in_seq_order(
    appendix: Feature, make_feature: MakeFeature, subtask_data: SubtaskData
) -> None:
    assert views.format_blocked([(appendix, [])]) == [
        "=== Blocked Tasks ===",
        "",
        "[auth-system]",
        "  04 - Implement auth service (waiting: 02, 03)",
        "",
    ]
    failed = subtask_data("03", status="blocked")
    failed["batchq"] = {"result": "timed_out", "error": "ran past 5s"}
    feature = load(
        make_feature(
            [subtask_data("01", status="blocked"), subtask_data("02", depends_on=["01"]), failed],
            name="other",
        ),
        "other",
    )
    assert views.format_blocked([(feature, [])])[2:] == [
        "[other]",
        "  01 - Subtask 01 (explicitly blocked)",
        "  02 - Subtask 02 (waiting: 01)",
        "  03 - Subtask 03 (timed_out: ran past 5s)",
        "",
    ]


def test_complete_prints_the_established_three_lines(appendix: Feature) -> None:
    appendix.subtasks[1].status = appendix.subtasks[1].status.COMPLETED
    assert views.format_complete(appendix, "02", "Configured Postgres") == [
        "✓ Marked auth-system/02 as completed",
        "  Summary: Configured Postgres",
        "  Progress: 2/4",
    ]


def test_validate_prints_a_pass_or_one_error_line_per_problem() -> None:
    assert views.format_validate([("good", []), ("bad", ["a: b", "c: d"])]) == [
        "=== Validation Results ===",
        "",
        "[good]",
        "  ✓ All checks passed",
        "",
        "[bad]",
        "  ✗ ERROR: a: b",
        "  ✗ ERROR: c: d",
        "",
    ]
