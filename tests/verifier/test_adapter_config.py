"""Adapter selection: forge.kind git | gitlab, identity.kind file | keycloak, each with its
settings checked at start-up; a bad one is named, a secret never shown."""

from __future__ import annotations

import re

import pytest

from secd_shared.bus import EventBus
from secd_shared.config import ConfigError, load_config, read_secret
from secd_verifier.forge import EmbeddedSource
from secd_verifier.gitlab_forge import GitLabSource
from secd_verifier.service import Verifier
from secd_verifier.service import setup as verifier_setup

GITLAB = '[forge]\nkind = "gitlab"\n[forge.gitlab]\nurl = "https://gitlab.example.org"\n'
KEYCLOAK = (
    '[identity]\nkind = "keycloak"\n[identity.keycloak]\nurl = "https://sso.example.org"\n'
    'realm = "research"\nclient_id = "secd"\n'
)


def load(tmp_path, text: str, env: dict[str, str] | None = None):
    path = tmp_path / "secd.toml"
    path.write_text(text)
    return load_config(path, env or {})


@pytest.mark.parametrize(
    ("text", "named"),
    [
        ('[forge]\nkind = "svn"\n', "forge.kind: 'svn' is not available; use 'git' or 'gitlab'"),
        ('[forge]\nkind = "gitlab"\n', "forge.gitlab.url is required"),
        (GITLAB.replace("https://", "ftp://"), "forge.gitlab.url: 'ftp://gitlab.example.org'"),
        (GITLAB.replace("https://", "http://"), "must use https"),
        (GITLAB.replace("https://", "https://bot:pw@"), "must not hold a user or password"),
        (GITLAB + 'token = "a"\ntoken_file = "b"\n', "forge.gitlab.token: set either"),
        (GITLAB + "max_hook_bytes = 10\n", "forge.gitlab.max_hook_bytes"),
        (GITLAB + "prot = 1\n", "forge.gitlab.prot is not a known setting"),
        ('[identity]\nkind = "ldap"\n', "identity.kind: 'ldap' is not available"),
        (KEYCLOAK, "identity.kind: 'keycloak' needs forge.kind = 'gitlab'"),
        (GITLAB + KEYCLOAK.replace('realm = "research"\n', ""), "identity.keycloak.realm"),
        (GITLAB + KEYCLOAK + 'extern_uid = "email"\n', "identity.keycloak.extern_uid"),
        (GITLAB + KEYCLOAK + 'group_root = "secd"\n', "identity.keycloak.group_root"),
    ],
)
def test_a_bad_forge_or_identity_setting_is_named(tmp_path, text, named):
    with pytest.raises(ConfigError, match=re.escape(named)):
        load(tmp_path, text)


def test_http_is_allowed_to_this_machine_only(tmp_path):
    config = load(tmp_path, GITLAB.replace("https://gitlab.example.org", "http://127.0.0.1:8080"))
    assert config.forge.gitlab.url == "http://127.0.0.1:8080"


def test_secrets_come_from_the_environment_or_a_file_and_are_never_shown(tmp_path):
    config = load(tmp_path, GITLAB, {"SECD_FORGE__GITLAB__TOKEN": "12345678901234567890"})
    # Secrets stay text even when they look like numbers.
    assert read_secret(config, "forge.gitlab.token", config.forge.gitlab.token, None) == (
        "12345678901234567890"
    )
    (tmp_path / "var").mkdir()
    (tmp_path / "var" / "hook").write_text("hook-secret-from-a-file\n")  # under state_dir
    filed = load(tmp_path, GITLAB + 'webhook_secret_file = "hook"\n')
    gl = filed.forge.gitlab
    assert read_secret(filed, "forge.gitlab.webhook_secret", None, gl.webhook_secret_file) == (
        "hook-secret-from-a-file"
    )
    with pytest.raises(ConfigError) as missing:
        read_secret(filed, "forge.gitlab.token", None, None)
    assert str(missing.value) == (
        "forge.gitlab.token is not set; set SECD_FORGE__GITLAB__TOKEN or forge.gitlab.token_file"
    )
    with pytest.raises(ConfigError) as short:
        read_secret(filed, "forge.gitlab.token", "abc", None)
    assert "abc" not in str(short.value)


def test_the_adapter_follows_forge_kind(tmp_path):
    assert isinstance(Verifier(load(tmp_path, "")).source, EmbeddedSource)
    config = load(tmp_path, GITLAB, {"SECD_FORGE__GITLAB__TOKEN": "glpat-abcdefghijkl"})
    assert isinstance(Verifier(config).source, GitLabSource)


async def test_a_service_without_its_secret_stops_with_one_line(tmp_path):
    config = load(tmp_path, GITLAB)
    with pytest.raises(SystemExit) as stopped:
        await verifier_setup(config, EventBus.__new__(EventBus))
    assert str(stopped.value) == (
        "secd-verifier: forge.gitlab.token is not set; "
        "set SECD_FORGE__GITLAB__TOKEN or forge.gitlab.token_file"
    )
