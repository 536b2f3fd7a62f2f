"""Canary rows: a few synthetic patients per run, made from a keyed PRNG (HMAC-SHA256 under the
site's canary key, over the run id), so that only the airlock (and the credentials service that
plants them, see docs/architecture.md) can tell which values are a run's canaries. No real
patient has them; an output or log line that carries one shows the job copied rows out, and is
blocked naming the run. The values never go into an event, a log line or evidence.

A canary is detected by its values that cannot occur by chance: its personnummer (12 or 10
digits, any separator), its patient number (9 digits) and its full name (a first name and a
surname made of syllables, which no name list holds together).
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Iterable
from dataclasses import dataclass

from .base import Finding
from .tokens import normalise_word, words

NAME = "canary"
VERSION = 1

_FIRST = (
    "Anna Eva Maria Karin Sara Lena Emma Ingrid Malin Sofia Elin Hanna Lars Erik Anders Johan "
    "Karl Per Nils Mikael Jan Hans Olof Sven Oskar Axel Filip Viktor Jonas Magnus"
).split()
_ONSET = "b br d dr f fr g gr h j k kl kr l m n p pr r s sk st sv t tr v vr".split()
_VOWEL = "a e i o u y å ä ö".split()
_CODA = "ck ld lm ll lv n nd ng r rd rn rk s st t".split()
_ENDING = "ius elius ander ström qvist gren fors dal borg lind".split()
_DIAGNOSES = ("Hypertension", "Asthma", "Migraine", "Depression", "Type 2 diabetes")
# Only a key derived for canaries ever seeds them (never the fingerprint key itself).
_KEY_LABEL = b"secd airlock canary key v1"


def canary_key(airlock_key: bytes) -> bytes:
    """The site's canary key, derived from the airlock's key (domain-separated)."""
    return hmac.new(airlock_key, _KEY_LABEL, hashlib.sha256).digest()


class _Stream:
    """Numbers from HMAC-SHA256(key, run id || counter): unpredictable without the key."""

    def __init__(self, key: bytes, run_id: str) -> None:
        self.key = key
        self.run_id = run_id.encode()
        self.counter = 0

    def below(self, n: int) -> int:
        self.counter += 1
        mac = hmac.new(self.key, self.run_id + b"\0" + str(self.counter).encode(), "sha256")
        return int.from_bytes(mac.digest()[:8], "big") % n

    def pick(self, items: tuple[str, ...] | list[str]) -> str:
        return items[self.below(len(items))]


def _luhn_digit(nine: str) -> str:
    total = 0
    for i, ch in enumerate(nine):
        d = int(ch) * (2 if i % 2 == 0 else 1)
        total += d - 9 if d > 9 else d
    return str((10 - total % 10) % 10)


@dataclass(frozen=True)
class CanaryRow:
    """One synthetic patient, with the columns a patients table usually has."""

    patient_id: int
    name: str
    personnummer: str  # YYYYMMDD-NNNC, with a valid checksum
    birth_date: str
    sex: str
    diagnosis: str
    postcode: str


@dataclass(frozen=True)
class Canaries:
    """A run's canary rows and the normalised tokens that give them away."""

    run_id: str
    rows: tuple[CanaryRow, ...]
    tokens: frozenset[str]

    @classmethod
    def for_run(cls, key: bytes, run_id: str, count: int = 3) -> Canaries:
        """The run's `count` canary rows under the site's canary key."""
        stream = _Stream(key, run_id)
        rows = []
        tokens: set[str] = set()
        for _ in range(max(0, count)):
            surname = (
                stream.pick(_ONSET)
                + stream.pick(_VOWEL)
                + stream.pick(_CODA)
                + stream.pick(_VOWEL)
                + stream.pick(_ENDING)
            ).capitalize()
            year = 1930 + stream.below(75)
            month, day = 1 + stream.below(12), 1 + stream.below(28)
            serial = f"{stream.below(1000):03d}"
            short = f"{year % 100:02d}{month:02d}{day:02d}{serial}"
            pnr = f"{year}{month:02d}{day:02d}-{serial}{_luhn_digit(short)}"
            row = CanaryRow(
                patient_id=700_000_000 + stream.below(100_000_000),
                name=f"{stream.pick(_FIRST)} {surname}",
                personnummer=pnr,
                birth_date=f"{year}-{month:02d}-{day:02d}",
                sex=stream.pick(("F", "M")),
                diagnosis=stream.pick(_DIAGNOSES),
                postcode=f"{100 + stream.below(880)}{10 + stream.below(90)}",
            )
            rows.append(row)
            digits = pnr.replace("-", "")
            tokens.update({digits, digits[2:], str(row.patient_id), row.name.lower()})
        return cls(run_id, tuple(rows), frozenset(tokens))

    def found(self, texts: Iterable[str]) -> int:
        """How many of the canaries' tokens the texts hold between them."""
        seen: set[str] = set()
        for text in texts:
            previous = ""
            for word in words(text):
                token = normalise_word(word)
                # A name is two words; a number may sit inside a dotted path or a decimal.
                for candidate in (token, f"{previous} {token}", *token.split(".")):
                    if candidate in self.tokens:
                        seen.add(candidate)
                previous = token
        return len(seen)


def check_canaries(
    texts: Iterable[str], canaries: Canaries | None, where: str = "in the output"
) -> list[Finding]:
    """`block` when the texts carry any canary value of the run."""
    if canaries is None or not canaries.tokens:
        return []
    found = canaries.found(texts)
    if not found:
        return []
    return [
        Finding(
            NAME,
            VERSION,
            "block",
            f"values of the synthetic canary patients planted for run {canaries.run_id} appear "
            f"{where} ({found} of them): the job copied rows of the granted tables out",
        )
    ]
