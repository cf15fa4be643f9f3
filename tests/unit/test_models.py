"""The models' shared ``model_fields_set``: one set per set of names given, never a
change seen by another instance."""

from __future__ import annotations

import copy
import pickle

from batchq.models import BatchReport, Subtask, SubtaskResult

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
