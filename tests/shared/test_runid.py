"""RunId: the one place that makes, checks and dates run ids."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import msgspec
import pytest

from secd_shared import events
from secd_shared.runid import RunIdText, new_run_id, parse_run_id, run_created_at


def test_new_ids_parse_and_carry_their_creation_time() -> None:
    before = datetime.now(UTC) - timedelta(milliseconds=1)
    run_id = new_run_id()
    after = datetime.now(UTC) + timedelta(milliseconds=1)
    assert parse_run_id(run_id) == run_id
    assert before <= run_created_at(run_id) <= after
    assert events.new_run_id is new_run_id


def test_ids_sort_by_creation_time() -> None:
    first = new_run_id()
    millis = int(run_created_at(first).timestamp() * 1000) + 5
    second = parse_run_id(f"r{millis:011x}00000000")
    assert run_created_at(second) > run_created_at(first)
    assert second > first


@pytest.mark.parametrize(
    "bad",
    [
        "",
        "r123",
        "R0123456789abcdef012",
        "r0123456789ABCDEF012",
        "r0123456789abcdef0123",
        "r0123456789abcdef01",
        "r0123456789abcdef012\n",
        "x0123456789abcdef012",
        "r0123456789abcdef01'",
        None,
        12,
    ],
)
def test_parse_refuses_what_is_not_a_run_id_and_says_what_one_is(bad: object) -> None:
    with pytest.raises(ValueError, match="'r' and 19 lowercase hex digits"):
        parse_run_id(bad)


def test_struct_fields_typed_run_id_text_refuse_bad_ids_on_decode() -> None:
    class Carrier(msgspec.Struct):
        run_id: RunIdText

    good = new_run_id()
    assert msgspec.json.decode(msgspec.json.encode({"run_id": good}), type=Carrier).run_id == good
    # A RunId goes on the wire as a plain string.
    assert msgspec.json.encode(Carrier(new_run_id())).startswith(b'{"run_id":"r')
    for bad in ("r0123456789abcdef012\n", "r1", "secd_r0123456789abcdef012"):
        with pytest.raises(msgspec.ValidationError):
            msgspec.json.decode(msgspec.json.encode({"run_id": bad}), type=Carrier)
