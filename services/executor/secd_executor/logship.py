"""Ship a running job's output to the job-log stream while it runs, so `secd logs -f` follows it.

The sandbox writes the job's stdout and stderr to a file; this follows the file and publishes what
is new every `interval_s`, cut at line ends where it can. The file stays the record of the run
(it goes into the results branch); the stream is for watching.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from pathlib import Path

from secd_shared.bus import EventBus

__all__ = ["LogShipper"]

log = logging.getLogger("secd.executor.logs")

MAX_CHUNK = 64 * 1024


class LogShipper:
    """Follows one job's log file and publishes new output to `secd.log.<run_id>`."""

    def __init__(self, bus: EventBus, run_id: str, path: Path, *, interval_s: float = 0.2) -> None:
        self.bus, self.run_id, self.path, self.interval_s = bus, run_id, path, interval_s
        self.offset = path.stat().st_size if path.exists() else 0
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        """Begin following the file."""
        self._task = asyncio.create_task(self._follow())

    async def stop(self) -> None:
        """Stop following and ship whatever is left, partial last line included."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        await self._ship(final=True)

    async def _follow(self) -> None:
        while True:
            await asyncio.sleep(self.interval_s)
            await self._ship(final=False)

    async def _ship(self, *, final: bool) -> None:
        try:
            with self.path.open("rb") as fh:
                fh.seek(self.offset)
                data = fh.read(16 * MAX_CHUNK)
        except FileNotFoundError:
            return
        if not final and len(data) < MAX_CHUNK:
            # Hold back a partial last line until it is complete (or the job ends).
            data = data[: data.rfind(b"\n") + 1]
        for start in range(0, len(data), MAX_CHUNK):
            chunk = data[start : start + MAX_CHUNK]
            try:
                await self.bus.publish_log(self.run_id, chunk)
            except Exception as exc:
                # Watching is best effort: the file is the record and it is complete.
                log.warning("job log not shipped (%s)", type(exc).__name__)
                return
            self.offset += len(chunk)
