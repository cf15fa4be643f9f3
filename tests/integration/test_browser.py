"""Flower in a real browser: Debian's Chromium driven by Playwright.

Flower fills its tasks table by AJAX after the page loads, so a DOM dump is not
enough (TRAPS): Playwright logs in with basic auth, opens the tasks page, waits for
the rows, and finds every subtask's seq and title in them. The screenshot it saves
under the test's temp dir is the evidence a human can look at.

Playwright never downloads a browser here: it launches ``/usr/bin/chromium``, which
``make browser-deps`` installs (CI runs it before ``make test``).
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from batchq.local.embedded import LocalWorkers
from batchq.local.flower import start_flower
from batchq.protocol import DEFAULT_QUEUES
from batchq.run.orchestrator import Orchestrator
from batchq.settings import load_settings
from batchq.store.state import StateStore
from batchq.transport.app import create_app

# Generous: Flower, a worker and a run start in the module fixture on a shared 2-core box.
pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
REPO_ROOT = Path(__file__).resolve().parents[2]
USER, PASSWORD = "ops", "browser-test-pw"
TITLES = {
    "01": "Render the login page",
    "02": "Write the session store",
}

if not (CHROMIUM.is_file() and os.access(CHROMIUM, os.X_OK)):
    pytest.skip(
        f"no Chromium at {CHROMIUM}: run `make browser-deps` (apt-get install chromium, as root)",
        allow_module_level=True,
    )
sync_api = pytest.importorskip(
    "playwright.sync_api", reason="playwright is not installed: pip install -e '.[dev]'"
)


def write_feature(root: Path, name: str) -> None:
    (root / ".git").mkdir(parents=True, exist_ok=True)
    folder = root / ".tmp" / "tasks" / name
    folder.mkdir(parents=True)
    task = {
        "id": name,
        "name": "Browser feature",
        "status": "active",
        "objective": "seen in a browser",
        "context_files": [],
        "reference_files": [],
        "exit_criteria": ["done"],
        "subtask_count": len(TITLES),
        "completed_count": 0,
        "created_at": "2026-01-01T00:00:00.000Z",
    }
    (folder / "task.json").write_text(json.dumps(task, indent=2) + "\n", encoding="utf-8")
    for seq, title in TITLES.items():
        sub = {
            "id": f"{name}-{seq}",
            "seq": seq,
            "title": title,
            "status": "pending",
            "depends_on": [],
            "parallel": True,
            "suggested_agent": "shell",
            "context_files": [],
            "reference_files": [],
            "acceptance_criteria": ["file written"],
            "deliverables": [f"out/{seq}.txt"],
            "execution": {"command": f"mkdir -p out && echo {seq} > out/{seq}.txt"},
        }
        text = json.dumps(sub, indent=2) + "\n"
        (folder / f"subtask_{seq}.json").write_text(text, encoding="utf-8")


@pytest.fixture(scope="module")
def flower_after_a_run(
    redis_target: Any, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[str]:
    """Flower (first), a worker, and one finished batch of two subtasks: Flower's URL."""
    logs = tmp_path_factory.mktemp("browser-stack")
    settings = load_settings(
        None, redis_url=redis_target.url, flower_user=USER, flower_password=PASSWORD
    )
    flower, url = start_flower(settings, redis_target.url, logs / "flower.log", cwd=REPO_ROOT)
    workers = LocalWorkers(
        redis_target.url,
        count=1,
        concurrency=2,
        queues=DEFAULT_QUEUES,
        env={"BATCHQ_SHELL_ALLOW": "*"},
        log_dir=logs,
        cwd=REPO_ROOT,
    )
    try:
        workers.start()
        workers.wait_ready(90)
        _wait_worker_seen(url)
        root = tmp_path_factory.mktemp("browser-project")
        write_feature(root, "browserfeat")
        run_settings = load_settings(
            root, redis_url=redis_target.url, shell_allow=["*"], stall_s=60.0
        )
        store = StateStore.from_url(redis_target.url, prefix=run_settings.key_prefix)
        try:
            orch = Orchestrator(root, "browserfeat", run_settings, create_app(run_settings), store)
            result = orch.run()
        finally:
            store.close()
        assert result.ok, result.reports
        yield url
    finally:
        workers.stop(grace_s=5)
        flower.terminate(5)


def _wait_worker_seen(url: str, timeout_s: float = 90.0) -> None:
    """Flower answers before its event receiver listens: wait for the worker's events."""
    import urllib.request

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        with urllib.request.urlopen(f"{url}/metrics", timeout=10) as resp:
            if 'flower_worker_online{worker="batchq-0@' in resp.read().decode():
                return
        time.sleep(0.5)
    raise AssertionError("Flower never saw the worker come online")


def test_flowers_tasks_page_shows_every_subtask_by_seq_and_title(
    flower_after_a_run: str, tmp_path: Path
) -> None:
    screenshot = tmp_path / "flower-tasks.png"
    with sync_api.sync_playwright() as pw:
        browser = pw.chromium.launch(
            executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS, timeout=60_000
        )
        try:
            context = browser.new_context(
                http_credentials={"username": USER, "password": PASSWORD},
                viewport={"width": 1920, "height": 1080},
            )
            page = context.new_page()
            page.set_default_timeout(60_000)
            response = page.goto(f"{flower_after_a_run}/tasks", wait_until="domcontentloaded")
            assert response is not None and response.status == 200
            rows = page.locator("#tasks-table tbody tr")
            # Flower's events may lag the run: reload until every subtask's row is there.
            deadline = time.monotonic() + 90
            while True:
                for title in TITLES.values():
                    rows.filter(has_text=title).first.wait_for(state="visible", timeout=15_000)
                text = page.locator("#tasks-table tbody").inner_text()
                if all("SUCCESS" in line for line in _rows_with(text, TITLES.values())):
                    break
                assert time.monotonic() < deadline, f"rows never all SUCCESS:\n{text}"
                page.reload(wait_until="domcontentloaded")
            for seq, title in TITLES.items():
                row = rows.filter(has_text=f"seq={seq}").filter(has_text=title)
                assert row.count() == 1, text
                row_text = row.inner_text()
                assert "batchq.run_subtask" in row_text
                # The summary's order, as docs/flower.md shows it: where, then the title.
                assert f"feature=browserfeat batch=1 seq={seq} run=" in row_text
            page.screenshot(path=str(screenshot), full_page=True)
        finally:
            browser.close()
    assert screenshot.stat().st_size > 0


def _rows_with(text: str, titles: Any) -> list[str]:
    lines = text.splitlines()
    return [line for line in lines if any(t in line for t in titles)]


@pytest.mark.parametrize("credentials", [None, {"username": USER, "password": "wrong"}])
def test_the_tasks_page_stays_closed_without_the_right_credentials(
    flower_after_a_run: str, credentials: Any
) -> None:
    with sync_api.sync_playwright() as pw:
        browser = pw.chromium.launch(
            executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS, timeout=60_000
        )
        try:
            page = browser.new_context(http_credentials=credentials).new_page()
            try:
                response = page.goto(f"{flower_after_a_run}/tasks", timeout=60_000)
            except sync_api.Error as exc:  # Chromium gives up on the Basic challenge
                assert "ERR_INVALID_AUTH_CREDENTIALS" in str(exc)
            else:
                assert response is not None and response.status == 401
                assert "tasks-table" not in page.content()
        finally:
            browser.close()
