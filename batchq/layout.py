"""The on-disk layout, spelled once: where features, task files and batchq's own state
live under a project root.

```
<root>/batchq.toml                         settings (committed)
<root>/.tmp/tasks/<feature>/task.json      the feature's header
<root>/.tmp/tasks/<feature>/subtask_NN.json one file per subtask
<root>/.tmp/tasks/<feature>/.batchq/lock   the per-feature flock
                  .batchq/orchestrator.lock  held by the run's orchestrator
                  .batchq/runs/<run>.token the run token workers check
                  .batchq/runs/<run>.json  when and how the run started (`batchq runs`)
                  .batchq/logs/<run>/<seq>.log  an agent's full output
                  .batchq/reports/         saved batch reports
<root>/.tmp/batchq/stack.json              the `batchq up` stack record
```

Pure path arithmetic: nothing here touches the file system.
"""

from __future__ import annotations

from pathlib import Path

__all__ = [
    "ALWAYS_PROTECTED",
    "CONFIG_FILE",
    "DEFAULT_PROTECTED",
    "LOCK_NAME",
    "STACK_FILE",
    "STATE_DIR",
    "TASKS_DIR",
    "TASK_FILE",
    "lock_file",
    "log_file",
    "orchestrator_lock",
    "reports_dir",
    "run_record",
    "runs_dir",
    "state_dir",
    "subtask_file",
    "subtask_relpath",
    "token_file",
]

CONFIG_FILE = "batchq.toml"
TASKS_DIR = Path(".tmp") / "tasks"
"""Root-relative folder of every feature folder."""
TASK_FILE = "task.json"
STATE_DIR = ".batchq"
"""batchq's own folder inside each feature folder."""
LOCK_NAME = "lock"
STACK_FILE = Path(".tmp") / "batchq" / "stack.json"
"""Root-relative record of a running ``batchq up`` stack."""

ALWAYS_PROTECTED: tuple[str, ...] = (".git/", "batchq.toml", ".tmp/tasks/")
"""Joined to every configured list: git's folder (hooks run code for whoever uses the
repository next), batchq's settings (the allow-lists) and the task files (an agent
could enqueue work or mark itself done). Never deliverables, never read into prompts."""
DEFAULT_PROTECTED: tuple[str, ...] = (
    *ALWAYS_PROTECTED,
    "node_modules/",
    "*.env*",
    "*.key",
    "*.secret",
)


def subtask_file(seq: str) -> str:
    """The file name of subtask ``seq`` inside its feature folder."""
    return f"subtask_{seq}.json"


def subtask_relpath(feature: str, seq: str) -> str:
    """Subtask ``seq``'s file relative to the project root, as a prompt names it."""
    return (TASKS_DIR / feature / subtask_file(seq)).as_posix()


def state_dir(feature_path: Path) -> Path:
    return feature_path / STATE_DIR


def lock_file(feature_path: Path) -> Path:
    return state_dir(feature_path) / LOCK_NAME


def orchestrator_lock(feature_path: Path) -> Path:
    """Held (``flock``) by the one orchestrator running the feature; names it inside."""
    return state_dir(feature_path) / "orchestrator.lock"


def runs_dir(feature_path: Path) -> Path:
    return state_dir(feature_path) / "runs"


def token_file(feature_path: Path, run_id: str) -> Path:
    """The run token: written by the producer, checked by workers before they run."""
    return runs_dir(feature_path) / f"{run_id}.token"


def run_record(feature_path: Path, run_id: str) -> Path:
    """When and how a run started: read by ``batchq runs`` after Redis forgot it."""
    return runs_dir(feature_path) / f"{run_id}.json"


def log_file(feature_path: Path, run_id: str, seq: str) -> Path:
    """An agent's full output for one run of one subtask."""
    return state_dir(feature_path) / "logs" / run_id / f"{seq}.log"


def reports_dir(feature_path: Path) -> Path:
    return state_dir(feature_path) / "reports"
