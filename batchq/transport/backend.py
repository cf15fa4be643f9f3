"""The result backend batchq configures: Celery's Redis backend, minus one habit.

Celery's Redis backend subscribes to a pub/sub channel for every task it publishes,
and a group registers every member as a pending result, so that
``AsyncResult.get()`` can wake up. batchq never waits on task results (the
producer reads the run's progress stream), so those subscriptions only cost one
round trip per subtask when publishing and an unsubscribe in ``AsyncResult.__del__``
that can fail at interpreter exit (TRAPS). Workers and the chord logic are unchanged.
"""

from __future__ import annotations

from typing import Any

from celery.backends.redis import RedisBackend as _CeleryRedisBackend

__all__ = ["RedisBackend"]


class RedisBackend(_CeleryRedisBackend):  # type: ignore[misc]
    def on_task_call(self, producer: Any, task_id: str) -> dict[str, Any]:
        return {}

    def add_pending_result(
        self, result: Any, weak: bool = False, start_drainer: bool = True
    ) -> Any:
        return result

    def add_pending_results(self, results: Any, weak: bool = False) -> list[Any]:
        return list(results)

    def on_result_fulfilled(self, result: Any) -> None:
        """Nothing was subscribed, so there is nothing to unsubscribe."""
