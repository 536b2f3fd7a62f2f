"""secd's configuration: one TOML file plus environment overrides, validated at start-up.

`SECD_CONFIG` names the file. Any key can be overridden with `SECD_<SECTION>__<KEY>` (double
underscore between levels), e.g. `SECD_GATEWAY__PORT=8080`. Values are read as TOML literals when
they parse as one (numbers, booleans, arrays), else as strings. A bad key or value stops the service
with one line naming it.
"""

from __future__ import annotations

import os
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import msgspec
from msgspec import Struct

__all__ = [
    "BuilderConfig",
    "Config",
    "ConfigError",
    "CredentialsConfig",
    "DatabaseConfig",
    "ExecutorConfig",
    "ForgeConfig",
    "GatewayConfig",
    "IdentityConfig",
    "NatsConfig",
    "PublisherConfig",
    "VerifierConfig",
    "load_config",
]

ENV_PREFIX = "SECD_"


class ConfigError(Exception):
    """The configuration is wrong; the message names the key and what to fix."""


class _Section(Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    pass


class NatsConfig(_Section):
    """How a service reaches the bus. user/password come from the environment, never the file."""

    url: str = "nats://127.0.0.1:4222"
    user: str | None = None
    password: str | None = None
    stream: str = "SECD"
    connect_timeout_s: float = 5.0
    # Set on the consumers at bootstrap; services use them to pace heartbeats and give up.
    ack_wait_s: float = 30.0
    max_deliver: int = 5


class GatewayConfig(_Section):
    """The HTTP gateway: where it listens and how it authenticates the forge's hook."""

    host: str = "127.0.0.1"
    port: int = 8740
    token_file: str = "gateway/hook-token"  # noqa: S105 - a path, not a secret
    max_body_bytes: int = 65536


class ForgeConfig(_Section):
    """The embedded forge: bare repositories under `root`, pushed to by local accounts."""

    kind: str = "git"
    root: str = "forge"
    # local account that pushed -> researcher it acts for
    accounts: dict[str, str] = msgspec.field(default_factory=dict)
    results_prefix: str = "secd/"


class IdentityConfig(_Section):
    """Where a researcher's groups come from."""

    kind: str = "file"
    groups_file: str = "groups.toml"


class VerifierConfig(_Section):
    """The keyring of researchers' public keys."""

    keyring: str = "keys"


class BuilderConfig(_Section):
    """Where run environments and sources are kept."""

    envs_dir: str = "envs"
    work_dir: str = "work"
    python: str | None = None
    timeout_s: float = 900.0
    max_runfor_h: float = 24.0
    # Installing from source runs the package's build code in the builder, outside the sandbox.
    allow_source_builds: bool = False


class DatabaseConfig(_Section):
    """One sensitive database that runs can be granted tables of."""

    kind: str
    database: str
    host: str | None = "127.0.0.1"
    port: int | None = None
    socket: str | None = None
    socket_dir: str | None = None
    user: str | None = None
    password: str | None = None


class CredentialsConfig(_Section):
    """Temporary accounts: which databases, how long, sealed to which executor key."""

    executor_public_key: str = ""
    default_database: str = "sensitive"
    databases: dict[str, DatabaseConfig] = msgspec.field(default_factory=dict)
    grace_s: float = 300.0
    max_connections: int = 4
    # How often the sweeper compares the databases' accounts with the log.
    sweep_interval_s: float = 30.0


class ExecutorConfig(_Section):
    """The sandbox: where runs live, which uid they run as, where caches are."""

    private_key_file: str = "executor/key"
    runs_dir: str = "runs"
    cache_root: str = "cache"
    sandbox_uid: int = 65534
    concurrency: int = 4


class PublisherConfig(_Section):
    """How results are committed."""

    author_name: str = "secd"
    author_email: str = "secd@localhost"


class Config(_Section):
    """The whole configuration; each service reads its own section."""

    state_dir: str = "var"
    log_level: str = "INFO"
    nats: NatsConfig = msgspec.field(default_factory=NatsConfig)
    gateway: GatewayConfig = msgspec.field(default_factory=GatewayConfig)
    forge: ForgeConfig = msgspec.field(default_factory=ForgeConfig)
    identity: IdentityConfig = msgspec.field(default_factory=IdentityConfig)
    verifier: VerifierConfig = msgspec.field(default_factory=VerifierConfig)
    builder: BuilderConfig = msgspec.field(default_factory=BuilderConfig)
    credentials: CredentialsConfig = msgspec.field(default_factory=CredentialsConfig)
    executor: ExecutorConfig = msgspec.field(default_factory=ExecutorConfig)
    publisher: PublisherConfig = msgspec.field(default_factory=PublisherConfig)

    def path(self, relative: str) -> Path:
        """A path from the config, relative ones resolved under `state_dir`."""
        return Path(self.state_dir, relative).resolve()


def _literal(text: str) -> Any:
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        return text


def _apply_env(data: dict[str, Any], environ: Mapping[str, str]) -> None:
    # Only names whose first part is one of our settings count: SECD_TEST_* is not config.
    known = set(Config.__struct_fields__)
    for name, raw in sorted(environ.items()):
        if not name.startswith(ENV_PREFIX):
            continue
        keys = [part.lower() for part in name[len(ENV_PREFIX) :].split("__")]
        if keys[0] not in known:
            continue
        node = data
        for key in keys[:-1]:
            node = node.setdefault(key, {})
            if not isinstance(node, dict):
                raise ConfigError(f"{name}: {'.'.join(keys[:-1])} is not a section")
        # Passwords and names stay strings even when they look like numbers.
        node[keys[-1]] = raw if keys[-1] in ("password", "user") else _literal(raw)


def load_config(path: str | Path | None = None, environ: Mapping[str, str] | None = None) -> Config:
    """Read the TOML file (SECD_CONFIG if no path) and the environment; raise ConfigError."""
    environ = os.environ if environ is None else environ
    path = path or environ.get("SECD_CONFIG")
    data: dict[str, Any] = {}
    if path:
        try:
            data = tomllib.loads(Path(path).read_text())
        except FileNotFoundError:
            raise ConfigError(f"config file {path} does not exist; set SECD_CONFIG") from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"config file {path} is not valid TOML: {exc}") from None
    _apply_env(data, environ)
    try:
        config = msgspec.convert(data, Config)
    except msgspec.ValidationError as exc:
        raise ConfigError(f"config: {_describe(exc)}") from None
    base = Path(path).parent if path else Path.cwd()
    state = Path(config.state_dir)
    if not state.is_absolute():
        config = msgspec.structs.replace(config, state_dir=str((base / state).resolve()))
    _check(config)
    return config


def _describe(exc: msgspec.ValidationError) -> str:
    """msgspec's 'Expected `int`, got `str` - at `$.gateway.port`', said for people."""
    text = str(exc)
    message, _, where = text.partition(" - at `$")
    where = where.rstrip("`").lstrip(".")
    if message.startswith("Object contains unknown field"):
        field = message.split("`")[1]
        key = f"{where}.{field}" if where else field
        return f"{key} is not a known setting; remove it or check its spelling"
    if message.startswith("Object missing required field"):
        field = message.split("`")[1]
        key = f"{where}.{field}" if where else field
        return f"{key} is required"
    message = message.replace("`", "")
    return f"{where}: {message[0].lower()}{message[1:]}" if where else message


def _check(config: Config) -> None:
    if config.forge.kind != "git":
        raise ConfigError(f"forge.kind: {config.forge.kind!r} is not available; use 'git'")
    if config.identity.kind != "file":
        raise ConfigError(f"identity.kind: {config.identity.kind!r} is not available; use 'file'")
    for name, db in config.credentials.databases.items():
        if db.kind not in ("postgres", "mysql"):
            raise ConfigError(
                f"credentials.databases.{name}.kind: {db.kind!r} is not supported; "
                "use 'postgres' or 'mysql'"
            )
    if not 0 < config.gateway.port < 65536:
        raise ConfigError(f"gateway.port: {config.gateway.port} is not a TCP port")
    if config.log_level.upper() not in ("DEBUG", "INFO", "WARNING", "ERROR"):
        raise ConfigError(f"log_level: {config.log_level!r}; use DEBUG, INFO, WARNING or ERROR")
