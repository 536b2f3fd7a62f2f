"""The researcher's project (which code is theirs) and the libraries it uses (which versions).

The cache key follows code only inside the project; everything outside it counts by the version of
the library it comes from, so an edit to the researcher's helper invalidates the cache and an
installed package does so only when its version changes.
"""

from __future__ import annotations

import functools
import importlib.metadata
import os
import sys
from pathlib import Path

import xxhash

__all__ = ["Project", "current_project", "library_version", "output_path", "project_root"]

PROJECT_ROOT_ENV = "SECD_PROJECT_ROOT"
OUTPUT_PATH_ENV = "OUTPUT_PATH"
LOCAL_OUTPUT = "output"

# Directories whose modules are installed packages even when they sit inside the project folder.
_INSTALLED_PARTS = frozenset({"site-packages", "dist-packages"})


_projects: dict[tuple[str | None, ...], Project] = {}


def current_project(explicit: str | os.PathLike | None = None) -> Project:
    """The Project for an explicit root, else for project_root() (memoised per situation)."""
    configured = explicit or os.environ.get(PROJECT_ROOT_ENV)
    if configured:
        situation: tuple[str | None, ...] = (os.fspath(configured), os.getcwd())
    else:
        main_file = getattr(sys.modules.get("__main__"), "__file__", None)
        situation = (None, os.getcwd(), main_file)
    project = _projects.get(situation)
    if project is None:
        root = Path(configured) if configured else project_root()
        project = _projects[situation] = Project(root)
    return project


def project_root() -> Path:
    """The project's folder: $SECD_PROJECT_ROOT, else the working directory or the main script's."""
    configured = os.environ.get(PROJECT_ROOT_ENV)
    if configured:
        return Path(configured).resolve()
    cwd = Path.cwd().resolve()
    main_file = getattr(sys.modules.get("__main__"), "__file__", None)
    if main_file:
        script_dir = Path(main_file).resolve().parent
        # `python src/main.py` from the project folder: the folder, not src/, holds the helpers.
        if script_dir == cwd or cwd in script_dir.parents:
            return cwd
        return script_dir
    return cwd


def output_path() -> Path:
    """Where results go: $OUTPUT_PATH in a secd run, else ./output in the project (created)."""
    configured = os.environ.get(OUTPUT_PATH_ENV)
    if configured:
        path = Path(configured)
    elif os.environ.get("SECD") == "PRODUCTION":
        raise RuntimeError(
            "secd.output_path: SECD=PRODUCTION but OUTPUT_PATH is not set; "
            "results would be lost, so this run cannot write them (report this to your secd site)"
        )
    else:
        path = project_root() / LOCAL_OUTPUT
    path.mkdir(parents=True, exist_ok=True)
    return path


class Project:
    """The files under one root that are the researcher's own code."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root).resolve()
        self._root_prefix = str(self.root).rstrip(os.sep) + os.sep
        prefixes = {sys.prefix, sys.base_prefix, sys.exec_prefix, sys.base_exec_prefix}
        # An interpreter or virtualenv inside the project folder is still not the project.
        self._installed_prefixes = tuple(
            str(Path(p).resolve()).rstrip(os.sep) + os.sep
            for p in prefixes
            if p and str(Path(p).resolve()) != str(self.root)
        )
        self._verdicts: dict[str, bool] = {}

    def contains_file(self, filename: str | None) -> bool:
        """Whether a source file (a code object's co_filename, a module's __file__) is ours."""
        if not filename:
            return False
        verdict = self._verdicts.get(filename)
        if verdict is None:
            verdict = self._judge(filename)
            self._verdicts[filename] = verdict
        return verdict

    def _judge(self, filename: str) -> bool:
        if filename.startswith("<"):  # "<string>", "<stdin>": no file on disk
            return False
        try:
            path = os.path.realpath(filename)
        except (OSError, ValueError):
            return False
        if not path.startswith(self._root_prefix):
            return False
        if any(path.startswith(prefix) for prefix in self._installed_prefixes):
            return False
        relative = path[len(self._root_prefix) :].split(os.sep)
        return not _INSTALLED_PARTS.intersection(relative)

    def contains_module(self, module: object) -> bool:
        """Whether a module object is one of the project's own modules."""
        name = getattr(module, "__name__", None)
        filename = getattr(module, "__file__", None)
        if name == "__main__" and not filename:
            return True  # a notebook or REPL: what the researcher typed is their project
        return self.contains_file(filename)

    def contains_module_name(self, name: str | None) -> bool:
        """Whether the module of that name (as in `obj.__module__`) is one of the project's."""
        if not name:
            return False
        module = sys.modules.get(name)
        return module is not None and self.contains_module(module)


@functools.cache
def _top_level_distributions() -> dict[str, list[str]]:
    return importlib.metadata.packages_distributions()


@functools.cache
def library_version(top_level: str) -> str | None:
    """What identifies the installed library `top_level` ("numpy==2.1.0"); None for stdlib.

    A module that no distribution installed (a folder on sys.path outside the project) is
    identified by its source's hash, so an edit there still invalidates.
    """
    if top_level in ("builtins", "__main__") or top_level in sys.stdlib_module_names:
        return None
    names = sorted(set(_top_level_distributions().get(top_level, ())))
    pins = []
    for name in names:
        try:
            pins.append(f"{name}=={importlib.metadata.version(name)}")
        except importlib.metadata.PackageNotFoundError:
            continue
    if pins:
        return ",".join(pins)
    module = sys.modules.get(top_level)
    return _source_digest(module) if module is not None else f"{top_level}==unknown"


def _source_digest(module: object) -> str:
    """A hash of a module's (or a package's) Python source files."""
    name = getattr(module, "__name__", "?")
    filename = getattr(module, "__file__", None)
    if not filename:
        return f"{name}==builtin"
    digest = xxhash.xxh3_128()
    paths = [Path(filename)]
    if Path(filename).name == "__init__.py":
        paths = sorted(Path(filename).parent.rglob("*.py"))
    for path in paths:
        try:
            digest.update(str(path).encode("utf-8", "surrogatepass"))
            digest.update(path.read_bytes())
        except OSError:
            continue
    return f"{name}@source:{digest.hexdigest()}"
