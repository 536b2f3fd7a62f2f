"""The checks' fast paths for ASCII text (str.translate and str.find instead of a regex over the
whole text) give exactly what the regex they stand in for gives, on random text built from the
characters each path treats specially, and on the cases that made each path necessary."""

from __future__ import annotations

import random
import re

import pytest

from secd_airlock.checks.encodings import _long_words
from secd_airlock.checks.identifiers import (
    _PERSONNUMMER,
    _PHONE,
    digit_run_lines,
    find_personnummer,
    find_phones,
    is_personnummer,
)
from secd_airlock.checks.tokens import WORD, fold, normalise_word, word_lines

# What normalise_word did with regexes alone, before its string tests.
_DECIMAL = re.compile(r"\d+\.\d+")
_DIGIT_GROUP = re.compile(r"\d+(?:[-+]\d+)+")


def _normalise_by_regex(word: str) -> str:
    if word[0].isdigit():
        if _DECIMAL.fullmatch(word):
            whole, fraction = word.split(".")
            fraction = fraction.rstrip("0")
            return f"{whole}.{fraction}" if fraction else whole
        if _DIGIT_GROUP.fullmatch(word):
            return word.replace("-", "").replace("+", "")
    return word


def _texts(alphabet: str, count: int, longest: int, seed: int) -> list[str]:
    rng = random.Random(seed)
    return [
        "".join(rng.choice(alphabet) for _ in range(rng.randint(0, longest))) for _ in range(count)
    ]


@pytest.mark.parametrize(
    "text",
    [
        "Results. The cohort (n = 120, p = 0.031).\nEnd.",
        "a..b a.-b -a- 'quoted' o'brien anna.svensson@example.se 19850312-1234",
        "loss=0.1230 lr=1.20e-04 2024-03-01T10:05:05",
        "Åsa Öberg, Malmö\nS\u0301ven 45.0",  # not ASCII: the regex reads it
        "",
        "\n\n",
    ],
)
def test_word_lines_cases(text: str) -> None:
    lines, distinct = word_lines(text)
    expected = [WORD.findall(line) for line in fold(text).split("\n")]
    assert lines == expected
    assert distinct == {w for line in expected for w in line}


def test_word_lines_random() -> None:
    alphabet = "aZ09._-+@' \n\t,=;:/\\\"()x5"
    texts = _texts(alphabet, 4000, 40, 1) + _texts(alphabet + "Å²٣é", 1000, 40, 2)
    for text in texts:
        lines, distinct = word_lines(text)
        expected = [WORD.findall(line) for line in fold(text).split("\n")]
        assert lines == expected, text
        assert distinct == {w for line in expected for w in line}, text


def test_normalise_word_as_the_regexes() -> None:
    words = ["1.2.3", "12-34", "١٢.٣٠", "²3", "1.50", "1.00", "0.0", "12+34-5", "3e-04", "5.40"]
    words += _texts("0123456789.-+a²٣", 5000, 8, 3)
    for word in filter(None, words):
        assert normalise_word(word) == _normalise_by_regex(word), word


def test_personnummer_search_by_lines() -> None:
    # 811218-9876 and 19850312-1234 style values, valid and not, on lines of other digits.
    texts = [
        "id 811218-9876 and 8112189876\n20240301 and 12345 67890",
        "no run here: 12345-1234\n123456\n",
    ]
    texts += _texts("0123456789" * 4 + "-+ \n\na", 5000, 60, 4)
    texts += _texts("0123456789-+ \n٣", 500, 60, 5)
    found_any = False
    for text in texts:
        expected = {
            m.group(1)[-6:] + m.group(2)
            for m in _PERSONNUMMER.finditer(text)
            if is_personnummer(m.group(1), m.group(2))
        }
        assert find_personnummer(text) == expected, text
        found_any |= bool(expected)
    assert found_any
    assert digit_run_lines("12345\nab 123456 c\n1") == [(6, 17)]
    assert digit_run_lines("12345\n1234") == []


def test_phone_search_by_lines() -> None:
    texts = [
        "ring 070-123 45 67 or +46 70 123 45 67\n",
        "x\n+1 555 123 4567\n08-123 456 78 and 2024-03-01 10:05:05",
        "tel 0701234567, 0701234568; 0701234569",
    ]
    texts += _texts("0000123456789   --++\n.,ax", 5000, 60, 6)
    texts += _texts("0123456789 -+\n٣", 500, 40, 7)
    found_any = False
    for text in texts:
        expected = {re.sub(r"\D", "", m) for m in _PHONE.findall(text)}
        assert find_phones(text) == expected, text
        found_any |= bool(expected)
    assert found_any


def test_long_words() -> None:
    texts = _texts("abcdefghijklmnopqrstuvwxyz+/=-_ ", 3000, 120, 8)
    texts += _texts("ab\x1c\x1f\t\n\x0b\x85\xa0", 1000, 80, 9)
    found_any = False
    for text in texts:
        expected = [w for w in text.split() if len(w) >= 24]
        assert _long_words(text) == expected, text
        found_any |= bool(expected)
    assert found_any
