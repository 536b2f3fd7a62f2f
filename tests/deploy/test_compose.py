"""compose.yaml: a valid Compose file, with the network segments secd's design promises.

No Docker engine runs here, so the stack is not started: the file is checked against the Compose
Specification's schema (vendored, see compose-spec.NOTICE) and read for what it promises.
"""

from __future__ import annotations

import copy
import importlib.util
import json
from pathlib import Path

import jsonschema
import pytest
import yaml

from secd.stack import SERVICES
from secd_shared.config import load_config

ROOT = Path(__file__).resolve().parents[2]
SCHEMA = json.loads((Path(__file__).with_name("compose-spec.json")).read_text())
DATABASES = {"mariadb", "postgres", "neo4j"}


@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load((ROOT / "compose.yaml").read_text())


def _errors(document: dict) -> list[str]:
    validator = jsonschema.Draft7Validator(SCHEMA)
    return [
        f"{'/'.join(map(str, e.absolute_path))}: {e.message}"
        for e in validator.iter_errors(document)
    ]


def test_compose_yaml_is_a_valid_compose_file(compose: dict) -> None:
    assert _errors(compose) == []


def test_the_schema_check_is_real(compose: dict) -> None:
    broken = copy.deepcopy(compose)
    broken["services"]["credentials"]["netwrks"] = ["sensitive"]
    assert any("netwrks" in e for e in _errors(broken))
    broken = copy.deepcopy(compose)
    broken["services"]["nats"]["networks"] = "bus"  # must be a list or a mapping
    assert any(e.startswith("services/nats/networks") for e in _errors(broken))


def _networks(service: dict) -> set[str]:
    networks = service.get("networks", [])
    return set(networks if isinstance(networks, list) else networks.keys())


def test_only_credentials_the_airlock_and_the_job_runtime_share_the_sensitive_network(
    compose: dict,
) -> None:
    services = compose["services"]
    on_sensitive = {name for name, s in services.items() if "sensitive" in _networks(s)}
    assert on_sensitive == DATABASES | {"credentials", "executor", "airlock"}
    for database in DATABASES:
        assert _networks(services[database]) == {"sensitive"}, database
        assert "ports" not in services[database], f"{database} is published outside"
    assert compose["networks"]["sensitive"]["internal"] is True
    for name in SERVICES:
        assert "bus" in _networks(services[name]), name
    assert _networks(services["nats"]) == {"bus"}
    assert _networks(services["gitlab"]) == {"forge"}
    assert _networks(services["keycloak"]) == {"forge"}


def test_every_secd_service_is_built_from_its_dockerfile(compose: dict) -> None:
    services = compose["services"]
    for name in SERVICES:
        build = services[name]["build"]
        assert build == {"context": ".", "dockerfile": f"services/{name}/Dockerfile"}
        assert (ROOT / build["dockerfile"]).is_file(), name
        env = services[name]["environment"]
        assert env["SECD_CONFIG"] == "/etc/secd/secd.toml"


def test_servers_have_health_checks_and_services_wait_for_them(compose: dict) -> None:
    services = compose["services"]
    for name in ("nats", "mariadb", "postgres", "neo4j", "keycloak", "gitlab", "gateway"):
        assert services[name]["healthcheck"]["test"], name
    assert services["bootstrap"]["depends_on"]["nats"]["condition"] == "service_healthy"
    for name in SERVICES:
        depends = services[name]["depends_on"]
        assert depends["bootstrap"]["condition"] == "service_completed_successfully"
    assert services["credentials"]["depends_on"]["postgres"]["condition"] == "service_healthy"


def test_no_secret_is_written_in_compose_yaml(compose: dict) -> None:
    for name, service in compose["services"].items():
        environment = service.get("environment") or {}
        for key in environment:
            if "PASSWORD" in key or "SECRET" in key or "TOKEN" in key:
                assert key.endswith("_FILE"), f"{name}: {key} holds a secret; use a file"


def test_the_secrets_tool_makes_every_file_compose_names(compose: dict, tmp_path: Path) -> None:
    spec = importlib.util.spec_from_file_location(
        "compose_secrets", ROOT / "deploy" / "tools" / "compose_secrets.py"
    )
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    folder = tmp_path / "secrets"
    written = tool.write_secrets(folder)
    assert sorted(written) == sorted(tool.FILES)
    assert tool.write_secrets(folder) == []  # kept, never regenerated
    named: set[str] = set()
    for service in compose["services"].values():
        named |= {Path(f).name for f in service.get("env_file", [])}
        for volume in service.get("volumes", []):
            source = volume.split(":")[0]
            if source.startswith("./secrets/"):
                named.add(Path(source).name)
    named |= {Path(s["file"]).name for s in compose["secrets"].values()}
    assert named <= set(tool.FILES), named - set(tool.FILES)
    for name in tool.FILES:
        assert (folder / name).stat().st_mode & 0o077 == 0, f"{name} is readable by others"
    config = load_config(folder / "secd.toml", environ={})
    assert config.executor.kind == "bwrap"
    assert {db.host for db in config.credentials.databases.values()} == {"postgres", "mariadb"}
    assert config.nats.url == "nats://nats:4222"
