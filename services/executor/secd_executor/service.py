"""credentials.issued -> run.started, then run.finished | run.failed.

The handler (runtime.RuntimeExecutor) knows only the ExecutorAPI port; executor.kind picks the
runtime: "bwrap" (a bubblewrap sandbox on this machine, bwrap.py), "kubernetes" (a Job per run,
kubernetes.py) or "stub" (runs nothing, stub.py). This module only wires them.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from secd_executor.runtime import ExecutorAPI, RuntimeExecutor
from secd_shared.artifacts import ArtifactStore, artifact_store
from secd_shared.bus import EventBus
from secd_shared.config import Config
from secd_shared.service import Handlers

__all__ = ["make_runtime", "setup"]


def make_runtime(config: Config, bus: EventBus, store: ArtifactStore) -> ExecutorAPI:
    """The runtime executor.kind names."""
    kind = config.executor.kind
    if kind == "kubernetes":
        from secd_executor.kubernetes import KubernetesExecutor

        runtime = KubernetesExecutor.from_config(config)
        runtime.start_reaper()
        return runtime
    if kind == "stub":
        from secd_executor.stub import StubRuntime

        return StubRuntime()
    from secd_executor.bwrap import BwrapRuntime

    return BwrapRuntime.from_config(config, bus, store)


async def setup(config: Config, bus: EventBus) -> tuple[Handlers, Callable[[], Awaitable[None]]]:
    """The executor's one consumer, on the configured runtime."""
    store = artifact_store(config, bus.js if bus is not None else None)
    runtime = make_runtime(config, bus, store)
    return {"executor": RuntimeExecutor(config, bus, runtime, store).on_issued}, runtime.close
