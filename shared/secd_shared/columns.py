"""Column names read as words, one rule for every service: the airlock's table check names
identifier-like columns by them, and the credentials service maps canary fields to columns."""

from __future__ import annotations

import re

__all__ = ["column_words", "joined_words"]

_CAMEL = re.compile(r"[A-Z]+(?![a-z])|[A-Z]?[a-z]+|\d+")


def column_words(name: str) -> list[str]:
    """A column name's words: 'PatientID' -> ['patient', 'id'], 'date_of_birth' -> [...]."""
    folded = name.replace("ö", "o").replace("å", "a").replace("ä", "a")
    folded = folded.replace("Ö", "O").replace("Å", "A").replace("Ä", "A")
    return [w.lower() for w in _CAMEL.findall(folded)]


def joined_words(name: str) -> str:
    """A column name as one word: PatientID, patient_id and "Patient Id" all read "patientid"."""
    return "".join(column_words(name))
