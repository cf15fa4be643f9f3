"""batchq: run batches of subtask delegations in parallel on Celery workers.

The typed Python API the CLI is built on. Loading, validating and planning never
touch Celery or Redis; the names that do (``Orchestrator``, ``connect``) are imported
on first use, so ``import batchq`` stays cheap for tools that only read task files.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from batchq.core.planner import check_batch, plan, plan_for, validate
from batchq.errors import (
    BatchqError,
    BrokerUnavailable,
    ExecutionFailed,
    InfrastructureError,
    InputError,
    LockedError,
    PlanError,
    PolicyError,
    SpecError,
    UnsafeBatchError,
    UsageError,
)
from batchq.files.taskfiles import complete_subtask, find_root, list_features, load_feature
from batchq.models import (
    BatchReport,
    FailurePolicy,
    Feature,
    Plan,
    PlannedBatch,
    ResultState,
    RunMode,
    Subtask,
    SubtaskResult,
    SubtaskStatus,
    UndeclaredWrite,
    WriteCheck,
)
from batchq.settings import Settings, load_settings

if TYPE_CHECKING:
    from batchq.local.connection import Connection, connect
    from batchq.run.orchestrator import Orchestrator, RunOptions, RunResult

__all__ = [
    "BatchReport",
    "BatchqError",
    "BrokerUnavailable",
    "Connection",
    "ExecutionFailed",
    "FailurePolicy",
    "Feature",
    "InfrastructureError",
    "InputError",
    "LockedError",
    "Orchestrator",
    "Plan",
    "PlanError",
    "PlannedBatch",
    "PolicyError",
    "ResultState",
    "RunMode",
    "RunOptions",
    "RunResult",
    "Settings",
    "SpecError",
    "Subtask",
    "SubtaskResult",
    "SubtaskStatus",
    "UndeclaredWrite",
    "UnsafeBatchError",
    "UsageError",
    "WriteCheck",
    "check_batch",
    "complete_subtask",
    "connect",
    "find_root",
    "list_features",
    "load_feature",
    "load_settings",
    "plan",
    "plan_for",
    "validate",
]

_LAZY = {
    "Connection": "batchq.local.connection",
    "connect": "batchq.local.connection",
    "Orchestrator": "batchq.run.orchestrator",
    "RunOptions": "batchq.run.orchestrator",
    "RunResult": "batchq.run.orchestrator",
}


def __getattr__(name: str) -> Any:
    """Import the execution side (Celery, Redis) only when it is asked for."""
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'batchq' has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(module), name)
