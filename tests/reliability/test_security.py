"""Bad messages and secrets: pickle is refused, a worker enforces its own allow-list,
passwords never show, TLS URLs are accepted, Flower stays on loopback without auth,
and an allowed command in the default sandbox can neither copy the worker's
environment nor rewrite ``batchq.toml`` (docs/security.md lists every defence).

The worker-side allow-list is also covered by
``tests/integration/test_execution.py::test_a_worker_refuses_a_callable_its_own_allow_list_does_not_cover``;
the test here adds that a refused module is never even imported. Flower refusing a
bind beyond loopback without auth is tested in ``tests/unit/test_flower.py``
(``test_a_public_bind_without_auth_is_refused_and_says_metrics_stay_open``,
``test_the_cli_refuses_a_public_flower_without_auth``) and
``tests/integration/test_flower.py``.
"""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
from kombu import Connection

from batchq.errors import BrokerUnavailable, mask_url
from batchq.models import ResultState
from batchq.settings import Settings
from batchq.store.state import wait_until
from batchq.transport.app import create_app
from tests.reliability.faults import FAULT_ENV, client_for

pytestmark = pytest.mark.reliability

SECRET_URL = "redis://:s3cr3t-pw@127.0.0.1:1/0"
MASKED = "redis://:***@127.0.0.1:1/0"


class _Payload:
    """Unpickling this runs ``touch <marker>``: what a pickle message could do."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[object, tuple[str]]:
        return (os.system, (f"touch {self.marker}",))


def test_a_pickle_message_is_refused_and_logged_not_executed(redis_target, start_worker, tmp_path):
    worker = start_worker(redis_target.url, concurrency=1)
    marker = tmp_path / "pwned"
    with Connection(redis_target.url) as conn:
        conn.Producer().publish(
            _Payload(marker),
            exchange="",
            routing_key="batchq.shell",
            serializer="pickle",
            headers={"task": "batchq.run_subtask", "id": str(uuid.uuid4()), "lang": "py"},
        )
    log = worker.children[0]
    refused = ("ContentDisallowed", "Refusing to deserialize")
    assert wait_until(lambda: any(r in log.read_log() for r in refused), 60, 0.2), log.log_tail()
    assert "application/x-python-serialize" in log.read_log()
    assert not marker.exists()
    client = client_for(redis_target.redis_py_url)
    try:  # the message is dropped, not requeued forever
        assert wait_until(lambda: client.llen("batchq.shell") == 0, 30, 0.2)
    finally:
        client.close()
    assert not marker.exists()
    assert log.alive()


def test_a_worker_never_imports_a_module_outside_its_own_allow_list(
    redis_target, start_worker, orchestrator, make_feature, subtask_data, tmp_path
):
    markers = tmp_path / "markers"
    markers.mkdir()
    env = {
        **FAULT_ENV,
        "BATCHQ_PYTHON_ALLOW": "tests.fixtures_pkg",
        "BATCHQ_TEST_MARKER_DIR": str(markers),
    }
    start_worker(redis_target.url, env=env)
    root = make_feature(
        [subtask_data("01", callable_="tests.reliability.refused_payload:run", timeout_s=4)]
    )
    # The producer is configured to allow everything: only the worker stands guard.
    result = orchestrator(root, redis_target.url, python_allow=["*"]).run()
    (only,) = result.reports[0].results
    assert only.result is ResultState.FAILED
    assert only.error_type == "PolicyError"
    assert "not allowed" in (only.error or "")
    assert list(markers.iterdir()) == []  # neither imported nor called


def _cli(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "BATCHQ_REDIS_URL": SECRET_URL, "BATCHQ_SHELL_ALLOW": "*"}
    return subprocess.run(
        [sys.executable, "-m", "batchq", *args],
        env=env,
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.mark.parametrize(
    ("args", "code"),
    [
        (("run", "feat"), 3),
        (("batch", "feat", "01"), 3),
        (("watch", "feat"), 3),
        (("cancel", "feat"), 3),
        (("status", "feat"), 0),  # status never fails because Redis is down
    ],
    ids=lambda v: " ".join(v) if isinstance(v, tuple) else str(v),
)
def test_a_redis_password_never_shows_in_cli_errors(args, code, make_feature, subtask_data):
    root = make_feature([subtask_data("01", command="echo hi", deliverables=["x.txt"])])
    done = _cli(*args, "--root", str(root), cwd=root)
    output = done.stdout + done.stderr
    assert done.returncode == code, output
    assert "s3cr3t-pw" not in output
    if code == 3:
        assert MASKED in output


def test_masking_covers_every_redis_scheme():
    for url in (SECRET_URL, "rediss://user:s3cr3t-pw@host:6380/0", "redis+socket://:s3cr3t-pw@/x"):
        assert "s3cr3t-pw" not in mask_url(url)
        assert "s3cr3t-pw" not in str(BrokerUnavailable(url, "refused"))


def test_tls_redis_urls_are_accepted_and_verify_certificates_by_default():
    settings = Settings(redis_url="rediss://:pw@redis.example:6380/0")
    assert settings.redis_url is not None and settings.backend_url == settings.redis_url
    app = create_app(settings)  # connects to nothing
    assert app.backend.connparams["ssl_cert_reqs"] == 2  # ssl.CERT_REQUIRED
    assert app.conf.broker_use_ssl == {"ssl_cert_reqs": 2}
    explicit = create_app(
        Settings(redis_url="rediss://redis.example:6380/0?ssl_cert_reqs=CERT_OPTIONAL")
    )
    assert explicit.backend.connparams["ssl_cert_reqs"] == 1


NARROW_ALLOW = "echo *,cp *,mkdir *"
WORKER_SECRET = "sekrit-4f1d9c"


def test_an_allowed_command_can_neither_read_the_workers_secrets_nor_rewrite_its_policy(
    redis_target, start_worker, orchestrator, make_feature, subtask_data
):
    """Issue #17's attacks 2 and 3 on a real worker with a narrow allow-list and the
    default sandbox setting (on where bwrap works, as here and in CI)."""
    from batchq.agents.sandbox import bwrap_status

    usable, reason = bwrap_status()
    if not usable:
        pytest.skip(f"bwrap does not work here: {reason}")
    env = {**FAULT_ENV, "BATCHQ_SHELL_ALLOW": NARROW_ALLOW, "MY_SERVICE_TOKEN": WORKER_SECRET}
    env["BATCHQ_SANDBOX"] = "auto"  # the default, whatever the test process inherited
    worker = start_worker(redis_target.url, env=env, concurrency=2)
    assert WORKER_SECRET.encode() in Path(f"/proc/{worker.pid}/environ").read_bytes()
    root = make_feature(
        [
            subtask_data(
                "01",
                command="cp /proc/$PPID/environ leak.txt",
                deliverables=["leak.txt"],
                timeout_s=4,
            ),
            subtask_data(
                "02",
                command="echo '[agents.shell]' > batchq.toml",
                deliverables=["out/02.txt"],
                timeout_s=4,
            ),
        ]
    )
    policy = '[agents.shell]\nallow = ["echo *"]\n'
    (root / "batchq.toml").write_text(policy)
    result = orchestrator(root, redis_target.url, shell_allow=NARROW_ALLOW.split(",")).run()
    by_seq = {r.seq: r for r in result.reports[0].results}

    copied = by_seq["01"]
    assert copied.result is ResultState.COMPLETED, copied  # the command was allowed and ran
    leaked = (root / "leak.txt").read_bytes()
    assert b"BATCHQ_SEQ=01" in leaked  # it did copy an environment: the sandbox's own
    assert WORKER_SECRET.encode() not in leaked
    assert redis_target.url.encode() not in leaked
    assert b"BATCHQ_REDIS_URL" not in leaked

    rewrite = by_seq["02"]
    assert rewrite.result is ResultState.FAILED, rewrite
    assert (root / "batchq.toml").read_text() == policy
