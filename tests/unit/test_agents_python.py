"""The python agent: allow-list at dot boundaries and the callable contract, in-process."""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path
from typing import Any

import pytest
from celery.exceptions import SoftTimeLimitExceeded

from batchq.agents import Delegation, agent_for
from batchq.agents.python import CallContext, PythonAgent, module_allowed
from batchq.errors import PolicyError
from batchq.models import Subtask
from batchq.settings import Settings

TESTS_DIR = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def importable_fixtures(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.syspath_prepend(str(TESTS_DIR))


def make_subtask(callable_: str | None = None, **execution: Any) -> Subtask:
    if callable_ is not None:
        execution["callable"] = callable_
    return Subtask.model_validate(
        {
            "id": "feat-05",
            "seq": "05",
            "title": "Compute",
            "acceptance_criteria": ["computed"],
            "deliverables": ["result.txt"],
            "execution": execution,
        }
    )


def agent(*allow: str) -> PythonAgent:
    return PythonAgent("python", Settings(python_allow=list(allow)))


def delegation(tmp_path: Path, subtask: Subtask) -> Delegation:
    return Delegation(
        feature="feat",
        run_id="run1",
        batch=2,
        subtask=subtask,
        workspace=tmp_path,
        context="the session context",
        log_path=tmp_path / "logs" / "05.log",
        timeout_s=60,
    )


def never() -> bool:
    return False


@pytest.mark.parametrize(
    ("module", "allow", "allowed"),
    [
        ("pkg", ["pkg"], True),
        ("pkg.sub", ["pkg"], True),
        ("pkg.sub.deep", ["pkg.sub"], True),
        ("pkgx", ["pkg"], False),
        ("pkgx.sub", ["pkg"], False),
        ("pkg", ["pkg.sub"], False),
        ("anything.at.all", ["*"], True),
        ("pkg.sub", ["pkg.*"], True),
        ("pkg", [], False),
    ],
)
def test_modules_are_matched_at_dot_boundaries(
    module: str, allow: list[str], allowed: bool
) -> None:
    assert module_allowed(module, allow) is allowed


def test_a_module_outside_the_allow_list_is_refused_before_it_is_imported(tmp_path: Path) -> None:
    sys.modules.pop("fixtures_pkg.loud", None)
    sub = make_subtask("fixtures_pkg.loud:run")
    with pytest.raises(PolicyError) as info:
        agent("fixtures_pkg.callables").check(sub)
    assert str(info.value) == (
        "subtask 05: execution.callable: module 'fixtures_pkg.loud' is not allowed by the "
        "python allow-list (modules: 'fixtures_pkg.callables')"
    )
    outcome = agent("fixtures_pkg.callables").run(delegation(tmp_path, sub), never)
    assert outcome.error_type == "PolicyError"
    assert "fixtures_pkg.loud" not in sys.modules


def test_a_missing_callable_is_refused() -> None:
    with pytest.raises(PolicyError, match=r"execution\.callable: missing"):
        agent("*").check(make_subtask())


def test_the_default_empty_list_allows_nothing() -> None:
    with pytest.raises(PolicyError, match="modules: none; set BATCHQ_PYTHON_ALLOW"):
        agent().check(make_subtask("fixtures_pkg.callables:raises"))


def test_env_and_verify_follow_the_shell_rules() -> None:
    with pytest.raises(PolicyError, match="may not set PYTHONPATH"):
        agent("*").check(make_subtask("a:b", env={"PYTHONPATH": "/x"}))
    with pytest.raises(PolicyError, match=r"execution\.verify"):
        agent("*").check(make_subtask("a:b", verify="rm -rf /"))


def test_agent_for_infers_the_python_agent_from_a_callable() -> None:
    settings = Settings(python_allow=["fixtures_pkg"])
    assert isinstance(
        agent_for(make_subtask("fixtures_pkg.callables:raises"), settings), PythonAgent
    )


def test_the_callable_gets_the_subtask_and_the_context_with_the_workspace(tmp_path: Path) -> None:
    d = delegation(tmp_path, make_subtask("fixtures_pkg.callables:write_deliverable"))
    outcome = agent("fixtures_pkg").run(d, never)
    assert outcome.ok, outcome
    assert outcome.summary == "wrote result.txt for Compute"
    assert (tmp_path / "result.txt").read_text() == "feat/05: the session context"
    assert "wrote result.txt" in outcome.output
    assert "wrote result.txt" in d.log_path.read_text()


def test_the_context_is_a_plain_string_too(tmp_path: Path) -> None:
    d = delegation(tmp_path, make_subtask("fixtures_pkg.callables:raises"))
    context = CallContext("text", d)
    assert context == "text"
    assert isinstance(context, str)
    assert context.workspace == tmp_path
    assert context.batch == 2


def test_returning_none_summarises_with_the_last_printed_line(tmp_path: Path) -> None:
    outcome = agent("*").run(
        delegation(tmp_path, make_subtask("fixtures_pkg.callables:prints_only")), never
    )
    assert outcome.ok
    assert outcome.summary == "the last line"
    assert outcome.output == "first line\nthe last line\n"


def test_a_returned_dict_gives_the_summary(tmp_path: Path) -> None:
    outcome = agent("*").run(
        delegation(tmp_path, make_subtask("fixtures_pkg.callables:returns_dict")), never
    )
    assert outcome.ok
    assert outcome.summary == "from a dict"


def test_a_dict_with_ok_false_is_a_failure(tmp_path: Path) -> None:
    sub = make_subtask("fixtures_pkg.callables:reports_failure")
    outcome = agent("*").run(delegation(tmp_path, sub), never)
    assert not outcome.ok
    assert outcome.error == "nothing to do"


def test_a_nested_attribute_can_be_called(tmp_path: Path) -> None:
    outcome = agent("*").run(
        delegation(tmp_path, make_subtask("fixtures_pkg.callables:Steps.nested")), never
    )
    assert outcome.summary == "nested ok"


def test_an_exception_is_a_failed_outcome_with_its_class_and_traceback(tmp_path: Path) -> None:
    outcome = agent("*").run(
        delegation(tmp_path, make_subtask("fixtures_pkg.callables:raises")), never
    )
    assert not outcome.ok
    assert outcome.error_type == "ValueError"
    assert outcome.error == "ValueError: boom"
    assert "about to fail" in outcome.output
    assert "Traceback (most recent call last)" in outcome.output
    assert 'raise ValueError("boom")' in outcome.output


@pytest.mark.parametrize(
    ("spec", "error_type"),
    [
        ("fixtures_pkg.nope:run", "ModuleNotFoundError"),
        ("fixtures_pkg.callables:nope", "AttributeError"),
        ("fixtures_pkg.callables:not_callable", "TypeError"),
    ],
)
def test_an_unresolvable_callable_is_a_failed_outcome(
    tmp_path: Path, spec: str, error_type: str
) -> None:
    outcome = agent("*").run(delegation(tmp_path, make_subtask(spec)), never)
    assert not outcome.ok
    assert outcome.error_type == error_type


def test_sys_exit_75_asks_for_a_retry_and_does_not_end_the_worker(tmp_path: Path) -> None:
    sub = make_subtask("fixtures_pkg.callables:exits_temporarily")
    outcome = agent("*").run(delegation(tmp_path, sub), never)
    assert not outcome.ok
    assert outcome.temporary
    assert outcome.exit_code == 75


def test_the_soft_time_limit_propagates_to_the_task_layer(tmp_path: Path) -> None:
    sub = make_subtask("fixtures_pkg.callables:hits_soft_time_limit")
    with pytest.raises(SoftTimeLimitExceeded):
        agent("*").run(delegation(tmp_path, sub), never)


def test_the_agent_times_the_callable_itself_in_the_main_thread(tmp_path: Path) -> None:
    """A chunk's members share one message, so one Celery limit cannot time each."""
    import signal

    sub = make_subtask("fixtures_pkg.callables:sleeps_past_timeout")
    run = delegation(tmp_path, sub)
    run = dataclasses.replace(run, timeout_s=0.2)
    before = signal.getsignal(signal.SIGALRM)
    with pytest.raises(SoftTimeLimitExceeded, match=r"0\.2s"):  # else None after 60 s
        agent("*").run(run, never)
    assert signal.getsignal(signal.SIGALRM) is before
    assert signal.getitimer(signal.ITIMER_REAL) == (0.0, 0.0)


def test_off_the_main_thread_no_alarm_is_armed(tmp_path: Path) -> None:
    import threading

    sub = make_subtask("fixtures_pkg.callables:write_deliverable")
    run = dataclasses.replace(delegation(tmp_path, sub), timeout_s=0.01)
    outcomes: list[Any] = []
    thread = threading.Thread(target=lambda: outcomes.append(agent("*").run(run, never)))
    thread.start()
    thread.join(30)
    assert outcomes and outcomes[0].ok


def test_a_stopped_batch_does_not_start_the_callable(tmp_path: Path) -> None:
    sub = make_subtask("fixtures_pkg.callables:write_deliverable")
    outcome = agent("*").run(delegation(tmp_path, sub), lambda: True)
    assert outcome.cancelled
    assert not (tmp_path / "result.txt").exists()


MYPKG = "fixtures_pkg.mypkg"


@pytest.mark.parametrize(
    ("attr", "reason"),
    [
        ("os.system", "is the module 'os'"),
        ("subprocess.run", "is the module 'subprocess'"),
        ("helper_mod.run", "is the module 'fixtures_pkg.helper_mod'"),
        ("imported_function", "defined in module 'subprocess'"),
        ("own.__globals__", "dunder name"),
    ],
)
def test_the_allow_list_judges_the_object_reached_not_the_text_before_the_colon(
    tmp_path: Path, attr: str, reason: str
) -> None:
    from fixtures_pkg import helper_mod

    spec = f"{MYPKG}:{attr}"
    outcome = agent(MYPKG).run(delegation(tmp_path, make_subtask(spec)), never)
    assert not outcome.ok
    assert outcome.error_type == "PolicyError"
    assert outcome.error is not None
    assert outcome.error.startswith(f"subtask 05: execution.callable {spec!r}: ")
    assert reason in outcome.error
    assert helper_mod.CALLS == []  # refused before the call


@pytest.mark.parametrize(
    ("attr", "summary"),
    [("own", "mypkg.own ran"), ("Steps.nested", "mypkg.Steps.nested ran")],
)
def test_code_defined_in_an_allowed_module_still_runs(
    tmp_path: Path, attr: str, summary: str
) -> None:
    outcome = agent(MYPKG).run(delegation(tmp_path, make_subtask(f"{MYPKG}:{attr}")), never)
    assert outcome.ok, outcome.error
    assert outcome.summary == summary


def test_a_dunder_step_is_refused_at_pre_flight_without_importing() -> None:
    with pytest.raises(PolicyError, match="dunder name"):
        agent(MYPKG).check(make_subtask(f"{MYPKG}:own.__globals__"))
