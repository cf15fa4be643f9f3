"""The store's contract: :class:`Store`, what the executor, transport and run layers
may ask of run state.

:class:`~batchq.store.state.StateStore` (Redis, the only store of a real run) and
:class:`~batchq.store.memory.MemoryStore` (unit tests of pure logic) both satisfy it
structurally; ``tests/contract/test_store_contract.py`` checks they also *behave*
alike. Callers that only use run state are typed against ``Store`` so a test can hand
them the in-memory one; code that builds a store from a URL keeps ``StateStore``.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Protocol

from batchq.models import BatchReport, SubtaskResult
from batchq.store.state import (
    BatchRecord,
    Claim,
    Event,
    Learned,
    StartDecision,
    StateStore,
)

__all__ = ["Store"]


class Store(Protocol):
    """Run state: runs and batches, the subtask transitions, cancellation, reports,
    the progress stream, the feature lock. See :class:`~batchq.store.state.StateStore`
    for each method's meaning."""

    def ping(self, url: str = "") -> None: ...

    def close(self) -> None: ...

    def create_run(
        self,
        run_id: str,
        fields: Mapping[str, str],
        context: str,
        callables: Sequence[str] = (),
    ) -> Learned: ...

    def recent_runs(self, fkey: str, count: int = 20) -> list[str]: ...

    def run_info(self, run_id: str) -> dict[str, str]: ...

    def settle_run(self, run_id: str) -> None: ...

    def context(self, run_id: str) -> str: ...

    def start_batch(
        self,
        run_id: str,
        n: int,
        expected: Sequence[str],
        policy: str,
        following: str | None = None,
        declared: Mapping[str, Sequence[str]] | None = None,
        write_check: str = "warn",
    ) -> str: ...

    def start_batches(
        self,
        run_id: str,
        batches: Mapping[int, Sequence[str]],
        policy: str,
        following: Mapping[int, str] | None = None,
        declared: Mapping[str, Sequence[str]] | None = None,
        write_check: str = "warn",
    ) -> str: ...

    def batch_states(self, run_id: str) -> dict[int, str]: ...

    def batch_record(self, run_id: str, n: int) -> BatchRecord: ...

    def batch_members(self, run_id: str, n: int) -> list[str]: ...

    def batch_state(self, run_id: str, n: int) -> str | None: ...

    def begin(
        self,
        run_id: str,
        batch: int,
        seq: str,
        worker: str,
        task_id: str,
        *,
        claim_ttl_s: float,
        max_starts: int,
        attempt: int = 1,
        token: str = "",
    ) -> StartDecision: ...

    def renew_claim(self, run_id: str, seq: str, worker: str, claim_ttl_s: float) -> bool: ...

    def take_slot(self, agent: str, holder: str, limit: int, lease_s: float) -> bool: ...

    def release_slot(self, agent: str, holder: str) -> None: ...

    def release_claim(self, run_id: str, seq: str, worker: str) -> None: ...

    def end_attempt(self, run_id: str, seq: str) -> None: ...

    def emit(self, run_id: str, kind: str, batch: int, seq: str, **data: Any) -> None: ...

    def record_result(
        self, result: SubtaskResult, fkey: str, worker: str, callable_spec: str | None = None
    ) -> bool: ...

    def record_then_begin(
        self,
        result: SubtaskResult,
        fkey: str,
        worker: str,
        callable_spec: str | None,
        then: Claim,
    ) -> tuple[bool, StartDecision]: ...

    def amend_results(self, results: Sequence[SubtaskResult]) -> None: ...

    def result(self, run_id: str, seq: str) -> SubtaskResult | None: ...

    def results(self, run_id: str, seqs: Iterable[str]) -> dict[str, SubtaskResult]: ...

    def subtask_info(self, run_id: str, seq: str) -> dict[str, str]: ...

    def live_claims(self, run_id: str, seqs: Iterable[str]) -> list[str]: ...

    def cancel(self, run_id: str, n: int, mode: str) -> None: ...

    def cancel_mode(self, run_id: str, n: int) -> str | None: ...

    def store_report(self, report: BatchReport, fkey: str) -> bool: ...

    def overwrite_report(self, report: BatchReport) -> None: ...

    def report(self, run_id: str, n: int) -> BatchReport | None: ...

    def late_reports(self, run_id: str, n: int) -> list[BatchReport]: ...

    def report_refs(self, fkey: str, count: int = 100) -> list[tuple[str, int]]: ...

    def events(
        self, run_id: str, after: str = "0-0", *, block_ms: int | None = None, count: int = 1000
    ) -> list[Event]: ...

    def seconds_since_last_event(self, run_id: str) -> float: ...

    def last_event_id(self, run_id: str) -> str: ...

    def acquire_lock(self, fkey: str, holder: str, lease_s: float) -> str | None: ...

    def renew_lock(self, fkey: str, holder: str, lease_s: float) -> bool: ...

    def release_lock(self, fkey: str, holder: str) -> None: ...

    def lock_holder(self, fkey: str) -> str | None: ...


def _conforms(store: StateStore) -> Store:
    """Never called: mypy checks here that the Redis store satisfies the contract."""
    return store
