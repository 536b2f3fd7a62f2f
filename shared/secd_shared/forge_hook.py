"""The post-receive hook of the embedded forge: one POST to the gateway per pushed ref.

Runs as the account that pushed, which is how the embedded forge knows who the pusher is.
Standard library only: it runs on every push and must start fast.
"""

from __future__ import annotations

import json
import os
import pwd
import sys
import urllib.error
import urllib.request


def _detail(raw: bytes) -> str:
    """The gateway's one-line reason from an error body (JSON `detail`), else the body's start."""
    try:
        detail = json.loads(raw).get("detail")
    except (ValueError, AttributeError):
        detail = None
    text = detail if isinstance(detail, str) else raw.decode(errors="replace")
    return text[:300]


def main(argv: list[str]) -> int:
    """post-receive: read '<old> <new> <ref>' lines, report each, print what happened."""
    url, token_file, repository = argv[1], argv[2], argv[3]
    with open(token_file) as fh:
        token = fh.read().strip()
    pusher = pwd.getpwuid(os.getuid()).pw_name
    status = 0
    for line in sys.stdin:
        parts = line.split()
        if len(parts) != 3:
            continue
        before, after, ref = parts
        body = json.dumps(
            {
                "repository": repository,
                "ref": ref,
                "before": before,
                "after": after,
                "pusher": pusher,
            }
        ).encode()
        # The URL is the operator's gateway (http/https), set when the repository was created.
        request = urllib.request.Request(  # noqa: S310
            f"{url.rstrip('/')}/hooks/git",
            data=body,
            headers={"Content-Type": "application/json", "X-Secd-Token": token},
            method="POST",
        )
        try:
            # The gateway answers once the push is in the log; a NATS cluster electing a new
            # leader for it takes up to about 10 s (secd_shared.bus.LEADER_WAIT_S).
            with urllib.request.urlopen(request, timeout=30) as response:  # noqa: S310
                answer = json.loads(response.read() or b"{}")
        except urllib.error.HTTPError as exc:
            print(f"secd: the gateway refused {ref}: {exc.code} {_detail(exc.read())}")
            status = 1
            continue
        except (urllib.error.URLError, OSError) as exc:
            print(f"secd: the gateway at {url} is not reachable ({exc}); ask the operator")
            status = 1
            continue
        if "run_id" in answer and answer.get("duplicate"):
            print(f"secd: {ref}: {answer.get('detail', 'already received')}")
        elif "run_id" in answer:
            run = answer["run_id"]
            print(
                f"secd: run {run} started for {ref}; follow it with "
                f"`secd runs show {run} --gateway {url}` or `secd logs {run} -f --gateway {url}`"
            )
        else:
            print(f"secd: {ref}: {answer.get('detail', 'ignored')}")
    return status


if __name__ == "__main__":
    sys.exit(main(sys.argv))
