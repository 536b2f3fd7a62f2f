"""ExecutorAPI that runs nothing: it plays a scripted job and records what it was asked.

For tests of everything around the executor (the handler, the worker, the events), and for a
site that wants to see secd's flow without a sandbox. It keeps the port's promises like the real
runtimes (tests/contracts runs the same suite against it): each step is safe to call twice, a
second execute returns the first outcome, cleanup forgets the run.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from secd_executor.runtime import RunOutcome, RunRequest

__all__ = ["StubJob", "StubRuntime"]


@dataclass(frozen=True)
class StubJob:
    """What the stub's job does: lines it prints, files it writes, how it ends."""

    log: tuple[str, ...] = ()
    files: dict[str, bytes] = field(default_factory=dict)
    exit_code: int = 0
    runs_s: float = 0.0
    # True: it runs past runfor and is stopped, as a real runtime would.
    times_out: bool = False


class StubRuntime:
    """A runtime whose job is `job` (or `jobs[run_id]`); `calls` lists (step, run_id)."""

    def __init__(self, job: StubJob | None = None, jobs: dict[str, StubJob] | None = None) -> None:
        self.job = job or StubJob()
        self.jobs = dict(jobs or {})
        self.calls: list[tuple[str, str]] = []
        self._prepared: set[str] = set()
        self._outcomes: dict[str, RunOutcome] = {}

    def _job(self, request: RunRequest) -> StubJob:
        return self.jobs.get(request.run_id, self.job)

    async def prepare(self, request: RunRequest) -> None:
        """Make the output folder; nothing else to make."""
        self.calls.append(("prepare", request.run_id))
        if request.run_id not in self._prepared:
            request.output_dir.mkdir(parents=True, exist_ok=True)
            request.log_path.write_bytes(b"")
            self._prepared.add(request.run_id)

    async def execute(
        self, request: RunRequest, on_start: Callable[[], Awaitable[None]]
    ) -> RunOutcome:
        """Play the job once; a second call returns the same outcome without playing it."""
        self.calls.append(("execute", request.run_id))
        if request.run_id not in self._prepared:
            raise RuntimeError(f"execute before prepare for {request.run_id}")
        if request.run_id in self._outcomes:
            return self._outcomes[request.run_id]
        job = self._job(request)
        await on_start()
        with request.log_path.open("a") as log:
            for line in job.log:
                log.write(line + "\n")
        await asyncio.sleep(job.runs_s)
        for name, data in job.files.items():
            target = request.output_dir / name
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(data)
        if job.times_out:
            outcome = RunOutcome(exit_code=-9, duration_s=request.runfor_s, timed_out=True)
        else:
            outcome = RunOutcome(exit_code=job.exit_code, duration_s=job.runs_s)
        self._outcomes[request.run_id] = outcome
        return outcome

    async def collect(self, request: RunRequest) -> list[str]:
        """The files are in the output folder already."""
        self.calls.append(("collect", request.run_id))
        return []

    async def cleanup(self, request: RunRequest) -> None:
        """Forget the run."""
        self.calls.append(("cleanup", request.run_id))
        self._prepared.discard(request.run_id)
        self._outcomes.pop(request.run_id, None)

    async def close(self) -> None:
        """Nothing to close."""
