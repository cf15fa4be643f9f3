"""docker-compose.yml, workers/ and .env.example, checked without a Docker engine.

There is no Docker here, so ``docker compose config`` cannot run: the compose file is
parsed as YAML and held to what an operator relies on (SPEC 7, issue 4).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from batchq.settings import ENV_PREFIX, Settings

REPO = Path(__file__).resolve().parents[2]
COMPOSE = REPO / "docker-compose.yml"
WORKERS = REPO / "workers"
ENV_EXAMPLE = WORKERS / ".env.example"
DEFAULT_TIMEOUT_S = 3600  # execution.timeout_s default (SPEC 1)

BATCHQ_VAR = re.compile(r"\bBATCHQ_[A-Z0-9_]+\b")


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    data = yaml.safe_load(COMPOSE.read_text(encoding="utf-8"))
    assert isinstance(data, dict)
    return data


@pytest.fixture(scope="module")
def services(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    found = compose["services"]
    assert isinstance(found, dict)
    return found


def settings_variables() -> set[str]:
    return {f"{ENV_PREFIX}{name}".upper() for name in Settings.model_fields}


def duration_s(text: str) -> float:
    """Seconds of a compose duration such as ``1h5m``, ``90s`` or ``1m30s``."""
    units = {"h": 3600, "m": 60, "s": 1, "ms": 0.001}
    parts = re.findall(r"(\d+(?:\.\d+)?)(ms|h|m|s)", text)
    assert parts and "".join(n + u for n, u in parts) == text, text
    return sum(float(n) * units[u] for n, u in parts)


def command_of(service: dict[str, Any]) -> list[str]:
    command = service["command"]
    assert isinstance(command, list), "exec form: a list, so no shell swallows signals"
    return [str(part) for part in command]


def test_the_compose_file_has_redis_worker_flower_and_a_cli_service(
    services: dict[str, dict[str, Any]],
) -> None:
    assert {"redis", "worker", "flower", "cli"} <= set(services)
    assert services["cli"]["profiles"] == ["cli"]  # not started by `up`


def test_redis_never_evicts_queues_and_keeps_an_append_only_file(
    services: dict[str, dict[str, Any]],
) -> None:
    redis = services["redis"]
    assert str(redis["image"]).startswith("redis:7")
    command = command_of(redis)
    assert command[0] == "redis-server"
    assert command[command.index("--maxmemory-policy") + 1] == "noeviction"
    assert command[command.index("--appendonly") + 1] == "yes"
    assert redis["healthcheck"]["test"] == ["CMD", "redis-cli", "ping"]


def test_batchq_services_share_one_image_built_from_workers_dockerfile(
    services: dict[str, dict[str, Any]],
) -> None:
    batchq = {name: services[name] for name in ("worker", "flower", "cli")}
    images = {s["image"] for s in batchq.values()}
    assert len(images) == 1
    for service in batchq.values():
        assert service["build"]["dockerfile"] == "workers/Dockerfile"
        assert (REPO / service["build"]["context"] / service["build"]["dockerfile"]).is_file()
        assert service["init"] is True
        assert service["depends_on"]["redis"]["condition"] == "service_healthy"
        assert service["environment"]["BATCHQ_REDIS_URL"] == "redis://redis:6379/0"
        assert service["env_file"] == ".env"


def test_the_workspace_is_mounted_at_the_same_path_everywhere(
    services: dict[str, dict[str, Any]],
) -> None:
    targets = set()
    for name in ("worker", "cli", "flower"):
        mounts = [str(v).split(":")[-1] for v in services[name]["volumes"]]
        assert "/workspace" in mounts, name
        assert services[name]["working_dir"] == "/workspace"
        targets.add(next(str(v) for v in services[name]["volumes"] if v.endswith(":/workspace")))
    assert len(targets) == 1  # one host folder (or shared volume) for all of them


def test_workers_shut_down_warmly_after_the_longest_subtask(
    services: dict[str, dict[str, Any]],
) -> None:
    worker = services["worker"]
    assert command_of(worker) == ["batchq", "worker"]
    assert worker["stop_signal"] == "SIGTERM"
    assert duration_s(worker["stop_grace_period"]) > DEFAULT_TIMEOUT_S
    # scalable with --scale worker=N: nothing that must be unique per container
    assert "container_name" not in worker
    assert "ports" not in worker
    test = worker["healthcheck"]["test"]
    assert test[0] == "CMD" and "healthcheck.py" in " ".join(test)


def test_flower_binds_all_interfaces_in_its_container_behind_basic_auth(
    services: dict[str, dict[str, Any]],
) -> None:
    flower = services["flower"]
    command = command_of(flower)
    assert command[:2] == ["batchq", "flower"]
    assert command[command.index("--address") + 1] == "0.0.0.0"
    assert any(str(p).endswith(":5555") for p in flower["ports"])
    assert "healthcheck.py" in " ".join(flower["healthcheck"]["test"])
    env = env_example()
    assert env.get("BATCHQ_FLOWER_USER") and env.get("BATCHQ_FLOWER_PASSWORD")


def test_every_healthcheck_is_exec_form(services: dict[str, dict[str, Any]]) -> None:
    for name in ("redis", "worker", "flower"):
        test = services[name]["healthcheck"]["test"]
        assert isinstance(test, list) and test[0] == "CMD", name


def env_example() -> dict[str, str]:
    """Uncommented ``NAME=value`` lines of .env.example."""
    values = {}
    for line in ENV_EXAMPLE.read_text(encoding="utf-8").splitlines():
        if line and not line.startswith("#") and "=" in line:
            name, _, value = line.partition("=")
            values[name.strip()] = value.strip()
    return values


def test_every_batchq_variable_in_compose_and_env_example_is_a_setting() -> None:
    known = settings_variables()
    used = set(BATCHQ_VAR.findall(COMPOSE.read_text(encoding="utf-8")))
    used |= set(BATCHQ_VAR.findall(ENV_EXAMPLE.read_text(encoding="utf-8")))
    assert used, "expected BATCHQ_* variables"
    assert used - known == set()


def test_env_example_lists_every_setting() -> None:
    listed = set(BATCHQ_VAR.findall(ENV_EXAMPLE.read_text(encoding="utf-8")))
    assert settings_variables() - listed == set()


def test_the_dockerfile_uses_exec_form_and_the_entrypoint() -> None:
    text = (WORKERS / "Dockerfile").read_text(encoding="utf-8")
    instructions = [line for line in text.splitlines() if re.match(r"^(CMD|ENTRYPOINT)\b", line)]
    assert {i.split()[0] for i in instructions} == {"CMD", "ENTRYPOINT"}
    for line in instructions:
        assert line.split(maxsplit=1)[1].startswith("["), f"not exec form: {line}"
    assert "entrypoint.sh" in text
    assert re.search(r"^USER\s+(?!root)\S+", text, re.MULTILINE), "workers must not run as root"


def test_the_entrypoint_execs_so_signals_reach_celery() -> None:
    path = WORKERS / "entrypoint.sh"
    text = path.read_text(encoding="utf-8")
    assert text.startswith("#!/bin/sh")
    assert 'exec "$@"' in text
    assert path.stat().st_mode & 0o111, "entrypoint.sh must be executable"


# --- the git-remote variant (issue 20) ---------------------------------------------

GIT_COMPOSE = REPO / "docker-compose.git.yml"


class _ComposeLoader(yaml.SafeLoader):
    """YAML with Compose's merge tags: ``!override``/``!reset`` kept as markers."""


def _tagged(tag: str) -> Any:
    def construct(loader: yaml.SafeLoader, node: yaml.Node) -> Any:
        if isinstance(node, yaml.SequenceNode):
            value: Any = loader.construct_sequence(node, deep=True)
        elif isinstance(node, yaml.MappingNode):
            value = loader.construct_mapping(node, deep=True)
        else:
            value = loader.construct_scalar(node)  # type: ignore[arg-type]
        return {tag: value}

    return construct


for _tag in ("!override", "!reset"):
    _ComposeLoader.add_constructor(_tag, _tagged(_tag))


@pytest.fixture(scope="module")
def git_services() -> dict[str, dict[str, Any]]:
    data = yaml.load(GIT_COMPOSE.read_text(encoding="utf-8"), Loader=_ComposeLoader)
    assert isinstance(data, dict)
    found = data["services"]
    assert isinstance(found, dict)
    return found


def test_the_git_variant_replaces_the_workers_workspace_mount_with_a_cache_volume(
    git_services: dict[str, dict[str, Any]], services: dict[str, dict[str, Any]]
) -> None:
    worker = git_services["worker"]
    mounts = worker["volumes"]["!override"]  # replaced, not appended to the base list
    assert all(not str(m).endswith(":/workspace") for m in mounts)
    cache = worker["environment"]["BATCHQ_WORKER_CACHE"]
    assert [str(m).split(":")[-1] for m in mounts] == [cache]
    assert all(":" not in str(m) for m in mounts)  # anonymous: one cache per replica
    assert worker["environment"]["BATCHQ_WORKSPACE"] == "git"
    assert worker["working_dir"] != "/workspace"
    assert set(git_services) <= set(services)  # it overrides services, adds none


def test_the_git_variant_takes_credentials_from_secrets_never_a_url(
    git_services: dict[str, dict[str, Any]],
) -> None:
    text = GIT_COMPOSE.read_text(encoding="utf-8")
    assert "BATCHQ_GIT_REMOTE:" not in text  # from .env, like every other setting
    for name in ("worker", "cli"):
        service = git_services[name]
        ssh = service["environment"]["GIT_SSH_COMMAND"]
        assert "/run/secrets/git_deploy_key" in ssh and "UserKnownHostsFile" in ssh
        assert "BatchMode" not in ssh  # batchq adds it to every remote call itself
        sources = {s["source"] if isinstance(s, dict) else s for s in service["secrets"]}
        assert sources == {"git_deploy_key", "git_known_hosts"}
    assert "BATCHQ_WORKSPACE=shared" in ENV_EXAMPLE.read_text(encoding="utf-8")
