"""Neighbour replay: a declared file must come out the same when a few random patients are left out.

The executor ran the job twice with the same SECD_SEED: on the granted tables, and on views of
them without `[airlock] neighbour_replay_rows` random rows of each. An output that depends on
individual patients (a dump, in any encoding) changes between the two; a well-rounded aggregate
does not. Each declared file is compared with the replay's file of the same name:

- text (UTF-8: CSV, TSV, JSON, plain text) token by token, where a token is a number or a run of
  other non-space characters (CSV/TSV cells are split on their delimiter first, so positions are
  row and column); two numbers are the same when they are equal at the precision of the less
  precise of the two (its digits after the point; a whole number is exact): 1200 and 1200 pass,
  12.3 and 12.34 pass, 45.2 and 45.3 do not, 100 and 97 do not;
- anything else (images, after the re-encoding the airlock releases; models) byte for byte.

Any difference, or a file the replay did not write, is `review`; the evidence names where (line
and token, or row and column, or byte offset) and how many differ, never a value.
"""

from __future__ import annotations

import csv
import io
import re
from decimal import ROUND_HALF_EVEN, Decimal, InvalidOperation

from .base import Finding, Kind

__all__ = ["NAME", "VERSION", "compare", "missing_replay", "same_number"]

NAME = "neighbour-replay"
VERSION = 1

_NUMBER = re.compile(r"[-+]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][-+]?\d+)?")
_TOKEN = re.compile(r"[-+]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][-+]?\d+)?|[^\s\d+\-.]+|[+\-.]")
_DELIMITED = (".csv", ".tsv")


def _precision(text: str) -> int:
    """The exponent of the last digit `text` prints: -2 for 12.34, 0 for 1200 and for 7."""
    mantissa, _, exponent = text.lower().partition("e")
    shift = int(exponent) if exponent else 0
    if "." in mantissa:
        return shift - len(mantissa.split(".", 1)[1])
    return shift


def same_number(a: str, b: str) -> bool:
    """Whether two printed numbers are equal at the precision of the less precise one."""
    try:
        x, y = Decimal(a), Decimal(b)
    except InvalidOperation:
        return a == b
    if not (x.is_finite() and y.is_finite()):
        return a == b
    quantum = Decimal(1).scaleb(max(_precision(a), _precision(b)))
    try:
        return x.quantize(quantum, ROUND_HALF_EVEN) == y.quantize(quantum, ROUND_HALF_EVEN)
    except InvalidOperation:  # beyond Decimal's precision: only the same text is the same
        return a == b


def _same(a: str, b: str) -> bool:
    if a == b:
        return True
    return bool(_NUMBER.fullmatch(a) and _NUMBER.fullmatch(b) and same_number(a, b))


def _cells(text: str, delimiter: str) -> list[list[str]]:
    return [row for row in csv.reader(io.StringIO(text), delimiter=delimiter)]


def _compare_cells(a: list[list[str]], b: list[list[str]]) -> tuple[int, str]:
    differing, first = 0, ""
    for r in range(max(len(a), len(b))):
        row_a = a[r] if r < len(a) else []
        row_b = b[r] if r < len(b) else []
        for c in range(max(len(row_a), len(row_b))):
            cell_a = row_a[c].strip() if c < len(row_a) else None
            cell_b = row_b[c].strip() if c < len(row_b) else None
            if cell_a is None or cell_b is None or not _same(cell_a, cell_b):
                differing += 1
                first = first or f"row {r + 1}, column {c + 1}"
    return differing, first


def _compare_tokens(a: str, b: str) -> tuple[int, str]:
    lines_a, lines_b = a.splitlines(), b.splitlines()
    differing, first = 0, ""
    for n in range(max(len(lines_a), len(lines_b))):
        tokens_a = _TOKEN.findall(lines_a[n]) if n < len(lines_a) else []
        tokens_b = _TOKEN.findall(lines_b[n]) if n < len(lines_b) else []
        for t in range(max(len(tokens_a), len(tokens_b))):
            token_a = tokens_a[t] if t < len(tokens_a) else None
            token_b = tokens_b[t] if t < len(tokens_b) else None
            if token_a is None or token_b is None or not _same(token_a, token_b):
                differing += 1
                first = first or f"line {n + 1}, token {t + 1}"
    return differing, first


def compare(name: str, kind: Kind, data: bytes, replay: bytes | None) -> Finding:
    """The neighbour-replay finding for one declared file (`data`, as released: an image is its
    re-encoded pixels) against the replay's file of the same name (None: not written)."""
    if replay is None:
        return Finding(NAME, VERSION, "review", "the replay run did not write this file")
    if data == replay:
        return Finding(NAME, VERSION, "pass", "the same bytes in the replay run")
    text: str | None = None
    other: str | None = None
    try:
        text, other = data.decode("utf-8"), replay.decode("utf-8")
    except UnicodeDecodeError:
        pass
    if text is None or other is None or kind in ("figure", "model"):
        offset = next(
            (i for i, (x, y) in enumerate(zip(data, replay, strict=False)) if x != y),
            min(len(data), len(replay)),
        )
        return Finding(
            NAME,
            VERSION,
            "review",
            f"differs from the replay run from byte {offset:,} on"
            f" ({len(data):,} bytes against {len(replay):,})",
        )
    lower = name.lower()
    if lower.endswith(_DELIMITED):
        delimiter = "\t" if lower.endswith(".tsv") else ","
        differing, first = _compare_cells(_cells(text, delimiter), _cells(other, delimiter))
        unit = "cell", "cells"
    else:
        differing, first = _compare_tokens(text, other)
        unit = "token", "tokens"
    if differing == 0:
        return Finding(NAME, VERSION, "pass", "the same as the replay run within rounding")
    return Finding(
        NAME,
        VERSION,
        "review",
        f"{differing:,} {unit[0] if differing == 1 else unit[1]} differ from the replay run"
        f" beyond rounding (first at {first}): the file changes when a few patients are left"
        " out",
    )


def missing_replay(reason: str) -> Finding:
    """The finding for every file of a replay run whose replay cannot be compared."""
    return Finding(NAME, VERSION, "review", reason)
