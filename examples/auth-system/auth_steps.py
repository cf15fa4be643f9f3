"""Python-agent steps of the auth-system example: each writes one module of authkit.

A python agent calls ``module:function(subtask, context)`` inside the worker; the
context is the shared session context text, with the feature's workspace attached
as ``context.workspace`` (the worker's own working directory may differ).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

PACKAGE = '''"""authkit: password hashing and signed session tokens."""
'''

PASSWORDS = '''"""Salted PBKDF2-SHA256 hashes: ``pbkdf2_sha256$<iterations>$<salt>$<hex>``."""

import hashlib
import hmac
import secrets

ITERATIONS = 100_000


def hash_password(password: str, *, iterations: int = ITERATIONS) -> str:
    salt = secrets.token_hex(16)
    digest = hashlib.pbkdf2_hmac("sha256", password.encode(), salt.encode(), iterations)
    return f"pbkdf2_sha256${iterations}${salt}${digest.hex()}"


def verify_password(password: str, stored: str) -> bool:
    try:
        scheme, iterations, salt, expected = stored.split("$")
    except ValueError:
        return False
    if scheme != "pbkdf2_sha256":
        return False
    digest = hashlib.pbkdf2_hmac("sha256", password.encode(), salt.encode(), int(iterations))
    return hmac.compare_digest(digest.hex(), expected)
'''

TOKENS = '''"""HMAC-SHA256 signed session tokens: ``<subject>.<expiry>.<signature>`` (base64url)."""

import base64
import hashlib
import hmac
import time


class TokenError(ValueError):
    """The token is malformed, tampered with or expired."""


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _sign(payload: str, secret: bytes) -> str:
    return _b64(hmac.new(secret, payload.encode(), hashlib.sha256).digest())


def issue_token(subject: str, secret: bytes, *, ttl_s: int = 3600, now: float | None = None) -> str:
    expiry = int((now if now is not None else time.time()) + ttl_s)
    payload = f"{_b64(subject.encode())}.{expiry}"
    return f"{payload}.{_sign(payload, secret)}"


def read_token(token: str, secret: bytes, *, now: float | None = None) -> str:
    try:
        subject_b64, expiry, signature = token.split(".")
    except ValueError as exc:
        raise TokenError("malformed token") from exc
    payload = f"{subject_b64}.{expiry}"
    if not hmac.compare_digest(signature, _sign(payload, secret)):
        raise TokenError("bad signature")
    if int(expiry) < (now if now is not None else time.time()):
        raise TokenError("expired")
    padded = subject_b64 + "=" * (-len(subject_b64) % 4)
    return base64.urlsafe_b64decode(padded).decode()
'''


def _write(context: str, files: dict[str, str]) -> str:
    root = Path(getattr(context, "workspace", Path.cwd()))
    for path, text in files.items():
        target = root / path
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(text, encoding="utf-8")
    return "wrote " + ", ".join(files)


def write_passwords(subtask: Any, context: str) -> str:
    return _write(context, {"authkit/__init__.py": PACKAGE, "authkit/passwords.py": PASSWORDS})


def write_tokens(subtask: Any, context: str) -> str:
    return _write(context, {"authkit/tokens.py": TOKENS})
