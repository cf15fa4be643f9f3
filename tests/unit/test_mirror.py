"""The orchestrator's mirror of progress events into the task files: an isolated result
that is not merged back yet is never written as completed (its deliverables are only in
its result commit until the merge)."""

from __future__ import annotations

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
