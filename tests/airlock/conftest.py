"""The corpus and the source index over its synthetic patients table."""

from __future__ import annotations

import pytest

from secd_airlock.checks import Rules, SourceIndex
from tests.airlock.make_corpus import KEY, ROWS, cases, patients_table


@pytest.fixture(scope="session")
def index() -> SourceIndex:
    return SourceIndex.build(KEY, [patients_table()])


@pytest.fixture(scope="session")
def rules() -> Rules:
    return Rules()


@pytest.fixture(scope="session")
def raw_values() -> list[str]:
    """Values of the table no evidence may quote: names (and their words), personnummer in
    both forms, postcodes."""
    found = set()
    for r in ROWS:
        found.update({r[1], r[2], r[2].replace("-", ""), r[2][2:], r[6]})
        found.update(w for w in r[1].split() if len(w) > 3)
    return sorted(found, key=len, reverse=True)


CASES = cases()
