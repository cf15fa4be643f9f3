"""Where a project's features live: the root, the tasks folder, a feature's folder.

Kept apart from :mod:`batchq.files.taskfiles` (which validates with pydantic) and
importing nothing but the standard library, so ``batchq status``'s quick path
(:mod:`batchq.quickstatus`) finds the files without paying for the models.
"""

from __future__ import annotations

from pathlib import Path

from batchq import layout
from batchq.errors import UsageError

__all__ = [
    "ARCHIVE_DIR",
    "ROOT_MARKERS",
    "TASK_FILE",
    "existing_feature_dir",
    "feature_dir",
    "find_root",
    "list_features",
    "tasks_dir",
]

TASK_FILE = layout.TASK_FILE
ARCHIVE_DIR = "completed"
ROOT_MARKERS = (".git", "package.json")


def find_root(start: Path | None = None, root: Path | None = None) -> Path:
    """The project root: ``root`` if given, else the nearest folder with a root marker.

    The markers are ``.git`` and ``package.json``. Walking up mirrors the established
    tools, so batchq finds the same
    ``.tmp/tasks`` from any subfolder of a project.
    """
    if root is not None:
        root = root.expanduser()
        if not root.is_dir():
            raise UsageError(f"--root {root} is not an existing folder")
        return root.resolve()
    here = (start if start is not None else Path.cwd()).resolve()
    for folder in (here, *here.parents):
        if any((folder / marker).exists() for marker in ROOT_MARKERS):
            return folder
    raise UsageError(
        f"no project root found: no folder from {here} up contains .git or package.json; "
        "pass --root PATH"
    )


def tasks_dir(root: Path) -> Path:
    """``<root>/.tmp/tasks``: where every feature folder lives."""
    return root / layout.TASKS_DIR


def feature_dir(root: Path, name: str) -> Path:
    """The folder of feature ``name`` (it may not exist)."""
    _check_name(name)
    return tasks_dir(root) / name


def list_features(root: Path) -> list[str]:
    """Active features, sorted: folders holding a ``task.json``, never the archive."""
    base = tasks_dir(root)
    if not base.is_dir():
        return []
    return sorted(
        entry.name
        for entry in base.iterdir()
        if entry.name != ARCHIVE_DIR
        and not entry.name.startswith(".")
        and entry.is_dir()
        and (entry / TASK_FILE).is_file()
    )


def _check_name(name: str) -> None:
    if (
        not name
        or name.startswith(".")
        or name == ARCHIVE_DIR
        or "/" in name
        or "\\" in name
        or "\0" in name
    ):
        raise UsageError(f"{name!r} is not a feature name")


def existing_feature_dir(root: Path, name: str) -> Path:
    """The folder of an active feature; a :class:`UsageError` naming the known ones
    (or the archive) otherwise."""
    path = feature_dir(root, name)
    if (path / TASK_FILE).is_file():
        return path
    archived = tasks_dir(root) / ARCHIVE_DIR / name
    if archived.is_dir():
        raise UsageError(f"feature {name!r} is archived in {archived}")
    known = list_features(root)
    listing = f"known features: {', '.join(known)}" if known else f"none in {tasks_dir(root)}"
    raise UsageError(f"unknown feature {name!r}; {listing}")
