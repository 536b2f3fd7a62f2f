"""Run environments: one virtualenv per hash of a project's requirements, built once and reused.

An environment is built in place at ``envs_dir/<key>`` (a virtualenv hard-codes its own path),
under an exclusive lock on ``envs_dir/<key>.lock`` so racing builders build it once, and is
complete only when its ``.secd-complete`` marker exists; the marker is written last. The build
log, one header line per attempt, stays at ``envs_dir/<key>.log``.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import lru_cache
from pathlib import Path

from uv import find_uv_bin

__all__ = [
    "COMPLETE_MARKER",
    "BuildError",
    "Environment",
    "check_requirements",
    "ensure_environment",
    "requirements_key",
]

COMPLETE_MARKER = ".secd-complete"
REQUIREMENTS_COPY = "secd-requirements.txt"
LOG_TAIL_LINES = 40
HEADER_PREFIX = "=== secd build"

_INDEX_ONLY = "list packages from the site's index only"
# Options that point the installer somewhere other than the site's index.
_NAMED_OPTIONS = {
    "-e": "-e",
    "--editable": "-e",
    "-i": "--index-url",
    "--index-url": "--index-url",
    "--extra-index-url": "--extra-index-url",
    "--index": "--index",
    "--default-index": "--default-index",
    "--no-index": "--no-index",
    "-f": "--find-links",
    "--find-links": "--find-links",
    "--trusted-host": "--trusted-host",
    "-r": "-r",
    "--requirement": "-r",
    "-c": "-c",
    "--constraint": "-c",
}
_VCS = re.compile(r"\b(git|hg|svn|bzr)\+", re.IGNORECASE)
# PEP 508 without the URL form: name, extras, version specifiers, then an optional marker.
_NAME = r"[A-Za-z0-9](?:[A-Za-z0-9._-]*[A-Za-z0-9])?"
_EXTRAS = r"(?:\s*\[\s*(?:" + _NAME + r"(?:\s*,\s*" + _NAME + r")*)?\s*\])?"
_SPEC = r"(?:===|~=|==|!=|<=|>=|<|>)\s*[A-Za-z0-9.*+!_-]+"
_SPECS = r"(?:\s*\(?\s*" + _SPEC + r"(?:\s*,\s*" + _SPEC + r")*\s*\)?)?"
_MARKER = r"(?:\s*;[^@]*)?"
_REQUIREMENT = re.compile(_NAME + _EXTRAS + _SPECS + _MARKER)
_HASH_OPTION = re.compile(r"\s--hash[=\s]\s*[A-Za-z0-9]+:[0-9a-fA-F]+")
_COMMENT = re.compile(r"(^|\s)#.*$")


@dataclass(frozen=True)
class Environment:
    """A ready virtualenv: its key, where it is, whether it already existed, its build log."""

    key: str
    path: Path
    reused: bool
    log_path: Path
    seconds: float


class BuildError(Exception):
    """The environment could not be built; message: one line; .log_tail: last lines of the log."""

    def __init__(self, message: str, log_tail: str = "") -> None:
        super().__init__(message)
        self.log_tail = log_tail


def _logical_lines(text: str) -> Iterator[tuple[int, str]]:
    """(first physical line number, line) with continuations joined and comments dropped."""
    pending: list[str] = []
    start = 0
    for number, raw in enumerate(text.splitlines(), 1):
        if not pending:
            start = number
        if raw.endswith("\\"):
            pending.append(raw[:-1])
            continue
        pending.append(raw)
        # Joined without a space, as pip and uv join continued lines.
        line = _COMMENT.sub("", "".join(pending)).strip()
        pending = []
        if line:
            yield start, line
    if pending:
        line = _COMMENT.sub("", "".join(pending)).strip()
        if line:
            yield start, line


def _normalised(requirements: bytes) -> list[str]:
    text = requirements.decode("utf-8", "replace").removeprefix("\ufeff")
    return sorted(" ".join(line.split()) for _, line in _logical_lines(text))


def requirements_key(requirements: bytes, python_version: str) -> str:
    """The environment key: sha256 of the normalised requirements and the Python version."""
    digest = hashlib.sha256()
    digest.update(b"secd-env-v1\0" + python_version.encode() + b"\0")
    digest.update("\n".join(_normalised(requirements)).encode())
    return digest.hexdigest()[:32]


def _refusal(number: int, line: str) -> str | None:
    """Why a requirements line is not a plain requirement specifier, or None if it is one."""
    where = f"requirements.txt line {number}"
    if line.startswith("-"):
        option = re.split(r"[\s=]", line, maxsplit=1)[0]
        if not option.startswith("--"):
            option = option[:2]  # a short option with its value attached, like -rother.txt
        name = _NAMED_OPTIONS.get(option, option)
        return f"{where}: {name!r} is not allowed; {_INDEX_ONLY}"
    if "$" in line:
        return f"{where}: environment variables ('$') are not allowed; {_INDEX_ONLY}"
    if _VCS.search(line):
        return f"{where}: VCS URLs such as 'git+' are not allowed; {_INDEX_ONLY}"
    lowered = line.lower()
    if "file:" in lowered or line.startswith((".", "/", "~")) or "\\" in line:
        return f"{where}: local paths are not allowed; {_INDEX_ONLY}"
    if "://" in line or "@" in line:
        return f"{where}: direct URLs are not allowed; {_INDEX_ONLY}"
    specifier = _HASH_OPTION.sub("", " " + line).strip()
    if re.search(r"\s-", " " + specifier):
        option = re.search(r"\s(-[^\s=]*)", " " + specifier)
        shown = option.group(1) if option else "options"
        return f"{where}: {shown!r} is not allowed after a requirement; {_INDEX_ONLY}"
    if "/" in specifier or lowered.endswith((".whl", ".zip", ".tar.gz", ".tgz")):
        return f"{where}: local paths are not allowed; {_INDEX_ONLY}"
    if not _REQUIREMENT.fullmatch(specifier):
        shown = line if len(line) <= 60 else line[:57] + "..."
        return (
            f"{where}: {shown!r} is not a package requirement; "
            "write one per line, like 'numpy==1.26' or 'pandas>=2'"
        )
    return None


def check_requirements(requirements: bytes) -> list[str]:
    """The requirement lines to install, in file order; raises BuildError for a refused line."""
    try:
        text = requirements.decode("utf-8").removeprefix("\ufeff")
    except UnicodeDecodeError as exc:
        raise BuildError(f"requirements.txt is not UTF-8 text (byte {exc.start})") from None
    lines: list[str] = []
    for number, line in _logical_lines(text):
        reason = _refusal(number, line)
        if reason is not None:
            raise BuildError(reason)
        lines.append(" ".join(line.split()))
    return lines


@lru_cache(maxsize=16)
def _python_identity(python: str) -> str:
    """Implementation, version and machine of an interpreter, e.g. ``cpython-3.11.7-x86_64``."""
    if python == sys.executable:
        impl, version = platform.python_implementation(), platform.python_version()
        return f"{impl.lower()}-{version}-{platform.machine()}"
    probe = (
        "import platform as p; print(p.python_implementation(), p.python_version(), p.machine())"
    )
    try:
        result = subprocess.run(
            [python, "-c", probe], capture_output=True, text=True, timeout=60, check=True
        )
    except (OSError, subprocess.SubprocessError) as exc:
        raise BuildError(f"cannot run the Python interpreter {python!r}: {exc}") from None
    impl, version, machine = result.stdout.split()
    return f"{impl.lower()}-{version}-{machine}"


def _uv_env(envs_dir: Path) -> dict[str, str]:
    # Inherit the machine's environment so its uv index settings (UV_INDEX_URL, ...) still apply.
    env = dict(os.environ)
    for name in ("VIRTUAL_ENV", "CONDA_PREFIX", "UV_PYTHON", "UV_PROJECT_ENVIRONMENT"):
        env.pop(name, None)
    env["UV_CACHE_DIR"] = str(envs_dir / ".uv-cache")
    env["UV_NO_PROGRESS"] = "1"
    env.setdefault("UV_PYTHON_DOWNLOADS", "never")
    # Sites put their own CA in the system store (and often proxy the index); trust that store.
    if "UV_NATIVE_TLS" not in env:
        env.setdefault("UV_SYSTEM_CERTS", "1")
    return env


def _tail(log_path: Path, start: int) -> str:
    with log_path.open("rb") as log:
        log.seek(start)
        data = log.read()
    lines = data.decode("utf-8", "replace").splitlines()
    return "\n".join(lines[-LOG_TAIL_LINES:])


def _summary(tail: str) -> str:
    """The installer's own error, on one line, for the researcher."""
    lines = [line.strip() for line in tail.splitlines() if line.strip()]
    for index, line in enumerate(lines):
        if line.startswith("error:"):
            parts = [line.removeprefix("error:").strip()]
            for follow in lines[index + 1 : index + 3]:
                if follow.startswith(("secd:", "error:", "$ ")):
                    break
                parts.append(follow.removeprefix("cause:").strip())
            text = " ".join(": ".join(parts).split())
            return text if len(text) <= 400 else text[:397] + "..."
    return lines[-1][:400] if lines else "no output"


@contextmanager
def _locked(lock_path: Path, timeout_s: float) -> Iterator[None]:
    with lock_path.open("a") as lock:
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                # Another builder has it; its own timeout bounds how long that takes.
                if time.monotonic() >= deadline:
                    raise BuildError(
                        f"timed out after {timeout_s:g} s waiting for another build of "
                        "the same environment"
                    ) from None
                time.sleep(0.05)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def _complete(path: Path) -> bool:
    return (path / COMPLETE_MARKER).is_file() and (path / "bin" / "python").exists()


def _build(
    uv: str,
    python: str,
    identity: str,
    lines: list[str],
    path: Path,
    log_path: Path,
    env: dict[str, str],
    timeout_s: float,
    key: str,
    allow_source_builds: bool,
) -> None:
    deadline = time.monotonic() + timeout_s
    with log_path.open("ab") as log:
        start = log.tell()
        stamp = datetime.now(UTC).isoformat(timespec="seconds")
        header = (
            f"{HEADER_PREFIX} {key} at {stamp} pid {os.getpid()} python {identity} "
            f"({len(lines)} requirements) ===\n"
        )
        log.write(header.encode())
        log.flush()

        def step(argv: list[str], what: str) -> None:
            log.write(f"$ {' '.join(argv)}\n".encode())
            log.flush()
            remaining = deadline - time.monotonic()
            try:
                if remaining <= 0:
                    raise subprocess.TimeoutExpired(argv, timeout_s)
                result = subprocess.run(
                    argv,
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    env=env,
                    cwd=path.parent,
                    timeout=remaining,
                    check=False,
                )
            except subprocess.TimeoutExpired:
                log.write(f"secd: timed out after {timeout_s:g} s\n".encode())
                log.flush()
                raise BuildError(
                    f"building the environment took longer than {timeout_s:g} s",
                    _tail(log_path, start),
                ) from None
            if result.returncode != 0:
                log.write(f"secd: {what} failed with exit code {result.returncode}\n".encode())
                log.flush()
                tail = _tail(log_path, start)
                raise BuildError(f"{what} failed: {_summary(tail)}", tail)

        # Relocatable: the executor unpacks it into a folder of its own (secd_builder.venv).
        step(
            [uv, "venv", "--no-project", "--relocatable", "--python", python, str(path)],
            "creating the virtualenv",
        )
        if lines:
            requirements = path / REQUIREMENTS_COPY
            # Install exactly the lines that were checked, not the file as the researcher wrote it.
            requirements.write_text("\n".join(lines) + "\n")
            step(
                [
                    uv,
                    "pip",
                    "install",
                    "--python",
                    str(path / "bin" / "python"),
                    "-r",
                    str(requirements),
                    # Building an sdist runs its setup.py here, outside any sandbox: wheels only
                    # unless the operator accepts that.
                    *([] if allow_source_builds else ["--no-build"]),
                ],
                "installing requirements.txt",
            )
        log.write(b"secd: environment complete\n")
    marker = path / COMPLETE_MARKER
    partial = path / (COMPLETE_MARKER + ".tmp")
    partial.write_text(json.dumps({"key": key, "python": identity, "requirements": lines}) + "\n")
    partial.rename(marker)


def ensure_environment(
    requirements: bytes,
    envs_dir: Path,
    *,
    python: str = sys.executable,
    timeout_s: float = 900,
    allow_source_builds: bool = False,
) -> Environment:
    """The environment for these requirements: reused if complete, else built; BuildError."""
    started = time.monotonic()
    lines = check_requirements(requirements)
    envs_dir = Path(envs_dir).absolute()
    envs_dir.mkdir(parents=True, exist_ok=True)
    identity = _python_identity(python)
    key = requirements_key(requirements, identity)
    path = envs_dir / key
    log_path = envs_dir / f"{key}.log"

    def result(reused: bool) -> Environment:
        seconds = time.monotonic() - started
        return Environment(key=key, path=path, reused=reused, log_path=log_path, seconds=seconds)

    if _complete(path):
        return result(reused=True)
    with _locked(envs_dir / f"{key}.lock", timeout_s):
        if _complete(path):
            return result(reused=True)
        if path.exists() or path.is_symlink():
            # A crash mid-build left it; the marker is missing, so nothing uses it.
            _remove(path)
        try:
            _build(
                find_uv_bin(),
                python,
                identity,
                lines,
                path,
                log_path,
                _uv_env(envs_dir),
                timeout_s,
                key,
                allow_source_builds,
            )
        except BaseException:
            _remove(path)
            raise
    return result(reused=False)


def _remove(path: Path) -> None:
    if path.is_symlink() or path.is_file():
        path.unlink()
    else:
        shutil.rmtree(path, ignore_errors=True)
