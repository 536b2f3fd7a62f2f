"""Canary rows: a few synthetic patients per run, the same for the two services that use them.

The credentials service plants them in the tables a run reads (secd_credentials.backends,
PostgreSQL) and the airlock blocks any output or log line that carries one
(secd_airlock.checks.canaries); both make them here, from the site's canary key and the run id,
so they cannot drift apart. The numbers come from HMAC-SHA256(key, run id || counter): nobody
without the key can tell a run's canaries, and no real patient has them. The key is its own file
(`[canaries] key_file`), never the airlock's fingerprint key, so the credentials service reads
nothing of the airlock's; the values never go into an event, a log line or evidence.

`[canaries] rows` is the one switch: 0 (the default) plants and checks nothing; N > 0 plants N
rows per run and checks for them.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from .columns import column_words, joined_words
from .config import Config, ConfigError
from .luhn import luhn_digit

__all__ = [
    "MAX_CANARY_ROWS",
    "CanaryRow",
    "Column",
    "canary_key",
    "canary_rows",
    "canary_values",
    "read_canary_key",
]

MAX_CANARY_ROWS = 20

_FIRST = (
    "Anna Eva Maria Karin Sara Lena Emma Ingrid Malin Sofia Elin Hanna Lars Erik Anders Johan "
    "Karl Per Nils Mikael Jan Hans Olof Sven Oskar Axel Filip Viktor Jonas Magnus"
).split()
_ONSET = "b br d dr f fr g gr h j k kl kr l m n p pr r s sk st sv t tr v vr".split()
_VOWEL = "a e i o u y å ä ö".split()
_CODA = "ck ld lm ll lv n nd ng r rd rn rk s st t".split()
_ENDING = "ius elius ander ström qvist gren fors dal borg lind".split()
_DIAGNOSES = ("Hypertension", "Asthma", "Migraine", "Depression", "Type 2 diabetes")
# The file's bytes only ever seed canaries through this label (domain separation).
_KEY_LABEL = b"secd canary key v1"
_MIN_KEY_BYTES = 32


def canary_key(secret: bytes) -> bytes:
    """The key the canaries are made under, derived from the site's canary key file."""
    return hmac.new(secret, _KEY_LABEL, hashlib.sha256).digest()


def read_canary_key(config: Config) -> bytes | None:
    """The site's canary key when `[canaries] rows` > 0, else None; ConfigError naming the
    setting when rows is out of range or the key file is missing or short."""
    settings = config.canaries
    if type(settings.rows) is not int or not 0 <= settings.rows <= MAX_CANARY_ROWS:
        raise ConfigError(f"canaries.rows must be 0..{MAX_CANARY_ROWS}, not {settings.rows!r}")
    if settings.rows == 0:
        return None
    path = config.path(settings.key_file)
    try:
        secret = path.read_bytes().strip()
    except OSError as exc:
        raise ConfigError(
            f"canaries.key_file: cannot read {path} ({exc.strerror}); canaries.rows > 0 needs a"
            " key file of at least 32 random bytes that only the credentials service and the"
            " airlock read"
        ) from None
    if len(secret) < _MIN_KEY_BYTES:
        raise ConfigError(f"canaries.key_file: {path} holds a key shorter than 32 bytes")
    return canary_key(secret)


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

    def pick(self, items: Sequence[str]) -> str:
        return items[self.below(len(items))]


@dataclass(frozen=True)
class CanaryRow:
    """One synthetic patient, with the fields a patients table usually has."""

    patient_id: int  # 9 digits, 700000000..799999999
    name: str  # "First Surname"
    personnummer: str  # YYYYMMDD-NNNC, with a valid checksum
    birth_date: str  # YYYY-MM-DD
    sex: str  # F or M
    diagnosis: str
    postcode: str  # 5 digits

    @property
    def first_name(self) -> str:
        """The first of the name's two words."""
        return self.name.split(" ", 1)[0]

    @property
    def surname(self) -> str:
        """The second of the name's two words."""
        return self.name.split(" ", 1)[1]


def canary_rows(key: bytes, run_id: str, count: int) -> tuple[CanaryRow, ...]:
    """The run's `count` canary rows under the site's canary key (derived: `canary_key`)."""
    stream = _Stream(key, run_id)
    rows = []
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
        rows.append(
            CanaryRow(
                patient_id=700_000_000 + stream.below(100_000_000),
                name=f"{stream.pick(_FIRST)} {surname}",
                personnummer=f"{year}{month:02d}{day:02d}-{serial}{luhn_digit(short)}",
                birth_date=f"{year}-{month:02d}-{day:02d}",
                sex=stream.pick(("F", "M")),
                diagnosis=stream.pick(_DIAGNOSES),
                postcode=f"{100 + stream.below(880)}{10 + stream.below(90)}",
            )
        )
    return tuple(rows)


# ------------------------------------------------------------ canary fields -> a table's columns

ColumnKind = Literal["text", "integer", "date", "other"]


@dataclass(frozen=True)
class Column:
    """A column as the mapping sees it: its name, what values it takes, and how large.

    `limit` is the most characters of a text column, or the largest value of an integer column
    (None: no limit the mapping need respect)."""

    name: str
    kind: ColumnKind
    limit: int | None = None


# Column names (their words joined, as `joined_words` reads them) each canary field fills.
_FIELDS: dict[str, frozenset[str]] = {
    "personnummer": frozenset(
        "pnr personnummer personnr ssn personalnumber personalidentitynumber "
        "socialsecuritynumber".split()
    ),
    "patient_id": frozenset(
        "patientid patientnumber patientno patientnr personid subjectid participantid "
        "pid mrn medicalrecordnumber recordnumber journalnummer".split()
    ),
    "name": frozenset("name fullname patientname personname namn".split()),
    "first_name": frozenset("firstname givenname forename fornamn".split()),
    "surname": frozenset("lastname surname familyname efternamn".split()),
    "birth_date": frozenset("birthdate dateofbirth dob birthday fodelsedatum fodelsedag".split()),
    "sex": frozenset("sex gender kon".split()),
    "diagnosis": frozenset("diagnosis diagnos".split()),
    "postcode": frozenset("postcode postalcode zip zipcode postnummer postnr".split()),
}
# A table named for people (patients, persons, ...) whose column is just `id`: the patient number.
_PERSON_TABLES = frozenset({"patient", "person", "people", "subject", "participant"})


def _field_of(column: str, table: str) -> str | None:
    joined = joined_words(column)
    for field, names in _FIELDS.items():
        if joined in names:
            return field
    words = {w.removesuffix("s") for w in column_words(table)}
    return "patient_id" if joined == "id" and words & _PERSON_TABLES else None


def _fits(text: str, column: Column) -> bool:
    return column.kind == "text" and (column.limit is None or len(text) <= column.limit)


def _value(row: CanaryRow, field: str, column: Column) -> str | int | None:
    """The field's value as the column can hold it; None where it cannot."""
    number: int | None = None
    texts: list[str] = []
    if field == "personnummer":
        digits = row.personnummer.replace("-", "")
        texts, number = [row.personnummer, digits], int(digits)
    elif field == "patient_id":
        texts, number = [str(row.patient_id)], row.patient_id
    elif field == "birth_date":
        if column.kind == "date":
            return row.birth_date
        texts = [row.birth_date]
    elif field == "postcode":
        texts, number = [row.postcode], int(row.postcode)
    else:
        texts = [str(getattr(row, field))]
    if column.kind == "integer" and number is not None:
        return number if column.limit is None or number <= column.limit else None
    return next((text for text in texts if _fits(text, column)), None)


# Fields whose values give a canary away (checks/canaries.py); a table with none gets no rows.
_TELLING = ("personnummer", "patient_id", "name")


def canary_values(
    rows: Sequence[CanaryRow], table: str, columns: Sequence[Column]
) -> list[dict[str, str | int]]:
    """Each canary row as {column: value} for `table`: the canary fields its columns take, by
    name and type; other columns are left out (NULL). No rows when no column takes a field that
    gives a canary away (personnummer, patient number, full name or first and last name); a
    row whose telling values do not fit the columns is left out."""
    filled: dict[str, tuple[str, Column]] = {}
    for column in columns:
        field = _field_of(column.name, table)
        if field is not None and field not in {f for f, _ in filled.values()}:
            filled[column.name] = (field, column)
    out: list[dict[str, str | int]] = []
    for row in rows:
        values = {
            name: value
            for name, (field, column) in filled.items()
            if (value := _value(row, field, column)) is not None
        }
        mapped = {field for name, (field, _) in filled.items() if name in values}
        # A row nothing gives away would only change the table's figures.
        if mapped & set(_TELLING) or {"first_name", "surname"} <= mapped:
            out.append(values)
    return out
