"""The one door to git: every secd process that runs git on a repository runs it through here.

A repository secd reads may hold a hostile config (a forge volume written by someone else, a
mirror tampered with) and secd's own process may inherit a hostile environment. So each git
process gets:

- an environment built from nothing: PATH and TMPDIR only, HOME pointing nowhere (or at a
  private folder), no system or global config, no replace refs, no prompts, no pager or editor,
  and never an inherited GIT_* variable (GIT_DIR, GIT_INDEX_FILE, GIT_OBJECT_DIRECTORY...);
- the repository named explicitly (`--git-dir`, never discovered from the working directory,
  which is `/`), trusted by name (safe.directory) because what its config could do is
  neutralised here: hooks, fsmonitor and ssh commands are overridden on the command line, and a
  repository whose config names a filter driver, an include, a URL rewrite, HTTP or credential
  settings or an alternate-refs command is refused before git runs in it;
- no transport at all (protocol.allow=never), except the one scheme of the forge a `Remote`
  names, whose token reaches git only through the environment of the git process: a credential
  helper defined in GIT_CONFIG_* variables prints it when the server asks. It is never in a URL,
  an argument, a repository's config, a log line or an error message;
- `--end-of-options` before any revision that comes from outside, a timeout, stdin closed
  unless input is given, and stderr folded into one line of a `GitError` that holds no token and
  no URL credentials.
"""

from __future__ import annotations

import contextlib
import os
import re
import subprocess
import tempfile
import threading
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any
from urllib.parse import urlsplit

__all__ = [
    "DEFAULT_TIMEOUT_S",
    "EMPTY_TREE",
    "GitError",
    "Remote",
    "Repository",
    "git_environment",
]

DEFAULT_TIMEOUT_S = 300.0
EMPTY_TREE = "4b825dc642cb6eb9a060e54bf8d69288fbee4904"
TOKEN_ENV = "SECD_FORGE_GIT_TOKEN"  # noqa: S105 - the name of a variable, not a secret
MAX_DETAIL = 500

# The helper runs in git's shell; it answers only `get` and reads the token from the environment.
_HELPER = (
    '!f() { test "$1" = get || exit 0; echo username=oauth2; '
    f'printf "password=%s\\n" "${TOKEN_ENV}"; }}; f'
)
# Settings that win over any repository config, on every call.
_OVERRIDES = (
    ("core.hooksPath", os.devnull),
    ("core.fsmonitor", "false"),
    ("core.sshCommand", "false"),
    ("core.askPass", ""),
    ("core.attributesFile", os.devnull),
    ("credential.helper", ""),
    ("protocol.allow", "never"),
)
# Repository config keys that would run a program, read another config file or send git (and a
# token) somewhere else, and that a command-line setting cannot switch off.
_REFUSED = re.compile(
    r"filter\..*\.(clean|smudge|process)|include\..*|includeif\..*|url\..*|credential\..*"
    # http.receivepack and friends are a served repository's settings, not a client's.
    r"|http\.(?!(receivepack|uploadpack|getanyfile)$).*"
    r"|core\.alternaterefscommand|core\.gitproxy|remote\..*\.(uploadpack|receivepack|proxy)"
)
_URL_CREDENTIALS = re.compile(r"(?i)\b([a-z][a-z0-9+.-]*://)[^/@\s]*@")


class GitError(RuntimeError):
    """git failed or was refused; the message is one line and holds no secret."""


@dataclass(frozen=True)
class Remote:
    """A forge reached over HTTP(S) at `base_url`, with `token` for its git endpoints."""

    base_url: str
    token: str = field(repr=False)

    def __post_init__(self) -> None:
        """Only http(s), and no credentials in the URL itself."""
        parts = urlsplit(self.base_url)
        if parts.scheme not in ("https", "http") or not parts.hostname:
            raise GitError(f"forge URL must be https://host[/path], not {_scrub(self.base_url)}")
        if parts.username is not None or parts.password is not None:
            raise GitError("forge URL must not hold credentials; give the token separately")

    @property
    def origin(self) -> str:
        """scheme://host[:port] of the forge."""
        parts = urlsplit(self.base_url)
        return f"{parts.scheme}://{parts.netloc}"

    def settings(self) -> list[tuple[str, str]]:
        """The config that lets git reach this forge, and only it, with the token."""
        return [
            (f"credential.{self.origin}.helper", _HELPER),
            (f"protocol.{urlsplit(self.base_url).scheme}.allow", "always"),
            ("http.sslVerify", "true"),
        ]


def git_environment(remote: Remote | None = None, *, home: Path | None = None) -> dict[str, str]:
    """The whole environment of a git process secd runs (see the module docstring)."""
    env = {name: os.environ[name] for name in ("PATH", "TMPDIR") if name in os.environ}
    env.update(
        HOME=str(home) if home is not None else os.devnull,
        LC_ALL="C",
        GIT_CONFIG_NOSYSTEM="1",
        GIT_CONFIG_SYSTEM=os.devnull,
        GIT_CONFIG_GLOBAL=os.devnull,
        GIT_ATTR_NOSYSTEM="1",
        GIT_NO_REPLACE_OBJECTS="1",
        GIT_TERMINAL_PROMPT="0",
        GIT_PROTOCOL_FROM_USER="0",
        GIT_PAGER="cat",
        GIT_EDITOR="false",
    )
    # Passed as GIT_CONFIG_* rather than `-c` so that a researcher's own git (the tests, the demo)
    # can be given the same environment; both rank above every config file.
    settings = list(_OVERRIDES)
    if remote is not None:
        settings += remote.settings()
        env[TOKEN_ENV] = remote.token
    env["GIT_CONFIG_COUNT"] = str(len(settings))
    for i, (key, value) in enumerate(settings):
        env[f"GIT_CONFIG_KEY_{i}"] = key
        env[f"GIT_CONFIG_VALUE_{i}"] = value
    return env


def _scrub(text: str, secret: str | None = None) -> str:
    text = _URL_CREDENTIALS.sub(r"\1[credentials]@", text)
    if secret:
        text = text.replace(secret, "[token]")
    return text


def _one_line(stderr: bytes, secret: str | None) -> str:
    detail = " ".join(stderr.decode("utf-8", "replace").split())
    detail = _scrub(detail, secret)
    return detail if len(detail) <= MAX_DETAIL else detail[: MAX_DETAIL - 1] + "…"


class Repository:
    """git on one repository (or on none, for init, ls-remote and check-ref-format).

    `error` is the exception type raised on failure (GitError by default), so that each service
    raises its own domain error with the door's one-line message.
    """

    def __init__(
        self,
        git_dir: Path | None,
        *,
        remote: Remote | None = None,
        timeout_s: float = DEFAULT_TIMEOUT_S,
        home: Path | None = None,
        error: Callable[[str], Exception] = GitError,
    ) -> None:
        """git in `git_dir` (a bare repository, or a work tree's .git), talking to `remote`."""
        self.path = Path(git_dir) if git_dir is not None else None
        self.git_dir: Path | None = None
        if self.path is not None:
            dot_git = self.path / ".git"
            self.git_dir = (dot_git if dot_git.is_dir() else self.path).absolute()
        self.remote = remote
        self.timeout_s = timeout_s
        self.error = error
        self._env = git_environment(remote, home=home)
        self._vetted = False

    def __repr__(self) -> str:
        return f"Repository({str(self.path)!r})"

    # The one place a git process starts.

    def _argv(self, args: Iterable[str]) -> list[str]:
        argv = ["git", "--no-pager"]
        if self.git_dir is not None:
            # Only command-line config may name a safe directory; this one is trusted by name,
            # since what its config could do is switched off or refused here.
            argv += ["-c", f"safe.directory={self.git_dir}", "--git-dir", str(self.git_dir)]
        return argv + list(args)

    def _fail(self, command: str, what: str | None, detail: str) -> Exception:
        if what is None:
            where = f" in {self.path}" if self.path is not None else ""
            return self.error(f"git {command} failed{where}: {detail}")
        return self.error(f"git {what} failed: {detail}")

    def _vet(self) -> None:
        """Refuse a repository whose config could make git run a program or go elsewhere."""
        if self._vetted or self.git_dir is None:
            return
        config = self.git_dir / "config"
        if config.is_file():
            done = subprocess.run(
                ["git", "config", "--file", str(config), "--null", "--name-only", "--list"],
                stdin=subprocess.DEVNULL,
                capture_output=True,
                env=self._env,
                cwd="/",
                timeout=self.timeout_s,
                check=False,
            )
            if done.returncode != 0:
                raise self.error(
                    f"cannot read the config of {self.path}: {_one_line(done.stderr, None)}"
                )
            names = done.stdout.decode("utf-8", "replace").split("\0")
            bad = sorted({n for n in names if n and _REFUSED.fullmatch(n.lower())})
            if bad:
                raise self.error(
                    f"repository {self.path} has config secd refuses to run git with "
                    f"({', '.join(bad[:5])}); remove it from {config}"
                )
        self._vetted = True

    def run(
        self,
        *args: str,
        input: bytes | None = None,
        stdin: int | None = None,
        index_file: Path | None = None,
        identity: tuple[str, str] | None = None,
        timeout_s: float | None = None,
        check: bool = True,
        what: str | None = None,
    ) -> subprocess.CompletedProcess[bytes]:
        """Run `git <args>`; raises `error` if it fails and `check`, or if it times out.

        `input` is written to stdin (else stdin is the file descriptor `stdin`, else closed);
        `index_file` and `identity` (name, e-mail: author and committer) are the only things
        of git's environment a caller chooses. `what` names the operation in an error.
        """
        self._vet()
        env = self._env
        if index_file is not None or identity is not None:
            env = dict(env)
            if index_file is not None:
                env["GIT_INDEX_FILE"] = str(Path(index_file).absolute())
            if identity is not None:
                name, email = identity
                env.update(
                    GIT_AUTHOR_NAME=name,
                    GIT_AUTHOR_EMAIL=email,
                    GIT_COMMITTER_NAME=name,
                    GIT_COMMITTER_EMAIL=email,
                )
        timeout = self.timeout_s if timeout_s is None else timeout_s
        if input is None and stdin is None:
            stdin = subprocess.DEVNULL
        try:
            done = subprocess.run(
                self._argv(args),
                input=input,
                stdin=None if input is not None else stdin,
                capture_output=True,
                env=env,
                cwd="/",
                timeout=timeout,
                check=False,
            )
        except subprocess.TimeoutExpired:
            raise self._fail(args[0], what, f"took longer than {timeout:g} s") from None
        if check and done.returncode != 0:
            raise self._fail(args[0], what, self._detail(done.stderr))
        return done

    def _detail(self, stderr: bytes) -> str:
        return _one_line(stderr, self.remote.token if self.remote else None)

    def output(self, *args: str, **kwargs: Any) -> str:
        """stdout of `git <args>` as text, stripped."""
        return self.run(*args, **kwargs).stdout.decode("utf-8", "replace").strip()

    # Reading objects.

    def resolve(self, revision: str, *, peel: str | None = None) -> str | None:
        """The object name `revision` (peeled to `peel`, e.g. "commit") stands for, or None."""
        if not isinstance(revision, str) or not revision or "\0" in revision:
            return None
        spec = f"{revision}^{{{peel}}}" if peel else revision
        done = self.run("rev-parse", "--verify", "--quiet", "--end-of-options", spec, check=False)
        return done.stdout.decode().strip() if done.returncode == 0 else None

    def object_type(self, name: str) -> str | None:
        """ "commit", "tree", "blob" or "tag", or None if the repository has no such object."""
        done = self.run("cat-file", "-t", "--end-of-options", name, check=False)
        if done.returncode != 0:
            if b"not a git repository" in done.stderr:
                raise self._fail("cat-file", None, self._detail(done.stderr))
            return None
        return done.stdout.decode().strip()

    def has_commit(self, sha: str) -> bool:
        """Whether the repository holds commit `sha`."""
        done = self.run("cat-file", "-e", "--end-of-options", f"{sha}^{{commit}}", check=False)
        return done.returncode == 0

    def cat_file(self, kind: str, name: str) -> bytes:
        """The raw bytes of object `name` of type `kind`."""
        return self.run("cat-file", kind, "--end-of-options", name).stdout

    def ls_tree(self, tree: str, *paths: str, options: Iterable[str] = ()) -> bytes:
        """`git ls-tree -z --full-tree <options> <tree> <paths>` (NUL-separated entries).

        No `--` before the paths: after --end-of-options git would take it for a path.
        """
        return self.run(
            "ls-tree", "-z", "--full-tree", *options, "--end-of-options", tree, *paths
        ).stdout

    @contextlib.contextmanager
    def archive(self, commit: str, *, timeout_s: float | None = None) -> Iterator[IO[bytes]]:
        """The tar archive of `commit`'s tree as a stream; raises `error` when git fails."""
        self._vet()
        timeout = self.timeout_s if timeout_s is None else timeout_s
        too_long = f"took longer than {timeout:g} s"
        with tempfile.TemporaryFile() as stderr:
            proc = subprocess.Popen(
                self._argv(["archive", "--format=tar", "--end-of-options", commit]),
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=stderr,
                env=self._env,
                cwd="/",
            )
            expired = threading.Event()

            def kill() -> None:
                expired.set()
                proc.kill()

            timer = threading.Timer(timeout, kill)
            timer.start()
            try:
                assert proc.stdout is not None
                try:
                    yield proc.stdout
                except BaseException:
                    if expired.is_set():
                        raise self._fail("archive", None, too_long) from None
                    raise
                proc.stdout.read()
                proc.wait()
            finally:
                timer.cancel()
                if proc.poll() is None:
                    proc.kill()
                proc.wait()
                proc.stdout.close()  # type: ignore[union-attr]
            if expired.is_set():
                raise self._fail("archive", None, too_long)
            if proc.returncode != 0:
                stderr.seek(0)
                raise self._fail("archive", None, self._detail(stderr.read()))

    # Writing objects and refs.

    def hash_object(self, data: bytes | None = None, *, fd: int | None = None) -> str:
        """Write a blob (from `data`, or read from file descriptor `fd`); returns its id."""
        return self.output("hash-object", "-w", "--no-filters", "--stdin", input=data, stdin=fd)

    def update_index(self, entries: bytes, *, index_file: Path) -> None:
        """Add NUL-terminated `--index-info` lines ("<mode> <sha>\\t<path>") to `index_file`."""
        self.run(
            "update-index", "--add", "--replace", "-z", "--index-info",
            input=entries, index_file=index_file,
        )  # fmt: skip

    def write_tree(self, *, index_file: Path | None = None) -> str:
        """The tree of `index_file` (an empty index: the empty tree), written."""
        return self.output("write-tree", index_file=index_file)

    def commit_tree(
        self, tree: str, parents: Iterable[str], message: str, *, identity: tuple[str, str]
    ) -> str:
        """A new unsigned commit of `tree` with `parents`; returns its id."""
        args = ["commit-tree", "--no-gpg-sign"]
        for parent in parents:
            args += ["-p", parent]
        args += ["-F", "-", "--end-of-options", tree]
        return self.output(*args, input=message.encode(), identity=identity)

    def create_ref(self, ref: str, commit: str, *, message: str) -> None:
        """Point `ref` at `commit` only if it does not exist yet; raises `error` if it does."""
        zero = "0" * len(commit)
        self.run("update-ref", "-m", message, "--end-of-options", ref, commit, zero)

    def move_ref(self, ref: str, commit: str, old: str, *, message: str) -> None:
        """Point `ref` at `commit` only if it points at `old` now; raises `error` otherwise."""
        self.run("update-ref", "-m", message, "--end-of-options", ref, commit, old)

    def add_note(self, notes_ref: str, obj: str, text: str, *, identity: tuple[str, str]) -> None:
        """Set the note on `obj` under `notes_ref` to `text`, replacing any earlier one."""
        self.run(
            "notes", "--ref", notes_ref, "add", "-f", "-F", "-", "--end-of-options", obj,
            input=text.encode(), identity=identity,
        )  # fmt: skip

    def note(self, notes_ref: str, obj: str) -> bytes | None:
        """The note on `obj` under `notes_ref`, or None."""
        done = self.run("notes", "--ref", notes_ref, "show", "--end-of-options", obj, check=False)
        return done.stdout if done.returncode == 0 else None

    @classmethod
    def init_bare(
        cls, path: Path, *, initial_branch: str | None = None, **kwargs: Any
    ) -> Repository:
        """Create a bare repository at `path` (if it has none yet) and return it."""
        path = Path(path)
        if not (path / "HEAD").is_file():
            path.mkdir(parents=True, exist_ok=True)
            branch = [f"--initial-branch={initial_branch}"] if initial_branch else []
            cls(None, **kwargs).run("init", "--quiet", "--bare", *branch, str(path.absolute()))
        return cls(path, **kwargs)

    def branch_name_is_valid(self, branch: str) -> bool:
        """Whether git takes `branch` as a branch name, spelled exactly so."""
        done = self.run("check-ref-format", "--branch", branch, check=False)
        return done.returncode == 0 and done.stdout.decode().strip() == branch

    # The forge, over HTTP(S).

    def _url(self, url: str) -> str:
        if self.remote is None or not url.startswith(self.remote.base_url.rstrip("/") + "/"):
            # Only the forge's own URLs: the token's helper and the allowed scheme are its.
            raise self.error(f"git may reach only the configured forge, not {_scrub(url)}")
        return url

    def fetch(self, url: str, refspecs: Iterable[str], *, prune: bool = False, what: str) -> None:
        """Fetch `refspecs` from `url` (of the remote) into this repository, without tags."""
        prune_flag = ["--prune"] if prune else []
        self.run(
            "fetch", "--quiet", *prune_flag, "--no-tags", "--no-write-fetch-head",
            "--end-of-options", self._url(url), *refspecs, what=what,
        )  # fmt: skip

    def push(self, url: str, refspec: str, *, what: str) -> None:
        """Push `refspec` to `url` (of the remote), never forced, no hooks."""
        self.run(
            "push", "--quiet", "--no-verify", "--end-of-options", self._url(url), refspec,
            what=what,
        )  # fmt: skip

    def ls_remote_heads(self, url: str, ref: str, *, what: str) -> str | None:
        """The commit `ref` points at on `url` (of the remote), or None."""
        out = self.output(
            "ls-remote", "--heads", "--end-of-options", self._url(url), ref, what=what
        )
        for line in out.splitlines():
            sha, _, name = line.partition("\t")
            if name == ref:
                return sha
        return None
