"""secd_shared.canaries: the one generator both services use, the site's key, and how canary
fields map to a table's columns (by name and type)."""

from __future__ import annotations

from pathlib import Path

import pytest

from secd_shared.canaries import Column, canary_key, canary_rows, canary_values, read_canary_key
from secd_shared.config import Config, ConfigError, load_config

KEY = canary_key(b"k" * 32)
RUN = "r0123456789abcdef0123"
ROWS = canary_rows(KEY, RUN, 3)


def _config(tmp_path: Path, **canaries: object) -> Config:
    path = tmp_path / "secd.toml"
    lines = [f'state_dir = "{tmp_path}"', "[canaries]"]
    lines += [f"{k} = {v!r}".replace("'", '"') for k, v in canaries.items()]
    path.write_text("\n".join(lines) + "\n")
    return load_config(path, environ={})


def test_the_key_is_read_only_when_canaries_are_on(tmp_path: Path) -> None:
    # Off by default: nothing read, no key needed.
    assert read_canary_key(_config(tmp_path)) is None
    with pytest.raises(ConfigError, match=r"canaries.key_file: cannot read .*canaries/key"):
        read_canary_key(_config(tmp_path, rows=3))
    (tmp_path / "short").write_text("abc\n")
    with pytest.raises(ConfigError, match="shorter than 32 bytes"):
        read_canary_key(_config(tmp_path, rows=3, key_file="short"))
    (tmp_path / "key").write_text("a" * 64 + "\n")
    assert read_canary_key(_config(tmp_path, rows=3, key_file="key")) == canary_key(b"a" * 64)
    with pytest.raises(ConfigError, match=r"canaries.rows must be 0..20"):
        read_canary_key(_config(tmp_path, rows=-1))


def test_rows_are_per_run_and_per_key() -> None:
    assert canary_rows(KEY, RUN, 3) == ROWS
    assert canary_rows(KEY, RUN, 5)[:3] == ROWS
    assert {r.patient_id for r in canary_rows(KEY, "r-other", 3)}.isdisjoint(
        r.patient_id for r in ROWS
    )
    assert canary_rows(canary_key(b"j" * 32), RUN, 3) != ROWS
    for row in ROWS:
        assert row.name == f"{row.first_name} {row.surname}"
        assert 700_000_000 <= row.patient_id < 800_000_000


def test_fields_map_to_columns_by_name_and_type() -> None:
    columns = [
        Column("PatientID", "integer", 2**31 - 1),
        Column("date_of_birth", "date"),
        Column("Kön", "text", 1),
        Column("personnummer", "integer", 2**63 - 1),
        Column("fornamn", "text"),
        Column("Efternamn", "text"),
        Column("weight", "integer", 2**31 - 1),
    ]
    [first, *_] = canary_values(ROWS, "visits", columns)
    row = ROWS[0]
    assert first == {
        "PatientID": row.patient_id,
        "date_of_birth": row.birth_date,
        "Kön": row.sex,
        "personnummer": int(row.personnummer.replace("-", "")),
        "fornamn": row.first_name,
        "Efternamn": row.surname,
    }


def test_values_that_do_not_fit_are_left_out() -> None:
    # A smallint patient number, a 10-character personnummer column, a birth date as integer.
    columns = [
        Column("patient_id", "integer", 2**15 - 1),
        Column("pnr", "text", 12),
        Column("dob", "integer", 2**31 - 1),
    ]
    values = canary_values(ROWS, "t", columns)
    assert [set(v) for v in values] == [{"pnr"}] * 3
    assert values[0]["pnr"] == ROWS[0].personnummer.replace("-", "")


def test_a_table_with_nothing_telling_gets_no_rows() -> None:
    # Sex and postcode alone give no canary away; a first name without a surname neither.
    assert canary_values(ROWS, "t", [Column("sex", "text"), Column("postcode", "text")]) == []
    assert canary_values(ROWS, "t", [Column("firstname", "text")]) == []
    assert canary_values(ROWS, "visits", [Column("id", "integer")]) == []
    # `id` is the patient number of a table named for people.
    assert [v["id"] for v in canary_values(ROWS, "Patients", [Column("id", "integer")])] == [
        r.patient_id for r in ROWS
    ]
