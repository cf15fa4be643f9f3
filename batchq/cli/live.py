"""What Redis knows about a feature's latest run, as lines for ``batchq status``.

Only asked when a Redis URL is configured, with a short timeout: ``status`` is a
read of the task files first and must never fail or hang because Redis is down.
"""

from __future__ import annotations

from batchq.models import Feature, feature_key
from batchq.settings import Settings

__all__ = ["live_lines"]

TIMEOUT_S = 1.0


def live_lines(feature: Feature, settings: Settings) -> list[str]:
    """``  ⟳ live: ...`` lines for the latest run, or nothing if Redis has none."""
    if settings.redis_url is None:
        return []
    # lazy: redis stays out of start-up for status without a live line
    from batchq.store.state import StateStore

    try:
        store = StateStore.from_settings(settings, timeout_s=TIMEOUT_S)
    except Exception:
        return []
    try:
        runs = store.recent_runs(feature_key(feature.name, feature.root), 1)
        if not runs:
            return []
        run_id = runs[0]
        states = store.batch_states(run_id)
        if not states:
            return [f"  ⟳ live: run {run_id} has not submitted a batch yet"]
        last = max(states)
        state = states[last]
        members = store.batch_members(run_id, last)
        done = len(store.results(run_id, members))
        running = len(store.live_claims(run_id, members))
        return [
            f"  ⟳ live: run {run_id} batch {last} {state}: {done}/{len(members)} reported, "
            f"{running} running"
        ]
    except Exception:  # unreachable or unexpected: status prints the files' view only
        return []
    finally:
        store.close()
