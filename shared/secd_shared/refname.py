"""git's rules for ref names, as `git check-ref-format` applies them, in pure Python.

The gateway checks every pushed ref with these rules before anything else looks at it: a ref
git itself would refuse (`refs/heads//secd/x`, `refs/heads/./secd/x`, `refs/heads/a..b`) never
reaches a prefix test such as the results-branch rule. The rules follow git's refs.c
(`check_refname_component`, `check_or_sanitize_refname`) without `--normalize`,
`--allow-onelevel` or `--refspec-pattern`; tests/shared/test_refname.py compares them with the
real `git check-ref-format` over a corpus of good and hostile names.
"""

from __future__ import annotations

__all__ = ["ref_format_problem"]

# Bytes git refuses anywhere in a ref: ASCII control characters, DEL, space and ~ ^ : ? * [ \
_BAD = frozenset(range(0x20)) | {0x7F} | frozenset(b" ~^:?*[\\")


def _show(byte: int) -> str:
    if byte == 0x20:
        return "a space"
    return f"{chr(byte)!r}" if 0x20 < byte < 0x7F else f"byte 0x{byte:02x}"


def _component_problem(component: bytes) -> str | None:
    if not component:
        return "it has an empty component ('//', or a '/' at the start or end)"
    if component.startswith(b"."):
        return "a component starts with '.'"
    if component.endswith(b".lock"):
        return "a component ends with '.lock'"
    return None


def ref_format_problem(ref: str) -> str | None:
    """Why git would refuse `ref` as a ref name, or None when `git check-ref-format` takes it."""
    try:
        raw = ref.encode("utf-8")
    except UnicodeEncodeError:
        return "it is not valid UTF-8"
    if raw == b"@":
        return "it is '@'"
    for byte in raw:
        if byte in _BAD:
            return f"it contains {_show(byte)}"
    if b".." in raw:
        return "it contains '..'"
    if b"@{" in raw:
        return "it contains '@{'"
    components = raw.split(b"/")
    for component in components:
        problem = _component_problem(component)
        if problem:
            return problem
    if raw.endswith(b"."):
        return "it ends with '.'"
    if len(components) < 2:
        return "it has a single level (no '/')"
    return None
