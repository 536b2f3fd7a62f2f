"""deploy/: valid against the Kubernetes schemas (offline), and saying what secd promises.

No cluster runs here: these tests read the manifests; what a cluster would do with them beyond the
schemas (admission, a network plugin enforcing the policies) is not verified.
"""

from __future__ import annotations

import importlib.util
import ipaddress
import tomllib
from pathlib import Path

import kubernetes_validate
import pytest
import yaml

from secd.stack import SERVICES
from secd_shared.config import load_config

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
K8S = "1.37"
DB_PORTS = {5432, 3306, 7687}


def _documents() -> list[tuple[str, dict]]:
    out = []
    for path in sorted(DEPLOY.rglob("*.yaml")):
        if path.name == "kustomization.yaml":
            continue
        for doc in yaml.safe_load_all(path.read_text()):
            if doc:
                out.append((str(path.relative_to(DEPLOY)), doc))
    return out


DOCS = _documents()


def _of(kind: str, namespace: str | None = None) -> list[dict]:
    return [
        d
        for _, d in DOCS
        if d["kind"] == kind and namespace in (None, d["metadata"].get("namespace"))
    ]


def _render_tool():
    spec = importlib.util.spec_from_file_location(
        "render_nats_config", DEPLOY / "tools" / "render_nats_config.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize(
    "where,doc", DOCS, ids=[f"{w}:{d['kind']}/{d['metadata']['name']}" for w, d in DOCS]
)
def test_every_manifest_validates_against_the_kubernetes_schemas(where: str, doc: dict) -> None:
    try:
        assert kubernetes_validate.validate(doc, K8S, strict=True) == K8S
    except kubernetes_validate.ValidationError as exc:
        pytest.fail(f"{where}: {doc['kind']}/{doc['metadata']['name']}: {exc.message}")


def test_kustomization_lists_every_manifest_and_the_generated_nats_config() -> None:
    kustomization = yaml.safe_load((DEPLOY / "kustomization.yaml").read_text())
    listed = set(kustomization["resources"])
    present = {
        str(p.relative_to(DEPLOY)) for p in DEPLOY.rglob("*.yaml") if p.name != "kustomization.yaml"
    }
    assert listed == present
    (generator,) = kustomization["configMapGenerator"]
    assert generator["files"] == ["nats.conf=nats/nats-cluster.conf"]
    assert (DEPLOY / "nats" / "nats-cluster.conf").is_file()
    images = {i["name"] for i in kustomization["images"]}
    assert images == {f"secd/{s}" for s in SERVICES}


def test_every_service_is_a_deployment_scaled_by_its_replica_count() -> None:
    tool = _render_tool()
    deployments = {d["metadata"]["name"]: d for d in _of("Deployment", "secd")}
    assert set(deployments) == {f"secd-{s}" for s in SERVICES}
    for service in SERVICES:
        deployment = deployments[f"secd-{service}"]
        assert deployment["spec"]["replicas"] >= 1
        pod = deployment["spec"]["template"]["spec"]
        assert pod["serviceAccountName"] == f"secd-{service}"
        (container,) = pod["containers"]
        env = {e["name"]: e for e in container["env"]}
        # Its own NATS user: every replica binds the same durable consumer.
        assert env["SECD_NATS__USER"]["value"] == service
        ref = env["SECD_NATS__PASSWORD"]["valueFrom"]["secretKeyRef"]
        assert ref == {"name": "secd-nats-passwords", "key": tool.password_variable(service)}
        # Nothing ties a replica to a node or a port: adding replicas is all scaling takes.
        assert "hostPort" not in str(container.get("ports", []))
        assert "nodeName" not in pod
        assert pod["securityContext"]["runAsNonRoot"] is True
        assert container["securityContext"] == {
            "allowPrivilegeEscalation": False,
            "readOnlyRootFilesystem": True,
            "capabilities": {"drop": ["ALL"]},
        }


def test_nats_is_a_cluster_of_three_with_routes_to_every_node_and_three_replicas() -> None:
    tool = _render_tool()
    (statefulset,) = _of("StatefulSet", "secd")
    spec = statefulset["spec"]
    assert spec["replicas"] == tool.CLUSTER_SIZE == 3
    assert spec["podManagementPolicy"] == "Parallel"
    services = {s["metadata"]["name"]: s["spec"] for s in _of("Service", "secd")}
    headless = services[spec["serviceName"]]
    assert headless["clusterIP"] == "None" and headless["publishNotReadyAddresses"] is True
    assert {p["port"] for p in headless["ports"]} == {6222}
    assert {p["port"] for p in services["nats"]["ports"]} == {4222}
    (container,) = spec["template"]["spec"]["containers"]
    env = {e["name"]: e for e in container["env"]}
    assert env["SECD_NATS_SERVER_NAME"]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.name"
    route_password = tool.password_variable(tool.ROUTE_USER)
    assert env[route_password]["valueFrom"]["secretKeyRef"]["name"] == "secd-nats-passwords"
    for n in range(1, spec["replicas"] + 1):
        host = f"{statefulset['metadata']['name']}-{n - 1}.{spec['serviceName']}.secd.svc"
        assert env[tool.route_variable(n)]["value"] == (
            f"nats://route:$({route_password})@{host}.cluster.local:6222"
        )
    # The generated config names every variable the pod sets, and no password.
    conf = (DEPLOY / "nats" / "nats-cluster.conf").read_text()
    for name in env:
        assert f"${name}" in conf, name
    assert 'password": "' not in conf
    # The bootstrap gives every stream a copy on each node; only the nodes reach the routes.
    (job,) = _of("Job", "secd")
    (bootstrap,) = job["spec"]["template"]["spec"]["containers"]
    replicas = {e["name"]: e.get("value") for e in bootstrap["env"]}["SECD_STREAM_REPLICAS"]
    assert int(replicas) == spec["replicas"]
    assert "replicas=replicas" in bootstrap["command"][-1]
    nats_pods = {"matchLabels": {"app.kubernetes.io/name": "nats"}}
    routes = [
        p
        for p in _of("NetworkPolicy", "secd")
        if 6222 in {port.get("port") for r in p["spec"].get("ingress", []) for port in r["ports"]}
    ]
    assert [p["metadata"]["name"] for p in routes] == ["nats-cluster-routes"]
    assert routes[0]["spec"]["podSelector"] == nats_pods
    assert routes[0]["spec"]["ingress"][0]["from"] == [{"podSelector": nats_pods}]
    (budget,) = _of("PodDisruptionBudget", "secd")
    assert budget["spec"]["maxUnavailable"] == 1


def test_only_the_executor_and_builder_touch_jobs_and_only_in_their_namespaces() -> None:
    assert _of("ClusterRole") == [] and _of("ClusterRoleBinding") == []
    roles = {(r["metadata"]["namespace"], r["metadata"]["name"]): r for r in _of("Role")}
    assert set(roles) == {("secd-runs", "secd-executor"), ("secd-builds", "secd-builder")}
    for (namespace, name), role in roles.items():
        (binding,) = [b for b in _of("RoleBinding", namespace) if b["roleRef"]["name"] == name]
        assert binding["subjects"] == [
            {"kind": "ServiceAccount", "name": name, "namespace": "secd"}
        ]
        for rule in role["rules"]:
            assert "*" not in rule["verbs"] and "*" not in rule["resources"]
    executor_resources = {
        r for rule in roles[("secd-runs", "secd-executor")]["rules"] for r in rule["resources"]
    }
    assert executor_resources == {
        "jobs", "pods", "pods/log", "pods/exec", "secrets", "persistentvolumeclaims",
        "networkpolicies",
    }  # fmt: skip
    builder_resources = {
        r for rule in roles[("secd-builds", "secd-builder")]["rules"] for r in rule["resources"]
    }
    assert "secrets" not in builder_resources and "pods/exec" not in builder_resources
    accounts = {a["metadata"]["name"]: a for a in _of("ServiceAccount", "secd")}
    for service in SERVICES:
        expected = service in ("executor", "builder")
        assert accounts[f"secd-{service}"]["automountServiceAccountToken"] is expected, service
    for account in _of("ServiceAccount", "secd-runs") + _of("ServiceAccount", "secd-builds"):
        assert account["automountServiceAccountToken"] is False


def _egress_reaches_databases(policy: dict, databases: list[ipaddress.IPv4Network]) -> bool:
    for rule in policy["spec"].get("egress") or []:
        ports = {p.get("port") for p in rule.get("ports") or []}
        for peer in rule.get("to") or [{}]:
            block = peer.get("ipBlock")
            if block is None:
                continue
            network = ipaddress.ip_network(block["cidr"])
            excepted = [ipaddress.ip_network(c) for c in block.get("except", [])]
            for db in databases:
                if db.subnet_of(network) and not any(db.subnet_of(e) for e in excepted):
                    if not ports or ports & DB_PORTS:
                        return True
    return False


def test_only_the_credentials_service_reaches_the_databases() -> None:
    (to_databases,) = [
        p
        for p in _of("NetworkPolicy", "secd")
        if p["metadata"]["name"] == "credentials-to-databases"
    ]
    databases = [
        ipaddress.ip_network(peer["ipBlock"]["cidr"])
        for peer in to_databases["spec"]["egress"][0]["to"]
    ]
    for policy in _of("NetworkPolicy"):
        if not _egress_reaches_databases(policy, databases):
            continue
        assert policy["metadata"]["namespace"] == "secd"
        assert policy["spec"]["podSelector"] == {"matchLabels": {"secd.io/service": "credentials"}}
    # Everything starts denied in the services' and the runs' namespaces.
    for namespace in ("secd", "secd-runs"):
        deny = [
            p for p in _of("NetworkPolicy", namespace) if p["metadata"]["name"] == "default-deny"
        ]
        assert deny and deny[0]["spec"] == {
            "podSelector": {},
            "policyTypes": ["Ingress", "Egress"],
            "ingress": [],
            "egress": [],
        }


def test_the_check_of_database_reach_is_real() -> None:
    databases = [ipaddress.ip_network("10.0.50.0/24")]
    wide = {"spec": {"egress": [{"to": [{"ipBlock": {"cidr": "10.0.0.0/8"}}]}]}}
    excepted = {
        "spec": {
            "egress": [{"to": [{"ipBlock": {"cidr": "0.0.0.0/0", "except": ["10.0.50.0/24"]}}]}]
        }
    }
    assert _egress_reaches_databases(wide, databases)
    assert not _egress_reaches_databases(excepted, databases)


def test_the_runs_namespace_is_restricted_and_builds_are_kept_apart() -> None:
    namespaces = {n["metadata"]["name"]: n["metadata"]["labels"] for n in _of("Namespace")}
    assert namespaces["secd-runs"]["pod-security.kubernetes.io/enforce"] == "restricted"
    assert namespaces["secd"]["pod-security.kubernetes.io/enforce"] == "restricted"
    assert namespaces["secd-builds"]["pod-security.kubernetes.io/enforce"] == "privileged"


def test_the_cluster_config_is_a_valid_secd_config(tmp_path: Path) -> None:
    (config_map,) = [c for c in _of("ConfigMap", "secd") if c["metadata"]["name"] == "secd-config"]
    text = config_map["data"]["secd.toml"]
    tomllib.loads(text)
    path = tmp_path / "secd.toml"
    path.write_text(text)
    config = load_config(path, environ={})
    assert config.executor.kind == "kubernetes" and config.builder.kind == "buildkit"
    assert config.executor.kubernetes.namespace == "secd-runs"
    assert config.builder.buildkit.namespace == "secd-builds"
    assert config.nats.url == "nats://nats.secd.svc:4222"
