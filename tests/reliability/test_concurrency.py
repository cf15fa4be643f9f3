"""Many orchestrators at once: 20 batches from 4 features, each feature run by its own
``batchq run`` process, against 2 workers. No cross-talk in state or reports; a
second ``batchq run`` of a feature that is already running is refused."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from batchq import procs
from batchq.files.taskfiles import load_feature
from batchq.models import BatchReport, feature_key
from batchq.store.state import wait_until
from tests.reliability.faults import REPO_ROOT, client_for

pytestmark = pytest.mark.reliability

LEVELS = 5  # batches per feature: 4 features x 5 = 20 batches
ENV = {"BATCHQ_SHELL_ALLOW": "*"}


def _feature(make_feature: Any, subtask_data: Any, root: Path, name: str, first: int) -> set[str]:
    """``LEVELS`` batches of two subtasks each, seqs from ``first``: every feature has
    its own seqs, so a report naming another feature's seq is cross-talk."""
    subtasks, previous = [], []
    for level in range(LEVELS):
        pair = [f"{first + 2 * level + i:02d}" for i in range(2)]
        for seq in pair:
            label = f"{root.name}/{name}/{seq}"
            command = f"mkdir -p out && echo {label} > out/{seq}.txt && echo wrote {label}"
            if name == "alpha" and seq == f"{first:02d}" and root.name == "one":
                # Holds alpha's first batch until the test has tried a second run.
                command = (
                    "for i in $(seq 600); do [ -f release ] && break; sleep 0.2; done; " + command
                )
            subtasks.append(
                subtask_data(seq, command=command, depends_on=previous, title=f"{name} {seq}")
            )
        previous = pair
    make_feature(subtasks, name=name, root=root)
    return {s["seq"] for s in subtasks}


def _batchq(args: list[str], url: str, log: Path) -> procs.Child:
    env = {**os.environ, **ENV, "BATCHQ_REDIS_URL": url}
    return procs.spawn([sys.executable, "-m", "batchq", *args], log, env=env, cwd=REPO_ROOT)


def test_twenty_batches_from_four_orchestrators_complete_without_cross_talk(
    redis_target, start_worker, make_feature, subtask_data, tmp_path
):
    url = redis_target.url
    for _ in range(2):
        start_worker(url, env=ENV, concurrency=2, wait=False)
    one, two = tmp_path / "one", tmp_path / "two"
    features = {
        (one, "alpha"): _feature(make_feature, subtask_data, one, "alpha", 1),
        (one, "beta"): _feature(make_feature, subtask_data, one, "beta", 11),
        (one, "gamma"): _feature(make_feature, subtask_data, one, "gamma", 21),
        # Same name, other checkout: its state must not mix with one/alpha's.
        (two, "alpha"): _feature(make_feature, subtask_data, two, "alpha", 31),
    }
    runs = {
        key: _batchq(
            ["run", key[1], "--root", str(key[0]), "--json"],
            url,
            tmp_path / f"{key[0].name}-{key[1]}.log",
        )
        for key in features
    }
    client = client_for(redis_target.redis_py_url)
    try:
        lock = f"batchq:lock:{feature_key('alpha', one)}"
        assert wait_until(lambda: client.exists(lock) == 1, 120, 0.1), "alpha never started"
        second = subprocess.run(
            [sys.executable, "-m", "batchq", "run", "alpha", "--root", str(one)],
            env={**os.environ, **ENV, "BATCHQ_REDIS_URL": url},
            cwd=REPO_ROOT,
            capture_output=True,
            text=True,
            timeout=120,
        )
        (one / "release").write_text("go")
        assert second.returncode == 2, (second.stdout, second.stderr)
        assert "already being run" in second.stderr

        for key, child in runs.items():
            code = child.wait(240)
            assert code == 0, f"{key}: exit {code}\n{child.read_log()[-3000:]}"

        run_ids: dict[tuple[Path, str], str] = {}
        for (root, name), seqs in features.items():
            feature = load_feature(root, name)
            assert {s.seq for s in feature.subtasks} == seqs
            assert {s.status.value for s in feature.subtasks} == {"completed"}
            reports = [
                BatchReport.model_validate_json(p.read_text())
                for p in sorted((feature.state_dir / "reports").glob("*.json"))
            ]
            assert len(reports) == LEVELS
            assert len({r.run_id for r in reports}) == 1
            run_ids[(root, name)] = reports[0].run_id
            for report in reports:
                assert report.feature == name and report.ok and report.discrepancies == []
                named = {r.seq for r in report.results} | set(report.missing)
                assert named <= seqs, f"{name} report names {named - seqs}"
                assert all(r.run_id == report.run_id for r in report.results)
                assert all(r.title.startswith(f"{name} ") for r in report.results)
            for seq in seqs:
                label = (root / "out" / f"{seq}.txt").read_text().strip()
                assert label == f"{root.name}/{name}/{seq}"
            # Redis holds state for exactly this run's own seqs.
            keys = client.keys(f"batchq:sub:{run_ids[(root, name)]}:*")
            assert {k.rsplit(":", 1)[1] for k in keys} == seqs
            events = client.xrange(f"batchq:events:{run_ids[(root, name)]}")
            assert {f["seq"] for _id, f in events if f.get("seq")} <= seqs
        assert len(set(run_ids.values())) == len(features)
    finally:
        (one / "release").write_text("go")
        client.close()
        for child in runs.values():
            child.terminate(5.0)
