"""Settings: ``BATCHQ_*`` environment, ``batchq.toml``, and which one wins."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from batchq.errors import InfrastructureError, InputError, SpecError
from batchq.local.embedded import redis_server_binary
from batchq.models import Workspace
from batchq.run import remote
from batchq.settings import (
    DEFAULT_PROTECTED,
    Settings,
    _environment_values,
    git_remote_problem,
    load_settings,
)


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """Each test starts from no ``BATCHQ_*`` variable at all."""
    for name in list(os.environ):
        if name.startswith("BATCHQ_"):
            monkeypatch.delenv(name)


def write_toml(root: Path, text: str) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    path = root / "batchq.toml"
    path.write_text(text, encoding="utf-8")
    return path


def test_defaults_are_what_a_new_user_gets() -> None:
    settings = load_settings()
    assert settings.redis_url is None
    assert settings.embedded
    assert settings.redis_server is None
    assert settings.stall_s == 120.0
    assert settings.shell_allow == []
    assert settings.protected_paths == list(DEFAULT_PROTECTED)


def test_variables_are_read_only_with_the_batchq_prefix(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BATCHQ_STALL_S", "7.5")
    monkeypatch.setenv("STALL_S", "99")
    monkeypatch.setenv("REDIS_URL", "redis://not-ours:6379/0")
    settings = load_settings()
    assert settings.stall_s == 7.5
    assert settings.redis_url is None


def test_comma_lists_are_split_and_stripped(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BATCHQ_SHELL_ALLOW", "ls *, echo * ,,pytest *")
    monkeypatch.setenv("BATCHQ_PYTHON_ALLOW", "myproject.steps")
    settings = load_settings()
    assert settings.shell_allow == ["ls *", "echo *", "pytest *"]
    assert settings.allow_for("shell") == ["ls *", "echo *", "pytest *"]
    assert settings.allow_for("python") == ["myproject.steps"]


def test_batchq_toml_agent_tables_configure_allow_lists_and_cli_agents(tmp_path: Path) -> None:
    write_toml(
        tmp_path,
        """
[agents.shell]
allow = ["make *", "pytest *"]

[agents.python]
allow = ["myproject"]

[agents.CoderAgent]
command = "opencode run --agent {agent} --prompt-file {prompt_file}"
max_concurrency = 3
""",
    )
    settings = load_settings(tmp_path)
    assert settings.allow_for("shell") == ["make *", "pytest *"]
    assert settings.allow_for("python") == ["myproject"]
    coder = settings.agents["CoderAgent"]
    assert coder.command == "opencode run --agent {agent} --prompt-file {prompt_file}"
    assert coder.max_concurrency == 3
    assert settings.allow_for("CoderAgent") == []


def test_the_environment_beats_batchq_toml(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    write_toml(tmp_path, 'stall_s = 30\n[agents.shell]\nallow = ["make *"]\n')
    monkeypatch.setenv("BATCHQ_STALL_S", "5")
    monkeypatch.setenv("BATCHQ_SHELL_ALLOW", "pytest *")
    settings = load_settings(tmp_path)
    assert settings.stall_s == 5.0
    assert settings.allow_for("shell") == ["pytest *"]


def test_batchq_toml_applies_where_the_environment_is_silent(tmp_path: Path) -> None:
    write_toml(tmp_path, "stall_s = 30\n")
    assert load_settings(tmp_path).stall_s == 30.0


def test_keyword_overrides_beat_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BATCHQ_STALL_S", "5")
    assert load_settings(stall_s=9).stall_s == 9.0


@pytest.mark.parametrize(
    "url",
    [
        "redis://localhost:6379/0",
        "rediss://:s3cret@redis.example.com:6380/0",
        "rediss://user:s3cret@redis.example.com:6380/1?ssl_cert_reqs=required",
        "redis+socket:///run/redis/redis.sock",
    ],
)
def test_redis_urls_including_tls_are_accepted(monkeypatch: pytest.MonkeyPatch, url: str) -> None:
    monkeypatch.setenv("BATCHQ_REDIS_URL", url)
    settings = load_settings()
    assert settings.redis_url == url
    assert settings.backend_url == url  # the result backend defaults to the broker
    assert not settings.embedded


def test_a_separate_result_url_is_kept(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BATCHQ_REDIS_URL", "redis://broker:6379/0")
    monkeypatch.setenv("BATCHQ_RESULT_URL", "rediss://results:6380/2")
    assert load_settings().result_url == "rediss://results:6380/2"


def test_the_redis_url_can_come_from_a_file_so_it_stays_out_of_the_environment(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.delenv("BATCHQ_REDIS_URL", raising=False)
    url_file = tmp_path / "redis-url"
    url_file.write_text("rediss://:s3cret@redis.example.com:6380/0\n")
    monkeypatch.setenv("BATCHQ_REDIS_URL_FILE", str(url_file))
    settings = load_settings(tmp_path)
    assert settings.redis_url == "rediss://:s3cret@redis.example.com:6380/0"
    assert not settings.embedded
    monkeypatch.setenv("BATCHQ_REDIS_URL", "redis://explicit:6379/0")
    assert load_settings(tmp_path).redis_url == "redis://explicit:6379/0"  # the variable wins


@pytest.mark.parametrize(("content", "reason"), [(None, "cannot read"), ("  \n", "empty")])
def test_an_unreadable_or_empty_url_file_is_an_input_error_naming_it(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, content: str | None, reason: str
) -> None:
    monkeypatch.delenv("BATCHQ_REDIS_URL", raising=False)
    url_file = tmp_path / "redis-url"
    if content is not None:
        url_file.write_text(content)
    monkeypatch.setenv("BATCHQ_REDIS_URL_FILE", str(url_file))
    with pytest.raises(InputError, match=f"BATCHQ_REDIS_URL_FILE={url_file}: .*{reason}"):
        load_settings(tmp_path)


def test_invalid_toml_is_a_spec_error_naming_the_file(tmp_path: Path) -> None:
    path = write_toml(tmp_path, "[agents.shell\nallow = [\n")
    with pytest.raises(SpecError) as caught:
        load_settings(tmp_path)
    assert caught.value.path == path
    assert str(path) in str(caught.value)
    assert "invalid TOML" in str(caught.value)
    assert caught.value.exit_code == 2


def test_a_wrongly_typed_toml_value_is_a_spec_error_naming_the_file(tmp_path: Path) -> None:
    path = write_toml(tmp_path, 'stall_s = "soon"\n')
    with pytest.raises(SpecError) as caught:
        load_settings(tmp_path)
    assert caught.value.path == path
    assert "stall_s" in str(caught.value)


def test_the_redis_server_choice_comes_from_the_environment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("BATCHQ_REDIS_SERVER", "path")
    assert load_settings().redis_server == "path"


def test_a_redis_server_path_that_is_not_executable_is_refused(tmp_path: Path) -> None:
    missing = tmp_path / "no-such-redis-server"
    with pytest.raises(InfrastructureError, match="not an executable file"):
        redis_server_binary(override=str(missing))


def test_a_redis_server_path_that_is_executable_is_used(tmp_path: Path) -> None:
    fake = tmp_path / "redis-server"
    fake.write_text("#!/bin/sh\nexit 0\n")
    fake.chmod(0o755)
    assert redis_server_binary(override=str(fake)) == fake


def test_every_field_can_be_set_from_its_batchq_variable() -> None:
    """The env table in the README and .env.example rely on this naming rule: every
    field is read from BATCHQ_<NAME>, in any case; a list, mapping or model from JSON,
    a comma list as text."""
    assert "redis_server" in Settings.model_fields
    for name, field in Settings.model_fields.items():
        text = "{}" if name == "agents" else "x"
        assert _environment_values({f"BATCHQ_{name.upper()}": text}) == {
            name: {} if name == "agents" else "x"
        }, field
        assert name in _environment_values({f"batchq_{name}": text})
    assert _environment_values({"BATCHQ_NOT_A_SETTING": "1", "OTHER": "2"}) == {}


def test_a_structured_variable_that_is_not_json_is_an_input_error() -> None:
    with pytest.raises(InputError, match="BATCHQ_AGENTS: not valid JSON"):
        _environment_values({"BATCHQ_AGENTS": "{bad"})


def test_the_readme_documents_every_setting() -> None:
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text(encoding="utf-8")
    missing = [
        f"BATCHQ_{n.upper()}" for n in Settings.model_fields if f"BATCHQ_{n.upper()}" not in readme
    ]
    assert missing == []


@pytest.mark.parametrize(
    ("url", "problem"),
    [
        ("http://localhost:6379", "unknown scheme 'http'"),
        ("redis://localhost:notaport/0", "port 'notaport' is not a number"),
        ("redis://:pa#ss@localhost:6379/0", "percent-encode it"),
        ("redis://:pa/ss@localhost/0", "percent-encode it"),
        ("redis://:pa?ss@localhost/0", "percent-encode it"),
        ("redis://localhost:6379/x", "database 'x' is not a number"),
        ("redis://:secret@/0", "no host"),
        ("localhost:6379", "not a URL"),
    ],
)
def test_a_malformed_redis_url_is_an_input_error_that_never_shows_the_password(
    url: str, problem: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("BATCHQ_REDIS_URL", url)
    with pytest.raises(InputError) as info:
        load_settings(None)
    assert info.value.exit_code == 2
    assert problem in str(info.value)
    assert "BATCHQ_REDIS_URL" in str(info.value)
    for secret in ("pa#ss", "pa/ss", "pa?ss", "secret"):
        assert secret not in str(info.value)


@pytest.mark.parametrize(
    "url",
    [
        "redis://localhost",
        "redis://:p%23w@127.0.0.1:6380/2",
        "rediss://user:pw@host.example:6379/0?ssl_cert_reqs=required",
        "redis+socket:///tmp/r.sock?virtual_host=1",
        "unix:///tmp/r.sock?db=0",
        "redis://[::1]:6379/0",
    ],
)
def test_well_formed_redis_urls_pass(url: str) -> None:
    assert load_settings(None, redis_url=url).redis_url == url


def test_a_bad_url_in_batchq_toml_never_shows_its_password(tmp_path: Path) -> None:
    (tmp_path / "batchq.toml").write_text('redis_url = "redis://:top#secret@h/0"\n')
    with pytest.raises(SpecError) as info:
        load_settings(tmp_path)
    assert "top#secret" not in str(info.value)
    assert "percent-encode" in str(info.value)


@pytest.mark.parametrize(
    "url",
    [
        "ssh://git@git.example.com/project.git",
        "git@git.example.com:project.git",
        "https://git.example.com/project.git",
        "https://deploy@git.example.com/project.git",
        "git://127.0.0.1/project.git",
        "file:///srv/git/project.git",
        "/srv/git/project.git",
    ],
)
def test_git_remotes_without_a_password_are_accepted(url: str) -> None:
    assert git_remote_problem(url) is None
    assert Settings(git_remote=url).git_remote == url


@pytest.mark.parametrize(
    ("url", "problem"),
    [
        ("https://me:hunter2@example.com/p.git", "holds a password"),
        ("ssh://me:hunter2@example.com/p.git", "holds a password"),
        ("--upload-pack=evil", "cannot start with '-'"),
        (" https://example.com/p.git", "spaces around it"),
        ("ftp://example.com/p.git", "unknown scheme"),
    ],
)
def test_git_remotes_with_a_password_or_an_option_are_refused_without_showing_it(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, url: str, problem: str
) -> None:
    assert problem in (git_remote_problem(url) or "")
    monkeypatch.setenv("BATCHQ_GIT_REMOTE", url)
    settings = load_settings()  # loads, so that validate lists it among the rest
    found = [str(p) for p in remote.problems(tmp_path, settings, Workspace.GIT)]
    (refused,) = [p for p in found if p.startswith("BATCHQ_GIT_REMOTE=")]
    assert problem in refused
    assert "hunter2" not in " ".join(found)
    assert remote.problems(tmp_path, settings, Workspace.SHARED) == []


def test_the_worker_cache_defaults_to_the_xdg_cache(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", "/var/cache/me")
    assert Settings().worker_cache == Path("/var/cache/me/batchq")
    monkeypatch.setenv("BATCHQ_WORKER_CACHE", "/data/batchq")
    assert Settings().worker_cache == Path("/data/batchq")
    assert Settings().workspace is Workspace.SHARED
