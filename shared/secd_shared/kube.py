"""The one door to the Kubernetes API, for the executor's and the builder's Jobs.

Objects go in and come out as plain dicts, exactly as the API documents them, so what a test
asserts is what the cluster receives. Calls are blocking (the kubernetes client is): services run
them with `asyncio.to_thread`. The `kubernetes` package is imported here only, and only the
executor and the builder install it (`secd-shared[kubernetes]`).

`job_state` reads a Job and its Pods and says whether the run is still going, how it ended, or
why it can never start (an image that cannot be pulled, an image that runs as root), so both
services fail fast with the same reasons.
"""

from __future__ import annotations

import builtins
import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import IO, Any

__all__ = [
    "KINDS",
    "Conflict",
    "JobState",
    "Kube",
    "KubeError",
    "NotFound",
    "dns_name",
    "job_state",
    "owner_reference",
]

# kind -> (apiVersion, plural): every kind secd creates, and nothing else.
KINDS: dict[str, tuple[str, str]] = {
    "Job": ("batch/v1", "jobs"),
    "Pod": ("v1", "pods"),
    "Secret": ("v1", "secrets"),
    "ConfigMap": ("v1", "configmaps"),
    "PersistentVolumeClaim": ("v1", "persistentvolumeclaims"),
    "NetworkPolicy": ("networking.k8s.io/v1", "networkpolicies"),
}

_TIMEOUT_S = 30.0


class KubeError(Exception):
    """The API refused a request; `status` is the HTTP status (0: no answer)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


class NotFound(KubeError):
    """404: the object does not exist (deleting it again is fine)."""


class Conflict(KubeError):
    """409: the object already exists (creating it again is fine)."""


def _path(kind: str, namespace: str, name: str | None = None, sub: str | None = None) -> str:
    api_version, plural = KINDS[kind]
    base = "/api/v1" if api_version == "v1" else f"/apis/{api_version}"
    path = f"{base}/namespaces/{namespace}/{plural}"
    if name is not None:
        path += f"/{name}"
    if sub is not None:
        path += f"/{sub}"
    return path


class Kube:
    """A thin, blocking client: create, get, list, patch, delete, pod logs and exec."""

    def __init__(self, api_client: Any) -> None:
        self.api = api_client

    @classmethod
    def connect(cls, *, kubeconfig: str | None = None, context: str | None = None) -> Kube:
        """In-cluster credentials when `kubeconfig` is None, else that file (and context)."""
        from kubernetes import client, config

        configuration = client.Configuration()
        if kubeconfig is None:
            config.load_incluster_config(client_configuration=configuration)
        else:
            config.load_kube_config(
                config_file=kubeconfig, context=context, client_configuration=configuration
            )
        return cls(client.ApiClient(configuration))

    @classmethod
    def for_url(cls, url: str) -> Kube:
        """A client for an API server at `url` with no credentials (tests, `kubectl proxy`)."""
        from kubernetes import client

        configuration = client.Configuration()
        configuration.host = url
        return cls(client.ApiClient(configuration))

    def close(self) -> None:
        """Release the connection pool."""
        self.api.close()

    def _call(
        self,
        method: str,
        path: str,
        *,
        query: list[tuple[str, Any]] | None = None,
        body: Any = None,
        content_type: str = "application/json",
        stream: bool = False,
        timeout: float | None = _TIMEOUT_S,
    ) -> Any:
        headers = {"Accept": "application/json", "Content-Type": content_type}
        request = self.api.param_serialize(
            method,
            path,
            query_params=query or [],
            header_params=headers,
            body=body,
            auth_settings=["BearerToken"],
        )
        from kubernetes.client.exceptions import ApiException

        try:
            response = self.api.call_api(*request, _request_timeout=timeout)
        except ApiException as exc:
            raise KubeError(0, f"{method} {path}: {exc.reason}") from None
        if not 200 <= response.status <= 299:
            response.read()
            raise _error(method, path, response.status, response.data)
        if stream:
            return response.response
        response.read()
        return json.loads(response.data) if response.data else {}

    def create(self, body: dict[str, Any]) -> dict[str, Any]:
        """Create an object; raises Conflict if one of that name exists."""
        meta = body["metadata"]
        created: dict[str, Any] = self._call(
            "POST", _path(body["kind"], meta["namespace"]), body=body
        )
        return created

    def get(self, kind: str, namespace: str, name: str) -> dict[str, Any]:
        """Read one object; raises NotFound."""
        found: dict[str, Any] = self._call("GET", _path(kind, namespace, name))
        return found

    def list(self, kind: str, namespace: str, selector: str) -> list[dict[str, Any]]:
        """Objects of a kind whose labels match `selector` (e.g. ``secd.io/run=r1``)."""
        found = self._call("GET", _path(kind, namespace), query=[("labelSelector", selector)])
        items: list[dict[str, Any]] = found.get("items") or []
        for item in items:
            # Lists leave kind out of their items; put it back so an item reads like a get.
            item.setdefault("kind", kind)
        return items

    def patch(self, kind: str, namespace: str, name: str, patch: dict[str, Any]) -> dict[str, Any]:
        """Apply a JSON merge patch (RFC 7386)."""
        patched: dict[str, Any] = self._call(
            "PATCH",
            _path(kind, namespace, name),
            body=patch,
            content_type="application/merge-patch+json",
        )
        return patched

    def delete(self, kind: str, namespace: str, name: str) -> bool:
        """Delete an object and (in the background) what it owns; False if it was gone."""
        body = {"apiVersion": "v1", "kind": "DeleteOptions", "propagationPolicy": "Background"}
        try:
            self._call("DELETE", _path(kind, namespace, name), body=body)
        except NotFound:
            return False
        return True

    def log_stream(self, namespace: str, pod: str, container: str) -> Iterator[bytes]:
        """Follow a container's log until it ends; yields raw chunks."""
        response = self._call(
            "GET",
            _path("Pod", namespace, pod, "log"),
            query=[("container", container), ("follow", "true")],
            stream=True,
            timeout=None,
        )
        try:
            yield from response.stream(65536, decode_content=True)
        finally:
            response.release_conn()

    def read_log(self, namespace: str, pod: str, container: str, limit_bytes: int) -> bytes:
        """A container's whole log, at most `limit_bytes` (the API cuts it)."""
        response = self._call(
            "GET",
            _path("Pod", namespace, pod, "log"),
            query=[("container", container), ("limitBytes", str(limit_bytes))],
            stream=True,
        )
        try:
            data: bytes = response.read()
            return data
        finally:
            response.release_conn()

    def exec_to(
        self,
        namespace: str,
        pod: str,
        container: str,
        command: builtins.list[str],  # `list` alone is the method above, in this class
        sink: IO[bytes],
        *,
        limit_bytes: int,
        timeout_s: float,
    ) -> tuple[int, str]:
        """Run `command` in a container; its stdout goes to `sink`. Returns (exit code, stderr).

        Raises KubeError if stdout passes `limit_bytes` or the command outlives `timeout_s`.
        """
        import time

        from kubernetes import client
        from kubernetes.stream import stream

        core = client.CoreV1Api(self.api)
        ws = stream(
            core.connect_get_namespaced_pod_exec,
            pod,
            namespace,
            container=container,
            command=command,
            stdout=True,
            stderr=True,
            stdin=False,
            tty=False,
            _preload_content=False,
            binary=True,
        )
        written = 0
        stderr = b""
        deadline = time.monotonic() + timeout_s
        try:
            while ws.is_open():
                if time.monotonic() > deadline:
                    raise KubeError(0, f"{' '.join(command)} in {pod} ran past {timeout_s:g}s")
                ws.update(timeout=1)
                chunk = ws.read_stdout(timeout=0) if ws.peek_stdout() else b""
                if chunk:
                    written += len(chunk)
                    if written > limit_bytes:
                        raise KubeError(0, f"output of {pod} is larger than {limit_bytes} bytes")
                    sink.write(chunk)
                if ws.peek_stderr():
                    stderr = (stderr + ws.read_stderr(timeout=0))[-4096:]
            chunk = ws.read_stdout(timeout=0) if ws.peek_stdout() else b""
            if chunk:
                if written + len(chunk) > limit_bytes:
                    raise KubeError(0, f"output of {pod} is larger than {limit_bytes} bytes")
                sink.write(chunk)
            code = ws.returncode
        finally:
            ws.close()
        return (code if code is not None else -1), stderr.decode("utf-8", "replace")


def _error(method: str, path: str, status: int, data: bytes | None) -> KubeError:
    message = ""
    try:
        message = json.loads(data or b"{}").get("message", "")
    except (ValueError, AttributeError):
        message = (data or b"")[:200].decode("utf-8", "replace")
    text = f"{method} {path}: {status} {message}".strip()
    if status == 404:
        return NotFound(status, text)
    if status == 409:
        return Conflict(status, text)
    return KubeError(status, text)


def owner_reference(owner: dict[str, Any]) -> dict[str, Any]:
    """An ownerReference to `owner`, so deleting it deletes what it owns."""
    return {
        "apiVersion": owner["apiVersion"],
        "kind": owner["kind"],
        "name": owner["metadata"]["name"],
        "uid": owner["metadata"]["uid"],
    }


_NOT_DNS = re.compile(r"[^a-z0-9-]+")


def dns_name(text: str, *, limit: int = 40) -> str:
    """A DNS-1123 label made from `text`, with a short hash so distinct texts stay distinct."""
    import hashlib

    slug = _NOT_DNS.sub("-", text.lower()).strip("-")[:limit].strip("-") or "x"
    digest = hashlib.sha256(text.encode()).hexdigest()[:8]
    return f"{slug}-{digest}"


@dataclass(frozen=True)
class JobState:
    """Where a Job stands: `done` once it ended; `reason` says why it failed (None: success)."""

    done: bool
    reason: str | None = None
    exit_code: int | None = None
    deadline_exceeded: bool = False
    # True when the pod never started (image, security context): fail fast, nothing to collect.
    never_started: bool = False
    pod: str | None = None
    started: bool = False


# Waiting reasons that never resolve on their own for a run: fail at once rather than wait out
# the deadline. ErrImagePull is often followed by ImagePullBackOff; either means the same.
_PULL_FAILURES = ("ErrImagePull", "ImagePullBackOff", "InvalidImageName", "ErrImageNeverPull")
_CONFIG_FAILURES = ("CreateContainerConfigError", "CreateContainerError", "RunContainerError")


def _condition(job: dict[str, Any], kind: str) -> dict[str, Any] | None:
    condition: dict[str, Any]
    for condition in (job.get("status") or {}).get("conditions") or []:
        if condition.get("type") == kind and condition.get("status") == "True":
            return condition
    return None


def _container_status(pod: dict[str, Any], container: str) -> dict[str, Any]:
    status: dict[str, Any]
    for status in (pod.get("status") or {}).get("containerStatuses") or []:
        if status.get("name") == container:
            return status
    return {}


def _never_starts(pod: dict[str, Any], container: str) -> str | None:
    """Why the container can never start, in one line for the researcher; None if it may."""
    waiting = (_container_status(pod, container).get("state") or {}).get("waiting") or {}
    reason = waiting.get("reason", "")
    message = " ".join(str(waiting.get("message", "")).split())[:300]
    if reason in _PULL_FAILURES:
        return f"the image could not be pulled ({reason}: {message or 'no detail'})"
    if reason in _CONFIG_FAILURES:
        # The kubelet's own words (kuberuntime's verifyRunAsNonRoot).
        if "non-numeric user" in message:
            return (
                "the image names its user by name, so the cluster cannot tell it is not root: "
                "use a numeric USER such as `USER 65534`"
            )
        if "runAsNonRoot" in message and "will run as root" in message:
            return (
                "the image runs as root, and secd runs jobs as a non-root user: "
                "add `USER 65534` to the Dockerfile"
            )
        return f"the container could not be created ({reason}: {message or 'no detail'})"
    return None


def job_state(job: dict[str, Any], pods: list[dict[str, Any]], container: str) -> JobState:
    """How the Job stands, from its conditions and its pods' container states."""
    pod = pods[0] if pods else None
    pod_name = pod["metadata"]["name"] if pod else None
    terminated: dict[str, Any] = {}
    started = False
    if pod is not None:
        state = _container_status(pod, container).get("state") or {}
        terminated = state.get("terminated") or {}
        started = "running" in state or "terminated" in state
    exit_code = terminated.get("exitCode")
    failed = _condition(job, "Failed")
    if _condition(job, "Complete") is not None:
        return JobState(True, None, exit_code or 0, pod=pod_name, started=True)
    if failed is not None:
        if failed.get("reason") == "DeadlineExceeded":
            return JobState(
                True,
                "the job ran longer than runfor and was stopped",
                exit_code,
                deadline_exceeded=True,
                pod=pod_name,
                started=started,
            )
        if terminated.get("reason") == "OOMKilled":
            reason = "the job ran out of memory and was killed"
        elif exit_code is not None:
            reason = f"the job exited with code {exit_code}"
        else:
            detail = " ".join(str(failed.get("message", "")).split())[:300]
            reason = f"the job failed ({failed.get('reason', 'unknown')}: {detail or 'no detail'})"
        if pod is not None and (pod.get("status") or {}).get("reason") == "Evicted":
            message = " ".join(str(pod["status"].get("message", "")).split())[:300]
            reason = f"the job was evicted ({message or 'no detail'})"
        return JobState(True, reason, exit_code, pod=pod_name, started=started)
    if pod is not None:
        blocked = _never_starts(pod, container)
        if blocked is not None:
            return JobState(True, blocked, None, never_started=True, pod=pod_name)
    return JobState(False, pod=pod_name, started=started)
