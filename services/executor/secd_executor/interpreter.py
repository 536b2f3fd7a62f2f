"""The Python a run environment was made from, and the least of it a sandbox must mount.

A virtualenv holds only its own packages; its `python` is a link to a base installation, whose
standard library and libpython the job needs too. The base installation's own packages (the
operator's site-packages, tens of thousands of files) are information about the host and more
than a job needs, so they are never mounted: the sandbox hides them under an empty folder.
"""

from __future__ import annotations

import os
import posixpath
from dataclasses import dataclass, field
from pathlib import Path

__all__ = ["Interpreter", "interpreter", "overlaps"]


def overlaps(a: str, b: str) -> bool:
    """Whether one path is equal to or inside the other."""
    # "/" strips to "", which prefixes every absolute path: the root overlaps everything.
    a, b = a.rstrip("/"), b.rstrip("/")
    return a == b or a.startswith(b + "/") or b.startswith(a + "/")


_SYSTEM = ("/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32")


def _is_system(path: str) -> bool:
    return any(overlaps(path, top) for top in _SYSTEM)


@dataclass
class Interpreter:
    """What of the base Python installation a venv needs, and what of it to hide."""

    files: list[str] = field(default_factory=list)
    dirs: list[str] = field(default_factory=list)
    links: list[tuple[str, str]] = field(default_factory=list)
    hidden: list[str] = field(default_factory=list)


def _pyvenv(env_dir: Path) -> dict[str, str]:
    cfg = env_dir / "pyvenv.cfg"
    try:
        lines = cfg.read_text().splitlines()
    except OSError as exc:
        raise ValueError(f"{env_dir} is not a virtualenv: {exc}") from exc
    values = {}
    for line in lines:
        key, sep, value = line.partition("=")
        if sep:
            values[key.strip()] = value.strip()
    if "home" not in values:
        raise ValueError(f"{cfg} has no home = line")
    return values


def interpreter(env_dir: Path) -> Interpreter:
    """The interpreter the venv was made from: its executable, standard library and libpython.

    Only these are mounted, never the installation's own site-packages (the operator's
    packages: more than a job needs, and information about the host).
    """
    cfg = _pyvenv(env_dir)
    version = cfg.get("version_info") or cfg.get("version") or ""
    major_minor = ".".join(version.split(".")[:2])
    if not major_minor.replace(".", "").isdigit():
        raise ValueError(f"{env_dir}/pyvenv.cfg names no Python version")
    home = Path(cfg["home"])
    prefix = str(home.parent)
    if prefix == "/":
        raise ValueError(f"{env_dir}/pyvenv.cfg points at / as its Python installation")
    found = Interpreter()
    env = str(env_dir)
    # The venv's python is a chain of links ending in the base executable; recreate the links
    # that lie outside the venv and bind the file at the end.
    path = f"{env}/bin/python"
    for _ in range(16):
        if _is_system(path):
            break
        if os.path.islink(path):
            target = os.readlink(path)
            if not overlaps(path, env):
                found.links.append((target, path))
            path = posixpath.normpath(posixpath.join(posixpath.dirname(path), target))
            continue
        if os.path.isfile(path) and not overlaps(path, env):
            found.files.append(path)
        break
    stdlib = f"{prefix}/lib/python{major_minor}"
    system_python = _is_system(prefix)
    if not system_python:
        if not os.path.isfile(f"{stdlib}/os.py"):
            raise ValueError(f"{stdlib} is not the standard library the venv was made from")
        found.dirs.append(stdlib)
        lib = Path(prefix, "lib")
        for shared in sorted(lib.glob(f"libpython{major_minor}*.so*")):
            if shared.is_symlink():
                found.links.append((os.readlink(shared), str(shared)))
            elif shared.is_file():
                found.files.append(str(shared))
    hide = [f"{stdlib}/site-packages", f"{stdlib}/dist-packages"]
    if system_python:
        # Debian's and the local administrator's packages for the system Python.
        hide += [
            "/usr/lib/python3/dist-packages",
            f"/usr/local/lib/python{major_minor}/dist-packages",
            f"/usr/local/lib/python{major_minor}/site-packages",
        ]
    found.hidden = [p for p in hide if os.path.isdir(p) and not os.path.islink(p)]
    return found
