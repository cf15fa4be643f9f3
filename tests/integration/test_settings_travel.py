"""The orchestrator's whole ``Settings`` object reaches the workers batchq starts.

Real processes: an embedded redis-server and a Celery worker subprocess, because the
bug this guards against lived in the hand-over between processes (workers rebuilt
their settings from the environment and lost every API override).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from batchq import Orchestrator, connect, load_feature, load_settings
from batchq.settings import dump_settings, settings_from_json
from tests.conftest import MakeFeature, subtask

pytestmark = pytest.mark.integration


def test_an_api_allow_list_override_reaches_embedded_workers(make_feature: MakeFeature) -> None:
    root = make_feature(
        [subtask("01", command="mkdir -p out && touch out/01.txt", deliverables=["out/01.txt"])]
    )
    # Nothing in the environment or batchq.toml allows this command: only the override.
    settings = load_settings(root, shell_allow=["*"], stall_s=60)
    with connect(settings, root, embedded_ok=True) as conn:
        result = Orchestrator(root, "feat", conn.settings, conn.app, conn.store).run()
    assert result.ok, result.reports
    assert (root / "out" / "01.txt").is_file()
    assert [s.status.value for s in load_feature(root, "feat").subtasks] == ["completed"]


def test_settings_round_trip_keeps_values_secrets_and_explicit_fields(tmp_path: Path) -> None:
    settings = load_settings(
        tmp_path, shell_allow=["echo *"], flower_password="s3cret", chunk_max=3
    )
    again = settings_from_json(dump_settings(settings))
    assert again.model_dump() == settings.model_dump()
    assert again.flower_password is not None
    assert again.flower_password.get_secret_value() == "s3cret"
    assert again.allow_for("shell") == ["echo *"]
    assert "shell_allow" in again.model_fields_set
