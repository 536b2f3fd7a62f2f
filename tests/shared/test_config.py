"""Config: one TOML file plus environment overrides; a bad key is named."""

from __future__ import annotations

import re

import pytest

from secd_shared.config import ConfigError, load_config


def test_file_and_environment_overrides(tmp_path):
    path = tmp_path / "secd.toml"
    path.write_text('state_dir = "state"\n[gateway]\nport = 9000\n')
    env = {"SECD_GATEWAY__PORT": "9100", "SECD_NATS__PASSWORD": "12345", "SECD_TEST_X": "1"}
    config = load_config(path, env)
    assert config.gateway.port == 9100
    assert config.nats.password is not None
    assert config.nats.password.reveal() == "12345"  # stays a string
    assert config.state_dir == str(tmp_path / "state")
    assert config.path("forge") == tmp_path / "state" / "forge"


@pytest.mark.parametrize(
    ("text", "env", "named"),
    [
        ("[gateway]\nprot = 1\n", {}, "gateway.prot is not a known setting"),
        ("", {"SECD_GATEWAY__PORT": "high"}, "gateway.port: expected int, got str"),
        ("[gateway]\nport = 70000\n", {}, "gateway.port"),
        ('[credentials.databases.x]\nkind = "oracle"\ndatabase = "d"\n', {}, "databases.x.kind"),
        (
            "[credentials.databases.x]\nkind = 'postgres'\n",
            {},
            "databases[...].database is required",
        ),
        ("[nats\n", {}, "not valid TOML"),
        ('log_level = "loud"\n', {}, "log_level"),
        ('[limits]\nmemory = "lots"\n', {}, "limits.memory must be a size like 4GiB"),
        ("[limits]\npids = 0\n", {}, "limits.pids must be a whole number greater than 0"),
        ('[limits]\ndisk = "1TiB"\n', {}, "limits.disk is above limits.max.disk"),
        ("[limits.max]\ncpus = -1\n", {}, "limits.max.cpus must be a number greater than 0"),
        ("[limits]\nswap = 1\n", {}, "limits.swap is not a known setting"),
        ("[executor]\nuid_first = 0\n", {}, "executor.uid_first must be at least 1000"),
        ('[executor]\ncgroups = "v3"\n', {}, "executor.cgroups: 'v3'; use auto, v2, v1 or none"),
        ("[executor]\nsandbox_uid = 65534\n", {}, "executor.sandbox_uid is not a known setting"),
    ],
)
def test_a_bad_setting_is_named(tmp_path, text, env, named):
    path = tmp_path / "secd.toml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=re.escape(named)):
        load_config(path, env)


def test_a_missing_file_says_so(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "nope.toml", {})
