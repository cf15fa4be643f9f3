"""Flower on the batchq app: how it is started, secured and waited for.

``batchq flower`` and ``batchq up --flower`` both build Flower's environment here, so
the two behave alike:

- Basic auth comes from ``BATCHQ_FLOWER_USER``/``BATCHQ_FLOWER_PASSWORD`` and reaches
  Flower as ``FLOWER_BASIC_AUTH`` in its environment, never on its command line
  (where ``ps`` would show it). Without auth, Flower may only bind a loopback address.
- ``/metrics`` and ``/healthcheck`` answer without auth whatever is configured
  (Flower 2.x serves them outside its auth): an address Flower binds is an address
  its metrics are readable on. Bind loopback, or put a proxy in front.
- The tasks page shows the ``args`` column: batchq's producer sets every subtask's
  argument summary to ``feature=X batch=N seq=NN title='...'``, and that summary is
  what identifies a subtask among the ``batchq.run_subtask`` rows.
- Flower runs read-only: its revoke and terminate buttons would fail the batch's
  chord (TRAPS), while ``batchq cancel`` cancels cooperatively.

An operator's own ``FLOWER_*`` variables win over these defaults, except the auth,
which batchq settings own (a bare ``FLOWER_BASIC_AUTH`` is refused, not dropped).
Nothing here imports Celery or Flower.
"""

from __future__ import annotations

import ipaddress
import os
import re
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Mapping
from pathlib import Path

from batchq import procs
from batchq.errors import InfrastructureError, UsageError
from batchq.procs import Child
from batchq.settings import Settings

__all__ = [
    "FLOWER_APP",
    "TASKS_COLUMNS",
    "check_bind",
    "flower_argv",
    "flower_command",
    "flower_env",
    "has_auth",
    "is_loopback",
    "listening_url",
    "local_url",
    "start_flower",
    "wait_healthy",
]

FLOWER_APP = "batchq.worker"
TASKS_COLUMNS = "name,uuid,state,args,received,runtime,worker"
"""The tasks page's columns: Flower's default set plus ``args`` (the argument summary)."""

_VISIT_RE = re.compile(r"Visit me at (https?://\S+?)/?\s*$", re.MULTILINE)


def is_loopback(address: str) -> bool:
    """True for ``localhost`` and loopback IPs; ``""`` (every interface) is not."""
    if address == "localhost":
        return True
    try:
        return ipaddress.ip_address(address).is_loopback
    except ValueError:
        return False


def has_auth(settings: Settings) -> bool:
    return bool(settings.flower_user and settings.flower_password)


def check_bind(settings: Settings, address: str) -> None:
    """Refuse to expose Flower beyond loopback without basic auth."""
    if not has_auth(settings) and not is_loopback(address):
        shown = address or "every interface"
        raise UsageError(
            f"refusing to expose Flower on {shown} without auth: set BATCHQ_FLOWER_USER "
            "and BATCHQ_FLOWER_PASSWORD (and note that /metrics and /healthcheck never "
            "need auth, so bind an address only trusted clients reach)"
        )
    if settings.flower_user and ":" in settings.flower_user:
        raise UsageError("BATCHQ_FLOWER_USER must not contain ':' (basic auth user:password)")
    password = settings.flower_password.get_secret_value() if settings.flower_password else ""
    if "," in password:
        # Flower splits FLOWER_BASIC_AUTH at commas into several user:password pairs.
        raise UsageError("BATCHQ_FLOWER_PASSWORD must not contain ',' (Flower splits at commas)")


def flower_env(settings: Settings, base: Mapping[str, str] | None = None) -> dict[str, str]:
    """Flower's environment: ``base`` (default ``os.environ``) plus batchq's choices.

    Only keys Flower reads are added; the caller decides the rest (Redis URL, cwd).
    """
    env = dict(os.environ if base is None else base)
    if env.pop("FLOWER_BASIC_AUTH", None) and not has_auth(settings):
        raise UsageError(
            "FLOWER_BASIC_AUTH is set, but batchq takes Flower's credentials from "
            "BATCHQ_FLOWER_USER and BATCHQ_FLOWER_PASSWORD: set those instead"
        )
    if has_auth(settings):
        assert settings.flower_password is not None
        env["FLOWER_BASIC_AUTH"] = (
            f"{settings.flower_user}:{settings.flower_password.get_secret_value()}"
        )
    env.setdefault("FLOWER_TASKS_COLUMNS", TASKS_COLUMNS)
    env.setdefault("FLOWER_READ_ONLY", "true")
    return env


def flower_argv(port: int, address: str, *, app: str = FLOWER_APP) -> list[str]:
    """``celery -A batchq.worker flower``; port 0 lets Flower pick (see :func:`listening_url`)."""
    return [
        sys.executable,
        "-m",
        "celery",
        "-A",
        app,
        "flower",
        f"--address={address}",
        f"--port={port}",
    ]


def flower_command(
    settings: Settings,
    address: str | None = None,
    port: int | None = None,
    *,
    redis_url: str | None = None,
    app: str = FLOWER_APP,
    base_env: Mapping[str, str] | None = None,
) -> tuple[list[str], dict[str, str]]:
    """Flower's argv and environment for ``batchq flower``.

    ``redis_url`` (default ``settings.redis_url``) is the broker whose events Flower
    follows; without one there is nothing to watch, so it is a usage error.
    """
    address = settings.flower_address if address is None else address
    port = settings.flower_port if port is None else port
    check_bind(settings, address)
    url = redis_url or settings.redis_url
    if not url:
        raise UsageError(
            "batchq flower needs a Redis: set BATCHQ_REDIS_URL or start a stack with `batchq up`"
        )
    env = flower_env(settings, base_env)
    env["BATCHQ_REDIS_URL"] = url
    if settings.result_url and settings.result_url != settings.redis_url:
        env["BATCHQ_RESULT_URL"] = settings.result_url
    else:
        env.pop("BATCHQ_RESULT_URL", None)
    return flower_argv(port, address, app=app), env


def local_url(address: str, port: int) -> str:
    """Where this host reaches a Flower bound to ``address`` (a wildcard means loopback)."""
    if address in ("", "0.0.0.0", "::"):
        address = "127.0.0.1"
    host = f"[{address}]" if ":" in address else address
    return f"http://{host}:{port}"


def listening_url(log_text: str) -> str | None:
    """The URL from Flower's ``Visit me at ...`` log line (the real port for port 0)."""
    found = _VISIT_RE.findall(log_text)
    return found[-1] if found else None


def wait_healthy(child: Child, url: str | None = None, timeout_s: float = 60.0) -> str:
    """Wait until Flower answers ``/healthcheck``; returns its base URL.

    Without ``url``, the URL is read from Flower's log (it logs the bound port). A
    Flower that exits first (a taken port, a bad option) fails at once with its log.
    """
    deadline = time.monotonic() + timeout_s
    last = "no 'Visit me at' line in its log yet"
    while time.monotonic() < deadline:
        if not child.alive():
            raise InfrastructureError(
                f"Flower exited with status {child.returncode}; log {child.log_path}:\n"
                f"{child.log_tail()}"
            )
        base = url or listening_url(child.read_log())
        if base is not None:
            try:
                with urllib.request.urlopen(f"{base}/healthcheck", timeout=2.0) as resp:
                    if resp.status == 200:
                        return base
            except (OSError, urllib.error.URLError) as exc:
                last = f"{base}/healthcheck: {exc}"
        time.sleep(0.2)
    raise InfrastructureError(
        f"Flower did not answer within {timeout_s:g}s ({last}); log {child.log_path}:\n"
        f"{child.log_tail()}"
    )


def start_flower(
    settings: Settings,
    redis_url: str,
    log_path: Path,
    *,
    address: str | None = None,
    port: int = 0,
    cwd: Path | None = None,
    app: str = FLOWER_APP,
    timeout_s: float = 60.0,
) -> tuple[Child, str]:
    """Start Flower as a child process group and wait until it answers; (child, URL).

    Port 0 (the default) lets Flower bind a free port itself and reads it from its
    log: no "find a free port, then start" race. A Flower that does not come up is
    killed before the error is raised.
    """
    address = settings.flower_address if address is None else address
    argv, env = flower_command(settings, address, port, redis_url=redis_url, app=app)
    procs.install_sigterm_reaper()
    child = procs.spawn(argv, log_path, env=env, cwd=cwd)
    try:
        url = wait_healthy(child, local_url(address, port) if port else None, timeout_s)
    except BaseException:
        child.kill()
        raise
    if port == 0 and address in ("", "0.0.0.0", "::"):
        url = local_url(address, int(url.rsplit(":", 1)[1]))
    return child, url
