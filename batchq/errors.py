"""One exception tree for everything batchq refuses or cannot do.

The CLI catches :class:`BatchqError` once and exits with the error's ``exit_code``;
the Python API raises the same classes, so callers can branch on the type and read
the context attributes instead of parsing messages::

    BatchqError                      exit_code
    ├── InputError                   2   the user can fix the input and retry
    │   ├── SpecError(path, field)       a task file is malformed
    │   ├── PlanError(problems)          cycle, unknown/self dependency, duplicate seq
    │   ├── UnsafeBatchError(violations) an explicit batch fails the safety check
    │   ├── PolicyError(subject)         agent unknown, command or module not allowed
    │   ├── UsageError                   bad arguments, unknown feature or seq
    │   └── LockedError(holder)          another orchestrator runs this feature
    ├── ExecutionFailed(report)      1   a subtask or batch failed
    ├── RunCancelled                 4   nothing failed, but the run was cancelled
    └── InfrastructureError          3   Redis, the broker or a worker is unreachable
        └── BrokerUnavailable(url)       the URL is stored with its password masked
"""

from __future__ import annotations

import shlex
from collections.abc import Sequence
from pathlib import Path
from typing import Any

__all__ = [
    "BatchqError",
    "BrokerUnavailable",
    "ExecutionFailed",
    "InfrastructureError",
    "InputError",
    "LockedError",
    "PlanError",
    "PolicyError",
    "RunCancelled",
    "SpecError",
    "UnsafeBatchError",
    "UsageError",
    "mask_url",
]


def mask_url(url: str) -> str:
    """Hide the password of a URL so it can be printed or logged, whatever the URL
    holds: the user information is everything between ``://`` and the last ``@``
    (a password with an unencoded ``#``, ``/`` or ``?`` fools ``urlsplit``)."""
    scheme, sep, rest = url.partition("://")
    if not sep or "@" not in rest:
        return url
    userinfo, _, host = rest.rpartition("@")
    user = userinfo.partition(":")[0] if ":" in userinfo else ""
    shown = f"{user}:***" if ":" in userinfo else "***"
    return f"{scheme}://{shown}@{host}"


class BatchqError(Exception):
    """Base of every error batchq raises on purpose."""

    exit_code: int = 2

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def __str__(self) -> str:
        return self.message


class InputError(BatchqError):
    """The input is wrong; nothing was run or written."""

    exit_code = 2


class SpecError(InputError):
    """A task file cannot be read or does not match the format."""

    def __init__(self, path: Path | str, field: str | None, expected: str) -> None:
        self.path = Path(path)
        self.field = field
        self.expected = expected
        where = f"{self.path}: {field}" if field else str(self.path)
        super().__init__(f"{where}: {expected}")


class PlanError(InputError):
    """The dependency graph of a feature cannot be scheduled."""

    def __init__(self, problems: Sequence[str], cycle: Sequence[str] | None = None) -> None:
        self.problems = list(problems)
        self.cycle = list(cycle) if cycle else None
        super().__init__("; ".join(self.problems))


class UnsafeBatchError(InputError):
    """An explicit batch is not safe to run in parallel."""

    def __init__(self, violations: Sequence[Any]) -> None:
        self.violations = list(violations)
        lines = [getattr(v, "message", str(v)) for v in self.violations]
        super().__init__("batch is not safe to run in parallel: " + "; ".join(lines))


class PolicyError(InputError):
    """A subtask asks for something the configuration does not allow."""

    def __init__(self, subject: str, message: str) -> None:
        self.subject = subject
        super().__init__(message)


class UsageError(InputError):
    """The command was called wrongly (unknown feature, unknown seq, bad option)."""


class LockedError(InputError):
    """Another orchestrator already runs this feature."""

    def __init__(self, feature: str, holder: str, root: Path | None = None) -> None:
        self.feature = feature
        self.holder = holder
        # The advice must work as printed from anywhere: it names the root.
        where = f" --root {shlex.quote(str(root))}" if root is not None else ""
        super().__init__(
            f"feature {feature!r} is already being run by {holder}; "
            f"wait for it, or stop it with `batchq cancel {feature}{where}`"
        )


class ExecutionFailed(BatchqError):
    """A subtask or batch failed; the report says which and why."""

    exit_code = 1

    def __init__(self, message: str, report: Any = None) -> None:
        self.report = report
        super().__init__(message)


class InfrastructureError(BatchqError):
    """Something batchq depends on (Redis, broker, workers) is unreachable."""

    exit_code = 3


class BrokerUnavailable(InfrastructureError):
    """Redis could not be reached at the configured URL."""

    def __init__(self, url: str, reason: str = "") -> None:
        self.url = mask_url(url)
        detail = f": {reason}" if reason else ""
        super().__init__(f"cannot reach Redis at {self.url}{detail}")


class RunCancelled(BatchqError):
    """The run was cancelled (``batchq cancel``, Ctrl-C) and nothing in it failed: an
    exit code of its own, so a script can tell "stopped on purpose" from "failed"."""

    exit_code = 4
