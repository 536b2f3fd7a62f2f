"""The stack the end-to-end tests push to: NATS, PostgreSQL, git, gpg, bwrap and every service
in its own process, one stack per test module, and a researcher with a signing key."""

from __future__ import annotations

import getpass
import subprocess
from pathlib import Path

import asyncpg
import pytest

from secd.audit import open_log, wait_for_commit
from secd.stack import OFFICER_GROUPS, Stack
from secd_shared.forge import create_repository
from tests.gpghelp import GpgKey, git_env, make_key, stop_agent


class Researcher:
    """A local clone with a signing key, pushing to the embedded forge."""

    def __init__(self, work: Path, key: GpgKey, remote: Path) -> None:
        self.work, self.key = work, key
        work.mkdir(parents=True)
        self.git("init", "-q", "-b", "main")
        self.git("remote", "add", "origin", str(remote))
        self.n = 0

    def git(self, *args: str, sign_as: GpgKey | None = None) -> str:
        done = subprocess.run(
            ["git", *args], cwd=self.work, env=git_env(sign_as or self.key),
            capture_output=True, text=True, check=False,
        )  # fmt: skip
        assert done.returncode == 0, done.stderr
        return done.stdout.strip()

    def commit(self, files: dict[str, str], *, sign: bool = True, sign_as=None) -> str:
        self.n += 1
        for name, text in files.items():
            (self.work / name).write_text(text)
        self.git("add", "-A")
        flag = "-S" if sign else "--no-gpg-sign"
        self.git("commit", "-q", flag, "--allow-empty", "-m", f"change {self.n}", sign_as=sign_as)
        return self.git("rev-parse", "HEAD")

    def push(self) -> None:
        self.git("push", "-q", "origin", "HEAD:refs/heads/main")


@pytest.fixture(scope="module")
def keys(tmp_path_factory):
    home = tmp_path_factory.mktemp("keys")
    alice = make_key(home, "Alice", "alice@example.org")
    bob = make_key(home, "Bob", "bob@example.org")
    yield alice, bob
    stop_agent(alice)
    stop_agent(bob)


async def start_stack(root: Path, keys, **options) -> Stack:
    """A started stack in `root`: alice's and bob's keys, alice's grant, two seeded tables."""
    alice, bob = keys
    stack = Stack(root / "state", accounts={getpass.getuser(): "alice"}, ack_wait_s=3.0, **options)
    stack.prepare()
    for name, key in (("alice", alice), ("bob", bob)):
        (stack.state_dir / "keys" / name).mkdir(parents=True)
        (stack.state_dir / "keys" / name / "key.asc").write_text(key.public_armor)
    (stack.state_dir / "groups.toml").write_text(
        '[researchers]\nalice = ["postgres-patients-read"]\n' + OFFICER_GROUPS
    )
    await stack.start()
    conn = await asyncpg.connect(**stack.postgres_admin_dsn())
    await conn.execute(
        "CREATE TABLE patients (id int); INSERT INTO patients SELECT generate_series(1, 25);"
        "CREATE TABLE billing (id int);"
    )
    await conn.close()
    return stack


@pytest.fixture(scope="module")
async def stack(tmp_path_factory, keys):
    stack = await start_stack(tmp_path_factory.mktemp("stack"), keys)
    yield stack
    await stack.stop()


@pytest.fixture
def repo(stack, keys, tmp_path, request) -> Researcher:
    name = f"alice/{request.node.name.replace('_', '-')[:40]}"
    bare = create_repository(
        stack.state_dir / "forge",
        name,
        gateway_url=stack.gateway_url,
        token_file=Path(stack.config["gateway"]["token_file"]),
    )
    return Researcher(tmp_path / "clone", keys[0], bare)


async def run_of(stack, head: str, until: str, timeout: float = 120):
    """The events of the run of commit `head`, once it has an event of type `until`."""
    bus = await open_log(stack.state_dir)
    try:
        return await wait_for_commit(bus, head, until, timeout=timeout, interval=0.1)
    finally:
        await bus.close()
