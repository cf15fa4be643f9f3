"""The pure rule for which subtasks share a message (batchq.core.chunks)."""

from __future__ import annotations

from typing import Any

from batchq.core.chunks import LONG_S, MIN_MESSAGES, TINY_S, plan, tiny
from batchq.models import Subtask
from tests.conftest import subtask


def subs(n: int, **execution: Any) -> list[Subtask]:
    return [
        Subtask.model_validate(subtask(f"{i:05d}", callable_="m:f", **execution))
        for i in range(1, n + 1)
    ]


def python(members: list[Subtask]) -> dict[str, str]:
    return {s.seq: "python" for s in members}


def flat(groups: list[list[Subtask]]) -> list[Subtask]:
    return [s for g in groups for s in g]


def test_a_batch_too_small_to_keep_min_messages_is_not_chunked() -> None:
    members = subs(2 * MIN_MESSAGES - 1)
    groups = plan(members, python(members), {}, lambda s: 1.0, 1e9, 16)
    assert groups == [[s] for s in members]


def test_chunks_grow_with_the_batch_up_to_chunk_max_and_keep_the_order() -> None:
    members = subs(5 * MIN_MESSAGES)
    groups = plan(members, python(members), {}, lambda s: 1.0, 1e9, 16)
    assert {len(g) for g in groups} == {5}
    assert flat(groups) == members
    big = subs(40 * MIN_MESSAGES)
    assert max(len(g) for g in plan(big, python(big), {}, lambda s: 1.0, 1e9, 16)) == 16
    assert plan(big[:600], python(big), {}, lambda s: 1.0, 1e9, 1) == [[s] for s in big[:600]]


def test_other_agents_and_known_long_members_travel_alone() -> None:
    members = subs(4 * MIN_MESSAGES)
    agents = python(members) | {members[1].seq: "shell"}
    known = {members[2].seq: LONG_S, members[3].seq: LONG_S / 2}
    groups = plan(members, agents, known, lambda s: 1.0, 1e9, 16)
    assert [members[1]] in groups and [members[2]] in groups
    assert any(members[3] in g and len(g) == 4 for g in groups)
    assert sorted(flat(groups), key=lambda s: s.number) == members


def test_a_chunk_budget_stays_under_the_visibility_limit() -> None:
    members = subs(8 * MIN_MESSAGES)
    groups = plan(members, python(members), {}, lambda s: 100.0, 250.0, 8)
    assert {len(g) for g in groups} == {2}  # a third member would need 300 s
    assert flat(groups) == members


def test_tiny_members_are_python_ones_whose_callable_and_own_past_agree() -> None:
    members = [
        Subtask.model_validate(subtask("01", callable_="m:quick")),
        Subtask.model_validate(subtask("02", callable_="m:quick", estimate_s=TINY_S)),
        Subtask.model_validate(subtask("03", callable_="m:slow")),
        Subtask.model_validate(subtask("04", callable_="m:never_ran")),
        Subtask.model_validate(subtask("05", command="true")),
        Subtask.model_validate(subtask("06", callable_="m:quick")),
    ]
    agents = {s.seq: "python" for s in members} | {"05": "shell"}
    known = {"02": TINY_S, "06": 0.2}  # 02's estimate, 06's own last run
    callables = {"m:quick": TINY_S / 10, "m:slow": TINY_S}
    assert tiny(members, agents, known, callables) == {"01"}


def test_tiny_members_share_a_message_in_a_batch_of_any_size() -> None:
    members = subs(5)
    seqs = {s.seq for s in members[:4]}
    groups = plan(members, python(members), {}, lambda s: 1.0, 1e9, 3, seqs)
    assert groups == [members[:3], [members[3]], [members[4]]]  # by first member
    assert plan(members, python(members), {}, lambda s: 1.0, 1e9, 16, seqs) == [
        members[:4],
        [members[4]],
    ]
    assert plan(members, python(members), {}, lambda s: 1.0, 1e9, 1, seqs) == [[s] for s in members]


def test_in_a_big_batch_tiny_members_fill_bigger_chunks_than_the_rest() -> None:
    members = subs(4 * MIN_MESSAGES)  # the rest: chunks of 4
    seqs = {s.seq for s in members[:40]}
    groups = plan(members, python(members), {}, lambda s: 1.0, 1e9, 16, seqs)
    assert [len(g) for g in groups[:3]] == [16, 16, 8]
    assert {len(g) for g in groups[3:]} == {4}
    assert flat(groups) == members
