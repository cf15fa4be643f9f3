"""Every coding-agent preset, run for real: ``batchq run`` (embedded Redis, real
workers, the CLI agent path, the sandbox) with a fake executable per preset name first
on PATH. Each fake records its argv and writes the deliverables its prompt lists."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from batchq.files.taskfiles import load_feature
from batchq.presets import PRESETS
from tests.conftest import MakeFeature, subtask

pytestmark = pytest.mark.integration

REPO_ROOT = Path(__file__).resolve().parents[2]
FAKE = REPO_ROOT / "tests" / "fakeagents" / "fake_agent.py"
AGENTS = {name: f"{name.capitalize()}Coder" for name in PRESETS}


def _install_fakes(root: Path) -> Path:
    """One executable per preset name, inside the workspace (the sandbox hides the
    rest of /tmp, as it would hide a CLI installed there)."""
    bin_dir = root / "fakebin"
    bin_dir.mkdir()
    body = FAKE.read_text(encoding="utf-8")
    for name in PRESETS:
        path = bin_dir / name
        path.write_text(f"#!{sys.executable}\n{body}", encoding="utf-8")
        path.chmod(path.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
    return bin_dir


def test_each_preset_runs_its_cli_with_the_rendered_prompt(make_feature: MakeFeature) -> None:
    names = sorted(PRESETS)
    root = make_feature(
        [
            subtask(
                f"{i:02d}",
                title=f"Write the {name} note",
                agent=AGENTS[name],
                deliverables=[f"notes/{name}.txt"],
            )
            for i, name in enumerate(names, start=1)
        ]
    )
    tables = "".join(f'[agents.{AGENTS[n]}]\npreset = "{n}"\n\n' for n in names)
    (root / "batchq.toml").write_text(tables, encoding="utf-8")
    bin_dir = _install_fakes(root)
    env = {
        **os.environ,
        "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}",
        "PYTHONPATH": str(REPO_ROOT),
        "ANTHROPIC_API_KEY": "test-anthropic",
        "OPENAI_API_KEY": "test-openai",
        "GEMINI_API_KEY": "test-gemini",
        "UNLISTED_API_KEY": "must-not-reach-an-agent",
    }
    done = subprocess.run(
        [sys.executable, "-m", "batchq", "run", "feat", "--json", "--root", str(root)],
        cwd=root,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stdout + done.stderr

    feature = load_feature(root, "feat")
    assert feature.completed_count == len(names)
    for i, name in enumerate(names, start=1):
        seq = f"{i:02d}"
        assert (root / "notes" / f"{name}.txt").read_text() == f"written by fake {name}\n"
        logs = root / ".tmp" / "tasks" / "feat" / ".batchq" / "logs"
        [record_path] = logs.rglob(f"{seq}.prompt.md.{name}.json")
        record = json.loads(record_path.read_text())
        prompt_file = str(record_path)[: -len(f".{name}.json")]
        assert f"Write the {name} note" in record["prompt"]
        assert "- `notes/" + name + ".txt`" in record["prompt"]
        assert Path(record["cwd"]) == root
        assert "UNLISTED_API_KEY" not in record["env"]
        expected_keys = {k for k in PRESETS[name].env if k in env and k.endswith("_API_KEY")}
        assert set(record["env"]) == expected_keys
        argv = record["argv"]
        if name == "opencode":
            assert argv[:2] == ["run", "Carry out the task described in the attached file."]
            assert record["source"] == f"--file {prompt_file}"
        elif name == "aider":
            assert argv == ["--message-file", prompt_file, "--yes-always", "--no-auto-commits"]
        elif name == "codex":
            assert argv == ["exec", "--sandbox", "workspace-write", "--skip-git-repo-check", "-"]
            assert record["source"] == "stdin"
        elif name == "claude":
            assert argv[:3] == ["-p", "--permission-mode", "acceptEdits"]
            assert record["source"] == "stdin"
        else:
            assert argv[:2] == ["--approval-mode", "auto_edit"]
            assert argv[2] == "-p"
            assert record["source"] == "stdin"
