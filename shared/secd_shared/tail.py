"""The last lines of a log, for one-line errors with their context."""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["log_tail", "text_tail"]


def text_tail(data: bytes | str, lines: int = 20) -> str:
    """The last `lines` lines of some output, decoded leniently."""
    if lines <= 0:
        return ""
    text = data.decode("utf-8", errors="replace") if isinstance(data, bytes) else data
    return "\n".join(text.splitlines()[-lines:])


def log_tail(log_path: Path, lines: int = 20) -> str:
    """The last `lines` lines of a log file, read from its end; empty if there is no log."""
    if lines <= 0:
        return ""
    try:
        with open(log_path, "rb") as f:
            pos = f.seek(0, os.SEEK_END)
            data = b""
            # Read backwards in blocks until enough lines are in: a log may be gigabytes.
            while pos > 0 and data.count(b"\n") <= lines:
                step = min(8192, pos)
                pos -= step
                f.seek(pos)
                data = f.read(step) + data
    except FileNotFoundError:
        return ""
    return text_tail(data, lines)
