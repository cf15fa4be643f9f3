"""How Flower is started: auth, loopback-only without it, its options and its URL."""

from __future__ import annotations

import pytest

from batchq.errors import UsageError
from batchq.local.flower import (
    TASKS_COLUMNS,
    check_bind,
    flower_command,
    flower_env,
    is_loopback,
    listening_url,
    local_url,
)
from batchq.settings import Settings

URL = "redis://127.0.0.1:6379/0"


def settings(**values: object) -> Settings:
    return Settings.model_validate(values)


@pytest.mark.parametrize(
    ("address", "expected"),
    [
        ("127.0.0.1", True),
        ("127.0.0.2", True),
        ("::1", True),
        ("localhost", True),
        ("", False),
        ("0.0.0.0", False),
        ("::", False),
        ("10.0.0.5", False),
        ("example.org", False),
    ],
)
def test_only_loopback_addresses_count_as_loopback(address: str, expected: bool) -> None:
    assert is_loopback(address) is expected


def test_a_public_bind_without_auth_is_refused_and_says_metrics_stay_open() -> None:
    with pytest.raises(UsageError) as info:
        flower_command(settings(redis_url=URL), "0.0.0.0", 5555)
    message = str(info.value)
    assert "BATCHQ_FLOWER_USER" in message and "BATCHQ_FLOWER_PASSWORD" in message
    assert "/metrics" in message


def test_every_interface_without_auth_is_refused_too() -> None:
    with pytest.raises(UsageError, match="every interface"):
        check_bind(settings(), "")


def test_a_public_bind_with_auth_passes_the_credentials_in_the_environment() -> None:
    conf = settings(redis_url=URL, flower_user="ops", flower_password="s3cret")
    argv, env = flower_command(conf, "0.0.0.0", 5566, base_env={})
    assert env["FLOWER_BASIC_AUTH"] == "ops:s3cret"
    assert not any("s3cret" in arg for arg in argv), "the password must not show in ps"
    assert argv[-4:] == ["batchq.worker", "flower", "--address=0.0.0.0", "--port=5566"]
    assert env["BATCHQ_REDIS_URL"] == URL


def test_loopback_without_auth_starts_with_the_defaults_from_settings() -> None:
    argv, env = flower_command(settings(redis_url=URL), base_env={})
    assert argv[-2:] == ["--address=127.0.0.1", "--port=5555"]
    assert "FLOWER_BASIC_AUTH" not in env


def test_the_tasks_page_shows_the_argument_summary_and_flower_is_read_only() -> None:
    env = flower_env(settings(), {})
    assert "args" in env["FLOWER_TASKS_COLUMNS"].split(",")
    assert env["FLOWER_TASKS_COLUMNS"] == TASKS_COLUMNS
    assert env["FLOWER_READ_ONLY"] == "true"


def test_an_operators_own_flower_options_win_over_the_defaults() -> None:
    env = flower_env(settings(), {"FLOWER_READ_ONLY": "false", "FLOWER_TASKS_COLUMNS": "name"})
    assert env["FLOWER_READ_ONLY"] == "false"
    assert env["FLOWER_TASKS_COLUMNS"] == "name"


def test_a_bare_flower_basic_auth_is_refused_rather_than_silently_dropped() -> None:
    with pytest.raises(UsageError, match="BATCHQ_FLOWER_USER"):
        flower_env(settings(), {"FLOWER_BASIC_AUTH": "a:b"})


def test_settings_credentials_replace_an_inherited_flower_basic_auth() -> None:
    conf = settings(flower_user="ops", flower_password="pw")
    env = flower_env(conf, {"FLOWER_BASIC_AUTH": "old:old"})
    assert env["FLOWER_BASIC_AUTH"] == "ops:pw"


def test_a_password_with_a_comma_is_refused_because_flower_splits_at_commas() -> None:
    with pytest.raises(UsageError, match="','"):
        check_bind(settings(flower_user="ops", flower_password="a,b"), "127.0.0.1")


def test_without_any_redis_there_is_nothing_to_watch() -> None:
    with pytest.raises(UsageError, match="batchq up"):
        flower_command(settings(), base_env={})


def test_an_explicit_redis_url_wins_and_a_stray_result_url_is_dropped() -> None:
    _, env = flower_command(
        settings(), redis_url="redis+socket:///tmp/x.sock", base_env={"BATCHQ_RESULT_URL": "x"}
    )
    assert env["BATCHQ_REDIS_URL"] == "redis+socket:///tmp/x.sock"
    assert "BATCHQ_RESULT_URL" not in env


def test_the_listening_url_is_read_from_flowers_log() -> None:
    log = (
        "[I 260101 10:00:00 command:168] Visit me at http://127.0.0.1:40123\n"
        "[I 260101 10:00:00 command:173] Broker: redis+socket:///tmp/r.sock\n"
    )
    assert listening_url(log) == "http://127.0.0.1:40123"
    assert listening_url("starting...\n") is None


@pytest.mark.parametrize(
    ("address", "url"),
    [
        ("127.0.0.1", "http://127.0.0.1:5555"),
        ("0.0.0.0", "http://127.0.0.1:5555"),
        ("", "http://127.0.0.1:5555"),
        ("::1", "http://[::1]:5555"),
    ],
)
def test_the_local_url_of_a_wildcard_bind_is_loopback(address: str, url: str) -> None:
    assert local_url(address, 5555) == url


def test_the_cli_refuses_a_public_flower_without_auth(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from batchq.cli import main

    monkeypatch.setenv("BATCHQ_REDIS_URL", URL)
    for name in ("BATCHQ_FLOWER_USER", "BATCHQ_FLOWER_PASSWORD", "FLOWER_BASIC_AUTH"):
        monkeypatch.delenv(name, raising=False)
    with pytest.raises(SystemExit) as info:
        main(["flower", "--address", "0.0.0.0"])
    assert info.value.code == 2
    assert "refusing to expose Flower" in capsys.readouterr().err
