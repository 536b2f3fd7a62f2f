"""Stream and consumer bootstrap: run once by the bootstrap identity, never by a service.

The log is one stream with limits retention (an acked message stays: it is the audit trail),
deny delete, deny purge, no roll-ups, and a duplicate window of minutes. Its signed checkpoints
(see integrity.py) live in a second stream with the same protections, and the record of pushes
already received (see pushes.py) in a key-value bucket whose keys are written once.
"""

from __future__ import annotations

import nats.js.errors
from nats.js import JetStreamContext
from nats.js.api import (
    AckPolicy,
    ConsumerConfig,
    DeliverPolicy,
    DiscardPolicy,
    ObjectStoreConfig,
    RetentionPolicy,
    StorageType,
    StreamConfig,
)

from secd_shared.artifacts import ARTIFACT_BUCKET
from secd_shared.bus import LOG_STREAM, LOG_VIEW_STREAM
from secd_shared.events import type_token
from secd_shared.identities import CONSUMERS, LOG_CONSUMERS
from secd_shared.integrity import CHECKPOINT_STREAM
from secd_shared.pushes import PUSH_BUCKET, PUSH_STREAM

__all__ = [
    "DUPLICATE_WINDOW_S",
    "checkpoint_stream_config",
    "ensure_artifact_bucket",
    "ensure_checkpoint_stream",
    "ensure_consumers",
    "ensure_log_stream",
    "ensure_push_bucket",
    "ensure_stream",
    "push_bucket_config",
    "stream_config",
]

DUPLICATE_WINDOW_S = 10 * 60


def _protected(name: str, subjects: list[str], replicas: int = 1) -> StreamConfig:
    """A stream that keeps everything and refuses deletes, purges and roll-ups."""
    return StreamConfig(
        name=name,
        subjects=subjects,
        num_replicas=replicas,
        retention=RetentionPolicy.LIMITS,
        storage=StorageType.FILE,
        discard=DiscardPolicy.OLD,
        max_msgs=-1,
        max_bytes=-1,
        max_age=0,
        duplicate_window=DUPLICATE_WINDOW_S,
        deny_delete=True,
        deny_purge=True,
        allow_rollup_hdrs=False,
        allow_direct=True,
    )


def stream_config(name: str = "SECD", *, replicas: int = 1) -> StreamConfig:
    """The audit log's stream configuration (`replicas`: copies in a JetStream cluster)."""
    return _protected(name, ["secd.run.>"], replicas)


async def ensure_stream(js: JetStreamContext, name: str = "SECD", *, replicas: int = 1) -> None:
    """Create the log stream, the checkpoint stream, the push bucket and the artifact bucket if
    missing (existing ones are kept)."""
    try:
        await js.stream_info(name)
    except nats.js.errors.NotFoundError:
        await js.add_stream(stream_config(name, replicas=replicas))
    await ensure_checkpoint_stream(js, replicas=replicas)
    await ensure_push_bucket(js, replicas=replicas)
    await ensure_artifact_bucket(js, replicas=replicas)


def checkpoint_stream_config(*, replicas: int = 1) -> StreamConfig:
    """The checkpoint stream: the log's signed running hashes, kept like the log itself."""
    return _protected(CHECKPOINT_STREAM, ["secd.checkpoint.*"], replicas)


async def ensure_checkpoint_stream(js: JetStreamContext, *, replicas: int = 1) -> None:
    """Create the checkpoint stream if it does not exist."""
    try:
        await js.stream_info(CHECKPOINT_STREAM)
    except nats.js.errors.NotFoundError:
        await js.add_stream(checkpoint_stream_config(replicas=replicas))


def push_bucket_config(*, replicas: int = 1) -> StreamConfig:
    """The bucket SECD_PUSHES (push key -> run id): one record per key, written once, kept."""
    return StreamConfig(
        name=PUSH_STREAM,
        subjects=[f"$KV.{PUSH_BUCKET}.>"],
        num_replicas=replicas,
        retention=RetentionPolicy.LIMITS,
        storage=StorageType.FILE,
        max_msgs=-1,
        max_bytes=-1,
        max_age=0,
        # One message per key, and a second one refused rather than replacing the first: a
        # record can be neither overwritten nor deleted (a delete marker is a second message).
        max_msgs_per_subject=1,
        discard=DiscardPolicy.NEW,
        discard_new_per_subject=True,
        max_msg_size=1024,
        duplicate_window=DUPLICATE_WINDOW_S,
        deny_delete=True,
        deny_purge=True,
        allow_rollup_hdrs=False,
        allow_direct=True,
    )


async def ensure_push_bucket(js: JetStreamContext, *, replicas: int = 1) -> None:
    """Create the push bucket if it does not exist."""
    try:
        await js.stream_info(PUSH_STREAM)
    except nats.js.errors.NotFoundError:
        await js.add_stream(push_bucket_config(replicas=replicas))


async def ensure_artifact_bucket(
    js: JetStreamContext,
    *,
    bucket: str = ARTIFACT_BUCKET,
    max_age_days: float = 30,
    replicas: int = 1,
) -> None:
    """The artifact bucket (sources, environments, outputs, job logs by digest), if missing.

    Outputs and logs are researcher data: they age out after `max_age_days` like job logs.
    """
    try:
        await js.stream_info(f"OBJ_{bucket}")
    except nats.js.errors.NotFoundError:
        await js.create_object_store(
            bucket,
            config=ObjectStoreConfig(
                bucket=bucket,
                description="secd artifacts, named by sha256 (secd_shared.artifacts)",
                ttl=max_age_days * 86400,
                storage=StorageType.FILE,
                replicas=replicas,
            ),
        )


async def ensure_log_stream(
    js: JetStreamContext, *, max_age_days: float = 30, replicas: int = 1
) -> None:
    """The job-log streams, apart from the audit log and not kept forever: the job's output as
    it was written (`SECD_LOGS`, for the airlock and officers) and as researchers may see it
    (`SECD_LOGVIEW`, each line checked by the airlock), and the airlock's consumer of the first."""
    for name, subjects in ((LOG_STREAM, ["secd.log.>"]), (LOG_VIEW_STREAM, ["secd.logview.>"])):
        try:
            await js.stream_info(name)
        except nats.js.errors.NotFoundError:
            await js.add_stream(
                StreamConfig(
                    name=name,
                    subjects=subjects,
                    retention=RetentionPolicy.LIMITS,
                    storage=StorageType.FILE,
                    max_age=max_age_days * 86400,
                    max_msg_size=256 * 1024,
                    allow_direct=True,
                    num_replicas=replicas,
                )
            )
    for durable, subject in LOG_CONSUMERS.items():
        await js.add_consumer(
            LOG_STREAM,
            ConsumerConfig(
                durable_name=durable,
                filter_subject=subject,
                ack_policy=AckPolicy.EXPLICIT,
                deliver_policy=DeliverPolicy.ALL,
                ack_wait=30,
                max_deliver=5,
                max_ack_pending=1000,
            ),
        )


async def ensure_consumers(
    js: JetStreamContext,
    stream: str = "SECD",
    *,
    ack_wait_s: float = 60.0,
    max_deliver: int = 5,
) -> None:
    """Create every service's durable pull consumer (explicit ack, bounded redelivery)."""
    for durable, types in CONSUMERS.items():
        await js.add_consumer(
            stream,
            ConsumerConfig(
                durable_name=durable,
                filter_subjects=[f"secd.run.*.{type_token(t)}" for t in types],
                ack_policy=AckPolicy.EXPLICIT,
                deliver_policy=DeliverPolicy.ALL,
                ack_wait=ack_wait_s,
                max_deliver=max_deliver,
                max_ack_pending=1000,
            ),
        )
