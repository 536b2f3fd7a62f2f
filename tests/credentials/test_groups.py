"""Group parsing, account names and password hashes: no server needed."""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
from datetime import UTC, datetime, timedelta

import msgspec
import pytest

from secd_credentials.accounts import (
    account_name,
    mysql_native_hash,
    new_password,
    scram_sha256_verifier,
)
from secd_credentials.backends import (
    Backend,
    MariaDBBackend,
    MariaDBSettings,
    PostgresBackend,
    PostgresSettings,
    make_backend,
)
from secd_credentials.backends.base import check_issue_args, redact, split_tables
from secd_credentials.groups import (
    NOT_A_GRANT_GROUP,
    GroupGrant,
    canonical_backend,
    grants_for,
    parse_group,
    table_problem,
)
from secd_shared.events import Refusal, new_run_id

# ---------------------------------------------------------------- parse_group


@pytest.mark.parametrize(
    ("group", "backend", "table"),
    [
        ("postgres-patients-read", "postgres", "patients"),
        ("mysql-patients-read", "mysql", "patients"),
        ("mariadb-patients-read", "mysql", "patients"),
        ("postgres-_t-read", "postgres", "_t"),
        ("postgres-Visits2024-read", "postgres", "Visits2024"),
        ("postgres-" + "a" * 64 + "-read", "postgres", "a" * 64),
        # Only the first dash and the last "-read" delimit; a table cannot hold dashes anyway.
        ("postgres-read_log-read", "postgres", "read_log"),
    ],
)
def test_parse_group_accepts_grant_groups(group: str, backend: str, table: str) -> None:
    assert parse_group(group) == GroupGrant(group=group, backend=backend, table=table)


@pytest.mark.parametrize(
    "group",
    ["staff", "", "admins-read", "read", "-read", "postgres", "postgres-patients", "oracle-t-read"],
)
def test_parse_group_names_non_grant_groups(group: str) -> None:
    assert parse_group(group) == Refusal(name=group, reason=NOT_A_GRANT_GROUP)


HOSTILE = [
    "postgres-pat'ients-read",  # single quote
    'postgres-pat"ients-read',  # double quote
    "mysql-pat`ients-read",  # backtick
    "mysql-patients`; DROP TABLE secrets; --`-read",
    "postgres-patients;DROP TABLE secrets-read",  # semicolon
    "postgres-patients--comment-read",  # -- comment (and a dash)
    "postgres-patients/*x*/-read",  # block comment
    "postgres-pat*/ients-read",
    "postgres-patients#x-read",  # MySQL comment
    "mysql--read",  # empty table
    "postgres-read",  # empty table, dash shared with -read
    "postgres-a b-read",  # space
    "postgres-a\tb-read",  # tab
    "postgres-a\nb-read",  # newline
    "postgres-a\x00b-read",  # NUL
    "postgres-p\u0430tients-read",  # Cyrillic a (U+0430)
    "postgres-\u0440\u0430ti\u0435nts-read",  # several Cyrillic look-alikes
    "postgres-\uff50\uff41\uff54\uff49\uff45\uff4e\uff54\uff53-read",  # fullwidth
    "postgres-patients\u200b-read",  # zero-width space
    "postgres-pat\u00adients-read",  # soft hyphen
    "postgres-patients\u202e-read",  # right-to-left override
    "postgres-pati\u0435nts-read",  # Cyrillic ie (U+0435)
    "postgres-\u03c1atients-read",  # Greek rho
    "postgres-pat\u0131ents-read",  # dotless i
    "postgres-" + "a" * 65 + "-read",  # over-long
    "postgres-" + "x" * 1000 + "-read",
    "postgres-1patients-read",  # leading digit
    "postgres-pg_catalog.pg_authid-read",  # schema-qualified
    "mysql-mysql.user-read",
    "postgres-patients)-read",
    "postgres-patients\\-read",  # backslash
    "postgres-$1-read",  # placeholder
    "mysql-%s-read",  # placeholder
    "postgres-patients%-read",  # LIKE wildcard
    "postgres-*-read",
    "postgres-patients\r-read",
    "postgres-\u01c5-read",  # titlecase letter, isalpha but not ASCII
    "postgres-\u0661\u0662\u0663-read",  # Arabic-Indic digits
]


@pytest.mark.parametrize("group", HOSTILE)
def test_parse_group_refuses_hostile_names(group: str) -> None:
    result = parse_group(group)
    assert isinstance(result, Refusal)
    assert result.name == group
    assert result.reason != NOT_A_GRANT_GROUP
    # A reason never carries an invisible or look-alike character back to a reader.
    assert result.reason.isascii()
    assert result.reason.isprintable()


def test_hostile_corpus_is_large_enough() -> None:
    assert len(HOSTILE) >= 30
    assert len(set(HOSTILE)) == len(HOSTILE)


@pytest.mark.parametrize(
    ("group", "fragment"),
    [
        ("mysql--read", "empty table name"),
        ("postgres-p\u0430tients-read", "U+0430 (CYRILLIC SMALL LETTER A)"),
        (
            "postgres-\uff50\uff41\uff54\uff49\uff45\uff4e\uff54\uff53-read",
            "FULLWIDTH LATIN SMALL LETTER P",
        ),
        ("postgres-patients\u200b-read", "U+200B (ZERO WIDTH SPACE)"),
        ("postgres-a b-read", "U+0020 (SPACE)"),
        ("postgres-a;b-read", "';'"),
        ("postgres-" + "a" * 65 + "-read", "65 characters long; at most 64"),
        ("postgres-1a-read", "must start with a letter or _"),
    ],
)
def test_refusal_reasons_say_what_is_wrong(group: str, fragment: str) -> None:
    result = parse_group(group)
    assert isinstance(result, Refusal)
    assert fragment in result.reason


def test_parse_group_rejects_non_text() -> None:
    assert isinstance(parse_group(None), Refusal)  # type: ignore[arg-type]
    assert table_problem(42) is not None


# ---------------------------------------------------------------- grants_for


def test_grants_for_picks_this_backend_and_explains_the_rest() -> None:
    groups = [
        "staff",
        "postgres-patients-read",
        "mysql-visits-read",
        "mariadb-labs-read",
        "postgres-visits-read",
        "postgres-patients-read",
        "postgres-a;b-read",
    ]
    tables, refused = grants_for(groups, "postgres")
    assert tables == ["patients", "visits"]
    assert refused == [
        Refusal(name="staff", reason=NOT_A_GRANT_GROUP),
        Refusal(name="mysql-visits-read", reason="group for backend mysql; this run uses postgres"),
        Refusal(name="mariadb-labs-read", reason="group for backend mysql; this run uses postgres"),
        Refusal(name="postgres-a;b-read", reason=parse_group("postgres-a;b-read").reason),
    ]


@pytest.mark.parametrize("backend", ["mysql", "mariadb"])
def test_grants_for_mysql_accepts_both_spellings(backend: str) -> None:
    tables, refused = grants_for(["mysql-a-read", "mariadb-b-read", "postgres-c-read"], backend)
    assert tables == ["a", "b"]
    assert refused == [
        Refusal(name="postgres-c-read", reason="group for backend postgres; this run uses mysql")
    ]


def test_grants_for_unknown_backend() -> None:
    with pytest.raises(ValueError, match="unknown backend"):
        grants_for([], "oracle")
    assert canonical_backend("mariadb") == "mysql"


# ---------------------------------------------------------------- accounts


def test_account_name_is_deterministic_and_validated() -> None:
    run_id = new_run_id()
    assert account_name(run_id) == "secd_" + run_id == account_name(run_id)
    for bad in [
        "",
        "r123",
        "R0123456789abcdef012",
        "r0123456789ABCDEF012",
        "r0123456789abcdef0123",
        "r0123456789abcdef01\n",
        "x0123456789abcdef012",
        "r0123456789abcdef01'",
        None,
    ]:
        with pytest.raises(ValueError):
            account_name(bad)  # type: ignore[arg-type]


def test_new_password_is_long_random_and_url_safe() -> None:
    passwords = {new_password() for _ in range(50)}
    assert len(passwords) == 50
    for password in passwords:
        assert len(password) >= 32
        assert re.fullmatch(r"[A-Za-z0-9_-]+", password)


def test_scram_verifier_matches_rfc7677_exchange() -> None:
    # RFC 7677 section 3: user "user", password "pencil"; the verifier must let a server check
    # the client's proof and produce the server signature given there.
    salt = base64.b64decode("W22ZaJ0SNY7soEsUEjb6gQ==")
    verifier = scram_sha256_verifier("pencil", salt=salt, iterations=4096)
    match = re.fullmatch(r"SCRAM-SHA-256\$4096:([^$]+)\$([^:]+):(.+)", verifier)
    assert match is not None
    assert base64.b64decode(match[1]) == salt
    stored_key, server_key = base64.b64decode(match[2]), base64.b64decode(match[3])
    auth_message = (
        b"n=user,r=rOprNGfwEbeRWgbNEkqO,"
        b"r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096,"
        b"c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0"
    )
    proof = base64.b64decode("dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ=")
    client_signature = hmac.digest(stored_key, auth_message, "sha256")
    client_key = bytes(a ^ b for a, b in zip(proof, client_signature, strict=True))
    assert hashlib.sha256(client_key).digest() == stored_key
    server_signature = hmac.digest(server_key, auth_message, "sha256")
    assert base64.b64encode(server_signature) == b"6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4="


def test_scram_verifier_salts_freshly_and_hides_the_password() -> None:
    password = new_password()
    first, second = scram_sha256_verifier(password), scram_sha256_verifier(password)
    assert first != second
    assert first.startswith("SCRAM-SHA-256$4096:")
    assert password not in first
    with pytest.raises(ValueError):
        scram_sha256_verifier("p\u00e4ssword")
    with pytest.raises(ValueError):
        scram_sha256_verifier("")


def test_mysql_native_hash_known_values() -> None:
    # Values from MariaDB's own PASSWORD() function.
    assert mysql_native_hash("password") == "*2470C0C06DEE42FD1618BB99005ADCA2EC9D1E19"
    assert mysql_native_hash("pencil") == "*7614BE58636C810A9D8970A50B3B2A78450413E4"


# ---------------------------------------------------------------- shared backend checks


def test_split_tables_validates_and_dedupes() -> None:
    good, refused = split_tables(["a", "b", "a", "c;d", "\u00e9"])
    assert good == ["a", "b"]
    assert [r.name for r in refused] == ["c;d", "\u00e9"]
    with pytest.raises(TypeError):
        split_tables("patients")  # type: ignore[arg-type]


AWARE = datetime.now(UTC) + timedelta(hours=1)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"account": "Robert'); DROP TABLE students;--"},
        {"account": "secd_" + "a" * 40},
        {"account": "SECD_x"},
        {"account": ""},
        {"password": ""},
        {"expires_at": datetime(2030, 1, 1)},  # naive on purpose
        {"expires_at": "2030-01-01"},
        {"max_connections": 0},
        {"max_connections": True},
        {"max_connections": "4"},
        {"max_connections": 2.5},
        {"statement_timeout_s": 0},
        {"statement_timeout_s": "5; DROP"},
        {"statement_timeout_s": 1.5},
    ],
)
def test_issue_arguments_are_checked(kwargs: dict) -> None:
    args = {
        "account": "secd_r0123456789abcdef012",
        "password": "pw",
        "expires_at": AWARE,
        "max_connections": 4,
        "statement_timeout_s": None,
    } | kwargs
    account, password = args.pop("account"), args.pop("password")
    with pytest.raises(ValueError):
        check_issue_args(account, password, **args)


def test_redact_hides_secrets_and_hash_shapes() -> None:
    text = redact(
        "near 'SCRAM-SHA-256$4096:abc$def:ghi' and '*2470C0C06DEE42FD1618BB99005ADCA2EC9D1E19' pw",
        "pw",
    )
    assert "abc" not in text and "2470C0" not in text and " pw" not in text


def test_settings_hide_password_and_refuse_unknown_fields() -> None:
    pg = msgspec.convert({"database": "d", "password": "hunter2"}, PostgresSettings)
    my = msgspec.convert({"database": "d", "password": "hunter2", "socket": "/s"}, MariaDBSettings)
    assert "hunter2" not in repr(pg) and "hunter2" not in str(my)
    with pytest.raises(msgspec.ValidationError):
        msgspec.convert({"database": "d", "passwd": "x"}, PostgresSettings)
    with pytest.raises(msgspec.ValidationError):
        msgspec.convert({"database": "d", "sock": "x"}, MariaDBSettings)


def test_backends_follow_the_protocol() -> None:
    pg = make_backend(PostgresSettings(database="d", socket_dir="/var/run/postgresql"))
    my = make_backend(MariaDBSettings(database="d", socket="/run/mysqld/mysqld.sock"))
    assert isinstance(pg, PostgresBackend) and isinstance(pg, Backend)
    assert isinstance(my, MariaDBBackend) and isinstance(my, Backend)
    assert pg.address().socket == "/var/run/postgresql/.s.PGSQL.5432"
    assert my.address().kind == "mysql"
