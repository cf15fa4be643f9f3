"""The run-state store in memory: :class:`MemoryStore`, for unit tests of pure logic only.

It keeps the same keys as :class:`~batchq.store.state.StateStore` (same names, same
Redis types: strings, hashes, lists, sorted sets, streams, each with its TTL) and
replays every Lua transition as one critical section under one lock, so the decisions
(``begin``, ``record_result`` once, ``store_report``, cancel, locks, slots, claims) are
the same ones Redis makes. ``tests/contract/test_store_contract.py`` runs one suite
against both to keep them so.

It is *not* a deployment option: nothing crosses a process, nothing persists, and
the worker, producer and chord callback of a real run live in different processes.
Its use is to test the runner, producer, flow loop and tasks without a redis-server:
a test injects it where a ``StateStore`` goes (they are typed against
:class:`batchq.store.contract.Store`) and moves time with a :class:`ManualClock`.

Time: TTLs, slot leases and stream ids read the injected ``clock`` (seconds since
the epoch, like :func:`time.time`). Only a blocking ``events(block_ms=...)`` waits in
real time, as a Redis ``XREAD BLOCK`` does; a write wakes it at once.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from batchq.errors import InputError
from batchq.models import BatchReport, SubtaskResult
from batchq.protocol import RUN_SETTLED, BatchState
from batchq.store.contract import Store
from batchq.store.state import (
    CALLABLE_RUNS,
    CONTEXT_LIMIT,
    STREAM_MAXLEN,
    BatchRecord,
    Claim,
    Event,
    Keys,
    Learned,
    StartDecision,
    now_iso,
)

__all__ = ["ManualClock", "MemoryStore"]

Clock = Callable[[], float]
StreamId = tuple[int, int]


class ManualClock:
    """A clock that moves only when told: TTLs and leases expire on :meth:`advance`."""

    def __init__(self, start: float = 1_767_225_600.0) -> None:  # 2026-01-01T00:00:00Z
        self.now = start
        self._lock = threading.Lock()

    def __call__(self) -> float:
        with self._lock:
            return self.now

    def advance(self, seconds: float) -> None:
        with self._lock:
            self.now += seconds


@dataclass
class _Stream:
    """A Redis stream: entries in id order, and the last id ever handed out (ids keep
    growing after a trim, as in Redis)."""

    entries: list[tuple[StreamId, dict[str, str]]] = field(default_factory=list)
    last: StreamId = (0, 0)


def _parse_id(raw: str) -> StreamId:
    ms, _, seq = raw.partition("-")
    return int(ms), int(seq or 0)


def _format_id(sid: StreamId) -> str:
    return f"{sid[0]}-{sid[1]}"


def _lrange(items: list[str], start: int, stop: int) -> list[str]:
    """``LRANGE`` index rules: inclusive, negative from the end, clamped."""
    n = len(items)
    start = max(start + n if start < 0 else start, 0)
    stop = stop + n if stop < 0 else stop
    stop = min(stop, n - 1)
    return items[start : stop + 1] if start <= stop else []


class MemoryStore:
    """:class:`~batchq.store.state.StateStore`'s twin in memory (unit tests only).

    Same public methods, signatures and outcomes; see the module docstring for what
    it is not. ``clock`` is read for every TTL, lease and stream id."""

    def __init__(
        self, *, prefix: str = "batchq:", ttl_s: int = 604800, clock: Clock = time.time
    ) -> None:
        self.keys = Keys(prefix)
        self.ttl = ttl_s
        self.clock = clock
        self._data: dict[str, Any] = {}
        self._expires: dict[str, int] = {}  # key -> expiry in ms since the epoch
        self._lock = threading.RLock()
        self._written = threading.Condition(self._lock)  # a stream got an entry

    # --- the Redis data model, under self._lock ------------------------------------

    def _now_ms(self) -> int:
        return int(self.clock() * 1000)

    def _get(self, key: str) -> Any:
        """The live value of ``key``, or None (an expired key is gone, as in Redis)."""
        expiry = self._expires.get(key)
        if expiry is not None and self._now_ms() > expiry:
            self._data.pop(key, None)
            del self._expires[key]
        return self._data.get(key)

    def _put(self, key: str, value: Any, *, px: int | None = None) -> None:
        """``SET``: a new value drops the old TTL unless one is given."""
        self._data[key] = value
        self._expires.pop(key, None)
        if px is not None:
            self._expires[key] = self._now_ms() + px

    def _delete(self, key: str) -> bool:
        existed = self._get(key) is not None
        self._data.pop(key, None)
        self._expires.pop(key, None)
        return existed

    def _pexpire(self, key: str, ms: int) -> bool:
        if self._get(key) is None:
            return False
        self._expires[key] = self._now_ms() + ms
        return True

    def _expire(self, key: str, seconds: int) -> bool:
        return self._pexpire(key, seconds * 1000)

    def _container(self, key: str, kind: type) -> Any:
        """The hash, list or sorted set at ``key``, created (without TTL) if absent."""
        value = self._get(key)
        if value is None:
            value = kind()
            self._data[key] = value
        return value

    def _drop_if_empty(self, key: str) -> None:
        """Redis deletes a hash, list or sorted set left empty."""
        if not self._data.get(key):
            self._data.pop(key, None)
            self._expires.pop(key, None)

    def _hash(self, key: str) -> dict[str, str]:
        value: dict[str, str] = self._container(key, dict)
        return value

    def _hincrby(self, key: str, name: str, by: int) -> int:
        fields = self._hash(key)
        fields[name] = str(int(fields.get(name, "0")) + by)
        return int(fields[name])

    def _list(self, key: str) -> list[str]:
        value: list[str] = self._container(key, list)
        return value

    def _ltrim(self, key: str, start: int, stop: int) -> None:
        items = self._get(key)
        if items is None:
            return
        items[:] = _lrange(items, start, stop)
        self._drop_if_empty(key)

    def _xadd(self, key: str, fields: Mapping[str, str], maxlen: int = STREAM_MAXLEN) -> str:
        """``XADD key MAXLEN ~ maxlen *``: an id of the clock's millisecond, after the
        stream's last one (``ms-seq``, the sequence counting up within a millisecond)."""
        stream = self._get(key)
        if stream is None:
            stream = _Stream()
            self._data[key] = stream
        ms = self._now_ms()
        sid = (ms, 0) if ms > stream.last[0] else (stream.last[0], stream.last[1] + 1)
        stream.last = sid
        stream.entries.append((sid, dict(fields)))
        if len(stream.entries) > maxlen:
            del stream.entries[: len(stream.entries) - maxlen]
        self._written.notify_all()
        return _format_id(sid)

    def _newest(self, key: str) -> str:
        stream = self._get(key)
        return _format_id(stream.entries[-1][0]) if stream and stream.entries else "0-0"

    # --- connection -------------------------------------------------------------------

    def ping(self, url: str = "") -> None:
        """Always reachable."""

    def close(self) -> None:
        """Nothing to close."""

    # --- runs and batches -------------------------------------------------------------

    def create_run(
        self,
        run_id: str,
        fields: Mapping[str, str],
        context: str,
        callables: Sequence[str] = (),
    ) -> Learned:
        raw = context.encode()
        if len(raw) > CONTEXT_LIMIT:
            raise InputError(
                f"--context: the session context is {len(raw)} bytes; the limit is {CONTEXT_LIMIT}"
            )
        with self._lock:
            self._hash(self.keys.run(run_id)).update({k: str(v) for k, v in fields.items()})
            self._expire(self.keys.run(run_id), self.ttl)
            self._put(self.keys.context(run_id), context, px=self.ttl * 1000)
            durations: dict[str, str] = {}
            if "feature_key" in fields:
                runs = self.keys.runs(fields["feature_key"])
                self._list(runs).insert(0, run_id)
                self._ltrim(runs, 0, 19)
                self._expire(runs, self.ttl)
                durations = dict(self._get(self.keys.durations(fields["feature_key"])) or {})
            recent = {
                spec: list(self._get(self.keys.callable_durations(spec)) or [])
                for spec in callables
            }
        return Learned(
            {seq: float(v) for seq, v in durations.items()},
            {spec: max(map(float, runs)) for spec, runs in recent.items() if runs},
        )

    def recent_runs(self, fkey: str, count: int = 20) -> list[str]:
        with self._lock:
            return _lrange(list(self._get(self.keys.runs(fkey)) or []), 0, count - 1)

    def run_info(self, run_id: str) -> dict[str, str]:
        with self._lock:
            return dict(self._get(self.keys.run(run_id)) or {})

    def settle_run(self, run_id: str) -> None:
        with self._lock:
            if self._get(self.keys.run(run_id)) is not None:
                self._hash(self.keys.run(run_id))[RUN_SETTLED] = "1"

    def context(self, run_id: str) -> str:
        with self._lock:
            value = self._get(self.keys.context(run_id))
        return str(value) if value is not None else ""

    def start_batch(
        self,
        run_id: str,
        n: int,
        expected: Sequence[str],
        policy: str,
        following: str | None = None,
        declared: Mapping[str, Sequence[str]] | None = None,
        write_check: str = "warn",
    ) -> str:
        return self.start_batches(
            run_id, {n: expected}, policy, {n: following or ""}, declared, write_check
        )

    def start_batches(
        self,
        run_id: str,
        batches: Mapping[int, Sequence[str]],
        policy: str,
        following: Mapping[int, str] | None = None,
        declared: Mapping[str, Sequence[str]] | None = None,
        write_check: str = "warn",
    ) -> str:
        with self._lock:
            newest = self._newest(self.keys.events(run_id))
            for n, expected in batches.items():
                key = self.keys.batch(run_id, n)
                record = self._hash(key)
                record.update(
                    {
                        "expected": json.dumps(list(expected)),
                        "policy": policy,
                        "submitted_at": now_iso(),
                        "state": BatchState.RUNNING,
                        "next": (following or {}).get(n, ""),
                        "write_check": write_check,
                    }
                )
                if declared is not None:
                    mine = {seq: list(declared.get(seq, ())) for seq in expected}
                    record["declared"] = json.dumps(mine)
                self._expire(key, self.ttl)
            return newest

    def batch_states(self, run_id: str) -> dict[int, str]:
        states: dict[int, str] = {}
        while (state := self.batch_state(run_id, len(states) + 1)) is not None:
            states[len(states) + 1] = state
        return states

    def batch_record(self, run_id: str, n: int) -> BatchRecord:
        with self._lock:
            fields = dict(self._get(self.keys.batch(run_id, n)) or {})
        expected, declared = fields.get("expected"), fields.get("declared")
        return BatchRecord(
            expected=list(json.loads(expected)) if expected else [],
            following=fields.get("next") or None,
            write_check=fields.get("write_check") or "warn",
            declared=dict(json.loads(declared)) if declared else None,
            state=fields.get("state"),
        )

    def batch_members(self, run_id: str, n: int) -> list[str]:
        with self._lock:
            raw = (self._get(self.keys.batch(run_id, n)) or {}).get("expected")
        return list(json.loads(raw)) if raw else []

    def batch_state(self, run_id: str, n: int) -> str | None:
        with self._lock:
            state: str | None = (self._get(self.keys.batch(run_id, n)) or {}).get("state")
            return state

    # --- subtask transitions ------------------------------------------------------------

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
    ) -> StartDecision:
        started_at = now_iso()
        data = json.dumps({"worker": worker, "started_at": started_at, "attempt": attempt})
        sub, claim = self.keys.subtask(run_id, seq), self.keys.claim(run_id, seq)
        with self._lock:
            info = self._get(sub) or {}
            if "result" in info:
                return "done"
            if token and info.get("begun") == token and self._get(claim) == worker:
                return "run"
            if self._get(self.keys.cancel(run_id, batch)) is not None:
                return "cancelled"
            if int(info.get("starts", "0")) - int(info.get("finishes", "0")) >= max_starts:
                return "capped"
            if self._get(claim) is not None:
                return "busy"
            self._put(claim, worker, px=int(claim_ttl_s * 1000))
            self._hincrby(sub, "starts", 1)
            self._hash(sub).update({"worker": worker, "started_at": started_at, "task_id": task_id})
            if token:
                self._hash(sub)["begun"] = token
            self._expire(sub, self.ttl)
            events = self.keys.events(run_id)
            self._xadd(events, {"kind": "started", "batch": str(batch), "seq": seq, "data": data})
            self._expire(events, self.ttl)
            return "run"

    def _renew(self, key: str, holder: str, ttl_ms: int) -> bool:
        with self._lock:
            return self._get(key) == holder and self._pexpire(key, ttl_ms)

    def _release(self, key: str, holder: str) -> None:
        with self._lock:
            if self._get(key) == holder:
                self._delete(key)

    def renew_claim(self, run_id: str, seq: str, worker: str, claim_ttl_s: float) -> bool:
        return self._renew(self.keys.claim(run_id, seq), worker, int(claim_ttl_s * 1000))

    def take_slot(self, agent: str, holder: str, limit: int, lease_s: float) -> bool:
        key = self.keys.slots(agent)
        with self._lock:
            now = self._now_ms()
            slots: dict[str, int] = self._get(key) or {}
            for other in [h for h, until in slots.items() if until <= now]:
                del slots[other]
            self._drop_if_empty(key)
            if holder in slots:
                slots[holder] = now + int(lease_s * 1000)
                return True
            if len(slots) >= limit:
                return False
            self._container(key, dict)[holder] = now + int(lease_s * 1000)
            self._pexpire(key, self.ttl * 1000)
            return True

    def release_slot(self, agent: str, holder: str) -> None:
        key = self.keys.slots(agent)
        with self._lock:
            slots = self._get(key)
            if slots is not None:
                slots.pop(holder, None)
                self._drop_if_empty(key)

    def release_claim(self, run_id: str, seq: str, worker: str) -> None:
        self._release(self.keys.claim(run_id, seq), worker)

    def end_attempt(self, run_id: str, seq: str) -> None:
        with self._lock:
            self._hincrby(self.keys.subtask(run_id, seq), "finishes", 1)

    def emit(self, run_id: str, kind: str, batch: int, seq: str, **data: Any) -> None:
        key = self.keys.events(run_id)
        fields = {"kind": kind, "batch": str(batch), "seq": seq, "data": json.dumps(data)}
        with self._lock:
            self._xadd(key, fields)
            self._expire(key, self.ttl)

    def record_result(
        self, result: SubtaskResult, fkey: str, worker: str, callable_spec: str | None = None
    ) -> bool:
        payload = result.model_dump_json()
        sub = self.keys.subtask(result.run_id, result.seq)
        with self._lock:
            self._hincrby(sub, "finishes", 1)
            fields = self._hash(sub)
            if "result" in fields:
                return False
            fields["result"] = payload
            fields["attempts"] = str(result.attempts)
            self._expire(sub, self.ttl)
            self._release(self.keys.claim(result.run_id, result.seq), worker)
            events = self.keys.events(result.run_id)
            self._xadd(
                events,
                {
                    "kind": "finished",
                    "batch": str(result.batch),
                    "seq": result.seq,
                    "result": result.result.value,
                    "data": payload,
                },
            )
            self._expire(events, self.ttl)
            duration = f"{result.duration_s:.3f}"
            if result.result.value == "completed":
                self._hash(self.keys.durations(fkey))[result.seq] = duration
                self._expire(self.keys.durations(fkey), self.ttl)
            if callable_spec:
                calls = self.keys.callable_durations(callable_spec)
                self._list(calls).insert(0, duration)
                self._ltrim(calls, 0, CALLABLE_RUNS - 1)
                self._expire(calls, self.ttl)
            return True

    def record_then_begin(
        self,
        result: SubtaskResult,
        fkey: str,
        worker: str,
        callable_spec: str | None,
        then: Claim,
    ) -> tuple[bool, StartDecision]:
        written = self.record_result(result, fkey, worker, callable_spec)
        decision = self.begin(
            then.run_id,
            then.batch,
            then.seq,
            then.worker,
            then.task_id,
            claim_ttl_s=then.claim_ttl_s,
            max_starts=then.max_starts,
            attempt=then.attempt,
            token=then.token,
        )
        return written, decision

    def amend_results(self, results: Sequence[SubtaskResult]) -> None:
        with self._lock:
            for result in results:
                self._hash(self.keys.subtask(result.run_id, result.seq))["result"] = (
                    result.model_dump_json()
                )

    def result(self, run_id: str, seq: str) -> SubtaskResult | None:
        with self._lock:
            raw = (self._get(self.keys.subtask(run_id, seq)) or {}).get("result")
        return SubtaskResult.model_validate_json(raw) if raw else None

    def results(self, run_id: str, seqs: Iterable[str]) -> dict[str, SubtaskResult]:
        out: dict[str, SubtaskResult] = {}
        with self._lock:  # one read, as Redis's MULTI pipeline gives
            for seq in list(seqs):
                found = self.result(run_id, seq)
                if found is not None:
                    out[seq] = found
        return out

    def subtask_info(self, run_id: str, seq: str) -> dict[str, str]:
        with self._lock:
            return dict(self._get(self.keys.subtask(run_id, seq)) or {})

    def live_claims(self, run_id: str, seqs: Iterable[str]) -> list[str]:
        with self._lock:
            return [s for s in seqs if self._get(self.keys.claim(run_id, s)) is not None]

    # --- cancellation ---------------------------------------------------------------------

    def cancel(self, run_id: str, n: int, mode: str) -> None:
        key = self.keys.cancel(run_id, n)
        with self._lock:
            if mode == "terminate" or self._get(key) is None:
                self._put(key, mode, px=self.ttl * 1000)

    def cancel_mode(self, run_id: str, n: int) -> str | None:
        with self._lock:
            mode: str | None = self._get(self.keys.cancel(run_id, n))
            return mode

    # --- reports ----------------------------------------------------------------------------

    def store_report(self, report: BatchReport, fkey: str) -> bool:
        state = BatchState.FORCED if report.forced else BatchState.REPORTED
        payload = report.model_dump_json()
        run_id, n = report.run_id, report.batch
        batch, events = self.keys.batch(run_id, n), self.keys.events(run_id)
        with self._lock:
            current = (self._get(batch) or {}).get("state")
            if current == BatchState.REPORTED:
                return False
            if current == BatchState.FORCED:
                late = self.keys.late(run_id, n)
                self._list(late).append(payload)
                self._expire(late, self.ttl)
                self._xadd(events, {"kind": "late", "batch": str(n), "seq": "", "data": ""})
                return False
            self._hash(batch)["state"] = state
            self._put(self.keys.report(run_id, n), payload, px=self.ttl * 1000)
            reports = self.keys.reports(fkey)
            self._list(reports).insert(0, f"{run_id}:{n}")
            self._ltrim(reports, 0, 99)
            self._expire(reports, self.ttl)
            self._xadd(events, {"kind": f"batch_{state}", "batch": str(n), "seq": "", "data": ""})
            return True

    def overwrite_report(self, report: BatchReport) -> None:
        key = self.keys.report(report.run_id, report.batch)
        with self._lock:
            self._put(key, report.model_dump_json(), px=self.ttl * 1000)

    def report(self, run_id: str, n: int) -> BatchReport | None:
        with self._lock:
            raw = self._get(self.keys.report(run_id, n))
        return BatchReport.model_validate_json(raw) if raw else None

    def late_reports(self, run_id: str, n: int) -> list[BatchReport]:
        with self._lock:
            raws = list(self._get(self.keys.late(run_id, n)) or [])
        return [BatchReport.model_validate_json(raw) for raw in raws]

    def report_refs(self, fkey: str, count: int = 100) -> list[tuple[str, int]]:
        with self._lock:
            refs = _lrange(list(self._get(self.keys.reports(fkey)) or []), 0, count - 1)
        out: list[tuple[str, int]] = []
        for ref in refs:
            run_id, _, n = ref.rpartition(":")
            out.append((run_id, int(n)))
        return out

    # --- events -----------------------------------------------------------------------------

    def events(
        self, run_id: str, after: str = "0-0", *, block_ms: int | None = None, count: int = 1000
    ) -> list[Event]:
        """``XREAD``: entries after ``after``; with ``block_ms``, wait (in real time) for
        the first one when there is none yet (0 waits for ever, as ``BLOCK 0``)."""
        key, since = self.keys.events(run_id), _parse_id(after)
        deadline = None if not block_ms else time.monotonic() + block_ms / 1000
        with self._lock:
            while True:
                stream = self._get(key)
                entries = [e for e in (stream.entries if stream else []) if e[0] > since]
                if entries or block_ms is None:
                    break
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    break
                self._written.wait(left)
        out: list[Event] = []
        for sid, fields in entries[:count]:
            data = fields.get("data") or "{}"
            out.append(
                Event(
                    id=_format_id(sid),
                    kind=fields.get("kind", ""),
                    batch=int(fields.get("batch") or 0),
                    seq=fields.get("seq", ""),
                    data=json.loads(data) if data.startswith("{") else {},
                )
            )
        return out

    def seconds_since_last_event(self, run_id: str) -> float:
        newest = self.last_event_id(run_id)
        if newest == "0-0":
            return float("inf")
        return max(0.0, self.clock() - int(newest.split("-")[0]) / 1000)

    def last_event_id(self, run_id: str) -> str:
        with self._lock:
            return self._newest(self.keys.events(run_id))

    # --- feature lock ------------------------------------------------------------------------

    def acquire_lock(self, fkey: str, holder: str, lease_s: float) -> str | None:
        key = self.keys.lock(fkey)
        with self._lock:
            current = self._get(key)
            if current is None:
                self._put(key, holder, px=int(lease_s * 1000))
                return None
            return str(current)

    def renew_lock(self, fkey: str, holder: str, lease_s: float) -> bool:
        return self._renew(self.keys.lock(fkey), holder, int(lease_s * 1000))

    def release_lock(self, fkey: str, holder: str) -> None:
        self._release(self.keys.lock(fkey), holder)

    def lock_holder(self, fkey: str) -> str | None:
        with self._lock:
            holder: str | None = self._get(self.keys.lock(fkey))
            return holder


def _conforms(store: MemoryStore) -> Store:
    """Never called: mypy checks here that the memory store satisfies the contract."""
    return store
