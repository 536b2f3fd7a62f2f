"""Canary rows: a few synthetic patients per run (secd_shared.canaries: a keyed PRNG under the
site's canary key, over the run id), which the credentials service plants in the run's tables;
only the airlock and the credentials service can tell which values are a run's canaries. No real
patient has them; an output or log line that carries one shows the job copied rows out, and is
blocked naming the run. The values never go into an event, a log line or evidence.

A canary is detected by its values that cannot occur by chance: its personnummer (12 or 10
digits, any separator), its patient number (9 digits) and its full name (a first name and a
surname made of syllables, which no name list holds together).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from secd_shared.canaries import CanaryRow, canary_rows

from .base import Finding
from .tokens import normalise_word, words

NAME = "canary"
VERSION = 1


@dataclass(frozen=True)
class Canaries:
    """A run's canary rows and the normalised tokens that give them away."""

    run_id: str
    rows: tuple[CanaryRow, ...]
    tokens: frozenset[str]

    @classmethod
    def for_run(cls, key: bytes, run_id: str, count: int = 3) -> Canaries:
        """The run's `count` canary rows under the site's canary key (`secd_shared.canaries`)."""
        rows = canary_rows(key, run_id, count)
        tokens: set[str] = set()
        for row in rows:
            digits = row.personnummer.replace("-", "")
            tokens.update({digits, digits[2:], str(row.patient_id), row.name.lower()})
        return cls(run_id, rows, frozenset(tokens))

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
