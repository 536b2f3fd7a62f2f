"""Tables: CSV, TSV and JSON records read as a table, then held when too long or too wide (a
transposed dump is wide), too many cells, or with columns named like identifiers."""

from __future__ import annotations

import csv
import io
import json
import re
from dataclasses import dataclass

from secd_shared.columns import column_words

from .base import Finding, Rules, count_words

NAME = "table"
VERSION = 1

csv.field_size_limit(64 * 1024 * 1024)

# Column names that say the column identifies a person, after normalising (camelCase split,
# lower case, separators dropped): PatientID, patient_id and "Patient Id" all read "patientid".
_IDENTIFIER_NAMES = frozenset(
    {
        "pid", "ssn", "mrn", "pnr", "personnummer", "personnr", "samordningsnummer",
        "personalnumber", "personalidentitynumber", "socialsecuritynumber", "nhsnumber",
        "nhsno", "name", "fullname", "firstname", "lastname", "surname", "givenname",
        "forename", "middlename", "maidenname", "patientname", "personname", "namn",
        "fornamn", "efternamn", "email", "emailaddress", "mail", "epost", "phone",
        "phonenumber", "telephone", "tel", "telefon", "mobile", "mobilephone", "cellphone",
        "fax", "address", "streetaddress", "street", "adress", "gatuadress", "homeaddress",
        "birthdate", "dateofbirth", "dob", "birthday", "fodelsedatum", "fodelsedag",
        "patientid", "personid", "subjectid", "participantid", "memberid", "customerid",
        "patientnumber", "patientno", "patientnr", "medicalrecordnumber", "recordnumber",
        "journalnummer", "passport", "passportnumber", "driverslicense", "licensenumber",
        "ipaddress", "ip", "username", "userid", "accountnumber", "iban",
    }
)  # fmt: skip
_PERSON_WORDS = frozenset({"patient", "person", "subject", "participant", "member", "customer"})
_ID_WORDS = frozenset({"id", "number", "no", "nr", "key", "ref", "code"})


@dataclass(frozen=True)
class ParsedTable:
    """An output read as a table: its column names (positions when it had no header) and rows."""

    columns: list[str]
    rows: list[list[object]]


def identifier_like(name: str) -> bool:
    """Whether a column name says the column identifies people."""
    ws = column_words(name)
    if not ws:
        return False
    if "".join(ws) in _IDENTIFIER_NAMES:
        return True
    if any(w in ("email", "phone", "ssn", "personnummer", "mrn", "dob") for w in ws):
        return True
    if set(ws) & _PERSON_WORDS and set(ws) & (_ID_WORDS | {"name"}):
        return True
    return bool({"birth", "birthdate"} & set(ws) and {"date", "day", "birthdate"} & set(ws))


def parse_table(text: str, found: str) -> ParsedTable | None:
    """The table in a CSV, TSV or JSON text (`found` is what `filetype.sniff` said), or None
    when it holds none."""
    if found in ("csv", "tsv"):
        return _parse_delimited(text, "\t" if found == "tsv" else _delimiter(text))
    if found == "json":
        try:
            return table_from_json(json.loads(text))
        except ValueError:
            return None
    return None


def _delimiter(text: str) -> str:
    first = text.split("\n", 1)[0]
    return ";" if first.count(";") > first.count(",") else ","


def _parse_delimited(text: str, delimiter: str) -> ParsedTable | None:
    rows = [r for r in csv.reader(io.StringIO(text), delimiter=delimiter) if r]
    if not rows:
        return None
    header, body = rows[0], rows[1:]
    if all(_is_number(h) for h in header):
        # No header: every row is data; columns are numbered.
        header, body = [str(i) for i in range(len(rows[0]))], rows
    return ParsedTable(list(header), [list(r) for r in body])


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def table_from_json(value: object) -> ParsedTable | None:
    """Records (a list of objects), rows (a list of lists), columns (an object of lists or of
    objects, as pandas writes them) or one object of scalars; the largest such table inside."""
    if isinstance(value, list) and value:
        if all(isinstance(v, dict) for v in value):
            columns: list[str] = []
            for record in value:
                columns.extend(k for k in record if k not in columns)
            return ParsedTable(columns, [[r.get(c) for c in columns] for r in value])
        if all(isinstance(v, list) for v in value):
            width = max(len(v) for v in value)
            first = value[0]
            if all(isinstance(x, str) for x in first) and len(value) > 1:
                return ParsedTable([str(x) for x in first], [list(v) for v in value[1:]])
            return ParsedTable([str(i) for i in range(width)], [list(v) for v in value])
        return ParsedTable(["value"], [[v] for v in value])
    if isinstance(value, dict) and value:
        inner = list(value.values())
        if all(isinstance(v, list) for v in inner):
            length = max(len(v) for v in inner)
            if length > 1:
                cols = [str(k) for k in value]
                return ParsedTable(
                    cols, [[v[i] if i < len(v) else None for v in inner] for i in range(length)]
                )
        if all(isinstance(v, dict) for v in inner) and len(inner) > 1:
            keys: list[str] = []
            for v in inner:
                keys.extend(k for k in v if k not in keys)
            if len(keys) > 1:
                return ParsedTable(
                    [str(k) for k in value], [[v.get(k) for v in inner] for k in keys]
                )
        candidates = [table_from_json(v) for v in inner if isinstance(v, list | dict)]
        nested = [t for t in candidates if t is not None and len(t.rows) > 1]
        if nested:
            return max(nested, key=lambda t: len(t.rows) * max(len(t.columns), 1))
        return ParsedTable([str(k) for k in value], [inner])
    return None


def _quote_column(name: str) -> str:
    """A column name is quoted only when it cannot carry data: short, letters and separators."""
    if len(name) <= 40 and re.fullmatch(r"[A-Za-z _.\-]+", name):
        return f"column '{name}'"
    return "a column"


def check_table(table: ParsedTable, rules: Rules) -> list[Finding]:
    """Row and cell limits in both orientations, and identifier-like column names."""
    findings = []
    nrows, ncols = len(table.rows), len(table.columns)
    if nrows > rules.max_rows:
        findings.append(
            Finding(
                NAME,
                VERSION,
                "review",
                f"{count_words(nrows, 'row')}, over the site's {rules.max_rows:,} for a table",
            )
        )
    if ncols > rules.max_rows:
        findings.append(
            Finding(
                NAME,
                VERSION,
                "review",
                f"{count_words(ncols, 'column')}, over the site's {rules.max_rows:,}: a table "
                "this wide may be a transposed dump",
            )
        )
    cells = sum(len(r) for r in table.rows)
    if cells > rules.max_cells:
        findings.append(
            Finding(
                NAME,
                VERSION,
                "review",
                f"{count_words(cells, 'cell')}, over the site's {rules.max_cells:,} for a table",
            )
        )
    named = [c for c in table.columns if identifier_like(c)]
    # A transposed table carries its column names in its first column.
    if ncols >= 2 and nrows >= 2:
        named += [str(r[0]) for r in table.rows if r and identifier_like(str(r[0]))][:20]
    for column in named[:5]:
        findings.append(
            Finding(NAME, VERSION, "review", f"{_quote_column(column)} looks like an identifier")
        )
    if len(named) > 5:
        findings.append(
            Finding(
                NAME,
                VERSION,
                "review",
                f"{len(named) - 5} more columns look like identifiers",
            )
        )
    return findings
