"""Secrets in the configuration never show: not in repr, str, format, a log line or an error."""

from __future__ import annotations

import logging
import traceback
import typing

import msgspec
import pytest

from secd_shared import config as config_module
from secd_shared.config import (
    Config,
    CredentialsConfig,
    DatabaseConfig,
    ForgeConfig,
    GitLabConfig,
    IdentityConfig,
    KeycloakConfig,
    NatsConfig,
    load_config,
    read_secret,
)
from secd_shared.secret import Secret, reveal

MARK = "s3cr3t-never-shown-9f4c"


def _secret_fields(cls: type) -> list[str]:
    hints = typing.get_type_hints(cls)
    return [name for name in cls.__struct_fields__ if Secret in typing.get_args(hints[name])]


SECTIONS = [
    cls
    for cls in vars(config_module).values()
    if isinstance(cls, type) and issubclass(cls, msgspec.Struct) and _secret_fields(cls)
]


def test_the_sections_with_secrets_are_the_ones_expected() -> None:
    # A new section with a Secret joins this list (and every test below) by itself.
    assert {NatsConfig, GitLabConfig, KeycloakConfig, DatabaseConfig} <= set(SECTIONS)


@pytest.mark.parametrize("cls", SECTIONS, ids=lambda cls: cls.__name__)
def test_no_repr_str_or_format_of_a_section_shows_its_secrets(cls: type) -> None:
    required = {"kind": "postgres", "database": "d"} if cls is DatabaseConfig else {}
    fields = _secret_fields(cls)
    # Given as text (as a test or a command would), and as a Secret: both end up a Secret.
    for given in (MARK, Secret(MARK)):
        section = cls(**required, **dict.fromkeys(fields, given))
        for name in fields:
            assert isinstance(getattr(section, name), Secret)
            assert getattr(section, name).reveal() == MARK
        for shown in (
            repr(section),
            str(section),
            f"{section}",
            f"{section!r:>300}",
            format(section, ""),
        ):
            assert MARK not in shown
        assert "***" in repr(section)


def test_a_whole_config_loaded_from_the_environment_hides_every_secret(
    caplog: pytest.LogCaptureFixture,
) -> None:
    environ = {
        "SECD_NATS__PASSWORD": MARK,
        "SECD_FORGE__GITLAB__TOKEN": MARK,
        "SECD_FORGE__GITLAB__WEBHOOK_SECRET": MARK,
        "SECD_IDENTITY__KEYCLOAK__CLIENT_SECRET": MARK,
        "SECD_CREDENTIALS__DATABASES__SENS__KIND": "postgres",
        "SECD_CREDENTIALS__DATABASES__SENS__DATABASE": "sens",
        "SECD_CREDENTIALS__DATABASES__SENS__PASSWORD": MARK,
    }
    config = load_config(environ=environ)
    revealed = [
        reveal(config.nats.password),
        reveal(config.forge.gitlab.token),
        reveal(config.forge.gitlab.webhook_secret),
        reveal(config.identity.keycloak.client_secret),
        reveal(config.credentials.databases["sens"].password),
    ]
    assert revealed == [MARK] * 5
    assert MARK not in repr(config) and MARK not in str(config)

    log = logging.getLogger("secd.test.secret")
    with caplog.at_level(logging.DEBUG, logger="secd.test.secret"):
        log.info("config %s %r", config, config.credentials)
        log.info("nats", extra={"config": config.nats})
        try:
            raise RuntimeError(f"cannot start with {config.nats} / {config.forge!r}")
        except RuntimeError:
            log.exception("start-up failed")
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter("%(message)s %(config)s", defaults={"config": ""}))
    for record in caplog.records:
        assert MARK not in handler.format(record)
        assert MARK not in repr(record.__dict__)
    try:
        raise ValueError(config)
    except ValueError:
        assert MARK not in traceback.format_exc()


def test_a_number_given_for_a_secret_is_kept_as_text_and_bad_types_are_refused() -> None:
    config = load_config(environ={"SECD_NATS__PASSWORD": "12345678"})
    assert reveal(config.nats.password) == "12345678"
    with pytest.raises(Exception, match=r"nats\.password"):
        msgspec.convert({"nats": {"password": 5}}, Config, dec_hook=config_module._decode_secret)


def test_read_secret_takes_a_secret_and_gives_its_value() -> None:
    config = Config(
        forge=ForgeConfig(kind="gitlab", gitlab=GitLabConfig(token=MARK)),
        identity=IdentityConfig(),
        credentials=CredentialsConfig(),
    )
    token = config.forge.gitlab.token
    assert read_secret(config, "forge.gitlab.token", token, None) == MARK


def test_secrets_compare_by_value_and_are_truthy_only_when_not_empty() -> None:
    assert Secret("a") == Secret("a") and Secret("a") != Secret("b")
    assert not Secret("") and Secret("x")
    with pytest.raises(TypeError):
        Secret(5)  # type: ignore[arg-type]
