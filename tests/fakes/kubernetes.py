"""FakeKubernetes: a local HTTP server that answers like the Kubernetes API, for what secd uses.

No API server can run on this machine, so the executor's and builder's Kubernetes code is tested
against this fake, and nothing here claims to be the real thing. It answers the documented REST
paths with the documented shapes, and emulates the controllers and kubelet closely enough that
secd's code has to cope with what a cluster does:

- every object posted is validated against the official schemas (kubernetes-validate, strict),
  names must be DNS-1123, a second create of a name is 409 AlreadyExists, a missing one 404;
- a Job's pod template is immutable; `suspend` may be patched (JSON merge patch);
- the Job controller creates one pod for a released Job, enforces activeDeadlineSeconds
  (condition Failed/DeadlineExceeded, the pod killed and then deleted), backoffLimit 0 (Failed,
  BackoffLimitExceeded) and ttlSecondsAfterFinished; the garbage collector deletes what an
  object owns when it is deleted;
- the "kubelet" refuses an image that runs as root under runAsNonRoot with the kubelet's own
  message (CreateContainerConfigError), reports a missing image as ErrImagePull then
  ImagePullBackOff, refuses a pod whose Secret is missing, and keeps a pod Pending until its
  PVCs exist;
- pod logs (follow or not, limitBytes) and exec over WebSocket (v4.channel.k8s.io) of
  `tar -C DIR -cf - .` on a volume a pod mounts.

What each container does is scripted per image (`PodScript`): its log lines, the files it leaves
on its volumes, how long it runs and its exit code. An image with no script cannot be pulled.
"""

from __future__ import annotations

import asyncio
import base64
import copy
import io
import json
import re
import secrets
import tarfile
import threading
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import kubernetes_validate
from aiohttp import WSMsgType, web

__all__ = ["FakeKubernetes", "PodScript"]

K8S_VERSION = "1.37"
_DNS_SUBDOMAIN = re.compile(r"[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?")
# plural -> kind, for the REST paths.
_KINDS = {
    "jobs": "Job",
    "pods": "Pod",
    "secrets": "Secret",
    "configmaps": "ConfigMap",
    "persistentvolumeclaims": "PersistentVolumeClaim",
    "networkpolicies": "NetworkPolicy",
}
_API_VERSIONS = {
    "Job": "batch/v1",
    "Pod": "v1",
    "Secret": "v1",
    "ConfigMap": "v1",
    "PersistentVolumeClaim": "v1",
    "NetworkPolicy": "networking.k8s.io/v1",
}


@dataclass
class PodScript:
    """What a fake container of one image does once it runs."""

    log: list[str] = field(default_factory=list)
    # Seconds between log lines, and how long the container runs (None: until it is killed).
    interval_s: float = 0.02
    runs_s: float | None = 0.1
    exit_code: int = 0
    # Absolute paths inside the container (under a volume mount) -> content, written at exit.
    files: dict[str, bytes] = field(default_factory=dict)
    symlinks: dict[str, str] = field(default_factory=dict)
    # The image's USER: 0 is root, which runAsNonRoot refuses unless runAsUser overrides it.
    user: int = 65534
    oom: bool = False


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _status(code: int, reason: str, message: str) -> web.Response:
    body = {
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": message,
        "reason": reason,
        "code": code,
    }
    return web.json_response(body, status=code)


def _merge(target: Any, patch: Any) -> Any:
    """RFC 7386 JSON merge patch."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    result = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = _merge(result.get(key), value)
    return result


def _matches(labels: dict[str, str], selector: str) -> bool:
    for term in filter(None, (t.strip() for t in selector.split(","))):
        if "!=" in term:
            key, value = term.split("!=", 1)
            if labels.get(key) == value:
                return False
        elif "=" in term:
            key, value = term.split("=", 1)
            if labels.get(key) != value.lstrip("="):
                return False
        elif term.startswith("!"):
            if term[1:] in labels:
                return False
        elif term not in labels:
            return False
    return True


@dataclass
class _PodRun:
    """The fake kubelet's view of one pod."""

    script: PodScript | None
    created: float
    started: float | None = None
    ended: bool = False
    log: bytearray = field(default_factory=bytearray)
    lines_written: int = 0
    pull_failed_at: float | None = None
    # The first init container's log; the fake runs init containers instantly, in order.
    init_log: bytearray = field(default_factory=bytearray)
    init_done: bool = False


class FakeKubernetes:
    """A fake Kubernetes API server on 127.0.0.1, in its own thread; see the module docstring."""

    def __init__(self) -> None:
        self.objects: dict[tuple[str, str, str], dict] = {}
        self.scripts: dict[str, PodScript] = {}
        # (namespace, claim) -> {path in volume: bytes | ("link", target)}
        self.volumes: dict[tuple[str, str], dict[str, Any]] = {}
        self.requests: list[tuple[str, str]] = []
        self.events: list[tuple[str, str, str, str]] = []  # (verb, kind, name, detail)
        self.validation_errors: list[str] = []
        # How long a pod stopped at its Job's deadline lingers before the controller deletes it.
        self.deadline_pod_grace_s = 0.2
        self._pods: dict[tuple[str, str], _PodRun] = {}
        # Job uid -> what the fake Job controller remembers (when it started, if it made a pod).
        self._jobs: dict[str, dict[str, Any]] = {}
        self._loop = asyncio.new_event_loop()
        self._runner: web.AppRunner | None = None
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self.url = ""

    # ---- lifecycle ----------------------------------------------------------------------
    def start(self) -> FakeKubernetes:
        """Listen on a free port and start the controllers."""
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._start(), self._loop).result(10)
        return self

    async def _start(self) -> None:
        app = web.Application()
        app.router.add_route("*", "/api/v1/namespaces/{ns}/{plural}", self._collection)
        app.router.add_route("*", "/api/v1/namespaces/{ns}/{plural}/{name}", self._item)
        app.router.add_get("/api/v1/namespaces/{ns}/pods/{name}/log", self._log)
        app.router.add_route("*", "/api/v1/namespaces/{ns}/pods/{name}/exec", self._exec)
        app.router.add_route(
            "*", "/apis/{group}/{version}/namespaces/{ns}/{plural}", self._collection
        )
        app.router.add_route(
            "*", "/apis/{group}/{version}/namespaces/{ns}/{plural}/{name}", self._item
        )
        self._runner = web.AppRunner(app)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        self.url = f"http://127.0.0.1:{port}"
        self._controller = asyncio.create_task(self._control())

    def stop(self) -> None:
        """Stop serving and the controllers."""

        async def _stop() -> None:
            self._controller.cancel()
            if self._runner is not None:
                await self._runner.cleanup()

        asyncio.run_coroutine_threadsafe(_stop(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)

    def call(self, fn, *args):
        """Run fn(*args) on the fake's own loop (the only thread that mutates its state)."""

        async def run():
            return fn(*args)

        return asyncio.run_coroutine_threadsafe(run(), self._loop).result(10)

    # ---- what tests look at -------------------------------------------------------------
    def find(self, kind: str, namespace: str, name: str) -> dict | None:
        """A stored object, or None."""
        return self.call(lambda: copy.deepcopy(self.objects.get((kind, namespace, name))))

    def of_kind(self, kind: str, namespace: str | None = None) -> list[dict]:
        """Stored objects of a kind."""
        return self.call(
            lambda: [
                copy.deepcopy(o)
                for (k, ns, _), o in self.objects.items()
                if k == kind and namespace in (None, ns)
            ]
        )

    def seed(self, body: dict, *, age_s: float = 0.0, status: dict | None = None) -> dict:
        """Store an object directly (as if created age_s ago), bypassing the controllers' start."""

        def put() -> dict:
            obj = self._stored(copy.deepcopy(body), age_s=age_s)
            if status is not None:
                obj["status"] = status
            self.objects[(obj["kind"], obj["metadata"]["namespace"], obj["metadata"]["name"])] = obj
            return copy.deepcopy(obj)

        return self.call(put)

    def volume_files(self, namespace: str, claim: str) -> dict[str, Any]:
        """What the fake containers left on a PVC."""
        return self.call(lambda: dict(self.volumes.get((namespace, claim), {})))

    # ---- REST ---------------------------------------------------------------------------
    def _stored(self, body: dict, *, age_s: float = 0.0) -> dict:
        meta = body.setdefault("metadata", {})
        meta["uid"] = secrets.token_hex(16)
        meta["resourceVersion"] = str(len(self.events) + 1)
        created = datetime.now(UTC) - timedelta(seconds=age_s)
        meta["creationTimestamp"] = created.strftime("%Y-%m-%dT%H:%M:%SZ")
        body.setdefault("apiVersion", _API_VERSIONS[body["kind"]])
        if body["kind"] == "Secret" and "stringData" in body:
            data = body.setdefault("data", {})
            for key, value in body.pop("stringData").items():
                data[key] = base64.b64encode(value.encode()).decode()
        if body["kind"] == "Pod":
            body.setdefault("status", {"phase": "Pending"})
        if body["kind"] == "PersistentVolumeClaim":
            body["status"] = {"phase": "Bound"}
        return body

    async def _collection(self, request: web.Request) -> web.Response:
        self.requests.append((request.method, request.path))
        kind = _KINDS.get(request.match_info["plural"])
        if kind is None:
            return _status(404, "NotFound", f"the server could not find {request.path}")
        ns = request.match_info["ns"]
        if request.method == "GET":
            selector = request.query.get("labelSelector", "")
            items = [
                copy.deepcopy(o)
                for (k, n, _), o in self.objects.items()
                if k == kind and n == ns and _matches(o["metadata"].get("labels") or {}, selector)
            ]
            for item in items:
                item.pop("kind", None)  # as the API does: list items carry no kind
            return web.json_response({"kind": f"{kind}List", "apiVersion": "v1", "items": items})
        if request.method != "POST":
            return _status(405, "MethodNotAllowed", f"{request.method} not allowed")
        body = await request.json()
        if body.get("kind") != kind:
            return _status(400, "BadRequest", f"kind {body.get('kind')} posted to {kind} path")
        meta = body.get("metadata") or {}
        name = meta.get("name", "")
        if meta.get("namespace", ns) != ns:
            return _status(400, "BadRequest", "the namespace of the object does not match")
        if not _DNS_SUBDOMAIN.fullmatch(name) or (kind != "Pod" and len(name) > 253):
            return _status(422, "Invalid", f'{kind} "{name}" is invalid: metadata.name')
        for value in (meta.get("labels") or {}).values():
            if len(value) > 63 or not re.fullmatch(
                r"([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]?", value
            ):
                return _status(422, "Invalid", f"{kind} {name}: label value {value!r} is invalid")
        try:
            kubernetes_validate.validate(body, K8S_VERSION, strict=True)
        except kubernetes_validate.ValidationError as exc:
            self.validation_errors.append(f"{kind}/{name}: {exc.message}")
            return _status(422, "Invalid", f'{kind} "{name}" is invalid: {exc.message}')
        if (kind, ns, name) in self.objects:
            return _status(409, "AlreadyExists", f'{kind.lower()}s "{name}" already exists')
        for owner in meta.get("ownerReferences") or []:
            if not any(o["metadata"]["uid"] == owner["uid"] for o in self.objects.values()):
                # The API accepts it; the garbage collector would delete the object at once.
                return _status(422, "Invalid", f"{kind} {name}: owner {owner['name']} not found")
        obj = self._stored(body)
        self.objects[(kind, ns, name)] = obj
        self.events.append(("create", kind, name, json.dumps(obj.get("spec", {}).get("suspend"))))
        if kind == "Pod":
            self._pods[(ns, name)] = _PodRun(self._script_for(obj), time.monotonic())
        return web.json_response(obj, status=201)

    async def _item(self, request: web.Request) -> web.Response:
        self.requests.append((request.method, request.path))
        kind = _KINDS.get(request.match_info["plural"])
        ns, name = request.match_info["ns"], request.match_info["name"]
        key = (kind, ns, name)
        if kind is None or key not in self.objects:
            return _status(404, "NotFound", f'{(kind or "object").lower()}s "{name}" not found')
        if request.method == "GET":
            return web.json_response(self.objects[key])
        if request.method == "DELETE":
            self._delete(key)
            return web.json_response({"kind": "Status", "apiVersion": "v1", "status": "Success"})
        if request.method == "PATCH":
            if request.content_type != "application/merge-patch+json":
                return _status(415, "UnsupportedMediaType", request.content_type)
            patch = await request.json()
            obj = self.objects[key]
            if kind == "Job" and set((patch.get("spec") or {}).keys()) - {"suspend"}:
                return _status(422, "Invalid", f'Job "{name}" is invalid: spec.template: immutable')
            if set(patch) - {"spec", "metadata"}:
                return _status(
                    422, "Invalid", f"{kind} {name}: only spec and metadata patched here"
                )
            self.objects[key] = _merge(obj, patch)
            self.events.append(("patch", kind, name, json.dumps(patch)))
            return web.json_response(self.objects[key])
        return _status(405, "MethodNotAllowed", f"{request.method} not allowed")

    def _delete(self, key: tuple[str, str, str]) -> None:
        obj = self.objects.pop(key, None)
        if obj is None:
            return
        self.events.append(("delete", key[0], key[2], ""))
        if key[0] == "Pod":
            self._pods.pop((key[1], key[2]), None)
        if key[0] == "PersistentVolumeClaim":
            self.volumes.pop((key[1], key[2]), None)
        uid = obj["metadata"]["uid"]
        # The garbage collector: whatever this object owned goes too.
        for other_key, other in list(self.objects.items()):
            owners = other["metadata"].get("ownerReferences") or []
            if any(o["uid"] == uid for o in owners):
                self._delete(other_key)

    # ---- logs and exec ------------------------------------------------------------------
    async def _log(self, request: web.Request) -> web.StreamResponse:
        self.requests.append((request.method, request.path))
        ns, name = request.match_info["ns"], request.match_info["name"]
        run = self._pods.get((ns, name))
        if run is None:
            return _status(404, "NotFound", f'pods "{name}" not found')
        pod = self.objects[("Pod", ns, name)]
        inits = [c["name"] for c in pod["spec"].get("initContainers") or []]
        container = request.query.get("container")
        if container in inits:
            if not run.init_done:
                return _status(400, "BadRequest", f'container "{container}" is waiting to start')
            return web.Response(body=bytes(run.init_log), content_type="text/plain")
        if run.started is None:
            return _status(400, "BadRequest", f'container in pod "{name}" is waiting to start')
        if request.query.get("follow") != "true":
            limit = int(request.query.get("limitBytes", "0")) or None
            data = bytes(run.log[:limit] if limit else run.log)
            return web.Response(body=data, content_type="text/plain")
        response = web.StreamResponse()
        response.content_type = "text/plain"
        await response.prepare(request)
        sent = 0
        while True:
            if len(run.log) > sent:
                await response.write(bytes(run.log[sent:]))
                sent = len(run.log)
            if run.ended or (ns, name) not in self._pods:
                break
            await asyncio.sleep(0.01)
        await response.write_eof()
        return response

    async def _exec(self, request: web.Request) -> web.StreamResponse:
        self.requests.append((request.method, request.path))
        ns, name = request.match_info["ns"], request.match_info["name"]
        pod = self.objects.get(("Pod", ns, name))
        run = self._pods.get((ns, name))
        if pod is None or run is None:
            return _status(404, "NotFound", f'pods "{name}" not found')
        if run.started is None or run.ended:
            return _status(400, "BadRequest", f'pod "{name}" is not running')
        ws = web.WebSocketResponse(protocols=("v4.channel.k8s.io",))
        await ws.prepare(request)
        command = request.query.getall("command", [])
        container = request.query.get("container")
        self.events.append(("exec", "Pod", name, " ".join(command)))
        status = {"metadata": {}, "status": "Success"}
        if command[:2] == ["tar", "-C"] and command[3:] == ["-cf", "-", "."]:
            data = self._tar_of(pod, container, command[2])
            for start in range(0, len(data), 65536):
                await ws.send_bytes(b"\x01" + data[start : start + 65536])
        else:
            await ws.send_bytes(b"\x02" + f"{command[0]}: not found\n".encode())
            status = {
                "metadata": {},
                "status": "Failure",
                "reason": "NonZeroExitCode",
                "details": {"causes": [{"reason": "ExitCode", "message": "127"}]},
            }
        await ws.send_bytes(b"\x03" + json.dumps(status).encode())
        await ws.close()
        async for msg in ws:  # drain until the client closes too
            if msg.type in (WSMsgType.CLOSE, WSMsgType.ERROR):
                break
        return ws

    def _tar_of(self, pod: dict, container: str | None, directory: str) -> bytes:
        files = self._mounted_files(pod, container, directory)
        buffer = io.BytesIO()
        with tarfile.open(fileobj=buffer, mode="w") as tar:
            root = tarfile.TarInfo(".")
            root.type = tarfile.DIRTYPE
            root.mode = 0o755
            tar.addfile(root)
            for path, content in sorted(files.items()):
                info = tarfile.TarInfo(f"./{path}")
                if isinstance(content, tuple):
                    info.type = tarfile.SYMTYPE
                    info.linkname = content[1]
                    tar.addfile(info)
                else:
                    info.size = len(content)
                    info.mode = 0o644
                    tar.addfile(info, io.BytesIO(content))
        return buffer.getvalue()

    # ---- volumes --------------------------------------------------------------------------
    def _claim_at(
        self, pod: dict, container: dict, path: str
    ) -> tuple[tuple[str, str], str] | None:
        """The PVC (and the path inside it) that holds `path` in this container, if any."""
        volumes = {v["name"]: v for v in pod["spec"].get("volumes") or []}
        best: tuple[int, tuple[tuple[str, str], str]] | None = None
        for mount in container.get("volumeMounts") or []:
            root = mount["mountPath"].rstrip("/")
            if path != root and not path.startswith(root + "/"):
                continue
            claim = (volumes.get(mount["name"]) or {}).get("persistentVolumeClaim")
            if claim is None:
                continue
            inside = path[len(root) :].lstrip("/")
            if mount.get("subPath"):
                inside = f"{mount['subPath']}/{inside}".rstrip("/")
            found = ((pod["metadata"]["namespace"], claim["claimName"]), inside)
            if best is None or len(root) > best[0]:
                best = (len(root), found)
        return best[1] if best else None

    def _mounted_files(self, pod: dict, container: str | None, directory: str) -> dict[str, Any]:
        spec = next(c for c in pod["spec"]["containers"] if container in (None, c["name"]))
        where = self._claim_at(pod, spec, directory)
        if where is None:
            return {}
        claim, prefix = where
        out = {}
        for path, content in self.volumes.get(claim, {}).items():
            if not prefix:
                out[path] = content
            elif path.startswith(prefix + "/"):
                out[path[len(prefix) + 1 :]] = content
        return out

    def _write_files(self, pod: dict, script: PodScript) -> None:
        container = pod["spec"]["containers"][0]
        entries: list[tuple[str, Any]] = list(script.files.items())
        entries += [(p, ("link", t)) for p, t in script.symlinks.items()]
        for path, content in entries:
            where = self._claim_at(pod, container, path)
            if where is None:
                continue  # written to the container's own filesystem: gone with it
            claim, inside = where
            self.volumes.setdefault(claim, {})[inside] = content

    # ---- controllers and kubelet --------------------------------------------------------
    def _script_for(self, pod: dict) -> PodScript | None:
        return self.scripts.get(pod["spec"]["containers"][0]["image"])

    async def _control(self) -> None:
        while True:
            try:
                self._reconcile()
            except Exception as exc:  # a bug in the fake must show, not hang the tests
                self.validation_errors.append(f"fake controller error: {exc!r}")
            await asyncio.sleep(0.01)

    def _reconcile(self) -> None:
        now = time.monotonic()
        for key, job in list(self.objects.items()):
            if key[0] == "Job" and key in self.objects:
                self._reconcile_job(key, job)
        for (ns, name), run in list(self._pods.items()):
            pod = self.objects.get(("Pod", ns, name))
            if pod is not None:
                self._kubelet(pod, run, now)

    def _job_pods(self, job: dict) -> list[dict]:
        uid = job["metadata"]["uid"]
        return [
            o
            for (k, _, _), o in self.objects.items()
            if k == "Pod"
            and any(r["uid"] == uid for r in o["metadata"].get("ownerReferences") or [])
        ]

    def _reconcile_job(self, key: tuple[str, str, str], job: dict) -> None:
        spec, status = job["spec"], job.setdefault("status", {})
        conditions = status.setdefault("conditions", [])
        finished = any(c["type"] in ("Complete", "Failed") for c in conditions)
        if finished:
            ttl = spec.get("ttlSecondsAfterFinished")
            done_at = datetime.fromisoformat(status["completionTime"].replace("Z", "+00:00"))
            if ttl is not None and (datetime.now(UTC) - done_at).total_seconds() >= ttl:
                self._delete(key)
            return
        if spec.get("suspend"):
            return
        pods = self._job_pods(job)
        runtime = self._jobs.setdefault(job["metadata"]["uid"], {})
        if "startTime" not in status:
            status["startTime"] = _now()
            runtime["started"] = time.monotonic()
        if not pods and not runtime.get("pod_made"):
            template = copy.deepcopy(spec["template"])
            name = f"{key[2]}-{secrets.token_hex(3)[:5]}"
            labels = dict(template["metadata"].get("labels") or {})
            labels |= {"batch.kubernetes.io/job-name": key[2], "job-name": key[2]}
            pod = {
                "apiVersion": "v1",
                "kind": "Pod",
                "metadata": {
                    "name": name,
                    "namespace": key[1],
                    "labels": labels,
                    "ownerReferences": [
                        {
                            "apiVersion": "batch/v1",
                            "kind": "Job",
                            "name": key[2],
                            "uid": job["metadata"]["uid"],
                            "controller": True,
                        }
                    ],
                },
                "spec": template["spec"],
            }
            obj = self._stored(pod)
            self.objects[("Pod", key[1], name)] = obj
            self._pods[(key[1], name)] = _PodRun(self._script_for(obj), time.monotonic())
            runtime["pod_made"] = True
            status["active"] = 1
            return
        deadline = spec.get("activeDeadlineSeconds")
        if (
            deadline is not None
            and time.monotonic() - runtime.get("started", time.monotonic()) >= deadline
        ):
            for pod in pods:
                run = self._pods.get((key[1], pod["metadata"]["name"]))
                self._terminate(pod, run, 137, "Error")
                # The controller deletes the active pods a moment later, as a cluster does.
                self._loop.call_later(
                    self.deadline_pod_grace_s,
                    self._delete,
                    ("Pod", key[1], pod["metadata"]["name"]),
                )
            self._finish(
                job, "Failed", "DeadlineExceeded", "Job was active longer than specified deadline"
            )
            return
        for pod in pods:
            phase = pod["status"].get("phase")
            if phase == "Succeeded":
                self._finish(job, "Complete", "", "")
            elif phase == "Failed":
                self._finish(
                    job,
                    "Failed",
                    "BackoffLimitExceeded",
                    "Job has reached the specified backoff limit",
                )

    def _finish(self, job: dict, kind: str, reason: str, message: str) -> None:
        status = job["status"]
        status["conditions"].append(
            {
                "type": kind,
                "status": "True",
                "reason": reason,
                "message": message,
                "lastProbeTime": _now(),
                "lastTransitionTime": _now(),
            }
        )
        status["completionTime"] = _now()
        status["active"] = 0
        status["succeeded" if kind == "Complete" else "failed"] = 1

    def _waiting(self, pod: dict, reason: str, message: str) -> None:
        name = pod["spec"]["containers"][0]["name"]
        pod["status"]["containerStatuses"] = [
            {
                "name": name,
                "image": pod["spec"]["containers"][0]["image"],
                "ready": False,
                "restartCount": 0,
                "state": {"waiting": {"reason": reason, "message": message}},
            }
        ]

    def _kubelet(self, pod: dict, run: _PodRun, now: float) -> None:
        if run.ended:
            return
        container = pod["spec"]["containers"][0]
        ns, name = pod["metadata"]["namespace"], pod["metadata"]["name"]
        if run.started is None:
            for volume in pod["spec"].get("volumes") or []:
                claim = volume.get("persistentVolumeClaim")
                if claim and ("PersistentVolumeClaim", ns, claim["claimName"]) not in self.objects:
                    pod["status"]["conditions"] = [
                        {
                            "type": "PodScheduled",
                            "status": "False",
                            "reason": "Unschedulable",
                            "message": f'persistentvolumeclaim "{claim["claimName"]}" not found',
                        }
                    ]
                    return
            if not run.init_done and not self._run_inits(pod, run):
                return
            image = container["image"]
            if run.script is None:
                if run.pull_failed_at is None:
                    run.pull_failed_at = now
                    self._waiting(
                        pod,
                        "ErrImagePull",
                        f'failed to pull and unpack image "{image}": not found',
                    )
                elif now - run.pull_failed_at > 0.1:
                    self._waiting(pod, "ImagePullBackOff", f'Back-off pulling image "{image}"')
                return
            for env in container.get("env") or []:
                ref = (env.get("valueFrom") or {}).get("secretKeyRef")
                if ref and ("Secret", ns, ref["name"]) not in self.objects:
                    self._waiting(
                        pod, "CreateContainerConfigError", f'secret "{ref["name"]}" not found'
                    )
                    return
            pod_sc = pod["spec"].get("securityContext") or {}
            c_sc = container.get("securityContext") or {}
            non_root = c_sc.get("runAsNonRoot", pod_sc.get("runAsNonRoot"))
            uid = c_sc.get("runAsUser", pod_sc.get("runAsUser", run.script.user))
            if non_root and uid == 0:
                self._waiting(
                    pod,
                    "CreateContainerConfigError",
                    "container has runAsNonRoot and image will run as root "
                    f'(pod: "{name}_{ns}({pod["metadata"]["uid"]})", '
                    f"container: {container['name']})",
                )
                return
            run.started = now
            pod["status"]["phase"] = "Running"
            pod["status"]["containerStatuses"] = [
                {
                    "name": container["name"],
                    "image": image,
                    "ready": True,
                    "restartCount": 0,
                    "state": {"running": {"startedAt": _now()}},
                }
            ]
            return
        script = run.script
        assert script is not None
        elapsed = now - run.started
        due = min(len(script.log), int(elapsed / script.interval_s) + 1)
        while run.lines_written < due:
            run.log += (script.log[run.lines_written] + "\n").encode()
            run.lines_written += 1
        if script.runs_s is not None and elapsed >= script.runs_s and due == len(script.log):
            self._write_files(pod, script)
            self._terminate(
                pod,
                run,
                137 if script.oom else script.exit_code,
                "OOMKilled" if script.oom else None,
            )

    def _run_inits(self, pod: dict, run: _PodRun) -> bool:
        """Run the pod's init containers (instantly); False if one cannot start or fails."""
        statuses = []
        for init in pod["spec"].get("initContainers") or []:
            script = self.scripts.get(init["image"])
            if script is None:
                statuses.append(
                    {"name": init["name"], "state": {"waiting": {"reason": "ErrImagePull"}}}
                )
                pod["status"]["initContainerStatuses"] = statuses
                return False
            run.init_log += "".join(line + "\n" for line in script.log).encode()
            statuses.append(
                {
                    "name": init["name"],
                    "state": {"terminated": {"exitCode": script.exit_code, "reason": "Completed"}},
                }
            )
            pod["status"]["initContainerStatuses"] = statuses
            if script.exit_code != 0:
                run.init_done = True
                run.ended = True
                pod["status"]["phase"] = "Failed"
                return False
        run.init_done = True
        return True

    def _terminate(self, pod: dict, run: _PodRun | None, code: int, reason: str | None) -> None:
        if run is not None:
            run.ended = True
        pod["status"]["phase"] = "Succeeded" if code == 0 else "Failed"
        for status in pod["status"].get("containerStatuses") or []:
            status["ready"] = False
            status["state"] = {
                "terminated": {
                    "exitCode": code,
                    "reason": reason or ("Completed" if code == 0 else "Error"),
                    "finishedAt": _now(),
                }
            }
