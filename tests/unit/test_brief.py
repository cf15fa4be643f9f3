"""What a subtask's message says about its feature and batch (the coding agent's brief)."""

from __future__ import annotations

import json
from pathlib import Path

from batchq.executor.runner import delegation_for
from batchq.models import FailurePolicy, Feature, Run, Subtask, SubtaskMessage, TaskFile
from batchq.transport.publish import SIBLINGS_CAP, Brief, message


def sub(seq: str) -> Subtask:
    return Subtask(
        id=f"feat-{seq}",
        seq=seq,
        title=f"Subtask {seq}",
        acceptance_criteria=["done"],
        deliverables=[f"out/{seq}.txt"],
    )


def feature(*subtasks: Subtask) -> Feature:
    return Feature(
        name="feat",
        root=Path("/project"),
        path=Path("/project/.tmp/tasks/feat"),
        task=TaskFile(id="feat", name="The feature", objective="Ship it"),
        subtasks=list(subtasks),
    )


RUN = Run(
    run_id="r1",
    feature="feat",
    feature_key="feat@0",
    root=Path("/project"),
    token="t",
    policy=FailurePolicy.GRACEFUL,
)


def wire(body: dict[str, object]) -> SubtaskMessage:
    return SubtaskMessage.model_validate(json.loads(json.dumps(body)))


def test_a_coding_agents_message_names_its_siblings_by_seq_and_the_feature() -> None:
    members = [sub("03"), sub("01"), sub("02")]
    brief = Brief.of(feature(*members), members, dict.fromkeys(["01", "02", "03"], "Coder"))
    msg = wire(message(RUN, members[2], "Coder", 1, FailurePolicy.GRACEFUL, brief))
    assert [(m.seq, m.deliverables) for m in msg.siblings] == [
        ("01", ["out/01.txt"]),
        ("03", ["out/03.txt"]),
    ]
    assert msg.siblings_total == 2
    assert (msg.feature_name, msg.objective) == ("The feature", "Ship it")
    assert msg.subtask_file == ".tmp/tasks/feat/subtask_02.json"


def test_a_big_batch_lists_a_capped_number_of_siblings_and_counts_the_rest() -> None:
    members = [sub(f"{n:03d}") for n in range(1, 101)]
    brief = Brief.of(feature(*members), members, {s.seq: "Coder" for s in members})
    msg = wire(message(RUN, members[0], "Coder", 1, FailurePolicy.GRACEFUL, brief))
    assert len(msg.siblings) == SIBLINGS_CAP
    assert msg.siblings[0].seq == "002"
    assert msg.siblings_total == 99


def test_shell_and_python_batches_carry_no_siblings() -> None:
    members = [sub("01"), sub("02")]
    agents = {"01": "shell", "02": "python"}
    brief = Brief.of(feature(*members), members, agents)
    assert brief.members == ()
    mixed = Brief.of(feature(*members), members, {"01": "shell", "02": "Coder"})
    shell_msg = wire(message(RUN, members[0], "shell", 1, FailurePolicy.GRACEFUL, mixed))
    assert (shell_msg.siblings, shell_msg.siblings_total) == ([], 0)
    coder_msg = wire(message(RUN, members[1], "Coder", 1, FailurePolicy.GRACEFUL, mixed))
    assert [m.seq for m in coder_msg.siblings] == ["01"]


def test_a_message_from_an_older_producer_still_decodes_and_gets_a_brief(tmp_path: Path) -> None:
    """No feature_name, objective, subtask_file or siblings: the worker fills in what
    it can, so the prompt still names the subtask's file."""
    body = message(RUN, sub("04"), "Coder", 2, FailurePolicy.GRACEFUL)
    for key in ("feature_name", "objective", "subtask_file", "siblings", "siblings_total"):
        body.pop(key)
    msg = wire(body)
    delegation = delegation_for(msg, tmp_path, "", tmp_path / "04.log")
    assert delegation.feature_name == "feat"
    assert delegation.subtask_file == ".tmp/tasks/feat/subtask_04.json"
    assert (delegation.siblings, delegation.siblings_total, delegation.objective) == ((), 0, None)
