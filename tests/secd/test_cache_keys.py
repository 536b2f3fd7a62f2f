"""Argument keys: from the bytes of arrays and frames, never from what `repr` prints."""

from __future__ import annotations

import datetime
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import secd
from secd._hashing import Fingerprint, UnhashableError
from secd._project import Project

HERE = Path(__file__).parent


def key_of(value: object) -> bytes:
    """The fingerprint an argument gets."""
    fingerprint = Fingerprint(Project(HERE))
    fingerprint.value(value)
    return fingerprint.digest()


@secd.cache(project_root=HERE)
def summarise(data):
    return data


def test_arrays_differing_only_in_the_middle_get_different_keys() -> None:
    first = np.zeros(1_000_000)
    second = first.copy()
    second[500_000] = 1.0
    # What a repr-keyed cache (the original secd) saw: the same text, so the same key.
    assert repr(first) == repr(second)
    assert str(first) == str(second)
    assert key_of(first) != key_of(second)
    assert summarise.key(first) != summarise.key(second)
    assert summarise.key(first) == summarise.key(first.copy())


@pytest.mark.parametrize(
    ("first", "second"),
    [
        (np.arange(6, dtype=np.int64), np.arange(6, dtype=np.int32)),  # same values, other dtype
        (np.arange(6), np.arange(6).reshape(2, 3)),  # same bytes, other shape
        (np.array([0.0]), np.array([-0.0])),
        (np.array(["ab", "c"]), np.array(["a", "bc"])),
        (np.array(["ab", "c"], dtype=object), np.array(["a", "bc"], dtype=object)),
        (np.array([1, "1"], dtype=object), np.array([1, 1], dtype=object)),
        (np.datetime64("2024-01-01", "D"), np.datetime64("2024-01-01", "s")),
        (np.zeros(3), [0.0, 0.0, 0.0]),
        ((1, 2), [1, 2]),
        ({"a": 1, "b": 2}, {"b": 2, "a": 1}),  # insertion order may matter to the function
        (1, 1.0),
        (1, True),
        ("1", b"1"),
    ],
)
def test_different_values_get_different_keys(first: object, second: object) -> None:
    assert key_of(first) != key_of(second)


def test_array_layouts_and_views_are_keyed_by_content() -> None:
    grid = np.arange(12.0).reshape(3, 4)
    assert key_of(grid) == key_of(np.ascontiguousarray(grid))
    assert key_of(grid[:, 1]) == key_of(np.array([1.0, 5.0, 9.0]))  # a strided view
    assert key_of(grid.T) != key_of(grid)  # a Fortran-ordered array: the transpose's bytes


def _frame(n: int = 50_000) -> pd.DataFrame:
    rng = np.random.default_rng(7)
    return pd.DataFrame(
        {
            "age": rng.integers(18, 90, n),
            "weight": rng.normal(70, 10, n),
            "site": pd.Categorical(rng.choice(["north", "south"], n)),
            "name": [f"patient-{i}" for i in range(n)],
            "seen": pd.date_range("2024-01-01", periods=n, freq="min", tz="UTC"),
            "visits": pd.array(rng.integers(0, 5, n), dtype="Int64"),
        }
    )


def _set(column, values):
    def change(df: pd.DataFrame) -> None:
        df[column] = values(df[column])

    return change


def _set_columns(df: pd.DataFrame) -> None:
    df.columns = ["years", *df.columns[1:]]


def _shift_index(df: pd.DataFrame) -> None:
    df.index = df.index + 1


MIDDLE = 25_000


@pytest.mark.parametrize(
    "change",
    [
        _set("weight", lambda c: c.where(c.index != MIDDLE, 0.0)),
        _set("name", lambda c: c.where(c.index != MIDDLE, "someone")),
        _set("site", lambda c: c.cat.rename_categories(["N", "S"])),
        _set("seen", lambda c: c.dt.tz_convert("Europe/Stockholm")),
        _set("visits", lambda c: c.where(c.index != MIDDLE, pd.NA)),
        _set("age", lambda c: c.astype("int32")),
        _set_columns,
        _shift_index,
        lambda df: df.attrs.update(source="registry"),
    ],
    ids=[
        "float",
        "str",
        "categories",
        "timezone",
        "nullable",
        "dtype",
        "columns",
        "index",
        "attrs",
    ],
)
def test_data_frames_differing_in_one_place_get_different_keys(change) -> None:
    original = _frame()
    changed = original.copy(deep=True)
    change(changed)
    assert key_of(original) != key_of(changed)


def test_equal_data_frames_get_equal_keys_however_built() -> None:
    original = _frame()
    rebuilt = pd.DataFrame({name: original[name].copy() for name in original.columns})
    assert key_of(original) == key_of(rebuilt)
    assert key_of(original["weight"]) == key_of(rebuilt["weight"])
    assert key_of(original["weight"]) != key_of(original["weight"].rename("mass"))


def test_keys_are_stable_across_processes() -> None:
    program = (
        "import numpy as np, pandas as pd, datetime\n"
        "from pathlib import Path\n"
        "from secd._hashing import Fingerprint\n"
        "from secd._project import Project\n"
        "f = Fingerprint(Project(Path('.')))\n"
        "f.value({'s': {'b', 'a', 'c'}, 'f': frozenset({1, 2}), 'a': np.arange(5),\n"
        "         'df': pd.DataFrame({'x': ['p', 'q']}), 'd': datetime.date(2024, 1, 2)})\n"
        "print(f.digest().hex())\n"
    )
    # Different hash seeds: set iteration order differs, the key must not.
    digests = {
        subprocess.run(
            [sys.executable, "-c", program],
            env={"PYTHONHASHSEED": seed, "PATH": "/usr/bin:/bin"},
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        for seed in ("1", "2", "3")
    }
    assert len(digests) == 1


@dataclass
class Visit:
    patient: str
    when: datetime.date
    values: np.ndarray


def test_objects_are_keyed_by_their_state() -> None:
    day = datetime.date(2024, 1, 2)
    first = Visit("p1", day, np.zeros(100_000))
    second = Visit("p1", day, np.zeros(100_000))
    second.values[50_000] = 1
    assert key_of(first) == key_of(Visit("p1", day, np.zeros(100_000)))
    assert key_of(first) != key_of(second)


def test_cycles_and_shared_references_are_fine() -> None:
    loop: list = [1]
    loop.append(loop)
    other: list = [1]
    other.append(other)
    assert key_of(loop) == key_of(other)
    assert key_of(loop) != key_of([1, [1]])


def test_an_argument_that_cannot_be_keyed_is_named(tmp_path: Path) -> None:
    @secd.cache(project_root=HERE, directory=tmp_path)
    def read(handle, path):
        return path

    with open(__file__) as handle, pytest.raises(TypeError, match=r"argument 'handle' of .*read"):
        read(handle, "x")
    with pytest.raises(UnhashableError):
        key_of(i for i in range(3))


def test_ignored_arguments_do_not_change_the_key(tmp_path: Path) -> None:
    @secd.cache(project_root=HERE, directory=tmp_path, ignore=["log"])
    def read(path, log):
        return path

    with open(__file__) as one, open(__file__) as two:
        assert read.key("x", one) == read.key("x", two)
        assert read("x", one) == "x"
    with pytest.raises(ValueError, match="does not take"):
        secd.cache(ignore=["nope"])(lambda x: x)


def test_functions_as_arguments_are_keyed_by_their_code() -> None:
    def plus_one(x):
        return x + 1

    def plus_two(x):
        return x + 2

    assert key_of(plus_one) != key_of(plus_two)
    assert key_of(lambda: 1) != key_of(lambda: 2)


def test_numpy_and_pandas_are_not_imported_by_secd() -> None:
    program = (
        "import sys, secd\n"
        "@secd.cache(directory='.k')\n"
        "def f(x):\n"
        "    return x\n"
        "f.key({'a': [1, 2.5, 'x']})\n"
        "print('numpy' in sys.modules, 'pandas' in sys.modules)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", program], capture_output=True, text=True, check=True
    )
    assert done.stdout == "False False\n"
