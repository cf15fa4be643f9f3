"""The task-file commands end to end through ``batchq.cli.main.main``: established
output byte for byte, ``--json`` everywhere, broken features, start-up cost."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from batchq.cli.common import error_line
from batchq.cli.main import main

MakeFeature = Callable[..., Path]
SubtaskData = Callable[..., dict[str, Any]]
DATA = Path(__file__).resolve().parents[1] / "data" / "features"
NO_REDIS = "redis+socket:///nonexistent/batchq-test.sock"


@dataclass
class Result:
    code: int
    out: str
    err: str

    @property
    def lines(self) -> list[str]:
        return self.out.splitlines()


Cli = Callable[..., Result]


@pytest.fixture
def cli(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> Cli:
    """``cli(root, "status", ...)``: run batchq in-process from ``root``; exit code and
    output. Redis points at a socket that does not exist: connecting would exit 3."""
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
        result = Result(code if isinstance(code, int) else 1, out, err)
        assert "Traceback" not in out + err
        return result

    return run


def snapshot(root: Path) -> dict[str, bytes]:
    """Every file's bytes, but the empty ``.batchq/lock`` a locked read leaves."""
    return {
        str(path.relative_to(root)): path.read_bytes()
        for path in sorted(root.rglob("*"))
        if path.is_file()
        and ".git" not in path.parts
        and not (path.name == "lock" and path.parent.name == ".batchq")
    }


@pytest.fixture
def appendix(make_feature: MakeFeature, subtask_data: SubtaskData) -> Path:
    """A project whose feature prints every block of the SPEC appendix."""
    root = make_feature(
        [
            subtask_data("01", title="Setup project structure", status="completed", command="true"),
            subtask_data("02", title="Configure database", command="true"),
            subtask_data("03", title="Install dependencies", status="in_progress", command="true"),
            subtask_data(
                "04",
                title="Implement auth service",
                depends_on=["01", "02", "03"],
                parallel=False,
                command="true",
            ),
        ],
        name="auth-system",
    )
    # Runnable as well as printable: `validate` checks what `run` would (its agents).
    (root / "batchq.toml").write_text('[agents.shell]\nallow = ["true"]\n', encoding="utf-8")
    task = root / ".tmp/tasks/auth-system/task.json"
    data = json.loads(task.read_text(encoding="utf-8"))
    data.update(name="Authentication System Implementation", completed_count=1)
    task.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")
    return root


# --- start-up cost --------------------------------------------------------------------


def _modules_after(code: str) -> list[str]:
    script = textwrap.dedent(code) + textwrap.dedent(
        """
        import sys
        heavy = sorted(m for m in ("celery", "kombu", "redis") if m in sys.modules)
        print("HEAVY=" + ",".join(heavy))
        """
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("BATCHQ_")}
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=120, env=env
    )
    marker = [line for line in done.stdout.splitlines() if line.startswith("HEAVY=")]
    assert marker, done.stderr
    return [m for m in marker[-1].removeprefix("HEAVY=").split(",") if m]


def test_importing_the_cli_imports_neither_celery_kombu_nor_redis() -> None:
    assert _modules_after("import batchq.cli.main") == []


def test_status_and_complete_run_without_importing_celery(appendix: Path) -> None:
    code = f"""
        from batchq.cli.main import main
        root = ["--root", {str(appendix)!r}]
        done = ["complete", "auth-system", "02", "done"]
        views = (["plan", "auth-system"], ["deps", "auth-system", "04"], ["changed", "auth-system"])
        for argv in (["status"], done, *views):
            try:
                main([*argv, *root])
            except SystemExit as exc:
                assert exc.code == 0, (argv, exc.code)
        """
    assert _modules_after(code) == []


# --- the established formats ------------------------------------------------------------


def test_status_of_the_fixture_feature_matches_the_appendix(cli: Cli, tmp_path: Path) -> None:
    root = tmp_path / "project"
    shutil.copytree(DATA / "auth-system", root / ".tmp/tasks/auth-system")
    (root / "package.json").write_text("{}\n", encoding="utf-8")
    result = cli(root, "status")
    assert result.code == 0
    assert result.out == (
        "[auth-system] Authentication System Implementation\n"
        "  Status: active | Progress: 25% (1/4)\n"
        "  Pending: 2 | In Progress: 1 | Completed: 1 | Blocked: 0\n"
        "  ✓ 01 - Setup project structure [completed]\n"
        "  ○ 02 - Configure database [pending]\n"
        "  ~ 03 - Install dependencies [in_progress]\n"
        "  ○ 04 - Implement auth service [pending]\n"
    )


def test_status_from_a_subfolder_finds_the_root(cli: Cli, appendix: Path) -> None:
    sub = appendix / "src" / "deep"
    sub.mkdir(parents=True)
    assert cli(sub, "status", "auth-system").lines[0] == (
        "[auth-system] Authentication System Implementation"
    )


def test_next_parallel_deps_blocked_print_the_appendix_blocks(cli: Cli, appendix: Path) -> None:
    assert cli(appendix, "next").out == (
        "=== Ready Tasks (deps satisfied) ===\n\n[auth-system]\n"
        "  02 - Configure database  [parallel]\n\n"
    )
    assert cli(appendix, "parallel").lines[:4] == [
        "=== Parallelizable Tasks Ready Now ===",
        "",
        "[auth-system] - 1 parallel tasks:",
        "  02 - Configure database",
    ]
    assert cli(appendix, "deps", "auth-system", "04").out == (
        "=== Dependency Tree: auth-system/04 ===\n\n"
        "04 - Implement auth service [pending]\n"
        "  ├── ✓ 01 - Setup project structure [completed]\n"
        "  ├── ○ 02 - Configure database [pending]\n"
        "  └── ~ 03 - Install dependencies [in_progress]\n"
    )
    assert cli(appendix, "blocked").out == (
        "=== Blocked Tasks ===\n\n[auth-system]\n"
        "  04 - Implement auth service (waiting: 02, 03)\n\n"
    )


def test_titles_are_printed_verbatim(
    cli: Cli, make_feature: MakeFeature, subtask_data: SubtaskData
) -> None:
    title = "Add :smile: [bold]tabs[/bold]\there"
    root = make_feature([subtask_data("01", title=title)])
    assert f"  ○ 01 - {title} [pending]" in cli(root, "status").lines


def test_complete_prints_marked_summary_and_progress(cli: Cli, appendix: Path) -> None:
    result = cli(appendix, "complete", "auth-system", "02", "Configured", "Postgres")
    assert result.code == 0
    assert result.out == (
        "✓ Marked auth-system/02 as completed\n  Summary: Configured Postgres\n  Progress: 2/4\n"
    )
    data = json.loads((appendix / ".tmp/tasks/auth-system/subtask_02.json").read_bytes())
    assert data["status"] == "completed"
    assert data["completion_summary"] == "Configured Postgres"


def test_complete_accepts_an_unpadded_seq_and_prints_the_real_one(cli: Cli, appendix: Path) -> None:
    result = cli(appendix, "complete", "auth-system", "2", "done")
    assert result.lines[0] == "✓ Marked auth-system/02 as completed"
    as_json = cli(appendix, "complete", "auth-system", "3", "done", "--json")
    assert json.loads(as_json.out)["seq"] == "03"


def test_complete_refuses_an_unknown_or_odd_seq_on_one_line(cli: Cli, appendix: Path) -> None:
    before = snapshot(appendix)
    for seq in ("09", "²", "x"):
        result = cli(appendix, "complete", "auth-system", seq, "done")
        assert result.code == 2
        assert result.out == ""
        assert len(result.err.splitlines()) == 1
        assert f"no subtask {seq!r}" in result.err
    assert snapshot(appendix) == before


def test_completing_the_last_subtask_completes_the_feature(
    cli: Cli, make_feature: MakeFeature, subtask_data: SubtaskData
) -> None:
    root = make_feature([subtask_data("01"), subtask_data("02", status="completed")])
    assert cli(root, "complete", "feat", "01", "all", "done").lines[2] == "  Progress: 2/2"
    task = json.loads((root / ".tmp/tasks/feat/task.json").read_bytes())
    assert (task["status"], task["completed_count"]) == ("completed", 2)
    assert cli(root, "status").lines[1] == "  Status: completed | Progress: 100% (2/2)"


def test_progress_rounds_half_up(
    cli: Cli, make_feature: MakeFeature, subtask_data: SubtaskData
) -> None:
    subs = [
        subtask_data(f"{n:02d}", status="completed" if n == 1 else "pending") for n in range(1, 9)
    ]
    root = make_feature(subs)
    assert cli(root, "status").lines[1] == "  Status: active | Progress: 13% (1/8)"


def test_validate_passes_a_sound_feature(cli: Cli, appendix: Path) -> None:
    result = cli(appendix, "validate")
    assert (result.code, result.out) == (
        0,
        "=== Validation Results ===\n\n[auth-system]\n  ✓ All checks passed\n\n",
    )


def test_status_with_no_feature_says_so(cli: Cli, tmp_path: Path) -> None:
    (tmp_path / ".git").mkdir()
    assert cli(tmp_path, "status").out == "No active features found.\n"


# --- plan -----------------------------------------------------------------------------


@pytest.fixture
def diamond(make_feature: MakeFeature, subtask_data: SubtaskData) -> Path:
    return make_feature(
        [
            subtask_data("01", title="Schema"),
            subtask_data("02", title="Config"),
            subtask_data("03", title="Service", depends_on=["01", "02"]),
        ]
    )


def test_plan_previews_batches_with_reasons(cli: Cli, diamond: Path) -> None:
    result = cli(diamond, "plan", "feat")
    assert result.code == 0
    assert result.lines == [
        "Batch 1 (Ready now): 01, 02",
        "  01: ready now",
        "  02: ready now",
        "Batch 2 (After Batch 1): 03",
        "  03: after 01, 02",
    ]


def test_plan_json_and_mermaid(cli: Cli, diamond: Path) -> None:
    data = json.loads(cli(diamond, "plan", "feat", "--json").out)
    assert [b["seqs"] for b in data["batches"]] == [["01", "02"], ["03"]]
    mermaid = cli(diamond, "plan", "feat", "--mermaid").lines
    assert mermaid[0] == "graph TD"
    assert "  s01 --> s03" in mermaid
    assert "  s02 --> s03" in mermaid


def test_plan_splits_a_level_on_overlapping_deliverables(
    cli: Cli, make_feature: MakeFeature, subtask_data: SubtaskData
) -> None:
    root = make_feature(
        [
            subtask_data("01", deliverables=["src/"]),
            subtask_data("02", deliverables=["src/a.py"]),
        ]
    )
    lines = cli(root, "plan", "feat").lines
    assert lines[0] == "Batch 1 (Ready now): 01"
    assert "Batch 2 (After Batch 1): 02" in lines
    assert any("overlaps 01's src/" in line for line in lines)


@pytest.fixture
def ten_coders(make_feature: MakeFeature, subtask_data: SubtaskData) -> Path:
    root = make_feature([subtask_data(f"{n:02d}", agent="CoderAgent") for n in range(1, 11)])
    (root / "batchq.toml").write_text(
        '[agents.CoderAgent]\ncommand = "opencode run --prompt-file {prompt_file}"\n'
    )
    return root


def test_plan_warns_about_ten_coding_agents_in_one_batch_and_exits_0(
    cli: Cli, ten_coders: Path
) -> None:
    result = cli(ten_coders, "plan", "feat")
    assert result.code == 0
    assert result.lines[0] == "Batch 1 (Ready now): 01, 02, 03, 04, 05, 06, 07, 08, 09, 10"
    warning = result.lines[-1]
    assert warning.startswith("Warning: Batch 1 has 10 coding-agent subtasks")
    assert "optimal batch size 2–4 tasks, up to 8 if truly independent" in warning
    data = json.loads(cli(ten_coders, "plan", "feat", "--json").out)
    assert data["warnings"] == [warning.removeprefix("Warning: ")]


def test_max_batch_from_batchq_toml_or_the_environment_cuts_the_plan(
    cli: Cli, ten_coders: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    toml = ten_coders / "batchq.toml"
    toml.write_text("max_batch = 4\n" + toml.read_text())
    lines = cli(ten_coders, "plan", "feat").lines
    batches = [line for line in lines if line.startswith("Batch ")]
    assert batches == [
        "Batch 1 (Ready now): 01, 02, 03, 04",
        "Batch 2 (After Batch 1): 05, 06, 07, 08",
        "Batch 3 (After Batch 2): 09, 10",
    ]
    assert "  05: ready now; the previous batch is full (max_batch 4)" in lines
    assert not any(line.startswith("Warning:") for line in lines)
    monkeypatch.setenv("BATCHQ_MAX_BATCH", "5")
    data = json.loads(cli(ten_coders, "plan", "feat", "--json").out)
    assert [b["seqs"][0] for b in data["batches"]] == ["01", "06"]
    assert data["warnings"] == []


# --- --json on every command ------------------------------------------------------------


@pytest.mark.parametrize(
    "argv",
    [
        ["status"],
        ["status", "auth-system"],
        ["next"],
        ["parallel"],
        ["blocked"],
        ["deps", "auth-system", "04"],
        ["validate"],
        ["plan", "auth-system"],
        ["complete", "auth-system", "02", "Configured", "Postgres"],
        ["archive", "auth-system"],
    ],
)
def test_json_output_parses(cli: Cli, appendix: Path, argv: list[str]) -> None:
    result = cli(appendix, *argv, "--json")
    assert result.code == 0, result.err
    assert json.loads(result.out) is not None


def test_status_json_carries_counts_and_progress(cli: Cli, appendix: Path) -> None:
    [data] = json.loads(cli(appendix, "status", "--json").out)
    assert (data["completed"], data["total"], data["progress"]) == (1, 4, 25)
    assert [s["seq"] for s in data["subtasks"]] == ["01", "02", "03", "04"]


# --- archive ----------------------------------------------------------------------------


def test_archive_moves_the_feature_out_of_the_active_list(cli: Cli, appendix: Path) -> None:
    result = cli(appendix, "archive", "auth-system")
    assert result.out == "✓ Archived auth-system to .tmp/tasks/completed/auth-system\n"
    assert (appendix / ".tmp/tasks/completed/auth-system/task.json").is_file()
    assert not (appendix / ".tmp/tasks/auth-system").exists()
    assert cli(appendix, "status").out == "No active features found.\n"
    again = cli(appendix, "archive", "auth-system")
    assert again.code == 2
    assert "archived" in again.err


# --- deep chains ----------------------------------------------------------------------


def test_deps_json_of_a_chain_3000_deep(
    cli: Cli, make_feature: MakeFeature, subtask_data: SubtaskData
) -> None:
    depth = 3000
    subs = [
        subtask_data(f"{n:04d}", depends_on=[f"{n - 1:04d}"] if n > 1 else [])
        for n in range(1, depth + 1)
    ]
    root = make_feature(subs)
    result = cli(root, "deps", "feat", f"{depth:04d}", "--json")
    assert result.code == 0
    rows = json.loads(result.out)["dependencies"]
    assert len(rows) == depth - 1
    assert rows[-1] == {
        "seq": "0001",
        "parent": "0002",
        "depth": depth - 1,
        "title": "Subtask 0001",
        "status": "pending",
        "missing": False,
        "cycle": False,
        "repeated": False,
    }


# --- broken features (SPEC 1 and 2) -------------------------------------------------------


@dataclass
class Broken:
    subtasks: list[dict[str, Any]]
    file: str
    says: str
    extra_files: dict[str, dict[str, Any]] | None = None


def _broken(kind: str, sub: SubtaskData) -> Broken:
    if kind == "cycle":
        return Broken(
            [sub("01", depends_on=["02"]), sub("02", depends_on=["01"]), sub("03")],
            "subtask_01.json",
            "depends_on: cycle 01 -> 02 -> 01",
        )
    if kind == "unknown_dependency":
        return Broken(
            [sub("01"), sub("02", depends_on=["09"])], "subtask_02.json", "depends_on: '09'"
        )
    if kind == "self_dependency":
        return Broken(
            [sub("01"), sub("02", depends_on=["02"])], "subtask_02.json", "depends_on: '02'"
        )
    if kind == "duplicate_seq":
        return Broken(
            [sub("01"), sub("02")],
            "subtask_01.json",
            "seq: '01' is used by both",
            extra_files={"subtask_001.json": sub("01", title="Twin")},
        )
    if kind == "protected_deliverable":
        return Broken(
            [sub("01", deliverables=["config/.env.local"])],
            "subtask_01.json",
            "deliverables[0]: 'config/.env.local' is protected",
        )
    if kind == "escaping_deliverable":
        return Broken(
            [sub("01", deliverables=["src/../../x.py"])], "subtask_01.json", "deliverables[0]"
        )
    assert kind == "absolute_deliverable"
    return Broken([sub("01", deliverables=["/etc/passwd"])], "subtask_01.json", "deliverables[0]")


BROKEN = [
    "cycle",
    "unknown_dependency",
    "self_dependency",
    "duplicate_seq",
    "protected_deliverable",
    "escaping_deliverable",
    "absolute_deliverable",
]


@pytest.fixture(params=BROKEN)
def broken(
    request: pytest.FixtureRequest, make_feature: MakeFeature, subtask_data: SubtaskData
) -> Iterator[tuple[Path, Broken]]:
    case = _broken(request.param, subtask_data)
    root = make_feature(case.subtasks)
    for name, data in (case.extra_files or {}).items():
        path = root / ".tmp/tasks/feat" / name
        path.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")
    before = snapshot(root)
    yield root, case
    assert snapshot(root) == before, "a command changed the files of a broken feature"


@pytest.mark.parametrize(
    "argv", [["plan", "feat"], ["run", "feat"], ["batch", "feat", "01"], ["plan", "feat", "--json"]]
)
def test_scheduling_commands_refuse_a_broken_feature_on_one_line(
    cli: Cli, broken: tuple[Path, Broken], argv: list[str]
) -> None:
    root, case = broken
    result = cli(root, *argv)
    assert result.code == 2
    assert result.out == ""
    [line] = result.err.splitlines()
    assert line.startswith("error: ")
    assert case.file in line
    assert case.says in line


def test_validate_reports_a_broken_feature(cli: Cli, broken: tuple[Path, Broken]) -> None:
    root, case = broken
    result = cli(root, "validate", "feat")
    assert result.code == 2
    assert result.lines[:3] == ["=== Validation Results ===", "", "[feat]"]
    errors = [line for line in result.lines if line.startswith("  ✗ ERROR: ")]
    assert any(case.file in line and case.says in line for line in errors), result.out
    assert json.loads(cli(root, "validate", "feat", "--json").out)["feat"]["ok"] is False


@pytest.mark.parametrize(
    ("argv", "first"),
    [
        (["status", "feat"], "[feat] Feature feat"),
        (["status"], "[feat] Feature feat"),
        (["next", "feat"], "=== Ready Tasks (deps satisfied) ==="),
        (["parallel", "feat"], "=== Parallelizable Tasks Ready Now ==="),
        (["blocked", "feat"], "=== Blocked Tasks ==="),
        (["deps", "feat", "01"], "=== Dependency Tree: feat/01 ==="),
    ],
)
def test_read_only_views_print_their_output_then_name_the_problem(
    cli: Cli, broken: tuple[Path, Broken], argv: list[str], first: str
) -> None:
    root, case = broken
    result = cli(root, *argv)
    assert result.code == 0, result.err
    assert result.lines[0] == first
    warned = [i for i, line in enumerate(result.lines) if line.startswith("  ⚠ ")]
    assert warned, result.out
    assert any(case.file in result.lines[i] and case.says in result.lines[i] for i in warned)
    assert warned[0] > 0
    assert json.loads(cli(root, *argv, "--json").out) is not None


@pytest.fixture
def malformed(make_feature: MakeFeature, subtask_data: SubtaskData) -> Iterator[Path]:
    root = make_feature([subtask_data("01"), subtask_data("02")])
    make_feature([subtask_data("01")], name="good", root=root)
    (root / ".tmp/tasks/feat/subtask_02.json").write_text('{"id": "feat-02", "seq": ', "utf-8")
    before = snapshot(root)
    yield root
    assert snapshot(root) == before


@pytest.mark.parametrize(
    "argv",
    [
        ["status", "feat"],
        ["next", "feat"],
        ["parallel", "feat"],
        ["blocked", "feat"],
        ["deps", "feat", "01"],
        ["validate", "feat"],
        ["plan", "feat"],
        ["run", "feat"],
        ["batch", "feat", "01"],
        ["complete", "feat", "01", "done"],
        ["archive", "feat"],
        ["status", "feat", "--json"],
    ],
)
def test_malformed_json_stops_every_command_for_the_feature(
    cli: Cli, malformed: Path, argv: list[str]
) -> None:
    result = cli(malformed, *argv)
    assert result.code == 2
    reported = [
        line for line in (result.out + result.err).splitlines() if "subtask_02.json" in line
    ]
    assert len(reported) == 1
    assert "malformed JSON at line 1" in reported[0]


def test_a_malformed_feature_does_not_hide_the_others_but_still_fails(
    cli: Cli, malformed: Path
) -> None:
    result = cli(malformed, "status")
    assert result.code == 2
    assert result.lines[0] == "[good] Feature good"
    [line] = result.err.splitlines()
    assert "subtask_02.json" in line


def test_an_error_message_is_printed_on_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    error_line("subtask_01.json: title: bad\nsecond line\r\nthird\u2028fourth")
    assert capsys.readouterr().err == (
        "error: subtask_01.json: title: bad second line third fourth\n"
    )


# --- changed (fingerprint resume, read-only) -------------------------------------------


NO_FINGERPRINT = "no fingerprint recorded (completed before fingerprints or by hand)"


def test_changed_lists_subtasks_completed_without_a_fingerprint(cli: Cli, appendix: Path) -> None:
    result = cli(appendix, "changed", "auth-system")
    assert result.code == 0
    assert result.lines[0] == f"↻ 01 reruns: {NO_FINGERPRINT}"
    data = json.loads(cli(appendix, "changed", "auth-system", "--json").out)
    assert data == {"feature": "auth-system", "reruns": {"01": [NO_FINGERPRINT]}}


def test_changed_of_a_feature_with_nothing_completed_lists_nothing(
    cli: Cli, make_feature: MakeFeature, subtask_data: SubtaskData
) -> None:
    root = make_feature([subtask_data("01", command="true")])
    result = cli(root, "changed", "feat")
    assert (result.code, result.out) == (
        0,
        "Nothing changed: every completed subtask of feat is up to date.\n",
    )


def test_changed_of_an_unknown_feature_exits_2_with_a_message(cli: Cli, appendix: Path) -> None:
    result = cli(appendix, "changed", "nope")
    assert result.code == 2 and "unknown feature 'nope'" in result.err
