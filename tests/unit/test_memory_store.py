"""What only the memory store has: its manual clock, key TTLs on it, and stream ids
that stay in Redis's ``ms-seq`` order whatever the clock does. Everything shared with
Redis is in ``tests/contract/test_store_contract.py``."""

from __future__ import annotations

from batchq.store.memory import ManualClock, MemoryStore


def test_every_key_expires_after_the_state_ttl() -> None:
    clock = ManualClock()
    store = MemoryStore(ttl_s=60, clock=clock)
    store.create_run("r", {"feature_key": "f"}, "ctx")
    store.cancel("r", 1, "graceful")
    store.emit("r", "note", 1, "")
    clock.advance(59)
    assert store.run_info("r") and store.context("r") == "ctx" and store.recent_runs("f")
    clock.advance(2)
    assert store.run_info("r") == {} and store.context("r") == "" and store.recent_runs("f") == []
    assert store.cancel_mode("r", 1) is None and store.last_event_id("r") == "0-0"


def test_stream_ids_count_up_within_a_millisecond_and_past_a_clock_step_back() -> None:
    clock = ManualClock(1000.0)
    store = MemoryStore(clock=clock)
    store.emit("r", "a", 1, "")
    store.emit("r", "b", 1, "")
    clock.advance(-5.0)
    store.emit("r", "c", 1, "")
    clock.advance(10.0)
    store.emit("r", "d", 1, "")
    assert [e.id for e in store.events("r")] == [
        "1000000-0",
        "1000000-1",
        "1000000-2",
        "1005000-0",
    ]


def test_a_renewal_moves_the_claim_s_expiry() -> None:
    clock = ManualClock()
    store = MemoryStore(clock=clock)
    assert store.begin("r", 1, "01", "w", "t", claim_ttl_s=1.0, max_starts=3) == "run"
    clock.advance(0.9)
    assert store.renew_claim("r", "01", "w", 1.0)
    clock.advance(0.9)
    assert store.live_claims("r", ["01"]) == ["01"]
    clock.advance(0.2)
    assert store.live_claims("r", ["01"]) == []
