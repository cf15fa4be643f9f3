"""The public API: a sorted ``__all__`` whose every name resolves, and a cheap import."""

from __future__ import annotations

import subprocess
import sys

import batchq


def test_all_is_sorted_and_every_name_resolves() -> None:
    assert batchq.__all__ == sorted(batchq.__all__)
    for name in batchq.__all__:
        assert getattr(batchq, name) is not None, name


def test_an_unknown_name_is_an_attribute_error() -> None:
    try:
        batchq.no_such_thing  # noqa: B018
    except AttributeError as exc:
        assert "no_such_thing" in str(exc)
    else:
        raise AssertionError("expected AttributeError")


def test_importing_batchq_does_not_import_celery_or_redis() -> None:
    code = (
        "import sys, batchq; "
        "print(','.join(m for m in ('celery', 'kombu', 'redis') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""
