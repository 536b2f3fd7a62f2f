"""Encodings: base64, base64url, base32, base85, Ascii85 (bare or between Adobe's `<~ ~>`) and
hex runs inside any text, decoded, and gzip, zlib, bz2, xz and zip payloads opened, recursively
up to `decode_depth`; what decodes to text is scanned again like any output. A run glued to a
prefix in its own alphabet ("payload" + base64) is decoded from where its payload starts. A long
high-entropy run that decodes to nothing readable is held as well."""

from __future__ import annotations

import base64
import binascii
import bz2
import codecs
import io
import lzma
import math
import re
import zipfile
import zlib
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass

from .base import Finding, Rules, count_words

NAME = "encoding"
VERSION = 3  # 2: base32 and base85; 3: Ascii85, runs glued to a prefix

_RUN = re.compile(r"[A-Za-z0-9+/_-]{24,}={0,2}")
# base64 wrapped over lines (base64(1), MIME): lines of the alphabet only, joined.
_WRAPPED = re.compile(
    r"(?m)^[A-Za-z0-9+/]{40,}={0,2}[ \t]*(?:\r?\n[A-Za-z0-9+/]{4,}={0,2}[ \t]*$)+"
)
_HEX = re.compile(r"[0-9a-fA-F]+")
_BASE32 = re.compile(r"[A-Z2-7]+")
# base85 (RFC 1924, Python's b85encode, git's binary patches): its punctuation breaks _RUN's runs.
_RUN85 = re.compile(r"[0-9A-Za-z!#$%&()*+\-;<=>?@^_`{|}~]{40,}")
# Ascii85 (PostScript, PDF, Python's a85encode): "!" to "u", and "z" for four zero bytes; Adobe's
# variant between "<~" and "~>", where blanks and line breaks are ignored.
_ADOBE85 = re.compile(r"<~[!-uz\s]{20,}?~>")
_RUN_A85 = re.compile(r"[!-uz]{40,}")
# A glued run is looked into from each of its first characters, by decoding a head of it.
_GLUED_MIN_CHARS = 64
_GLUED_MAX_PREFIX = 80
_GLUED_HEAD = 160  # a multiple of 4 and of 5
# ASCII as str.split sees it: blanks as line breaks, anything else as "x" (_long_words).
_ASCII_BLANKS_AS_NEWLINE = {c: "\n" if chr(c).isspace() else "x" for c in range(128)}
_LONG_WORD = "x" * 24
_MAGIC = (b"\x1f\x8b", b"BZh", b"\xfd7zXZ", b"PK\x03\x04", b"\x78\x9c", b"\x78\xda", b"\x78\x01")


@dataclass(frozen=True)
class Decoded:
    """One encoded run found in a text: how it was encoded, how long it was, and what it holds
    (text when it decodes to readable text, else None; nbytes either way)."""

    layers: tuple[str, ...]
    chars: int
    nbytes: int
    text: str | None
    depth: int


@dataclass(frozen=True)
class Opaque:
    """A long run that decodes to nothing readable: its alphabet, length and entropy."""

    alphabet: str
    chars: int
    bits_per_char: float


def entropy(text: str) -> float:
    """Shannon entropy of the characters, bits per character."""
    counts = Counter(text)
    n = len(text)
    return -sum(c / n * math.log2(c / n) for c in counts.values())


def _as_text(data: bytes) -> str | None:
    """Readable text: UTF-8, and almost all printable."""
    if len(data) < 8:
        return None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        return None
    printable = sum(ch.isprintable() or ch in "\n\r\t" for ch in text)
    # A run of one repeated byte ("????") is not a message.
    if printable < 0.95 * len(text) or len(set(text)) < 4:
        return None
    return text


def _decode_run(run: str) -> list[tuple[str, bytes]]:
    """Every reading of a run: hex, base64 or base64url, whichever are valid."""
    readings = []
    bare = run.rstrip("=")
    if len(run) % 2 == 0 and _HEX.fullmatch(run):
        readings.append(("hex", binascii.unhexlify(run)))
    if _BASE32.fullmatch(bare) and len(bare) % 8 in (0, 2, 4, 5, 7):
        try:
            readings.append(("base32", base64.b32decode(bare + "=" * (-len(bare) % 8))))
        except (binascii.Error, ValueError):
            pass
    padded = bare + "=" * (-len(bare) % 4)
    if len(bare) % 4 != 1:
        if "-" not in bare and "_" not in bare:
            try:
                readings.append(("base64", base64.b64decode(padded, validate=True)))
            except (binascii.Error, ValueError):
                pass
        elif "+" not in bare and "/" not in bare:
            try:
                readings.append(("base64url", base64.urlsafe_b64decode(padded)))
            except (binascii.Error, ValueError):
                pass
    return readings


def _decode_85(run: str) -> list[tuple[str, bytes]]:
    """A run read as base85 and as Ascii85, whichever are valid."""
    readings = []
    try:
        readings.append(("base85", base64.b85decode(run)))
    except ValueError:
        pass
    if _RUN_A85.fullmatch(run):
        readings += _decode_a85(run)
    return readings


def _decode_a85(run: str) -> list[tuple[str, bytes]]:
    """A run read as Ascii85 (Adobe's when it starts with "<~"), when it is valid."""
    try:
        return [("ascii85", base64.a85decode(run, adobe=run.startswith("<~")))]
    except ValueError:
        return []


def _plausible(data: bytes) -> bool:
    """Whether the head of a decoded payload starts a compressed blob or readable text."""
    if data.startswith(_MAGIC):
        return True
    try:
        # Not final: the head may end inside a character.
        text = codecs.getincrementaldecoder("utf-8")().decode(data)
    except UnicodeDecodeError:
        return False
    printable = sum(ch.isprintable() or ch in "\n\r\t" for ch in text)
    # A payload starts where it reads: a prefix that decodes to a few odd bytes before it is not
    # its start.
    start = all(ch.isprintable() or ch in "\n\r\t" for ch in text[:8])
    return len(text) >= 24 and start and printable >= 0.95 * len(text) and len(set(text)) >= 4


def _unglued(run: str, decode: Callable[[str], list[tuple[str, bytes]]]) -> list[tuple[str, bytes]]:
    """A run read from where, among its first characters, a payload starts ("payload" + base85
    decodes to nothing from its first character): empty when there is none."""
    for skip in range(1, min(_GLUED_MAX_PREFIX, len(run) - _GLUED_MIN_CHARS // 2)):
        head = run[skip : skip + _GLUED_HEAD]
        head = head[: len(head) - len(head) % 20]
        if any(_plausible(data) for _, data in decode(head)):
            return [(f"{how} after {skip} characters", data) for how, data in decode(run[skip:])]
    return []


def _unpack(data: bytes, limit: int) -> list[tuple[str, bytes]]:
    """The payloads of a compressed or archived blob (empty when it is neither)."""
    try:
        if data.startswith(b"\x1f\x8b"):
            d = zlib.decompressobj(16 + zlib.MAX_WBITS)
            return [("gzip", d.decompress(data, limit))]
        if data[:1] == b"\x78" and data[1:2] in (b"\x01", b"\x5e", b"\x9c", b"\xda"):
            return [("zlib", zlib.decompressobj().decompress(data, limit))]
        if data.startswith(b"BZh"):
            return [("bz2", bz2.BZ2Decompressor().decompress(data, limit))]
        if data.startswith(b"\xfd7zXZ"):
            return [("xz", lzma.LZMADecompressor().decompress(data, limit))]
        if data.startswith(b"PK\x03\x04"):
            out = []
            with zipfile.ZipFile(io.BytesIO(data)) as archive:
                for info in archive.infolist()[:100]:
                    with archive.open(info) as member:
                        out.append(("zip", member.read(limit)))
            return out
    except (zlib.error, OSError, EOFError, ValueError, zipfile.BadZipFile, lzma.LZMAError):
        return []
    return []


def open_payload(
    data: bytes, layers: tuple[str, ...], rules: Rules, depth: int, chars: int
) -> list[Decoded]:
    """What a decoded blob holds: its text, or what its archives and compressions hold."""
    unpacked = _unpack(data, rules.decoded_max_bytes)
    if unpacked:
        out = []
        for how, inner in unpacked:
            out.extend(open_payload(inner, (*layers, how), rules, depth, chars))
        return out
    text = _as_text(data)
    if text is None:
        return []
    return [Decoded(layers, chars, len(data), text, depth)]


def _long_words(text: str) -> list[str]:
    """The text's words (between blanks) of 24 characters or more. In ASCII text they are
    found by str.find in a copy with its blanks as line breaks and the rest as "x", without
    cutting the text into every one of its words."""
    if not text.isascii():
        return [w for w in text.split() if len(w) >= 24]
    mask = text.translate(_ASCII_BLANKS_AS_NEWLINE)
    found = []
    at = mask.find(_LONG_WORD)
    while at >= 0:
        end = mask.find("\n", at)
        end = len(mask) if end < 0 else end
        found.append(text[mask.rfind("\n", 0, at) + 1 : end])
        at = mask.find(_LONG_WORD, end)
    return found


def find_encoded(text: str, rules: Rules, depth: int = 1) -> tuple[list[Decoded], list[Opaque]]:
    """Runs in `text` that decode to readable text (again, inside those, up to decode_depth), and
    long high-entropy runs that decode to nothing readable."""
    decoded: list[Decoded] = []
    opaque: list[Opaque] = []
    if depth > rules.decode_depth:
        return decoded, opaque
    # Every run lies within a word of the text (no alphabet has a blank): the runs are looked
    # for in the long words only, which is much faster than over the whole text.
    words = _long_words(text)
    runs = dict.fromkeys(m.group() for w in words for m in _RUN.finditer(w))
    # Joined wrapped lines may take in a following word: they are decoded, never held as opaque.
    # Their first line is a word of 40 characters or more.
    wrapped = (
        {re.sub(r"\s+", "", m.group()) for m in _WRAPPED.finditer(text)} - set(runs)
        if any(len(w) >= 40 for w in words)
        else set()
    )
    # base85 and Ascii85 runs are only decoded (their alphabets are too wide to call a run
    # opaque).
    long_words = [w for w in words if len(w) >= 40]
    # Adobe's Ascii85 first: its runs hold bare Ascii85 and base85 runs, skipped once it opens.
    runs85 = dict.fromkeys(m.group() for m in _ADOBE85.finditer(text)) if "<~" in text else {}
    runs85.update(dict.fromkeys(m.group() for w in long_words for m in _RUN85.finditer(w)))
    runs85.update(dict.fromkeys(m.group() for w in long_words for m in _RUN_A85.finditer(w)))
    for run in runs:
        runs85.pop(run, None)
    opened: list[str] = []
    for run in [*runs, *wrapped, *runs85]:
        if len(run) < rules.encoded_min_chars:
            continue
        # An Ascii85 run may be a piece of a base85 run (or the reverse) already decoded.
        if run in runs85 and any(run in other for other in opened):
            continue
        found: list[Decoded] = []
        decode = _decode_85 if run in runs85 else _decode_run
        if run.startswith("<~"):
            decode = _decode_a85
        readings = decode(run)
        if not any(_plausible(data[:_GLUED_HEAD]) for _, data in readings) and (
            len(run) >= _GLUED_MIN_CHARS and not _HEX.fullmatch(run)
        ):
            readings += _unglued(run, decode)
        for how, data in readings:
            found = open_payload(data, (how,), rules, depth, len(run))
            if found:
                break
        if found:
            opened.append(run)
            for item in found:
                decoded.append(item)
                if item.text is not None:
                    inner, inner_opaque = find_encoded(item.text, rules, depth + 1)
                    decoded.extend(inner)
                    opaque.extend(inner_opaque)
        elif len(run) >= rules.entropy_min_chars and run not in wrapped and run not in runs85:
            is_hex = bool(_HEX.fullmatch(run))
            bits = entropy(run)
            if bits >= (rules.entropy_hex_bits if is_hex else rules.entropy_base64_bits):
                opaque.append(Opaque("hex" if is_hex else "base64", len(run), bits))
    return decoded, opaque


def check_encodings(decoded: list[Decoded], opaque: list[Opaque], where: str = "") -> list[Finding]:
    """Encoded content is held: what decodes (the scans of the decoded text add their own
    findings) and long high-entropy strings that do not."""
    findings = []
    suffix = f" {where}" if where else ""
    for item in decoded[:10]:
        how = " then ".join(item.layers)
        level = f" at depth {item.depth}" if item.depth > 1 else ""
        findings.append(
            Finding(
                NAME,
                VERSION,
                "review",
                f"a {item.chars:,}-character run decodes ({how}){level} to "
                f"{count_words(item.nbytes, 'byte')} of text{suffix}",
            )
        )
    if len(decoded) > 10:
        findings.append(
            Finding(NAME, VERSION, "review", f"{len(decoded) - 10} more encoded runs{suffix}")
        )
    for blob in opaque[:10]:
        findings.append(
            Finding(
                NAME,
                VERSION,
                "review",
                f"a {blob.chars:,}-character {blob.alphabet}-like string with "
                f"{blob.bits_per_char:.1f} bits of entropy per character decodes to nothing "
                f"readable{suffix}",
            )
        )
    return findings
