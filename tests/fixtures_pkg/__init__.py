"""Importable callables for the python agent's tests (put ``tests/`` on sys.path)."""
