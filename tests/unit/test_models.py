"""The models' shared ``model_fields_set``: one set per set of names given, never a
change seen by another instance."""

from __future__ import annotations

import copy
import json
import pickle

import pytest

from batchq.models import BatchReport, BatchStatus, Subtask, SubtaskResult, json_bytes

RESULT = (
    '{"feature": "f", "run_id": "r1", "batch": 1, "seq": "01", "title": "one", '
    '"result": "completed", "deliverables": [{"path": "out/01.txt", "verified": true}]}'
)
SUBTASK = {
    "id": "f-01",
    "seq": "01",
    "title": "one",
    "acceptance_criteria": ["runs"],
    "deliverables": ["out/01.txt"],
    "execution": {"callable": "bench.tasks:noop"},
}


def test_instances_validated_from_the_same_names_share_one_set_that_says_what_was_given() -> None:
    a = SubtaskResult.model_validate_json(RESULT)
    b = SubtaskResult.model_validate_json(RESULT)
    assert a.model_fields_set is b.model_fields_set
    assert a.model_fields_set == {
        "feature", "run_id", "batch", "seq", "title", "result", "deliverables"
    }  # fmt: skip
    assert a.deliverables[0].model_fields_set is b.deliverables[0].model_fields_set
    assert a.model_dump(exclude_unset=True) == {
        "feature": "f",
        "run_id": "r1",
        "batch": 1,
        "seq": "01",
        "title": "one",
        "result": "completed",
        "deliverables": [{"path": "out/01.txt", "verified": True}],
    }


def test_a_seq_is_one_string_object_whatever_decoded_it() -> None:
    text = "".join(["01", "23"])  # made here, so no constant shares it
    result = SubtaskResult.model_validate_json(RESULT.replace('"01"', f'"{text}"'))
    subtask = Subtask.model_validate(json.loads(json.dumps({**SUBTASK, "seq": text})))
    assert result.seq == subtask.seq == "0123"
    assert result.seq is subtask.seq


def test_a_copy_with_an_update_changes_its_own_set_only() -> None:
    a = SubtaskResult.model_validate_json(RESULT)
    b = SubtaskResult.model_validate_json(RESULT)
    c = a.model_copy(update={"summary": "done"})
    assert "summary" in c.model_fields_set
    assert "summary" not in a.model_fields_set
    assert "summary" not in b.model_fields_set
    assert type(copy.copy(a).model_fields_set) is set
    assert "summary" not in copy.deepcopy(a).model_fields_set


def test_an_assignment_gives_the_instance_a_set_of_its_own_first() -> None:
    a = Subtask.model_validate(SUBTASK)
    b = Subtask.model_validate(SUBTASK)
    assert a.model_fields_set is b.model_fields_set
    a.status = a.status.COMPLETED
    assert "status" in a.model_fields_set
    assert "status" not in b.model_fields_set
    assert "status" not in Subtask.model_validate(SUBTASK).model_fields_set
    assert b.model_dump(exclude_unset=True) == Subtask.model_validate(SUBTASK).model_dump(
        exclude_unset=True
    )


def test_instances_from_different_names_keep_different_sets() -> None:
    a = Subtask.model_validate(SUBTASK)
    b = Subtask.model_validate({**SUBTASK, "status": "completed"})
    assert a.model_fields_set != b.model_fields_set
    assert b.model_fields_set == set(SUBTASK) | {"status"}


def test_a_pickled_model_comes_back_with_the_same_names_in_a_plain_set() -> None:
    report = BatchReport.model_validate_json(
        '{"feature": "f", "run_id": "r1", "batch": 1, "status": "completed", '
        f'"results": [{RESULT}], "total": 1, "completed": 1, "failed": 0, '
        '"success_rate": 100.0}'
    )
    again = pickle.loads(pickle.dumps(report))
    assert again == report
    assert again.model_fields_set == report.model_fields_set
    assert type(again.results[0].model_fields_set) is set


def _report(members: int) -> BatchReport:
    """A report whose strings hold what a naive split would trip on: quotes, the
    ``"results": []`` key itself, newlines (escaped in JSON) and non-ASCII text."""
    tricky = 'é "results": [], \n "results":[]'
    results = [
        SubtaskResult.model_validate_json(RESULT).model_copy(
            update={"seq": f"{i:02d}", "title": f"{tricky} {i}", "changed_paths": ["a", "b"]}
        )
        for i in range(members)
    ]
    return BatchReport(
        feature=tricky,
        run_id="r1",
        batch=1,
        status=BatchStatus.COMPLETED,
        results=results,
        total=members,
        completed=members,
        failed=0,
        success_rate=1.0,
        discrepancies=[tricky],
    )


@pytest.mark.parametrize("members", [0, 1, 3])
@pytest.mark.parametrize("indent", [None, 2, 4])
def test_a_report_in_parts_is_byte_for_byte_its_whole_json(
    members: int, indent: int | None
) -> None:
    report = _report(members)
    whole = report.model_dump_json(indent=indent).encode()
    parts = list(report.json_parts(indent))
    assert b"".join(parts) == whole
    assert json_bytes(report, indent) == whole
    assert len(parts) == (1 if members == 0 else members + 2)  # one member's text at a time
    assert BatchReport.model_validate_json(b"".join(parts)) == report


@pytest.mark.parametrize("members", [0, 1, 3])
@pytest.mark.parametrize("indent", [None, 2])
def test_a_report_read_result_by_result_is_the_report_validated_whole(
    members: int, indent: int | None
) -> None:
    report = _report(members)
    raw = report.model_dump_json(indent=indent)  # indented: not split, validated whole
    read = BatchReport.from_json(raw)
    assert read == BatchReport.model_validate_json(raw) == report
    assert read.model_dump_json(indent=indent) == raw


def test_a_report_that_does_not_validate_is_refused_as_validated_whole() -> None:
    import pydantic

    raw = _report(3).model_dump_json()
    for broken in (
        raw.replace('"seq":"01"', '"seq":1', 1),  # a member
        raw.replace('"batch":1,"status"', '"batch":"x","status"', 1),  # the header
        raw[:-30],  # cut short
    ):
        with pytest.raises(pydantic.ValidationError) as whole:
            BatchReport.model_validate_json(broken)
        with pytest.raises(pydantic.ValidationError) as parts:
            BatchReport.from_json(broken)
        assert parts.value.errors() == whole.value.errors()


@pytest.mark.parametrize("size", [1, 7, 64, 10_000])
def test_a_report_in_text_parts_of_any_size_reads_as_the_whole(size: int) -> None:
    """Parts may cut anywhere: in a key, a string, an escape, a number, between two
    members; what is read is the report. Cut short, or not of that shape, it is None
    (the caller validates the whole text then)."""
    report = _report(3)
    raw = report.model_dump_json()
    parts = [raw[i : i + size] for i in range(0, len(raw), size)]
    assert BatchReport.from_json_parts(parts) == report
    assert BatchReport.from_json_parts(parts[:-1] if len(parts) > 1 else [raw[:-1]]) is None
    assert BatchReport.from_json_parts([_report(0).model_dump_json()]) is None
    assert BatchReport.from_json_parts([report.model_dump_json(indent=2)]) is None


def test_empty_list_fields_share_one_list_that_refuses_changes_in_place() -> None:
    """Four in each result, three in each subtask model: a big batch held some 140,000
    new ``[]``; now one, which no instance can change under another."""
    a = SubtaskResult.model_validate_json(RESULT.replace("}]}", '}], "observed_writes": []}'))
    b = SubtaskResult.model_validate_json(RESULT)
    assert a.observed_writes is b.observed_writes is b.merged_paths is b.changed_paths
    assert a.observed_writes == [] and not a.observed_writes
    with pytest.raises(TypeError, match="shared"):
        a.observed_writes.append("x")
    with pytest.raises(TypeError, match="shared"):
        a.undeclared_writes += ["x"]
    assert b.observed_writes == []
    c = a.model_copy(update={"undeclared_writes": ["x"]})
    assert c.undeclared_writes == ["x"] and a.undeclared_writes == []
    for copied in (copy.copy(a.changed_paths), copy.deepcopy(a).changed_paths):
        assert type(copied) is list
        copied.append("mine")  # a copy is the copier's own
    assert type(pickle.loads(pickle.dumps(a)).merged_paths) is list
    assert type(a.model_dump()["observed_writes"]) is list
    assert json.loads(json_bytes(a))["observed_writes"] == []
    given = SubtaskResult.model_validate_json(RESULT.replace("}]}", '}], "merged_paths": ["p"]}'))
    assert given.merged_paths == ["p"] and given.merged_paths is not a.merged_paths


def test_a_subtask_shares_its_empty_lists_and_env() -> None:
    one = Subtask.model_validate(json.loads(json.dumps({**SUBTASK, "depends_on": []})))
    two = Subtask.model_validate(json.loads(json.dumps(SUBTASK)))
    assert one.depends_on is two.depends_on is two.context_files is two.reference_files
    assert one.execution.env is two.execution.env and one.execution.env == {}
    with pytest.raises(TypeError, match="shared"):
        one.execution.env["X"] = "1"
    with pytest.raises(TypeError, match="shared"):
        one.depends_on.extend(["02"])
    assert two.depends_on == [] and two.execution.env == {}
    assert Subtask.model_validate({**SUBTASK, "depends_on": ["02"]}).depends_on == ["02"]
