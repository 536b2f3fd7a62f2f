"""Type: what a file is, read from its bytes, never from its name.

Allowed: csv, tsv, json, txt, md (UTF-8 text), png, jpeg, and skops (a zip holding skops'
schema.json) for kind `model` only. Anything else is blocked, and so is an allowed binary type
under a name that says otherwise (a zip named .png). Sizes are limited per file and per run.
PNG and JPEG are re-encoded before release (`reencode_image`): text chunks, EXIF and trailing
bytes do not leave.
"""

from __future__ import annotations

import csv
import io
import json
import zipfile
from pathlib import PurePosixPath

from PIL import Image

from .base import Finding, OutputFile, Rules

NAME = "type"
VERSION = 1

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
JPEG_MAGIC = b"\xff\xd8\xff"
ZIP_MAGIC = b"PK\x03\x04"
TEXT_TYPES = frozenset({"csv", "tsv", "json", "txt", "md"})
# What each extension may hold; text types may stand in for each other (a .txt holding CSV is
# still text), binary ones may not.
_EXTENSIONS = {
    ".csv": "csv",
    ".tsv": "tsv",
    ".tab": "tsv",
    ".json": "json",
    ".txt": "txt",
    ".log": "txt",
    ".md": "md",
    ".markdown": "md",
    ".png": "png",
    ".jpg": "jpeg",
    ".jpeg": "jpeg",
    ".skops": "skops",
}
_BINARY_MAGIC = {
    b"\x1f\x8b": "gzip",
    b"BZh": "bzip2",
    b"\xfd7zXZ": "xz",
    b"7z\xbc\xaf": "7z",
    b"PAR1": "parquet",
    b"\x80": "pickle",
    b"GIF8": "gif",
    b"%PDF": "pdf",
    b"\x93NUMPY": "numpy",
    b"SQLite format 3": "sqlite",
    b"\x89HDF": "hdf5",
}


def sniff(data: bytes) -> str:
    """The file's type from its content: csv, tsv, json, txt, png, jpeg, skops, zip, or the name
    of another binary format ('binary' when unknown)."""
    if data.startswith(PNG_MAGIC):
        return "png"
    if data.startswith(JPEG_MAGIC):
        return "jpeg"
    if data.startswith(ZIP_MAGIC) or data.startswith(b"PK\x05\x06"):
        return "skops" if _is_skops(data) else "zip"
    for magic, name in _BINARY_MAGIC.items():
        if data.startswith(magic):
            return name
    if b"\x00" in data[:65536]:
        return "binary"
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        return "binary"
    return sniff_text(text)


def sniff_text(text: str) -> str:
    """json, csv, tsv or txt for text already decoded."""
    stripped = text.strip()
    if stripped[:1] in "[{":
        try:
            json.loads(stripped)
        except ValueError:
            pass
        else:
            return "json"
    lines = [line for line in stripped.splitlines()[:50] if line.strip()]
    if len(lines) >= 2:
        for delimiter, name in (("\t", "tsv"), (",", "csv"), (";", "csv")):
            try:
                widths = {len(r) for r in csv.reader(lines, delimiter=delimiter)}
            except csv.Error:
                continue
            if len(widths) == 1 and widths.pop() >= 2:
                return name
    return "txt"


def _is_skops(data: bytes) -> bool:
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as archive:
            if "schema.json" not in archive.namelist():
                return False
            schema = json.loads(archive.read("schema.json"))
    except (zipfile.BadZipFile, ValueError, KeyError, OSError):
        return False
    return isinstance(schema, dict) and "protocol" in schema and "__class__" in schema


def declared_type(name: str) -> str | None:
    """The type a file's extension claims, None for an extension secd does not know."""
    return _EXTENSIONS.get(PurePosixPath(name).suffix.lower())


def check_type(file: OutputFile, rules: Rules) -> list[Finding]:
    """Whether the file is an allowed type, is what its name says, and fits the size limit."""
    findings = []
    size = len(file.data)
    if size > rules.max_file_bytes:
        findings.append(
            Finding(
                NAME,
                VERSION,
                "block",
                f"{size:,} bytes, over the site's limit of {rules.max_file_bytes:,} per file",
            )
        )
    found = sniff(file.data)
    claimed = declared_type(file.name)
    if found in ("zip", "binary") or (found not in TEXT_TYPES | {"png", "jpeg", "skops"}):
        findings.append(
            Finding(NAME, VERSION, "block", f"content is {found}, not an allowed output type")
        )
    elif found == "skops" and file.kind != "model":
        findings.append(
            Finding(NAME, VERSION, "block", f"a skops model declared as kind {file.kind}")
        )
    elif claimed is not None and claimed != found:
        both_text = claimed in TEXT_TYPES and found in TEXT_TYPES
        if not both_text:
            findings.append(
                Finding(
                    NAME,
                    VERSION,
                    "block",
                    f"content is {found} but the name says {claimed}",
                )
            )
    elif claimed is None and found not in TEXT_TYPES:
        findings.append(
            Finding(NAME, VERSION, "review", f"content is {found} under an unknown extension")
        )
    if file.kind == "figure" and found not in ("png", "jpeg"):
        findings.append(
            Finding(NAME, VERSION, "review", f"declared a figure but content is {found}")
        )
    return findings


def check_run_size(files: list[OutputFile], rules: Rules) -> list[Finding]:
    """The run's outputs together against the per-run limit."""
    total = sum(len(f.data) for f in files)
    if total > rules.max_run_bytes:
        return [
            Finding(
                NAME,
                VERSION,
                "block",
                f"outputs total {total:,} bytes, over the site's limit of "
                f"{rules.max_run_bytes:,} per run",
            )
        ]
    return []


def image_text(data: bytes) -> tuple[list[str], int]:
    """The text an image carries besides its pixels (PNG text chunks, JPEG comments and APP
    segments, as Pillow reads them) and how many bytes follow its end marker."""
    texts: list[str] = []
    trailing = 0
    try:
        with Image.open(io.BytesIO(data)) as image:
            image.load()
            for key, value in (getattr(image, "text", None) or {}).items():
                texts.append(f"{key} {value}")
            for key, value in image.info.items():
                if isinstance(value, bytes):
                    texts.append(value.decode("utf-8", "replace"))
                elif isinstance(value, str) and key not in getattr(image, "text", {}):
                    texts.append(value)
    except (OSError, ValueError, Image.DecompressionBombError):
        return texts, 0
    if data.startswith(PNG_MAGIC):
        end = data.rfind(b"IEND")
        if end >= 0:
            trailing = len(data) - (end + 8)
    elif data.startswith(JPEG_MAGIC):
        end = data.rfind(b"\xff\xd9")
        if end >= 0:
            trailing = len(data) - (end + 2)
    return texts, max(trailing, 0)


def reencode_image(data: bytes) -> bytes:
    """The image's pixels only, encoded again: PNG stays PNG and JPEG stays JPEG, without text
    chunks, EXIF, ICC profiles, comments or bytes after the end. What the airlock releases."""
    with Image.open(io.BytesIO(data)) as image:
        fmt = image.format
        image.load()
        pixels = image.copy()
    out = io.BytesIO()
    if fmt == "JPEG":
        if pixels.mode not in ("RGB", "L", "CMYK"):
            pixels = pixels.convert("RGB")
        pixels.save(out, format="JPEG", quality=95)
    elif fmt == "PNG":
        pixels.info = {}
        pixels.save(out, format="PNG", optimize=False)
    else:
        raise ValueError(f"not a PNG or JPEG image but {fmt}")
    return out.getvalue()
