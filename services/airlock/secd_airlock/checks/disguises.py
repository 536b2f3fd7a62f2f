"""Disguises: values written so that no word of the text reads as the value itself. `readings`
gives what a text also says once undisguised, and the source match and the identifier-value
check read those readings too:

- escapes, decoded: percent-encoding (`%41`, `+` for a space), `\\uXXXX`, `\\U0010XXXX` and
  `\\xXX` escapes (runs of `\\xXX` as UTF-8 bytes), HTML character references (`&#65;`) and
  quoted-printable (`=41`, `=C3=B6`);
- lists of four or more integers, read as character codes: `[65, 115, 116, 114, 105, 100]`
  (code points, or UTF-8 bytes when all are under 256);
- four or more single letters or digits with the same separator between each, joined:
  `7 1 0 2 1 1 1 0 1 5`, `7-1-0-2`, `A, s, t, r, i, d`, one a line;
- ten or twelve digits split by spaces as a personnummer is (`710211 1015`), joined with a dash;
- a table's columns whose cells are single characters, read top to bottom (one digit a cell).

The joins run on the text and on each decoded reading. A reading is never a finding by itself (a
link with `%20` or a histogram whose counts are printable codes is ordinary): only what the
scans find in it counts. Readings hold only the lines that changed, so ordinary text costs one
search per disguise. Reversed and ROT13 values are matched by the source index itself
(source.py), which costs nothing per output.
"""

from __future__ import annotations

import binascii
import html
import re
from collections.abc import Callable, Sequence
from urllib.parse import unquote_plus

from .identifiers import digit_run_lines

_PERCENT = re.compile(r"%[0-9A-Fa-f]{2}")
_ESCAPE = re.compile(r"\\(?:u[0-9A-Fa-f]{4}|U[0-9A-Fa-f]{8}|x[0-9A-Fa-f]{2})")
_ESCAPE_RUN = re.compile(r"(?:\\x[0-9A-Fa-f]{2})+|\\u([0-9A-Fa-f]{4})|\\U([0-9A-Fa-f]{8})")
_ENTITY = re.compile(r"&#(?:\d{1,7}|[xX][0-9A-Fa-f]{1,6});")
_QP = re.compile(r"=[0-9A-F]{2}")
# Each disguise below has a pattern that finds the lines it may be on, fast because it starts
# with a character most text has few of (the regex engine skips ahead to one), and a pattern
# that undoes it on those lines only.
#
# Four or more integers separated by commas or semicolons (JSON, Python, CSV) or blanks within
# brackets (numpy); not part of a decimal, a version or a word.
_CODES_FIND = re.compile(
    r"[\[,;](?:[ \t]*\d{1,7}(?:[ \t]*[,;][ \t]*\d{1,7}){2,}|[ \t]*\d{1,7}(?:\s+\d{1,7}){3,})"
)
_CODES = re.compile(r"(?<![\w.])\d{1,7}(?:(?:[ \t]*[,;][ \t]*|\s+)\d{1,7}){3,}(?!\w|\.\d)")
_CODE_SEP = re.compile(r"[\s,;]+")
# Four or more single letters or digits with one separator, the same each time, between them.
_SEPARATOR = r"[ \t,;|._/:\n-]"
# (It runs on to the end of the run: a run one character a line spans all its lines.)
_SPACED_FIND = re.compile(
    rf"{_SEPARATOR}[^\W_]{_SEPARATOR}+[^\W_]{_SEPARATOR}+[^\W_](?![^\W_])"
    rf"(?:{_SEPARATOR}+[^\W_](?![^\W_]))*"
)
_SPACED = re.compile(
    r"(?<![^\W_])[^\W_]"
    r"(?P<sep>[ \t]*[,;|][ \t]*|[ \t]{1,2}|[._/:\-]|\r?\n)"
    r"[^\W_](?:(?P=sep)[^\W_]){2,}(?![^\W_])"
)
_SPACED_SEP = re.compile(r"[^\w]+|_")
# A personnummer's date and serial, split by blanks (and maybe its dash).
_SPLIT_FIND = re.compile(r"[-+ \t](?<=\d{6}[-+ \t])[-+ \t]*\d{4}")
_SPLIT_PNR = re.compile(
    r"(?<![\w.,])(\d{6}|\d{8})(?:[ \t]+[-+]?[ \t]*|[-+][ \t]+)(\d{4})(?!\w|[.,]\d)"
)
_PRINTABLE_SHARE = 0.9


def readings(text: str) -> list[str]:
    """What `text` also says once undisguised (see the module docstring); empty for ordinary
    text. Each reading holds only the lines a disguise was found in."""
    decoded = [
        found
        for found in (
            _lines_where(text, _PERCENT, 2, _unpercent),
            _lines_where(text, _ESCAPE, 2, _unescape),
            _lines_where(text, _ENTITY, 2, html.unescape),
            _lines_where(text, _QP, 3, _unquote_printable, soft_breaks=True),
            _lines_where(text, _CODES_FIND, 1, _decode_codes),
        )
        if found
    ]
    joined = []
    for reading in [text, *decoded]:
        spaced = _lines_where(reading, _SPACED_FIND, 1, _join_spaced)
        # "7 1 0 2 1 1 - 1 0 1 5" joins to a split personnummer: both are read.
        for each in (reading, spaced) if spaced else (reading,):
            # A split personnummer's date is six digits in a row: most text has none.
            if not digit_run_lines(each):
                continue
            split = _lines_where(each, _SPLIT_FIND, 1, _join_split)
            if split:
                joined.append(split)
        if spaced:
            joined.append(spaced)
    return decoded + joined


def column_readings(columns: Sequence[str], rows: Sequence[Sequence[object]]) -> list[str]:
    """A table's columns of four or more cells that each hold one character, read top to
    bottom: one line each."""
    out = []
    for c in range(len(columns)):
        cells = [str(r[c]) for r in rows if c < len(r) and r[c] is not None and r[c] != ""]
        if len(cells) >= 4 and all(len(cell) == 1 for cell in cells):
            out.append("".join(cells))
    return out


def _lines_where(
    text: str,
    pattern: re.Pattern[str],
    hits: int,
    undo: Callable[[str], str],
    *,
    soft_breaks: bool = False,
) -> str | None:
    """`undo` applied to each block of lines where `pattern` finds at least `hits` matches (a
    match may span lines: the block takes them all); None when there is none or nothing
    changed."""
    first = pattern.search(text)
    if first is None:
        return None
    blocks: list[tuple[int, int, int]] = []  # start, end, hits
    for m in pattern.finditer(text, first.start()):
        if blocks and m.end() <= blocks[-1][1]:
            # Within the block found so far (one long line of escapes: no search again).
            s, e, n = blocks[-1]
            blocks[-1] = (s, e, n + 1)
            continue
        start = text.rfind("\n", 0, m.start()) + 1
        end = text.find("\n", m.end())
        end = len(text) if end < 0 else end
        # Quoted-printable ends a line with "=" to join it to the next.
        while soft_breaks and end < len(text) and text[end - 1 : end] == "=":
            next_end = text.find("\n", end + 1)
            end = len(text) if next_end < 0 else next_end
        if blocks and start <= blocks[-1][1]:
            s, e, n = blocks[-1]
            blocks[-1] = (s, max(e, end), n + 1)
        else:
            blocks.append((start, end, 1))
    out = []
    for start, end, n in blocks:
        if n < hits:
            continue
        block = text[start:end]
        undone = undo(block)
        if undone != block:
            out.append(undone)
    return "\n".join(out) or None


def _unpercent(block: str) -> str:
    return unquote_plus(block, errors="replace")


def _unescape(block: str) -> str:
    return _ESCAPE_RUN.sub(_unescape_one, block)


def _unescape_one(m: re.Match[str]) -> str:
    if m.group(1) or m.group(2):
        return _char(int(m.group(1) or m.group(2), 16))
    data = bytes(int(m.group()[i + 2 : i + 4], 16) for i in range(0, len(m.group()), 4))
    return _text_of(data)


def _unquote_printable(block: str) -> str:
    return _text_of(binascii.a2b_qp(block.encode("utf-8", "replace")))


def _decode_codes(block: str) -> str:
    return _CODES.sub(_decode_code_list, block)


def _decode_code_list(m: re.Match[str]) -> str:
    """A list of integers as the characters they code, when nearly all are printable; else
    the list as it was."""
    numbers = [int(n) for n in _CODE_SEP.split(m.group()) if n]
    if max(numbers) > 0x10FFFF:
        return m.group()
    if max(numbers) < 256:
        decoded = _text_of(bytes(numbers))
    else:
        decoded = "".join(_char(n) for n in numbers)
    printable = sum(ch.isprintable() or ch in "\n\r\t" for ch in decoded)
    return decoded if printable >= _PRINTABLE_SHARE * len(decoded) else m.group()


def _join_spaced(block: str) -> str:
    return _SPACED.sub(_joined, block)


def _joined(m: re.Match[str]) -> str:
    """A run of single characters joined; a run of two (0 and 1: predictions, a bit vector)
    is left as it is, as no personnummer and no name is written with two characters."""
    run = _SPACED_SEP.sub("", m.group())
    return run if len(set(run)) >= 3 else m.group()


def _join_split(block: str) -> str:
    return _SPLIT_PNR.sub(r"\1-\2", block)


def _char(code: int) -> str:
    """The character of a code point; a lone surrogate (which no text can carry) reads as �."""
    return "\ufffd" if 0xD800 <= code <= 0xDFFF or code > 0x10FFFF else chr(code)


def _text_of(data: bytes) -> str:
    """Bytes as UTF-8 text, or Latin-1 where they are not UTF-8."""
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return data.decode("latin-1")
