"""Run state in Redis: the one key schema, its TTLs, and every atomic transition.

All keys start with ``Settings.key_prefix`` (default ``batchq:``). ``F`` is a feature
key (feature name plus a hash of its root, so two checkouts never share state), ``R``
a run id, ``N`` a batch number, ``S`` a seq. Every key expires after
``Settings.state_ttl_s`` (default 7 days) unless noted.

============================  ======  ==============================================
key                           type    content
============================  ======  ==============================================
``run:R``                     hash    feature, feature_key, root, policy, mode,
                                      write_check, created_at; settled once its
                                      orchestrator mirrored all it recorded
``ctx:R``                     string  the shared session context (1 MiB cap)
``batch:R:N``                 hash    expected (JSON list of seqs), policy, submitted_at,
                                      state (running|reported|forced), next (the plan's
                                      next batch, JSON), write_check, declared (JSON
                                      seq -> deliverables, unless off): what the chord
                                      callback reads (see :class:`BatchRecord`)
``sub:R:S``                   hash    starts, finishes, attempts, worker, task_id,
                                      started_at, begun (the latest start's token,
                                      when it has one), result (final JSON, written
                                      once)
``claim:R:S``                 string  the worker running S; TTL ``claim_ttl_s``,
                                      renewed by the worker's heartbeat
``cancel:R:N``                string  graceful | terminate
``report:R:N``                string  the BatchReport JSON
``report:R:N:staged:T``       string  a report's JSON being sent in parts, until the
                                      script that stores it renames or drops it
``late:R:N``                  list    results that arrived after a forced report
``events:R``                  stream  progress events (see :class:`batchq.protocol.EventKind`)
``lock:F``                    string  orchestrator holding F; TTL = lease, renewed
``durations:F``               hash    seq -> last measured duration in seconds
``callable:SPEC``             list    a python callable's last ``CALLABLE_RUNS`` durations
``reports:F``                 list    ``R:N`` of the newest reports, newest first (100)
``runs:F``                    list    the newest run ids of F, newest first (20)
``slots:A``                   zset    holders of agent A's ``max_concurrency`` slots,
                                      scored by lease expiry (ms); renewed by heartbeat
============================  ======  ==============================================
"""

from __future__ import annotations

import codecs
import itertools
import json
import secrets
import sys
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal, cast
from urllib.parse import parse_qsl, urlencode, urlsplit

import redis
from redis.client import NEVER_DECODE

from batchq.errors import BrokerUnavailable, InfrastructureError, InputError
from batchq.models import BatchReport, SubtaskResult
from batchq.protocol import RUN_SETTLED, BatchState
from batchq.settings import Settings

__all__ = [
    "CONNECTION_ERRORS",
    "CONTEXT_LIMIT",
    "Claim",
    "Event",
    "Keys",
    "Learned",
    "StartDecision",
    "StateStore",
    "redis_py_url",
]

CONTEXT_LIMIT = 1024 * 1024
STREAM_MAXLEN = 100_000
CALLABLE_RUNS = 8
"""A python callable's durations kept: one slow run among them keeps it from being
taken for tiny (:mod:`batchq.core.chunks`)."""
RESULTS_AT_ONCE = 500
"""Results read per pipeline round trip (see :meth:`StateStore.results`)."""
REPORT_PART = 1 << 17
"""Bytes of a report's JSON sent to or read from Redis at a time (see
:meth:`StateStore._staged` and :meth:`StateStore.report`). A part is held two or three
times over while it is sent (its pieces, the part, the packed command), and large
blocks are what the allocator keeps: with 1 MiB parts a 5,000-member run peaked at
114–117 MiB, with these at 110–112 (an RSS sampler in the ``batchq run`` process, see
docs/benchmarks.md, fifth pass), for 25 round trips instead of 4."""
REPORT_READS = 3
"""Reads of a report replaced while it was read before it is read whole instead."""
# What a Redis restart or network blip raises; callers that must ride one out
# (the producer's wait) catch these and retry instead of crashing.
CONNECTION_ERRORS: tuple[type[Exception], ...] = (redis.ConnectionError, redis.TimeoutError)

StartDecision = Literal["run", "done", "busy", "capped", "cancelled"]


def redis_py_url(url: str) -> str:
    """The redis-py form of a batchq URL: kombu spells Unix sockets ``redis+socket://``
    (``?virtual_host=N`` for the database), redis-py wants ``unix://...?db=N``."""
    parts = urlsplit(url)
    if parts.scheme not in ("redis+socket", "socket"):
        return url
    query = dict(parse_qsl(parts.query))
    if "virtual_host" in query:
        query["db"] = query.pop("virtual_host")
    suffix = f"?{urlencode(query)}" if query else ""
    return f"unix://{parts.path}{suffix}"


def now_iso() -> str:
    return datetime.now(UTC).isoformat()


class Keys:
    """Key names, built in one place."""

    def __init__(self, prefix: str = "batchq:") -> None:
        self.p = prefix

    def run(self, run_id: str) -> str:
        return f"{self.p}run:{run_id}"

    def context(self, run_id: str) -> str:
        return f"{self.p}ctx:{run_id}"

    def batch(self, run_id: str, n: int) -> str:
        return f"{self.p}batch:{run_id}:{n}"

    def subtask(self, run_id: str, seq: str) -> str:
        return f"{self.p}sub:{run_id}:{seq}"

    def claim(self, run_id: str, seq: str) -> str:
        return f"{self.p}claim:{run_id}:{seq}"

    def cancel(self, run_id: str, n: int) -> str:
        return f"{self.p}cancel:{run_id}:{n}"

    def report(self, run_id: str, n: int) -> str:
        return f"{self.p}report:{run_id}:{n}"

    def late(self, run_id: str, n: int) -> str:
        return f"{self.p}late:{run_id}:{n}"

    def events(self, run_id: str) -> str:
        return f"{self.p}events:{run_id}"

    def lock(self, fkey: str) -> str:
        return f"{self.p}lock:{fkey}"

    def durations(self, fkey: str) -> str:
        return f"{self.p}durations:{fkey}"

    def callable_durations(self, spec: str) -> str:
        return f"{self.p}callable:{spec}"

    def reports(self, fkey: str) -> str:
        return f"{self.p}reports:{fkey}"

    def runs(self, fkey: str) -> str:
        return f"{self.p}runs:{fkey}"

    def slots(self, agent: str) -> str:
        return f"{self.p}slots:{agent}"


@dataclass(frozen=True)
class Learned:
    """Durations from earlier runs, in seconds: the feature's last per seq, and the
    longest recent one of each python callable asked about."""

    durations: dict[str, float]
    callables: dict[str, float]


@dataclass(frozen=True)
class BatchRecord:
    """A batch as registered: members, the plan's next batch (JSON), the write check
    and the members' declared deliverables (None when the check is off), and its state
    (``running``, or ``reported``/``forced`` once a report is stored)."""

    expected: list[str]
    following: str | None
    write_check: str
    declared: dict[str, list[str]] | None
    state: str | None = None


@dataclass(frozen=True)
class Claim:
    """One :meth:`StateStore.begin` call, as a value: it can then travel in the round
    trip that records another subtask (:meth:`StateStore.record_then_begin`). The
    ``token`` names the attempt, so the same call made again after a lost reply
    answers ``run`` to the copy that already holds the claim (empty: no token)."""

    run_id: str
    batch: int
    seq: str
    worker: str
    task_id: str
    claim_ttl_s: float
    max_starts: int
    attempt: int = 1
    token: str = ""


@dataclass(frozen=True)
class Event:
    """One entry of a run's progress stream."""

    id: str
    kind: str
    batch: int
    seq: str
    data: dict[str, Any]


# Start of an attempt: never rerun a recorded completion, never run two copies at
# once, and count starts so a subtask that kills its worker every time is capped.
# A non-empty ARGV[11] names this attempt: the same call made again (its first reply
# was lost with the connection) finds its own claim and answers 'run' once more.
_START = """
local sub, claim, cancel, events = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
if redis.call('HEXISTS', sub, 'result') == 1 then return 'done' end
if ARGV[11] ~= '' and redis.call('HGET', sub, 'begun') == ARGV[11]
  and redis.call('GET', claim) == ARGV[1] then return 'run' end
if redis.call('EXISTS', cancel) == 1 then return 'cancelled' end
local starts = tonumber(redis.call('HGET', sub, 'starts') or '0')
local finishes = tonumber(redis.call('HGET', sub, 'finishes') or '0')
if starts - finishes >= tonumber(ARGV[4]) then return 'capped' end
if not redis.call('SET', claim, ARGV[1], 'NX', 'PX', ARGV[2]) then return 'busy' end
redis.call('HINCRBY', sub, 'starts', 1)
redis.call('HSET', sub, 'worker', ARGV[1], 'started_at', ARGV[3], 'task_id', ARGV[5])
if ARGV[11] ~= '' then redis.call('HSET', sub, 'begun', ARGV[11]) end
redis.call('EXPIRE', sub, ARGV[6])
redis.call('XADD', events, 'MAXLEN', '~', ARGV[7], '*', 'kind', 'started',
  'batch', ARGV[8], 'seq', ARGV[9], 'data', ARGV[10])
redis.call('EXPIRE', events, ARGV[6])
return 'run'
"""

# A counting semaphore across every worker: expired leases (a lost worker) free
# their slot by themselves.
_SLOT = """
local now = tonumber(ARGV[3])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
if redis.call('ZSCORE', KEYS[1], ARGV[1]) then
  redis.call('ZADD', KEYS[1], now + tonumber(ARGV[4]), ARGV[1])
  return 1
end
if redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[2]) then return 0 end
redis.call('ZADD', KEYS[1], now + tonumber(ARGV[4]), ARGV[1])
redis.call('PEXPIRE', KEYS[1], ARGV[5])
return 1
"""

_RENEW = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 0
"""

_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""

# A field on a record that still exists (an expired one stays gone), in one round trip.
_MARK = """
if redis.call('EXISTS', KEYS[1]) == 1 then return redis.call('HSET', KEYS[1], ARGV[1], ARGV[2]) end
return 0
"""

# Completion is recorded exactly once: the first result wins, later ones are ignored.
_RECORD = """
local sub, claim, events, durations, calls = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5]
redis.call('HINCRBY', sub, 'finishes', 1)
if redis.call('HSETNX', sub, 'result', ARGV[1]) == 0 then return 0 end
redis.call('HSET', sub, 'attempts', ARGV[5])
redis.call('EXPIRE', sub, ARGV[6])
if redis.call('GET', claim) == ARGV[2] then redis.call('DEL', claim) end
redis.call('XADD', events, 'MAXLEN', '~', ARGV[7], '*', 'kind', 'finished',
  'batch', ARGV[3], 'seq', ARGV[4], 'result', ARGV[8], 'data', ARGV[1])
redis.call('EXPIRE', events, ARGV[6])
if ARGV[8] == 'completed' then
  redis.call('HSET', durations, ARGV[4], ARGV[9])
  redis.call('EXPIRE', durations, ARGV[6])
end
if ARGV[10] == '1' then
  redis.call('LPUSH', calls, ARGV[9])
  redis.call('LTRIM', calls, 0, tonumber(ARGV[11]) - 1)
  redis.call('EXPIRE', calls, ARGV[6])
end
return 1
"""

# A report is stored once per batch: the producer and the chord callback may both
# build it from the same recorded results, and the first wins. A report arriving
# after a *forced* one is "late" (a member the deadline gave up on came back).
# A small report's JSON comes in ARGV[6]; a big one's was appended, in parts, to a
# staging key of its own (KEYS[6]): it becomes the report, or a late one, or goes, in
# one step.
_REPORT = """
local batch, report, events, reports, late = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5]
local staged, body = KEYS[6], ARGV[6]
local state = redis.call('HGET', batch, 'state')
if state == 'reported' then
  if body == '' then redis.call('DEL', staged) end
  return 0
end
if state == 'forced' then
  if body == '' then
    body = redis.call('GET', staged)
    redis.call('DEL', staged)
  end
  redis.call('RPUSH', late, body)
  redis.call('EXPIRE', late, ARGV[2])
  redis.call('XADD', events, 'MAXLEN', '~', ARGV[5], '*', 'kind', 'late', 'batch', ARGV[3],
    'seq', '', 'data', '')
  return 0
end
redis.call('HSET', batch, 'state', ARGV[1])
if body == '' then
  redis.call('RENAME', staged, report)
  redis.call('EXPIRE', report, ARGV[2])
else
  redis.call('SET', report, body, 'EX', ARGV[2])
end
redis.call('LPUSH', reports, ARGV[4])
redis.call('LTRIM', reports, 0, 99)
redis.call('EXPIRE', reports, ARGV[2])
redis.call('XADD', events, 'MAXLEN', '~', ARGV[5], '*', 'kind', 'batch_' .. ARGV[1],
  'batch', ARGV[3], 'seq', '', 'data', '')
return 1
"""


class StateStore:
    """The only code that talks to Redis about run state."""

    def __init__(self, client: redis.Redis, *, prefix: str = "batchq:", ttl_s: int = 604800):
        self.r = client
        self.keys = Keys(prefix)
        self.ttl = ttl_s
        self._start = client.register_script(_START)
        self._renew = client.register_script(_RENEW)
        self._slot = client.register_script(_SLOT)
        self._release = client.register_script(_RELEASE)
        self._mark = client.register_script(_MARK)
        self._record = client.register_script(_RECORD)
        self._report = client.register_script(_REPORT)

    @classmethod
    def from_url(
        cls, url: str, *, prefix: str = "batchq:", ttl_s: int = 604800, timeout_s: float = 10.0
    ) -> StateStore:
        client = redis.Redis.from_url(
            redis_py_url(url),
            decode_responses=True,
            socket_timeout=timeout_s,
            socket_connect_timeout=timeout_s,
            health_check_interval=25,
        )
        return cls(client, prefix=prefix, ttl_s=ttl_s)

    @classmethod
    def from_settings(cls, settings: Settings, *, timeout_s: float | None = None) -> StateStore:
        """The one way batchq builds its store: ``settings.redis_url``, key prefix,
        TTL and socket timeout (``timeout_s`` shortens it for read-only peeks)."""
        if settings.redis_url is None:
            raise InfrastructureError("no Redis configured: set BATCHQ_REDIS_URL")
        return cls.from_url(
            settings.redis_url,
            prefix=settings.key_prefix,
            ttl_s=settings.state_ttl_s,
            timeout_s=settings.socket_timeout_s if timeout_s is None else timeout_s,
        )

    def ping(self, url: str = "") -> None:
        """Fail fast with exit code 3 and the masked URL when Redis is unreachable."""
        try:
            self.r.ping()
        except redis.RedisError as exc:
            raise BrokerUnavailable(url or "<configured url>", str(exc)) from exc

    def close(self) -> None:
        self.r.close()

    # --- runs and batches -----------------------------------------------------

    def create_run(
        self,
        run_id: str,
        fields: Mapping[str, str],
        context: str,
        callables: Sequence[str] = (),
    ) -> Learned:
        """Record a run; returns what was learned, read in the same round trip: the
        feature's durations per seq and, for each of ``callables``, the longest of its
        recent durations (absent when it never ran)."""
        raw = context.encode()
        if len(raw) > CONTEXT_LIMIT:
            raise InputError(
                f"--context: the session context is {len(raw)} bytes; the limit is {CONTEXT_LIMIT}"
            )
        pipe = self.r.pipeline()
        pipe.hset(self.keys.run(run_id), mapping=cast(Any, dict(fields)))
        pipe.expire(self.keys.run(run_id), self.ttl)
        pipe.set(self.keys.context(run_id), context, ex=self.ttl)
        if "feature_key" in fields:
            runs = self.keys.runs(fields["feature_key"])
            pipe.lpush(runs, run_id)
            pipe.ltrim(runs, 0, 19)
            pipe.expire(runs, self.ttl)
            pipe.hgetall(self.keys.durations(fields["feature_key"]))
        for spec in callables:
            pipe.lrange(self.keys.callable_durations(spec), 0, -1)
        replies = pipe.execute()
        recent = replies[len(replies) - len(callables) :]
        learned = replies[-1 - len(callables)] if "feature_key" in fields else {}
        return Learned(
            {seq: float(v) for seq, v in cast(dict[str, str], learned).items()},
            {
                spec: max(map(float, runs))
                for spec, runs in zip(callables, recent, strict=True)
                if runs
            },
        )

    def recent_runs(self, fkey: str, count: int = 20) -> list[str]:
        return cast(list[str], self.r.lrange(self.keys.runs(fkey), 0, count - 1))

    def run_info(self, run_id: str) -> dict[str, str]:
        return cast(dict[str, str], self.r.hgetall(self.keys.run(run_id)))

    def settle_run(self, run_id: str) -> None:
        """Record that run ``run_id``'s files say all it recorded (``settled`` in its
        record, which keeps its TTL); a record that expired stays gone."""
        self._mark(keys=[self.keys.run(run_id)], args=[RUN_SETTLED, "1"])

    def context(self, run_id: str) -> str:
        value = self.r.get(self.keys.context(run_id))
        return cast(str, value) if value is not None else ""

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
        """Register a batch: its members, the plan's next batch (JSON), the write check
        and each member's declared deliverables (None when the check is off). The chord
        callback reads them here rather than from its message: every member's message
        carries the callback, so anything in it would be published N times.
        Returns the run stream's newest entry id, read in the same round trip, so the
        waiter reads only this batch's events."""
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
        """Record batches as running, in one round trip (flow mode registers the whole
        plan at once: its batches overlap in time); see :meth:`start_batch`."""
        pipe = self.r.pipeline()
        pipe.xrevrange(self.keys.events(run_id), count=1)
        for n, expected in batches.items():
            key = self.keys.batch(run_id, n)
            pipe.hset(
                key,
                mapping={
                    "expected": json.dumps(list(expected)),
                    "policy": policy,
                    "submitted_at": now_iso(),
                    "state": BatchState.RUNNING,
                    "next": (following or {}).get(n, ""),
                    "write_check": write_check,
                },
            )
            if declared is not None:
                mine = {seq: list(declared.get(seq, ())) for seq in expected}
                # Other features' deliverables (keyed "feature <name>", never a seq).
                mine |= {k: list(v) for k, v in declared.items() if k.startswith("feature ")}
                pipe.hset(key, "declared", json.dumps(mine))
            pipe.expire(key, self.ttl)
        newest = pipe.execute()[0]
        return cast(str, newest[0][0]) if newest else "0-0"

    def batch_states(self, run_id: str) -> dict[int, str]:
        """Every batch a run has submitted, numbered from 1, with its state."""
        states: dict[int, str] = {}
        while (state := self.batch_state(run_id, len(states) + 1)) is not None:
            states[len(states) + 1] = state
        return states

    def batch_record(self, run_id: str, n: int) -> BatchRecord:
        """What :meth:`start_batch` stored for the chord callback, in one read."""
        raw = cast(
            list[str | None],
            self.r.hmget(
                self.keys.batch(run_id, n),
                ["expected", "next", "write_check", "declared", "state"],
            ),
        )
        expected, following, check, declared, state = raw
        return BatchRecord(
            expected=list(json.loads(expected)) if expected else [],
            following=following or None,
            write_check=check or "warn",
            declared=cast(dict[str, list[str]], json.loads(declared)) if declared else None,
            state=state,
        )

    def batch_members(self, run_id: str, n: int) -> list[str]:
        raw = self.r.hget(self.keys.batch(run_id, n), "expected")
        return list(json.loads(cast(str, raw))) if raw else []

    def batch_state(self, run_id: str, n: int) -> str | None:
        return cast(str | None, self.r.hget(self.keys.batch(run_id, n), "state"))

    # --- subtask transitions ----------------------------------------------------

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
        """Decide, in one round trip, whether this copy may run the subtask now.

        ``done``: a result is recorded (never rerun); ``cancelled``: the batch's cancel
        flag is up; ``capped``: too many starts died; ``busy``: another copy holds the
        claim; ``run``: the claim is ours and the ``started`` event is emitted. The
        same call with the same non-empty ``token`` (its reply was lost) answers
        ``run`` again while the claim it took is still held.
        """
        claim = Claim(run_id, batch, seq, worker, task_id, claim_ttl_s, max_starts, attempt, token)
        keys, args = self._begin_call(claim)
        return cast(StartDecision, self._start(keys=keys, args=args))

    def _begin_call(self, claim: Claim) -> tuple[list[str], list[Any]]:
        """The keys and arguments of ``_START`` for ``claim``."""
        started_at = now_iso()
        data = json.dumps(
            {"worker": claim.worker, "started_at": started_at, "attempt": claim.attempt}
        )
        keys = [
            self.keys.subtask(claim.run_id, claim.seq),
            self.keys.claim(claim.run_id, claim.seq),
            self.keys.cancel(claim.run_id, claim.batch),
            self.keys.events(claim.run_id),
        ]
        args = [
            claim.worker,
            int(claim.claim_ttl_s * 1000),
            started_at,
            claim.max_starts,
            claim.task_id,
            self.ttl,
            STREAM_MAXLEN,
            claim.batch,
            claim.seq,
            data,
            claim.token,
        ]
        return keys, args

    def renew_claim(self, run_id: str, seq: str, worker: str, claim_ttl_s: float) -> bool:
        key = self.keys.claim(run_id, seq)
        return bool(self._renew(keys=[key], args=[worker, int(claim_ttl_s * 1000)]))

    def take_slot(self, agent: str, holder: str, limit: int, lease_s: float) -> bool:
        """Take (or renew) one of ``limit`` slots of ``agent`` for ``holder``."""
        now_ms = int(time.time() * 1000)
        taken = self._slot(
            keys=[self.keys.slots(agent)],
            args=[holder, limit, now_ms, int(lease_s * 1000), self.ttl * 1000],
        )
        return bool(taken)

    def release_slot(self, agent: str, holder: str) -> None:
        self.r.zrem(self.keys.slots(agent), holder)

    def release_claim(self, run_id: str, seq: str, worker: str) -> None:
        self._release(keys=[self.keys.claim(run_id, seq)], args=[worker])

    def end_attempt(self, run_id: str, seq: str) -> None:
        """An attempt ended without a final result (it will be retried)."""
        self.r.hincrby(self.keys.subtask(run_id, seq), "finishes", 1)

    def emit(self, run_id: str, kind: str, batch: int, seq: str, **data: Any) -> None:
        key = self.keys.events(run_id)
        pipe = self.r.pipeline()
        pipe.xadd(
            key,
            {"kind": kind, "batch": str(batch), "seq": seq, "data": json.dumps(data)},
            maxlen=STREAM_MAXLEN,
            approximate=True,
        )
        pipe.expire(key, self.ttl)
        pipe.execute()

    def record_result(
        self, result: SubtaskResult, fkey: str, worker: str, callable_spec: str | None = None
    ) -> bool:
        """Record the final result of a subtask; False if one was already recorded.
        A python subtask's duration also joins its callable's recent durations."""
        keys, args = self._record_call(result, fkey, worker, callable_spec)
        return bool(self._record(keys=keys, args=args))

    def record_then_begin(
        self,
        result: SubtaskResult,
        fkey: str,
        worker: str,
        callable_spec: str | None,
        then: Claim,
    ) -> tuple[bool, StartDecision]:
        """:meth:`record_result`, then :meth:`begin` of ``then``, in one round trip (two
        scripts, pipelined; each as atomic as alone, and in this order): a chunk's next
        member is claimed by the call that records the one before it. A connection
        error leaves both unknown: record again (idempotent) and begin again with the
        same ``then`` (its token makes it idempotent too)."""
        record_keys, record_args = self._record_call(result, fkey, worker, callable_spec)
        begin_keys, begin_args = self._begin_call(then)
        calls = [
            (self._record, record_keys, record_args),
            (self._start, begin_keys, begin_args),
        ]
        pipe = self.r.pipeline(transaction=False)
        for script, keys, args in calls:
            pipe.evalsha(script.sha, len(keys), *keys, *args)
        replies = pipe.execute(raise_on_error=False)
        for index, (reply, (script, keys, args)) in enumerate(zip(replies, calls, strict=True)):
            if isinstance(reply, redis.exceptions.NoScriptError):
                # Redis restarted or flushed its scripts: neither ran (they are gone
                # together); the script object loads itself and runs alone.
                replies[index] = script(keys=keys, args=args)
            elif isinstance(reply, Exception):
                raise reply
        return bool(replies[0]), cast(StartDecision, replies[1])

    def _record_call(
        self, result: SubtaskResult, fkey: str, worker: str, callable_spec: str | None
    ) -> tuple[list[str], list[Any]]:
        """The keys and arguments of ``_RECORD`` for ``result``."""
        keys = [
            self.keys.subtask(result.run_id, result.seq),
            self.keys.claim(result.run_id, result.seq),
            self.keys.events(result.run_id),
            self.keys.durations(fkey),
            self.keys.callable_durations(callable_spec or ""),
        ]
        args = [
            result.model_dump_json(),
            worker,
            result.batch,
            result.seq,
            result.attempts,
            self.ttl,
            STREAM_MAXLEN,
            result.result.value,
            f"{result.duration_s:.3f}",
            "1" if callable_spec else "0",
            CALLABLE_RUNS,
        ]
        return keys, args

    def amend_results(self, results: Sequence[SubtaskResult]) -> None:
        """Overwrite recorded results the batch report changed (a member failed for an
        undeclared write), so store, report and task files agree. Idempotent: both
        report builders derive the same amendment from the same records."""
        if not results:
            return
        pipe = self.r.pipeline()
        for result in results:
            pipe.hset(
                self.keys.subtask(result.run_id, result.seq), "result", result.model_dump_json()
            )
        pipe.execute()

    def result(self, run_id: str, seq: str) -> SubtaskResult | None:
        raw = self.r.hget(self.keys.subtask(run_id, seq), "result")
        return SubtaskResult.model_validate_json(cast(str, raw)) if raw else None

    def results(self, run_id: str, seqs: Iterable[str]) -> dict[str, SubtaskResult]:
        """The recorded results, read a slice of ``RESULTS_AT_ONCE`` at a time: the raw
        JSON of a whole big batch never sits in memory beside its parsed results."""
        seqs = list(seqs)
        out: dict[str, SubtaskResult] = {}
        for i in range(0, len(seqs), RESULTS_AT_ONCE):
            part = seqs[i : i + RESULTS_AT_ONCE]
            pipe = self.r.pipeline()
            for seq in part:
                pipe.hget(self.keys.subtask(run_id, seq), "result")
            for seq, raw in zip(part, pipe.execute(), strict=True):
                if raw:
                    out[seq] = SubtaskResult.model_validate_json(raw)
        return out

    def subtask_info(self, run_id: str, seq: str) -> dict[str, str]:
        return cast(dict[str, str], self.r.hgetall(self.keys.subtask(run_id, seq)))

    def live_claims(self, run_id: str, seqs: Iterable[str]) -> list[str]:
        """Seqs whose claim is still held, i.e. a worker heartbeat is alive."""
        seqs = list(seqs)
        pipe = self.r.pipeline()
        for seq in seqs:
            pipe.exists(self.keys.claim(run_id, seq))
        return [seq for seq, alive in zip(seqs, pipe.execute(), strict=True) if alive]

    # --- cancellation -------------------------------------------------------------

    def cancel(self, run_id: str, n: int, mode: str) -> None:
        """Set the cooperative cancel flag; ``terminate`` is never downgraded."""
        key = self.keys.cancel(run_id, n)
        if mode == "terminate":
            self.r.set(key, mode, ex=self.ttl)
        else:
            self.r.set(key, mode, ex=self.ttl, nx=True)

    def cancel_mode(self, run_id: str, n: int) -> str | None:
        return cast(str | None, self.r.get(self.keys.cancel(run_id, n)))

    # --- reports --------------------------------------------------------------------

    def store_report(self, report: BatchReport, fkey: str) -> bool:
        """Store the batch's report once; False if one exists (and, after a forced
        report, keep this one as a ``late`` entry)."""
        state = BatchState.FORCED if report.forced else BatchState.REPORTED
        body = _whole(report)
        stored = self._report(
            keys=[
                self.keys.batch(report.run_id, report.batch),
                self.keys.report(report.run_id, report.batch),
                self.keys.events(report.run_id),
                self.keys.reports(fkey),
                self.keys.late(report.run_id, report.batch),
                self._staging_key(report) if body else self._staged(report),
            ],
            args=[
                state,
                self.ttl,
                report.batch,
                f"{report.run_id}:{report.batch}",
                STREAM_MAXLEN,
                body,
            ],
        )
        return bool(stored)

    def overwrite_report(self, report: BatchReport) -> None:
        """Replace a stored report with its checked version (discrepancies added)."""
        key = self.keys.report(report.run_id, report.batch)
        body = _whole(report)
        if body:
            self.r.set(key, body, ex=self.ttl)
            return
        pipe = self.r.pipeline(transaction=True)
        pipe.rename(self._staged(report), key)
        pipe.expire(key, self.ttl)
        pipe.execute()

    def _staged(self, report: BatchReport) -> str:
        """A new key holding the report's JSON, appended ``REPORT_PART`` bytes at a time:
        the report of a big batch is never serialized whole in this process (at 20,000
        members some 16 MiB, held twice while pydantic copies it out, beside the results
        themselves). The key expires by itself if this process dies before using it."""
        key = self._staging_key(report)
        part: list[bytes] = []
        size = 0
        first = True
        for piece in itertools.chain(report.json_parts(), (b"",)):
            part.append(piece)
            size += len(piece)
            if size < REPORT_PART and piece:
                continue  # the empty piece at the end sends what is left
            pipe = self.r.pipeline(transaction=first)  # the key never lives without a TTL
            pipe.append(key, b"".join(part))
            if first:
                pipe.expire(key, self.ttl)
                first = False
            pipe.execute()
            part, size = [], 0
        return key

    def _staging_key(self, report: BatchReport) -> str:
        return f"{self.keys.report(report.run_id, report.batch)}:staged:{secrets.token_hex(8)}"

    def report(self, run_id: str, n: int) -> BatchReport | None:
        """The stored report, read ``REPORT_PART`` bytes at a time and validated result
        by result (:meth:`BatchReport.from_json_parts`): a big batch's report is never
        in this process whole, as text or as parsed JSON. The read is watched, so a
        report replaced meanwhile (``overwrite_report``) is read again, never mixed."""
        key = self.keys.report(run_id, n)
        head = self.r.execute_command(  # type: ignore[no-untyped-call]
            "GETRANGE", key, 0, REPORT_PART - 1, **{NEVER_DECODE: True}
        )
        if len(head) < REPORT_PART:  # all of it, read at once (a small batch's, most)
            return BatchReport.from_json(head.decode("utf-8")) if head else None
        for _attempt in range(REPORT_READS):
            with self.r.pipeline() as pipe:
                try:
                    pipe.watch(key)  # type: ignore[no-untyped-call]
                    report = BatchReport.from_json_parts(_ranges(pipe, key))
                    pipe.multi()
                    pipe.exists(key)
                    pipe.execute()  # WatchError: the key changed while it was read
                except redis.WatchError:
                    continue
            if report is not None:
                return report
            break
        raw = self.r.get(key)  # not of that shape, or always replaced: as it was
        return BatchReport.model_validate_json(cast(str, raw)) if raw else None

    def late_reports(self, run_id: str, n: int) -> list[BatchReport]:
        raws = cast(list[str], self.r.lrange(self.keys.late(run_id, n), 0, -1))
        return [BatchReport.from_json(raw) for raw in raws]

    def report_refs(self, fkey: str, count: int = 100) -> list[tuple[str, int]]:
        refs = cast(list[str], self.r.lrange(self.keys.reports(fkey), 0, count - 1))
        out: list[tuple[str, int]] = []
        for ref in refs:
            run_id, _, n = ref.rpartition(":")
            out.append((run_id, int(n)))
        return out

    # --- events ------------------------------------------------------------------------

    def events(
        self, run_id: str, after: str = "0-0", *, block_ms: int | None = None, count: int = 1000
    ) -> list[Event]:
        reply: Any = self.r.xread({self.keys.events(run_id): after}, count=count, block=block_ms)
        out: list[Event] = []
        for _stream, entries in reply or []:
            for entry_id, fields in entries:
                data = fields.get("data") or "{}"
                out.append(
                    Event(
                        id=entry_id,
                        kind=fields.get("kind", ""),
                        batch=int(fields.get("batch") or 0),
                        seq=sys.intern(fields.get("seq", "")),  # as models keep it
                        data=json.loads(data) if data.startswith("{") else {},
                    )
                )
        return out

    def seconds_since_last_event(self, run_id: str) -> float:
        """Age of the run's newest progress event (stream ids are millisecond times)."""
        newest = self.last_event_id(run_id)
        if newest == "0-0":
            return float("inf")
        return max(0.0, time.time() - int(newest.split("-")[0]) / 1000)

    def last_event_id(self, run_id: str) -> str:
        """The newest entry of the run's stream, so a waiter reads only what follows."""
        entries = self.r.xrevrange(self.keys.events(run_id), count=1)
        return cast(str, entries[0][0]) if entries else "0-0"

    # --- feature lock and learned durations ---------------------------------------------

    def acquire_lock(self, fkey: str, holder: str, lease_s: float) -> str | None:
        """Take the orchestrator lease; returns the current holder if someone has it."""
        key = self.keys.lock(fkey)
        if self.r.set(key, holder, nx=True, px=int(lease_s * 1000)):
            return None
        current = self.r.get(key)
        return cast(str, current) if current else "another orchestrator"

    def renew_lock(self, fkey: str, holder: str, lease_s: float) -> bool:
        return bool(self._renew(keys=[self.keys.lock(fkey)], args=[holder, int(lease_s * 1000)]))

    def release_lock(self, fkey: str, holder: str) -> None:
        self._release(keys=[self.keys.lock(fkey)], args=[holder])

    def lock_holder(self, fkey: str) -> str | None:
        return cast(str | None, self.r.get(self.keys.lock(fkey)))


WHOLE_UPTO = 200
"""Reports of at most this many members are serialized whole and sent in the storing
script's one call (a few hundred KiB at most); bigger ones go through a staging key in
parts (:meth:`StateStore._staged`). A batch of four then costs one round trip, not two."""


def _whole(report: BatchReport) -> str:
    """A small report's JSON, or "" for one sent in parts."""
    if len(report.results) + len(report.missing) > WHOLE_UPTO:
        return ""
    return report.model_dump_json()


def _ranges(client: Any, key: str) -> Iterator[str]:
    """A string key's value, ``REPORT_PART`` bytes at a time, decoded as UTF-8 across
    the cuts (GETRANGE counts bytes, not characters)."""
    decoder = codecs.getincrementaldecoder("utf-8")()
    start = 0
    while True:
        end = start + REPORT_PART - 1
        chunk = client.execute_command("GETRANGE", key, start, end, **{NEVER_DECODE: True})
        start += len(chunk)
        if len(chunk) < REPORT_PART:
            yield decoder.decode(chunk, final=True)
            return
        yield decoder.decode(chunk)


def wait_until(predicate: Any, timeout_s: float, interval_s: float = 0.05) -> bool:
    """Poll ``predicate`` until true or the timeout passes (used by tests and ``watch``)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval_s)
    return bool(predicate())
