"""Pure path rules for deliverables and context files (SPEC 2).

Every path in a task file is relative to the project root and written POSIX-style.
Three questions are answered here, without touching the file system:

* :func:`normalise` — the canonical spelling (``./src//a.py`` -> ``src/a.py``); a
  trailing ``/`` is kept because it says "this is a folder". Absolute paths and
  ``..`` escapes raise :class:`PathError`.
* :func:`overlaps` — could two deliverables touch the same file? True when they are
  equal or one is a folder prefix of the other, compared component by component
  (``src/a`` and ``src/ab`` do not overlap).
* :func:`is_protected` — the gitignore-style pattern a path falls under, if any.

Pattern semantics, a deliberately small and safe subset of gitignore:

* A pattern without a ``/`` (other than a trailing one) matches any component of the
  path, and so everything under it: ``.git/`` protects ``.git/config`` and
  ``sub/.git/HEAD``; ``*.env*`` protects ``.env``, ``config/.env.local`` and
  ``prod.env``; ``*.key`` protects ``certs/server.key``.
* A pattern with a ``/`` elsewhere is anchored at the root and protects what it
  matches and everything under it; ``**`` spans any number of components.
* A trailing ``/`` is accepted but does not restrict the match to folders: a task
  file may name a folder without its slash (and a ``.git`` *file* marks a worktree).
* Matching is case-insensitive, so ``PROD.ENV`` is protected on the case-insensitive
  file systems where it is the same file as ``prod.env``. Negation (``!``) is not
  supported: a protected list can only add protection.
"""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Callable, Sequence
from functools import lru_cache

from batchq.errors import InputError

__all__ = ["PathError", "components", "is_protected", "normalise", "overlaps"]

_DRIVE = re.compile(r"^[A-Za-z]:[\\/]")
_ABSOLUTE = "is an absolute path; expected a path relative to the project root"
_ESCAPE = "escapes the project root with '..'; expected a path inside it"
_EMPTY = "is empty; expected a path relative to the project root"
_ROOT = "names the project root itself; expected a file or folder inside it"
_CACHE_LIMIT = 65536


class PathError(InputError, ValueError):
    """A path that cannot name a file inside the project root.

    Also a :class:`ValueError`, so pure callers can treat it as bad input; the planner
    turns it into a problem naming the task file and field.
    """

    def __init__(self, path: str, reason: str) -> None:
        self.path = path
        self.reason = reason
        super().__init__(f"{path!r} {reason}")


@lru_cache(maxsize=32768)
def components(path: str) -> tuple[tuple[str, ...], bool]:
    """The path's components and whether it names a folder (trailing ``/``), cached:
    planning asks for the same paths many times (see :func:`_split`)."""
    return _split(path)


def _split(path: str) -> tuple[tuple[str, ...], bool]:
    """:func:`components` uncached, for what asks once per path: hashing and matching
    a batch's deliverables while it runs (the matcher caches its own answers). Through
    the cache, a 20,000-member batch held 7 MiB of component tuples under its report."""
    if not path.strip():
        raise PathError(path, _EMPTY)
    if path.startswith("/") or _DRIVE.match(path):
        raise PathError(path, _ABSOLUTE)
    out: list[str] = []
    for part in path.split("/"):
        if part in ("", "."):
            continue
        if part == "..":
            if not out:
                raise PathError(path, _ESCAPE)
            out.pop()
        else:
            out.append(part)
    if not out:
        raise PathError(path, _ROOT)
    return tuple(out), path.rsplit("/", 1)[-1] in ("", ".", "..")


def normalise(path: str) -> str:
    """The canonical POSIX spelling of a relative path; a folder keeps its ``/``."""
    comps, is_dir = _split(path)
    return "/".join(comps) + ("/" if is_dir else "")


def overlaps(a: str, b: str) -> bool:
    """True when the two paths are equal or one is a folder prefix of the other."""
    pa, _ = components(a)
    pb, _ = components(b)
    n = min(len(pa), len(pb))
    return pa[:n] == pb[:n]


def is_protected(path: str, patterns: Sequence[str]) -> str | None:
    """The pattern that protects ``path`` (see the module docstring), or None.

    Raises :class:`PathError` for a path that is absolute or escapes the root.
    """
    matcher = _matcher(patterns if isinstance(patterns, tuple) else tuple(patterns))
    return matcher.match(path)


Component = Callable[[str], object]


class _Matcher:
    """Compiled patterns, with answers cached per path and per component: both repeat
    across thousands of subtasks, so planning a big feature costs a dict look-up each."""

    def __init__(self, patterns: tuple[str, ...]) -> None:
        self.floating: list[tuple[str, Component]] = []
        self.anchored: list[tuple[str, list[Component | None]]] = []
        self._seen: dict[str, str | None] = {}
        self._paths: dict[str, str | None] = {}
        for pattern in patterns:
            body = pattern.strip().rstrip("/")
            if not body:
                continue
            if "/" in body:
                pieces = [p for p in body.split("/") if p]
                self.anchored.append((pattern, [_compile(p) for p in pieces]))
            else:
                self.floating.append((pattern, _compile(body) or _always))

    def match(self, path: str) -> str | None:
        try:
            return self._paths[path]
        except KeyError:
            pass
        comps, _ = _split(path)
        hit = next(filter(None, map(self._component, comps)), None)
        if hit is None:
            hit = next((p for p, pieces in self.anchored if _match_prefix(pieces, comps)), None)
        return _remember(self._paths, path, hit)

    def _component(self, comp: str) -> str | None:
        try:
            return self._seen[comp]
        except KeyError:
            pass
        hit = next((pattern for pattern, test in self.floating if test(comp)), None)
        return _remember(self._seen, comp, hit)


def _remember(cache: dict[str, str | None], key: str, value: str | None) -> str | None:
    if len(cache) >= _CACHE_LIMIT:
        cache.clear()
    cache[key] = value
    return value


def _always(_: str) -> bool:
    return True


def _compile(piece: str) -> Component | None:
    """A matcher for one component; None stands for ``**`` (any number of them)."""
    if piece == "**":
        return None
    return re.compile(fnmatch.translate(piece), re.IGNORECASE).match


def _match_prefix(pieces: list[Component | None], comps: tuple[str, ...]) -> bool:
    """True when the pattern pieces match a leading run of the path's components."""
    if not pieces:
        return True
    head, rest = pieces[0], pieces[1:]
    if head is None:
        return any(_match_prefix(rest, comps[i:]) for i in range(len(comps) + 1))
    return bool(comps) and bool(head(comps[0])) and _match_prefix(rest, comps[1:])


@lru_cache(maxsize=64)
def _matcher(patterns: tuple[str, ...]) -> _Matcher:
    return _Matcher(patterns)
