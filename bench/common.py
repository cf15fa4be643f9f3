"""Shared harness: private Redis, worker processes, feature folders, statistics.

Every scenario measures batchq and bare Celery in the same run, on the same
redis-server binary and the same worker shape (count, pool, concurrency), one after
the other so they never compete for the two cores.
"""

from __future__ import annotations

import json
import os
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from batchq.local.embedded import LocalWorkers, RedisServer
from batchq.run.orchestrator import Orchestrator
from batchq.settings import load_settings
from batchq.store.state import StateStore
from batchq.transport.app import create_app

REPO = Path(__file__).resolve().parents[1]
T = TypeVar("T")
BATCHQ_QUEUES = ("batchq.control", "batchq.python", "batchq.shell")


@dataclass
class Stats:
    values: list[float]

    @property
    def median(self) -> float:
        return statistics.median(self.values)

    @property
    def lo(self) -> float:
        return min(self.values)

    @property
    def hi(self) -> float:
        return max(self.values)

    def pct(self, q: float) -> float:
        ordered = sorted(self.values)
        index = min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))
        return ordered[index]

    def fmt(self, unit: str = "s") -> str:
        """``min / median / max``: the spread is part of the figure (bare Celery's runs
        are bimodal, see docs/benchmarks.md)."""
        return f"{self.lo:.3f} / {self.median:.3f} / {self.hi:.3f} {unit}"


def timed(fn: Callable[[], Any]) -> float:
    return measure(fn)[0]


def measure(fn: Callable[[], T]) -> tuple[float, T]:
    """Wall time of ``fn()`` and its value."""
    start = time.perf_counter()
    value = fn()
    return time.perf_counter() - start, value


def compile_tree(tree: Path = REPO) -> None:
    """Write the bytecode of ``tree``'s ``batchq`` and ``bench`` packages, as installing
    a wheel does. An editable install leaves it to the first import, and with
    ``PYTHONDONTWRITEBYTECODE`` set (as on CI machines) every fresh ``batchq`` process
    would compile some 30 of its modules again, ~100 ms that no installed user pays and
    that bare Celery, compiled by pip, never pays. ``compileall`` writes it whatever
    that variable says."""
    import compileall

    for package in ("batchq", "bench"):
        compileall.compile_dir(str(tree / package), quiet=1)


@contextmanager
def redis() -> Iterator[RedisServer]:
    """A private redis-server for one scenario (this tree compiled first: see
    :func:`compile_tree`)."""
    compile_tree()
    with RedisServer() as server:
        yield server


@contextmanager
def fresh_workers(server: RedisServer, app: str, **kwargs: Any) -> Iterator[LocalWorkers]:
    """Workers started for one repetition on an emptied Redis (queues, results, chord
    counters and batchq's state all flushed): no repetition inherits another's
    leftovers or a warm worker."""
    server.client().flushall()
    with workers(server.url, app, **kwargs) as group:
        yield group


@contextmanager
def workers(
    url: str,
    app: str,
    *,
    count: int = 1,
    concurrency: int = 2,
    pool: str = "prefork",
    env: dict[str, str] | None = None,
    queues: Sequence[str] | None = None,
) -> Iterator[LocalWorkers]:
    if queues is None:
        queues = ("bare",) if app == "bench.bare" else BATCHQ_QUEUES
    base = {"BATCHQ_PYTHON_ALLOW": "bench", "BATCHQ_LOG_FORMAT": "text"}
    group = LocalWorkers(
        url,
        count=count,
        concurrency=concurrency,
        queues=queues,
        pool=pool,  # type: ignore[arg-type]
        env={**base, **(env or {})},
        cwd=REPO,
        app=app,
    )
    group.start()
    try:
        group.wait_ready(90)
        yield group
    finally:
        group.stop(grace_s=10)


@dataclass
class ProcRun:
    """One whole program run as a user runs it: wall time from fork to exit, its peak
    RSS (the kernel's high-water mark, reported by ``wait4`` to its launcher) and its
    output."""

    wall_s: float
    peak_mb: float
    returncode: int
    stdout: str
    stderr: str

    def check(self, what: str) -> ProcRun:
        if self.returncode != 0:
            raise RuntimeError(
                f"{what} exited {self.returncode}:\n{self.stdout[-2000:]}\n{self.stderr[-2000:]}"
            )
        return self

    def json_line(self) -> Any:
        """The last line of stdout that is a JSON object."""
        for line in reversed(self.stdout.splitlines()):
            if line.startswith("{"):
                return json.loads(line)
        raise RuntimeError(f"no JSON line in: {self.stdout[-500:]}")


def run_process(
    argv: Sequence[str],
    *,
    env: dict[str, str] | None = None,
    cwd: Path = REPO,
    timeout_s: float = 3600,
) -> ProcRun:
    """Run ``argv`` to completion; output to files (no pipe can fill and stall it).

    It runs under ``bench/launch.py``, which times it and reads its peak RSS: spawned
    from this process, which grows to 160 MiB over a bench, a program would report
    this process's high-water mark instead of its own (see there)."""
    with (
        tempfile.TemporaryFile() as out,
        tempfile.TemporaryFile() as err,
        tempfile.TemporaryDirectory(prefix="bench-clock-") as folder,
    ):
        clock = Path(folder) / "clock.json"
        launcher = [sys.executable, "-S", "-E", str(REPO / "bench" / "launch.py"), str(clock)]
        proc = subprocess.Popen(
            [*launcher, *argv], stdout=out, stderr=err, env=env, cwd=cwd, start_new_session=True
        )
        timer = threading.Timer(timeout_s, lambda: os.killpg(proc.pid, signal.SIGKILL))
        timer.start()
        try:
            _, status, _usage = os.wait4(proc.pid, 0)
        except BaseException:  # Ctrl-C: its own session does not get the terminal's
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            raise
        finally:
            timer.cancel()
        proc.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        err.seek(0)
        stdout, stderr = out.read().decode(errors="replace"), err.read().decode(errors="replace")
        if not clock.exists():  # the timeout killed it, or the launcher could not start it
            raise RuntimeError(
                f"{argv} gave no figures (exit {proc.returncode}; "
                f"timeout {timeout_s:.0f} s):\n{stderr[-2000:]}"
            )
        measured = json.loads(clock.read_text(encoding="utf-8"))
        return ProcRun(measured["wall_s"], measured["peak_mb"], proc.returncode, stdout, stderr)


def batchq_argv() -> list[str]:
    """What the ``batchq`` console script runs, read from pyproject.toml: the script pip
    generated may predate a change of entry point in this tree (it is
    ``import sys; from MODULE import FUNC; sys.exit(FUNC())`` all the same)."""
    import tomllib

    target = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["scripts"]["batchq"]
    module, func = target.split(":")
    code = f"import sys; sys.argv[0] = 'batchq'; from {module} import {func}; sys.exit({func}())"
    return [sys.executable, "-c", code]


def batchq_env(url: str) -> dict[str, str]:
    """A user's environment for ``batchq`` on this Redis, importing this tree."""
    env = {k: v for k, v in os.environ.items() if k != "BATCHQ_RESULT_URL"}
    env.update(
        BATCHQ_REDIS_URL=url,
        BATCHQ_PYTHON_ALLOW="bench",
        BATCHQ_LOG_FORMAT="text",
        PYTHONPATH=os.pathsep.join([str(REPO), *filter(None, [env.get("PYTHONPATH")])]),
    )
    return env


def bare_process(
    url: str, n: int, runs: int = 1, timeout_s: float = 3600, *, poll_s: float | None = None
) -> ProcRun:
    """``python bench/bare.py``: the bare-Celery user's whole program, fresh
    (``poll_s``: polling ``ready()`` before ``get()``, see bare.run_chord)."""
    argv = [sys.executable, str(REPO / "bench" / "bare.py"), "--url", url, "--n", str(n)]
    argv += ["--runs", str(runs), "--timeout", str(timeout_s)]
    if poll_s is not None:
        argv += ["--poll", str(poll_s)]
    return run_process(argv, env=batchq_env(url), timeout_s=timeout_s + 60).check("bare.py")


def bare_within(url: str, n: int, limit_s: float) -> ProcRun | None:
    """:func:`bare_process`, or None when its chord did not return within ``limit_s``
    (the slow mode at a large N); any other failure still raises."""
    argv = [sys.executable, str(REPO / "bench" / "bare.py"), "--url", url, "--n", str(n)]
    argv += ["--timeout", str(limit_s)]
    run = run_process(argv, env=batchq_env(url), timeout_s=limit_s + 60)
    if run.returncode != 0 and "TimeoutError" in run.stderr:
        return None
    return run.check("bare.py")


def worker_peak_mb(group: LocalWorkers) -> float:
    """The largest peak RSS among the workers' main and pool processes (read while
    they are alive)."""
    from batchq.procs import child_pids

    peak = 0.0
    for child in group.children:
        pids = [child.pid, *child_pids(child.pid)]
        peak = max([peak, *(proc_peak_mb(p) for p in pids)])
    return peak


_DRAMATIQ_READY = re.compile(r"is ready for action")


@contextmanager
def dramatiq_workers(server: RedisServer, processes: int = 2) -> Iterator[Any]:
    """A fresh ``dramatiq bench.dramatiq_ref`` worker (``processes`` × 1 thread, the
    shape of one Celery worker with 2 prefork processes) on an emptied Redis."""
    from batchq import procs

    server.client().flushall()
    log_dir = tmpdir("bench-dramatiq-")
    argv = [sys.executable, "-m", "dramatiq", "bench.dramatiq_ref"]
    argv += ["--processes", str(processes), "--threads", "1"]
    child = procs.spawn(argv, log_dir / "worker.log", env=batchq_env(server.url), cwd=REPO)
    try:
        deadline = time.monotonic() + 90
        while len(_DRAMATIQ_READY.findall(child.read_log())) < processes:
            if not child.alive() or time.monotonic() > deadline:
                raise RuntimeError(f"dramatiq worker not ready:\n{child.log_tail()}")
            time.sleep(0.05)
        yield child
    finally:
        child.terminate(10)


def bare_app(url: str, tuned: bool = False) -> Any:
    """The bare Celery app for this Redis, with ``noop``/``sleep``/``done`` tasks."""
    from bench.bare import make_app

    return BareTasks(make_app(url, tuned))


class BareTasks:
    def __init__(self, app: Any) -> None:
        self.app = app
        self.noop = app.tasks["bare.noop"]
        self.sleep = app.tasks["bare.sleep"]
        self.done = app.tasks["bare.done"]


def write_feature(root: Path, name: str, subtasks: Sequence[dict[str, Any]]) -> None:
    """Write a feature folder quickly (set-up, not timed)."""
    (root / ".git").mkdir(parents=True, exist_ok=True)
    folder = root / ".tmp" / "tasks" / name
    folder.mkdir(parents=True, exist_ok=True)
    task = {
        "id": name,
        "name": name,
        "status": "active",
        "subtask_count": len(subtasks),
        "completed_count": 0,
    }
    (folder / "task.json").write_text(json.dumps(task, indent=2) + "\n")
    for sub in subtasks:
        # The seed's rule (checked by the pre-flight): ids are <feature>-<seq>.
        data = {**sub, "id": f"{name}-{sub['seq']}"}
        (folder / f"subtask_{sub['seq']}.json").write_text(json.dumps(data, indent=2) + "\n")
    # On disk before the clock starts, as a user's feature folder is: otherwise the
    # run's first fsync pays for writing back what the set-up just wrote (ext4 commits
    # those files with it), up to 0.5 ms per subtask file here.
    os.sync()


def python_subtask(seq: str, callable_: str, deliverable: str, **execution: Any) -> dict[str, Any]:
    return {
        "id": f"bench-{seq}",
        "seq": seq,
        "title": f"bench {seq}",
        "status": "pending",
        "depends_on": [],
        "parallel": True,
        "suggested_agent": "python",
        "acceptance_criteria": ["runs"],
        "deliverables": [deliverable],
        "execution": {"callable": callable_, "timeout_s": 600, **execution},
    }


def noop_feature(root: Path, name: str, n: int) -> None:
    width = max(2, len(str(n)))
    subs = []
    out = root / "out"
    out.mkdir(parents=True, exist_ok=True)
    for i in range(1, n + 1):
        seq = str(i).zfill(width)
        (out / f"{seq}.txt").touch()
        subs.append(python_subtask(seq, "bench.tasks:noop", f"out/{seq}.txt"))
    write_feature(root, name, subs)


class BatchqClient:
    """The producer side of batchq for one Redis: builds an Orchestrator per run."""

    def __init__(self, url: str, **overrides: Any) -> None:
        self.url = url
        self.overrides = overrides
        self.store = StateStore.from_url(url)
        self.app: Any = None

    def orchestrator(self, root: Path, name: str) -> Orchestrator:
        """One app for the client's life, as a long-lived orchestrator keeps one (the
        bare baseline reuses its app too)."""
        settings = load_settings(root, redis_url=self.url, python_allow=["bench"], **self.overrides)
        if self.app is None:
            self.app = create_app(settings)
        return Orchestrator(root, name, settings, self.app, self.store)

    def close(self) -> None:
        self.store.close()


class InodeQuiet:
    """Waits, before a timed ``batchq run``, until this file system no longer holds
    inodes freed in the last minute — on ext4 without a journal only, such as this
    machine's (docs/benchmarks.md, "Freed inodes").

    There ext4 will not reuse an inode freed less than 60 s ago (360 s while its inode
    table block is unwritten), and every file it creates walks past each such inode of
    the group, one buffer lookup apiece: 5,000 files created just after 5,000 were
    deleted took 1.8 s instead of 0.14 s here. The harness's own clean-up (thousands of
    files per repetition) and the previous run's rewrites would otherwise land in
    batchq's timed run, which creates a temp file per task file it rewrites; bare
    Celery creates none. A user's feature folder does not come after ten thousand
    deletions in the same minute, so the bench waits those out: it syncs (so the
    inode tables are written and the 60 s rule applies) and sleeps until 61 s have
    passed since the last bulk deletion it knows of. Deletions batchq makes within
    the timed run itself are measured as they come."""

    WINDOW_S = 61.0
    FROM_FILES = 500
    """Runs of fewer task files skip the wait: their few creates walk past little, and a
    minute per repetition would be most of a small scenario (and of the test suite's
    quick bench)."""

    def __init__(self, path: Path, files: int) -> None:
        self.applies = files >= self.FROM_FILES and ext4_without_journal(path)
        self.deleted_at: float | None = None

    def deleted(self) -> None:
        """Record a bulk deletion (a removed tree, a finished ``batchq run``)."""
        self.deleted_at = time.monotonic()

    def remove(self, path: Path) -> None:
        import shutil

        shutil.rmtree(path, ignore_errors=True)
        self.deleted()

    def wait(self) -> float:
        """Sleep out the window; the seconds slept."""
        if not self.applies or self.deleted_at is None:
            return 0.0
        os.sync()
        left = self.deleted_at + self.WINDOW_S - time.monotonic()
        if left > 0:
            time.sleep(left)
        return max(left, 0.0)


def ext4_without_journal(path: Path) -> bool:
    """Whether ``path`` is on an ext4 file system mounted without a journal (read from
    ``/sys/fs/ext4/<device>/journal_task``, which says ``<none>`` then)."""
    try:
        st = os.stat(path)
        device = Path(f"/sys/dev/block/{os.major(st.st_dev)}:{os.minor(st.st_dev)}").resolve()
        task = Path("/sys/fs/ext4") / device.name / "journal_task"
        return task.read_text().strip() == "<none>"
    except OSError:
        return False


def tmpdir(prefix: str) -> Path:
    return Path(tempfile.mkdtemp(prefix=prefix))


def self_peak_mb() -> float:
    """This process's RSS high-water mark."""
    return proc_peak_mb(os.getpid())


def proc_peak_mb(pid: int) -> float:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0
