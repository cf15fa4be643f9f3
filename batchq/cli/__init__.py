"""The ``batchq`` command line: a thin layer over the Python API."""

from batchq.cli.main import app, main

__all__ = ["app", "main"]
