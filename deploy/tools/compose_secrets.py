"""Write secrets/ for `docker compose up`: passwords, the executor's key pair and secd.toml.

Every file is written once and then kept (re-running adds only what is missing), with mode 0600,
in `secrets/` beside compose.yaml; git ignores that folder. Nothing here is printed.

    python deploy/tools/compose_secrets.py [--dir secrets]
"""

from __future__ import annotations

import argparse
import os
import secrets
import sys
from pathlib import Path

from secd.stack import SERVICES
from secd_shared.identities import BOOTSTRAP_USER, IDENTITIES
from secd_shared.integrity import generate_signing_key
from secd_shared.sealing import generate_keypair

sys.path.insert(0, str(Path(__file__).resolve().parent))
from render_nats_config import password_variable

ROOT = Path(__file__).resolve().parents[2]
# The files compose.yaml names, each made by this script.
FILES = (
    "nats.env",
    *(f"{service}.env" for service in SERVICES),
    "neo4j.env",
    "keycloak.env",
    "mariadb-root",
    "postgres-password",
    "hook-token",
    "executor.key",
    "checkpointer.key",
    "airlock.key",
    "groups.toml",
    "secd.toml",
)

SECD_TOML = """\
# secd in docker compose (compose.yaml); written by deploy/tools/compose_secrets.py.
state_dir = "/var/lib/secd"

[nats]
url = "nats://nats:4222"

[gateway]
host = "0.0.0.0"
port = 8740
token_file = "/etc/secd/hook-token"

[forge]
# The embedded forge's repositories: a volume of their own (compose.yaml `forge`).
root = "/var/lib/secd-forge"

[identity]
groups_file = "/etc/secd/groups.toml"

[credentials]
executor_public_key = "{public_key}"
default_database = "postgres"

[credentials.databases.postgres]
kind = "postgres"
database = "sensitive"
host = "postgres"
port = 5432
user = "postgres"

[credentials.databases.mariadb]
kind = "mysql"
database = "sensitive"
host = "mariadb"
port = 3306
user = "root"

[executor]
private_key_file = "/etc/secd/executor.key"

[checkpointer]
private_key_file = "/etc/secd/checkpointer.key"

[airlock]
key_file = "/etc/secd/airlock.key"
# The airlock's own read-only account on each database (create it, SELECT only, and give its
# password as SECD_AIRLOCK__DATABASES__POSTGRES__PASSWORD in airlock.env); without one every
# output of that database's runs is held for officers.
"""


def _password() -> str:
    return secrets.token_urlsafe(24)


def _write(path: Path, text: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as out:
        out.write(text)


def _read_env(path: Path) -> dict[str, str]:
    pairs = (line.split("=", 1) for line in path.read_text().splitlines() if "=" in line)
    return {key: value for key, value in pairs}


def write_secrets(folder: Path) -> list[str]:
    """Create whatever is missing in `folder`; returns the names written."""
    folder.mkdir(mode=0o700, exist_ok=True)
    written: list[str] = []

    def put(name: str, make) -> None:
        path = folder / name
        if not path.exists():
            _write(path, make())
            written.append(name)

    users = [BOOTSTRAP_USER, *IDENTITIES]
    put("nats.env", lambda: "".join(f"{password_variable(u)}={_password()}\n" for u in users))
    nats = _read_env(folder / "nats.env")
    put("mariadb-root", _password)
    put("postgres-password", _password)
    for service in SERVICES:
        lines = [
            f"SECD_NATS__USER={service}",
            f"SECD_NATS__PASSWORD={nats[password_variable(service)]}",
        ]
        if service == "credentials":
            mariadb = (folder / "mariadb-root").read_text()
            postgres = (folder / "postgres-password").read_text()
            lines += [
                f"SECD_CREDENTIALS__DATABASES__MARIADB__PASSWORD={mariadb}",
                f"SECD_CREDENTIALS__DATABASES__POSTGRES__PASSWORD={postgres}",
            ]
        put(f"{service}.env", lambda lines=lines: "\n".join(lines) + "\n")
    put("neo4j.env", lambda: f"NEO4J_AUTH=neo4j/{_password()}\n")
    put(
        "keycloak.env",
        lambda: f"KC_BOOTSTRAP_ADMIN_USERNAME=admin\nKC_BOOTSTRAP_ADMIN_PASSWORD={_password()}\n",
    )
    put("hook-token", lambda: secrets.token_urlsafe(32))
    put("airlock.key", lambda: secrets.token_hex(32))
    if not (folder / "executor.key").exists():
        (folder / "executor.pub").write_text(generate_keypair(folder / "executor.key"))
        written.append("executor.key")
    if not (folder / "checkpointer.key").exists():
        # Officers verify the log's checkpoints with the .pub file.
        (folder / "checkpointer.pub").write_text(
            generate_signing_key(folder / "checkpointer.key") + "\n"
        )
        written.append("checkpointer.key")
    public = (folder / "executor.pub").read_text().strip()
    put("groups.toml", lambda: '# e.g. alice = ["postgres-patients-read"]\n[researchers]\n')
    put("secd.toml", lambda: SECD_TOML.format(public_key=public))
    return written


def main() -> int:
    """Write the secrets folder and say what to do next."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dir", type=Path, default=ROOT / "secrets")
    args = parser.parse_args()
    written = write_secrets(args.dir)
    print(f"{args.dir}: wrote {', '.join(written) if written else 'nothing (all present)'}")
    print(
        "The services run as uid 10001: give it the files they read, e.g. "
        f"`sudo chown 10001 {args.dir}/hook-token {args.dir}/checkpointer.key {args.dir}/*.toml`."
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
