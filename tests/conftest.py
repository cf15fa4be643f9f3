"""Session-wide test configuration shared by unit and integration tests."""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, settings

# Hypothesis' 200 ms deadline is a timed assertion on a loaded 2-core machine (TRAPS).
settings.register_profile(
    "ci",
    deadline=None,
    max_examples=100,
    suppress_health_check=[HealthCheck.too_slow],
)
settings.register_profile("dev", deadline=None, max_examples=50)


def pytest_configure(config: pytest.Config) -> None:
    """Tests start from a clean batchq environment: a developer's exported settings
    (a Redis URL, allow-lists) must not leak into what the suite checks. Only the
    test-control variables (``BATCHQ_TEST_*``) pass."""
    for name in list(os.environ):
        if name.startswith("BATCHQ_") and not name.startswith("BATCHQ_TEST_"):
            del os.environ[name]


settings.load_profile("ci" if os.environ.get("CI") else os.environ.get("HYPOTHESIS_PROFILE", "dev"))


# --- feature folders ------------------------------------------------------------------


def subtask(
    seq: str,
    *,
    title: str | None = None,
    command: str | None = None,
    callable_: str | None = None,
    deliverables: list[str] | None = None,
    depends_on: list[str] | None = None,
    parallel: bool = True,
    agent: str | None = None,
    status: str = "pending",
    **execution: Any,
) -> dict[str, Any]:
    """A subtask file's content in the established format, with an execution block."""
    block: dict[str, Any] = dict(execution)
    if command is not None:
        block["command"] = command
        agent = agent or "shell"
    if callable_ is not None:
        block["callable"] = callable_
        agent = agent or "python"
    data: dict[str, Any] = {
        "id": f"feat-{seq}",
        "seq": seq,
        "title": title or f"Subtask {seq}",
        "status": status,
        "depends_on": depends_on or [],
        "parallel": parallel,
        "suggested_agent": agent,
        "context_files": [],
        "reference_files": [],
        "acceptance_criteria": ["it is done"],
        "deliverables": deliverables or [f"out/{seq}.txt"],
    }
    if block:
        data["execution"] = block
    return data


MakeFeature = Callable[..., Path]


@pytest.fixture
def make_feature(tmp_path: Path) -> MakeFeature:
    """Factory: ``make_feature([subtask(...), ...], name="feat")`` -> the project root.

    The root gets a ``.git`` folder so root discovery stops there.
    """

    def make(subtasks: list[dict[str, Any]], name: str = "feat", root: Path | None = None) -> Path:
        root = root or tmp_path / "project"
        (root / ".git").mkdir(parents=True, exist_ok=True)
        folder = root / ".tmp" / "tasks" / name
        folder.mkdir(parents=True, exist_ok=True)
        task = {
            "id": name,
            "name": f"Feature {name}",
            "status": "active",
            "objective": "test",
            "context_files": [],
            "reference_files": [],
            "exit_criteria": ["all done"],
            "subtask_count": len(subtasks),
            "completed_count": 0,
            "created_at": "2026-01-01T00:00:00.000Z",
        }
        (folder / "task.json").write_text(json.dumps(task, indent=2) + "\n", encoding="utf-8")
        for data in subtasks:
            if name != "feat" and str(data.get("id", "")).startswith("feat-"):
                data = {**data, "id": f"{name}-{data['id'][5:]}"}  # ids are <feature>-NN
            text = json.dumps(data, indent=2, ensure_ascii=False) + "\n"
            (folder / f"subtask_{data['seq']}.json").write_text(text, encoding="utf-8")
        return root

    return make


@pytest.fixture
def subtask_data() -> Callable[..., dict[str, Any]]:
    return subtask


# --- real processes -----------------------------------------------------------------


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """Last line of defence: no child process group outlives the test session."""
    from batchq import procs

    procs.reap_all()


@pytest.fixture(scope="session")
def redis_target() -> Iterator[Any]:
    """The session's Redis (see :mod:`tests.servers`), started on first use."""
    from tests.servers import session_redis

    yield from session_redis()
