"""batchq: run batches of subtask delegations in parallel on Celery workers.

The typed Python API the CLI is built on. Loading, validating and planning never
touch Celery or Redis. Every name is imported on first use (PEP 562): ``import
batchq`` costs nothing, which keeps every ``batchq`` command's start-up (the package
is imported before its CLI) down to what that command needs.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
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
    from batchq.local.connection import Connection, connect
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
    from batchq.run.orchestrator import Orchestrator, RunOptions, RunResult
    from batchq.settings import Settings, load_settings

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

_MODULES = {
    "batchq.core.planner": ("check_batch", "plan", "plan_for", "validate"),
    "batchq.errors": (
        "BatchqError",
        "BrokerUnavailable",
        "ExecutionFailed",
        "InfrastructureError",
        "InputError",
        "LockedError",
        "PlanError",
        "PolicyError",
        "SpecError",
        "UnsafeBatchError",
        "UsageError",
    ),
    "batchq.files.taskfiles": ("complete_subtask", "find_root", "list_features", "load_feature"),
    "batchq.local.connection": ("Connection", "connect"),
    "batchq.models": (
        "BatchReport",
        "FailurePolicy",
        "Feature",
        "Plan",
        "PlannedBatch",
        "ResultState",
        "RunMode",
        "Subtask",
        "SubtaskResult",
        "SubtaskStatus",
        "UndeclaredWrite",
        "WriteCheck",
    ),
    "batchq.run.orchestrator": ("Orchestrator", "RunOptions", "RunResult"),
    "batchq.settings": ("Settings", "load_settings"),
}
_LAZY = {name: module for module, names in _MODULES.items() for name in names}


def __getattr__(name: str) -> Any:
    """Import a public name's module when the name is first asked for."""
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'batchq' has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # the next access is a plain attribute
    return value
