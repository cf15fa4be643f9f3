"""The worker's start-up warm-up (issue #24): the per-process answers every subtask
needs are there before the first one arrives, and a failure is left to it."""

from __future__ import annotations

import pytest

from batchq.agents import registry, sandbox
from batchq.executor import warmup
from batchq.settings import Settings


def test_warm_up_fills_the_per_process_caches() -> None:
    registry.registered_agents.cache_clear()
    sandbox.bwrap_status.cache_clear()
    warmup.warm_up(Settings(sandbox="auto"))
    assert registry.registered_agents.cache_info().currsize == 1
    assert sandbox.bwrap_status.cache_info().currsize == 1
    assert {"shell", "python"} <= set(registry.registered_agents())


def test_warm_up_with_the_sandbox_off_never_probes_bwrap() -> None:
    sandbox.bwrap_status.cache_clear()
    warmup.warm_up(Settings(sandbox="off"))
    assert sandbox.bwrap_status.cache_info().currsize == 0


def test_a_failing_warm_up_is_left_to_the_first_subtask(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def broken() -> dict[str, type]:
        raise RuntimeError("a broken entry point")

    monkeypatch.setattr(warmup, "registered_agents", broken)
    warmup.warm_up(Settings(sandbox="off"))  # does not raise


def test_the_worker_module_warms_up_at_worker_init() -> None:
    from celery import signals

    import batchq.worker as worker  # lazy: builds the worker's settings from the cwd

    # Connected with weak=False: the receiver is kept as the function itself.
    assert worker._warm in [receiver for _, receiver in signals.worker_init.receivers]
