"""The ``python`` agent: call ``execution.callable`` inside the worker process.

For work that is already Python (a data step, an API call) a subprocess per subtask
would only add start-up time. The price is trust: the callable runs with the worker's
privileges, so only modules on the allow-list (``BATCHQ_PYTHON_ALLOW`` or
``[agents.python] allow``) are imported, matched at dot boundaries — ``pkg`` allows
``pkg`` and ``pkg.sub`` but not ``pkgx``; ``*`` allows every module. The check runs
before the import, so a refused module's import-time code never runs. The list is
judged on the object reached too, since an allowed module's namespace also holds what
it imported: every object on the attribute path must be defined in an allowed module
(its own ``__module__``), no step may be a module or a dunder name, so
``mypkg:os.system``, ``mypkg:subprocess.run`` and ``mypkg:helper_mod.run`` are
refused with ``mypkg`` allowed (see :func:`resolve_callable`).

The call is ``function(subtask, context)``:

- ``subtask`` is the :class:`~batchq.models.Subtask` model;
- ``context`` is the shared session context as a ``str`` — a :class:`CallContext`,
  whose extra attributes (``workspace``, ``feature``, ``run_id``, ``batch``,
  ``log_path``) tell the callable where to work. The worker's current directory is
  *not* changed (it is process-wide); use ``context.workspace``.

It returns ``None``, a ``str`` (the summary) or a ``dict`` with an optional
``summary`` (and optionally ``ok: False`` with an ``error``). An exception is a failed
outcome whose ``error_type`` is the exception's class name, with the traceback's tail
in the output; ``SystemExit(75)`` asks for a retry like a CLI's exit code 75.

The timeout raises ``SoftTimeLimitExceeded`` inside the callable, and this agent lets
it (and the hard ``TimeLimitExceeded``) propagate, so the task layer maps it to
``timed_out``. A message of its own carries Celery's soft time limit; the agent also
arms a ``SIGALRM`` timer of its own in a process's main thread (prefork and solo
pools), which is what times each member of a chunk (one message, one Celery limit).
A callable that uses ``SIGALRM`` itself gets its handler back afterwards.
Printed output is captured with ``redirect_stdout``/``redirect_stderr``, which swap
the process-wide streams: fine in prefork and solo pools, interleaved under the
threads pool.
"""

from __future__ import annotations

import contextlib
import importlib
import io
import signal
import threading
import traceback
import types
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, ClassVar

from batchq.agents.base import TEMPORARY_EXIT, Agent, AgentOutcome, Delegation
from batchq.agents.policy import check_env, check_verify
from batchq.agents.process import DEFAULT_TAIL_BYTES, last_line
from batchq.errors import PolicyError
from batchq.files.agentlog import append_text
from batchq.models import SUMMARY_LIMIT, Subtask

try:  # the worker always has Celery; keep the agent importable without it
    from celery.exceptions import SoftTimeLimitExceeded, TimeLimitExceeded

    _PROPAGATE: tuple[type[BaseException], ...] = (SoftTimeLimitExceeded, TimeLimitExceeded)
except ImportError:  # pragma: no cover
    _PROPAGATE = ()

__all__ = ["CallContext", "PythonAgent", "module_allowed", "resolve_callable"]

StopCheck = Callable[[], bool]


class CallContext(str):
    """The shared session context handed to a callable: a ``str`` (as SPEC 3 says),
    carrying where and for whom the call runs as attributes."""

    workspace: Path
    feature: str
    run_id: str
    batch: int
    seq: str
    log_path: Path

    def __new__(cls, text: str, delegation: Delegation) -> CallContext:
        self = super().__new__(cls, text)
        self.workspace = delegation.workspace
        self.feature = delegation.feature
        self.run_id = delegation.run_id
        self.batch = delegation.batch
        self.seq = delegation.subtask.seq
        self.log_path = delegation.log_path
        return self


def module_allowed(module: str, patterns: list[str]) -> bool:
    """True when ``module`` is an allowed entry or inside one, at dot boundaries."""
    for entry in patterns:
        entry = entry.strip().removesuffix(".*")
        if entry == "*" or module == entry or module.startswith(entry + "."):
            return True
    return False


_RESOLVED: dict[tuple[str, tuple[str, ...]], Callable[..., Any]] = {}


def _resolved(spec: str, patterns: list[str]) -> Callable[..., Any]:
    """:func:`resolve_callable` once per callable, allow-list and process: a worker
    calls the same few thousands of times, and the walk and its checks give the same
    answer each time (a refusal or a failed import is not kept: it raises again)."""
    key = (spec, tuple(patterns))
    found = _RESOLVED.get(key)
    if found is None:
        if len(_RESOLVED) >= 256:
            _RESOLVED.clear()
        found = _RESOLVED[key] = resolve_callable(spec, patterns)
    return found


def resolve_callable(spec: str, patterns: list[str] | None = None) -> Callable[..., Any]:
    """Import ``pkg.module:attr.path`` and return the attribute.

    With ``patterns`` (the allow-list), the module is checked before it is imported,
    and every object on the attribute path must be defined in an allowed module (its
    own ``__module__``), never be a module itself, and never be reached through a
    dunder name: ``mypkg:os.system`` (``os`` imported into ``mypkg``),
    ``mypkg:run`` after ``from subprocess import run`` and ``mypkg:helper.run`` (a
    module beside ``mypkg``) all raise :class:`PolicyError`. Otherwise raises what
    the import raises (``ImportError``, ``AttributeError``) or ``TypeError``."""
    module_name, _, attr_path = spec.partition(":")
    if patterns is not None and not module_allowed(module_name, patterns):
        raise PolicyError(spec, f"module {module_name!r} is not allowed by the python allow-list")
    target: Any = importlib.import_module(module_name)
    parts = attr_path.split(".")
    for index, part in enumerate(parts):
        if patterns is not None and part.startswith("__"):
            raise PolicyError(spec, f"{part!r} is a dunder name; name a function")
        target = getattr(target, part)
        last = index == len(parts) - 1
        if last and not callable(target):
            raise TypeError(f"{spec} is a {type(target).__name__}, not a callable")
        if patterns is not None:
            walked = f"{module_name}:{'.'.join(parts[: index + 1])}"
            _check_defined_in_allowed(walked, target, patterns)
    return target  # type: ignore[no-any-return]


def _check_defined_in_allowed(walked: str, target: object, patterns: list[str]) -> None:
    """The allow-list is about code, so it is judged on the object reached, not on the
    text before ``:``: an allowed module's namespace also holds what it imported."""
    if isinstance(target, types.ModuleType):
        raise PolicyError(
            walked,
            f"{walked} is the module {target.__name__!r}; the attribute path may not "
            f"go through a module (name it before ':', as '{target.__name__}:...', "
            "if the allow-list covers it)",
        )
    owner = getattr(target, "__module__", None)
    if not isinstance(owner, str) or not module_allowed(owner, patterns):
        where = f"module {owner!r}" if isinstance(owner, str) else "no module"
        raise PolicyError(
            walked,
            f"{walked} is defined in {where}, which the python allow-list does not "
            "cover (only code defined in an allowed module may be called)",
        )


class PythonAgent(Agent):
    """Calls ``execution.callable(subtask, context)`` in the worker; see the module
    docstring for the contract with the callable."""

    kind: ClassVar[str] = "python"

    def check(self, subtask: Subtask) -> None:
        spec = subtask.execution.callable_ if subtask.execution else None
        where = f"subtask {subtask.seq}: execution.callable"
        if not spec:
            raise PolicyError(
                subtask.seq,
                f"{where}: missing; the python agent needs 'package.module:function'",
            )
        module = spec.partition(":")[0]
        patterns = self.settings.allow_for("python")
        if not module_allowed(module, patterns):
            shown = ", ".join(repr(p) for p in patterns) or (
                "none; set BATCHQ_PYTHON_ALLOW or [agents.python] allow in batchq.toml"
            )
            raise PolicyError(
                subtask.seq,
                f"{where}: module {module!r} is not allowed by the python allow-list "
                f"(modules: {shown})",
            )
        dunder = next((p for p in spec.partition(":")[2].split(".") if p.startswith("__")), None)
        if dunder is not None:
            raise PolicyError(
                subtask.seq, f"{where} {spec!r}: {dunder!r} is a dunder name; name a function"
            )
        check_env(subtask)
        check_verify(subtask, self.settings)

    def run(self, delegation: Delegation, should_stop: StopCheck) -> AgentOutcome:
        sub = delegation.subtask
        try:
            self.check(sub)
        except PolicyError as exc:
            return AgentOutcome(ok=False, error=str(exc), error_type="PolicyError")
        if should_stop():
            return AgentOutcome(
                ok=False, cancelled=True, error="cancelled before start", error_type="Cancelled"
            )
        assert sub.execution is not None and sub.execution.callable_ is not None
        spec = sub.execution.callable_
        buffer = io.StringIO()
        try:
            with contextlib.redirect_stdout(buffer), contextlib.redirect_stderr(buffer):
                function = _resolved(spec, self.settings.allow_for("python"))
                with _alarm(delegation.timeout_s):
                    value = function(sub, CallContext(delegation.context, delegation))
        except PolicyError as exc:
            error = f"subtask {sub.seq}: execution.callable {spec!r}: {exc}"
            outcome = AgentOutcome(ok=False, error=error, error_type="PolicyError")
            return self._finish(delegation, buffer, outcome)
        except _PROPAGATE:
            _append_log(delegation.log_path, buffer.getvalue() + "[batchq] time limit reached\n")
            raise
        except SystemExit as exc:
            return self._finish(delegation, buffer, _from_exit(exc))
        except Exception as exc:
            trace = "".join(traceback.format_exception(exc))
            buffer.write(trace)
            outcome = AgentOutcome(
                ok=False,
                error=f"{type(exc).__name__}: {exc}"[:1000],
                error_type=type(exc).__name__,
            )
            return self._finish(delegation, buffer, outcome)
        return self._finish(delegation, buffer, _from_value(value))

    @staticmethod
    def _finish(delegation: Delegation, buffer: io.StringIO, outcome: AgentOutcome) -> AgentOutcome:
        text = buffer.getvalue()
        _append_log(delegation.log_path, text)
        outcome.output = text[-DEFAULT_TAIL_BYTES:]
        if not outcome.summary:
            outcome.summary = last_line(text) if outcome.ok else ""
        return outcome


@contextlib.contextmanager
def _alarm(seconds: float) -> Iterator[None]:
    """Raise ``SoftTimeLimitExceeded`` in the callable after ``seconds``. Signals reach
    only the main thread, so elsewhere (the threads pool) nothing is armed."""
    if not _PROPAGATE or threading.current_thread() is not threading.main_thread():
        yield
        return

    def expire(signum: int, frame: object) -> None:
        raise _PROPAGATE[0](f"time limit of {seconds:g}s reached")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def _from_value(value: object) -> AgentOutcome:
    """Interpret what the callable returned (see the module docstring)."""
    if value is None:
        return AgentOutcome(ok=True, exit_code=0)
    if isinstance(value, dict):
        summary = str(value.get("summary") or "")[:SUMMARY_LIMIT]
        if value.get("ok", True) is False:
            error = str(value.get("error") or "the callable reported failure")
            return AgentOutcome(
                ok=False,
                summary=summary,
                error=error,
                error_type="CallableFailed",
                temporary=bool(value.get("temporary", False)),
            )
        return AgentOutcome(ok=True, exit_code=0, summary=summary)
    return AgentOutcome(ok=True, exit_code=0, summary=str(value)[:SUMMARY_LIMIT])


def _from_exit(exc: SystemExit) -> AgentOutcome:
    """``sys.exit()`` in a callable must not end the worker: treat it like a CLI exit."""
    code = exc.code
    if code is None or code == 0:
        return AgentOutcome(ok=True, exit_code=0)
    number = code if isinstance(code, int) else 1
    return AgentOutcome(
        ok=False,
        exit_code=number,
        error=f"the callable called sys.exit({code!r})",
        error_type="SystemExit",
        temporary=number == TEMPORARY_EXIT,
    )


def _append_log(path: Path, text: str) -> None:
    if not text:
        return
    with append_text(path, errors="replace") as handle:
        handle.write(text)
