"""The orchestrator's mirror of progress events into the task files: an isolated result
that is not merged back yet is never written as completed (its deliverables are only in
its result commit until the merge); a small batch's last rewrite waits for its report,
and nothing about it is printed before it is written."""

from __future__ import annotations

import pytest

from batchq.errors import SpecError
from batchq.files import fingerprint
from batchq.files.taskfiles import load_feature
from batchq.models import ResultState, SubtaskResult
from batchq.protocol import EventKind
from batchq.run import orchestrator
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


def test_a_small_last_rewrite_waits_for_the_report_and_prints_only_once_written(
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
    mirror([finished("02")])  # the last member: held until the report is stored
    assert len(seen) == 1 and set(mirror.pending) == {"01", "02"}
    mirror.finish()
    assert seen[1] == (["02"], {"01": "completed", "02": "completed"})
    assert mirror.written == {"01": ResultState.COMPLETED, "02": ResultState.COMPLETED}
    mirror.finish()  # nothing left to write or print
    assert len(seen) == 2


def test_a_big_last_rewrite_is_done_before_the_report(
    make_feature: MakeFeature, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(orchestrator, "MIRROR_AFTER_REPORT_MAX", 1)
    root = make_feature([subtask(s, command="true") for s in ("01", "02")])
    feature = load_feature(root, "feat")
    recorder = fingerprint.Recorder.for_batch(feature, ["01", "02"], settings())
    forwarded: list[Event] = []
    mirror = _Mirror(root, "feat", "r1", forwarded.extend, recorder, ["01", "02"])
    mirror.interval = 3600.0
    mirror([finished("01"), finished("02")])  # two files pending: more than the limit
    statuses = {s.seq: s.status.value for s in load_feature(root, "feat").subtasks}
    assert statuses == {"01": "completed", "02": "completed"} and mirror.pending == {}
    assert [e.seq for e in forwarded] == ["01", "02"]


def test_a_failed_last_rewrite_is_raised_and_nothing_is_printed_for_it(
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
        mirror.finish()
    assert forwarded == []  # nothing printed for a rewrite that did not happen
