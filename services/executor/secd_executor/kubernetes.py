"""ExecutorAPI on Kubernetes: each run is a Job, created suspended, released once its objects exist.

Per run, in the runs namespace (names from the run id):

    Job            secd-run-<id>            suspended at creation; released by a patch
    Secret         secd-run-<id>-db         the database password (owned by the Job)
    PVC            secd-run-<id>-output     where the job writes its outputs (owned by the Job)
    NetworkPolicy  secd-run-<id>            no ingress; egress to the database address and port
    Pod            secd-run-<id>-collect    the trusted collector, once the job ended (owned)
    PVC            secd-cache-<researcher>  the researcher's cache, kept across runs, never reaped

The Job exists first so that everything else can name it as owner (deleting the Job deletes them),
and it is released only when they all exist: the job never runs without its network policy.
Nothing secret is in the Job's spec; the password reaches the container from the Secret.

The database is reached directly from the pod, guarded by the NetworkPolicy alone (there is no
relay beside the Job, unlike the bubblewrap sandbox): the cluster's network plugin must enforce
NetworkPolicy, and the runs namespace should carry the default-deny policy in deploy/.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import math
import os
import re
import shutil
import socket
import threading
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from secd_executor.outputs import unpack_outputs
from secd_executor.runtime import RunOutcome, RunRequest
from secd_shared.config import Config, KubernetesRunConfig
from secd_shared.durations import hours_to_s
from secd_shared.kube import (
    Conflict,
    Kube,
    KubeError,
    NotFound,
    dns_name,
    job_state,
    owner_reference,
)
from secd_shared.worker import PermanentError, TransientError

__all__ = ["MANAGED_BY", "KubernetesExecutor"]

log = logging.getLogger("secd.executor.kubernetes")

MANAGED_BY = "secd-executor"
JOB_CONTAINER = "job"
COLLECT_CONTAINER = "collect"
OUTPUT_MOUNT = "/output"
# What Kubernetes needs of the run id inside an object's name (a DNS label after the prefix), not
# a run id check: RunId ids always pass, and so do the shorter ones tests and old logs use.
_NAME_PART = re.compile(r"[a-z0-9]([-a-z0-9]{0,38}[a-z0-9])?")


def _labels(run_id: str, role: str) -> dict[str, str]:
    return {
        "app.kubernetes.io/managed-by": MANAGED_BY,
        "secd.io/run": run_id,
        "secd.io/role": role,
    }


def _parse_time(text: str | None) -> datetime | None:
    if not text:
        return None
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


def _restricted_container() -> dict[str, Any]:
    """The container-level half of the 'restricted' Pod Security Standard, and a bit more."""
    return {
        "allowPrivilegeEscalation": False,
        "readOnlyRootFilesystem": True,
        "runAsNonRoot": True,
        "capabilities": {"drop": ["ALL"]},
        "seccompProfile": {"type": "RuntimeDefault"},
    }


class KubernetesExecutor:
    """Runs each run as a Kubernetes Job in one namespace; see the module docstring."""

    def __init__(
        self, kube: Kube, settings: KubernetesRunConfig, *, max_runfor_h: float = 24.0
    ) -> None:
        self.kube = kube
        self.s = settings
        self.ns = settings.namespace
        self.max_runfor_h = max_runfor_h
        self._reaper: asyncio.Task[None] | None = None

    @classmethod
    def from_config(cls, config: Config) -> KubernetesExecutor:
        """Connect with the configured (or in-cluster) credentials."""
        settings = config.executor.kubernetes
        kube = Kube.connect(kubeconfig=settings.kubeconfig, context=settings.context)
        return cls(kube, settings, max_runfor_h=config.builder.max_runfor_h)

    # ---- names and manifests --------------------------------------------------------------
    @staticmethod
    def job_name(run_id: str) -> str:
        """The Job's name; every other object of the run is named after it."""
        if not _NAME_PART.fullmatch(run_id):
            raise PermanentError(f"run id {run_id!r} cannot name a Kubernetes object")
        return f"secd-run-{run_id}"

    def cache_claim(self, researcher: str) -> str:
        """The researcher's cache PVC (one per researcher, kept across runs)."""
        return f"secd-cache-{dns_name(researcher)}"

    def _meta(
        self, name: str, run_id: str, role: str, owner: dict[str, Any] | None = None
    ) -> dict[str, Any]:
        meta: dict[str, Any] = {"name": name, "namespace": self.ns, "labels": _labels(run_id, role)}
        if owner is not None:
            meta["ownerReferences"] = [owner_reference(owner)]
        return meta

    def job_manifest(
        self, request: RunRequest, host_aliases: list[dict[str, Any]]
    ) -> dict[str, Any]:
        """The run's Job: suspended, restricted, limited, with no way to talk to the API."""
        name = self.job_name(request.run_id)
        run_limits = request.limits
        limits = {
            "cpu": _millicores(run_limits.cpus),
            "memory": str(run_limits.memory),
            # The container's own writes, its logs and /tmp (a disk-backed emptyDir).
            "ephemeral-storage": str(run_limits.disk + run_limits.tmp),
        }
        if request.gpu > 0:
            limits["nvidia.com/gpu"] = str(request.gpu)
        env = [
            *([{"name": "SECD_SEED", "value": request.seed}] if request.seed else []),
            {"name": "DB_USER", "value": request.db_user},
            {
                "name": "DB_PASS",
                "valueFrom": {"secretKeyRef": {"name": f"{name}-db", "key": "password"}},
            },
            {"name": "DB_HOST", "value": request.db_host},
            {"name": "DB_PORT", "value": str(request.db_port)},
            {"name": "DB_NAME", "value": request.db_name},
            {"name": "OUTPUT_PATH", "value": OUTPUT_MOUNT},
            {"name": "SECD", "value": "PRODUCTION"},
            {"name": "HOME", "value": "/tmp"},  # noqa: S108 - the pod's own emptyDir
            {"name": "PYTHONUNBUFFERED", "value": "1"},
        ]
        mounts = [
            {"name": "output", "mountPath": OUTPUT_MOUNT},
            {"name": "tmp", "mountPath": "/tmp"},  # noqa: S108 - the pod's own emptyDir
        ]
        volumes: list[dict[str, Any]] = [
            {"name": "output", "persistentVolumeClaim": {"claimName": f"{name}-output"}},
            {"name": "tmp", "emptyDir": {"sizeLimit": str(request.limits.tmp)}},
        ]
        if request.cache_dir:
            mounts.append(
                {"name": "cache", "mountPath": request.mount_path, "subPath": request.cache_dir}
            )
            volumes.append(
                {
                    "name": "cache",
                    "persistentVolumeClaim": {"claimName": self.cache_claim(request.researcher)},
                }
            )
        pod_security: dict[str, Any] = {
            "runAsNonRoot": True,
            "fsGroup": self.s.fs_group,
            "seccompProfile": {"type": "RuntimeDefault"},
        }
        if not self.s.run_as_image_user:
            pod_security |= {"runAsUser": self.s.run_as_user, "runAsGroup": self.s.run_as_user}
        node_selector = dict(self.s.node_selector)
        if request.gpu > 0:
            node_selector |= self.s.gpu_node_selector
        pod_spec: dict[str, Any] = {
            "restartPolicy": "Never",
            "serviceAccountName": self.s.service_account,
            "automountServiceAccountToken": False,
            # Service links would put every Service's address in the job's environment.
            "enableServiceLinks": False,
            "securityContext": pod_security,
            "containers": [
                {
                    "name": JOB_CONTAINER,
                    "image": request.image,
                    "imagePullPolicy": "IfNotPresent",
                    "command": list(request.command),
                    "env": env,
                    "resources": {"limits": limits, "requests": dict(limits)},
                    "securityContext": _restricted_container(),
                    "volumeMounts": mounts,
                }
            ],
            "volumes": volumes,
        }
        if host_aliases:
            # The database's name resolves without DNS: the policy allows no DNS traffic.
            pod_spec["hostAliases"] = host_aliases
        if node_selector:
            pod_spec["nodeSelector"] = node_selector
        if self.s.image_pull_secrets:
            pod_spec["imagePullSecrets"] = [{"name": n} for n in self.s.image_pull_secrets]
        meta = self._meta(name, request.run_id, "job")
        meta["annotations"] = {
            "secd.io/researcher": request.researcher,
            "secd.io/project": request.project,
        }
        return {
            "apiVersion": "batch/v1",
            "kind": "Job",
            "metadata": meta,
            "spec": {
                "suspend": True,
                "backoffLimit": 0,
                "activeDeadlineSeconds": max(1, math.ceil(request.runfor_s)),
                "ttlSecondsAfterFinished": self.s.ttl_after_finished_s,
                "template": {
                    "metadata": {"labels": _labels(request.run_id, "job")},
                    "spec": pod_spec,
                },
            },
        }

    def secret_manifest(self, request: RunRequest, owner: dict[str, Any]) -> dict[str, Any]:
        """The database password, readable by the Job's pod only through its env reference."""
        name = f"{self.job_name(request.run_id)}-db"
        return {
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": self._meta(name, request.run_id, "secret", owner),
            "type": "Opaque",
            "immutable": True,
            "stringData": {"password": request.db_password},
        }

    def output_claim_manifest(self, request: RunRequest, owner: dict[str, Any]) -> dict[str, Any]:
        """The run's output volume."""
        name = f"{self.job_name(request.run_id)}-output"
        spec: dict[str, Any] = {
            "accessModes": ["ReadWriteOnce"],
            "resources": {"requests": {"storage": str(request.limits.disk)}},
        }
        if self.s.output_storage_class:
            spec["storageClassName"] = self.s.output_storage_class
        return {
            "apiVersion": "v1",
            "kind": "PersistentVolumeClaim",
            "metadata": self._meta(name, request.run_id, "output", owner),
            "spec": spec,
        }

    def cache_claim_manifest(self, request: RunRequest) -> dict[str, Any]:
        """The researcher's cache volume: not owned by any run, so it outlives them."""
        spec: dict[str, Any] = {
            "accessModes": [self.s.cache_access_mode],
            "resources": {"requests": {"storage": self.s.cache_size}},
        }
        if self.s.cache_storage_class:
            spec["storageClassName"] = self.s.cache_storage_class
        return {
            "apiVersion": "v1",
            "kind": "PersistentVolumeClaim",
            "metadata": {
                "name": self.cache_claim(request.researcher),
                "namespace": self.ns,
                "labels": {
                    "app.kubernetes.io/managed-by": MANAGED_BY,
                    "secd.io/role": "cache",
                },
                "annotations": {"secd.io/researcher": request.researcher},
            },
            "spec": spec,
        }

    def network_policy_manifest(
        self, request: RunRequest, cidrs: list[str], owner: dict[str, Any]
    ) -> dict[str, Any]:
        """No ingress at all; egress only to the database's address(es), on its port, over TCP."""
        return {
            "apiVersion": "networking.k8s.io/v1",
            "kind": "NetworkPolicy",
            "metadata": self._meta(self.job_name(request.run_id), request.run_id, "policy", owner),
            "spec": {
                "podSelector": {"matchLabels": {"secd.io/run": request.run_id}},
                "policyTypes": ["Ingress", "Egress"],
                "ingress": [],
                "egress": [
                    {
                        "to": [{"ipBlock": {"cidr": cidr}} for cidr in cidrs],
                        "ports": [{"protocol": "TCP", "port": request.db_port}],
                    }
                ],
            },
        }

    def collector_manifest(self, request: RunRequest, owner: dict[str, Any]) -> dict[str, Any]:
        """The trusted pod that reads the output volume (read-only) once the job has ended."""
        name = self.job_name(request.run_id)
        security: dict[str, Any] = {
            "runAsNonRoot": True,
            "fsGroup": self.s.fs_group,
            "seccompProfile": {"type": "RuntimeDefault"},
        }
        # The collector reads as the job's own uid where it is known, else through the group.
        uid = self.s.fs_group if self.s.run_as_image_user else self.s.run_as_user
        security |= {"runAsUser": uid, "runAsGroup": self.s.fs_group}
        spec: dict[str, Any] = {
            "restartPolicy": "Never",
            "serviceAccountName": self.s.service_account,
            "automountServiceAccountToken": False,
            "enableServiceLinks": False,
            "securityContext": security,
            # It ends on its own even if secd never comes back for it.
            "activeDeadlineSeconds": int(self.s.collect_timeout_s) + 60,
            "containers": [
                {
                    "name": COLLECT_CONTAINER,
                    "image": self.s.collector_image,
                    "imagePullPolicy": "IfNotPresent",
                    "command": ["sleep", str(int(self.s.collect_timeout_s) + 60)],
                    "resources": {"limits": {"cpu": "500m", "memory": "256Mi"}},
                    "securityContext": _restricted_container(),
                    "volumeMounts": [
                        {"name": "output", "mountPath": OUTPUT_MOUNT, "readOnly": True}
                    ],
                }
            ],
            "volumes": [
                {
                    "name": "output",
                    "persistentVolumeClaim": {"claimName": f"{name}-output", "readOnly": True},
                }
            ],
        }
        if self.s.image_pull_secrets:
            spec["imagePullSecrets"] = [{"name": n} for n in self.s.image_pull_secrets]
        return {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": self._meta(f"{name}-collect", request.run_id, "collector", owner),
            "spec": spec,
        }

    def database_route(self, request: RunRequest) -> tuple[list[str], list[dict[str, Any]]]:
        """The CIDRs the run may reach, and host aliases so its DB_HOST needs no DNS."""
        configured = list(self.s.database_cidrs.get(request.database, []))
        assert request.db_host is not None  # prepare refuses a run without a database host
        try:
            address = ipaddress.ip_address(request.db_host)
        except ValueError:
            pass
        else:
            return configured or [f"{address}/{address.max_prefixlen}"], []
        try:
            infos = socket.getaddrinfo(request.db_host, request.db_port, type=socket.SOCK_STREAM)
        except OSError as exc:
            raise TransientError(f"cannot resolve database host {request.db_host}: {exc}") from None
        ips = sorted({info[4][0] for info in infos})
        cidrs = configured or [f"{ip}/{ipaddress.ip_address(ip).max_prefixlen}" for ip in ips]
        return cidrs, [{"ip": ips[0], "hostnames": [request.db_host]}]

    # ---- ExecutorAPI ----------------------------------------------------------------------
    def _create_or_get(self, body: dict[str, Any]) -> dict[str, Any]:
        try:
            return self.kube.create(body)
        except Conflict:
            meta = body["metadata"]
            return self.kube.get(body["kind"], meta["namespace"], meta["name"])

    def _prepare(self, request: RunRequest) -> None:
        cidrs, aliases = self.database_route(request)
        job = self._create_or_get(self.job_manifest(request, aliases))
        self._check_owner(job, request)
        self._create_or_get(self.secret_manifest(request, job))
        self._create_or_get(self.output_claim_manifest(request, job))
        self._create_or_get(self.network_policy_manifest(request, cidrs, job))
        if request.cache_dir:
            self._create_or_get(self.cache_claim_manifest(request))

    def _check_owner(self, job: dict[str, Any], request: RunRequest) -> None:
        labels = job["metadata"].get("labels") or {}
        if labels.get("secd.io/run") != request.run_id:
            raise PermanentError(
                f"a Job named {job['metadata']['name']} exists in {self.ns} that secd did not "
                "create for this run; remove it"
            )

    async def prepare(self, request: RunRequest) -> None:
        """Create the suspended Job, then its Secret, output PVC, NetworkPolicy and cache PVC."""
        if not request.image:
            raise PermanentError(
                "the run has no image to start: executor.kind = kubernetes needs "
                "builder.kind = buildkit"
            )
        if not request.db_host:
            raise PermanentError(
                f"database {request.database} is configured with a Unix socket only; a job in "
                "the cluster needs its host and port (credentials.databases.*.host)"
            )
        await asyncio.to_thread(self._prepare, request)

    def _job_and_pods(self, run_id: str) -> tuple[dict[str, Any], list[dict[str, Any]]]:
        job = self.kube.get("Job", self.ns, self.job_name(run_id))
        pods = self.kube.list("Pod", self.ns, f"secd.io/run={run_id},secd.io/role=job")
        return job, pods

    async def execute(
        self, request: RunRequest, on_start: Callable[[], Awaitable[None]]
    ) -> RunOutcome:
        """Release the Job, watch it and its pod, stream the log; fail fast if it cannot start."""
        name = self.job_name(request.run_id)
        began = time.monotonic()
        job = await asyncio.to_thread(self.kube.get, "Job", self.ns, name)
        if job["spec"].get("suspend"):
            await asyncio.to_thread(
                self.kube.patch, "Job", self.ns, name, {"spec": {"suspend": False}}
            )
            log.info("job %s released", name, extra={"run_id": request.run_id})
        follower: _LogFollower | None = None
        # The Job's own deadline ends it; this one only guards against a silent API.
        guard = math.ceil(request.runfor_s) + self.s.collect_timeout_s + 300
        try:
            while True:
                job, pods = await asyncio.to_thread(self._job_and_pods, request.run_id)
                state = job_state(job, pods, JOB_CONTAINER)
                if state.started and follower is None and state.pod is not None:
                    await on_start()
                    follower = _LogFollower(
                        self.kube, self.ns, state.pod, request.log_path, self.s.max_log_bytes
                    )
                    follower.start()
                if state.done:
                    break
                if time.monotonic() - began > guard:
                    raise TransientError(f"job {name} did not end within {guard:.0f}s")
                await asyncio.sleep(self.s.poll_s)
        finally:
            if follower is not None:
                follower.stop()
        # A Job stopped at its deadline has its pod deleted: what was seen running still ran.
        started = state.started or follower is not None
        pod = state.pod or (follower.pod if follower is not None else None)
        if pod is not None and started:
            await asyncio.to_thread(self._final_log, pod, request.log_path)
        if state.never_started:
            log.warning("job %s cannot start: %s", name, state.reason)
        reason = state.reason
        if state.exit_code is not None and reason == f"the job exited with code {state.exit_code}":
            # The command ran to its end: the port's reason is None, the exit code says the rest.
            reason = None
        if state.deadline_exceeded and not started:
            reason = "the job did not start within runfor (no node could run it in time)"
        status = job.get("status") or {}
        start = _parse_time(status.get("startTime"))
        end = _parse_time(status.get("completionTime")) or datetime.now(UTC)
        duration = (end - start).total_seconds() if start else time.monotonic() - began
        return RunOutcome(
            exit_code=state.exit_code,
            duration_s=max(duration, 0.0),
            reason=None if state.deadline_exceeded and started else reason,
            timed_out=state.deadline_exceeded and started,
            started=started,
        )

    def _final_log(self, pod: str, log_path: Path) -> None:
        """The whole log once the container ended: the record, whatever the stream missed."""
        try:
            data = self.kube.read_log(self.ns, pod, JOB_CONTAINER, self.s.max_log_bytes)
        except NotFound:
            return  # the pod is gone already (a deadline deletes it): keep what was followed
        log_path.parent.mkdir(parents=True, exist_ok=True)
        partial = log_path.with_name(log_path.name + ".part")
        partial.write_bytes(data)
        os.replace(partial, log_path)

    def _wait_running(self, pod: str) -> None:
        deadline = time.monotonic() + self.s.collect_timeout_s
        while True:
            found = self.kube.get("Pod", self.ns, pod)
            state = job_state({}, [found], COLLECT_CONTAINER)
            if state.never_started:
                raise TransientError(f"the collector pod {pod} cannot start: {state.reason}")
            phase = (found.get("status") or {}).get("phase")
            if phase == "Running" and state.started:
                return
            if phase in ("Succeeded", "Failed"):
                raise TransientError(f"the collector pod {pod} ended before collecting ({phase})")
            if time.monotonic() > deadline:
                raise TransientError(f"the collector pod {pod} did not start in time")
            time.sleep(self.s.poll_s)

    def _collect(self, request: RunRequest) -> list[str]:
        job = self.kube.get("Job", self.ns, self.job_name(request.run_id))
        pod = self._create_or_get(self.collector_manifest(request, job))["metadata"]["name"]
        self._wait_running(pod)
        archive = request.output_dir.with_name("outputs.tar")
        excluded: list[str] = []
        try:
            with open(archive, "wb") as sink:
                code, stderr = self.kube.exec_to(
                    self.ns,
                    pod,
                    COLLECT_CONTAINER,
                    ["tar", "-C", OUTPUT_MOUNT, "-cf", "-", "."],
                    sink,
                    limit_bytes=self.s.max_output_bytes,
                    timeout_s=self.s.collect_timeout_s,
                )
        except KubeError as exc:
            if "larger than" not in str(exc):
                raise
            archive.unlink(missing_ok=True)
            shutil.rmtree(request.output_dir, ignore_errors=True)
            request.output_dir.mkdir(parents=True)
            return [f"all outputs: together larger than {self.s.max_output_bytes} bytes"]
        # A second collect starts from an empty folder, as the first did.
        shutil.rmtree(request.output_dir, ignore_errors=True)
        excluded += unpack_outputs(archive, request.output_dir)
        archive.unlink(missing_ok=True)
        if code not in (0, 1):
            detail = " ".join(stderr.split())[-300:]
            excluded.append(f"some outputs could not be read (tar exit {code}: {detail})")
        self.kube.delete("Pod", self.ns, pod)
        return excluded

    async def collect(self, request: RunRequest) -> list[str]:
        """Start the collector on the output volume, stream a tar of it out, unpack it safely."""
        return await asyncio.to_thread(self._collect, request)

    def _cleanup(self, request: RunRequest) -> None:
        name = self.job_name(request.run_id)
        # The password goes first; the policy goes only once no pod of the run is left.
        self.kube.delete("Secret", self.ns, f"{name}-db")
        self.kube.delete("Job", self.ns, name)
        self.kube.delete("Pod", self.ns, f"{name}-collect")
        deadline = time.monotonic() + 120
        while self.kube.list("Pod", self.ns, f"secd.io/run={request.run_id}"):
            if time.monotonic() > deadline:
                log.warning("pods of %s still terminating; the reaper will finish", name)
                return
            time.sleep(self.s.poll_s)
        self.kube.delete("NetworkPolicy", self.ns, name)
        self.kube.delete("PersistentVolumeClaim", self.ns, f"{name}-output")

    async def cleanup(self, request: RunRequest) -> None:
        """Delete the run's Secret, Job, pods, NetworkPolicy and output PVC (not the cache)."""
        await asyncio.to_thread(self._cleanup, request)

    # ---- reaper -------------------------------------------------------------------------
    def reap(self, now: datetime | None = None) -> list[str]:
        """Delete what runs left behind: ended Jobs past the grace time, and orphans.

        A Job is reaped once it ended more than reap_grace_s ago (the executor that ran it has
        had time to collect), when it is still suspended after that long, or when it is older
        than any run may last. Other objects of a run
        are reaped when their Job is gone and they are older than the grace time. Cache PVCs
        carry no run label and are never touched.
        """
        now = now or datetime.now(UTC)
        grace = self.s.reap_grace_s
        max_age = hours_to_s(self.max_runfor_h) + self.s.collect_timeout_s + grace
        selector = f"app.kubernetes.io/managed-by={MANAGED_BY},secd.io/run"
        removed: list[str] = []
        live: set[str] = set()
        for job in self.kube.list("Job", self.ns, selector):
            meta = job["metadata"]
            created = _parse_time(meta.get("creationTimestamp")) or now
            ended = None
            for condition in (job.get("status") or {}).get("conditions") or []:
                if (
                    condition.get("type") in ("Complete", "Failed")
                    and condition.get("status") == "True"
                ):
                    ended = _parse_time(condition.get("lastTransitionTime")) or created
            age = (now - created).total_seconds()
            # A Job is suspended only between its creation and its release, seconds apart: one
            # still suspended after the grace time belongs to an executor that gave up on it.
            stuck = bool(job["spec"].get("suspend")) and age > grace
            if (
                stuck
                or age > max_age
                or (ended is not None and (now - ended).total_seconds() > grace)
            ):
                if self.kube.delete("Job", self.ns, meta["name"]):
                    removed.append(f"Job/{meta['name']}")
            else:
                live.add(meta["labels"]["secd.io/run"])
        for kind in ("Pod", "Secret", "NetworkPolicy", "PersistentVolumeClaim"):
            for item in self.kube.list(kind, self.ns, selector):
                meta = item["metadata"]
                created = _parse_time(meta.get("creationTimestamp")) or now
                if (
                    meta["labels"]["secd.io/run"] in live
                    or (now - created).total_seconds() <= grace
                ):
                    continue
                if self.kube.delete(kind, self.ns, meta["name"]):
                    removed.append(f"{kind}/{meta['name']}")
        return removed

    async def run_reaper(self) -> None:
        """Reap every reap_every_s until cancelled; an error is logged and tried again later."""
        while True:
            try:
                removed = await asyncio.to_thread(self.reap)
                if removed:
                    log.info("reaped %d objects: %s", len(removed), ", ".join(removed))
            except Exception:
                log.exception("reaping the runs namespace failed; trying again later")
            await asyncio.sleep(self.s.reap_every_s)

    def start_reaper(self) -> None:
        """Run the reaper in the background of this event loop."""
        self._reaper = asyncio.create_task(self.run_reaper())

    async def close(self) -> None:
        """Stop the reaper and release the client."""
        if self._reaper is not None:
            self._reaper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reaper
        self.kube.close()


class _LogFollower:
    """Follows a pod's log into a file in a thread, while the job runs (for `tail -f`)."""

    def __init__(self, kube: Kube, namespace: str, pod: str, path: Path, limit: int) -> None:
        self.kube, self.namespace, self.pod, self.path = kube, namespace, pod, path
        self.limit = limit
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"log-{pod}", daemon=True)

    def start(self) -> None:
        """Begin following."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop writing; the stream ends by itself when the container has ended."""
        self._stop.set()
        self._thread.join(timeout=5)

    def _run(self) -> None:
        # A dropped stream is opened again; the API sends the log from its start, so the file is
        # rewritten rather than appended to.
        while not self._stop.is_set():
            try:
                written = 0
                with open(self.path, "wb") as out:
                    for chunk in self.kube.log_stream(self.namespace, self.pod, JOB_CONTAINER):
                        if self._stop.is_set():
                            return
                        out.write(chunk[: max(self.limit - written, 0)])
                        out.flush()
                        written += len(chunk)
                return
            except Exception as exc:
                log.info("log stream of %s dropped (%s); reopening", self.pod, exc)
                self._stop.wait(1.0)


def _millicores(cpus: float) -> str:
    """A CPU count as a Kubernetes quantity: 2 -> "2", 0.5 -> "500m"."""
    milli = max(1, round(cpus * 1000))
    return str(milli // 1000) if milli % 1000 == 0 else f"{milli}m"
