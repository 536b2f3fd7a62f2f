"""The checkpointer's loop: every `interval_s`, extend the log's running hash and sign it.

It holds the only copy of its signing key and connects as its own NATS identity, which may read
the log (direct get) and write checkpoints, nothing else: no event, no stream change. A fault is
logged and retried at the next tick; a checkpoint it did not sign, or a log shorter than its
checkpoint says, is logged as an error at every tick until an officer looks (`secd audit verify`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

from nacl.signing import SigningKey
from nats.aio.client import Client

from secd_shared.integrity import Checkpoint, CheckpointError, make_checkpoint

__all__ = ["Checkpointer"]

log = logging.getLogger("secd.checkpointer")


class Checkpointer:
    """Signed checkpoints of one stream, on a timer, and a last one at stop."""

    def __init__(
        self, nc: Client, stream: str, key: SigningKey, *, interval_s: float = 60.0
    ) -> None:
        self.nc = nc
        self.stream = stream
        self.key = key
        self.interval_s = interval_s

    async def tick(self) -> Checkpoint | None:
        """Write one checkpoint if the log grew; never raises (the next tick retries)."""
        try:
            checkpoint = await make_checkpoint(self.nc, self.stream, self.key)
        except CheckpointError as exc:
            log.error("no checkpoint: %s", exc)
            return None
        except Exception as exc:
            log.warning("no checkpoint this time (%s: %s); retrying", type(exc).__name__, exc)
            return None
        if checkpoint is not None:
            log.info(
                "checkpoint of %s up to seq %d",
                self.stream,
                checkpoint.last_seq,
                extra={"first_seq": checkpoint.first_seq, "key_id": checkpoint.key_id},
            )
        return checkpoint

    async def run(self, stop: asyncio.Event) -> None:
        """Tick every interval until `stop`, then once more so the log's end is covered."""
        while not stop.is_set():
            await self.tick()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), self.interval_s)
        await self.tick()
