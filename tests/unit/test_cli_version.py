"""``batchq --version``: the installed version, and no command machinery to print it."""

from __future__ import annotations

import os
import subprocess
import sys
from importlib.metadata import version

import pytest

from batchq.cli.main import main as full_main

EXPECTED = f"batchq {version('batchq')}"


def test_the_typer_option_prints_the_installed_version(
    capsys: pytest.CaptureFixture[str],
) -> None:
    with pytest.raises(SystemExit) as exc:
        full_main(["--version"])
    assert exc.value.code == 0
    assert capsys.readouterr().out.strip() == EXPECTED


def test_the_console_script_is_the_fast_entry_point() -> None:
    import tomllib
    from pathlib import Path

    pyproject = Path(__file__).resolve().parents[2] / "pyproject.toml"
    scripts = tomllib.loads(pyproject.read_text())["project"]["scripts"]
    assert scripts["batchq"] == "batchq.entry:main"


def test_the_entry_point_answers_before_importing_typer_or_pydantic() -> None:
    script = (
        "import sys\n"
        "from batchq.entry import main\n"
        "try:\n"
        "    main(['--version'])\n"
        "except SystemExit as exc:\n"
        "    assert exc.code == 0\n"
        "loaded = [m for m in ('typer', 'rich', 'pydantic', 'celery') if m in sys.modules]\n"
        "print('LOADED=' + ','.join(loaded))\n"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("BATCHQ_")}
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=120, env=env
    )
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0] == EXPECTED
    assert lines[-1] == "LOADED="


def test_version_with_a_command_still_goes_through_the_cli(
    capsys: pytest.CaptureFixture[str],
) -> None:
    from batchq.entry import main

    with pytest.raises(SystemExit) as exc:
        main(["--version", "status"])
    assert exc.value.code == 0  # the eager option wins, as click's --version does
    assert capsys.readouterr().out.strip() == EXPECTED
