"""What the officers' tools are tested against: a run whose outputs the airlock held (written to
a real NATS as the airlock would), officers with tokens and roles in a groups file, and the
gateway served by uvicorn on a free port (for the CLI and the browser)."""

from __future__ import annotations

import asyncio
import hashlib
import threading
from dataclasses import dataclass
from pathlib import Path

import uvicorn

from secd.nats_server import free_port
from secd_gateway.app import create_app
from secd_shared.bus import EventBus, connect
from secd_shared.config import Config, GatewayConfig
from secd_shared.events import (
    CheckedFile,
    CheckResult,
    HeldFile,
    OutputsChecked,
    OutputsHeld,
    Producer,
    encode_event,
    new_event,
    subject_for,
)
from secd_shared.runid import new_run_id
from tests.auditruns import Stored, build_run
from tests.helpers import wait_for

TOKENS = {
    "officer-1": "one-" + "1" * 40,
    "officer-2": "two-" + "2" * 40,
    # Both researcher of the held run and an officer: never a reviewer of her own run.
    "alice": "alice-" + "a" * 40,
    # A token in the officers file, but not in the officers' group.
    "mallory": "mallory-" + "m" * 40,
}
HOSTILE = '<script>alert("x")</script><img src=x onerror=alert(1)>.csv'
EVIDENCE = "24 of 25 rows match table patients; column name <b>bold</b> & 'quoted'"


def officer_config(root: Path) -> Config:
    """A config with an officers file and a groups file (the file identity adapter)."""
    root.mkdir(parents=True, exist_ok=True)
    lines = ["[officers]"]
    lines += [f'"{n}" = "{hashlib.sha256(t.encode()).hexdigest()}"' for n, t in TOKENS.items()]
    (root / "officers.toml").write_text("\n".join(lines) + "\n")
    (root / "groups.toml").write_text(
        "[researchers]\n"
        'alice = ["postgres-patients-read", "secd-officers"]\n'
        '"officer-1" = ["secd-officers"]\n"officer-2" = ["secd-officers"]\n'
        'mallory = ["postgres-patients-read"]\n'
    )
    return Config(
        state_dir=str(root), gateway=GatewayConfig(officers_file=str(root / "officers.toml"))
    )


@dataclass
class HeldRun:
    """A run of alice's (pushed by the forge account `root`) with two held files."""

    run_id: str
    dump: str  # sha256 of the blocked file (route override), named HOSTILE
    table: str  # sha256 of a file held for review (route review)


def held_run_events() -> tuple[HeldRun, list[Stored]]:
    """The run's events, chained: the audit runs' pipeline, then the airlock's checks and hold."""
    run = build_run(researcher="alice", pusher="root", run_id=new_run_id())
    run_id = run[0].event.run_id
    dump, table = hashlib.sha256(b"dump").hexdigest(), hashlib.sha256(b"table").hexdigest()
    finished = next(s for s in run if s.event.type == "run.finished")

    def emit(payload, cause: Stored) -> Stored:
        event = new_event(
            payload, run_id=run_id, producer=Producer("airlock", "test"), actor="alice",
            project=cause.event.project, cause=cause.event, cause_data=cause.data,
        )  # fmt: skip
        stored = Stored(subject_for(run_id, event.type), encode_event(event), event)
        run.append(stored)
        return stored

    block = CheckResult(name="source-match", version=1, verdict="block", evidence=EVIDENCE)
    review = CheckResult(name="small-counts", version=1, verdict="review", evidence="3 cells < 5")
    checked = emit(
        OutputsChecked(
            files=[
                CheckedFile(name=HOSTILE, size=1234, sha256=dump, kind="table", checks=[block],
                            verdict="block", route="override"),
                CheckedFile(name="counts.csv", size=80, sha256=table, kind="table",
                            checks=[review], verdict="review", route="review"),
            ],
            log=[], verdict="block",
        ),
        finished,
    )  # fmt: skip
    emit(
        OutputsHeld(
            files=[
                HeldFile(sha256=dump, name=HOSTILE, route="override", reason="source-match"),
                HeldFile(sha256=table, name="counts.csv", route="review", reason="small-counts"),
            ]
        ),
        checked,
    )
    return HeldRun(run_id, dump, table), run


def held_model_run_events(model: str, outputs: str = "") -> tuple[str, list[Stored]]:
    """A run of alice's whose one output, a model (sha256 `model`), the airlock held for
    review; `outputs` is its run.finished's outputs tree (a digest), "" for none."""
    run = build_run(researcher="alice", pusher="root", run_id=new_run_id(), outputs=outputs)
    run_id = run[0].event.run_id
    cause = next(s for s in run if s.event.type == "run.finished")
    review = CheckResult(name="model", version=1, verdict="review", evidence="AUC 0.700")
    for payload in (
        OutputsChecked(
            files=[
                CheckedFile(name="out/model.skops", size=4096, sha256=model, kind="model",
                            checks=[review], verdict="review", route="review"),
            ],
            log=[], verdict="review",
        ),
        OutputsHeld(
            files=[HeldFile(sha256=model, name="out/model.skops", route="review", reason="model")]
        ),
    ):  # fmt: skip
        event = new_event(
            payload, run_id=run_id, producer=Producer("airlock", "test"), actor="alice",
            project=cause.event.project, cause=cause.event, cause_data=cause.data,
        )  # fmt: skip
        cause = Stored(subject_for(run_id, event.type), encode_event(event), event)
        run.append(cause)
    return run_id, run


async def write_run(admin_bus: EventBus, run: list[Stored]) -> None:
    """A run's events, stored in the suite's log."""
    for stored in run:
        await admin_bus.js.publish(
            stored.subject, stored.data,
            headers={"Nats-Msg-Id": f"{stored.event.run_id}.{stored.event.type}"},
        )  # fmt: skip


async def write_held_run(admin_bus: EventBus) -> HeldRun:
    """A held run, stored in the suite's log."""
    held, run = held_run_events()
    await write_run(admin_bus, run)
    return held


class ServedGateway:
    """The gateway app served by uvicorn on 127.0.0.1:<free port>, in a thread with its own
    event loop and its own NATS connection (as the `gateway` identity)."""

    def __init__(self, nats_server, config: Config) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self._nats, self._config = nats_server, config
        self._server: uvicorn.Server | None = None
        self._ready = threading.Event()
        self._thread = threading.Thread(target=lambda: asyncio.run(self._serve()), daemon=True)

    async def _serve(self) -> None:
        bus = EventBus(await connect(self._nats.config_for("gateway"), "gateway"))
        app = create_app(self._config, bus, "t" * 32)
        settings = uvicorn.Config(
            app, host="127.0.0.1", port=self.port, log_config=None, access_log=False
        )
        self._server = uvicorn.Server(settings)
        self._ready.set()
        try:
            await self._server.serve()
        finally:
            await bus.close()

    def __enter__(self) -> ServedGateway:
        self._thread.start()
        assert self._ready.wait(10), "the gateway's thread did not start"
        server = self._server
        assert server is not None
        wait_for(lambda: server.started, timeout=10)
        return self

    def __exit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.should_exit = True
        self._thread.join(10)
