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
_DIGIT_GROUP = re.compile(r"\d+(?:[-+]\d+)+")
_JOINERS = ".-+@'"
_JOINERS_AS_DOT = str.maketrans(_JOINERS, "." * len(_JOINERS))
# ASCII characters that are neither a letter, a digit nor a joiner of WORD, as blanks.
_ASCII_BLANKS = {c: " " for c in range(128) if not chr(c).isalnum() and chr(c) not in ".-+@'\n"}


def fold(text: str) -> str:
    """Lower-case, composed Unicode (an å typed as a + ring reads as å)."""
    if not text.isascii():
        text = unicodedata.normalize("NFC", text)
    return text.lower()


def normalise_word(word: str) -> str:
    """One word (already lower-cased) as the index stores it."""
    # str.isdecimal is exactly the regex's \d (Unicode category Nd): plain string tests decide
    # the common cases (a whole number, a decimal) without a regex.
    if word[0].isdigit() and not word.isdecimal():
        whole, dot, fraction = word.partition(".")
        if dot:
            if whole.isdecimal() and fraction.isdecimal():
                fraction = fraction.rstrip("0")
                return f"{whole}.{fraction}" if fraction else whole
        elif _DIGIT_GROUP.fullmatch(word):
            return word.replace("-", "").replace("+", "")
    return word


def words(text: str) -> list[str]:
    """The text's words, lower-cased but not yet normalised (see `normalise_word`)."""
    return WORD.findall(fold(text))


def word_lines(text: str) -> tuple[list[list[str]], set[str]]:
    """The words of each line of the text (as `words` reads them) and the distinct words.

    ASCII text, nearly all of it, is cut without the regex: every character that is not a
    letter, a digit or a joiner becomes a blank and the lines are split at blanks, which gives
    `WORD`'s words wherever each joiner has a letter or digit on both sides. A piece where one
    does not ("results.", "a--b") is read again with `WORD`, and so is the line that holds it.
    """
    low = fold(text)
    lines = low.split("\n")
    if not low.isascii():
        found = [WORD.findall(line) for line in lines]
        return found, set().union(*found)
    blanked = low.translate(_ASCII_BLANKS)
    # A full stop before a blank or a line break joins nothing (the end of a sentence): the
    # common case is blanked here, any other lone joiner is found below.
    blanked = blanked.replace(". ", "  ").replace(".\n", " \n")
    # Two joiners side by side (one joins nothing) are rare: only then does a piece whose ends
    # are letters or digits need the regex.
    paired = ".." in blanked.translate(_JOINERS_AS_DOT)
    found = [line.split() for line in blanked.split("\n")]
    distinct: set[str] = set().union(*found)
    odd = {
        p
        for p in distinct
        if not p.isalnum()
        and not (p[0].isalnum() and p[-1].isalnum() and not (paired and not WORD.fullmatch(p)))
    }
    if odd:
        for i, ws in enumerate(found):
            if not odd.isdisjoint(ws):
                found[i] = WORD.findall(lines[i])
        distinct -= odd
        distinct.update(*(WORD.findall(p) for p in odd))
    return found, distinct


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
