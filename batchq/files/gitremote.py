"""Git plumbing that talks to a remote: reachability, push, fetch, listing, deleting refs.

Every call goes through :func:`batchq.files.gitsnap.git` (hooks off, no prompt,
bounded) with what a non-interactive transport needs on top: ``GIT_TERMINAL_PROMPT=0``
(no credential prompt), ssh in ``BatchMode`` with a connect timeout (no passphrase or
host-key prompt), a low-speed abort for http, no auto-gc after a fetch, and the
caller's ``timeout_s`` on the whole command. A failure is an
:class:`~batchq.errors.InfrastructureError` whose message names the remote with its
password masked (a URL never carries one here: settings refuse it, but a remote's own
error text is masked all the same).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

from batchq.errors import InfrastructureError, mask_url
from batchq.files import gitsnap

__all__ = [
    "REF_PREFIX",
    "delete_refs",
    "fetch",
    "list_refs",
    "push",
    "reachable",
    "remote_env",
]

REF_PREFIX = "refs/batchq/"

_SSH_OPTIONS = "-o BatchMode=yes -o ConnectTimeout=20"
_NETWORK_CONFIG = (
    "-c",
    "http.lowSpeedLimit=1000",
    "-c",
    "http.lowSpeedTime=30",
    "-c",
    "gc.auto=0",
    "-c",
    "maintenance.auto=false",
    "-c",
    "fetch.writeCommitGraph=false",
)


def remote_env() -> dict[str, str]:
    """The environment every remote call adds: no prompt of any kind. A user's own
    ``GIT_SSH_COMMAND`` (a deploy key) is kept, with batch mode added."""
    ssh = os.environ.get("GIT_SSH_COMMAND") or os.environ.get("GIT_SSH") or "ssh"
    return {"GIT_TERMINAL_PROMPT": "0", "GIT_SSH_COMMAND": f"{ssh} {_SSH_OPTIONS}"}


def _remote(cwd: Path, url: str, args: Sequence[str], timeout_s: float, what: str) -> bytes:
    try:
        done = gitsnap.git(
            cwd, *_NETWORK_CONFIG, *args, env=remote_env(), timeout_s=timeout_s, check=False
        )
    except InfrastructureError as exc:  # a timeout, or git missing
        raise InfrastructureError(f"git {what} {mask_url(url)}: {exc}") from None
    if done.returncode != 0:
        lines = done.stderr.decode("utf-8", "replace").strip().splitlines()
        first = next((i for i, x in enumerate(lines) if x.startswith(("fatal:", "error:"))), 0)
        shown = " ".join(lines[first : first + 2]).rstrip(".")
        detail = mask_url(shown) if lines else f"exit {done.returncode}"
        raise InfrastructureError(f"git {what} {mask_url(url)} failed: {detail}")
    return done.stdout


def reachable(cwd: Path, url: str, timeout_s: float) -> None:
    """Raise :class:`InfrastructureError` unless ``url`` answers as a git repository."""
    _remote(cwd, url, ["ls-remote", "--", url, "HEAD"], timeout_s, "ls-remote")


def push(cwd: Path, url: str, refspecs: Sequence[str], timeout_s: float) -> None:
    """Push ``refspecs`` (``src:dst``, ``+`` forces) from the repository at ``cwd``."""
    if refspecs:
        _remote(
            cwd, url, ["push", "--quiet", "--no-verify", "--", url, *refspecs], timeout_s, "push"
        )


def fetch(
    cwd: Path, url: str, refspecs: Sequence[str], timeout_s: float, *, shallow: bool = False
) -> None:
    """Fetch exactly ``refspecs`` into the repository at ``cwd`` (no tags, no other refs);
    ``shallow``: their commits alone, without history (``--depth=1``)."""
    args = ["fetch", "--quiet", "--no-tags", "--no-write-fetch-head", "--no-auto-gc"]
    if shallow:
        args.append("--depth=1")
    _remote(cwd, url, [*args, "--", url, *refspecs], timeout_s, "fetch")


def list_refs(cwd: Path, url: str, prefix: str, timeout_s: float) -> dict[str, str]:
    """The remote's refs under ``prefix`` (``refs/batchq/...``): name -> commit."""
    out = _remote(cwd, url, ["ls-remote", "--", url, f"{prefix}*"], timeout_s, "ls-remote")
    found: dict[str, str] = {}
    for line in out.decode("utf-8", "surrogateescape").splitlines():
        oid, _, name = line.partition("\t")
        if name.startswith(prefix):
            found[name] = oid
    return found


def delete_refs(cwd: Path, url: str, refs: Sequence[str], timeout_s: float) -> None:
    """Delete ``refs`` on the remote (absent ones are no error for git)."""
    for start in range(0, len(refs), 200):
        push(cwd, url, [f":{ref}" for ref in refs[start : start + 200]], timeout_s)
