"""How text is cut into the values the source index compares: one rule for the granted tables and
for every output, so a value reads the same in a CSV cell, a JSON string, a printed tuple or a log.

A word is a run of letters and digits, joined across `.`, `-`, `+`, `@` and `'` when a letter or
digit follows (so e-mail addresses, personnummer, dates and decimals stay whole); everything is
lower-cased. Numbers are normalised: `45.0` is `45`, `5.40` is `5.4`, and the separators of a
digit group go (`19850312-1234` is `198503121234`, `2024-01-15` is `20240115`). A multi-word
value ("Anna Svensson", "Storgatan 12") is its words joined by one space.
"""

from __future__ import annotations

import re
import unicodedata

WORD = re.compile(r"[^\W_]+(?:[.\-+@'][^\W_]+)*")
_DECIMAL = re.compile(r"\d+\.\d+")
_DIGIT_GROUP = re.compile(r"\d+(?:[-+]\d+)+")


def fold(text: str) -> str:
    """Lower-case, composed Unicode (an å typed as a + ring reads as å)."""
    if not text.isascii():
        text = unicodedata.normalize("NFC", text)
    return text.lower()


def normalise_word(word: str) -> str:
    """One word (already lower-cased) as the index stores it."""
    if word[0].isdigit():
        if _DECIMAL.fullmatch(word):
            whole, fraction = word.split(".")
            fraction = fraction.rstrip("0")
            return f"{whole}.{fraction}" if fraction else whole
        if _DIGIT_GROUP.fullmatch(word):
            return word.replace("-", "").replace("+", "")
    return word


def words(text: str) -> list[str]:
    """The text's words, lower-cased but not yet normalised (see `normalise_word`)."""
    return WORD.findall(fold(text))


def normalise_value(value: object) -> str:
    """A cell value as one token: its normalised words joined by a space ('' for none)."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    return " ".join(normalise_word(w) for w in words(str(value)))


def tokens(text: str, max_ngram: int = 3) -> set[str]:
    """Every normalised word of the text and every run of 2..max_ngram words: the full token set
    `SourceIndex.match` takes. (`SourceIndex.scan_text` builds n-grams only where the index
    holds multi-word values, which is much faster on long text.)"""
    normal = [normalise_word(w) for w in words(text)]
    found = set(normal)
    for n in range(2, max_ngram + 1):
        found.update(" ".join(normal[i : i + n]) for i in range(len(normal) - n + 1))
    return found
