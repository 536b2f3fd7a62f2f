"""job_state: how a Job and its pod read, in the shapes the Kubernetes API documents."""

from __future__ import annotations

from secd_shared.kube import dns_name, job_state


def _job(*conditions: tuple[str, str]) -> dict:
    return {
        "status": {
            "conditions": [
                {"type": kind, "status": "True", "reason": reason} for kind, reason in conditions
            ]
        }
    }


def _pod(state: dict, **status: object) -> dict:
    return {
        "metadata": {"name": "p"},
        "status": {"containerStatuses": [{"name": "job", "state": state}], **status},
    }


def test_running_then_complete() -> None:
    running = job_state(_job(), [_pod({"running": {}})], "job")
    assert (running.done, running.started) == (False, True)
    done = job_state(_job(("Complete", "")), [_pod({"terminated": {"exitCode": 0}})], "job")
    assert (done.done, done.reason, done.exit_code) == (True, None, 0)


def test_the_ways_a_job_fails_read_as_one_line_each() -> None:
    exited = job_state(
        _job(("Failed", "BackoffLimitExceeded")), [_pod({"terminated": {"exitCode": 2}})], "job"
    )
    assert exited.reason == "the job exited with code 2"
    oom = job_state(
        _job(("Failed", "BackoffLimitExceeded")),
        [_pod({"terminated": {"exitCode": 137, "reason": "OOMKilled"}})],
        "job",
    )
    assert oom.reason == "the job ran out of memory and was killed"
    evicted = job_state(
        _job(("Failed", "BackoffLimitExceeded")),
        [_pod({}, reason="Evicted", message="ephemeral local storage usage exceeds the limit")],
        "job",
    )
    assert evicted.reason == "the job was evicted (ephemeral local storage usage exceeds the limit)"
    deadline = job_state(_job(("Failed", "DeadlineExceeded")), [], "job")
    assert deadline.deadline_exceeded and not deadline.started


def test_containers_that_can_never_start_fail_fast() -> None:
    named = _pod(
        {
            "waiting": {
                "reason": "CreateContainerConfigError",
                "message": "container has runAsNonRoot and image has non-numeric user (app), "
                "cannot verify user is non-root",
            }
        }
    )
    state = job_state(_job(), [named], "job")
    assert state.never_started and "numeric USER" in state.reason
    pending = job_state(_job(), [_pod({"waiting": {"reason": "ContainerCreating"}})], "job")
    assert not pending.done


def test_dns_names_are_valid_and_distinct() -> None:
    assert dns_name("Alice@Example.org").startswith("alice-example-org-")
    assert dns_name("a.b") != dns_name("a-b")
    assert len(dns_name("x" * 300)) <= 63
