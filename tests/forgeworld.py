"""Forge and identity worlds for the contract tests: the embedded adapters, and the GitLab and
Keycloak adapters against FakeGitLab / FakeKeycloak (local servers, not the real products).

A pytest plugin of the suite (tests/conftest.py): tests/contracts and tests/verifier use its
fixtures, tests/e2e its Clone."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from secd_shared.bus import StoredEvent
from secd_shared.config import Config, load_config
from secd_shared.events import PushReceived, encode_event, new_event, new_run_id, subject_for
from secd_shared.forge_git import git_environment
from secd_shared.service import producer_for
from tests.fakes.gitlab import FakeGitLab, FakeUser
from tests.fakes.keycloak import FakeKeycloak
from tests.gpghelp import GpgKey, git_env, make_key, stop_agent

ZERO = "0" * 40


@pytest.fixture(scope="session")
def keys(tmp_path_factory) -> Iterator[dict[str, GpgKey]]:
    """alice's and bob's signing keys, made once (tests/verifier and tests/e2e have their own)."""
    base = tmp_path_factory.mktemp("forge-keys")
    made = {
        "alice": make_key(base, "Alice", "alice@example.org"),
        "bob": make_key(base, "Bob", "bob@example.org"),
    }
    yield made
    for key in made.values():
        stop_agent(key)


@pytest.fixture
def gitlab(tmp_path: Path) -> Iterator[FakeGitLab]:
    """A FakeGitLab of the test's own."""
    fake = FakeGitLab(tmp_path / "fake-gitlab").start()
    yield fake
    fake.stop()


def stored(payload, *, actor: str, project: str) -> StoredEvent:
    """A payload as the log would hand it to a consumer."""
    run_id = new_run_id()
    event = new_event(
        payload, run_id=run_id, producer=producer_for("gateway"), actor=actor, project=project
    )
    return StoredEvent(seq=1, subject=subject_for(run_id, event.type), data=encode_event(event))


class Clone:
    """A researcher's working copy: commits (signed by a key, or not) and pushes."""

    def __init__(self, path: Path, key: GpgKey, remote: str, push_env: dict[str, str]) -> None:
        """An empty repository at path that pushes to `remote` with `push_env`."""
        self.path, self.key, self.remote, self.push_env = path, key, remote, push_env
        path.mkdir(parents=True)
        self.git("init", "-q", "-b", "main")
        self.n = 0

    def git(self, *args: str, env: dict[str, str] | None = None) -> str:
        """Run git here; returns stdout."""
        done = subprocess.run(
            ["git", *args],
            cwd=self.path,
            env=env or git_env(self.key),
            capture_output=True,
            text=True,
            check=False,
        )
        assert done.returncode == 0, done.stderr
        return done.stdout.strip()

    def commit(
        self, *, sign: bool = True, key: GpgKey | None = None, email: str | None = None
    ) -> str:
        """One commit changing one file; signed with the clone's key (or `key`) unless sign=False."""  # noqa: E501
        self.n += 1
        (self.path / f"f{self.n}.txt").write_text(f"{self.n}\n")
        self.git("add", "-A")
        env = git_env(key or self.key)
        if email:
            env = {**env, "GIT_COMMITTER_EMAIL": email, "GIT_AUTHOR_EMAIL": email}
        flag = "-S" if sign else "--no-gpg-sign"
        self.git("commit", "-q", flag, "-m", f"change {self.n}", env=env)
        return self.head()

    def head(self) -> str:
        """HEAD's commit id."""
        return self.git("rev-parse", "HEAD")

    def push(self, ref: str = "main") -> None:
        """Push HEAD to branch `ref` of the remote."""
        self.git("push", "-q", self.remote, f"HEAD:refs/heads/{ref}", env=self.push_env)


@dataclass
class ForgeWorld:
    """One forge with its adapters, and what a test needs to act on it."""

    kind: str
    config: Config
    root: Path
    gitlab: FakeGitLab | None = None
    users: dict[str, FakeUser] = field(default_factory=dict)
    projects: dict[str, object] = field(default_factory=dict)

    def register(self, researcher: str, key: GpgKey) -> None:
        """Register a researcher and their public key with the forge."""
        if self.gitlab is None:
            folder = self.config.path(self.config.verifier.keyring) / researcher
            folder.mkdir(parents=True, exist_ok=True)
            (folder / f"{key.fingerprint}.asc").write_text(key.public_armor)
            return
        user = self.users.get(researcher) or self.gitlab.add_user(
            researcher, researcher.title(), key.email
        )
        self.users[researcher] = user
        self.gitlab.add_gpg_key(user, key.public_armor)

    def repository(self, name: str) -> Path:
        """Create a project; returns the bare repository the forge keeps (to look inside)."""
        if self.gitlab is None:
            path = self.config.path(self.config.forge.root) / f"{name}.git"
            path.parent.mkdir(parents=True, exist_ok=True)
            subprocess.run(["git", "init", "-q", "--bare", "-b", "main", str(path)], check=True)
            self.projects[name] = path
            return path
        project = self.gitlab.add_project(name)
        self.projects[name] = project
        return project.repo

    def clone(self, researcher: str, key: GpgKey, name: str, where: Path) -> Clone:
        """A working copy of `name` for the researcher, pushing as them."""
        if self.gitlab is None:
            remote = str(self.config.path(self.config.forge.root) / f"{name}.git")
            return Clone(where, key, remote, git_env(key))
        user = self.users[researcher]
        env = {**git_env(key), **git_environment(self.gitlab.url, user.token)}
        return Clone(where, key, self.gitlab.clone_url(self.projects[name]), env)

    def push_event(
        self, researcher: str, name: str, before: str, after: str, ref: str = "main"
    ) -> StoredEvent:
        """The push.received the gateway would write for this push."""
        if self.gitlab is None:
            payload = PushReceived(
                forge="git",
                repository=name,
                ref=f"refs/heads/{ref}",
                before=before,
                after=after,
                pusher=f"acct-{researcher}",
            )
        else:
            payload = PushReceived(
                forge="gitlab",
                repository=name,
                ref=f"refs/heads/{ref}",
                before=before,
                after=after,
                pusher=researcher,
                forge_user_id=self.users[researcher].id,
                forge_project_id=self.projects[name].id,
            )
        return stored(payload, actor=payload.pusher, project=name)


def _config(tmp_path: Path, text: str, env: dict[str, str]) -> Config:
    path = tmp_path / "secd.toml"
    path.write_text(f'state_dir = "state"\n{text}')
    return load_config(path, env)


@pytest.fixture(params=["embedded", "gitlab"])
def world(request, tmp_path: Path) -> Iterator[ForgeWorld]:
    """The forge port's two adapters, each in a world of its own."""
    if request.param == "embedded":
        config = _config(
            tmp_path,
            "[forge]\naccounts = { "
            'acct-alice = "alice", acct-bob = "bob", acct-carol = "carol" }\n',
            {},
        )
        yield ForgeWorld("embedded", config, tmp_path)
        return
    fake = FakeGitLab(tmp_path / "fake-gitlab").start()
    config = _config(
        tmp_path,
        f'[forge]\nkind = "gitlab"\n[forge.gitlab]\nurl = "{fake.url}"\n',
        {"SECD_FORGE__GITLAB__TOKEN": fake.admin_token},
    )
    yield ForgeWorld("gitlab", config, tmp_path, gitlab=fake)
    fake.stop()


@dataclass
class IdentityWorld:
    """One identity source with its adapter, and a way to give researchers groups."""

    kind: str
    config: Config
    gitlab: FakeGitLab | None = None
    keycloak: FakeKeycloak | None = None

    def grant(self, researcher: str, groups: list[str]) -> None:
        """Make `researcher` a member of `groups` (names like postgres-patients-read)."""
        if self.keycloak is None:
            path = self.config.path(self.config.identity.groups_file)
            path.parent.mkdir(parents=True, exist_ok=True)
            lines = path.read_text() if path.exists() else "[researchers]\n"
            path.write_text(lines + f"{researcher} = {list(groups)!r}\n".replace("'", '"'))
            return
        assert self.gitlab is not None
        user = self.gitlab.add_user(researcher, researcher.title(), f"{researcher}@example.org")
        member = self.keycloak.add_user(researcher, [f"/secd/{g}" for g in groups])
        self.gitlab.add_identity(user, "openid_connect", member.id)

    def make_unavailable(self) -> None:
        """The source stops answering (file gone, server down)."""
        if self.keycloak is None:
            self.config.path(self.config.identity.groups_file).unlink()
        else:
            self.keycloak.stop()


def _keycloak_world(tmp_path: Path) -> Iterator[IdentityWorld]:
    gitlab = FakeGitLab(tmp_path / "fake-gitlab").start()
    keycloak = FakeKeycloak().start()
    config = _config(
        tmp_path,
        f'[forge]\nkind = "gitlab"\n[forge.gitlab]\nurl = "{gitlab.url}"\n'
        f'[identity]\nkind = "keycloak"\n[identity.keycloak]\nurl = "{keycloak.url}"\n'
        f'realm = "{keycloak.realm}"\nclient_id = "{keycloak.client_id}"\ngroup_root = "/secd"\n',
        {
            "SECD_FORGE__GITLAB__TOKEN": gitlab.admin_token,
            "SECD_IDENTITY__KEYCLOAK__CLIENT_SECRET": keycloak.client_secret,
        },
    )
    yield IdentityWorld("keycloak", config, gitlab=gitlab, keycloak=keycloak)
    keycloak.stop()
    gitlab.stop()


@pytest.fixture(params=["file", "keycloak"])
def identity_world(request, tmp_path: Path) -> Iterator[IdentityWorld]:
    """The identity port's two adapters."""
    if request.param == "file":
        yield IdentityWorld("file", _config(tmp_path, "", {}))
    else:
        yield from _keycloak_world(tmp_path)


@pytest.fixture
def keycloak_world(tmp_path: Path) -> Iterator[IdentityWorld]:
    """The Keycloak adapter's world alone (FakeKeycloak and FakeGitLab)."""
    yield from _keycloak_world(tmp_path)


def no_secret_in(text: str | bytes, *secrets: str) -> bool:
    """True if none of the secrets occurs in the text (bytes are searched as bytes)."""
    data = text if isinstance(text, bytes) else text.encode()
    return not any(s and s.encode() in data for s in secrets)
