"""Who may do what on the bus: one NATS user per service, least privilege.

Each service may publish only its own event subjects, pull from and ack only its own durable
consumers, and (where it needs to) read the log through direct get. No service may create, delete,
purge or reconfigure a stream or a consumer: only the bootstrap identity (`secd up`) does that.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from secd_shared.artifacts import ARTIFACT_BUCKET
from secd_shared.bus import LOG_STREAM, LOG_VIEW_STREAM
from secd_shared.events import type_token
from secd_shared.integrity import CHECKPOINT_STREAM, checkpoint_subject
from secd_shared.pushes import PUSH_BUCKET, PUSH_STREAM

__all__ = [
    "BOOTSTRAP_USER",
    "CONSUMERS",
    "IDENTITIES",
    "LOG_CONSUMERS",
    "Identity",
    "nats_server_config",
]

BOOTSTRAP_USER = "secd-admin"


@dataclass(frozen=True)
class Identity:
    """A service's rights: events it writes, consumers it pulls, whether it reads the log."""

    publishes: tuple[str, ...]
    consumers: tuple[str, ...] = ()
    reads_log: bool = False
    # Job output lives in its own stream: the executor writes it, the airlock reads it (its
    # consumers of SECD_LOGS) and writes the checked copy that the gateway serves.
    writes_job_logs: bool = False
    log_consumers: tuple[str, ...] = ()
    writes_log_view: bool = False
    reads_log_view: bool = False
    # Signed checkpoints of the log live in their own stream: the checkpointer writes them.
    writes_checkpoints: bool = False
    reads_checkpoints: bool = False
    # The record of pushes already received (bucket SECD_PUSHES): the gateway writes and reads it.
    records_pushes: bool = False
    # Artifacts by digest (bucket SECD_ARTIFACTS, secd_shared.artifacts): sources and
    # environments (builder -> executor), outputs and job logs (executor -> publisher).
    writes_artifacts: bool = False
    reads_artifacts: bool = False


# Durable consumer name -> the event types it delivers.
CONSUMERS: dict[str, tuple[str, ...]] = {
    "verifier": ("push.received",),
    "builder": ("push.verified",),
    "credentials": ("build.succeeded",),
    "credentials-revoke": ("run.finished", "run.failed", "run.rejected"),
    "executor": ("credentials.issued",),
    # The airlock checks what a job wrote and printed; officers' reviews decide what it held.
    "airlock": ("run.finished", "run.failed"),
    "airlock-reviews": ("review.recorded",),
    # Attacks an officer asked for on a held file (LiRA on a model).
    "airlock-requests": ("review.requested",),
    # The publisher writes a branch for a rejected run, and the files the airlock released.
    "publisher": ("run.rejected", "run.failed", "outputs.released"),
    # The forge's commit status follows every stage of a run (see secd_publisher.status).
    "publisher-status": (
        "push.received",
        "push.verified",
        "build.succeeded",
        "credentials.issued",
        "run.started",
        "run.finished",
        "run.failed",
        "run.rejected",
        "results.published",
        "outputs.held",
    ),
}
# Durable consumer of the job-log stream (SECD_LOGS) -> the subjects it delivers.
LOG_CONSUMERS: dict[str, str] = {"airlock-logs": "secd.log.*"}

IDENTITIES: dict[str, Identity] = {
    # Officers' decisions, their requests for attacks and their reads of held files come in
    # through the gateway's review API (authenticated officers).
    "gateway": Identity(
        publishes=("push.received", "review.recorded", "review.requested", "review.fetched"),
        reads_log=True,
        reads_log_view=True,
        records_pushes=True,
    ),
    "verifier": Identity(publishes=("push.verified", "run.rejected"), consumers=("verifier",)),
    "builder": Identity(
        publishes=("build.succeeded", "run.failed"), consumers=("builder",), writes_artifacts=True
    ),
    "credentials": Identity(
        publishes=(
            "credentials.issued",
            "credentials.revoked",
            "credentials.revoke_failed",
            "run.failed",
        ),
        consumers=("credentials", "credentials-revoke"),
        reads_log=True,
    ),
    "executor": Identity(
        publishes=("run.started", "run.finished", "run.failed"),
        consumers=("executor",),
        writes_job_logs=True,
        reads_log=True,
        reads_artifacts=True,
        writes_artifacts=True,
    ),
    "publisher": Identity(
        publishes=("results.published", "results.extended"),
        consumers=("publisher", "publisher-status"),
        reads_log=True,
        reads_artifacts=True,
    ),
    # On the sensitive side: reads outputs and logs, and the granted tables (its own read-only
    # account), writes the checks, decisions and the checked copies (redacted log, images).
    "airlock": Identity(
        publishes=(
            "outputs.checked",
            "outputs.held",
            "outputs.released",
            "outputs.withheld",
            "outputs.attacked",
        ),
        consumers=("airlock", "airlock-reviews", "airlock-requests"),
        log_consumers=("airlock-logs",),
        writes_log_view=True,
        reads_log=True,
        reads_artifacts=True,
        writes_artifacts=True,
    ),
    # The officer's and the `secd runs` view: reads the log, writes nothing.
    "auditor": Identity(publishes=(), reads_log=True, reads_checkpoints=True),
    # `secd review fetch` on the secure side: reads artifacts by digest (a held file, once the
    # gateway has recorded review.fetched for the officer), nothing else: no log, no event.
    "reviewer": Identity(publishes=(), reads_artifacts=True),
    # Reads the log and signs checkpoints of it; writes no event.
    "checkpointer": Identity(
        publishes=(), reads_log=True, writes_checkpoints=True, reads_checkpoints=True
    ),
}


def _permissions(name: str, identity: Identity, stream: str) -> dict[str, dict[str, list[str]]]:
    publish = [f"secd.run.*.{type_token(t)}" for t in identity.publishes]
    for consumer in identity.consumers:
        publish += [
            f"$JS.API.CONSUMER.MSG.NEXT.{stream}.{consumer}",
            f"$JS.ACK.{stream}.{consumer}.>",
        ]
    if identity.reads_log:
        publish += [f"$JS.API.DIRECT.GET.{stream}", f"$JS.API.STREAM.INFO.{stream}"]
    if identity.writes_job_logs:
        publish.append("secd.log.*")
    for consumer in identity.log_consumers:
        publish += [
            f"$JS.API.CONSUMER.MSG.NEXT.{LOG_STREAM}.{consumer}",
            f"$JS.ACK.{LOG_STREAM}.{consumer}.>",
            f"$JS.API.DIRECT.GET.{LOG_STREAM}",
        ]
    if identity.writes_log_view:
        publish.append("secd.logview.*")
    if identity.reads_log_view:
        publish.append(f"$JS.API.DIRECT.GET.{LOG_VIEW_STREAM}")
    if identity.writes_checkpoints:
        publish.append(checkpoint_subject(stream))
    if identity.reads_checkpoints:
        publish.append(f"$JS.API.DIRECT.GET.{CHECKPOINT_STREAM}")
    if identity.records_pushes:
        # A record per key (one token: the key is hex), and reading one back; nothing else of
        # the bucket (no listing, no watch, no stream info).
        publish += [f"$KV.{PUSH_BUCKET}.*", f"$JS.API.DIRECT.GET.{PUSH_STREAM}"]
    if identity.writes_artifacts or identity.reads_artifacts:
        # Looking an object up: its metadata (the last message on its meta subject).
        objects = f"OBJ_{ARTIFACT_BUCKET}"
        publish += [f"$JS.API.STREAM.INFO.{objects}", f"$JS.API.STREAM.MSG.GET.{objects}"]
    if identity.writes_artifacts:
        # Chunks and metadata; never a purge or delete (objects are written once, by digest).
        publish += [f"$O.{ARTIFACT_BUCKET}.C.>", f"$O.{ARTIFACT_BUCKET}.M.>"]
    if identity.reads_artifacts:
        # Reading an object's chunks: an ephemeral ordered consumer, and its flow control.
        publish += [f"$JS.API.CONSUMER.CREATE.{objects}", f"$JS.FC.{objects}.>"]
    return {
        "publish": {"allow": publish},
        "subscribe": {"allow": [f"_INBOX_{name}.>"]},
    }


def nats_server_config(
    *,
    host: str,
    port: int,
    store_dir: str,
    passwords: dict[str, str],
    stream: str = "SECD",
    server_name: str | None = None,
    cluster: dict[str, Any] | None = None,
) -> str:
    """The nats-server config: JetStream on, one user per identity, the bootstrap user.

    With `cluster` (nats-server's cluster block: name, listen, authorization, routes) it is one
    node, `server_name`, of a JetStream cluster; every node has the same users.
    """
    users: list[dict[str, Any]] = [
        {"user": BOOTSTRAP_USER, "password": passwords[BOOTSTRAP_USER]},
    ]
    for name, identity in IDENTITIES.items():
        users.append(
            {
                "user": name,
                "password": passwords[name],
                "permissions": _permissions(name, identity, stream),
            }
        )
    # The NATS config format accepts JSON syntax for values, which quotes every string safely.
    text = (
        f"listen: {json.dumps(f'{host}:{port}')}\n"
        f"jetstream {{ store_dir: {json.dumps(store_dir)} }}\n"
        f"authorization {{ users: {json.dumps(users, indent=2)} }}\n"
        "max_payload: 1048576\n"
    )
    if cluster is not None:
        if not server_name:
            raise ValueError("a node of a NATS cluster needs a server_name")
        text += f"server_name: {json.dumps(server_name)}\ncluster {json.dumps(cluster, indent=2)}\n"
    return text
