"""Verification after an agent succeeds: deliverables, then execution.verify."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from batchq.agents import Delegation, agent_for
from batchq.agents.base import Agent, AgentOutcome
from batchq.errors import PolicyError
from batchq.executor.verify import (
    check_verify,
    first_failure,
    verify_delegation,
    verify_deliverables,
)
from batchq.models import DeliverableCheck, Subtask
from batchq.settings import Settings


def make_subtask(deliverables: list[str], **execution: Any) -> Subtask:
    return Subtask.model_validate(
        {
            "id": "feat-01",
            "seq": "01",
            "title": "Build",
            "acceptance_criteria": ["built"],
            "deliverables": deliverables,
            "execution": execution or None,
        }
    )


SETTINGS = Settings()


def delegation(tmp_path: Path, subtask: Subtask, timeout_s: float = 60) -> Delegation:
    return Delegation(
        feature="feat",
        run_id="run1",
        batch=1,
        subtask=subtask,
        workspace=tmp_path,
        context="",
        log_path=tmp_path / ".batchq" / "logs" / "01.log",
        timeout_s=timeout_s,
    )


def test_files_and_folders_are_verified(tmp_path: Path) -> None:
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "a.py").write_text("")
    (tmp_path / "docs").write_text("a file, not a folder")
    sub = make_subtask(["src/a.py", "src/", "./src/a.py", "src/b.py", "docs/", "src"])
    assert [(c.path, c.verified) for c in verify_deliverables(sub, tmp_path)] == [
        ("src/a.py", True),
        ("src/", True),
        ("./src/a.py", True),
        ("src/b.py", False),
        ("docs/", False),
        ("src", False),
    ]


def test_paths_that_escape_the_workspace_never_verify(tmp_path: Path) -> None:
    workspace = tmp_path / "ws"
    workspace.mkdir()
    (tmp_path / "outside.txt").write_text("")
    (workspace / "link.txt").symlink_to(tmp_path / "outside.txt")
    sub = make_subtask(["../outside.txt", str(tmp_path / "outside.txt"), "link.txt"])
    assert [c.verified for c in verify_deliverables(sub, workspace)] == [False, False, False]


def test_a_link_into_a_sibling_that_shares_the_workspace_s_name_never_verifies(
    tmp_path: Path,
) -> None:
    """``ws-old/x`` starts with the text ``ws`` but is not inside ``ws``."""
    workspace, sibling = tmp_path / "ws", tmp_path / "ws-old"
    workspace.mkdir()
    sibling.mkdir()
    (sibling / "x.txt").write_text("")
    (workspace / "x.txt").symlink_to(sibling / "x.txt")
    (workspace / "inside.txt").write_text("")
    sub = make_subtask(["x.txt", "inside.txt"])
    assert [c.verified for c in verify_deliverables(sub, workspace)] == [False, True]


def test_a_workspace_reached_through_a_link_verifies_its_own_files(tmp_path: Path) -> None:
    real = tmp_path / "real"
    (real / "src").mkdir(parents=True)
    (real / "src" / "a.py").write_text("")
    (tmp_path / "alias").symlink_to(real)
    sub = make_subtask(["src/a.py", "src/", "missing.py"])
    assert [c.verified for c in verify_deliverables(sub, tmp_path / "alias")] == [
        True,
        True,
        False,
    ]


def test_first_failure_names_the_missing_deliverables() -> None:
    one = [
        DeliverableCheck(path="src/a.py", verified=False),
        DeliverableCheck(path="b", verified=True),
    ]
    assert first_failure(one) == "deliverable missing: src/a.py"
    two = [DeliverableCheck(path="a", verified=False), DeliverableCheck(path="b/", verified=False)]
    assert first_failure(two) == "deliverables missing: a, b/"
    assert first_failure([DeliverableCheck(path="a", verified=True)]) is None


def test_no_verify_command_runs_nothing(tmp_path: Path) -> None:
    (tmp_path / "a").write_text("ok")
    result = verify_delegation(delegation(tmp_path, make_subtask(["a"])), SETTINGS)
    assert result.ok and result.verify is None


def test_a_passing_verify_command(tmp_path: Path) -> None:
    (tmp_path / "a").write_text("ok")
    sub = make_subtask(["a"], verify="grep -q ok a && echo verified")
    d = delegation(tmp_path, sub)
    result = verify_delegation(d, SETTINGS)
    assert result.verify is not None and result.verify.ok
    assert result.ok
    assert "[batchq] verify: grep -q ok a" in d.log_path.read_text()


def test_a_failing_verify_command_gives_its_exit_code_and_tail(tmp_path: Path) -> None:
    (tmp_path / "a").write_text("")
    sub = make_subtask(["a"], verify="echo 'checking'; echo '2 tests failed' >&2; exit 1")
    result = verify_delegation(delegation(tmp_path, sub), SETTINGS)
    assert result.failure == "verify failed (exit 1): 2 tests failed"


def test_a_verify_command_that_hangs_times_out(tmp_path: Path) -> None:
    (tmp_path / "a").write_text("")
    sub = make_subtask(["a"], verify="sleep 30")
    result = verify_delegation(delegation(tmp_path, sub, timeout_s=0.3), SETTINGS)
    assert result.verify is not None and result.verify.timed_out
    assert (result.failure or "").startswith("verify timed out after")


def test_verify_delegation_runs_verify_with_the_subtask_env(tmp_path: Path) -> None:
    (tmp_path / "a").write_text("")
    sub = make_subtask(
        ["a"], verify='test "$MODE/$BATCHQ_SEQ" = "strict/01"', env={"MODE": "strict"}
    )
    result = verify_delegation(delegation(tmp_path, sub), SETTINGS)
    assert result.ok, result.failure
    assert result.verify is not None


def test_verify_delegation_skips_verify_when_a_deliverable_is_missing(tmp_path: Path) -> None:
    sub = make_subtask(["a"], verify="touch ran")
    result = verify_delegation(delegation(tmp_path, sub), SETTINGS)
    assert result.failure == "deliverable missing: a"
    assert result.verify is None
    assert not (tmp_path / "ran").exists()


def test_check_verify_applies_the_shell_allow_list() -> None:
    settings = Settings(shell_allow=["pytest *"])
    check_verify(make_subtask(["a"], verify="pytest -q tests"), settings)
    with pytest.raises(PolicyError, match=r"subtask 01: execution\.verify: 'rm x' is not allowed"):
        check_verify(make_subtask(["a"], verify="pytest -q; rm x"), settings)
    with pytest.raises(PolicyError, match="may not set LD_PRELOAD"):
        check_verify(make_subtask(["a"], verify="pytest x", env={"LD_PRELOAD": "x"}), settings)


class _PermissiveAgent(Agent):
    """A third-party agent that checks nothing itself."""

    def check(self, subtask: Subtask) -> None:
        return None

    def run(self, delegation: Delegation, should_stop: Any) -> AgentOutcome:
        return AgentOutcome(ok=True)


def test_agent_for_checks_verify_for_third_party_agents(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(
        "batchq.agents.registry.registered_agents", lambda: {"mine": _PermissiveAgent}
    )
    sub = make_subtask(["a"], verify="rm -rf /").model_copy(update={"suggested_agent": "mine"})
    with pytest.raises(PolicyError, match=r"execution\.verify"):
        agent_for(sub, Settings(shell_allow=["echo *"]))


@pytest.mark.parametrize(
    ("link", "target", "deliverable"),
    [("gitlink", ".git", "gitlink/config"), ("config.txt", ".env", "config.txt")],
)
def test_a_deliverable_that_resolves_to_a_protected_path_is_refused(
    tmp_path: Path, link: str, target: str, deliverable: str
) -> None:
    (tmp_path / ".git").mkdir()
    (tmp_path / ".git" / "config").write_text("[core]\n")
    (tmp_path / ".env").write_text("SECRET=1\n")
    (tmp_path / link).symlink_to(tmp_path / target)
    sub = make_subtask([deliverable])
    result = verify_delegation(delegation(tmp_path, sub), SETTINGS)
    assert not result.ok
    assert result.failure is not None and result.failure.startswith("deliverable refused: ")
    assert "protected by" in result.failure
