"""``batchq status``'s quick path (``batchq.quickstatus``) against the full command: in
the plain case it prints the same bytes; in every other case it prints nothing and
leaves the answer to the full command."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from batchq.cli.main import main
from batchq.quickstatus import status

MakeFeature = Callable[..., Path]
SubtaskData = Callable[..., dict[str, Any]]
REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(autouse=True)
def _no_configuration(monkeypatch: pytest.MonkeyPatch) -> None:
    for key in list(os.environ):
        if key.upper().startswith("BATCHQ_"):
            monkeypatch.delenv(key)


def _full(capsys: pytest.CaptureFixture[str], args: list[str]) -> tuple[int, str]:
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_info:
        main(["status", *args])
    code = exit_info.value.code
    return (code if isinstance(code, int) else 1), capsys.readouterr().out


def _quick(capsys: pytest.CaptureFixture[str], args: list[str]) -> tuple[bool, str]:
    capsys.readouterr()
    answered = status(args)
    return answered, capsys.readouterr().out


def _same_as_full(capsys: pytest.CaptureFixture[str], args: list[str]) -> str:
    answered, quick_out = _quick(capsys, args)
    code, full_out = _full(capsys, args)
    assert answered, "the quick path declined a plain feature"
    assert (code, quick_out) == (0, full_out)
    return quick_out


def _declines(capsys: pytest.CaptureFixture[str], args: list[str]) -> None:
    answered, out = _quick(capsys, args)
    assert (answered, out) == (False, "")


def _rewrite(root: Path, name: str, file: str, **changes: Any) -> None:
    path = root / ".tmp/tasks" / name / file
    data = json.loads(path.read_text(encoding="utf-8"))
    for key, value in changes.items():
        if value is _DROP:
            data.pop(key, None)
        else:
            data[key] = value
    path.write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


_DROP = object()


@pytest.fixture
def project(make_feature: MakeFeature, subtask_data: SubtaskData) -> Path:
    root = make_feature(
        [
            subtask_data("01", title="Setup", status="completed", command="true"),
            subtask_data("02", title="Tab\there \x1b[31mred\x1b[0m ünï", command="true"),
            subtask_data("03", title="Third", status="in_progress", callable="pkg.mod:fn"),
            subtask_data("04", title="Last", depends_on=["01", "02", "03"], command="true"),
        ],
        name="auth",
    )
    _rewrite(
        root,
        "auth",
        "subtask_02.json",
        status="blocked",
        batchq={"result": "failed", "error": "exit 1\nsecond line", "attempts": 1},
    )
    return root


def test_a_plain_feature_prints_what_the_full_command_prints(
    capsys: pytest.CaptureFixture[str], project: Path
) -> None:
    out = _same_as_full(capsys, ["auth", "--root", str(project)])
    assert "(failed: exit 1)" in out


def test_every_feature_and_no_feature_print_the_same(
    capsys: pytest.CaptureFixture[str],
    project: Path,
    make_feature: MakeFeature,
    subtask_data: SubtaskData,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    make_feature([subtask_data("01", command="true")], name="other", root=project)
    monkeypatch.chdir(project / ".tmp")
    assert _same_as_full(capsys, []).count("\n\n") == 1
    empty = tmp_path / "empty"
    (empty / ".git").mkdir(parents=True)
    _same_as_full(capsys, [f"--root={empty}"])


@pytest.mark.parametrize(
    ("file", "changes"),
    [
        ("subtask_01.json", {"parallel": "yes"}),
        ("subtask_01.json", {"depends_on": ["09"]}),
        ("subtask_01.json", {"depends_on": ["01"]}),
        ("subtask_01.json", {"depends_on": ["04"]}),
        ("subtask_01.json", {"deliverables": [".env"]}),
        ("subtask_01.json", {"deliverables": ["../out"]}),
        ("subtask_01.json", {"context_files": [{"path": "a.txt"}]}),
        ("subtask_01.json", {"seq": "02"}),
        ("subtask_01.json", {"title": ""}),
        ("subtask_01.json", {"status": "done"}),
        ("subtask_01.json", {"acceptance_criteria": _DROP}),
        ("subtask_01.json", {"execution": {"command": "true", "retries": "2"}}),
        ("subtask_01.json", {"execution": {"timeout_s": 1e300}}),
        ("subtask_01.json", {"batchq": {"result": "weird"}}),
        ("subtask_01.json", {"completion_summary": "x" * 201}),
        ("task.json", {"id": "not-the-folder"}),
        ("task.json", {"status": None}),
    ],
)
def test_anything_but_plain_goes_the_full_way(
    capsys: pytest.CaptureFixture[str], project: Path, file: str, changes: dict[str, Any]
) -> None:
    _rewrite(project, "auth", file, **changes)
    _declines(capsys, ["auth", "--root", str(project)])


def test_unreadable_json_and_odd_names_go_the_full_way(
    capsys: pytest.CaptureFixture[str], project: Path
) -> None:
    folder = project / ".tmp/tasks/auth"
    (folder / "subtask_05.json").write_text('{"seq": "05", "seq": "05"}', encoding="utf-8")
    _declines(capsys, ["auth", "--root", str(project)])
    (folder / "subtask_05.json").unlink()
    (folder / "subtask_x.json").write_text("{}", encoding="utf-8")
    _declines(capsys, ["auth", "--root", str(project)])
    (folder / "subtask_x.json").unlink()
    _declines(capsys, ["missing", "--root", str(project)])
    _declines(capsys, [".hidden", "--root", str(project)])


@pytest.mark.parametrize(
    "args",
    [["auth", "--json"], ["auth", "extra"], ["--root"], ["auth", "--help"], ["--", "auth"]],
)
def test_other_command_lines_go_the_full_way(
    capsys: pytest.CaptureFixture[str],
    project: Path,
    args: list[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.chdir(project)
    _declines(capsys, args)


def test_configuration_goes_the_full_way(
    capsys: pytest.CaptureFixture[str], project: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A Redis to ask for a live line, or other protected paths, are the settings'."""
    args = ["auth", "--root", str(project)]
    monkeypatch.setenv("batchq_protected_paths", "out/")
    _declines(capsys, args)
    monkeypatch.delenv("batchq_protected_paths")
    (project / "batchq.toml").write_text('protected_paths = ["out/"]\n', encoding="utf-8")
    _declines(capsys, args)


def test_the_console_script_answers_without_the_command_machinery(project: Path) -> None:
    """``batchq status`` through :mod:`batchq.entry` imports neither pydantic, Typer nor
    Rich in the plain case (what keeps it within its start-up goal, bench/startup.py)."""
    code = (
        "import sys\nfrom batchq.entry import main\ntry:\n    main(sys.argv[1:])\nfinally:\n"
        "    heavy = [m for m in ('pydantic', 'typer', 'rich', 'click') if m in sys.modules]\n"
        "    print('HEAVY=' + ','.join(heavy))\n"
    )
    env = {k: v for k, v in os.environ.items() if not k.upper().startswith("BATCHQ_")}
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), *filter(None, [env.get("PYTHONPATH")])])
    done = subprocess.run(
        [sys.executable, "-c", code, "status", "auth", "--root", str(project)],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines()[0] == "[auth] Feature auth"
    assert done.stdout.splitlines()[-1] == "HEAVY="
