"""Zero trust: no event names a host path, and what a job can touch is reached without links."""

from __future__ import annotations

import msgspec
import pytest

from secd_shared import events
from secd_shared.safepath import Beneath, PathRefused, open_beneath


def test_no_event_carries_a_host_path():
    # Every field of every payload, nested structs included: none is a path of some machine
    seen = set()

    def fields(struct) -> None:
        for field in msgspec.structs.fields(struct):
            seen.add(field.name)
            kind = getattr(field.type, "__struct_fields__", None)
            if kind is not None:
                fields(field.type)

    for name in dir(events):
        obj = getattr(events, name)
        if isinstance(obj, type) and issubclass(obj, msgspec.Struct) and obj is not msgspec.Struct:
            fields(obj)
    assert {"env_path", "source_path", "output_path", "log_path"} & seen == set()
    assert [f for f in seen if "path" in f] == []


@pytest.mark.parametrize("relative", ["../elsewhere", "/etc", "", "a/../../x"])
def test_a_path_that_leaves_its_root_is_refused(tmp_path, relative):
    with pytest.raises(PathRefused):
        Beneath.of(tmp_path, relative)


def test_a_symlink_below_the_folder_is_never_followed(tmp_path):
    (tmp_path / "work").mkdir()
    (tmp_path / "work" / "link").symlink_to("/etc")
    below = Beneath.of(tmp_path / "work", "link")
    with pytest.raises(PathRefused, match="link"):
        open_beneath(below.root, list(below.relative))
