"""Fuzzing the loader, the planner and the CLI views with arbitrary task files.

Whatever JSON (or bytes) sits in ``task.json`` and ``subtask_NN.json``, batchq may
refuse it only with a :class:`~batchq.errors.BatchqError`, and no command may end in
a traceback. The hypothesis profile (``deadline=None``) comes from tests/conftest.py.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import tempfile
from pathlib import Path
from typing import Any
from unittest import mock

import pytest
from hypothesis import given
from hypothesis import strategies as st

from batchq.cli import views
from batchq.cli.main import main
from batchq.core import planner
from batchq.errors import BatchqError
from batchq.files.taskfiles import load_feature

SEQS = ["01", "02", "03", "04", "001", "1", "", "x1", "٠١"]
PATHS = [
    "src/",
    "src/a.py",
    "./a",
    "a",
    "a//b/",
    "/abs/path",
    "../up",
    "src/../../out",
    ".env",
    "config/.env.local",
    "node_modules/x",
    ".git/config",
    "k.key",
    "",
    ".",
    "~/home",
    "C:\\win",
    "é/ü.txt",
]
SAFE = ["out/a.txt", "src/", "src/a.py", "./a", "a", "docs/x.md"]

scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(10**20), max_value=10**20)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=12)
    | st.sampled_from(SEQS + PATHS)
)
values = st.recursive(
    scalars,
    lambda inner: (
        st.lists(inner, max_size=4)
        | st.dictionaries(
            st.text(max_size=8) | st.sampled_from(["path", "lines"]), inner, max_size=4
        )
    ),
    max_leaves=10,
)
file_refs = st.lists(
    st.sampled_from(PATHS)
    | st.fixed_dictionaries(
        {"path": st.sampled_from(PATHS)}, optional={"lines": st.text(max_size=6), "reason": values}
    ),
    max_size=3,
)
executions = st.fixed_dictionaries(
    {},
    optional={
        "command": st.text(max_size=20) | values,
        "callable": st.sampled_from(["pkg.mod:fn", "os:system", "bad", ""]) | values,
        "verify": st.text(max_size=10),
        "timeout_s": st.integers(-5, 10**9) | st.floats(allow_nan=False) | values,
        "retries": st.integers(-3, 30) | values,
        "estimate_s": values,
        "env": st.dictionaries(st.sampled_from(["PATH", "LD_X", "MODE", "A"]), values, max_size=2),
    },
)
SUBTASK_FIELDS: dict[str, st.SearchStrategy[Any]] = {
    "id": st.text(max_size=10) | values,
    "seq": st.sampled_from(SEQS) | values,
    "title": st.text(max_size=15) | values,
    "status": st.sampled_from(["pending", "in_progress", "completed", "blocked", "done"]) | values,
    "depends_on": st.lists(st.sampled_from(SEQS), max_size=4) | values,
    "parallel": st.booleans() | values,
    "suggested_agent": st.sampled_from(["shell", "python", "CoderAgent", None]) | values,
    "context_files": file_refs | values,
    "reference_files": file_refs | values,
    "acceptance_criteria": st.lists(st.text(max_size=8), max_size=2) | values,
    "deliverables": st.lists(st.sampled_from(PATHS), max_size=3) | values,
    "completion_summary": st.text(max_size=300) | values,
    "execution": executions | values,
    "batchq": st.fixed_dictionaries(
        {"result": st.sampled_from(["completed", "failed", "timed_out", "cancelled", "x"])},
        optional={"error": st.text(max_size=30) | values, "attempts": values},
    )
    | values,
}
TASK_FIELDS: dict[str, st.SearchStrategy[Any]] = {
    "id": st.just("feat") | values,
    "name": st.text(max_size=15) | values,
    "status": st.sampled_from(["active", "completed", "blocked", "archived", "x"]) | values,
    "context_files": file_refs | values,
    "reference_files": file_refs | values,
    "subtask_count": st.integers(-1, 5) | values,
    "completed_count": st.integers(-1, 5) | values,
}


# Hypothesis favours the first element of sampled_from: mostly keep a field as it is,
# so that many features load and the planner and views get exercised too.
CHANGE = st.sampled_from(["keep"] * 30 + ["drop", "replace"])
GARBAGE = st.sampled_from([False] * 15 + [True])


def _document(fields: dict[str, st.SearchStrategy[Any]], sound: dict[str, Any]) -> Any:
    """A document near the sound one: each field kept, dropped or replaced."""

    @st.composite
    def build(draw: st.DrawFn) -> dict[str, Any]:
        doc = dict(sound)
        for key, strategy in fields.items():
            choice = draw(CHANGE)
            if choice == "drop":
                doc.pop(key, None)
            elif choice == "replace":
                doc[key] = draw(strategy)
        return doc

    return build()


def _sound_subtask(seq: str) -> dict[str, Any]:
    return {
        "id": f"feat-{seq}",
        "seq": seq,
        "title": f"Subtask {seq}",
        "status": "pending",
        "depends_on": [],
        "parallel": True,
        "acceptance_criteria": ["done"],
        "deliverables": [f"out/{seq}.txt"],
    }


contents = st.one_of(
    st.builds(lambda v: json.dumps(v).encode(), values),
    st.binary(max_size=40),
    st.just(b'{"id": "feat", "seq": '),
)


@st.composite
def features(draw: st.DrawFn) -> dict[str, bytes]:
    """File name -> bytes of one feature folder."""
    files: dict[str, bytes] = {}
    sound_task = {"id": "feat", "name": "Feature", "status": "active"}
    if draw(GARBAGE):
        files["task.json"] = draw(contents)
    else:
        files["task.json"] = json.dumps(draw(_document(TASK_FIELDS, sound_task))).encode()
    for name in draw(st.lists(st.sampled_from(SEQS[:6]), min_size=1, max_size=5, unique=True)):
        if draw(GARBAGE):
            files[f"subtask_{name}.json"] = draw(contents)
        else:
            sound = _sound_subtask(name.zfill(2))
            sound["depends_on"] = draw(st.lists(st.sampled_from(SEQS[:4]), max_size=3))
            sound["deliverables"] = draw(st.lists(st.sampled_from(SAFE), min_size=1, max_size=2))
            sound["status"] = draw(
                st.sampled_from(["pending", "completed", "in_progress", "blocked"])
            )
            sound["parallel"] = draw(st.booleans())
            doc = draw(_document(SUBTASK_FIELDS, sound))
            text = json.dumps(doc, indent=draw(st.sampled_from([None, 2])), ensure_ascii=False)
            files[f"subtask_{name}.json"] = text.encode()
    return files


def _write(base: str, files: dict[str, bytes]) -> Path:
    root = Path(base)
    (root / ".git").mkdir()
    folder = root / ".tmp" / "tasks" / "feat"
    folder.mkdir(parents=True)
    for name, data in files.items():
        (folder / name).write_bytes(data)
    return root


@given(features())
def test_loader_and_planner_raise_only_batchq_errors(files: dict[str, bytes]) -> None:
    with tempfile.TemporaryDirectory() as base:
        root = _write(base, files)
        try:
            feature = load_feature(root, "feat")
        except BatchqError:
            return
        problems = planner.problems(feature)
        try:
            schedule = planner.plan(feature)
        except BatchqError:
            assert problems, "plan refused a feature without problems"
        else:
            assert not problems
            planner.mermaid(schedule, feature)
        seqs = [sub.seq for sub in feature.subtasks]
        for batch in (seqs, [*seqs, "99", *seqs[:1]], seqs[:1]):
            with contextlib.suppress(BatchqError):
                planner.check_batch(feature, batch)
        planner.ready(feature)
        planner.blocked_view(feature)
        views.format_status(feature, problems)
        views.format_next([(feature, problems)])
        views.format_blocked([(feature, problems)])
        for seq in dict.fromkeys(seqs):
            views.format_deps(feature, seq, problems)


def _run(*argv: str) -> tuple[int, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            main(list(argv))
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else 1
        else:
            code = 0
    return code, out.getvalue() + err.getvalue()


@pytest.mark.slow
@given(features())
def test_cli_views_never_traceback(files: dict[str, bytes]) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("BATCHQ_")}
    seq = next((n[8:-5] for n in sorted(files) if n.startswith("subtask_")), "01")
    with tempfile.TemporaryDirectory() as base, mock.patch.dict(os.environ, env, clear=True):
        root = _write(base, files)
        before = {p: p.read_bytes() for p in root.rglob("*.json")}
        for argv in (
            ["status"],
            ["status", "feat", "--json"],
            ["next", "feat"],
            ["parallel"],
            ["parallel", "feat", "--json"],
            ["blocked", "feat"],
            ["deps", "feat", seq],
            ["deps", "feat", seq, "--json"],
            ["validate", "feat"],
            ["plan", "feat"],
            ["plan", "feat", "--mermaid"],
        ):
            code, output = _run(*argv, "--root", str(root))
            assert code in (0, 2), (argv, code, output)
            assert "Traceback" not in output
            if "--json" in argv and code == 0:
                json.loads(output)
        assert {p: p.read_bytes() for p in root.rglob("*.json")} == before
