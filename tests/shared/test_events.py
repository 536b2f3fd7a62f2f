"""Events: typed, tolerant of newer fields, strict about missing ones; passwords sealed."""

from __future__ import annotations

import json

import pytest

from secd_shared.events import (
    EVENT_TYPES,
    EventDecodeError,
    Producer,
    PushReceived,
    decode_event,
    encode_event,
    event_hash,
    new_event,
    new_run_id,
    subject_for,
)
from secd_shared.sealing import generate_keypair, load_private_key, seal, unseal


def _event(**overrides):
    payload = PushReceived(
        forge="git", repository="a/b", ref="refs/heads/main", before="0" * 40, after="1" * 40,
        pusher="root",
    )  # fmt: skip
    return new_event(
        payload, run_id=new_run_id(), producer=Producer("gateway", "1"), actor="root",
        project="a/b", **overrides,
    )  # fmt: skip


def test_round_trip_and_subject():
    event = _event()
    assert decode_event(encode_event(event)) == event
    assert subject_for(event.run_id, event.type) == f"secd.run.{event.run_id}.push_received"
    assert "." not in event.run_id and len(event.run_id) == 20
    assert len(EVENT_TYPES) == 20


def test_unknown_fields_from_newer_versions_are_tolerated():
    data = json.loads(encode_event(_event()))
    data["new_field"] = 1
    data["payload"]["also_new"] = "x"
    assert decode_event(json.dumps(data).encode()).payload.pusher == "root"


def test_missing_required_fields_and_mismatched_types_are_errors():
    data = json.loads(encode_event(_event()))
    del data["payload"]["after"]
    with pytest.raises(EventDecodeError, match="after"):
        decode_event(json.dumps(data).encode())
    data = json.loads(encode_event(_event()))
    data["type"] = "run.finished"
    with pytest.raises(EventDecodeError, match="carries"):
        decode_event(json.dumps(data).encode())
    with pytest.raises(EventDecodeError, match="not JSON"):
        decode_event(b"{")


def test_causation_chains_by_hash():
    cause = _event()
    data = encode_event(cause)
    effect = _event(cause=cause, cause_data=data)
    assert effect.causation_id == cause.id
    assert effect.causation_hash == event_hash(data)


def test_sealed_password_opens_only_with_the_private_key(tmp_path):
    public = generate_keypair(tmp_path / "key")
    other = generate_keypair(tmp_path / "other")
    sealed = seal(public, "s3cret-password")
    assert "s3cret" not in sealed
    assert unseal(load_private_key(tmp_path / "key"), sealed) == "s3cret-password"
    with pytest.raises(Exception):  # noqa: B017 - nacl raises its own CryptoError
        unseal(load_private_key(tmp_path / "other"), sealed)
    assert other != public
    assert (tmp_path / "key").stat().st_mode & 0o077 == 0


def test_a_rejection_written_before_unknown_pusher_existed_still_decodes():
    from secd_shared.events import RunRejected

    rejected = RunRejected(repository="a/b", ref="refs/heads/main", head="1" * 40, reason="no")
    data = json.loads(encode_event(_event()))
    data["type"] = "run.rejected"
    data["payload"] = {
        "type": "run.rejected", "repository": "a/b", "ref": "refs/heads/main",
        "head": "1" * 40, "reason": "no", "commit": None,
    }  # fmt: skip
    decoded = decode_event(json.dumps(data).encode()).payload
    assert decoded == rejected and decoded.unknown_pusher is False
