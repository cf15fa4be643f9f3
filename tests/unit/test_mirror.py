"""The orchestrator's mirror of progress events into the task files: an isolated result
that is not merged back yet is never written as completed (its deliverables are only in
its result commit until the merge); a batch's small last rewrite runs beside the report,
and nothing about it is printed before it is written."""

from __future__ import annotations

import pytest

from batchq.errors import SpecError
from batchq.files import fingerprint
from batchq.files.taskfiles import load_feature
from batchq.models import ResultState, SubtaskResult
from batchq.protocol import EventKind
from batchq.run.orchestrator import _Mirror
from batchq.store.state import Event
from tests.conftest import MakeFeature, subtask
from tests.memrun import settings


def finished(seq: str, **fields: object) -> Event:
    result = SubtaskResult(
        feature="feat", run_id="r1", batch=1, seq=seq, title="t",
        result=ResultState.COMPLETED, **fields,  # type: ignore[arg-type]
    )  # fmt: skip
    return Event("1-0", EventKind.FINISHED, 1, seq, result.model_dump(mode="json"))


def test_an_unmerged_isolated_completion_stays_in_progress_until_the_merge(
    make_feature: MakeFeature,
) -> None:
    root = make_feature([subtask(s, command="true") for s in ("01", "02", "03")])
    feature = load_feature(root, "feat")
    recorder = fingerprint.Recorder.for_batch(feature, ["01", "02", "03"], settings())
    mirror = _Mirror(root, "feat", "r1", None, recorder)
    started = Event("0-1", EventKind.STARTED, 1, "01", {"worker": "w", "started_at": ""})
    mirror([started])
    mirror(
        [
            finished("01", isolated_commit="c" * 40),  # the batch's merge is still to come
            finished("02", isolated_commit="d" * 40, merged=True),  # flow mode: merged first
            finished("03"),  # not isolated
        ]
    )
    mirror.flush()

    statuses = {s.seq: s.status.value for s in load_feature(root, "feat").subtasks}
    assert statuses == {"01": "in_progress", "02": "completed", "03": "completed"}
    assert mirror.finished["01"] is ResultState.COMPLETED  # known, for the settle
    assert "01" not in mirror.written  # so the settle writes it after the merge


def test_a_small_last_rewrite_runs_beside_the_report_and_prints_only_once_written(
    make_feature: MakeFeature,
) -> None:
    root = make_feature([subtask(s, command="true") for s in ("01", "02")])
    feature = load_feature(root, "feat")
    recorder = fingerprint.Recorder.for_batch(feature, ["01", "02"], settings())
    seen: list[tuple[list[str], dict[str, str]]] = []

    def forward(events: list[Event]) -> None:  # the CLI's progress lines
        statuses = {s.seq: s.status.value for s in load_feature(root, "feat").subtasks}
        seen.append(([e.seq for e in events], statuses))

    mirror = _Mirror(root, "feat", "r1", forward, recorder, ["01", "02"])
    mirror.interval = 3600.0  # no interim rewrite, however slow this machine is
    mirror([finished("01")])
    assert seen == [(["01"], {"01": "pending", "02": "pending"})]  # paced: not written yet
    mirror([finished("02")])  # the last member: its rewrite starts in a thread
    mirror.settle()
    assert seen[1] == (["02"], {"01": "completed", "02": "completed"})
    assert mirror.written == {"01": ResultState.COMPLETED, "02": ResultState.COMPLETED}
    mirror.settle()  # nothing left to wait for
    assert len(seen) == 2


def test_a_failed_rewrite_beside_the_report_is_raised_where_the_run_joins_it(
    make_feature: MakeFeature,
) -> None:
    root = make_feature([subtask("01", command="true")])
    feature = load_feature(root, "feat")
    recorder = fingerprint.Recorder.for_batch(feature, ["01"], settings())
    forwarded: list[Event] = []
    mirror = _Mirror(root, "feat", "r1", forwarded.extend, recorder, ["01"])
    (root / ".tmp" / "tasks" / "feat" / "subtask_01.json").write_text("{ not json")
    mirror([finished("01")])
    with pytest.raises(SpecError, match=r"subtask_01\.json"):
        mirror.settle()
    assert forwarded == []  # nothing printed for a rewrite that did not happen
