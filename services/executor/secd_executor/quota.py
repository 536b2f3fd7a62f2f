"""The disk limit of a run: its output, its cache folder and its log, watched while it runs.

No filesystem quota is needed: the executor measures what the run's folders hold (through the
descriptors it opened, so a link or a swapped folder cannot make it measure something else) and
stops the job the moment the total passes the limit. RLIMIT_FSIZE (set by the sandbox to the same
limit) stops a single file from growing past it between two looks; the watcher looks again at
least every `max_interval` seconds and backs off on big trees, so the overshoot is bounded by
what a job writes in one interval.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from collections.abc import Callable

from secd_shared.limits import format_size
from secd_shared.safepath import tree_usage

__all__ = ["MAX_ENTRIES", "DiskWatch"]

log = logging.getLogger("secd.executor")

# Folders and files, output and cache together: beyond this a run is filling inodes.
MAX_ENTRIES = 1_000_000


class DiskWatch:
    """Watches folders (directory fds) and a log file against one byte limit."""

    def __init__(
        self,
        folders: list[int],
        log_fd: int | None,
        limit: int,
        on_exceeded: Callable[[], None],
        *,
        min_interval: float = 0.1,
        max_interval: float = 2.0,
    ) -> None:
        self.folders = folders
        self.log_fd = log_fd
        self.limit = limit
        self.on_exceeded = on_exceeded
        self.min_interval = min_interval
        self.max_interval = max_interval
        self.exceeded: str | None = None
        self.peak = 0
        self._task: asyncio.Task[None] | None = None

    def usage(self) -> tuple[int, int, int]:
        """(bytes, entries, largest file) of the folders and the log now."""
        total = entries = largest = 0
        for fd in self.folders:
            used = tree_usage(fd)
            total += used.bytes
            entries += used.entries
            largest = max(largest, used.largest)
        if self.log_fd is not None:
            size = os.fstat(self.log_fd).st_size
            total += size
            largest = max(largest, size)
        return total, entries, largest

    def check(self) -> bool:
        """Measure once; True (and on_exceeded called) when the limit is reached."""
        total, entries, largest = self.usage()
        self.peak = max(self.peak, total)
        # A file as large as the limit is one that RLIMIT_FSIZE stopped from growing.
        if total > self.limit or largest >= self.limit:
            self.exceeded = (
                f"the job wrote more than its disk limit ({format_size(self.limit)} for output, "
                "cache and log together) and was stopped"
            )
        elif entries > MAX_ENTRIES:
            self.exceeded = (
                f"the job made more than {MAX_ENTRIES:,} files and folders in its output and "
                "cache and was stopped"
            )
        if self.exceeded:
            self.on_exceeded()
            return True
        return False

    async def _run(self) -> None:
        interval = self.min_interval
        while True:
            started = time.monotonic()
            if await asyncio.to_thread(self.check):
                return
            took = time.monotonic() - started
            # A big tree is measured less often, so watching never costs more than ~20% of a core.
            interval = min(self.max_interval, max(self.min_interval, 4 * took))
            await asyncio.sleep(interval)

    def start(self) -> None:
        """Start watching in the background."""
        self._task = asyncio.create_task(self._run())

    async def stop(self) -> None:
        """Stop watching and look one last time (a job may have written just before it ended)."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self.exceeded is None:
            await asyncio.to_thread(self.check)
