"""The identity port's contract, run against both adapters: the groups file, and Keycloak found
through the GitLab user's identity, against FakeKeycloak and FakeGitLab (local servers that
answer like the Keycloak admin API and GitLab API v4; not the real products)."""

from __future__ import annotations

import msgspec
import pytest

from secd_shared.identity import IdentityError, NoIdentity, make_identity
from secd_shared.keycloak import KeycloakIdentity
from tests.forgeworld import IdentityWorld, no_secret_in


def test_a_researchers_groups_are_listed_in_order(identity_world: IdentityWorld):
    identity_world.grant("alice", ["postgres-patients-read", "mysql-visits-read"])
    identity_world.grant("bob", ["postgres-billing-read"])
    identity = make_identity(identity_world.config)
    assert identity.groups_of("alice") == ["postgres-patients-read", "mysql-visits-read"]
    assert identity.groups_of("bob") == ["postgres-billing-read"]


def test_an_unknown_researcher_has_no_identity(identity_world: IdentityWorld):
    identity_world.grant("alice", ["postgres-patients-read"])
    with pytest.raises(NoIdentity, match=r"^carol "):
        make_identity(identity_world.config).groups_of("carol")


def test_a_researcher_without_groups_fails_with_that_reason(identity_world: IdentityWorld):
    identity_world.grant("alice", [])
    with pytest.raises(NoIdentity, match=r"^alice (has no groups|is in no Keycloak group)"):
        make_identity(identity_world.config).groups_of("alice")


def test_an_unreachable_source_is_retried_not_a_verdict(identity_world: IdentityWorld):
    identity_world.grant("alice", ["postgres-patients-read"])
    identity = make_identity(identity_world.config)
    identity_world.make_unavailable()
    with pytest.raises(IdentityError) as caught:
        identity.groups_of("alice")
    assert not isinstance(caught.value, NoIdentity)


def test_an_officer_is_a_member_of_the_officers_group(identity_world: IdentityWorld):
    identity_world.grant("olga", ["secd-officers"])
    identity_world.grant("alice", ["postgres-patients-read"])
    identity_world.grant("bob", ["postgres-patients-read", "secd-officers"])
    identity = make_identity(identity_world.config)
    assert identity.is_officer("olga")
    assert identity.is_officer("bob")  # a researcher may also be an officer
    assert not identity.is_officer("alice")
    assert not identity.is_officer("carol")  # unknown to the source: no role


def test_the_officers_group_is_configurable(identity_world: IdentityWorld):
    identity_world.grant("olga", ["secd-officers"])
    identity_world.grant("pia", ["airlock-reviewers"])
    config = identity_world.config
    config = msgspec.structs.replace(
        config, identity=msgspec.structs.replace(config.identity, officer_group="airlock-reviewers")
    )
    identity = make_identity(config)
    assert identity.is_officer("pia")
    assert not identity.is_officer("olga")


def test_an_unreachable_source_cannot_say_who_is_an_officer(identity_world: IdentityWorld):
    identity_world.grant("olga", ["secd-officers"])
    identity = make_identity(identity_world.config)
    identity_world.make_unavailable()
    with pytest.raises(IdentityError):
        identity.is_officer("olga")


# -- Keycloak only: the path from GitLab to Keycloak (FakeGitLab, FakeKeycloak) ------------


def test_a_gitlab_user_without_a_keycloak_identity_fails_with_that_reason(keycloak_world):
    keycloak_world.gitlab.add_user("dave", "Dave", "dave@example.org")
    with pytest.raises(NoIdentity, match=r"^dave has no Keycloak identity in GitLab"):
        make_identity(keycloak_world.config).groups_of("dave")


def test_an_identity_whose_keycloak_user_is_gone_fails_with_that_reason(keycloak_world):
    user = keycloak_world.gitlab.add_user("erin", "Erin", "erin@example.org")
    keycloak_world.gitlab.add_identity(
        user, "openid_connect", "0b7d0bd5-0000-4000-8000-000000000000"
    )
    with pytest.raises(NoIdentity, match=r"^erin's Keycloak identity does not exist"):
        make_identity(keycloak_world.config).groups_of("erin")


def test_only_groups_under_the_root_grant_access(keycloak_world):
    user = keycloak_world.gitlab.add_user("frank", "Frank", "frank@example.org")
    member = keycloak_world.keycloak.add_user(
        "frank", ["/secd/postgres-patients-read", "/other/postgres-billing-read", "/secd"]
    )
    keycloak_world.gitlab.add_identity(user, "openid_connect", member.id)
    assert make_identity(keycloak_world.config).groups_of("frank") == ["postgres-patients-read"]


def test_an_officers_group_outside_the_root_gives_no_role(keycloak_world):
    user = keycloak_world.gitlab.add_user("gina", "Gina", "gina@example.org")
    member = keycloak_world.keycloak.add_user("gina", ["/other/secd-officers"])
    keycloak_world.gitlab.add_identity(user, "openid_connect", member.id)
    assert not make_identity(keycloak_world.config).is_officer("gina")


def test_a_wrong_client_secret_is_retried_and_never_shown(keycloak_world, monkeypatch):
    keycloak_world.grant("alice", ["postgres-patients-read"])
    real = keycloak_world.keycloak.client_secret
    identity = make_identity(keycloak_world.config)
    assert isinstance(identity, KeycloakIdentity)
    keycloak_world.keycloak.client_secret = "not-the-secret-at-all"
    with pytest.raises(IdentityError) as caught:
        identity.groups_of("alice")
    assert not isinstance(caught.value, NoIdentity)
    assert no_secret_in(str(caught.value), real, keycloak_world.gitlab.admin_token)
    for request in keycloak_world.keycloak.requests + keycloak_world.gitlab.requests:
        assert no_secret_in(request.target, real, keycloak_world.gitlab.admin_token)
