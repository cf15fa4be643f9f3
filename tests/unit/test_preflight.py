"""The one pre-flight: `validate` refuses exactly what `run` would refuse before it
enqueues, and names every problem of every file."""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from batchq.cli.main import main
from batchq.errors import PolicyError, SpecError
from batchq.files.taskfiles import load_feature
from batchq.run.preflight import PreflightError, check, require
from batchq.settings import load_settings
from tests.conftest import subtask

NO_REDIS = "redis+socket:///nonexistent/batchq-test.sock"


def validate(
    root: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> tuple[int, str]:
    for key in list(os.environ):
        if key.startswith("BATCHQ_"):
            monkeypatch.delenv(key)
    monkeypatch.setenv("BATCHQ_REDIS_URL", NO_REDIS)
    capsys.readouterr()
    with pytest.raises(SystemExit) as info:
        main(["validate", "feat", "--root", str(root)])
    out, err = capsys.readouterr()
    assert "Traceback" not in out + err
    return int(info.value.code or 0), out + err


def problems(root: Path) -> list[str]:
    return [str(p) for p in check(root, "feat", load_settings(root)).problems]


def write(root: Path, seq: str, text: str) -> None:
    (root / ".tmp/tasks/feat" / f"subtask_{seq}.json").write_text(text, encoding="utf-8")


def test_validate_refuses_what_run_refuses_and_lists_every_problem(
    make_feature: Callable[..., Path],
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    root = make_feature(
        [
            subtask("01", command="true", agent="NoSuchAgent"),
            subtask("02", command="rm -rf /"),
            subtask("03", command="true", env={"PATH": "/evil"}),
            {**subtask("04"), "suggested_agent": "shell"},  # shell, but no execution
        ]
    )
    (root / "batchq.toml").write_text('[agents.shell]\nallow = ["true"]\n', encoding="utf-8")
    code, text = validate(root, monkeypatch, capsys)
    assert code == 2
    errors = [line for line in text.splitlines() if line.startswith("  ✗ ERROR: ")]
    assert len(errors) == 4, text
    assert "unknown agent 'NoSuchAgent'" in errors[0]
    assert "subtask 02" in errors[1] and "rm" in errors[1]
    assert "subtask 03" in errors[2] and "PATH" in errors[2]
    assert "subtask 04: execution.command: missing" in errors[3]
    # run refuses the same four, before anything starts
    with pytest.raises(PreflightError) as info:
        require(root, "feat", load_settings(root))
    assert [str(p) for p in info.value.problems] == [e.removeprefix("  ✗ ERROR: ") for e in errors]


def test_a_clean_feature_passes_both(
    make_feature: Callable[..., Path],
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    root = make_feature([subtask("01", command="true")])
    (root / "batchq.toml").write_text('[agents.shell]\nallow = ["true"]\n', encoding="utf-8")
    code, text = validate(root, monkeypatch, capsys)
    assert (code, "✓ All checks passed" in text) == (0, True), text
    assert require(root, "feat", load_settings(root)).name == "feat"


def test_every_format_problem_of_every_file_is_listed(make_feature: Callable[..., Path]) -> None:
    bad = {**subtask("01", command="true"), "title": "", "deliverables": [], "parallel": "yes"}
    also = {**subtask("02", command="true"), "acceptance_criteria": []}
    root = make_feature([bad, also])
    found = problems(root)
    assert len(found) == 4, found
    assert sum("subtask_01.json" in p for p in found) == 3
    assert any("subtask_02.json: acceptance_criteria" in p for p in found)
    assert not any("more problem" in p for p in found)


@pytest.mark.parametrize("value", ["yes", 1, "on", "true", 0])
def test_parallel_must_be_a_json_boolean(make_feature: Callable[..., Path], value: Any) -> None:
    root = make_feature([{**subtask("01", command="true"), "parallel": value}])
    with pytest.raises(SpecError, match=r"subtask_01\.json: parallel: .*boolean"):
        load_feature(root, "feat")


@pytest.mark.parametrize("raw", ["1e300", "1e999"])
def test_a_timeout_must_be_finite_and_bounded(make_feature: Callable[..., Path], raw: str) -> None:
    root = make_feature([subtask("01", command="true")])
    data = json.dumps(subtask("01", command="true", timeout_s=12345.0))
    write(root, "01", data.replace("12345.0", raw))
    with pytest.raises(SpecError, match=r"execution\.timeout_s"):
        load_feature(root, "feat")


def test_a_duplicate_key_is_refused_naming_the_key(make_feature: Callable[..., Path]) -> None:
    root = make_feature([subtask("01", command="true")])
    text = json.dumps(subtask("01", command="echo first"), indent=2)
    write(root, "01", text.replace('"command": "echo first"', '"command": "a", "command": "b"'))
    with pytest.raises(SpecError, match="duplicate key 'command'"):
        load_feature(root, "feat")


def test_subtask_count_and_ids_are_checked_not_rewritten(
    make_feature: Callable[..., Path],
) -> None:
    root = make_feature([subtask("01", command="true"), {**subtask("02"), "id": "other-02"}])
    task = root / ".tmp/tasks/feat/task.json"
    data = json.loads(task.read_text(encoding="utf-8"))
    task.write_text(json.dumps({**data, "subtask_count": 3}), encoding="utf-8")
    found = problems(root)
    assert any("task.json: subtask_count: says 3, but the folder holds 2" in p for p in found)
    assert any("subtask_02.json: id: " in p and "'feat-02'" in p for p in found)
    assert json.loads(task.read_text(encoding="utf-8"))["subtask_count"] == 3


def test_retries_past_the_visibility_timeout_name_the_setting_to_raise(
    make_feature: Callable[..., Path],
) -> None:
    root = make_feature([subtask("01", command="true", retries=3)])
    (root / "batchq.toml").write_text('[agents.shell]\nallow = ["true"]\n', encoding="utf-8")
    with pytest.raises(PolicyError) as info:
        require(root, "feat", load_settings(root))
    message = str(info.value)
    assert "execution.retries: 4 attempts of timeout_s 3600s (the default)" in message
    assert "BATCHQ_VISIBILITY_TIMEOUT_S" in message
