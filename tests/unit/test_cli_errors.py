"""Errors a user can act on: advice that works as printed, --version, unknown runs."""

from __future__ import annotations

import os
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from batchq.cli.common import keep_root
from batchq.cli.main import main
from batchq.files.taskfiles import load_feature
from batchq.models import BatchReport, BatchStatus, NextStep, ResultState, SubtaskResult
from batchq.run import merge
from batchq.run.orchestrator import saved_reports

NO_REDIS = "redis+socket:///nonexistent/batchq-test.sock"


def cli(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], *args: str
) -> tuple[int, str, str]:
    for key in list(os.environ):
        if key.startswith("BATCHQ_"):
            monkeypatch.delenv(key)
    monkeypatch.setenv("BATCHQ_REDIS_URL", NO_REDIS)
    capsys.readouterr()
    with pytest.raises(SystemExit) as info:
        main(list(args))
    out, err = capsys.readouterr()
    assert "Traceback" not in out + err
    return int(info.value.code or 0), out, err


def test_advice_keeps_the_root_the_user_gave() -> None:
    text = "rerun `batchq run feat` once fixed, or `batchq cancel feat --root /x`"
    assert keep_root(text, "/my proj") == (
        "rerun `batchq run feat --root '/my proj'` once fixed, or `batchq cancel feat --root /x`"
    )
    assert keep_root(text, None) == text


def test_version_is_printed(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, _ = cli(monkeypatch, capsys, "--version")
    assert code == 0 and out.startswith("batchq ")


def save_report(root: Path, run_id: str, **fields: Any) -> None:
    """A completed, empty batch 1 of ``run_id`` in feature ``feat``'s saved reports."""
    folder = root / ".tmp/tasks/feat/.batchq/reports"
    folder.mkdir(parents=True, exist_ok=True)
    saved = BatchReport(
        feature="feat",
        run_id=run_id,
        batch=1,
        status=BatchStatus.COMPLETED,
        results=fields.pop("results", []),
        total=0,
        completed=0,
        failed=0,
        success_rate=100.0,
        **fields,
    )
    (folder / f"{run_id}-001.json").write_text(saved.model_dump_json())


def test_report_of_an_unknown_run_names_the_runs_it_knows(
    make_feature: Callable[..., Path],
    subtask_data: Callable[..., dict[str, object]],
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    root = make_feature([subtask_data("01", command="true")])
    save_report(root, "20260101T000000-abcd1234", next=NextStep(recommendation="Batch 1 complete."))
    code, _, err = cli(monkeypatch, capsys, "report", "feat", "--root", str(root), "--run", "x")
    assert code == 2
    assert "no reports of run 'x' for feat; runs with reports: 20260101T000000-abcd1234" in err
    code, out, _ = cli(monkeypatch, capsys, "report", "feat", "--root", str(root))
    assert code == 0 and "Batch 1 complete." in out


def test_saved_reports_come_oldest_submitted_first_whatever_their_run_ids(
    make_feature: Callable[..., Path], subtask_data: Callable[..., dict[str, object]]
) -> None:
    root = make_feature([subtask_data("01", command="true")])
    # An interrupted run and the next, started within one second: their ids share the
    # clock and differ in the random part, which sorts the later one first.
    for run_id, second in (("20260101T000000-ffff0000", 1), ("20260101T000000-0000ffff", 2)):
        save_report(root, run_id, submitted_at=datetime(2026, 1, 1, 0, 0, second, tzinfo=UTC))
    found = saved_reports(load_feature(root, "feat"))
    assert [r.run_id for r in found] == ["20260101T000000-ffff0000", "20260101T000000-0000ffff"]


def test_the_latest_isolated_result_is_the_latest_submitted_whatever_the_run_ids(
    make_feature: Callable[..., Path], subtask_data: Callable[..., dict[str, object]]
) -> None:
    root = make_feature([subtask_data("01", command="true")])
    for run_id, second, commit in (
        ("20260101T000000-ffff0000", 1, "a" * 40),
        ("20260101T000000-0000ffff", 2, "b" * 40),
    ):
        result = SubtaskResult(
            feature="feat", run_id=run_id, batch=1, seq="01", title="t",
            result=ResultState.COMPLETED, isolated_commit=commit,
        )  # fmt: skip
        save_report(
            root, run_id, results=[result],
            submitted_at=datetime(2026, 1, 1, 0, 0, second, tzinfo=UTC),
        )  # fmt: skip
    feature = load_feature(root, "feat")
    assert merge._isolated_commit(feature, "01", None) == "b" * 40  # the later run's
    assert merge._isolated_commit(feature, "01", "20260101T000000-ffff0000") == "a" * 40


def test_runs_and_logs_read_the_files_alone(
    make_feature: Callable[..., Path],
    subtask_data: Callable[..., dict[str, object]],
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    root = make_feature([subtask_data("01", command="true")])
    code, out, _ = cli(monkeypatch, capsys, "runs", "feat", "--root", str(root))
    assert code == 0 and "No runs of feat yet" in out
    code, _, err = cli(monkeypatch, capsys, "logs", "feat", "01", "--root", str(root))
    assert code == 2 and "no log of subtask 01 of feat yet" in err
    log = root / ".tmp/tasks/feat/.batchq/logs/20260101T000000-abcd1234/01.log"
    log.parent.mkdir(parents=True)
    log.write_bytes(b"every line\nof the agent\n")
    code, out, _ = cli(monkeypatch, capsys, "logs", "feat", "1", "--root", str(root))
    assert (code, out) == (0, "every line\nof the agent\n")


@pytest.mark.timeout(30)  # a blocking read would hang here, not fail slowly
def test_logs_refuses_a_fifo_or_a_link_put_in_place_of_the_log(
    make_feature: Callable[..., Path],
    subtask_data: Callable[..., dict[str, object]],
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    root = make_feature([subtask_data("01", command="true")])
    run = root / ".tmp/tasks/feat/.batchq/logs/20260101T000000-abcd1234"
    run.mkdir(parents=True)
    os.mkfifo(run / "01.log")
    args = ("logs", "feat", "01", "--root", str(root), "--run", "20260101T000000-abcd1234")
    code, _, err = cli(monkeypatch, capsys, *args)
    assert code == 2 and "a FIFO" in err
    (run / "01.log").unlink()
    (root / "secret").write_text("hunter2\n")
    (run / "01.log").symlink_to(root / "secret")
    code, out, err = cli(monkeypatch, capsys, *args)
    assert code == 2 and "a symlink" in err and "hunter2" not in out
