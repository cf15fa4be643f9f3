"""Helpers for unit tests that run batchq's logic on :class:`MemoryStore`: a worker's
message for a subtask (with its run token written), and a worker's record of a
result, as the runner would leave it, without a worker process."""

from __future__ import annotations

import secrets
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from batchq import layout
from batchq.files.taskfiles import feature_dir
from batchq.models import (
    FailurePolicy,
    ResultState,
    Subtask,
    SubtaskMessage,
    SubtaskResult,
    WriteCheck,
    feature_key,
)
from batchq.settings import Settings
from batchq.store.contract import Store

FEATURE = "feat"


def settings(**overrides: Any) -> Settings:
    """Settings allowing the shell and python fixtures these tests run."""
    values: dict[str, Any] = {
        "shell_allow": ["true", "touch"],
        "python_allow": ["tests.fixtures_pkg"],
        "retry_backoff_s": 0.0,
        "retry_backoff_max_s": 0.0,
    }
    values.update(overrides)
    return Settings(**values)


def message(
    root: Path,
    data: dict[str, Any],
    *,
    run_id: str | None = None,
    batch: int = 1,
    policy: FailurePolicy = FailurePolicy.GRACEFUL,
    token: str | None = None,
    write_token: bool = True,
) -> SubtaskMessage:
    """The message a producer would publish for ``data`` (a subtask file's content),
    with the run token file written under ``root`` unless ``write_token`` is False."""
    run_id = run_id or f"run-{secrets.token_hex(4)}"
    token = token or secrets.token_hex(8)
    if write_token:
        path = layout.token_file(feature_dir(root, FEATURE), run_id)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(token + "\n", encoding="utf-8")
    sub = Subtask.model_validate(data)
    return SubtaskMessage(
        feature=FEATURE,
        feature_key=feature_key(FEATURE, root),
        run_id=run_id,
        batch=batch,
        root=str(root),
        token=token,
        policy=policy,
        agent=sub.suggested_agent or "shell",
        subtask=sub,
        write_check=WriteCheck.OFF,
    )


def record(
    store: Store,
    msg: SubtaskMessage,
    state: ResultState = ResultState.COMPLETED,
    *,
    worker: str = "fake-worker",
    error: str | None = None,
) -> SubtaskResult:
    """Do what a worker does for ``msg`` without running anything: claim, then record
    ``state`` once (the ``started`` and ``finished`` events follow)."""
    decision = store.begin(
        msg.run_id, msg.batch, msg.seq, worker, "task", claim_ttl_s=30.0, max_starts=3
    )
    assert decision == "run", decision
    result = result_of(msg, state, worker=worker, error=error)
    assert store.record_result(result, msg.feature_key, worker)
    return result


def result_of(
    msg: SubtaskMessage,
    state: ResultState = ResultState.COMPLETED,
    *,
    worker: str = "fake-worker",
    error: str | None = None,
) -> SubtaskResult:
    """The result a worker would record for ``msg``."""
    now = datetime.now(UTC)
    return SubtaskResult(
        feature=msg.feature,
        run_id=msg.run_id,
        batch=msg.batch,
        seq=msg.seq,
        title=msg.subtask.title,
        result=state,
        worker=worker,
        started_at=now,
        finished_at=now,
        error=error if error is not None else (None if state is ResultState.COMPLETED else "x"),
    )
