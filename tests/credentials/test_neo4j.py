"""Neo4j backend: statement shapes here, and the real proof against a server when one is given.

No Neo4j server runs on this machine and none can be installed here (it is in neither Debian nor
PyPI), so two kinds of tests live in this file:

- Statement-shape tests use `FakeNeo4jSession`, a fake that records every (database, query,
  parameters) the backend sends and answers a few read queries from canned rows. They show which
  Cypher is built, that the password and names travel as parameters, and which labels can reach
  the text. They show nothing about what a server does with it.
- Server tests run only when SECD_TEST_NEO4J_URI (with SECD_TEST_NEO4J_USER and
  SECD_TEST_NEO4J_PASSWORD) names a server they may create users, roles and nodes on; they skip,
  saying so, otherwise. They are the proof that the grants and the revocation really work;
  what every backend must do (tests/contracts/test_backend_contract.py) runs there too.
"""

from __future__ import annotations

import asyncio
import os
import re
import secrets
import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import msgspec
import neo4j
import neo4j.exceptions
import pytest
import pytest_asyncio

from secd_credentials.accounts import account_name, new_password
from secd_credentials.backends import (
    Backend,
    BackendError,
    Neo4jBackend,
    Neo4jSettings,
    backend_settings,
    make_backend,
)
from secd_credentials.backends import neo4j as nb
from secd_credentials.groups import GroupGrant, grants_for, parse_group
from secd_shared.config import ConfigError, load_config
from secd_shared.events import DatabaseAddress, Refusal, new_run_id

URI_VAR = "SECD_TEST_NEO4J_URI"
SERVER_URI = os.environ.get(URI_VAR)
SERVER_USER = os.environ.get("SECD_TEST_NEO4J_USER", "neo4j")
SERVER_PASSWORD = os.environ.get("SECD_TEST_NEO4J_PASSWORD", "")
SERVER_DATABASE = os.environ.get("SECD_TEST_NEO4J_DATABASE", "neo4j")
SKIP_REASON = (
    f"{URI_VAR} is not set: no Neo4j server to test against (set it, with SECD_TEST_NEO4J_USER"
    " and SECD_TEST_NEO4J_PASSWORD, to run the server tests)"
)

# Labels that must never reach a statement: quotes, backticks, separators, comments, look-alikes.
HOSTILE_LABELS = [
    "Patient`) TO PUBLIC //",
    "Patient` TO reader; DROP USER neo4j //",
    "`Patient`",
    "Patient;",
    "Patient--",
    "Patient/*x*/",
    "Patient\\u0060",
    "Pat ient",
    "Pat-ient",
    "Patient\n",
    "Patient\x00",
    "\u03a1atient",  # Greek capital rho
    "Pat\u0456ent",  # Cyrillic i
    "Patient\u200b",  # zero-width space
    "P" * 65,
    "",
    "1Patient",
    "*",
    "$label",
    "{Patient}",
]


def expiry(hours: float = 1) -> datetime:
    """An expiry in the future."""
    return datetime.now(UTC) + timedelta(hours=hours)


def settings(**changes: Any) -> Neo4jSettings:
    """Settings for a server that is never contacted (the fake answers instead)."""
    values: dict[str, Any] = {
        "uri": "bolt://graph.example:7687",
        "user": "neo4j",
        "password": "admin-secret-1",
        "database": "clinic",
    }
    values.update(changes)
    return Neo4jSettings(**values)


# ---------------------------------------------------------------- the fake


class _FakeResult:
    def __init__(self, rows: list[dict[str, Any]]) -> None:
        self._rows = rows

    async def data(self) -> list[dict[str, Any]]:
        return list(self._rows)


@dataclass
class FakeNeo4jSession:
    """A FAKE Neo4j session for statement-shape tests only: records what it is sent.

    It answers the edition, label, user, transaction and connection listings from the fields
    below, forgets transactions and connections once they are terminated or killed, and answers
    every other statement with no rows. It knows nothing of Cypher semantics.
    """

    edition: str = "enterprise"
    labels: list[str] = field(default_factory=list)
    users: list[dict[str, Any]] = field(default_factory=list)
    roles: list[str] = field(default_factory=list)
    transactions: list[dict[str, Any]] = field(default_factory=list)
    connections: list[str] = field(default_factory=list)
    fail_on: str | None = None
    fail_with: Exception | None = None
    calls: list[tuple[str, str, dict[str, Any]]] = field(default_factory=list)

    def factory(self, database: str):
        """What the backend's `session_factory` gets: a session bound to `database`."""

        @asynccontextmanager
        async def bound() -> AsyncIterator[Any]:
            yield _Bound(self, database)

        return bound()

    def answer(self, database: str, query: str, parameters: dict[str, Any]) -> list[dict]:
        """Record one statement and give its canned rows."""
        self.calls.append((database, query, dict(parameters)))
        if self.fail_on is not None and query.startswith(self.fail_on):
            raise self.fail_with or RuntimeError("fake failure")
        if query == nb.COMPONENTS:
            return [{"name": "Neo4j Kernel", "edition": self.edition}]
        if query == nb.LABELS:
            return [{"label": x} for x in self.labels if x in parameters["labels"]]
        if query == nb.SHOW_USER:
            return [u for u in self.users if u["user"] == parameters["user"]]
        if query == nb.LIST_USERS:
            return [
                {"user": u["user"]}
                for u in self.users
                if u["user"].startswith(parameters["prefix"])
            ]
        if query == nb.LIST_ROLES:
            return [{"role": r} for r in self.roles if r.startswith(parameters["prefix"])]
        if query == nb.SHOW_TRANSACTIONS:
            return [dict(t) for t in self.transactions]
        if query == nb.TERMINATE_TRANSACTIONS:
            self.transactions = [
                {**t, "status": "Terminated with reason: fake"}
                if t["transactionId"] in parameters["ids"]
                else t
                for t in self.transactions
            ]
        if query == nb.LIST_CONNECTIONS:
            return [{"connectionId": c} for c in self.connections]
        if query == nb.KILL_CONNECTIONS:
            self.connections = [c for c in self.connections if c not in parameters["ids"]]
            self.transactions = []
        return []

    def statements(self) -> list[tuple[str, str, dict[str, Any]]]:
        """Every recorded statement, in order."""
        return list(self.calls)

    def texts(self) -> list[str]:
        """The query text of every recorded statement."""
        return [query for _, query, _ in self.calls]


class _Bound:
    def __init__(self, fake: FakeNeo4jSession, database: str) -> None:
        self._fake = fake
        self._database = database

    async def run(self, query: str, parameters: dict[str, Any] | None = None) -> _FakeResult:
        return _FakeResult(self._fake.answer(self._database, query, parameters or {}))


def backend_with(fake: FakeNeo4jSession, **changes: Any) -> Neo4jBackend:
    """A backend whose every statement goes to `fake`."""
    return Neo4jBackend(settings(**changes), session_factory=fake.factory)


# ---------------------------------------------------------------- names and groups


@pytest.mark.parametrize("label", HOSTILE_LABELS)
def test_hostile_labels_are_refused_with_a_reason(label: str) -> None:
    problem = nb.label_problem(label)
    assert problem is not None
    assert "table" not in problem  # said in Neo4j's words
    # Invisible and look-alike characters are named, never echoed.
    assert "\u200b" not in problem and "\x00" not in problem


@pytest.mark.parametrize("label", ["Patient", "_x", "Visit2024", "a" * 64])
def test_plain_labels_are_accepted(label: str) -> None:
    assert nb.label_problem(label) is None


def test_quote_label_doubles_backticks_and_refuses_escapes() -> None:
    assert nb.quote_label("Patient") == "`Patient`"
    assert nb.quote_label("a`b") == "`a``b`"
    assert nb.quote_label("`") == "````"
    for bad in ("", "a\x00b", "a\\u0060b"):
        with pytest.raises(ValueError):
            nb.quote_label(bad)


def test_neo4j_groups_name_labels() -> None:
    assert parse_group("neo4j-Patient-read") == GroupGrant(
        group="neo4j-Patient-read", backend="neo4j", table="Patient"
    )
    labels, refused = grants_for(
        ["neo4j-Patient-read", "postgres-patients-read", "neo4j-Pat`ient-read"], "neo4j"
    )
    assert labels == ["Patient"]
    assert [r.name for r in refused] == ["postgres-patients-read", "neo4j-Pat`ient-read"]
    assert refused[0].reason == "group for backend postgres; this run uses neo4j"


def test_role_name_is_derived_from_a_checked_account() -> None:
    account = account_name(new_run_id())
    assert nb.role_name(account) == "secd_" + account
    with pytest.raises(ValueError):
        nb.role_name("bad`name")


# ---------------------------------------------------------------- settings


def test_settings_hide_the_password_and_refuse_bad_values() -> None:
    s = settings()
    assert "admin-secret-1" not in repr(s)
    assert "password=***" in repr(s)
    for changes, message in [
        ({"uri": "http://graph:7474"}, "uri must look like bolt://"),
        ({"uri": "bolt://"}, "uri must look like bolt://"),
        ({"uri": "bolt://neo4j:pw@graph:7687"}, "must not hold a user or password"),
        ({"uri": "bolt://graph:99999"}, "port"),
        ({"password": ""}, "password must be set"),
        ({"database": "system"}, "not the system database"),
        ({"database": "a b"}, "not a Neo4j database name"),
        ({"database": "x`y"}, "not a Neo4j database name"),
    ]:
        with pytest.raises(ValueError, match=re.escape(message)):
            settings(**changes)
    with pytest.raises(msgspec.ValidationError, match="unknown field"):
        msgspec.convert({"uri": "bolt://g", "password": "p", "host": "x"}, Neo4jSettings)


def test_address_comes_from_the_uri() -> None:
    backend = make_backend(settings(uri="neo4j+s://graph.example"))
    assert isinstance(backend, Neo4jBackend)
    assert isinstance(backend, Backend)
    assert backend.address() == DatabaseAddress(
        kind="neo4j", database="clinic", host="graph.example", port=7687
    )
    assert make_backend(settings(uri="bolt://10.0.0.5:7688")).address().port == 7688


def test_config_takes_a_neo4j_database(tmp_path) -> None:
    path = tmp_path / "secd.toml"
    path.write_text(
        "[credentials.databases.graph]\n"
        'kind = "neo4j"\nuri = "bolt://graph.example:7687"\ndatabase = "clinic"\n'
        'user = "secd_admin"\naccept_full_read = true\n'
    )
    config = load_config(path, {"SECD_CREDENTIALS__DATABASES__GRAPH__PASSWORD": "12345678"})
    made = backend_settings(config.credentials.databases["graph"])
    assert made == Neo4jSettings(
        uri="bolt://graph.example:7687",
        user="secd_admin",
        password="12345678",  # stays a string
        database="clinic",
        accept_full_read=True,
    )


@pytest.mark.parametrize(
    ("text", "password", "named"),
    [
        ('kind = "neo4j"\ndatabase = "clinic"\n', "pw", "graph.uri is required for neo4j"),
        (
            'kind = "neo4j"\ndatabase = "clinic"\nuri = "http://g:7474"\n',
            "pw",
            "graph.uri: 'http://g:7474'",
        ),
        (
            'kind = "neo4j"\ndatabase = "clinic"\nuri = "bolt://g"\n',
            None,
            "graph.password is required for neo4j;"
            " set SECD_CREDENTIALS__DATABASES__GRAPH__PASSWORD",
        ),
        (
            'kind = "neo4j"\ndatabase = "clinic"\nuri = "bolt://g"\nport = 7687\n',
            "pw",
            "graph.port: not used for neo4j",
        ),
        (
            'kind = "neo4j"\ndatabase = "system"\nuri = "bolt://g"\n',
            "pw",
            "graph.database: 'system'",
        ),
        (
            'kind = "postgres"\ndatabase = "d"\naccept_full_read = true\n',
            None,
            "graph.accept_full_read: only for kind = 'neo4j'",
        ),
        (
            'kind = "neo4j"\ndatabase = "clinic"\nuri = "bolt://g"\nlabels = 1\n',
            "pw",
            "labels is not a known",
        ),
    ],
)
def test_config_names_a_bad_neo4j_setting(
    tmp_path, text: str, password: str | None, named: str
) -> None:
    path = tmp_path / "secd.toml"
    path.write_text("[credentials.databases.graph]\n" + text)
    environ = {"SECD_CREDENTIALS__DATABASES__GRAPH__PASSWORD": password} if password else {}
    with pytest.raises(ConfigError, match=re.escape(named)):
        load_config(path, environ)


# ---------------------------------------------------------------- statement shapes (fake)


async def test_enterprise_issue_sends_exactly_these_statements() -> None:
    fake = FakeNeo4jSession(edition="enterprise", labels=["Patient", "Visit", "Secret"])
    backend = backend_with(fake)
    account = account_name(new_run_id())
    role = "secd_" + account
    password = new_password()
    result = await backend.issue(
        account,
        password,
        ["Patient", "Missing", "Pat`ient", "Visit", "Patient"],
        expires_at=expiry(),
    )
    assert result.granted == ["Patient", "Visit"]
    assert result.refused == [
        Refusal(
            name="Pat`ient", reason="label contains '`'; only letters, digits and _ are allowed"
        ),
        Refusal(name="Missing", reason="label Missing does not exist in database clinic"),
    ]
    on = {"role": role, "database": "clinic"}
    assert fake.statements() == [
        ("clinic", "CALL dbms.components() YIELD name, edition RETURN name, edition", {}),
        (
            "clinic",
            "CALL db.labels() YIELD label WHERE label IN $labels RETURN label",
            {"labels": ["Patient", "Missing", "Visit"]},
        ),
        (
            "system",
            "SHOW USERS YIELD user, roles WHERE user = $user RETURN user, roles",
            {"user": account},
        ),
        (
            "system",
            "CREATE USER $user IF NOT EXISTS SET PASSWORD $password CHANGE NOT REQUIRED"
            " SET STATUS SUSPENDED",
            {"user": account, "password": password},
        ),
        ("system", "ALTER USER $user IF EXISTS SET STATUS SUSPENDED", {"user": account}),
        ("system", "DROP ROLE $role IF EXISTS", {"role": role}),
        ("system", "CREATE ROLE $role", {"role": role}),
        ("system", "GRANT TRAVERSE ON GRAPH $database NODES `Patient` TO $role", on),
        ("system", "GRANT READ {*} ON GRAPH $database NODES `Patient` TO $role", on),
        ("system", "GRANT TRAVERSE ON GRAPH $database NODES `Visit` TO $role", on),
        ("system", "GRANT READ {*} ON GRAPH $database NODES `Visit` TO $role", on),
        ("system", "GRANT ACCESS ON DATABASE $database TO $role", on),
        ("system", "GRANT ROLE $role TO $user", {"role": role, "user": account}),
        (
            "system",
            "ALTER USER $user SET PASSWORD $password CHANGE NOT REQUIRED SET STATUS ACTIVE",
            {"user": account, "password": password},
        ),
    ]
    assert all(password not in text for text in fake.texts())


async def test_hostile_labels_never_reach_a_statement() -> None:
    fake = FakeNeo4jSession(edition="enterprise", labels=["Patient"])
    account = account_name(new_run_id())
    result = await backend_with(fake).issue(
        account, new_password(), [*HOSTILE_LABELS, "Patient"], expires_at=expiry()
    )
    assert result.granted == ["Patient"]
    assert sorted(r.name for r in result.refused) == sorted(str(x) for x in HOSTILE_LABELS)
    # Labels reach the text of grants only, each one a checked, quoted identifier.
    quoted = {m for text in fake.texts() for m in re.findall(r"NODES (\S+) TO", text)}
    assert quoted == {"`Patient`"}
    parameters = [p for _, _, p in fake.statements()]
    assert all(set(p.get("labels", [])) <= {"Patient"} for p in parameters)


async def test_community_refuses_without_accept_full_read() -> None:
    fake = FakeNeo4jSession(edition="community", labels=["Patient"])
    result = await backend_with(fake).issue(
        account_name(new_run_id()), new_password(), ["Patient", "Bad`"], expires_at=expiry()
    )
    assert result.granted == []
    assert Refusal(name="Patient", reason=nb.COMMUNITY_REFUSAL) in result.refused
    assert nb.COMMUNITY_REFUSAL == (
        "Neo4j Community has no per-label roles and makes every user an administrator;"
        " set accept_full_read = true to issue such accounts anyway, or use Enterprise"
    )
    # Only the edition was asked; nothing was created.
    assert fake.texts() == [nb.COMPONENTS]


async def test_community_with_accept_full_read_issues_a_plain_user_and_says_so() -> None:
    fake = FakeNeo4jSession(edition="community", labels=["Patient"])
    account = account_name(new_run_id())
    password = new_password()
    result = await backend_with(fake, accept_full_read=True).issue(
        account, password, ["Patient", "Missing"], expires_at=expiry()
    )
    assert result.granted == ["Patient"]
    assert result.refused == [
        Refusal(name="Missing", reason="label Missing does not exist in database clinic"),
        Refusal(name="*", reason=nb.FULL_READ_NOTE),
    ]
    assert nb.FULL_READ_NOTE.startswith("granted: full read (Community edition)")
    params = {"user": account, "password": password}
    assert fake.statements()[2:] == [
        (
            "system",
            "CREATE USER $user IF NOT EXISTS SET PASSWORD $password CHANGE NOT REQUIRED",
            params,
        ),
        ("system", "ALTER USER $user SET PASSWORD $password CHANGE NOT REQUIRED", params),
    ]
    assert not any("ROLE" in text or "STATUS" in text for text in fake.texts())


async def test_nothing_is_created_when_no_label_exists() -> None:
    fake = FakeNeo4jSession(edition="enterprise", labels=["Other"])
    result = await backend_with(fake).issue(
        account_name(new_run_id()), new_password(), ["Patient"], expires_at=expiry()
    )
    assert result.granted == []
    assert fake.texts() == [nb.COMPONENTS, nb.LABELS]


async def test_a_user_with_other_roles_is_never_reused() -> None:
    account = account_name(new_run_id())
    fake = FakeNeo4jSession(
        edition="enterprise",
        labels=["Patient"],
        users=[{"user": account, "roles": ["PUBLIC", "admin"]}],
    )
    with pytest.raises(BackendError, match=f"user {account} exists with roles admin"):
        await backend_with(fake).issue(account, new_password(), ["Patient"], expires_at=expiry())
    assert fake.texts()[-1] == nb.SHOW_USER


async def test_issue_arguments_are_checked_before_any_statement() -> None:
    fake = FakeNeo4jSession()
    backend = backend_with(fake)
    with pytest.raises(ValueError, match="account"):
        await backend.issue("x`y", new_password(), ["Patient"], expires_at=expiry())
    with pytest.raises(ValueError, match="timezone-aware"):
        await backend.issue(
            account_name(new_run_id()), new_password(), ["P"], expires_at=datetime.now()
        )
    with pytest.raises(TypeError, match="not one string"):
        await backend.issue(
            account_name(new_run_id()), new_password(), "Patient", expires_at=expiry()
        )
    assert fake.calls == []


async def test_unknown_edition_is_a_backend_error() -> None:
    fake = FakeNeo4jSession(edition="aura-something")
    with pytest.raises(BackendError, match="unknown edition"):
        await backend_with(fake).issue(
            account_name(new_run_id()), new_password(), ["Patient"], expires_at=expiry()
        )


async def test_server_errors_are_backend_errors_without_the_password() -> None:
    password = new_password()
    fake = FakeNeo4jSession(
        labels=["Patient"],
        fail_on="CREATE USER",
        fail_with=neo4j.exceptions.ClientError(f"bad password {password}"),
    )
    with pytest.raises(BackendError) as excinfo:
        await backend_with(fake).issue(
            account_name(new_run_id()), password, ["Patient"], expires_at=expiry()
        )
    assert password not in str(excinfo.value)
    assert "***" in str(excinfo.value)


async def test_enterprise_revoke_suspends_cuts_and_drops() -> None:
    account = account_name(new_run_id())
    fake = FakeNeo4jSession(
        edition="enterprise",
        transactions=[
            {"transactionId": "clinic-transaction-7", "status": "Running"},
            {"transactionId": "clinic-transaction-8", "status": "Terminated with reason: x"},
        ],
        connections=["bolt-41", "bolt-42"],
    )
    await backend_with(fake).revoke(account)
    user = {"user": account}
    assert fake.statements() == [
        ("clinic", nb.COMPONENTS, {}),
        ("system", "ALTER USER $user IF EXISTS SET STATUS SUSPENDED", user),
        (
            "clinic",
            "SHOW TRANSACTIONS YIELD transactionId, username, status WHERE username = $user"
            " RETURN transactionId, status",
            user,
        ),
        ("clinic", "TERMINATE TRANSACTIONS $ids", {"ids": ["clinic-transaction-7"]}),
        (
            "clinic",
            "CALL dbms.listConnections() YIELD connectionId, username WHERE username = $user"
            " RETURN connectionId",
            user,
        ),
        (
            "clinic",
            "CALL dbms.killConnections($ids) YIELD connectionId, message"
            " RETURN connectionId, message",
            {"ids": ["bolt-41", "bolt-42"]},
        ),
        ("clinic", nb.SHOW_TRANSACTIONS, user),
        ("clinic", nb.LIST_CONNECTIONS, user),
        ("system", "DROP USER $user IF EXISTS", user),
        ("system", "DROP ROLE $role IF EXISTS", {"role": "secd_" + account}),
        ("clinic", nb.SHOW_TRANSACTIONS, user),
        ("clinic", nb.LIST_CONNECTIONS, user),
    ]


async def test_community_revoke_drops_first_then_cuts() -> None:
    account = account_name(new_run_id())
    fake = FakeNeo4jSession(edition="community", connections=["bolt-9"])
    backend = backend_with(fake)
    await backend.revoke(account)
    texts = fake.texts()
    assert texts[:2] == [nb.COMPONENTS, nb.DROP_USER]
    assert nb.KILL_CONNECTIONS in texts
    assert not any("STATUS" in t or "ROLE" in t for t in texts)
    # Repeatable: a second revoke of a gone user sends the same idempotent steps again.
    before = len(fake.calls)
    await backend.revoke(account)
    assert [q for _, q, _ in fake.calls[before:]] == [
        nb.DROP_USER,
        nb.SHOW_TRANSACTIONS,
        nb.LIST_CONNECTIONS,
    ]


async def test_revoke_gives_up_loudly_when_connections_do_not_end(monkeypatch) -> None:
    monkeypatch.setattr(nb, "_KILL_WAIT_S", 0.05)

    class Stubborn(FakeNeo4jSession):
        def answer(self, database, query, parameters):
            rows = super().answer(database, query, parameters)
            self.connections = ["bolt-1"]  # comes straight back
            return rows

    fake = Stubborn(edition="enterprise", connections=["bolt-1"])
    with pytest.raises(BackendError, match="did not end in"):
        await backend_with(fake).revoke(account_name(new_run_id()))


async def test_accounts_lists_secd_users_and_orphaned_roles() -> None:
    alive, orphan = account_name(new_run_id()), account_name(new_run_id())
    fake = FakeNeo4jSession(
        edition="enterprise",
        users=[{"user": alive}, {"user": "neo4j"}, {"user": "secd_rnot_a_run_id_x`"}],
        roles=["secd_" + alive, "secd_" + orphan, "secd_reader"],
    )
    assert await backend_with(fake).accounts() == sorted([alive, orphan])
    assert fake.statements()[0] == (
        "system",
        "SHOW USERS YIELD user WHERE user STARTS WITH $prefix RETURN user",
        {"prefix": "secd_r"},
    )
    assert ("system", nb.LIST_ROLES, {"prefix": "secd_secd_r"}) in fake.statements()
    community = FakeNeo4jSession(edition="community", users=[{"user": alive}])
    assert await backend_with(community).accounts() == [alive]
    assert nb.LIST_ROLES not in community.texts()


async def test_revoke_checks_the_account_name() -> None:
    fake = FakeNeo4jSession()
    with pytest.raises(ValueError, match="account"):
        await backend_with(fake).revoke("neo4j` OR 1=1")
    assert fake.calls == []


# ---------------------------------------------------------------- a real server


@dataclass
class ServerEnv:
    """What the server tests made: labels with nodes, and accounts to remove afterwards."""

    edition: str
    patient: str
    secret: str
    accounts: list[str] = field(default_factory=list)

    def new_account(self) -> str:
        """A fresh run's account name, remembered for cleanup."""
        name = account_name(new_run_id())
        self.accounts.append(name)
        return name


def server_settings(**changes: Any) -> Neo4jSettings:
    """Settings for the test server."""
    values: dict[str, Any] = {
        "uri": SERVER_URI,
        "user": SERVER_USER,
        "password": SERVER_PASSWORD,
        "database": SERVER_DATABASE,
    }
    values.update(changes)
    return Neo4jSettings(**values)


async def admin_run(query: str, database: str = SERVER_DATABASE, **params: Any) -> list[dict]:
    """One statement as the server's administrator."""
    async with neo4j.AsyncGraphDatabase.driver(
        SERVER_URI, auth=(SERVER_USER, SERVER_PASSWORD)
    ) as driver:
        records, _, _ = await driver.execute_query(query, params, database_=database)
        return [r.data() for r in records]


@asynccontextmanager
async def as_account(account: str, password: str) -> AsyncIterator[neo4j.AsyncSession]:
    """A session as a run's account, on the granted database."""
    async with (
        neo4j.AsyncGraphDatabase.driver(SERVER_URI, auth=(account, password)) as driver,
        driver.session(database=SERVER_DATABASE) as session,
    ):
        yield session


async def count_as(account: str, password: str, label: str) -> int:
    """How many nodes with `label` the account can see."""
    async with as_account(account, password) as session:
        result = await session.run(f"MATCH (n:{nb.quote_label(label)}) RETURN count(n) AS c")
        return (await result.single())["c"]


async def role_privileges(account: str, columns: str) -> list[dict]:
    """The privileges of the account's role, as SHOW ROLE ... PRIVILEGES lists them."""
    role = nb.quote_label(nb.role_name(account))  # a checked name, quoted like any Cypher name
    return await admin_run(f"SHOW ROLE {role} PRIVILEGES YIELD {columns}", "system")


async def user_exists(account: str) -> bool:
    """Whether the server lists the user."""
    rows = await admin_run("SHOW USERS YIELD user WHERE user = $u RETURN user", "system", u=account)
    return bool(rows)


@pytest_asyncio.fixture(scope="module")
async def server() -> AsyncIterator[ServerEnv]:
    """Two fresh labels with nodes on the test server; everything made is removed afterwards."""
    if not SERVER_URI:
        pytest.skip(SKIP_REASON)
    token = secrets.token_hex(4)
    env = ServerEnv(
        edition="", patient=f"SecdTestPatient_{token}", secret=f"SecdTestSecret_{token}"
    )
    rows = await admin_run(nb.COMPONENTS)
    env.edition = str(rows[0]["edition"]).lower()
    await admin_run(
        f"UNWIND range(1, 3) AS i CREATE (:{nb.quote_label(env.patient)} {{id: i}})"
        f" CREATE (:{nb.quote_label(env.secret)} {{code: 'launch'}})"
    )
    try:
        yield env
    finally:
        for account in env.accounts:
            await admin_run("DROP USER $u IF EXISTS", "system", u=account)
            if env.edition == "enterprise":
                await admin_run("DROP ROLE $r IF EXISTS", "system", r=nb.role_name(account))
        for label in (env.patient, env.secret):
            await admin_run(f"MATCH (n:{nb.quote_label(label)}) DETACH DELETE n")


def only(edition: str, env: ServerEnv) -> None:
    """Skip unless the server is of `edition`."""
    if env.edition != edition:
        pytest.skip(f"needs Neo4j {edition}; the server at {URI_VAR} is {env.edition}")


async def test_server_enterprise_account_reads_granted_labels_only(server: ServerEnv) -> None:
    only("enterprise", server)
    backend = Neo4jBackend(server_settings())
    account, password = server.new_account(), new_password()
    try:
        result = await backend.issue(
            account, password, [server.patient, "NoSuchLabel_x", "Bad`"], expires_at=expiry()
        )
        assert result.granted == [server.patient]
        assert {r.name for r in result.refused} == {"NoSuchLabel_x", "Bad`"}
        assert await count_as(account, password, server.patient) == 3
        assert await count_as(account, password, server.secret) == 0
        privileges = await role_privileges(account, "action, segment")
        segments = {p["segment"] for p in privileges if p["action"] in ("traverse", "read")}
        assert segments == {f"NODE({server.patient})"}
    finally:
        await backend.revoke(account)
        await backend.close()
    assert not await user_exists(account)
    with pytest.raises(neo4j.exceptions.AuthError):
        await count_as(account, password, server.patient)


async def test_server_revoke_cuts_a_running_query(server: ServerEnv) -> None:
    backend = Neo4jBackend(server_settings(accept_full_read=True))
    account, password = server.new_account(), new_password()
    try:
        result = await backend.issue(account, password, [server.patient], expires_at=expiry())
        assert result.granted == [server.patient]
        async with as_account(account, password) as session:

            async def slow() -> None:
                result = await session.run(
                    # About 10^10 rows from two small lists: minutes of work, little memory.
                    "UNWIND range(1, 100000) AS a UNWIND range(1, 100000) AS b"
                    " WITH a, b WHERE a * b < 0 RETURN count(*)"
                )
                await result.consume()

            running = asyncio.create_task(slow())
            await asyncio.sleep(1.0)
            assert not running.done()
            await backend.revoke(account)
            with pytest.raises((neo4j.exceptions.Neo4jError, neo4j.exceptions.DriverError)):
                await asyncio.wait_for(running, 30)
        assert not await user_exists(account)
        await backend.revoke(account)  # repeatable
    finally:
        await backend.close()


async def test_server_hostile_labels_change_nothing(server: ServerEnv) -> None:
    only("enterprise", server)
    backend = Neo4jBackend(server_settings())
    account = server.new_account()
    roles_before = await admin_run("SHOW ROLES YIELD role RETURN role", "system")
    try:
        result = await backend.issue(
            account, new_password(), [*HOSTILE_LABELS, server.patient], expires_at=expiry()
        )
        assert result.granted == [server.patient]
        roles_after = await admin_run("SHOW ROLES YIELD role RETURN role", "system")
        added = {r["role"] for r in roles_after} - {r["role"] for r in roles_before}
        assert added == {nb.role_name(account)}
        privileges = await role_privileges(account, "segment")
        assert {p["segment"] for p in privileges} == {f"NODE({server.patient})", "database"}
    finally:
        await backend.revoke(account)
        await backend.close()


async def test_server_community_refuses_without_accept_full_read(server: ServerEnv) -> None:
    only("community", server)
    backend = Neo4jBackend(server_settings())
    account = server.new_account()
    try:
        result = await backend.issue(account, new_password(), [server.patient], expires_at=expiry())
    finally:
        await backend.close()
    assert result.granted == []
    assert result.refused == [Refusal(name=server.patient, reason=nb.COMMUNITY_REFUSAL)]
    assert not await user_exists(account)


async def test_server_community_full_read_is_issued_and_revoked(server: ServerEnv) -> None:
    only("community", server)
    backend = Neo4jBackend(server_settings(accept_full_read=True))
    account, password = server.new_account(), new_password()
    try:
        result = await backend.issue(account, password, [server.patient], expires_at=expiry())
        assert Refusal(name="*", reason=nb.FULL_READ_NOTE) in result.refused
        # What Community really gives: the label that was not granted is readable too.
        assert await count_as(account, password, server.secret) == 1
        await backend.revoke(account)
        with pytest.raises(neo4j.exceptions.AuthError):
            await count_as(account, password, server.patient)
    finally:
        await backend.revoke(account)
        await backend.close()


async def test_unreachable_server_is_a_backend_error_through_the_real_driver() -> None:
    # A port nothing listens on: the real driver, session and error mapping, no server needed.
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    backend = Neo4jBackend(settings(uri=f"bolt://127.0.0.1:{port}"))
    account = account_name(new_run_id())
    try:
        with pytest.raises(BackendError, match=f"issuing {account} failed: ServiceUnavailable"):
            await backend.issue(account, new_password(), ["Patient"], expires_at=expiry())
        with pytest.raises(BackendError, match=f"revoking {account} failed"):
            await backend.revoke(account)
        with pytest.raises(BackendError, match="listing accounts failed"):
            await backend.accounts()
    finally:
        await backend.close()
    await backend.close()  # closing twice is fine
