"""The `secd` command: up, demo, runs, logs, review, audit, repo, init."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import sys
from pathlib import Path

__all__ = ["main"]

DEFAULT_STATE = Path(os.environ.get("SECD_STATE_DIR", "var"))
UNAUTHORIZED_HELP = (
    "secd: the gateway asks for its read token: set SECD_READ_TOKEN, or run as an account "
    "that can read the state folder's secrets/read-token"
)


def _cmd_up(args: argparse.Namespace) -> int:
    from secd.stack import Stack

    async def up() -> int:
        stack = Stack(args.state_dir, quiet=False, cluster=args.cluster)
        try:
            config = stack.prepare()
            await stack.start()
        except RuntimeError as exc:
            # A state folder made otherwise (cluster, PostgreSQL), a process that did not start.
            print(f"secd: {exc}", file=sys.stderr)
            await stack.stop()
            return 1
        print(f"secd is up (state in {stack.state_dir})")
        print(f"  gateway   {stack.gateway_url}")
        print(f"  nats      {stack.nats_url}")
        print(f"  forge     {Path(config['state_dir']) / 'forge'}")
        print(f"  logs      {stack.state_dir / 'logs'}")
        print("Ctrl-C stops everything.")
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        try:
            await stop.wait()
        finally:
            print("stopping…")
            await stack.stop()
        return 0

    return asyncio.run(up())


def _cmd_demo(args: argparse.Namespace) -> int:
    from secd.demo import run_demo

    return asyncio.run(run_demo(Path(args.state_dir).resolve(), as_json=args.json))


def _gateway_url(args: argparse.Namespace) -> str:
    if args.gateway:
        return args.gateway
    port = _state_config(args).get("gateway", {}).get("port")
    if port is None:
        raise SystemExit(f"secd: no gateway given and no port in {args.state_dir}/secd.toml")
    return f"http://127.0.0.1:{port}"


def _state_config(args: argparse.Namespace) -> dict:
    import tomllib

    try:
        return tomllib.loads((Path(args.state_dir) / "secd.toml").read_text())
    except OSError:
        return {}


def _read_headers(args: argparse.Namespace) -> dict[str, str]:
    """The gateway's read token: $SECD_READ_TOKEN, else the state folder's token file."""
    token = os.environ.get("SECD_READ_TOKEN")
    if not token:
        path = _state_config(args).get("gateway", {}).get("read_token_file")
        try:
            token = Path(path).read_text().strip() if path else None
        except OSError:
            token = None
    return {"Authorization": f"Bearer {token}"} if token else {}


def _cmd_runs(args: argparse.Namespace) -> int:
    import httpx

    base = _gateway_url(args)
    headers = _read_headers(args)
    try:
        if args.run_id:
            response = httpx.get(f"{base}/runs/{args.run_id}", headers=headers, timeout=10)
        else:
            response = httpx.get(
                f"{base}/runs", params={"limit": args.limit}, headers=headers, timeout=10
            )
    except httpx.HTTPError as exc:
        print(
            f"secd: the gateway at {base} is not reachable ({exc}); is `secd up` running?",
            file=sys.stderr,
        )
        return 1
    if response.status_code == 404:
        print(f"secd: no run {args.run_id}", file=sys.stderr)
        return 1
    if response.status_code == 401:
        print(UNAUTHORIZED_HELP, file=sys.stderr)
        return 1
    response.raise_for_status()
    data = response.json()
    if args.json:
        print(json.dumps(data, indent=2))
        return 0
    if args.run_id:
        print(_describe_run(data))
        return 0
    print(
        f"{'RUN':22} {'STATUS':10} {'OUTCOME':10} {'RESEARCHER':12} {'PROJECT':24} "
        f"{'TOTAL':>7}  REASON"
    )
    for run in data["runs"]:
        total = run["stages"].get("total")
        print(
            f"{run['run_id']:22} {run['status']:10} {run['outcome'] or '-':10} "
            f"{run['researcher']:12} {run['project'][:24]:24} "
            f"{f'{total:.2f}s' if total is not None else '-':>7}  {run['reason'] or ''}"
        )
    return 0


def _describe_run(run: dict) -> str:
    lines = [
        f"run {run['run_id']}: {run['status']} ({run['outcome'] or 'in progress'})",
        f"  researcher {run['researcher']}, project {run['project']}, "
        f"{run['ref']} at {run['head'][:12]}",
    ]
    if run["reason"]:
        lines.append(f"  reason: {run['reason']}")
    if run["branch"]:
        lines.append(f"  results: branch {run['branch']}")
    if run["granted"]:
        lines.append(f"  granted: {', '.join(run['granted'])}")
    for refusal in run["refused"]:
        lines.append(f"  not granted: {refusal['name']}: {refusal['reason']}")
    if run["stages"]:
        lines.append("  stages: " + ", ".join(f"{k} {v:.3f}s" for k, v in run["stages"].items()))
    if run["log_tail"]:
        lines += ["  log tail:", *("    " + line for line in run["log_tail"].splitlines())]
    return "\n".join(lines)


def _cmd_logs(args: argparse.Namespace) -> int:
    import httpx

    base = _gateway_url(args)
    url = f"{base}/runs/{args.run_id}/logs"
    try:
        # Following waits as long as the run lasts: no read timeout, but a connect timeout.
        timeout = httpx.Timeout(10.0, read=None)
        with httpx.stream(
            "GET",
            url,
            params={"follow": args.follow},
            headers=_read_headers(args),
            timeout=timeout,
        ) as response:
            if response.status_code == 404:
                print(f"secd: no run {args.run_id}", file=sys.stderr)
                return 1
            if response.status_code == 401:
                print(UNAUTHORIZED_HELP, file=sys.stderr)
                return 1
            response.raise_for_status()
            for chunk in response.iter_raw():
                sys.stdout.buffer.write(chunk)
                sys.stdout.buffer.flush()
    except httpx.HTTPError as exc:
        print(f"secd: the gateway at {base} is not reachable ({exc})", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    return 0


REVIEW_AUTH_HELP = (
    "give your officer token in SECD_OFFICER_TOKEN or in a file named by --token-file "
    "(never on the command line); the embedded site's are in secrets/officer-N.token"
)
_REVIEW_STATUS = {
    401: "the gateway does not accept this officer token (401): check it, or ask the operator",
    403: "refused (403)",
    404: "not found (404)",
    409: "already decided (409)",
    422: "not accepted (422)",
    503: "the gateway cannot answer now (503); try again",
}


class ReviewError(Exception):
    """A review request that did not succeed, in words for the officer."""


def _officer_token(args: argparse.Namespace) -> str:
    """The officer's token: --token-file, else $SECD_OFFICER_TOKEN."""
    if args.token_file:
        try:
            token = Path(args.token_file).read_text().strip()
        except OSError as exc:
            raise ReviewError(f"cannot read --token-file: {exc.strerror}") from None
    else:
        token = os.environ.get("SECD_OFFICER_TOKEN", "").strip()
    if not token:
        raise ReviewError(f"no officer token: {REVIEW_AUTH_HELP}")
    return token


def _review_request(args: argparse.Namespace, method: str, path: str, body=None) -> dict:
    """One call to the gateway's review API as the officer; ReviewError saying what failed."""
    import httpx

    base = _gateway_url(args)
    headers = {"Authorization": f"Bearer {_officer_token(args)}"}
    try:
        response = httpx.request(method, f"{base}{path}", json=body, headers=headers, timeout=30)
    except httpx.HTTPError as exc:
        raise ReviewError(
            f"the gateway at {base} is not reachable ({type(exc).__name__}); is secd up?"
        ) from None
    if response.status_code >= 400:
        try:
            detail = response.json().get("detail", "")
        except ValueError:
            detail = ""
        what = _REVIEW_STATUS.get(response.status_code, f"HTTP {response.status_code}")
        raise ReviewError(f"{what}: {detail}" if detail else what)
    return response.json()


def _held_file(state: dict, wanted: str) -> dict:
    """The held file `wanted` names: its sha256 (or 8+ leading hex digits) or its name."""
    files = state["files"]
    found = [f for f in files if f["sha256"] == wanted or f["name"] == wanted]
    if not found and len(wanted) >= 8:
        found = [f for f in files if f["sha256"].startswith(wanted)]
    if len(found) != 1:
        names = ", ".join(f"{f['name']} ({f['sha256'][:12]})" for f in files) or "none"
        problem = "names several" if found else "is no held file"
        raise ReviewError(f"{wanted!r} {problem} of run {state['run_id']}; held: {names}")
    return found[0]


def _describe_review(state: dict) -> str:
    lines = [
        f"run {state['run_id']}: researcher {state['researcher'] or '?'}, "
        f"project {state['project']}, {state['ref'] or '?'} at {(state['head'] or '?')[:12]}",
        f"  commits: {' '.join(c[:12] for c in state['commits']) or 'none'}",
        f"  database {state['database'] or 'none'}, tables granted: "
        f"{', '.join(state['granted']) or 'none'}",
        f"  overall verdict {state['verdict']}; {state['undeclared']} undeclared file(s) kept back",
    ]
    if state.get("own_run"):
        lines.append("  this is your own run: you cannot review it")
    for check in state["log_checks"]:
        lines.append(f"  job log: {check['name']} {check['verdict']}: {check['evidence']}")
    for f in state["files"]:
        size = f"{f['size']} bytes" if f["size"] is not None else "size ?"
        lines.append(f"  file {f['name']!r} ({f['kind'] or '?'}, {size}) sha256 {f['sha256']}")
        lines.append(f"    route {f['route']}, held because: {f['reason']}; state {f['state']}")
        if f["state"] == "held":
            lines.append(f"    {f['approvals']} of {f['needed']} approvals recorded")
        if f["your_vote"]:
            lines.append(f"    you voted {f['your_vote']['decision']}: {f['your_vote']['reason']}")
        for check in f["checks"]:
            lines.append(
                f"    {check['name']} v{check['version']}: {check['verdict']}: {check['evidence']}"
            )
        for attack in f.get("attacks", []):
            lines.append(
                f"    {attack['attack']} (asked for by an officer): {attack['verdict']}: "
                f"{attack['evidence']}"
            )
        for name in f.get("attacks_pending", []):
            lines.append(f"    {name} asked for: the airlock is running it")
    return "\n".join(lines)


def _cmd_review(args: argparse.Namespace) -> int:
    try:
        if args.review_command == "list":
            runs = _review_request(args, "GET", "/reviews")["runs"]
            if args.json:
                print(json.dumps(runs, indent=2))
                return 0
            print(f"{'RUN':26} {'RESEARCHER':12} {'PROJECT':28} {'HELD':>4}  VERDICT")
            for run in runs:
                print(
                    f"{run['run_id']:26} {run['researcher']:12} {run['project'][:28]:28} "
                    f"{run['held']:>4}  {run['verdict']}"
                )
            if not runs:
                print("nothing waits for review")
            return 0
        state = _review_request(args, "GET", f"/reviews/{args.run_id}")
        if args.review_command == "show":
            print(json.dumps(state, indent=2) if args.json else _describe_review(state))
            return 0
        item = _held_file(state, args.file)
        if args.review_command == "lira":
            _review_request(
                args, "POST", f"/reviews/{args.run_id}/{item['sha256']}/attacks", {"attack": "lira"}
            )
            print(
                f"requested: LiRA on {item['name']!r} of run {args.run_id}; "
                f"`secd review show {args.run_id}` shows its figures when the airlock has run it"
            )
            return 0
        if args.review_command == "fetch":
            return _fetch_held(args, item)
        decision = "approve" if args.review_command == "approve" else "reject"
        _review_request(
            args,
            "POST",
            f"/reviews/{args.run_id}/{item['sha256']}",
            {"decision": decision, "reason": args.reason},
        )
    except ReviewError as exc:
        print(f"secd: {exc}", file=sys.stderr)
        return 1
    print(f"recorded: {decision} {item['name']!r} of run {args.run_id}")
    return 0


def _fetch_destination(args: argparse.Namespace, item: dict) -> Path:
    """Where `secd review fetch` writes: -o, else held-<sha256 prefix> with the held file's
    suffix when it is a plain one (the name is the researcher's text)."""
    if args.output:
        return Path(args.output)
    suffix = Path(item["name"]).suffix
    if not (1 < len(suffix) <= 10 and suffix[1:].isalnum() and suffix.isascii()):
        suffix = ""
    return Path(f"held-{item['sha256'][:16]}{suffix}")


def _fetch_held(args: argparse.Namespace, item: dict) -> int:
    """Record the read with the gateway (review.fetched), then copy the held file from the
    artifact store as the read-only `reviewer` identity, checked against its sha256."""
    from secd.audit import AuditError, connect_as
    from secd_shared.artifacts import ArtifactError, artifact_store
    from secd_shared.config import ConfigError, load_config

    if args.output == "-":
        raise ReviewError(
            "fetch never writes to standard output (a held file may be binary); -o FILE"
        )
    dest = _fetch_destination(args, item)
    if dest.exists() or dest.is_symlink():
        raise ReviewError(f"{dest} exists: nothing is overwritten; give another -o")
    state_dir = Path(args.state_dir)
    try:
        config = load_config(state_dir / "secd.toml", environ={})
    except ConfigError as exc:
        raise ReviewError(f"{exc}; run this on the secd machine, with its --state-dir") from None

    async def copy() -> int:
        bus = await connect_as(state_dir, "reviewer")
        try:
            store = artifact_store(config, bus.js)
            return await store.get_file(f"sha256:{item['sha256']}", dest)
        finally:
            await bus.close()

    # Recorded first: a read that fails after is still in the log; one never recorded is not.
    _review_request(args, "POST", f"/reviews/{args.run_id}/{item['sha256']}/fetched")
    try:
        size = asyncio.run(copy())
    except (AuditError, ArtifactError) as exc:
        raise ReviewError(f"the held file could not be read: {exc}") from None
    except OSError as exc:
        raise ReviewError(f"cannot write {dest}: {exc.strerror}") from None
    print(
        f"wrote {dest} ({size} bytes, sha256 {item['sha256'][:16]}..., mode 0600); "
        "your read is in the log as review.fetched"
    )
    return 0


def _cmd_repo_create(args: argparse.Namespace) -> int:
    import tomllib

    from secd_shared.forge import ForgeError, create_repository

    state = Path(args.state_dir).resolve()
    try:
        config = tomllib.loads((state / "secd.toml").read_text())
    except OSError:
        print(f"secd: no {state / 'secd.toml'}; run `secd up` once first", file=sys.stderr)
        return 1
    if config.get("forge", {}).get("kind", "git") != "git":
        print(
            "secd: repositories live in GitLab here (forge.kind); create them there",
            file=sys.stderr,
        )
        return 1
    try:
        path = create_repository(
            state / config["forge"].get("root", "forge"),
            args.name,
            gateway_url=f"http://127.0.0.1:{config['gateway']['port']}",
            token_file=Path(config["gateway"]["token_file"]),
        )
    except ForgeError as exc:
        print(f"secd: {exc}", file=sys.stderr)
        return 2
    print(path)
    return 0


def _cmd_init(args: argparse.Namespace) -> int:
    from secd.init import init_project

    return init_project(Path(args.directory))


def _cmd_audit_replay(args: argparse.Namespace) -> int:
    from secd.audit import AuditError, ReplayFilter, parse_time, replay_command

    try:
        selection = ReplayFilter(
            run=args.run,
            researcher=args.researcher,
            project=args.project,
            types=tuple(args.type or ()),
            since=parse_time(args.since) if args.since else None,
            until=parse_time(args.until) if args.until else None,
        )
    except AuditError as exc:
        print(f"secd: {exc}", file=sys.stderr)
        return 2
    fmt = "json" if args.json else args.format
    return asyncio.run(replay_command(Path(args.state_dir), selection, fmt))


def _cmd_audit_access(args: argparse.Namespace) -> int:
    from secd.audit import AuditError, ReplayFilter, access_command, parse_time

    try:
        ReplayFilter(run=args.run)
        since = parse_time(args.since) if args.since else None
        until = parse_time(args.until) if args.until else None
    except AuditError as exc:
        print(f"secd: {exc}", file=sys.stderr)
        return 2
    fmt = "json" if args.json else args.format
    return asyncio.run(
        access_command(
            Path(args.state_dir),
            fmt,
            run=args.run,
            researcher=args.researcher,
            project=args.project,
            table=args.table,
            since=since,
            until=until,
            open_only=args.not_revoked,
        )
    )


def _cmd_audit_verify(args: argparse.Namespace) -> int:
    from secd.audit import verify_command

    return asyncio.run(
        verify_command(
            Path(args.state_dir),
            checkpoints_file=args.checkpoints,
            public_keys=args.public_key,
            as_json=args.json,
        )
    )


def _cmd_audit_export(args: argparse.Namespace) -> int:
    from secd.audit import export_command

    return asyncio.run(export_command(Path(args.state_dir), args.file))


def build_parser() -> argparse.ArgumentParser:
    """The command-line interface."""
    parser = argparse.ArgumentParser(
        prog="secd", description="Run research code on sensitive data, safely."
    )
    parser.add_argument(
        "--state-dir",
        default=str(DEFAULT_STATE),
        help="where secd keeps its state (default: ./var)",
    )
    sub = parser.add_subparsers(dest="command", required=True)

    up = sub.add_parser("up", help="start NATS, PostgreSQL and every service; Ctrl-C stops them")
    up.add_argument(
        "--cluster",
        type=int,
        metavar="N",
        help="NATS as a JetStream cluster of N nodes (3), every stream on all of them; "
        "chosen at the state folder's first start",
    )
    up.set_defaults(func=_cmd_up)

    demo = sub.add_parser(
        "demo", help="show the whole workflow: a signed push runs, an unsigned one is refused"
    )
    demo.add_argument("--json", action="store_true", help="print one JSON object instead of prose")
    demo.set_defaults(func=_cmd_demo, state_dir_default=".secd-demo")

    runs = sub.add_parser("runs", help="list runs, or show one")
    runs.add_argument("action", nargs="?", choices=["show"], help="show one run")
    runs.add_argument("run_id", nargs="?")
    runs.add_argument("--gateway", help="gateway URL (default: from the state dir's secd.toml)")
    runs.add_argument("--limit", type=int, default=50)
    runs.add_argument("--json", action="store_true")
    runs.set_defaults(func=_cmd_runs)

    logs = sub.add_parser("logs", help="a run's job output; -f follows it while it runs")
    logs.add_argument("run_id")
    logs.add_argument(
        "-f", "--follow", action="store_true", help="keep printing until the run ends"
    )
    logs.add_argument("--gateway", help="gateway URL (default: from the state dir's secd.toml)")
    logs.set_defaults(func=_cmd_logs)

    review = sub.add_parser(
        "review",
        help="security officers: outputs the airlock held, and your decisions on them",
        description=f"Your officer token: {REVIEW_AUTH_HELP}.",
    )
    review_sub = review.add_subparsers(dest="review_command", required=True)
    review_list = review_sub.add_parser("list", help="runs with held files, oldest first")
    review_show = review_sub.add_parser(
        "show", help="a run's context, each held file's checks and evidence, approvals so far"
    )
    review_show.add_argument("run_id")
    review_approve = review_sub.add_parser("approve", help="approve one held file")
    review_reject = review_sub.add_parser("reject", help="reject one held file (it never leaves)")
    for command in (review_approve, review_reject):
        command.add_argument("run_id")
        command.add_argument("file", help="the held file's name or sha256 (8+ leading digits)")
        command.add_argument(
            "--reason",
            default="",
            help="why (needed to reject, and to approve a file the checks blocked)",
        )
    review_lira = review_sub.add_parser(
        "lira",
        help="ask the airlock for LiRA (likelihood-ratio membership inference) on a held model",
    )
    review_fetch = review_sub.add_parser(
        "fetch",
        help="on the secd machine: copy a held file to read it (your read is recorded)",
        description="Records review.fetched with the gateway, then reads the file from the "
        "artifact store as the read-only reviewer identity (the state folder's secrets). "
        "Never overwrites; never writes to standard output.",
    )
    for command in (review_lira, review_fetch):
        command.add_argument("run_id")
        command.add_argument("file", help="the held file's name or sha256 (8+ leading digits)")
    review_fetch.add_argument(
        "-o", "--output", help="where to write it (default: held-<sha256 prefix><suffix> here)"
    )
    for command in (
        review_list,
        review_show,
        review_approve,
        review_reject,
        review_lira,
        review_fetch,
    ):
        command.add_argument("--gateway", help="gateway URL (default: from the state dir)")
        command.add_argument("--token-file", help="a file holding your officer token")
        command.set_defaults(func=_cmd_review)
    for command in (review_list, review_show):
        command.add_argument("--json", action="store_true")

    audit = sub.add_parser("audit", help="the security officer's view of the event log")
    audit_sub = audit.add_subparsers(dest="audit_command", required=True)
    replay = audit_sub.add_parser("replay", help="replay the event log, or the part a filter picks")
    replay.add_argument("--run", help="only this run")
    replay.add_argument("--researcher", help="only events whose actor is this researcher")
    replay.add_argument("--project", help="only this project (repository), e.g. alice/model")
    replay.add_argument(
        "--type", action="append", help="only this event type, e.g. credentials.issued (repeatable)"
    )
    replay.add_argument("--since", help="from this time: ISO (UTC unless +hh:mm) or an age: 2h, 7d")
    replay.add_argument("--until", help="up to this time: ISO or an age")
    replay.add_argument("--format", choices=["table", "json", "csv"], default="table")
    replay.add_argument("--json", action="store_true", help="same as --format json")
    replay.set_defaults(func=_cmd_audit_replay)

    access = audit_sub.add_parser(
        "access", help="who had a database account on which tables, from when to when"
    )
    access.add_argument("--run", help="only this run")
    access.add_argument("--researcher", help="only this researcher")
    access.add_argument("--project", help="only this project (repository)")
    access.add_argument("--table", help="only accounts granted this table")
    access.add_argument("--since", help="accounts held at or after this time (ISO or age)")
    access.add_argument("--until", help="accounts issued at or before this time (ISO or age)")
    access.add_argument(
        "--not-revoked", action="store_true", help="only accounts the log shows no revocation of"
    )
    access.add_argument("--format", choices=["table", "json", "csv"], default="table")
    access.add_argument("--json", action="store_true", help="same as --format json")
    access.set_defaults(func=_cmd_audit_access)

    verify = audit_sub.add_parser(
        "verify", help="check the run chains and the signed checkpoints; exit 0 only if clean"
    )
    verify.add_argument(
        "--checkpoints", help="checkpoints exported earlier (JSON lines) instead of the stored ones"
    )
    verify.add_argument(
        "--public-key",
        action="append",
        help="the checkpointer's public key file (default: <state>/secrets/checkpointer.pub)",
    )
    verify.add_argument("--json", action="store_true", help="one JSON object")
    verify.set_defaults(func=_cmd_audit_verify)

    checkpoints = audit_sub.add_parser("checkpoints", help="the log's signed checkpoints")
    checkpoints_sub = checkpoints.add_subparsers(dest="checkpoints_command", required=True)
    export = checkpoints_sub.add_parser("export", help="write them as JSON lines, to keep offline")
    export.add_argument("file", help="where to write them (- for standard output)")
    export.set_defaults(func=_cmd_audit_export)

    repo = sub.add_parser("repo", help="repositories of the embedded forge")
    repo_sub = repo.add_subparsers(dest="repo_command", required=True)
    create = repo_sub.add_parser(
        "create", help="create (or refresh the hook of) a bare repository; prints its path"
    )
    create.add_argument("name", help="project path, e.g. alice/diabetes-model")
    create.set_defaults(func=_cmd_repo_create)

    init = sub.add_parser(
        "init", help="start a project: secd.yml, an example job, .gitignore; check git signing"
    )
    init.add_argument("directory", nargs="?", default=".", help="where (default: here)")
    init.set_defaults(func=_cmd_init)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `secd` command."""
    args = build_parser().parse_args(argv)
    if args.command == "demo" and "--state-dir" not in (argv or sys.argv):
        args.state_dir = ".secd-demo"
    if args.command == "runs" and args.action == "show" and not args.run_id:
        print("secd: `secd runs show` needs a run id", file=sys.stderr)
        return 2
    return args.func(args)


def run() -> None:
    """The console script: `secd ... | head` ends quietly, as other commands in a pipe do."""
    # Only here, in a process of its own: inside another program (pytest) it would kill it.
    signal.signal(signal.SIGPIPE, signal.SIG_DFL)
    sys.exit(main())


if __name__ == "__main__":
    run()
