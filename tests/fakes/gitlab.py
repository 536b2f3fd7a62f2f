"""FakeGitLab: answers like GitLab's REST API v4 for what secd uses, and serves repositories over
real git smart HTTP (`git http-backend` as CGI), both only with a token.

It is a fake: it implements the documented request and response shapes secd relies on (users,
their identities and GPG keys, projects, a commit's signature status, commit statuses with
GitLab's state machine, system/push hooks) and nothing else. Signature statuses come from real
`gpg` over the keys users registered here, with GitLab's rule that the committer's e-mail must
belong to the key's owner.
"""

from __future__ import annotations

import base64
import hmac
import itertools
import json
import os
import queue
import re
import secrets
import shutil
import subprocess
import tempfile
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from urllib.parse import unquote

from tests.fakes.server import FakeHTTPServer, Reply, Request

__all__ = ["FakeGitLab", "FakeProject", "FakeUser"]

_GIT_PATH = re.compile(
    r"^/(?P<repo>.+?\.git)/(?P<rest>info/refs|git-upload-pack|git-receive-pack)$"
)
_ZERO = "0" * 40
_GIT_ENV = {
    "PATH": os.environ["PATH"],
    "HOME": os.devnull,
    "GIT_CONFIG_NOSYSTEM": "1",
    "GIT_CONFIG_GLOBAL": os.devnull,
    "LC_ALL": "C",
}


@dataclass
class FakeUser:
    """A GitLab user: its own token (for git over HTTP), e-mails, identities and GPG keys."""

    id: int
    username: str
    name: str
    emails: list[str]
    token: str
    admin: bool = False
    identities: list[dict] = field(default_factory=list)
    gpg_keys: list[dict] = field(default_factory=list)

    def as_json(self, *, admin_view: bool) -> dict:
        """The user as GET /users/:id shows it (identities only to administrators)."""
        data = {
            "id": self.id,
            "username": self.username,
            "name": self.name,
            "state": "active",
            "web_url": f"https://gitlab.example.org/{self.username}",
        }
        if admin_view:
            data["identities"] = [
                {"provider": i["provider"], "extern_uid": i["extern_uid"], "saml_provider_id": None}
                for i in self.identities
            ]
            data["email"] = self.emails[0]
        return data


@dataclass
class FakeProject:
    """A project and its bare repository."""

    id: int
    path: str
    repo: Path


class FakeGitLab(FakeHTTPServer):
    """A GitLab API v4 and git smart HTTP fake on 127.0.0.1 (see the module docstring)."""

    def __init__(self, root: Path) -> None:
        """Repositories live under root/repos; gpg's keyring for signature checks in a temp dir."""
        super().__init__()
        self.root = Path(root)
        (self.root / "repos").mkdir(parents=True, exist_ok=True)
        self._ids = itertools.count(1)
        self.users: dict[int, FakeUser] = {}
        self.projects: dict[int, FakeProject] = {}
        self.statuses: dict[tuple[int, str], list[dict]] = {}
        # Every status change GitLab accepted, in order: (sha, state, description).
        self.status_history: list[tuple[str, str, str | None]] = []
        self.system_hooks: list[tuple[str, str]] = []
        self.hook_format = "system"
        self.deliveries: list[dict] = []
        self._outbox: queue.Queue = queue.Queue()
        self._lock = threading.RLock()
        self._gnupg = Path(tempfile.mkdtemp(prefix="fake-gitlab-gnupg-"))
        self._gnupg.chmod(0o700)
        self._write_gpg_conf()
        self.service = self.add_user("secd-bot", "secd", "secd@example.org", admin=True)
        self.admin_token = self.service.token
        threading.Thread(target=self._deliver_hooks, daemon=True).start()

    # ---- set-up, as an administrator would do it in the UI ---------------------------------
    def add_user(self, username: str, name: str, email: str, *, admin: bool = False) -> FakeUser:
        """A user with a fresh personal access token."""
        user = FakeUser(
            next(self._ids), username, name, [email], f"glpat-{secrets.token_urlsafe(20)}", admin
        )
        self.users[user.id] = user
        return user

    def add_identity(self, user: FakeUser, provider: str, extern_uid: str) -> None:
        """Link a user to an external login (as an OmniAuth sign-in would)."""
        user.identities.append({"provider": provider, "extern_uid": extern_uid})

    def add_gpg_key(self, user: FakeUser, armor: str) -> int:
        """Register a public key to a user (POST /user/gpg_keys)."""
        key_id = next(self._ids)
        user.gpg_keys.append({"id": key_id, "key": armor, "created_at": _now()})
        self._rebuild_keyring()
        return key_id

    def remove_gpg_keys(self, user: FakeUser) -> None:
        """Remove every key of a user."""
        user.gpg_keys.clear()
        self._rebuild_keyring()

    def add_project(self, path: str) -> FakeProject:
        """A project with an empty bare repository, served at <url>/<path>.git."""
        repo = self.root / "repos" / f"{path}.git"
        repo.parent.mkdir(parents=True, exist_ok=True)
        subprocess.run(
            ["git", "init", "--quiet", "--bare", "--initial-branch=main", str(repo)],
            env=_GIT_ENV,
            check=True,
        )
        # Gitaly lets clients fetch any commit it has by id.
        subprocess.run(
            ["git", "--git-dir", str(repo), "config", "uploadpack.allowAnySHA1InWant", "true"],
            env=_GIT_ENV,
            check=True,
        )
        project = FakeProject(next(self._ids), path, repo)
        self.projects[project.id] = project
        return project

    def add_system_hook(self, url: str, secret_token: str) -> None:
        """Admin area > System hooks: POST every push to url with X-Gitlab-Token."""
        self.system_hooks.append((url, secret_token))

    def clone_url(self, project: FakeProject) -> str:
        """The HTTP clone URL (without credentials, as GitLab shows it)."""
        return f"{self.url}/{project.path}.git"

    def wait_deliveries(self, count: int, timeout: float = 20.0) -> list[dict]:
        """Wait until `count` hooks were delivered; returns them all."""
        deadline = time.monotonic() + timeout
        while len(self.deliveries) < count:
            assert time.monotonic() < deadline, f"only {len(self.deliveries)} hook(s) delivered"
            time.sleep(0.02)
        return list(self.deliveries)

    def latest_status(self, project: FakeProject, sha: str, name: str = "secd") -> dict | None:
        """The newest commit status of that name on a commit."""
        found = [s for s in self.statuses.get((project.id, sha), []) if s["name"] == name]
        return found[-1] if found else None

    def stop(self) -> None:
        """Stop serving and remove gpg's temporary keyring."""
        super().stop()
        self._outbox.put(None)
        shutil.rmtree(self._gnupg, ignore_errors=True)

    # ---- HTTP -------------------------------------------------------------------------------
    def handle(self, request: Request) -> Reply:
        """Route to git smart HTTP or the API."""
        git = _GIT_PATH.match(request.path)
        if git:
            return self._git_http(request, git["repo"], git["rest"])
        if request.path.startswith("/api/v4/"):
            user = self._api_user(request)
            if user is None:
                return Reply.json(401, {"message": "401 Unauthorized"})
            parts = [unquote(p) for p in request.path[len("/api/v4/") :].split("/")]
            return self._api(request, user, parts)
        return Reply.json(404, {"error": "404 Not Found"})

    def _api_user(self, request: Request) -> FakeUser | None:
        token = request.headers.get("private-token", "")
        bearer = request.headers.get("authorization", "")
        if bearer.lower().startswith("bearer "):
            token = bearer[7:]
        return self._user_by_token(token)

    def _user_by_token(self, token: str) -> FakeUser | None:
        for user in self.users.values():
            if token and hmac.compare_digest(token.encode(), user.token.encode()):
                return user
        return None

    def _api(self, request: Request, me: FakeUser, parts: list[str]) -> Reply:
        match (request.method, parts):
            case ("GET", ["user"]):
                return Reply.json(200, me.as_json(admin_view=me.admin))
            case ("GET", ["users"]):
                wanted = (request.arg("username") or "").lower()
                found = [u for u in self.users.values() if u.username.lower() == wanted]
                return Reply.json(200, [u.as_json(admin_view=me.admin) for u in found])
            case ("GET", ["users", user_id]):
                user = self._user(user_id)
                if user is None:
                    return Reply.json(404, {"message": "404 User Not Found"})
                return Reply.json(200, user.as_json(admin_view=me.admin))
            case ("GET", ["users", user_id, "gpg_keys"]):
                user = self._user(user_id)
                if user is None:
                    return Reply.json(404, {"message": "404 User Not Found"})
                return Reply.json(200, list(user.gpg_keys))
            case ("GET", ["projects", project_id]):
                project = self._project(project_id)
                if project is None:
                    return Reply.json(404, {"message": "404 Project Not Found"})
                return Reply.json(200, self._project_json(project))
            case ("GET", ["projects", project_id, "repository", "commits", sha, "signature"]):
                project = self._project(project_id)
                if project is None:
                    return Reply.json(404, {"message": "404 Project Not Found"})
                return self._signature(project, sha)
            case ("GET", ["projects", project_id, "repository", "commits", sha, "statuses"]):
                project = self._project(project_id)
                if project is None:
                    return Reply.json(404, {"message": "404 Project Not Found"})
                return self._list_statuses(project, sha, request)
            case ("POST", ["projects", project_id, "statuses", sha]):
                project = self._project(project_id)
                if project is None:
                    return Reply.json(404, {"message": "404 Project Not Found"})
                return self._set_status(project, sha, request.json(), me)
        return Reply.json(404, {"error": "404 Not Found"})

    def _user(self, user_id: str) -> FakeUser | None:
        return self.users.get(int(user_id)) if user_id.isdigit() else None

    def _project(self, project_id: str) -> FakeProject | None:
        if project_id.isdigit():
            return self.projects.get(int(project_id))
        return next((p for p in self.projects.values() if p.path == project_id), None)

    def _project_json(self, project: FakeProject) -> dict:
        return {
            "id": project.id,
            "name": project.path.rsplit("/", 1)[-1],
            "path_with_namespace": project.path,
            "default_branch": "main",
            "http_url_to_repo": self.clone_url(project),
            "web_url": f"{self.url}/{project.path}",
        }

    # ---- commit statuses: GitLab's state machine ---------------------------------------------
    _EVENTS = {
        "pending": "enqueue",
        "running": "run",
        "success": "success",
        "failed": "drop",
        "canceled": "cancel",
    }
    _FROM = {
        "pending": {"created"},
        "running": {"pending"},
        "success": {"created", "pending", "running"},
        "failed": {"created", "pending", "running"},
        "canceled": {"created", "pending", "running"},
    }

    def _set_status(self, project: FakeProject, sha: str, params: dict, me: FakeUser) -> Reply:
        state = params.get("state")
        if state not in self._EVENTS:
            return Reply.json(400, {"error": "state does not have a valid value"})
        if not self._has_commit(project, sha):
            return Reply.json(404, {"message": "404 References for commit Not Found"})
        name = params.get("name") or params.get("context") or "default"
        with self._lock:
            records = self.statuses.setdefault((project.id, sha), [])
            open_one = next(
                (
                    r
                    for r in reversed(records)
                    if r["name"] == name and r["status"] in ("pending", "running")
                ),
                None,
            )
            record = open_one or {
                "id": next(self._ids),
                "sha": sha,
                "ref": params.get("ref") or "main",
                "status": "created",
                "name": name,
                "description": None,
                "target_url": None,
                "created_at": _now(),
                "author": {"id": me.id, "username": me.username},
                "allow_failure": False,
            }
            current = record["status"]
            # `running` enqueues first (created -> pending), as GitLab's service does.
            if state == "running" and current == "created":
                current = "pending"
            if current not in self._FROM[state]:
                event = self._EVENTS[state]
                return Reply.json(
                    400,
                    {
                        "message": f"Cannot transition status via :{event} from :{current} "
                        f'(Reason(s): Status cannot transition via "{event}")'
                    },
                )
            record.update(
                status=state,
                description=params.get("description", record["description"]),
                target_url=params.get("target_url", record["target_url"]),
            )
            if open_one is None:
                records.append(record)
            self.status_history.append((sha, state, record["description"]))
            return Reply.json(201, dict(record))

    def _list_statuses(self, project: FakeProject, sha: str, request: Request) -> Reply:
        records = list(self.statuses.get((project.id, sha), []))
        if request.arg("all") not in ("true", "1"):
            latest: dict[str, dict] = {}
            for record in records:
                latest[record["name"]] = record
            records = list(latest.values())
        return Reply.json(200, records)

    # ---- signatures: real gpg, GitLab's e-mail rule -----------------------------------------
    def _write_gpg_conf(self) -> None:
        # Verifying needs no agent; starting one (and waiting for it) costs seconds.
        (self._gnupg / "gpg.conf").write_text("no-autostart\n")

    def _rebuild_keyring(self) -> None:
        with self._lock:
            for item in self._gnupg.iterdir():
                if item.is_dir():
                    shutil.rmtree(item)
                else:
                    item.unlink()
            self._write_gpg_conf()
            armor = "\n".join(k["key"] for u in self.users.values() for k in u.gpg_keys)
            if armor:
                subprocess.run(
                    ["gpg", "--batch", "--quiet", "--import"],
                    input=armor.encode(),
                    env={**_GIT_ENV, "GNUPGHOME": str(self._gnupg)},
                    capture_output=True,
                    check=False,
                )

    def _signature(self, project: FakeProject, sha: str) -> Reply:
        if not self._has_commit(project, sha):
            return Reply.json(404, {"message": "404 Commit Not Found"})
        with self._lock:
            done = subprocess.run(
                ["git", "--git-dir", str(project.repo), "verify-commit", "--raw", sha],
                env={**_GIT_ENV, "GNUPGHOME": str(self._gnupg)},
                capture_output=True,
                text=True,
                check=False,
            )
        lines = [line.split() for line in done.stderr.splitlines() if line.startswith("[GNUPG:]")]
        if not lines:
            return Reply.json(404, {"message": "404 GPG Signature Not Found"})
        status = {line[1]: line[2:] for line in lines if len(line) > 1}
        keyid = next(
            (
                status[s][0]
                for s in ("GOODSIG", "EXPKEYSIG", "REVKEYSIG", "BADSIG", "ERRSIG")
                if s in status
            ),
            "",
        )
        answer = {
            "signature_type": "PGP",
            "verification_status": "unverified",
            "gpg_key_id": None,
            "gpg_key_primary_keyid": keyid[-16:],
            "gpg_key_user_name": None,
            "gpg_key_user_email": None,
            "gpg_key_subkey_id": None,
            "commit_source": "gitaly",
        }
        if "ERRSIG" in status:
            answer["verification_status"] = "unknown_key"
        elif "GOODSIG" in status and "VALIDSIG" in status:
            primary = status["VALIDSIG"][-1]
            owner, key = self._key_owner(primary)
            email = subprocess.run(
                ["git", "--git-dir", str(project.repo), "log", "-1", "--format=%ce", sha],
                env=_GIT_ENV,
                capture_output=True,
                text=True,
                check=True,
            ).stdout.strip()
            if owner is None or key is None:
                answer["verification_status"] = "unknown_key"
            else:
                uids = self._key_emails(primary)
                answer.update(
                    gpg_key_id=key["id"],
                    gpg_key_primary_keyid=primary[-16:],
                    gpg_key_user_name=owner.name,
                    gpg_key_user_email=owner.emails[0],
                )
                committer = next((u for u in self.users.values() if email in u.emails), None)
                if committer is owner and email in uids:
                    answer["verification_status"] = "verified"
                elif committer is owner:
                    answer["verification_status"] = "same_user_different_email"
                elif committer is not None:
                    answer["verification_status"] = "other_user"
        return Reply.json(200, answer)

    def _key_owner(self, primary_fpr: str) -> tuple[FakeUser | None, dict | None]:
        for user in self.users.values():
            for key in user.gpg_keys:
                if primary_fpr in self._fingerprints(key["key"]):
                    return user, key
        return None, None

    def _fingerprints(self, armor: str) -> set[str]:
        done = subprocess.run(
            ["gpg", "--batch", "--with-colons", "--show-keys"],
            input=armor,
            env={**_GIT_ENV, "GNUPGHOME": str(self._gnupg)},
            capture_output=True,
            text=True,
            check=False,
        )
        return {line.split(":")[9] for line in done.stdout.splitlines() if line.startswith("fpr:")}

    def _key_emails(self, primary_fpr: str) -> set[str]:
        done = subprocess.run(
            ["gpg", "--batch", "--with-colons", "--list-keys", primary_fpr],
            env={**_GIT_ENV, "GNUPGHOME": str(self._gnupg)},
            capture_output=True,
            text=True,
            check=False,
        )
        found = re.findall(
            r"<([^>]+)>",
            "\n".join(line for line in done.stdout.splitlines() if line.startswith("uid:")),
        )
        return set(found)

    def _has_commit(self, project: FakeProject, sha: str) -> bool:
        if not re.fullmatch(r"[0-9a-f]{40}", sha):
            return False
        return (
            subprocess.run(
                ["git", "--git-dir", str(project.repo), "cat-file", "-e", f"{sha}^{{commit}}"],
                env=_GIT_ENV,
                capture_output=True,
                check=False,
            ).returncode
            == 0
        )

    # ---- git smart HTTP ---------------------------------------------------------------------
    def _git_http(self, request: Request, repo: str, rest: str) -> Reply:
        user = self._git_user(request)
        if user is None:
            return Reply(
                401,
                b"HTTP Basic: Access denied\n",
                {"WWW-Authenticate": 'Basic realm="GitLab"', "Content-Type": "text/plain"},
            )
        project = next((p for p in self.projects.values() if f"{p.path}.git" == repo), None)
        if project is None:
            return Reply(404, b"The project you were looking for could not be found.\n")
        pushing = rest == "git-receive-pack"
        before = self._refs(project) if pushing else {}
        env = {
            **_GIT_ENV,
            "GIT_PROJECT_ROOT": str(self.root / "repos"),
            "GIT_HTTP_EXPORT_ALL": "1",
            "PATH_INFO": request.path,
            "QUERY_STRING": "&".join(f"{k}={v[0]}" for k, v in request.query.items()),
            "REQUEST_METHOD": request.method,
            "CONTENT_TYPE": request.headers.get("content-type", ""),
            "CONTENT_LENGTH": str(len(request.body)),
            "REMOTE_USER": user.username,
            "REMOTE_ADDR": "127.0.0.1",
        }
        if "content-encoding" in request.headers:
            env["HTTP_CONTENT_ENCODING"] = request.headers["content-encoding"]
        if "git-protocol" in request.headers:
            env["GIT_PROTOCOL"] = request.headers["git-protocol"]
        done = subprocess.run(
            ["git", "-c", "http.receivepack=true", "http-backend"],
            input=request.body,
            env=env,
            capture_output=True,
            check=False,
        )
        head, _, body = done.stdout.partition(b"\r\n\r\n")
        status, headers = 200, {}
        for line in head.decode("latin-1").split("\r\n"):
            name, _, value = line.partition(":")
            if name.lower() == "status":
                status = int(value.split()[0])
            elif name:
                headers[name] = value.strip()
        if pushing:
            after = self._refs(project)
            for ref in sorted(set(before) | set(after)):
                old, new = before.get(ref, _ZERO), after.get(ref, _ZERO)
                if old != new:
                    # GitLab picks the hooks to call when the push happens.
                    self._outbox.put((list(self.system_hooks), project, user, ref, old, new))
        return Reply(status, body, headers)

    def _git_user(self, request: Request) -> FakeUser | None:
        auth = request.headers.get("authorization", "")
        if not auth.lower().startswith("basic "):
            return None
        try:
            _name, _, password = base64.b64decode(auth[6:]).decode().partition(":")
        except ValueError:
            return None
        return self._user_by_token(password)

    def _refs(self, project: FakeProject) -> dict[str, str]:
        out = subprocess.run(
            [
                "git",
                "--git-dir",
                str(project.repo),
                "for-each-ref",
                "--format=%(objectname) %(refname)",
            ],
            env=_GIT_ENV,
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        return {name: sha for sha, name in (line.split(" ", 1) for line in out.splitlines())}

    # ---- hooks ------------------------------------------------------------------------------
    def hook_body(self, project: FakeProject, user: FakeUser, ref: str, old: str, new: str) -> dict:
        """The push event body: system hooks list no commits, project push hooks up to 20."""
        commits: list[dict] = []
        total = 0
        if new != _ZERO:
            span = new if old == _ZERO else f"{old}..{new}"
            listed = subprocess.run(
                ["git", "--git-dir", str(project.repo), "rev-list", span],
                env=_GIT_ENV,
                capture_output=True,
                text=True,
                check=False,
            ).stdout.split()
            total = len(listed)
            if self.hook_format == "push":
                commits = [{"id": sha, "message": "(not read by secd)"} for sha in listed[:20]]
        return {
            "object_kind": "push",
            "event_name": "push",
            "before": old,
            "after": new,
            "ref": ref,
            "checkout_sha": None if new == _ZERO else new,
            "user_id": user.id,
            "user_name": user.name,
            "user_username": user.username,
            "user_email": "",
            "project_id": project.id,
            "project": self._project_json(project),
            "commits": commits,
            "total_commits_count": total,
            "repository": {"name": project.path.rsplit("/", 1)[-1]},
        }

    def _deliver_hooks(self) -> None:
        while True:
            item = self._outbox.get()
            if item is None:
                return
            hooks, *push = item
            body = json.dumps(self.hook_body(*push)).encode()
            event = "System Hook" if self.hook_format == "system" else "Push Hook"
            for url, secret in hooks:
                request = urllib.request.Request(  # noqa: S310 - the hook URL an admin set
                    url,
                    data=body,
                    method="POST",
                    headers={
                        "Content-Type": "application/json",
                        "X-Gitlab-Event": event,
                        "X-Gitlab-Token": secret,
                    },
                )
                try:
                    with urllib.request.urlopen(request, timeout=10) as response:  # noqa: S310
                        code, answer = response.status, response.read()
                except urllib.error.HTTPError as exc:
                    code, answer = exc.code, exc.read()
                except OSError as exc:
                    code, answer = 0, str(exc).encode()
                self.deliveries.append({"url": url, "status": code, "answer": answer, "body": body})


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
