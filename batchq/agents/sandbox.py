"""Run agent processes inside a bubblewrap (``bwrap``) sandbox.

The shell allow-list is a guardrail, not a boundary: an allowed ``cp`` can copy
``/proc/$PPID/environ`` (the worker's environment block, Redis password included) into
the workspace, and any agent can rewrite ``batchq.toml``, ``.git/hooks/`` or
``.tmp/tasks/`` to widen its own policy for the next run. A :class:`Sandbox` turns an
argv into a ``bwrap`` argv in which

- the whole file system is read-only (``--ro-bind / /``) except the workspace, the
  extra writable folders the caller names (a log dir) and a fresh ``/tmp``
  (``--tmpfs``, so the worker's own ``/tmp`` — the embedded Redis socket lives there —
  is out of sight; it is the agent's ``TMPDIR`` too, private and gone with the sandbox);
- the protected paths of the workspace (``batchq.toml``, ``.tmp/tasks``, ``.git``) are
  bound read-only over themselves, so a writable workspace still cannot change them;
- a new PID namespace gets its own ``/proc``: the worker's processes, and so their
  ``environ``, do not exist in there;
- the environment is an explicit, reduced one (:func:`reduced_env`), set with
  ``--clearenv``/``--setenv`` *and* used as bwrap's own environment (see below);
- IPC, UTS and, unless ``network`` is True, the network are unshared; as root every
  capability is dropped.

Pitfalls this module was written against (each is tested in
``tests/unit/test_sandbox.py``):

- ``--clearenv`` is not enough. With ``--unshare-pid`` bwrap forks a reaper that is
  PID 1 inside the sandbox, and ``/proc/1/environ`` shows bwrap's *own* environment
  block — whatever the caller passed to ``run_process``. Run bwrap with the reduced
  environment too: :meth:`Sandbox.run` does, callers of :meth:`Sandbox.wrap` must pass
  ``env=sandbox.env``.
- Root keeps its capabilities inside bwrap unless told otherwise: without
  ``--cap-drop ALL`` a sandboxed ``mount -o remount,rw /`` makes the host writable.
- No ``--new-session``. ``run_process`` already starts bwrap as the leader of a new
  session without a controlling terminal (stdin is ``/dev/null``), which is what
  ``--new-session`` protects (TIOCSTI injection). Without it every sandboxed process
  stays in ``run_process``'s process group: a timeout's SIGTERM reaches them all with
  the usual grace, and the group bookkeeping sees them. On top of that the PID
  namespace dies with bwrap (``--die-with-parent``; the kernel kills a namespace whose
  PID 1 exits), so even a ``setsid`` escapee inside the sandbox is killed — the escape
  the process module can only bound, not prevent, without a sandbox.
- Mount order matters: bwrap applies mounts in argv order, later ones over earlier
  ones. ``--tmpfs /tmp`` comes first (a workspace under ``/tmp`` would be hidden
  otherwise), then every bind sorted by depth, so the most specific path wins: the
  ``.git`` inside a writable workspace is read-only, a log dir inside the read-only
  ``.tmp/tasks`` is writable again.
- A read-only bind does not stop a rename of the folder it is in: inside the writable
  workspace ``mv .tmp .old`` moves ``.tmp/tasks``, mount and all, and the agent can
  put a forged ``.tmp/tasks`` (or a symlink where the log folder was) in its place,
  for the host and for any sandbox set up meanwhile (a parallel subtask's, a held
  verify's). So every folder between a writable mount and a mount inside it is bound
  over itself too (writable, as before): a mount point cannot be moved or removed.
- A read-only mount does not stop ``connect()`` on a Unix socket, and
  ``--unshare-net`` does not cover sockets in the file system: name such sockets
  (``/run/docker.sock``, an embedded Redis outside ``/tmp``) in ``hidden``.
- A protected path that does not exist when the sandbox starts cannot be bound (bwrap
  would create a mount point on the host): the agent could create it. The sandbox
  remembers those (:attr:`Sandbox.absent`); :meth:`Sandbox.appeared` says which came
  into being, for the caller to refuse the result.

Verify runs in a sandbox of its own, never in its agent's (threat model). An agent
is hostile code with the worker's uid and no capabilities; what it must not do is
decide ``execution.verify``'s exit status. Inside one sandbox it could: every process
there has the same uid and no capabilities, so, with no Yama restriction, an agent
may ``PTRACE_ATTACH`` to bwrap's PID 1 — the process that reports the command's exit
status — or to any in-sandbox runner, and its ``/proc/<pid>/mem`` opens too (both
tried with real bwrap: they succeed). Patched before the agent dies, such a process
could report verify as passed whatever it returned. Refusing that needs a seccomp
filter (``ptrace``, ``process_vm_writev``, ``pidfd_getfd``), a runner the agent cannot
name in ``/proc`` and a non-dumpable PID 1, none of which bwrap 0.8 gives without
a compiled filter; and ``/tmp``, the IPC namespace and a listening abstract socket
would carry over too. So verify keeps a sandbox of its own, and pays for it ahead of
time instead: :func:`hold_confined` sets it up while the agent still runs, behind a
gate (:class:`~batchq.agents.process.Held`: ``sh`` waiting on a pipe only the worker
holds for the word ``go``; end of file, from a dying worker, runs nothing). It is
safe because

- the agent shares none of its namespaces: the held sandbox's processes are not in
  the agent's PID namespace (nothing to signal, ``ptrace`` or read in ``/proc``), its
  ``/tmp``, IPC objects and network are its own;
- the gate is the held process's stdin, a pipe the agent's process never inherits
  (``close_fds``), and the agent cannot reach the worker's descriptors;
- the worker sends ``go`` only after the agent's run returned, and that run returns
  once the agent's PID namespace is gone: a ``setsid`` job it left is dead, not
  waiting to change the workspace under verify (tested both ways:
  ``tests/unit/test_verify_hold.py``);
- its mounts are made from paths the agent cannot change, though bwrap makes them
  after its ``exec`` (``Popen`` returns before), so possibly while the agent already
  runs: the protected ones are read-only to it and the folders above them pinned (see
  the pitfalls), so neither they nor the log folder can be moved or replaced
  meanwhile; one it creates fails the agent before any ``go``
  (:meth:`Sandbox.appeared`). What the agent can change is the workspace and the log
  folder's content, which verify sees live, as it would in a sandbox set up after.
"""

from __future__ import annotations

import fnmatch
import functools
import logging
import os
import re
import shlex
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

from batchq.agents.base import Delegation
from batchq.agents.policy import SECRET_ENV, agent_env, shell_command
from batchq.agents.process import (
    Held,
    PidNamespace,
    ProcessResult,
    gated,
    hold_process,
    run_process,
)
from batchq.errors import BatchqError, InfrastructureError, PolicyError
from batchq.files.gitsnap import linked_git_dirs
from batchq.models import SandboxMode
from batchq.settings import SETTINGS_FILE_ENV, URL_FILE_ENV, Settings

__all__ = [
    "BASE_ENV",
    "DEFAULT_PROTECTED",
    "NEVER_PASSED",
    "HeldConfined",
    "Sandbox",
    "SandboxMode",
    "bwrap_status",
    "hold_confined",
    "reduced_env",
    "resolve_sandbox",
    "run_confined",
    "sandbox_paths",
    "worker_secrets",
]

log = logging.getLogger(__name__)


DEFAULT_PROTECTED: tuple[str, ...] = ("batchq.toml", ".tmp/tasks", ".git")
"""Workspace paths an agent must not change: batchq's configuration (the allow-lists),
the task files (an agent could enqueue work or mark itself done) and git's folder
(hooks and ``core.*`` settings run code for whoever uses the repository next)."""

BASE_ENV: tuple[str, ...] = (
    "PATH",
    "HOME",
    "LANG",
    "LC_*",
    "TERM",
    "USER",
    "LOGNAME",
    "TZ",
    "TMPDIR",
    "BATCHQ_FEATURE",
    "BATCHQ_SEQ",
    "BATCHQ_SUBTASK_ID",
    "BATCHQ_RUN_ID",
    "BATCHQ_BATCH",
    "BATCHQ_WORKSPACE_DIR",
    "BATCHQ_LOG",
    "BATCHQ_CONTEXT_FILE",
    "BATCHQ_PROMPT_FILE",
)
"""Names (fnmatch patterns) every agent gets: what programs need to run at all, and
what :func:`batchq.agents.shell.agent_env` sets to tell a script which subtask it is."""

NEVER_PASSED: frozenset[str] = frozenset(SECRET_ENV)
"""The worker's own secrets. No agent needs them, so not even ``keep`` passes them: a
subtask's ``execution.env`` naming one must not be a way to read it."""

_SECRET_PATTERNS: tuple[str, ...] = ("*PASSWORD*", "*PASSWD*", "*SECRET*", "*TOKEN*")

_PROBE_ARGV: tuple[str, ...] = (
    "--ro-bind",
    "/",
    "/",
    "--dev",
    "/dev",
    "--proc",
    "/proc",
    "--unshare-pid",
    "--die-with-parent",
    "true",
)
_PROBE_TIMEOUT_S = 20.0


@functools.cache
def _matcher(patterns: tuple[str, ...]) -> Callable[[str], re.Match[str] | None]:
    """One compiled regular expression for a set of fnmatch patterns (case-sensitive,
    as :func:`fnmatch.fnmatchcase`): an environment of a hundred names against twenty
    patterns is two thousand ``fnmatchcase`` calls per agent process otherwise."""
    return re.compile("|".join(fnmatch.translate(p) for p in patterns) or "(?!)").match


def _looks_secret(name: str) -> bool:
    return _matcher(_SECRET_PATTERNS)(name.upper()) is not None


def reduced_env(env: Mapping[str, str], keep: Iterable[str] = ()) -> dict[str, str]:
    """The part of ``env`` an agent gets: :data:`BASE_ENV`, plus the names in ``keep``.

    ``keep`` holds the subtask's own ``execution.env`` names and the names an agent's
    configuration lists (an API key a coding CLI needs); it may use fnmatch patterns.
    A name that looks like a credential (``*PASSWORD*``, ``*SECRET*``, ``*TOKEN*``)
    passes only when ``keep`` names it exactly, and :data:`NEVER_PASSED` never does.

    Pass the environment *after* ``execution.env`` was applied (what
    :func:`~batchq.agents.shell.agent_env` returns): then a name from
    ``execution.env`` carries the subtask's own value, never the worker's."""
    exact: set[str] = set()
    patterns = list(BASE_ENV)
    for name in keep:
        if any(c in name for c in "*?["):
            patterns.append(name)
        else:
            exact.add(name)
    allowed = _matcher(tuple(patterns))
    result: dict[str, str] = {}
    for name, value in env.items():
        if name in NEVER_PASSED:
            continue
        matched = not _looks_secret(name) and allowed(name) is not None
        if matched or name in exact:
            result[name] = value
    return result


@functools.cache
def bwrap_status() -> tuple[bool, str]:
    """Whether bwrap can sandbox processes here, and why not when it cannot.

    Being on PATH proves little: bwrap needs user namespaces (often disabled by sysctl
    or AppArmor for unprivileged users) or root, and inside a container it may lack
    the rights to mount ``/proc``. So this runs a real trial sandbox once per process
    (the answer does not change while a worker runs) and caches the result."""
    path = shutil.which("bwrap")
    if path is None:
        return False, "bwrap not found on PATH (Debian/Ubuntu: apt-get install bubblewrap)"
    try:
        trial = subprocess.run(
            [path, *_PROBE_ARGV],
            env={"PATH": os.environ.get("PATH", os.defpath)},
            stdin=subprocess.DEVNULL,
            capture_output=True,
            timeout=_PROBE_TIMEOUT_S,
            check=False,
        )
    except subprocess.TimeoutExpired:
        return False, f"{path} trial run did not finish within {_PROBE_TIMEOUT_S:g}s"
    except OSError as exc:
        return False, f"cannot run {path}: {exc.strerror or exc}"
    if trial.returncode != 0:
        detail = (trial.stderr or trial.stdout).decode("utf-8", "replace").strip()
        detail = detail.splitlines()[-1] if detail else f"exit code {trial.returncode}"
        return False, f"{path} trial run failed: {detail}"
    return True, f"{path} works"


@functools.cache
def _bwrap_path() -> str:
    """Looked up once per process, like :func:`bwrap_status`: PATH lookups cost a
    ``stat`` per folder, and the binary does not move while a worker runs."""
    return shutil.which("bwrap") or "bwrap"


# Mount kinds, in the order they are applied when two rules name the same path: the
# read-only and hiding rules win over a writable one.
_RW, _RO, _HIDE = 0, 1, 2
_BASE = 3  # /dev, /proc, /tmp: bwrap's own fresh mounts; anything under them is bound


def sandbox_paths() -> tuple[str, tuple[Path, ...]]:
    """bwrap's path and the worker's Python folders under ``/tmp``, both found once
    per process (:mod:`batchq.executor.warmup` asks at worker start)."""
    return _bwrap_path(), _python_under_tmp()


@functools.cache
def _python_under_tmp() -> tuple[Path, ...]:
    """The worker's interpreter and environment folders that live under ``/tmp``
    (which the sandbox replaces by a private tmpfs), to bind read-only again. Once
    per process: the interpreter does not move while it runs."""
    tmp = Path("/tmp").resolve()
    found = {Path(sys.prefix), Path(sys.base_prefix), Path(sys.exec_prefix)}
    found.add(Path(sys.executable).parent)
    found.add(Path(sys.executable).resolve().parent)
    under = sorted(p.resolve() for p in found if p.resolve().is_relative_to(tmp))
    return tuple(p for p in under if not any(p != q and p.is_relative_to(q) for q in under))


@dataclass(frozen=True)
class Sandbox:
    """What one agent process may reach; :meth:`wrap` turns it into a bwrap argv.

    Paths are absolute (:meth:`create` resolves them and checks the protected ones).
    ``protected`` are bound read-only over themselves; ``absent`` are the protected
    candidates that did not exist (see :meth:`appeared`); ``hidden`` are replaced by an
    empty tmpfs (folders) or ``/dev/null`` (files)."""

    workspace: Path
    env: Mapping[str, str] = field(default_factory=dict, hash=False)
    writable: tuple[Path, ...] = ()
    protected: tuple[Path, ...] = ()
    absent: tuple[Path, ...] = ()
    hidden: tuple[Path, ...] = ()
    tmp_dir: Path | None = None
    network: bool = False
    bwrap: str = "bwrap"
    readable: tuple[Path, ...] = ()
    """Read-only again inside the hidden ``/tmp``: the worker's own Python (a venv or
    an interpreter under ``/tmp`` must keep working for agents that run it)."""

    @classmethod
    def create(
        cls,
        workspace: Path,
        *,
        env: Mapping[str, str],
        writable: Iterable[Path] = (),
        protected: Iterable[str | Path] = DEFAULT_PROTECTED,
        extra_protected: Iterable[str | Path] = (),
        hidden: Iterable[Path] = (),
        tmp_dir: Path | None = None,
        network: bool = False,
        bwrap: str | None = None,
    ) -> Sandbox:
        """A sandbox for ``workspace``; relative protected paths are inside it.

        ``env`` is used as given (reduce it first with :func:`reduced_env`); ``TMPDIR``
        is set to ``tmp_dir`` when there is one, else to the sandbox's own ``/tmp``. A
        protected path that is a symlink is
        refused with :class:`~batchq.errors.PolicyError`: the bind would protect its
        target while the agent can still replace the link."""
        # Worked on strings, Path objects made once at the end: a sandbox per agent
        # process built ~20 of them (pathlib parses every one in Python), ~0.3 ms of
        # the worker's CPU. os.path.realpath is what Path.resolve calls.
        root_text = os.path.realpath(workspace)
        root = Path(root_text)
        bound: list[str] = []
        missing: list[str] = []
        for item in (*protected, *extra_protected):
            raw = os.fspath(item)
            text = str(Path(raw)) if os.path.isabs(raw) else str(root / raw)
            if os.path.islink(text):
                raise PolicyError(
                    str(item),
                    f"protected path {text} is a symlink; the sandbox cannot keep it "
                    "read-only (replace it with the real file or folder)",
                )
            # A path right in the workspace needs no second resolve (a resolve is a
            # Python loop with an lstat per component: ~12 per sandbox added up to a
            # millisecond of the worker's CPU per agent process).
            parent, name = os.path.split(text)
            text = os.path.join(
                root_text if parent == root_text else os.path.realpath(parent), name
            )
            target = bound if os.path.exists(text) else missing
            if text not in target:
                target.append(text)
        tmp = Path(os.path.realpath(tmp_dir)) if tmp_dir is not None else None
        return cls(
            workspace=root,
            env=_with_tmpdir(env, tmp),
            writable=tuple(Path(p) for p in dict.fromkeys(map(os.path.realpath, writable))),
            protected=tuple(map(Path, bound)),
            absent=tuple(map(Path, missing)),
            # What does not exist is not mounted over (see _mounts): resolve only the rest.
            hidden=tuple(
                Path(p)
                for p in dict.fromkeys(os.path.realpath(p) for p in hidden if os.path.exists(p))
            ),
            tmp_dir=tmp,
            network=network,
            bwrap=bwrap or _bwrap_path(),
            readable=_python_under_tmp(),
        )

    def for_agent(self, env: Mapping[str, str], keep: Iterable[str], network: bool) -> Sandbox:
        """This sandbox's paths with another agent's environment and network: what
        :func:`resolve_sandbox` makes for that agent in the same workspace, moments
        after this one was made (no path is resolved or checked again)."""
        reduced = _with_tmpdir(reduced_env(env, keep), self.tmp_dir)
        return replace(self, env=reduced, network=network)

    def _mounts(self) -> list[str]:
        """The bind/tmpfs options after ``/``, ``/dev``, ``/proc`` and ``/tmp``,
        parents before children so that the most specific rule wins.

        A bind that repeats what its nearest enclosing mount already shows (a writable
        folder inside a writable one, a read-only one inside a read-only one: bwrap's
        binds are recursive) is left out, and so is the hiding of a path only the
        sandbox's fresh ``/tmp`` would show (a local worker's secrets under the host's
        ``/tmp``): each mount costs bwrap about 0.4 ms of CPU, per agent process."""
        rules: list[tuple[int, int, Path]] = []
        rw = [self.workspace, *self.writable]
        if self.tmp_dir is not None:
            rw.append(self.tmp_dir)
        for path in dict.fromkeys(rw):
            rules.append((len(path.parts), _RW, path))
        rules += [(len(path.parts), _RO, path) for path in (*self.readable, *self.protected)]
        rules += [(len(path.parts), _HIDE, path) for path in self.hidden if path.exists()]
        # (folder with a trailing slash, kind); the longest that contains a path is the
        # mount it would be seen through.
        applied = [("/", _RO), *((f"{base}/", _BASE) for base in ("/dev", "/proc", "/tmp"))]
        args: list[str] = []
        for _, kind, path in sorted(rules, key=lambda rule: (rule[0], rule[1])):
            text = str(path)
            inside = text.rstrip("/") + "/"
            nearest = max(
                (entry for entry in applied if inside.startswith(entry[0])),
                key=lambda entry: len(entry[0]),
            )
            if kind != _HIDE and nearest[1] == kind:
                continue
            if kind == _HIDE and nearest[0] == "/tmp/":
                continue  # under the sandbox's own fresh /tmp: nothing of it shows
            if nearest[1] == _RW:
                # The folders between a writable mount and this one can be renamed from
                # inside: pin each (a mount point cannot be moved), or `mv .tmp x` would
                # carry .tmp/tasks away and leave a forged one in its place.
                for parent in reversed(path.parents):
                    folder = str(parent) + "/"
                    if len(folder) > len(nearest[0]) and folder.startswith(nearest[0]):
                        args += ["--bind", str(parent), str(parent)]
                        applied.append((folder, _RW))
            applied.append((inside, kind))
            if kind == _RW:
                args += ["--bind", text, text]
            elif kind == _RO:
                args += ["--ro-bind", text, text]
            elif path.is_dir():
                args += ["--tmpfs", text, "--remount-ro", text]
            else:
                args += ["--ro-bind", "/dev/null", text]
        return args

    def wrap(self, argv: Sequence[str], *, info_fd: int | None = None) -> list[str]:
        """The bwrap argv that runs ``argv`` in this sandbox, in the workspace.

        Run it with ``env=self.env`` (or use :meth:`run`): bwrap's own environment is
        readable inside as ``/proc/1/environ``. ``info_fd``: where bwrap reports the
        sandbox's PID 1 (:class:`~batchq.agents.process.PidNamespace`)."""
        if not argv:
            raise ValueError("empty command")
        args = [
            self.bwrap,
            *(["--info-fd", str(info_fd)] if info_fd is not None else []),
            "--ro-bind", "/", "/",
            "--dev", "/dev",
            "--proc", "/proc",
            "--tmpfs", "/tmp",
            *self._mounts(),
            "--unshare-pid",
            "--unshare-ipc",
            "--unshare-uts",
        ]  # fmt: skip
        if not self.network:
            args.append("--unshare-net")
        args.append("--die-with-parent")
        if os.geteuid() == 0:
            args += ["--cap-drop", "ALL"]
        args += ["--chdir", str(self.workspace), "--clearenv"]
        for name in sorted(self.env):
            args += ["--setenv", name, self.env[name]]
        args.append("--")
        args += argv
        return args

    def run(
        self,
        command: str | Sequence[str],
        *,
        timeout_s: float | None = None,
        should_stop: Callable[[], bool] | None = None,
        log_path: Path | None = None,
        grace_s: float = 2.0,
        on_spawn: Callable[[], object] | None = None,
    ) -> ProcessResult:
        """:func:`~batchq.agents.process.run_process` for ``command`` (a bash line
        or an argv) in this sandbox, with bwrap itself started with :attr:`env`."""
        argv = ["bash", "-c", command] if isinstance(command, str) else list(command)
        # Every process bwrap starts lives in the sandbox's PID namespace, so its PID 1
        # ending is the group ending; --die-with-parent is the parent-death signal.
        namespace = PidNamespace()
        return run_process(
            self.wrap(argv, info_fd=namespace.write_fd),
            cwd=self.workspace,
            env=self.env,
            timeout_s=timeout_s,
            should_stop=should_stop,
            log_path=log_path,
            grace_s=grace_s,
            pid_namespace=namespace,
            parent_death_signal=False,
            on_spawn=on_spawn,
        )

    def hold(self, command: str | Sequence[str]) -> Held | ProcessResult:
        """``command`` started in this sandbox but held before it runs
        (:class:`~batchq.agents.process.Held`): bwrap's set-up is paid now, the command
        runs when released."""
        argv = ["bash", "-c", command] if isinstance(command, str) else list(command)
        namespace = PidNamespace()
        return hold_process(
            self.wrap(gated(argv), info_fd=namespace.write_fd),
            cwd=self.workspace,
            env=self.env,
            pid_namespace=namespace,
            parent_death_signal=False,
        )

    def appeared(self) -> list[Path]:
        """Protected paths that did not exist when the sandbox was made and do now:
        the agent created them, and its result should not be trusted."""
        return [path for path in self.absent if path.exists() or path.is_symlink()]


def _with_tmpdir(env: Mapping[str, str], tmp_dir: Path | None) -> dict[str, str]:
    """``env`` with the sandbox's ``TMPDIR``. Without a tmp dir of its own, that is the
    sandbox's private ``/tmp`` (a tmpfs gone with the sandbox): the worker's TMPDIR may
    lie under the hidden ``/tmp``."""
    full = dict(env)
    full["TMPDIR"] = str(tmp_dir) if tmp_dir is not None else "/tmp"
    return full


_warned = threading.Event()


def resolve_sandbox(
    mode: SandboxMode | str,
    *,
    workspace: Path,
    env: Mapping[str, str],
    keep: Iterable[str] = (),
    writable: Iterable[Path] = (),
    tmp_dir: Path | None = None,
    protected: Iterable[str | Path] = DEFAULT_PROTECTED,
    extra_protected: Iterable[str | Path] = (),
    hidden: Iterable[Path] = (),
    network: bool = False,
) -> Sandbox | None:
    """The sandbox an agent runs in under ``mode``, or None to run it unsandboxed.

    ``off`` gives None. ``auto`` gives a sandbox when bwrap works and otherwise None,
    with one warning per process (a warning per subtask would drown the log).
    ``required`` raises :class:`~batchq.errors.InfrastructureError` (exit code 3: the
    machine, not the subtask, is at fault) when bwrap does not work.

    ``env`` is reduced with :func:`reduced_env` and ``keep``; the writable folders and
    ``tmp_dir`` are created (bwrap cannot bind what does not exist)."""
    mode = SandboxMode(mode)
    if mode is SandboxMode.OFF:
        return None
    works, reason = bwrap_status()
    if not works:
        if mode is SandboxMode.REQUIRED:
            raise InfrastructureError(
                f"BATCHQ_SANDBOX=required but the bubblewrap sandbox does not work on "
                f"this worker: {reason}. Install bubblewrap (apt-get install bubblewrap) "
                "and allow it to create namespaces (run the worker as root, or enable "
                "unprivileged user namespaces), or set BATCHQ_SANDBOX=auto to run "
                "agents unsandboxed where it is missing"
            )
        if not _warned.is_set():
            _warned.set()
            log.warning(
                "agents run WITHOUT a sandbox: %s. They can read the worker's "
                "environment and write anywhere it can. Set BATCHQ_SANDBOX=required to "
                "refuse to run without one, or BATCHQ_SANDBOX=off to silence this",
                reason,
            )
        return None
    writable = [Path(p) for p in writable]
    for path in (*writable, *([tmp_dir] if tmp_dir is not None else [])):
        path.mkdir(parents=True, exist_ok=True)
    return Sandbox.create(
        workspace,
        env=reduced_env(env, keep),
        writable=writable,
        protected=protected,
        extra_protected=extra_protected,
        hidden=hidden,
        tmp_dir=tmp_dir,
        network=network,
    )


SECRET_FILES: tuple[str, ...] = ("/run/secrets",)
"""Where container platforms put secrets (Docker and Compose secrets, Kubernetes'
convention): a worker's deploy key or Redis URL file lives there."""

HOME_SECRETS: tuple[str, ...] = (
    ".ssh",
    ".git-credentials",
    ".config/git/credentials",
    ".netrc",
)
"""The worker user's credentials for git and ssh (``workspace = git`` pushes with them).
A coding agent's own login (``~/.claude``, ``~/.codex``, cloud credentials it calls a
model with) stays visible: the agent needs it."""


def worker_secrets(settings: Settings, environ: Mapping[str, str]) -> list[Path]:
    """Files and folders of the worker holding its secrets, which no agent may read:
    the sandbox mounts an empty tmpfs or ``/dev/null`` over each (what does not exist
    is left alone).

    The sandbox's file system is the host's, read-only, so without this an agent could
    ``cat`` the settings file its worker was started with (the Redis URL, password
    included), the Redis URL file, a Compose secret or the deploy key ``workspace =
    git`` pushes with, and send it anywhere its network allows."""
    found: list[str] = [*SECRET_FILES, *settings.sandbox_hide]
    for name in (SETTINGS_FILE_ENV, URL_FILE_ENV):
        if environ.get(name):
            found.append(environ[name])
    if settings.redis_url_file is not None:
        found.append(str(settings.redis_url_file))
    home = environ.get("HOME")
    if home and home != "/":
        found += [os.path.join(home, name) for name in HOME_SECRETS]
    found += _ssh_identities(environ.get("GIT_SSH_COMMAND", ""))
    return [Path(path) for path in dict.fromkeys(found) if os.path.isabs(path)]


def _ssh_identities(command: str) -> list[str]:
    """The key files an ``ssh -i KEY`` (or ``-iKEY``, ``-o IdentityFile=KEY``) command
    line names."""
    try:
        words = shlex.split(command)
    except ValueError:
        return []
    keys: list[str] = []
    for i, word in enumerate(words):
        if word == "-i" and i + 1 < len(words):
            keys.append(words[i + 1])
        elif word.startswith("-i") and len(word) > 2:
            keys.append(word[2:])
        elif word.lower().startswith("identityfile="):
            keys.append(word.split("=", 1)[1])
    return keys


def _confine(
    command: str,
    delegation: Delegation,
    settings: Settings,
    agent: str,
    extra_env: Mapping[str, str] | None,
    argv: Sequence[str] | None,
) -> tuple[Sandbox | None, str | list[str], dict[str, str]] | ProcessResult:
    """The sandbox (None: unsandboxed), target and environment of an agent process, or
    the failed result when it cannot run at all."""
    env, keep, network = _environment(delegation, settings, agent, extra_env)
    started = time.monotonic()
    target: str | list[str] = list(argv) if argv is not None else shell_command(command)
    try:
        sandbox = resolve_sandbox(
            settings.sandbox,
            workspace=delegation.workspace,
            env=env,
            keep=keep,
            # No tmp_dir: TMPDIR is the sandbox's private /tmp, gone with it (a folder per
            # process on disk cost a mkdir and an rmtree: 0.3 ms idle, ~2 ms busy).
            writable=[delegation.log_path.parent],
            network=network,
            # An isolated worktree: its repository's .git, read-only, so git works in it.
            extra_protected=linked_git_dirs(delegation.workspace),
            hidden=worker_secrets(settings, os.environ),
        )
    except BatchqError as exc:
        return _refused(target, str(exc), type(exc).__name__, started)
    if sandbox is not None and _missing(target, sandbox):
        # bwrap would only say "execvp: No such file": say what run_process says.
        return _refused(
            target, f"executable not found: {target[0]!r}", "FileNotFoundError", started
        )
    return sandbox, target, env


def _environment(
    delegation: Delegation, settings: Settings, agent: str, extra_env: Mapping[str, str] | None
) -> tuple[dict[str, str], list[str], bool]:
    """An agent process's environment before the sandbox reduces it, the names it
    keeps (``execution.env`` and ``[agents.NAME] env``), and whether it has the network."""
    config = settings.agents.get(agent)
    execution = delegation.subtask.execution
    keep = [*(execution.env if execution else {}), *(config.env if config else [])]
    return agent_env(delegation, extra=extra_env), keep, config.network if config else False


def _missing(target: str | list[str], sandbox: Sandbox) -> bool:
    """Whether ``target`` is an argv whose program is not on the sandbox's PATH."""
    if not isinstance(target, list) or not target:
        return False
    return shutil.which(target[0], path=sandbox.env.get("PATH", os.defpath)) is None


def _checked(sandbox: Sandbox, result: ProcessResult) -> ProcessResult:
    """``result``, failed when the process created a protected path."""
    created = sandbox.appeared()
    if created and result.ok:
        shown = ", ".join(str(p.relative_to(sandbox.workspace)) for p in created)
        return replace(
            result,
            exit_code=None,
            error=f"created protected path(s) {shown}, which no agent may write",
            error_type="PolicyError",
        )
    return result


def run_confined(
    command: str,
    delegation: Delegation,
    settings: Settings,
    agent: str,
    *,
    extra_env: Mapping[str, str] | None = None,
    should_stop: Callable[[], bool] | None = None,
    argv: Sequence[str] | None = None,
) -> ProcessResult:
    """Run an agent's bash line (or ``argv``) for ``delegation`` the way every agent
    process runs: in the sandbox ``settings.sandbox`` asks for, with the environment
    reduced to what agents need (plus ``execution.env`` and ``[agents.NAME] env``),
    the network as ``[agents.NAME] network`` says. Never raises: a sandbox that cannot
    be set up, or a protected path the agent created, is a failed result.
    ``delegation.started`` is called once the process runs."""
    confined = _confine(command, delegation, settings, agent, extra_env, argv)
    if isinstance(confined, ProcessResult):
        return confined
    sandbox, target, env = confined
    if sandbox is None:
        return run_process(
            target,
            cwd=delegation.workspace,
            env=env,
            timeout_s=delegation.timeout_s,
            should_stop=should_stop,
            log_path=delegation.log_path,
            on_spawn=delegation.started,
        )
    _last_confined[0] = (delegation, settings, agent, not extra_env, sandbox)
    result = sandbox.run(
        target,
        timeout_s=delegation.timeout_s,
        should_stop=should_stop,
        log_path=delegation.log_path,
        on_spawn=delegation.started,
    )
    return _checked(sandbox, result)


_last_confined: list[tuple[Delegation, Settings, str, bool, Sandbox] | None] = [None]
"""The sandbox :func:`run_confined` made last, for which delegation, settings and
agent, and whether without extra environment. ``execution.verify``'s sandbox, held
while that agent runs (``delegation.started``), is made in the same workspace with the
same paths moments later, so it is derived from it instead of worked out again (~0.8 ms
of the worker's CPU): the same sandbox for the ``shell`` agent without extra
environment, else the same paths with verify's environment and network
(:meth:`Sandbox.for_agent`). Matched by identity, so never another subtask's."""


def _shared(delegation: Delegation, settings: Settings, agent: str) -> Sandbox | None:
    last = _last_confined[0]
    if last is None or last[0] is not delegation or last[1] is not settings:
        return None
    made_for, plain, sandbox = last[2], last[3], last[4]
    if made_for == agent and plain:
        return sandbox
    return sandbox.for_agent(*_environment(delegation, settings, agent, None))


@dataclass
class HeldConfined:
    """A sandboxed process of :func:`hold_confined`, set up and waiting to run."""

    sandbox: Sandbox
    held: Held

    def release(
        self, delegation: Delegation, should_stop: Callable[[], bool] | None = None
    ) -> ProcessResult:
        """Run it now, as :func:`run_confined` would have (the subtask's timeout counted
        from here, its output appended to the subtask's log)."""
        result = self.held.release(
            timeout_s=delegation.timeout_s, should_stop=should_stop, log_path=delegation.log_path
        )
        return _checked(self.sandbox, result)

    def discard(self) -> None:
        self.held.discard()


def hold_confined(
    command: str, delegation: Delegation, settings: Settings, agent: str
) -> HeldConfined | None:
    """:func:`run_confined`'s sandboxed process for ``command``, started but held, or
    None when there is nothing to gain or it cannot start (unsandboxed, refused: then
    :func:`run_confined` at the time runs it, or says why it cannot).

    A sandbox is set up for ``command`` while something else still runs (a verify
    command's while its agent works). It is a sandbox of its own, not the agent's:
    see the threat model at the top of this module."""
    sandbox = _shared(delegation, settings, agent)
    if sandbox is not None:
        target: str | list[str] = shell_command(command)
        if _missing(target, sandbox):
            return None
    else:
        confined = _confine(command, delegation, settings, agent, None, None)
        if isinstance(confined, ProcessResult):
            return None
        sandbox, target, _env = confined
        if sandbox is None:
            return None
    held = sandbox.hold(target)
    return HeldConfined(sandbox, held) if isinstance(held, Held) else None


def _refused(target: str | list[str], reason: str, kind: str, started: float) -> ProcessResult:
    argv = ("bash", "-c", target) if isinstance(target, str) else tuple(target)
    return ProcessResult(
        argv=argv,
        exit_code=None,
        output="",
        error=reason,
        error_type=kind,
        duration_s=time.monotonic() - started,
    )
