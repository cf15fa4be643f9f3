"""Every case of the bad-input corpus (``tests/data/bad/``) is refused cleanly.

Each case must exit 2 with ONE error line naming the file (or the limit) and the
field, leave every file byte-identical, and enqueue nothing. ``BATCHQ_REDIS_URL``
points at a Unix socket that does not exist, so a ``run`` that got as far as
connecting would exit 3: exit 2 proves validation came first.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from batchq.cli.main import main

BAD = Path(__file__).resolve().parents[1] / "data" / "bad"
BASE = BAD / "_base"
CASES = sorted(p.name for p in BAD.iterdir() if p.is_dir() and not p.name.startswith("_"))
NO_REDIS = "redis+socket:///nonexistent/batchq-bad-input.sock"


@dataclass
class Result:
    code: int
    out: str
    err: str


Cli = Callable[..., Result]


@pytest.fixture
def cli(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> Cli:
    for key in list(os.environ):
        if key.startswith("BATCHQ_"):
            monkeypatch.delenv(key)
    monkeypatch.setenv("BATCHQ_REDIS_URL", NO_REDIS)

    def run(root: Path, *args: str) -> Result:
        monkeypatch.chdir(root)
        capsys.readouterr()
        with pytest.raises(SystemExit) as exit_info:
            main(list(args))
        out, err = capsys.readouterr()
        code = exit_info.value.code
        assert "Traceback" not in out + err
        return Result(code if isinstance(code, int) else 1, out, err)

    return run


def snapshot(root: Path) -> dict[str, bytes]:
    return {
        str(path.relative_to(root)): path.read_bytes()
        for path in sorted(root.rglob("*"))
        if path.is_file() and ".git" not in path.parts
    }


def note(case: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((BAD / case / "case.json").read_text(encoding="utf-8"))
    return data


def project(tmp_path: Path, case: str | None) -> Path:
    """The base feature with the case's files laid over it."""
    root = tmp_path / "project"
    feature = root / ".tmp" / "tasks" / "feat"
    feature.mkdir(parents=True)
    (root / ".git").mkdir()
    layers = [BASE] if case is None else [BASE, BAD / case]
    for layer in layers:
        for path in layer.iterdir():
            if path.name in ("case.json", "README.md"):
                continue
            target = root if path.name == "batchq.toml" else feature
            shutil.copyfile(path, target / path.name)
    if case is not None and not (BAD / case / "task.json").exists():
        # A case that adds a subtask file keeps the header's count true: a wrong
        # subtask_count is a problem of its own, which would hide the case's.
        task = feature / "task.json"
        data = json.loads(task.read_text(encoding="utf-8"))
        data["subtask_count"] = len(list(feature.glob("subtask_*.json")))
        task.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")
    spec = note(case).get("generate") if case else None
    if spec:
        padding = "x" * int(spec["bytes"])
        data = json.loads((feature / spec["file"]).read_text(encoding="utf-8"))
        data["notes"] = padding
        (feature / spec["file"]).write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")
    return root


def test_the_corpus_is_documented() -> None:
    assert len(CASES) >= 40
    for case in CASES:
        data = note(case)
        assert data["about"] and data["expect"] and data["commands"], case
        assert set(data["commands"]) <= {"validate", "run", "complete"}, case


def test_the_base_feature_is_sound_so_run_would_connect(cli: Cli, tmp_path: Path) -> None:
    root = project(tmp_path, None)
    assert cli(root, "validate", "feat").code == 0
    reached = cli(root, "run", "feat")
    assert reached.code == 3, reached.err
    assert "nonexistent/batchq-bad-input.sock" in reached.err


def _argv(command: str, data: dict[str, Any]) -> list[list[str]]:
    args = [str(a) for a in data.get("args", [])]
    if command == "run":
        return [["run", "feat", *args], ["batch", "feat", "01"]]
    return [[command, "feat", *args]]


@pytest.mark.parametrize("case", CASES)
def test_bad_input_is_refused_on_one_line_and_changes_nothing(
    cli: Cli, tmp_path: Path, case: str
) -> None:
    data = note(case)
    root = project(tmp_path, case)
    before = snapshot(root)
    for command in data["commands"]:
        for argv in _argv(command, data):
            result = cli(root, *argv)
            assert result.code == 2, (argv, result)
            if command == "validate":
                assert result.err == ""
                errors = [x for x in result.out.splitlines() if x.startswith("  ✗ ERROR: ")]
            else:
                assert result.out == ""
                errors = result.err.splitlines()
            assert len(errors) == 1, (argv, result)
            for expected in data["expect"]:
                assert expected in errors[0], (argv, expected, errors[0])
    assert snapshot(root) == before


@pytest.mark.parametrize("case", [c for c in CASES if note(c)["commands"] == ["run"]])
def test_a_policy_case_is_refused_by_validate_as_run_refuses_it_but_not_by_the_views(
    cli: Cli, tmp_path: Path, case: str
) -> None:
    """One pre-flight: `validate` refuses what `run` refuses before it enqueues, with
    the same line; the read-only views still print (SPEC 1)."""
    root = project(tmp_path, case)
    before = snapshot(root)
    refused = cli(root, "run", "feat")
    checked = cli(root, "validate", "feat")
    assert (refused.code, checked.code) == (2, 2), (refused, checked)
    errors = [x for x in checked.out.splitlines() if x.startswith("  ✗ ERROR: ")]
    assert [f"error: {e.removeprefix('  ✗ ERROR: ')}" for e in errors] == refused.err.splitlines()
    for argv in (["status", "feat"], ["plan", "feat"]):
        assert cli(root, *argv).code == 0, argv
    assert snapshot(root) == before


def test_undeclared_writes_takes_warn_fail_or_off_and_refuses_anything_else(
    cli: Cli, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = project(tmp_path, None)
    for command in (["run", "feat"], ["batch", "feat", "01"]):
        refused = cli(root, *command, "--undeclared-writes", "sometimes")
        assert refused.code == 2 and "--undeclared-writes" in refused.err, refused.err
        accepted = cli(root, *command, "--undeclared-writes", "fail")
        assert accepted.code == 3, accepted.err  # got as far as connecting
    monkeypatch.setenv("BATCHQ_UNDECLARED_WRITES", "sometimes")
    refused = cli(root, "run", "feat")
    assert refused.code == 2 and "BATCHQ_UNDECLARED_WRITES" in refused.err, refused.err
