"""Identifier-like values in any text: Swedish personnummer (and samordningsnummer) with a valid
checksum, e-mail addresses and phone numbers. Counted, never quoted."""

from __future__ import annotations

import re

from secd_shared.luhn import luhn_ok

from .base import Finding, Rules, Verdict, count_words

NAME = "identifier-values"
VERSION = 2  # 2: outputs and log lines are read undisguised too (checks/disguises.py)

# 12 or 10 digits, the last four after an optional - or + (+ marks a person over 100).
_PERSONNUMMER = re.compile(r"(\d(?<!\d\d)\d{5}(?:\d\d)?)[-+]?(\d{4})(?!\d)")
_EMAIL = re.compile(r"[\w.+-]+@[\w-]+(?:\.[\w-]+)*\.[a-z]{2,}", re.IGNORECASE)
# Swedish mobile and landline numbers, and any +country number of 8 or more digits.
# Each pattern starts with a character class and checks what precedes it by look-behind: the
# regex engine then skips ahead quickly (three times faster on long text).
_PHONE = re.compile(
    r"[0+](?<![\w+][0+])(?<!\d[.,][0+])"
    r"(?:(?<=0)(?:7\d|[1-9]\d{0,2})[ -]?\d{2,3}(?:[ -]?\d{2}){2}"
    r"|(?<=\+)46[ -]?(?:7\d|[1-9]\d{0,2})[ -]?\d{2,3}(?:[ -]?\d{2}){2}"
    r"|(?<=\+)\d{1,3}(?:[ -]?\d){8,12})"
    r"(?!\d|[.,]\d)"
)
_PHONE_SHAPES = {
    c: "z" if ch == "0" else "d" if ch.isdigit() else "p" if ch == "+" else "s" if ch in " -"
    else "\n" if ch == "\n" else "x"
    for c, ch in ((c, chr(c)) for c in range(128))
}  # fmt: skip
_PHONE_HINT = re.compile(r"[zp][zd]{7}")
# ASCII digits as "0" and every other ASCII character as a blank (digit_run_lines).
_DIGITS_AS_ZERO = {c: "0" if chr(c).isdigit() else " " for c in range(128)}


def is_personnummer(date: str, serial: str) -> bool:
    """A date part (YYMMDD or YYYYMMDD) and serial that make a plausible personnummer or
    samordningsnummer (day + 60) with a valid checksum."""
    short = date[-6:]
    month, day = int(short[2:4]), int(short[4:6])
    if day > 60:
        day -= 60
    if not (1 <= month <= 12 and 1 <= day <= 31):
        return False
    return luhn_ok(short + serial)


def digit_run_lines(text: str, digits: int = 6) -> list[tuple[int, int]]:
    """The (start, end) spans of the text's lines that hold a run of `digits` digits, adjacent
    lines merged: a pattern whose matches hold such a run and never span a line need only search
    these. One span, the whole text, when it is not ASCII (\\d also means other scripts'
    digits); none when no line has such a run."""
    if not text.isascii():
        return [(0, len(text))]
    mask = text.translate(_DIGITS_AS_ZERO)
    run = "0" * digits
    spans: list[tuple[int, int]] = []
    at = mask.find(run)
    while at >= 0:
        start = text.rfind("\n", 0, at) + 1
        end = text.find("\n", at)
        end = len(text) if end < 0 else end
        if spans and start <= spans[-1][1] + 1:
            spans[-1] = (spans[-1][0], end)
        else:
            spans.append((start, end))
        at = mask.find(run, end)
    return spans


def find_personnummer(text: str) -> set[str]:
    """Distinct personnummer in the text, as 10 digits (for counting only)."""
    found = set()
    # A personnummer holds six digits in a row and no line break: other lines are skipped.
    for start, end in digit_run_lines(text):
        for m in _PERSONNUMMER.finditer(text, start, end):
            date, serial = m.group(1), m.group(2)
            if is_personnummer(date, serial):
                found.add(date[-6:] + serial)
    return found


def find_emails(text: str) -> set[str]:
    """Distinct e-mail addresses, lower-cased."""
    return {m.lower() for m in _EMAIL.findall(text)} if "@" in text else set()


def find_phones(text: str) -> set[str]:
    """Distinct phone numbers, digits only."""
    if not text.isascii():
        return {re.sub(r"\D", "", m) for m in _PHONE.findall(text)}
    # A number is eight digits or more from a 0 or a +, one blank or dash at most between two,
    # on one line. In a copy where 0 is z, other digits d, + p, lone blanks and dashes gone and
    # anything else x, its line shows [zp][zd]{7}: only those lines are searched.
    hints = text.translate(_PHONE_SHAPES).replace("ss", "xx").replace("s", "")
    candidates: list[int] = []
    line = at = 0
    for m in _PHONE_HINT.finditer(hints):
        line += hints.count("\n", at, m.start())
        at = m.start()
        if not candidates or candidates[-1] != line:
            candidates.append(line)
    if not candidates:
        return set()
    lines = text.split("\n")
    return {re.sub(r"\D", "", m) for i in candidates for m in _PHONE.findall(lines[i])}


def check_identifier_values(text: str, rules: Rules, where: str = "") -> list[Finding]:
    """Personnummer are held from the first one and blocked from `identifier_values_block`;
    e-mail addresses and phone numbers are held from `contact_values_review` distinct ones."""
    findings = []
    suffix = f" {where}" if where else ""
    pnr = find_personnummer(text)
    if pnr:
        verdict: Verdict = "block" if len(pnr) >= rules.identifier_values_block else "review"
        findings.append(
            Finding(
                NAME,
                VERSION,
                verdict,
                f"{count_words(len(pnr), 'value')} {'looks' if len(pnr) == 1 else 'look'} like "
                f"Swedish personal identity numbers "
                f"(valid checksum){suffix}",
            )
        )
    for label, found in (
        ("e-mail address", find_emails(text)),
        ("phone number", find_phones(text)),
    ):
        if len(found) >= rules.contact_values_review:
            verdict = "block" if len(found) >= 4 * rules.contact_values_review else "review"
            many = "e-mail addresses" if label == "e-mail address" else None
            findings.append(
                Finding(NAME, VERSION, verdict, f"{count_words(len(found), label, many)}{suffix}")
            )
    return findings
