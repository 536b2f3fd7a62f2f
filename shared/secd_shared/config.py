"""secd's configuration: one TOML file plus environment overrides, validated at start-up.

`SECD_CONFIG` names the file. Any key can be overridden with `SECD_<SECTION>__<KEY>` (double
underscore between levels), e.g. `SECD_GATEWAY__PORT=8080`. Values are read as TOML literals when
they parse as one (numbers, booleans, arrays), else as strings. A bad key or value stops the service
with one line naming it.
"""

from __future__ import annotations

import os
import re
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any, ClassVar, Literal
from urllib.parse import urlsplit

import msgspec
from msgspec import Struct

from secd_shared.dbkind import DB_KINDS, facts
from secd_shared.limits import LIMIT_NAMES, LimitsConfig
from secd_shared.secret import Secret

__all__ = [
    "AirlockConfig",
    "ArtifactsConfig",
    "BuildKitConfig",
    "BuilderConfig",
    "CanariesConfig",
    "CheckpointerConfig",
    "Config",
    "ConfigError",
    "CredentialsConfig",
    "DatabaseConfig",
    "ExecutorConfig",
    "ForgeConfig",
    "GatewayConfig",
    "GitLabConfig",
    "IdentityConfig",
    "KeycloakConfig",
    "KubernetesRunConfig",
    "NatsConfig",
    "PublisherConfig",
    "VerifierConfig",
    "load_config",
    "read_secret",
]

ENV_PREFIX = "SECD_"


class ConfigError(Exception):
    """The configuration is wrong; the message names the key and what to fix."""


class _Section(Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    # Fields that hold a Secret; text given for one (a test, the command line) becomes one.
    _SECRETS: ClassVar[tuple[str, ...]] = ()

    def __post_init__(self) -> None:
        for name in self._SECRETS:
            value = getattr(self, name)
            if isinstance(value, str):
                msgspec.structs.force_setattr(self, name, Secret(value))


class NatsConfig(_Section, frozen=True):
    """How a service reaches the bus. user/password come from the environment, never the file."""

    _SECRETS = ("password",)

    url: str = "nats://127.0.0.1:4222"
    user: str | None = None
    password: Secret | None = None
    stream: str = "SECD"
    connect_timeout_s: float = 5.0
    # Set on the consumers at bootstrap; services use them to pace heartbeats and give up.
    ack_wait_s: float = 30.0
    max_deliver: int = 5


class GatewayConfig(_Section, frozen=True):
    """The HTTP gateway: where it listens and how it authenticates the forge's hook."""

    host: str = "127.0.0.1"
    port: int = 8740
    token_file: str = "gateway/hook-token"  # noqa: S105 - a path, not a secret
    max_body_bytes: int = 65536
    # Security officers: a TOML file of `<officer> = "<sha256 of the officer's token>"` under
    # [officers]; without it the review API answers 404.
    officers_file: str | None = None
    # When set, reading runs and job logs needs `Authorization: Bearer <this file's token>`.
    read_token_file: str | None = None


class GitLabConfig(_Section, frozen=True):
    """forge.kind = "gitlab": the instance, secd's API token and the hooks' secret token.

    The token and the hook secret come from the environment (SECD_FORGE__GITLAB__TOKEN,
    SECD_FORGE__GITLAB__WEBHOOK_SECRET) or from files; each service reads only what it uses.
    """

    _SECRETS = ("token", "webhook_secret")

    url: str = ""
    token: Secret | None = None
    token_file: str | None = None
    webhook_secret: Secret | None = None
    webhook_secret_file: str | None = None
    # The commit status's name (GitLab shows it as an external job of the commit).
    status_name: str = "secd"
    # Pushes by this account (secd's own, if it pushes as a user) never start a run.
    service_username: str | None = None
    # System hooks list no commits but push hooks do, up to 20 with their messages.
    max_hook_bytes: int = 1024 * 1024
    timeout_s: float = 30.0


class ForgeConfig(_Section, frozen=True):
    """The embedded forge: bare repositories under `root`, pushed to by local accounts."""

    kind: str = "git"
    root: str = "forge"
    # local account that pushed -> researcher it acts for
    accounts: dict[str, str] = msgspec.field(default_factory=dict)
    results_prefix: str = "secd/"
    gitlab: GitLabConfig = msgspec.field(default_factory=GitLabConfig)


class KeycloakConfig(_Section, frozen=True):
    """identity.kind = "keycloak": GitLab user -> identity extern_uid -> Keycloak user -> groups.

    The client (a confidential client with the service account roles view-users and
    query-groups of realm-management) authenticates with its secret, from the environment
    (SECD_IDENTITY__KEYCLOAK__CLIENT_SECRET) or a file.
    """

    _SECRETS = ("client_secret",)

    url: str = ""
    realm: str = ""
    client_id: str = ""
    client_secret: Secret | None = None
    client_secret_file: str | None = None
    # The realm the client lives in, when it is not `realm` (e.g. "master").
    client_realm: str | None = None
    # GitLab's provider name of the Keycloak login, as in the user's identities.
    gitlab_provider: str = "openid_connect"
    # What GitLab keeps as extern_uid: the Keycloak user id ("id", the OIDC sub) or "username".
    extern_uid: str = "id"
    # Only groups under this path grant access, e.g. "/secd"; the grant is the last segment.
    group_root: str = "/"
    timeout_s: float = 30.0


class IdentityConfig(_Section, frozen=True):
    """Where a person's groups come from: a researcher's grants, an officer's role."""

    kind: str = "file"
    groups_file: str = "groups.toml"
    keycloak: KeycloakConfig = msgspec.field(default_factory=KeycloakConfig)
    # Security officers are the members of this group (in the groups file, or under
    # keycloak.group_root); the gateway's review API and page serve only them.
    officer_group: str = "secd-officers"


class VerifierConfig(_Section, frozen=True):
    """The keyring of researchers' public keys."""

    keyring: str = "keys"


class KubernetesRunConfig(_Section, frozen=True):
    """executor.kind = "kubernetes": one Job per run in `namespace`, with these limits."""

    namespace: str = "secd-runs"
    # None: the in-cluster service account (the executor runs in the cluster).
    kubeconfig: str | None = None
    context: str | None = None
    service_account: str = "secd-run"
    # The trusted image of the pod that copies a run's outputs out; pin it by digest.
    collector_image: str = ""
    image_pull_secrets: list[str] = msgspec.field(default_factory=list)
    # CPU, memory, /tmp and the output volume's size come from [limits], as for every run.
    output_storage_class: str | None = None
    cache_size: str = "20Gi"
    cache_storage_class: str | None = None
    cache_access_mode: str = "ReadWriteOnce"
    # The uid jobs run as (the collector reads outputs as it too). run_as_image_user = true
    # honours the image's own numeric USER instead, which the kubelet refuses if it is root.
    run_as_user: int = 65534
    run_as_image_user: bool = False
    fs_group: int = 65534
    node_selector: dict[str, str] = msgspec.field(default_factory=dict)
    gpu_node_selector: dict[str, str] = msgspec.field(default_factory=dict)
    # database name -> CIDRs the run may reach; unset: the address's host, resolved.
    database_cidrs: dict[str, list[str]] = msgspec.field(default_factory=dict)
    ttl_after_finished_s: int = 86400
    poll_s: float = 2.0
    collect_timeout_s: float = 600.0
    max_output_bytes: int = 2 * 1024**3
    max_log_bytes: int = 64 * 1024**2
    reap_every_s: float = 300.0
    reap_grace_s: float = 3600.0


class BuildKitConfig(_Section, frozen=True):
    """builder.kind = "buildkit": a rootless BuildKit Job per build, pushed to `registry`."""

    namespace: str = "secd-builds"
    kubeconfig: str | None = None
    context: str | None = None
    service_account: str = "secd-build"
    image: str = "moby/buildkit:rootless"
    # The init container that fetches the verified commit: any image with git and sh.
    git_image: str = "alpine/git:latest"
    # Images go to <registry>/runs/<researcher>, caches to <registry>/cache/<researcher>.
    registry: str = ""
    # Where BuildKit fetches the verified commit, e.g. "https://gitlab.example.org/{repository}.git".
    git_url: str = ""
    # Names of Secrets in `namespace`: a dockerconfigjson for the registry, a token for git.
    registry_secret: str | None = None
    git_token_secret: str | None = None
    base_image: str = "python:3.11-slim"
    index_url: str | None = None
    allow_dockerfile: bool = True
    cpu: str = "2"
    memory: str = "4Gi"
    ephemeral_storage: str = "20Gi"
    poll_s: float = 2.0
    ttl_after_finished_s: int = 3600


class BuilderConfig(_Section, frozen=True):
    """Where run environments and sources are kept."""

    envs_dir: str = "envs"
    work_dir: str = "work"
    python: str | None = None
    timeout_s: float = 900.0
    max_runfor_h: float = 24.0
    # Installing from source runs the package's build code in the builder, outside the sandbox.
    allow_source_builds: bool = False
    # "venv": a virtualenv on this machine; "buildkit": an image built in Kubernetes; "stub":
    # nothing (with executor.kind = "stub").
    kind: str = "venv"
    buildkit: BuildKitConfig = msgspec.field(default_factory=BuildKitConfig)


class DatabaseConfig(_Section, frozen=True):
    """One sensitive database that runs can be granted tables of."""

    _SECRETS = ("password",)

    # A DbKind (secd_shared.dbkind); read as text so that a wrong one is named with its database.
    kind: str
    database: str
    host: str | None = "127.0.0.1"
    port: int | None = None
    socket: str | None = None
    socket_dir: str | None = None
    user: str | None = None
    password: Secret | None = None
    # kind = "neo4j" only: the Bolt URI (bolt://host:7687), and whether Neo4j Community's
    # all-powerful users may be issued at all (Community has no per-label roles).
    uri: str | None = None
    accept_full_read: bool = False


class CredentialsConfig(_Section, frozen=True):
    """Temporary accounts: which databases, how long, sealed to which executor key."""

    executor_public_key: str = ""
    default_database: str = "sensitive"
    databases: dict[str, DatabaseConfig] = msgspec.field(default_factory=dict)
    grace_s: float = 300.0
    max_connections: int = 4
    # How often the sweeper compares the databases' accounts with the log.
    sweep_interval_s: float = 30.0


class ExecutorConfig(_Section, frozen=True):
    """The sandbox: where runs live, which uid they run as, where caches are."""

    private_key_file: str = "executor/key"
    runs_dir: str = "runs"
    cache_root: str = "cache"
    # Run environments (virtualenvs the builder stored as artifacts), unpacked once per digest.
    envs_dir: str = "environments"
    # Each run gets its own uid (and gid) from [uid_first, uid_first + uid_count): no two runs
    # share files, processes or the per-uid process limit. No host account may use the range.
    uid_first: int = 1_000_000
    uid_count: int = 65536
    # Where memory, process and CPU limits are enforced: "auto" finds cgroup v2 (a delegated
    # folder, cgroup_root) or v1 (as root), else falls back to rlimits; or name one of them.
    cgroups: str = "auto"
    # cgroup v2: a folder delegated to the executor (e.g. /sys/fs/cgroup/secd.slice); v1: the
    # name of secd's folder in each controller's hierarchy.
    cgroup_root: str = "secd"
    concurrency: int = 4
    # "bwrap": a bubblewrap sandbox on this machine; "kubernetes": a Job per run; "stub": runs
    # nothing (each run finishes at once with exit code 0: for trying secd's flow out).
    kind: str = "bwrap"
    kubernetes: KubernetesRunConfig = msgspec.field(default_factory=KubernetesRunConfig)


class PublisherConfig(_Section, frozen=True):
    """How results are committed."""

    author_name: str = "secd"
    author_email: str = "secd@localhost"
    # Where a run's outputs and log are fetched to while its branch is written (then removed).
    work_dir: str = "publisher"


class ArtifactsConfig(_Section, frozen=True):
    """Where services hand each other sources, environments, outputs and logs, by digest."""

    # "nats": the JetStream object store bucket SECD_ARTIFACTS (nothing shared between machines
    # but the bus); "folder": files under `folder` (one machine, or a folder every service
    # mounts).
    kind: str = "nats"
    folder: str = "artifacts"


class AirlockConfig(_Section, frozen=True):
    """The airlock: what may leave the secure side, checked against the data itself."""

    # The key of the fingerprints of the granted tables (keyed hashes; kept in memory only).
    key_file: str = "airlock/key"
    # The airlock's own read-only account on each database of [credentials.databases], by the
    # same name (never a run's account); a database without one gets no source-match check,
    # and every output of its runs is held for review.
    databases: dict[str, DatabaseConfig] = msgspec.field(default_factory=dict)
    # Files that pass every check go to the researcher at once; false: one officer releases them.
    auto_release: bool = True
    # Officers needed to release a file held for review, or to override a block.
    reviewers: int = 2
    # Neighbour replay: the executor runs the job a second time on the granted tables less
    # `neighbour_replay_rows` random rows of each, and a declared file that differs is held.
    # "opt-in": for projects whose secd.yml says `replay: true`; "always"; "off".
    neighbour_replay: Literal["off", "opt-in", "always"] = "opt-in"
    neighbour_replay_rows: int = 3
    # The checks' thresholds (secd_airlock.checks.Rules field names): sizes, rows, counts, ...
    rules: dict[str, float] = msgspec.field(default_factory=dict)
    # Folder of the airlock's working copies (outputs being checked; removed after).
    work_dir: str = "airlock"
    # Folder of every counts and table output each project had released, kept for the
    # differencing check (secd_airlock.released); never served to anyone.
    released_dir: str = "airlock/released"
    concurrency: int = 2
    # The model environment (scikit-learn, skops; secd_airlock.modelenv) the model attacks run
    # in: built by uv on first use under model_env_dir (about 215 MB), or, on a site without a
    # package index, model_python: an interpreter that has secd_airlock.modelenv.LOCK installed.
    # The attacks on one model stop after model_timeout_s (the model is then held for review).
    model_env_dir: str = "airlock/model-env"
    model_python: str = ""
    model_timeout_s: float = 120.0


class CanariesConfig(_Section, frozen=True):
    """Canary rows (secd_shared.canaries): synthetic patients planted in each run's tables."""

    # The one switch: synthetic patients per run, planted by the credentials service in every
    # granted table with a column they can fill (PostgreSQL), and blocked by the airlock in any
    # output or log line; 0 (the default): none, because they change a table's figures by a few.
    rows: int = 0
    # At least 32 random bytes that only the credentials service and the airlock read (never
    # the airlock's fingerprint key); read only when rows > 0.
    key_file: str = "canaries/key"


class CheckpointerConfig(_Section, frozen=True):
    """Signed checkpoints of the log: the signing key, and how often to sign."""

    private_key_file: str = "secrets/checkpointer.key"
    interval_s: float = 60.0


class Config(_Section, frozen=True):
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
    checkpointer: CheckpointerConfig = msgspec.field(default_factory=CheckpointerConfig)
    airlock: AirlockConfig = msgspec.field(default_factory=AirlockConfig)
    canaries: CanariesConfig = msgspec.field(default_factory=CanariesConfig)
    artifacts: ArtifactsConfig = msgspec.field(default_factory=ArtifactsConfig)
    # What one run may use (memory, CPUs, processes, /tmp, disk): defaults and the site maximum.
    limits: LimitsConfig = msgspec.field(default_factory=LimitsConfig)

    def path(self, relative: str) -> Path:
        """A path from the config, relative ones resolved under `state_dir`."""
        return Path(self.state_dir, relative).resolve()


def _literal(text: str) -> Any:
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        return text


# Secrets and names stay strings even when they look like numbers.
_TEXT_KEYS = ("password", "user", "token", "webhook_secret", "client_secret")


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
        node[keys[-1]] = raw if keys[-1] in _TEXT_KEYS else _literal(raw)


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
        config = msgspec.convert(data, Config, dec_hook=_decode_secret)
    except msgspec.ValidationError as exc:
        raise ConfigError(f"config: {_describe(exc)}") from None
    base = Path(path).parent if path else Path.cwd()
    state = Path(config.state_dir)
    if not state.is_absolute():
        config = msgspec.structs.replace(config, state_dir=str((base / state).resolve()))
    _check(config)
    return config


def _decode_secret(kind: type, value: Any) -> Any:
    if kind is Secret and isinstance(value, str):
        return Secret(value)
    # msgspec turns this into "Expected `str`... - at `$.nats.password`", which _describe words.
    raise TypeError("Expected `str`, got a value that is not text")


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


_DNS_LABEL = re.compile(r"[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?")
_QUANTITY = re.compile(r"(\d+(\.\d+)?|\.\d+)(m|k|M|G|T|P|E|Ki|Mi|Gi|Ti|Pi|Ei)?")


def _check_kubernetes(config: Config) -> None:
    """The executor's and builder's Kubernetes sections, and that the two kinds fit together."""
    executor, builder = config.executor, config.builder
    if executor.kind not in ("bwrap", "kubernetes", "stub"):
        raise ConfigError(
            f"executor.kind: {executor.kind!r}; use 'bwrap', 'kubernetes' or 'stub' (runs nothing)"
        )
    if builder.kind not in ("venv", "buildkit", "stub"):
        raise ConfigError(
            f"builder.kind: {builder.kind!r}; use 'venv', 'buildkit' or 'stub' (builds nothing)"
        )
    if builder.kind == "stub" and executor.kind != "stub":
        raise ConfigError(
            "builder.kind 'stub' builds nothing a sandbox or cluster could run; "
            "use it with executor.kind 'stub'"
        )
    if executor.kind != "stub" and (executor.kind == "kubernetes") != (builder.kind == "buildkit"):
        raise ConfigError(
            f"executor.kind {executor.kind!r} cannot run what builder.kind {builder.kind!r} "
            "builds; use bwrap with venv, or kubernetes with buildkit"
        )
    sections: list[tuple[str, KubernetesRunConfig | BuildKitConfig]] = []
    if executor.kind == "kubernetes":
        k8s = executor.kubernetes
        sections.append(("executor.kubernetes", k8s))
        if not k8s.collector_image:
            raise ConfigError(
                "executor.kubernetes.collector_image is required: the secd-executor image, "
                "pinned by digest"
            )
        if k8s.cache_access_mode not in ("ReadWriteOnce", "ReadWriteMany", "ReadWriteOncePod"):
            raise ConfigError(
                f"executor.kubernetes.cache_access_mode: {k8s.cache_access_mode!r}; use "
                "ReadWriteOnce, ReadWriteMany or ReadWriteOncePod"
            )
        for name, value in (("cache_size", k8s.cache_size),):
            if not _QUANTITY.fullmatch(value):
                raise ConfigError(f"executor.kubernetes.{name}: {value!r} is not a quantity")
        for name, seconds in (
            ("poll_s", k8s.poll_s),
            ("collect_timeout_s", k8s.collect_timeout_s),
            ("reap_every_s", k8s.reap_every_s),
            ("ttl_after_finished_s", k8s.ttl_after_finished_s),
        ):
            if seconds <= 0:
                raise ConfigError(f"executor.kubernetes.{name}: must be greater than 0")
    if builder.kind == "buildkit":
        bk = builder.buildkit
        sections.append(("builder.buildkit", bk))
        for name in ("registry", "git_url"):
            if not getattr(bk, name):
                raise ConfigError(
                    f"builder.buildkit.{name} is required when builder.kind is buildkit"
                )
        if "{repository}" not in bk.git_url:
            raise ConfigError(
                "builder.buildkit.git_url must contain {repository}, "
                "e.g. 'https://gitlab.example.org/{repository}.git'"
            )
    for where, section in sections:
        if not _DNS_LABEL.fullmatch(section.namespace):
            raise ConfigError(f"{where}.namespace: {section.namespace!r} is not a namespace name")
    if builder.kind == "buildkit":
        for name in ("cpu", "memory", "ephemeral_storage"):
            value = getattr(builder.buildkit, name)
            if not _QUANTITY.fullmatch(value):
                raise ConfigError(
                    f"builder.buildkit.{name}: {value!r} is not a quantity like 2, 500m or 8Gi"
                )


def _check_executor(config: Config) -> None:
    """The per-run uid range and the cgroup choice."""
    executor = config.executor
    if executor.uid_first < 1000 or executor.uid_count < 1:
        raise ConfigError(
            "executor.uid_first must be at least 1000 and uid_count at least 1 "
            "(a range of uids no account of the host uses)"
        )
    if executor.uid_first + executor.uid_count > 2**32 - 2:
        raise ConfigError("executor.uid_first + uid_count must stay below 4294967294")
    if executor.cgroups not in ("auto", "v2", "v1", "none"):
        raise ConfigError(f"executor.cgroups: {executor.cgroups!r}; use auto, v2, v1 or none")
    if not executor.cgroup_root or ".." in executor.cgroup_root.split("/"):
        raise ConfigError("executor.cgroup_root must name a folder, without '..'")


def _check_limits(config: Config) -> None:
    """Every limit readable, and no default above its maximum."""
    try:
        defaults, maximum = config.limits.defaults(), config.limits.maximum()
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    for name in LIMIT_NAMES:
        if getattr(defaults, name) > getattr(maximum, name):
            raise ConfigError(
                f"limits.{name} is above limits.max.{name}; lower it or raise the max"
            )


def _check(config: Config) -> None:
    if config.artifacts.kind not in ("nats", "folder"):
        raise ConfigError(f"artifacts.kind: {config.artifacts.kind!r}; use 'nats' or 'folder'")
    _check_kubernetes(config)
    _check_executor(config)
    _check_limits(config)
    _check_forge_and_identity(config)
    for name, db in config.credentials.databases.items():
        if db.kind not in DB_KINDS:
            raise ConfigError(
                f"credentials.databases.{name}.kind: {db.kind!r} is not supported; "
                f"use {', '.join(map(repr, DB_KINDS[:-1]))} or {DB_KINDS[-1]!r}"
            )
        _check_neo4j(name, db)
    if not 0 < config.gateway.port < 65536:
        raise ConfigError(f"gateway.port: {config.gateway.port} is not a TCP port")
    if config.log_level.upper() not in ("DEBUG", "INFO", "WARNING", "ERROR"):
        raise ConfigError(f"log_level: {config.log_level!r}; use DEBUG, INFO, WARNING or ERROR")


_NEO4J_SCHEMES = facts("neo4j").uri_schemes
_NEO4J_DATABASE = re.compile(r"[A-Za-z][A-Za-z0-9.\-]{2,62}")


def _check_neo4j(name: str, db: DatabaseConfig) -> None:
    """The settings that only kind = "neo4j" takes, present where needed and nowhere else."""
    where = f"credentials.databases.{name}"
    if db.kind != "neo4j":
        for key in ("uri", "accept_full_read"):
            if getattr(db, key):
                raise ConfigError(f"{where}.{key}: only for kind = 'neo4j'; remove it")
        return
    if not db.uri:
        raise ConfigError(f"{where}.uri is required for neo4j, e.g. bolt://host:7687")
    parts = urlsplit(db.uri)
    if parts.scheme not in _NEO4J_SCHEMES or not parts.hostname:
        raise ConfigError(
            f"{where}.uri: {db.uri!r}; set it to bolt://host:7687 "
            f"(schemes: {', '.join(_NEO4J_SCHEMES)})"
        )
    if parts.username or parts.password:
        raise ConfigError(f"{where}.uri must not hold a user or password; use user and password")
    for key in ("port", "socket", "socket_dir"):
        if getattr(db, key) is not None:
            raise ConfigError(f"{where}.{key}: not used for neo4j; put host and port in uri")
    if not db.password:
        env = f"SECD_CREDENTIALS__DATABASES__{name.upper()}__PASSWORD"
        raise ConfigError(f"{where}.password is required for neo4j; set {env}")
    if not _NEO4J_DATABASE.fullmatch(db.database) or db.database.lower() == "system":
        raise ConfigError(f"{where}.database: {db.database!r} is not a Neo4j graph database name")


_LOOPBACK = ("127.0.0.1", "::1", "localhost")


def _check_url(key: str, url: str) -> None:
    """An http(s) base URL with a host and no credentials; plain http only to this machine."""
    if not url:
        raise ConfigError(f"{key} is required, e.g. https://gitlab.example.org")
    parts = urlsplit(url)
    if parts.scheme not in ("https", "http") or not parts.hostname:
        raise ConfigError(f"{key}: {url!r} is not an http(s) URL with a host")
    if parts.username or parts.password:
        raise ConfigError(f"{key} must not hold a user or password; secrets go in their own keys")
    if parts.query or parts.fragment:
        raise ConfigError(f"{key}: {url!r} must not have a query or fragment")
    if parts.scheme == "http" and parts.hostname not in _LOOPBACK:
        raise ConfigError(f"{key}: {url!r} must use https (a token would travel in clear)")


def _check_forge_and_identity(config: Config) -> None:
    """forge.kind git | gitlab and identity.kind file | keycloak, with their settings."""
    forge, identity = config.forge, config.identity
    if forge.kind not in ("git", "gitlab"):
        raise ConfigError(f"forge.kind: {forge.kind!r} is not available; use 'git' or 'gitlab'")
    if forge.kind == "gitlab":
        gitlab = forge.gitlab
        _check_url("forge.gitlab.url", gitlab.url)
        for name in ("token", "webhook_secret"):
            if getattr(gitlab, name) is not None and getattr(gitlab, f"{name}_file") is not None:
                raise ConfigError(f"forge.gitlab.{name}: set either it or {name}_file, not both")
        if not gitlab.status_name.strip():
            raise ConfigError("forge.gitlab.status_name must not be empty")
        if gitlab.max_hook_bytes < 1024:
            raise ConfigError("forge.gitlab.max_hook_bytes: at least 1024")
        if gitlab.timeout_s <= 0:
            raise ConfigError("forge.gitlab.timeout_s: must be greater than 0")
    if identity.kind not in ("file", "keycloak"):
        raise ConfigError(
            f"identity.kind: {identity.kind!r} is not available; use 'file' or 'keycloak'"
        )
    if identity.kind == "keycloak":
        keycloak = identity.keycloak
        if forge.kind != "gitlab":
            raise ConfigError(
                "identity.kind: 'keycloak' needs forge.kind = 'gitlab' "
                "(the Keycloak user is found through the GitLab user's identity)"
            )
        _check_url("identity.keycloak.url", keycloak.url)
        for name in ("realm", "client_id"):
            if not getattr(keycloak, name):
                raise ConfigError(f"identity.keycloak.{name} is required")
        if keycloak.client_secret is not None and keycloak.client_secret_file is not None:
            raise ConfigError(
                "identity.keycloak.client_secret: set either it or client_secret_file, not both"
            )
        if keycloak.extern_uid not in ("id", "username"):
            raise ConfigError(
                f"identity.keycloak.extern_uid: {keycloak.extern_uid!r}; use 'id' or 'username'"
            )
        if not keycloak.group_root.startswith("/"):
            raise ConfigError(
                f"identity.keycloak.group_root: {keycloak.group_root!r} must start with '/'"
            )
        if not keycloak.gitlab_provider:
            raise ConfigError("identity.keycloak.gitlab_provider is required")


def read_secret(config: Config, key: str, value: Secret | str | None, file: str | None) -> str:
    """A secret given as `key` (from the environment) or `key`_file; ConfigError naming the key.

    Returns the value itself, for the client that sends it. The message never holds the secret,
    only where it was looked for.
    """
    env = "SECD_" + key.upper().replace(".", "__")
    if value is not None:
        secret = (value.reveal() if isinstance(value, Secret) else value).strip()
    elif file is not None:
        path = config.path(file)
        try:
            secret = path.read_text().strip()
        except OSError as exc:
            raise ConfigError(f"{key}_file: cannot read {path} ({exc.strerror})") from None
    else:
        raise ConfigError(f"{key} is not set; set {env} or {key}_file")
    if len(secret) < 8 or any(c.isspace() for c in secret):
        raise ConfigError(f"{key}: too short or holds whitespace; check {env} or {key}_file")
    return secret
