"""The researcher's `secd.yml`: parsed, checked field by field, and turned into a RunSpec.

Every refusal is one line that names the field and says what to write instead, because the
researcher reads it in a failed-run branch, far from this code.
"""

from __future__ import annotations

import difflib
import math
import re
import shlex
from typing import Any

import yaml

from secd_shared.events import OUTPUT_KINDS, DeclaredOutput, RunSpec
from secd_shared.limits import Limits, LimitsConfig, parse_requested
from secd_shared.outputs import MAX_OUTPUTS, check_glob

__all__ = ["KEYS", "RESERVED_MOUNTS", "SpecError", "parse_spec"]

KEYS: tuple[str, ...] = (
    "runfor",
    "gpu",
    "cache_dir",
    "mount_path",
    "command",
    "database",
    "limits",
    "outputs",
    "replay",
)

# The sandbox's own directories: a cache mounted on or under one would hide or replace it.
RESERVED_MOUNTS: tuple[str, ...] = (
    "/",
    "/job",
    "/output",
    "/tmp",  # noqa: S108 (refused as a mount point, never written)
    "/proc",
    "/dev",
    "/usr",
    "/etc",
    "/run",
    "/sys",
    "/bin",
    "/sbin",
    "/lib",
    "/lib32",
    "/lib64",
)

# Beyond any machine secd runs on; also keeps the count inside what msgspec encodes.
MAX_GPUS = 64
MAX_PATH_CHARS = 255
# secd.yml is a handful of lines; a big one is a mistake, and YAML aliases make size dangerous.
MAX_SPEC_BYTES = 64 * 1024

_DATABASE = re.compile(r"[a-z0-9_-]{1,32}")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


class SpecError(ValueError):
    """A secd.yml that cannot run; the message is one line naming the field and the fix."""


class _UniqueKeyLoader(yaml.SafeLoader):
    """SafeLoader that refuses a key given twice instead of silently keeping the last."""


def _construct_unique_mapping(loader: _UniqueKeyLoader, node: yaml.MappingNode) -> dict[Any, Any]:
    seen: set[Any] = set()
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=True)
        try:
            duplicate = key in seen
        except TypeError:  # an unhashable key; the mapping check below reports it
            continue
        if duplicate:
            line = key_node.start_mark.line + 1
            raise SpecError(f"secd.yml: line {line}: key {key!r} is given twice; keep one")
        seen.add(key)
    return loader.construct_mapping(node, deep=True)


_UniqueKeyLoader.add_constructor(
    yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_unique_mapping
)
# YAML 1.1 reads `1e-1` (no dot) as a string; researchers mean the number, as YAML 1.2 does.
_UniqueKeyLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?[0-9][0-9_]*(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"),
    list("-+0123456789"),
)


def _shown(value: Any) -> str:
    """The value as the researcher wrote it, short enough to keep the message on one line."""
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _fail(field: str, what: str, value: Any) -> SpecError:
    return SpecError(f"secd.yml: {field} {what} (got {_shown(value)})")


def _yaml_error(exc: yaml.YAMLError) -> SpecError:
    mark = getattr(exc, "problem_mark", None)
    problem = getattr(exc, "problem", None) or str(exc)
    where = f"line {mark.line + 1}: " if mark is not None else ""
    detail = " ".join(str(problem).split())
    return SpecError(f"secd.yml is not valid YAML: {where}{detail}")


def _is_number(value: Any) -> bool:
    # bool is an int subclass, but `runfor: yes` is a typo, not one hour.
    return isinstance(value, int | float) and not isinstance(value, bool)


def _runfor(value: Any, max_runfor_h: float) -> float:
    if not _is_number(value) or not math.isfinite(value) or value <= 0:
        raise _fail("runfor", "must be a number of hours greater than 0, like 3 or 0.5", value)
    if value > max_runfor_h:
        raise _fail("runfor", f"must be at most {max_runfor_h:g} hours on this site", value)
    return float(value)


def _gpu(value: Any) -> int:
    if isinstance(value, bool):
        return int(value)
    if not isinstance(value, int) or value < 0:
        raise _fail("gpu", "must be true, false or a number of GPUs (0 or more)", value)
    if value > MAX_GPUS:
        raise _fail("gpu", f"must be at most {MAX_GPUS} GPUs", value)
    return value


def _path_parts(field: str, value: Any, example: str) -> list[str]:
    """The path's components, refusing what no filesystem path should contain."""
    if not isinstance(value, str) or not value:
        raise _fail(field, f"must be a path like {example!r}", value)
    if len(value) > MAX_PATH_CHARS:
        raise _fail(field, f"must be at most {MAX_PATH_CHARS} characters", value)
    if _CONTROL.search(value):
        raise _fail(field, "must not contain control characters such as NUL or newline", value)
    parts = [part for part in value.split("/") if part not in ("", ".")]
    if ".." in parts:
        raise _fail(field, "must not contain '..'", value)
    return parts


def _cache_dir(value: Any) -> str | None:
    if value is None:
        return None
    parts = _path_parts("cache_dir", value, "models/bert")
    if value.startswith("/"):
        raise _fail(
            "cache_dir", "must be relative to your cache storage, like 'models/bert'", value
        )
    if not parts:
        raise _fail("cache_dir", "must name a directory in your cache storage", value)
    return "/".join(parts)


def _mount_path(value: Any) -> str:
    parts = _path_parts("mount_path", value, "/cache")
    if not value.startswith("/"):
        raise _fail("mount_path", "must be an absolute path in the sandbox, like '/cache'", value)
    path = "/" + "/".join(parts)
    for reserved in RESERVED_MOUNTS:
        if path == reserved or (reserved != "/" and path.startswith(reserved + "/")):
            raise _fail(
                "mount_path",
                f"must not be {reserved} or under it (the sandbox uses it); try '/cache'",
                value,
            )
    return path


def _command(value: Any) -> list[str]:
    if isinstance(value, str):
        try:
            argv = shlex.split(value)
        except ValueError as exc:
            raise _fail("command", f"cannot be split into words: {exc}", value) from None
    elif isinstance(value, list):
        for index, item in enumerate(value, 1):
            if not isinstance(item, str):
                raise _fail("command", f"must be a list of strings; item {index} is not", item)
        argv = list(value)
    else:
        raise _fail("command", "must be a list like [python, main.py] or a string", value)
    if not argv or not argv[0]:
        raise _fail("command", "must name a program to run, like 'python main.py'", value)
    if any("\x00" in arg for arg in argv):
        raise _fail("command", "must not contain NUL characters", value)
    return argv


def _database(value: Any) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str) or not _DATABASE.fullmatch(value):
        raise _fail(
            "database",
            "must be the name of a configured database: 1-32 of a-z, 0-9, '_' and '-'",
            value,
        )
    return value


def _limits(value: Any, maximum: Limits) -> Any:
    if value is None:
        return None
    try:
        return parse_requested(value, maximum)
    except ValueError as exc:
        raise SpecError(f"secd.yml: {exc}") from None


_OUTPUT_KEYS = ("path", "kind", "description")
_OUTPUT_EXAMPLE = "outputs: [{path: 'counts.csv', kind: counts, description: 'patients per ward'}]"


def _outputs(value: Any) -> list[DeclaredOutput]:
    if not isinstance(value, list):
        raise _fail("outputs", f"must be a list of files, like {_OUTPUT_EXAMPLE}", value)
    if len(value) > MAX_OUTPUTS:
        raise SpecError(f"secd.yml: outputs: at most {MAX_OUTPUTS} entries (globs match many)")
    declared = []
    for number, entry in enumerate(value, 1):
        where = f"outputs[{number}]"
        if not isinstance(entry, dict):
            raise _fail(where, "must be a mapping with path, kind and description", entry)
        unknown = [k for k in entry if k not in _OUTPUT_KEYS]
        if unknown:
            raise SpecError(
                f"secd.yml: {where}: unknown key {_shown(unknown[0])}; use path, kind, description"
            )
        path = entry.get("path")
        if not isinstance(path, str):
            raise _fail(f"{where}.path", "must be a glob relative to OUTPUT_PATH", path)
        problem = check_glob(path)
        if problem:
            raise _fail(f"{where}.path", problem, path)
        kind = entry.get("kind")
        if kind not in OUTPUT_KINDS:
            raise _fail(f"{where}.kind", f"must be one of {', '.join(OUTPUT_KINDS)}", kind)
        description = entry.get("description", "")
        if not isinstance(description, str) or len(description) > 1000:
            raise _fail(
                f"{where}.description", "must be text of at most 1000 characters", description
            )
        if _CONTROL.search(description.replace("\n", " ")):
            raise _fail(f"{where}.description", "must not hold control characters", description)
        declared.append(DeclaredOutput(glob=path, kind=kind, description=description))
    return declared


def _replay(value: Any) -> bool:
    # Only YAML's true and false: `replay: 1` or `replay: "yes"` is a typo, not a choice.
    if not isinstance(value, bool):
        raise _fail(
            "replay", "must be true or false (neighbour replay; see docs/researcher.md)", value
        )
    return value


def parse_spec(
    text: str | None, *, max_runfor_h: float = 24.0, max_limits: Limits | None = None
) -> RunSpec:
    """Parse and check a secd.yml; None or empty gives the defaults; raises SpecError.

    `max_limits` is the site's maximum for `limits:` (the built-in maximum if not given).
    """
    if text is None or not text.strip():
        return RunSpec()
    if len(text.encode("utf-8", "surrogatepass")) > MAX_SPEC_BYTES:
        raise SpecError(f"secd.yml is larger than {MAX_SPEC_BYTES // 1024} KiB; keep it short")
    try:
        data = yaml.load(text, Loader=_UniqueKeyLoader)  # noqa: S506 (a SafeLoader subclass)
    except yaml.YAMLError as exc:
        raise _yaml_error(exc) from None
    if data is None:
        return RunSpec()
    if not isinstance(data, dict):
        kind = type(data).__name__
        raise SpecError(f"secd.yml must be a mapping of keys like 'runfor: 3' (got a {kind})")
    for key in data:
        if key not in KEYS:
            close = difflib.get_close_matches(str(key), KEYS, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else f"; known keys: {', '.join(KEYS)}"
            raise SpecError(f"secd.yml: unknown key {_shown(key)}{hint}")
    # A site that allows less than the default runs an unset runfor for as long as it allows.
    fields: dict[str, Any] = {"runfor": min(RunSpec().runfor, max_runfor_h)}
    if "runfor" in data:
        fields["runfor"] = _runfor(data["runfor"], max_runfor_h)
    if "gpu" in data:
        fields["gpu"] = _gpu(data["gpu"])
    if "cache_dir" in data:
        fields["cache_dir"] = _cache_dir(data["cache_dir"])
    if "mount_path" in data:
        fields["cache_mount"] = _mount_path(data["mount_path"])
    if "command" in data:
        fields["command"] = _command(data["command"])
    if "database" in data:
        fields["database"] = _database(data["database"])
    if "limits" in data:
        fields["limits"] = _limits(data["limits"], max_limits or LimitsConfig().maximum())
    if "outputs" in data:
        fields["outputs"] = _outputs(data["outputs"])
    if "replay" in data:
        fields["replay"] = _replay(data["replay"])
    return RunSpec(**fields)
