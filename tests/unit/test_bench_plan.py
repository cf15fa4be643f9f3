"""Keep ``bench/plan.py`` runnable: run it at a tiny size (no timing assertions)."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType

import pytest

from batchq.core import planner

BENCH = Path(__file__).resolve().parents[2] / "bench" / "plan.py"


def load_bench() -> ModuleType:
    spec = importlib.util.spec_from_file_location("bench_plan", BENCH)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_plan_bench_runs_at_a_tiny_size(capsys: pytest.CaptureFixture[str]) -> None:
    assert load_bench().main(["--sizes", "5,120", "--repeat", "1"]) == 0
    out = capsys.readouterr().out
    assert "validate+plan" in out
    assert "120" in out


def test_the_bench_builds_valid_features_with_wide_seqs() -> None:
    feat = load_bench().make_feature(150, seed=3)
    assert planner.problems(feat) == []
    assert feat.subtasks[0].seq == "001"
    assert planner.plan(feat).batches
