"""A database migration that fails on purpose (for `make run-broken`)."""

import sys

print("applying 0001_create_users ... ok")
print("applying 0002_add_sessions ... ok")
print("applying 0003_add_password_reset ...", flush=True)
print("Traceback (most recent call last):", file=sys.stderr)
print('  File "migrations/0003_add_password_reset.py", line 12, in up', file=sys.stderr)
print(
    'psycopg.errors.UndefinedTable: relation "user_tokens" does not exist',
    file=sys.stderr,
)
sys.exit(1)
