"""The planner: validation, readiness, the schedule and batch safety (SPEC 2)."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from itertools import combinations
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from batchq.core import planner
from batchq.core.paths import components, overlaps
from batchq.core.planner import ProblemKind, ViolationKind
from batchq.errors import BatchqError, PlanError, UsageError
from batchq.models import (
    BatchqBlock,
    Feature,
    FileRef,
    Plan,
    ResultState,
    Subtask,
    SubtaskStatus,
    TaskFile,
)
from batchq.settings import Settings


def sub(
    seq: str,
    *deps: str,
    status: str = "pending",
    parallel: bool = True,
    deliverables: Sequence[str] | None = None,
    title: str | None = None,
    **extra: Any,
) -> Subtask:
    """A valid subtask; by default parallel and writing its own file."""
    return Subtask(
        id=f"feat-{seq}",
        seq=seq,
        title=title or f"Subtask {seq}",
        status=SubtaskStatus(status),
        depends_on=list(deps),
        parallel=parallel,
        acceptance_criteria=["it works"],
        deliverables=list(deliverables or [f"out/{seq}.txt"]),
        **extra,
    )


def feature(*subtasks: Subtask, **task: Any) -> Feature:
    return Feature(
        name="feat",
        root=Path("/project"),
        path=Path("/project/.tmp/tasks/feat"),
        task=TaskFile(id="feat", name="Feature", **task),
        subtasks=list(subtasks),
    )


def messages(feat: Feature, **kwargs: Any) -> list[str]:
    return [p.message for p in planner.problems(feat, **kwargs)]


def layout(plan: Plan) -> list[list[str]]:
    return [b.seqs for b in plan.batches]


# --- problems / validate ----------------------------------------------------------


def test_a_sound_feature_has_no_problems_and_validates() -> None:
    feat = feature(sub("01"), sub("02", "01"))
    assert planner.problems(feat) == []
    planner.validate(feat)


def test_an_unknown_dependency_names_the_file_the_field_and_the_expectation() -> None:
    (problem,) = planner.problems(feature(sub("01"), sub("03", "07")))
    assert problem.kind is ProblemKind.UNKNOWN_DEPENDENCY
    assert (problem.seq, problem.file, problem.field) == ("03", "subtask_03.json", "depends_on")
    assert problem.message.startswith("subtask_03.json: depends_on: '07'")
    assert "expected" in problem.message
    assert str(problem) == problem.message


def test_a_self_dependency_is_a_problem() -> None:
    (problem,) = planner.problems(feature(sub("01", "01")))
    assert problem.kind is ProblemKind.SELF_DEPENDENCY
    assert problem.file == "subtask_01.json"


def test_a_duplicate_seq_is_reported_on_the_second_subtask() -> None:
    feat = feature(sub("01", title="First"), sub("01", title="Second"))
    (problem,) = planner.problems(feat)
    assert problem.kind is ProblemKind.DUPLICATE_SEQ
    assert problem.field == "seq"
    assert "'First'" in problem.message and "'Second'" in problem.message


def test_a_cycle_is_printed_as_a_path_from_its_lowest_seq() -> None:
    feat = feature(sub("01", "02"), sub("02", "01"), sub("03"))
    (problem,) = planner.problems(feat)
    assert problem.kind is ProblemKind.CYCLE
    assert "cycle 01 -> 02 -> 01" in problem.message
    with pytest.raises(PlanError) as caught:
        planner.validate(feat)
    assert caught.value.cycle == ["01", "02", "01"]


def test_a_cycle_reads_in_the_depends_on_direction() -> None:
    feat = feature(sub("01", "03"), sub("02", "01"), sub("03", "02"))
    (problem,) = planner.problems(feat)
    assert "cycle 01 -> 03 -> 02 -> 01" in problem.message


def test_every_independent_cycle_is_reported() -> None:
    feat = feature(sub("01", "02"), sub("02", "01"), sub("03", "04"), sub("04", "03"))
    cycles = [p.message for p in planner.problems(feat) if p.kind is ProblemKind.CYCLE]
    assert len(cycles) == 2
    assert any("03 -> 04 -> 03" in m for m in cycles)


def test_bad_deliverables_name_their_index() -> None:
    feat = feature(sub("02", deliverables=["ok.py", "/etc/passwd", "../up.py", "config/.env"]))
    found = {p.field: p for p in planner.problems(feat)}
    assert set(found) == {"deliverables[1]", "deliverables[2]", "deliverables[3]"}
    assert found["deliverables[1]"].kind is ProblemKind.INVALID_PATH
    assert "absolute" in found["deliverables[1]"].message
    assert "escapes" in found["deliverables[2]"].message
    assert found["deliverables[3]"].kind is ProblemKind.PROTECTED_PATH
    assert "'*.env*'" in found["deliverables[3]"].message


def test_protected_context_and_reference_files_are_problems_in_either_form() -> None:
    feat = feature(
        sub(
            "01",
            context_files=["docs/a.md", FileRef(path=".git/config", lines="1-5")],
            reference_files=["certs/server.key", "/abs/path.md"],
        )
    )
    found = {p.field: p for p in planner.problems(feat)}
    assert set(found) == {"context_files[1]", "reference_files[0]", "reference_files[1]"}
    assert "never read into a prompt" in found["context_files[1]"].message
    assert found["reference_files[1]"].kind is ProblemKind.INVALID_PATH


def test_task_level_context_files_are_checked_too() -> None:
    (problem,) = planner.problems(feature(sub("01"), context_files=[".env"]))
    assert problem.file == "task.json"
    assert problem.seq is None
    assert problem.message.startswith("task.json: context_files[0]: '.env'")


def test_the_protected_patterns_are_configurable() -> None:
    feat = feature(sub("01", deliverables=["dist/app.js", ".env"]))
    assert messages(feat, protected=["dist/"]) != []
    assert [p.field for p in planner.problems(feat, protected=["dist/"])] == ["deliverables[0]"]


def test_validate_raises_one_plan_error_listing_every_problem() -> None:
    feat = feature(sub("01", "09"), sub("02", "02"), sub("03", deliverables=["/x"]))
    with pytest.raises(PlanError) as caught:
        planner.validate(feat)
    assert len(caught.value.problems) == 3
    assert caught.value.cycle is None
    assert caught.value.exit_code == 2


# --- ready ------------------------------------------------------------------------


def test_ready_means_pending_with_every_dependency_completed() -> None:
    feat = feature(
        sub("01", status="completed"),
        sub("02", "01"),
        sub("03", "02"),
        sub("04", status="in_progress"),
        sub("05", "99"),
        sub("06", status="blocked"),
    )
    assert [s.seq for s in planner.ready(feat)] == ["02"]


def test_ready_orders_seqs_numerically() -> None:
    feat = feature(sub("100"), sub("10"), sub("09"))
    assert [s.seq for s in planner.ready(feat)] == ["09", "10", "100"]


# --- plan -------------------------------------------------------------------------


def test_the_plan_puts_ready_subtasks_first_and_dependants_after() -> None:
    result = planner.plan(feature(sub("01"), sub("02"), sub("03", "01", "02")))
    assert layout(result) == [["01", "02"], ["03"]]
    first, second = result.batches
    assert (first.number, first.after, first.level) == (1, None, 1)
    assert (second.number, second.after, second.level) == (2, 1, 2)
    assert first.reasons == {"01": "ready now", "02": "ready now"}
    assert second.reasons == {"03": "after 01, 02"}


def test_completed_subtasks_are_not_planned_and_satisfy_dependencies() -> None:
    result = planner.plan(feature(sub("01", status="completed"), sub("02", "01")))
    assert layout(result) == [["02"]]
    assert result.completed == ["01"]
    assert result.batches[0].reasons["02"] == "ready now"


def test_blocked_subtasks_and_their_dependants_are_left_out_with_reasons() -> None:
    failed = BatchqBlock(result=ResultState.FAILED, error="deliverable missing: src/a.py")
    result = planner.plan(
        feature(
            sub("01"), sub("02", status="blocked", batchq=failed), sub("03", "02"), sub("04", "03")
        )
    )
    assert layout(result) == [["01"]]
    assert result.blocked == {
        "02": "status blocked (failed: deliverable missing: src/a.py)",
        "03": "waiting on blocked 02",
        "04": "waiting on blocked 02 (via 03)",
    }


def test_in_progress_subtasks_are_planned_like_pending_ones() -> None:
    result = planner.plan(feature(sub("01", status="in_progress"), sub("02", "01")))
    assert layout(result) == [["01"], ["02"]]
    assert "in_progress" in result.batches[0].reasons["01"]


def test_an_overlapping_deliverable_opens_the_next_batch_and_says_why() -> None:
    result = planner.plan(
        feature(
            sub("01", deliverables=["docs/"]),
            sub("02", deliverables=["src/"]),
            sub("03", deliverables=["src/a.py"]),
            sub("04", deliverables=["lib/x.py"]),
        )
    )
    assert layout(result) == [["01", "02"], ["03", "04"]]
    assert result.batches[1].after == 1
    assert result.batches[1].level == 1
    assert result.batches[1].reasons["03"] == "ready now; deliverable src/a.py overlaps 02's src/"
    assert result.batches[1].reasons["04"] == "ready now"


def test_forgetting_the_path_caches_empties_them_and_plans_the_same() -> None:
    feat = feature(
        sub("01", deliverables=["src/"]), sub("02", deliverables=["src/a.py"]), sub("03")
    )
    before = planner.plan(feat)
    assert planner._keys.cache_info().currsize > 0
    planner.forget_paths()
    assert planner._keys.cache_info().currsize == 0
    assert components.cache_info().currsize == 0
    assert planner.plan(feat) == before


def test_max_batch_cuts_a_level_by_seq_and_says_why() -> None:
    feat = feature(*(sub(f"{n:02d}") for n in range(1, 8)), sub("08", "01"))
    result = planner.plan(feat, max_batch=3)
    assert layout(result) == [["01", "02", "03"], ["04", "05", "06"], ["07"], ["08"]]
    assert [b.level for b in result.batches] == [1, 1, 1, 2]
    assert result.batches[1].reasons["04"] == "ready now; the previous batch is full (max_batch 3)"
    assert result.batches[1].reasons["05"] == "ready now"
    assert layout(planner.plan(feat)) == [[f"{n:02d}" for n in range(1, 8)], ["08"]]


def test_max_batch_and_an_overlap_cut_at_the_first_reason() -> None:
    result = planner.plan(
        feature(
            sub("01", deliverables=["src/"]),
            sub("02", deliverables=["src/a.py"]),
            sub("03"),
            sub("04"),
        ),
        max_batch=2,
    )
    assert layout(result) == [["01"], ["02", "03"], ["04"]]
    assert "overlaps 01's src/" in result.batches[1].reasons["02"]
    assert "max_batch 2" in result.batches[2].reasons["04"]


def test_max_batch_below_one_is_a_usage_error() -> None:
    with pytest.raises(UsageError, match="max_batch: 0"):
        planner.plan(feature(sub("01")), max_batch=0)


def coders(count: int, agent: str = "CoderAgent") -> Feature:
    return feature(*(sub(f"{n:02d}", suggested_agent=agent) for n in range(1, count + 1)))


def test_a_batch_of_more_than_eight_coding_agents_is_warned_about_not_refused() -> None:
    result = planner.plan(coders(10), coding_agents={"CoderAgent"})
    assert layout(result) == [[f"{n:02d}" for n in range(1, 11)]]
    (warning,) = result.warnings
    assert warning.startswith("Batch 1 has 10 coding-agent subtasks (01, 02, ")
    assert '"optimal batch size 2–4 tasks, up to 8 if truly independent"' in warning
    assert "max_batch" in warning


def test_eight_coding_agents_or_many_shell_subtasks_get_no_warning() -> None:
    assert planner.plan(coders(8), coding_agents={"CoderAgent"}).warnings == []
    assert planner.plan(coders(12, "shell"), coding_agents={"CoderAgent"}).warnings == []
    assert planner.plan(coders(12), coding_agents={"CoderAgent"}, max_batch=4).warnings == []


def test_plan_for_takes_max_batch_and_the_coding_agents_from_the_settings() -> None:
    settings = Settings(max_batch=4, agents={"CoderAgent": {"command": "run {prompt_file}"}})
    assert settings.coding_agents == {"CoderAgent"}
    assert layout(planner.plan_for(coders(10), settings)) == [
        ["01", "02", "03", "04"],
        ["05", "06", "07", "08"],
        ["09", "10"],
    ]
    unbounded = Settings(agents={"CoderAgent": {"command": "run {prompt_file}"}})
    assert len(planner.plan_for(coders(10), unbounded).warnings) == 1


def test_equal_spellings_overlap_but_name_prefixes_do_not() -> None:
    same = planner.plan(feature(sub("01", deliverables=["./a"]), sub("02", deliverables=["a"])))
    assert layout(same) == [["01"], ["02"]]
    apart = planner.plan(
        feature(sub("01", deliverables=["src/a"]), sub("02", deliverables=["src/ab"]))
    )
    assert layout(apart) == [["01", "02"]]


def test_a_subtask_may_list_overlapping_deliverables_of_its_own() -> None:
    result = planner.plan(feature(sub("01", deliverables=["src/", "src/a.py"]), sub("02")))
    assert layout(result) == [["01", "02"]]


def test_parallel_false_subtasks_run_alone_after_the_levels_parallel_batches() -> None:
    result = planner.plan(
        feature(sub("01", parallel=False), sub("02"), sub("03", parallel=False), sub("04", "02"))
    )
    assert layout(result) == [["02"], ["01"], ["03"], ["04"]]
    assert [b.parallel for b in result.batches] == [True, False, False, True]
    assert result.batches[1].reasons["01"] == "ready now; parallel: false runs alone"
    assert [b.after for b in result.batches] == [None, 1, 2, 3]
    assert result.batches[3].reasons["04"] == "after 02"


def test_plan_refuses_a_feature_with_problems() -> None:
    with pytest.raises(PlanError, match="01 -> 02 -> 01"):
        planner.plan(feature(sub("01", "02"), sub("02", "01")))


def test_an_all_completed_feature_plans_no_batches() -> None:
    result = planner.plan(feature(sub("01", status="completed")))
    assert result.batches == []
    assert result.feature == "feat"


# --- check_batch ---------------------------------------------------------------------


def kinds(violations: Iterable[Any]) -> list[str]:
    return sorted(v.kind for v in violations)


def test_a_safe_batch_has_no_violations() -> None:
    feat = feature(sub("01", status="completed"), sub("02", "01"), sub("03", "01"))
    assert planner.check_batch(feat, ["02", "03"]) == []


def test_a_batch_of_one_need_not_be_marked_parallel() -> None:
    assert planner.check_batch(feature(sub("01", parallel=False)), ["01"]) == []


def test_check_batch_reports_every_violation_at_once() -> None:
    feat = feature(
        sub("01", deliverables=["src/"]),
        sub("02", "01", deliverables=["src/a.py"]),
        sub("03", parallel=False, status="completed"),
        sub("04", "05", deliverables=[".env"]),
        sub("05"),
    )
    found = planner.check_batch(feat, ["01", "02", "03", "04", "99", "01"])
    assert kinds(found) == sorted(
        [
            ViolationKind.UNKNOWN_SEQ,
            ViolationKind.DUPLICATE_MEMBER,
            ViolationKind.DEPENDENCY_IN_BATCH,
            ViolationKind.NOT_PARALLEL,
            ViolationKind.NOT_READY,
            ViolationKind.NOT_READY,
            ViolationKind.OVERLAP,
            ViolationKind.PROTECTED_PATH,
        ]
    )
    text = {v.kind: v.message for v in found}
    assert text["dependency_in_batch"].startswith("02 depends on 01 in the same batch")
    assert text["overlap"].startswith("deliverable src/a.py of 02 overlaps src/ of 01")
    assert "99 is not a subtask" in text["unknown_seq"]
    waits = [v.message for v in found if v.kind == "not_ready"]
    assert "03 is completed; expected pending" in waits
    assert "04 waits on 05 (pending); expected every dependency completed" in waits


def test_a_dependency_on_an_unknown_seq_makes_a_member_not_ready() -> None:
    (found,) = planner.check_batch(feature(sub("01", "42")), ["01"])
    assert found.kind == "not_ready"
    assert "42 (unknown)" in found.message


def test_every_planned_first_batch_passes_the_batch_check() -> None:
    feat = feature(
        sub("01", deliverables=["src/"]), sub("02", deliverables=["src/a.py"]), sub("03")
    )
    first = planner.plan(feat).batches[0]
    assert planner.check_batch(feat, first.seqs) == []


# --- read-only views ---------------------------------------------------------------


def appendix_feature() -> Feature:
    return feature(
        sub("01", status="completed", title="Setup project structure"),
        sub("02", title="Configure database"),
        sub("03", status="in_progress", title="Install dependencies"),
        sub("04", "01", "02", "03", title="Implement auth service"),
    )


def test_the_dependency_tree_lists_each_dependency_with_its_status() -> None:
    tree = planner.dependency_tree(appendix_feature(), "04")
    assert (tree.seq, tree.title, tree.status) == ("04", "Implement auth service", "pending")
    assert [(c.seq, c.status) for c in tree.children] == [
        ("01", SubtaskStatus.COMPLETED),
        ("02", SubtaskStatus.PENDING),
        ("03", SubtaskStatus.IN_PROGRESS),
    ]


def test_the_dependency_tree_marks_cycles_missing_and_repeated_nodes() -> None:
    feat = feature(sub("01", "02", "09"), sub("02", "03", "04"), sub("03", "01", "04"), sub("04"))
    tree = planner.dependency_tree(feat, "01")
    two, missing = tree.children
    assert missing.seq == "09" and missing.missing and missing.title is None
    three, four = two.children
    assert [c.seq for c in three.children] == ["01", "04"]
    assert three.children[0].cycle and three.children[0].children == []
    assert not three.children[1].repeated and four.repeated  # expanded where first printed


def test_the_dependency_tree_survives_a_long_chain() -> None:
    n = 3000
    chain = [sub(f"{i:04d}", *([f"{i - 1:04d}"] if i > 1 else [])) for i in range(1, n + 1)]
    node = planner.dependency_tree(feature(*chain), f"{n:04d}")
    depth = 0
    while node.children:
        node, depth = node.children[0], depth + 1
    assert depth == n - 1


def test_the_dependency_tree_of_an_unknown_seq_is_a_usage_error() -> None:
    with pytest.raises(UsageError, match="no subtask '77'"):
        planner.dependency_tree(appendix_feature(), "77")


def test_blocked_view_lists_pending_subtasks_and_what_they_wait_on() -> None:
    ((waiting, on),) = planner.blocked_view(appendix_feature())
    assert (waiting.seq, on) == ("04", ["02", "03"])


def test_mermaid_draws_batches_states_and_dependency_edges() -> None:
    feat = feature(
        sub("01", status="completed"),
        sub("02", "01", title='Say "hi"'),
        sub("03", "02"),
        sub("04", status="blocked"),
    )
    text = planner.mermaid(planner.plan(feat), feat)
    assert text.startswith("graph TD\n")
    assert 'subgraph batch1["Batch 1 (ready now)"]' in text
    assert 'subgraph batch2["Batch 2 (after batch 1)"]' in text
    assert 's02["02 - Say #quot;hi#quot;"]' in text
    assert "s01 --> s02" in text and "s02 --> s03" in text
    assert ":::completed" in text and ":::blocked" in text


# --- properties -------------------------------------------------------------------------

ALPHABET = [
    "src/",
    "src/a.py",
    "./src/a.py",
    "src//b.py",
    "src/ab.py",
    "lib/",
    "lib/x.py",
    "a",
    "./a",
    "docs/readme.md",
]
STATUSES = ["pending", "pending", "in_progress", "completed", "blocked"]


@st.composite
def dag_features(draw: st.DrawFn) -> Feature:
    """Random valid features: deps only on earlier subtasks, overlapping deliverables."""
    n = draw(st.integers(1, 12))
    seqs = [f"{i:02d}" for i in range(1, n + 1)]
    subtasks = []
    for i, seq in enumerate(seqs):
        deps = draw(st.lists(st.sampled_from(seqs[:i]), unique=True, max_size=3)) if i else []
        subtasks.append(
            sub(
                seq,
                *deps,
                status=draw(st.sampled_from(STATUSES)),
                parallel=draw(st.booleans()),
                deliverables=draw(st.lists(st.sampled_from(ALPHABET), min_size=1, max_size=3)),
            )
        )
    return feature(*draw(st.permutations(subtasks)))


def left_out(feat: Feature) -> set[str]:
    """Oracle: blocked subtasks and everything depending on them, transitively."""
    out = {s.seq for s in feat.subtasks if s.status is SubtaskStatus.BLOCKED}
    changed = True
    while changed:
        changed = False
        for s in feat.subtasks:
            waits = s.status is not SubtaskStatus.COMPLETED and s.seq not in out
            if waits and any(d in out for d in s.depends_on):
                out.add(s.seq)
                changed = True
    return out


@given(dag_features())
def test_every_plan_respects_dependencies(feat: Feature) -> None:
    result = planner.plan(feat)
    by_seq = feat.by_seq()
    batch_of = {seq: b.number for b in result.batches for seq in b.seqs}
    for seq, number in batch_of.items():
        for dep in by_seq[seq].depends_on:
            assert by_seq[dep].status is SubtaskStatus.COMPLETED or batch_of[dep] < number


@given(dag_features())
def test_no_batch_holds_overlapping_deliverables_or_a_lone_runner_with_company(
    feat: Feature,
) -> None:
    by_seq = feat.by_seq()
    for batch in planner.plan(feat).batches:
        if any(not by_seq[s].parallel for s in batch.seqs):
            assert len(batch.seqs) == 1
            assert not batch.parallel
        for a, b in combinations(batch.seqs, 2):
            for pa in by_seq[a].deliverables:
                assert not any(overlaps(pa, pb) for pb in by_seq[b].deliverables)


@given(dag_features(), st.integers(min_value=1, max_value=4))
def test_max_batch_bounds_every_batch_and_plans_the_same_subtasks(
    feat: Feature, limit: int
) -> None:
    bounded, free = planner.plan(feat, max_batch=limit), planner.plan(feat)
    assert all(len(b.seqs) <= limit for b in bounded.batches)
    assert sorted(s for b in bounded.batches for s in b.seqs) == sorted(
        s for b in free.batches for s in b.seqs
    )
    levels = {s: b.level for b in free.batches for s in b.seqs}
    assert all(levels[s] == b.level for b in bounded.batches for s in b.seqs)
    for batch in bounded.batches:
        assert batch.seqs == sorted(batch.seqs, key=int)


@given(dag_features())
def test_every_pending_subtask_not_blocked_is_planned_exactly_once(feat: Feature) -> None:
    result = planner.plan(feat)
    planned = [seq for b in result.batches for seq in b.seqs]
    excluded = left_out(feat)
    expected = {
        s.seq
        for s in feat.subtasks
        if s.status in (SubtaskStatus.PENDING, SubtaskStatus.IN_PROGRESS) and s.seq not in excluded
    }
    assert sorted(planned) == sorted(expected)
    assert set(result.blocked) == excluded
    assert [b.number for b in result.batches] == list(range(1, len(result.batches) + 1))
    assert all(set(b.reasons) == set(b.seqs) for b in result.batches)


@given(dag_features())
def test_ready_subtasks_sit_in_the_first_level_and_its_batches_pass_the_check(
    feat: Feature,
) -> None:
    result = planner.plan(feat)
    first_level = {seq for b in result.batches if b.level == 1 for seq in b.seqs}
    assert {s.seq for s in planner.ready(feat)} <= first_level
    by_seq = feat.by_seq()
    for batch in result.batches:
        found = planner.check_batch(feat, batch.seqs)
        if batch.level == 1 and all(by_seq[s].status is SubtaskStatus.PENDING for s in batch.seqs):
            assert found == []
        assert {v.kind for v in found} <= {ViolationKind.NOT_READY}


FUZZ_SEQS = ["01", "02", "03", "04", "10", "001"]
FUZZ_PATHS = [*ALPHABET, "/abs", "../x", "a/../../b", ".git/config", ".env", "", ".", "C:\\x"]


@st.composite
def arbitrary_features(draw: st.DrawFn) -> Feature:
    """Anything the format allows: duplicates, cycles, self and unknown deps, bad paths."""
    subtasks = []
    for seq in draw(st.lists(st.sampled_from(FUZZ_SEQS), min_size=1, max_size=8)):
        entries = st.lists(
            st.one_of(
                st.sampled_from(FUZZ_PATHS),
                st.sampled_from(FUZZ_PATHS).map(lambda p: FileRef(path=p)),
            ),
            max_size=2,
        )
        subtasks.append(
            sub(
                seq,
                *draw(st.lists(st.sampled_from([*FUZZ_SEQS, "99"]), max_size=4)),
                status=draw(st.sampled_from(STATUSES)),
                parallel=draw(st.booleans()),
                deliverables=draw(st.lists(st.sampled_from(FUZZ_PATHS), min_size=1, max_size=3)),
                context_files=draw(entries),
                reference_files=draw(entries),
            )
        )
    return feature(*subtasks)


def only_batchq_errors(call: Any, *args: Any) -> Any:
    try:
        return call(*args)
    except BatchqError:
        return None


@given(arbitrary_features(), st.lists(st.sampled_from([*FUZZ_SEQS, "99"]), max_size=5))
def test_planner_functions_raise_nothing_but_batchq_errors(feat: Feature, batch: list[str]) -> None:
    found = planner.problems(feat)
    result = only_batchq_errors(planner.plan, feat)
    assert (result is None) == bool(found)
    if result is not None:
        planner.mermaid(result, feat)
    only_batchq_errors(planner.validate, feat)
    planner.ready(feat)
    planner.blocked_view(feat)
    planner.check_batch(feat, batch)
    for seq in [*FUZZ_SEQS, "99"]:
        only_batchq_errors(planner.dependency_tree, feat, seq)


def test_a_planned_batch_names_what_it_depends_on_outside_itself() -> None:
    feat = feature(sub("01"), sub("02"), sub("03", "01"), sub("04", "02", "03"))
    batches = planner.plan(feat).batches
    assert [(b.seqs, b.depends_on) for b in batches] == [
        (["01", "02"], []),
        (["03"], ["01"]),
        (["04"], ["02", "03"]),
    ]


def test_the_next_batch_after_an_explicit_batch_is_the_features_real_next_one() -> None:
    feat = feature(sub("01"), sub("02"), sub("03"), sub("04", "01", "02", "03"), sub("05", "04"))
    following = planner.next_after(feat, ["01", "02", "03"])
    assert following is not None
    assert (following.number, following.seqs, following.depends_on) == (
        2,
        ["04"],
        ["01", "02", "03"],
    )


def test_nothing_follows_an_explicit_batch_that_finishes_the_feature() -> None:
    feat = feature(sub("01", status="completed"), sub("02", "01"))
    assert planner.next_after(feat, ["02"]) is None
