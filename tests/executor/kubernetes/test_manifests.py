"""The objects a run is made of: valid against the official schemas, offline, and locked down."""

from __future__ import annotations

import json
from pathlib import Path

import kubernetes_validate
import pytest

from secd_executor.kubernetes import KubernetesExecutor
from secd_shared.config import ConfigError, load_config
from secd_shared.kube import Kube, dns_name
from secd_shared.worker import PermanentError

from .conftest import COLLECTOR_IMAGE, NAMESPACE, RUN_IMAGE, run_request, settings

K8S = "1.37"


def executor(**overrides: object) -> KubernetesExecutor:
    # Manifests are built without a connection: the client is never called here.
    return KubernetesExecutor(Kube(api_client=None), settings(**overrides))


def all_objects(tmp_path: Path, **overrides) -> dict[str, dict]:
    ex = executor()
    request = run_request(tmp_path, **overrides)
    owner = {"apiVersion": "batch/v1", "kind": "Job", "metadata": {"name": "j", "uid": "u-1"}}
    cidrs, aliases = ex.database_route(request)
    return {
        "job": ex.job_manifest(request, aliases),
        "secret": ex.secret_manifest(request, owner),
        "output": ex.output_claim_manifest(request, owner),
        "cache": ex.cache_claim_manifest(request),
        "policy": ex.network_policy_manifest(request, cidrs, owner),
        "collector": ex.collector_manifest(request, owner),
    }


def test_every_object_of_a_run_validates_against_the_kubernetes_schemas(tmp_path: Path) -> None:
    for name, body in all_objects(tmp_path, gpu=2).items():
        assert kubernetes_validate.validate(body, K8S, strict=True) == K8S, name


def test_the_schema_check_is_real(tmp_path: Path) -> None:
    job = all_objects(tmp_path)["job"]
    job["spec"]["template"]["spec"]["containers"][0]["securityContext"]["privileged"] = "no"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(job, K8S, strict=True)
    job = all_objects(tmp_path)["job"]
    job["spec"]["backofLimit"] = 0
    with pytest.raises(kubernetes_validate.ValidationError, match="backofLimit"):
        kubernetes_validate.validate(job, K8S, strict=True)


def test_the_run_job_is_suspended_restricted_and_limited(tmp_path: Path) -> None:
    job = all_objects(tmp_path, runfor_h=0.5)["job"]
    spec = job["spec"]
    assert spec["suspend"] is True
    assert spec["backoffLimit"] == 0
    assert spec["activeDeadlineSeconds"] == 1800
    assert spec["ttlSecondsAfterFinished"] == 86400
    pod = spec["template"]["spec"]
    assert pod["restartPolicy"] == "Never"
    assert pod["automountServiceAccountToken"] is False
    assert pod["enableServiceLinks"] is False
    assert pod["serviceAccountName"] == "secd-run"
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    assert "hostNetwork" not in pod and "hostPID" not in pod and "hostIPC" not in pod
    (container,) = pod["containers"]
    assert container["image"] == RUN_IMAGE
    assert container["command"] == ["python", "main.py"]
    security = container["securityContext"]
    assert security == {
        "allowPrivilegeEscalation": False,
        "readOnlyRootFilesystem": True,
        "runAsNonRoot": True,
        "capabilities": {"drop": ["ALL"]},
        "seccompProfile": {"type": "RuntimeDefault"},
    }
    limits = container["resources"]["limits"]
    # The run's [limits]: 1.5 CPUs, 4 GiB, /tmp 1 GiB and disk 5 GiB (ephemeral: both).
    assert limits == {
        "cpu": "1500m",
        "memory": str(4 * 1024**3),
        "ephemeral-storage": str(6 * 1024**3),
    }
    assert container["resources"]["requests"] == limits
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert volumes["tmp"] == {"name": "tmp", "emptyDir": {"sizeLimit": str(1024**3)}}
    assert volumes["output"]["persistentVolumeClaim"]["claimName"].endswith("-output")
    assert all("hostPath" not in v for v in pod["volumes"])


def test_the_job_gets_the_researchers_contract_and_the_password_only_by_reference(
    tmp_path: Path,
) -> None:
    objects = all_objects(tmp_path)
    job = objects["job"]
    env = {e["name"]: e for e in job["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert {k: env[k].get("value") for k in ("DB_USER", "DB_HOST", "DB_PORT", "DB_NAME")} == {
        "DB_USER": "secd_r0123",
        "DB_HOST": "10.20.30.40",
        "DB_PORT": "5432",
        "DB_NAME": "sensitive",
    }
    assert env["OUTPUT_PATH"]["value"] == "/output"
    assert env["SECD"]["value"] == "PRODUCTION"
    assert env["DB_PASS"] == {
        "name": "DB_PASS",
        "valueFrom": {
            "secretKeyRef": {"name": "secd-run-r0123456789abcdef01-db", "key": "password"}
        },
    }
    password = "s3cr3t-Passw0rd-that-must-stay-in-the-Secret"
    for name, body in objects.items():
        if name != "secret":
            assert password not in json.dumps(body), name
    assert objects["secret"]["stringData"] == {"password": password}
    assert objects["secret"]["immutable"] is True


def test_gpu_count_becomes_the_nvidia_limit_and_node_selector(tmp_path: Path) -> None:
    ex = executor(gpu_node_selector={"nvidia.com/gpu.present": "true"})
    job = ex.job_manifest(run_request(tmp_path, gpu=3), [])
    pod = job["spec"]["template"]["spec"]
    assert pod["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == "3"
    assert pod["nodeSelector"] == {"nvidia.com/gpu.present": "true"}
    job = ex.job_manifest(run_request(tmp_path, gpu=0), [])
    pod = job["spec"]["template"]["spec"]
    assert "nvidia.com/gpu" not in pod["containers"][0]["resources"]["limits"]
    assert "nodeSelector" not in pod


def test_the_cache_is_the_researchers_claim_at_the_sub_path(tmp_path: Path) -> None:
    objects = all_objects(tmp_path)
    pod = objects["job"]["spec"]["template"]["spec"]
    mount = next(m for m in pod["containers"][0]["volumeMounts"] if m["name"] == "cache")
    assert mount == {"name": "cache", "mountPath": "/cache", "subPath": "models/bert"}
    claim = next(v for v in pod["volumes"] if v["name"] == "cache")["persistentVolumeClaim"]
    assert claim["claimName"] == objects["cache"]["metadata"]["name"]
    assert claim["claimName"] == f"secd-cache-{dns_name('alice@example.org')}"
    assert "ownerReferences" not in objects["cache"]["metadata"]  # it outlives the run
    assert "secd.io/run" not in objects["cache"]["metadata"]["labels"]  # so the reaper skips it
    no_cache = executor().job_manifest(run_request(tmp_path, cache_dir=None), [])
    assert all(v["name"] != "cache" for v in no_cache["spec"]["template"]["spec"]["volumes"])


def test_the_network_policy_allows_only_the_database(tmp_path: Path) -> None:
    policy = all_objects(tmp_path)["policy"]["spec"]
    assert policy["podSelector"] == {"matchLabels": {"secd.io/run": "r0123456789abcdef01"}}
    assert sorted(policy["policyTypes"]) == ["Egress", "Ingress"]
    assert policy["ingress"] == []
    assert policy["egress"] == [
        {
            "to": [{"ipBlock": {"cidr": "10.20.30.40/32"}}],
            "ports": [{"protocol": "TCP", "port": 5432}],
        }
    ]


def test_a_database_named_by_host_resolves_into_host_aliases_not_dns(tmp_path: Path) -> None:
    ex = executor()
    request = run_request(tmp_path, db_host="localhost")
    cidrs, aliases = ex.database_route(request)
    assert aliases and aliases[0]["hostnames"] == ["localhost"]
    assert cidrs and all(c.endswith(("/32", "/128")) for c in cidrs)
    pod = ex.job_manifest(request, aliases)["spec"]["template"]["spec"]
    assert pod["hostAliases"] == aliases


def test_configured_cidrs_replace_the_resolved_address(tmp_path: Path) -> None:
    ex = executor(database_cidrs={"sensitive": ["10.0.8.0/24"]})
    cidrs, _ = ex.database_route(run_request(tmp_path))
    assert cidrs == ["10.0.8.0/24"]


def test_the_collector_mounts_the_output_read_only_and_runs_restricted(tmp_path: Path) -> None:
    collector = all_objects(tmp_path)["collector"]
    spec = collector["spec"]
    assert spec["automountServiceAccountToken"] is False
    assert spec["securityContext"]["runAsNonRoot"] is True
    (container,) = spec["containers"]
    assert container["image"] == COLLECTOR_IMAGE
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert container["securityContext"]["capabilities"] == {"drop": ["ALL"]}
    assert container["volumeMounts"] == [
        {"name": "output", "mountPath": "/output", "readOnly": True}
    ]
    assert spec["volumes"][0]["persistentVolumeClaim"]["readOnly"] is True
    assert collector["metadata"]["ownerReferences"][0]["uid"] == "u-1"
    assert collector["metadata"]["namespace"] == NAMESPACE


def test_a_run_id_that_cannot_name_an_object_is_refused(tmp_path: Path) -> None:
    with pytest.raises(PermanentError, match="cannot name a Kubernetes object"):
        executor().job_manifest(run_request(tmp_path, run_id="R_1"), [])


def test_config_selects_and_validates_the_kubernetes_executor(tmp_path: Path) -> None:
    both = {
        "SECD_EXECUTOR__KIND": "kubernetes",
        "SECD_BUILDER__KIND": "buildkit",
        "SECD_BUILDER__BUILDKIT__REGISTRY": "registry.example.org/secd",
        "SECD_BUILDER__BUILDKIT__GIT_URL": "https://gitlab.example.org/{repository}.git",
    }
    with pytest.raises(ConfigError, match="collector_image is required"):
        load_config(environ=both)
    config = load_config(environ=both | {"SECD_EXECUTOR__KUBERNETES__COLLECTOR_IMAGE": "x"})
    assert config.executor.kind == "kubernetes"
    with pytest.raises(ConfigError, match=r"limits\.memory must be a size like 4GiB"):
        load_config(
            environ=both
            | {"SECD_EXECUTOR__KUBERNETES__COLLECTOR_IMAGE": "x", "SECD_LIMITS__MEMORY": "8 GB!"}
        )
    with pytest.raises(ConfigError, match=r"builder\.buildkit\.memory: '8 GB' is not a quantity"):
        load_config(
            environ=both
            | {
                "SECD_EXECUTOR__KUBERNETES__COLLECTOR_IMAGE": "x",
                "SECD_BUILDER__BUILDKIT__MEMORY": "8 GB",
            }
        )
    with pytest.raises(ConfigError, match=r"cannot run what builder\.kind 'venv' builds"):
        load_config(environ={"SECD_EXECUTOR__KIND": "kubernetes"})
    with pytest.raises(ConfigError, match=r"executor\.kind: 'docker'"):
        load_config(environ={"SECD_EXECUTOR__KIND": "docker"})
