"""Entries on disk: round trips, damage, racing processes, the size limit, and where they live."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import secd
from secd._store import EntryStore
from tests.secd.conftest import ResearchProject

HERE = Path(__file__).parent


class Counter:
    """A cached function's computations, counted in a file.

    Not in an attribute: the function refers to the counter, so the counter's state is part of
    its key, and a count that changed with every call would make every call a miss.
    """

    def __init__(self, path: Path) -> None:
        self.path = str(path)

    def bump(self) -> None:
        """Count one computation."""
        with open(self.path, "a") as file:
            file.write("+\n")

    @property
    def calls(self) -> int:
        """How many computations so far."""
        return len(Path(self.path).read_text()) // 2 if Path(self.path).exists() else 0


def cached(directory: Path, counter: Counter, **options):
    """A cached identity-like function whose body counts its runs."""

    @secd.cache(project_root=HERE, directory=directory, **options)
    def compute(value, size=0):
        counter.bump()
        return {"value": value, "payload": np.full(size, value, dtype=np.float64)}

    return compute


def test_results_come_back_equal_and_writable(tmp_path: Path) -> None:
    counter = Counter(tmp_path / "calls")

    @secd.cache(project_root=HERE, directory=tmp_path)
    def build(n):
        counter.bump()
        rng = np.random.default_rng(n)
        return {
            "big": rng.random((500, 600)),  # above the size where entries are mapped
            "fortran": np.asfortranarray(rng.random((30, 20))),
            "small": np.arange(10, dtype=np.int16),
            "frame": pd.DataFrame({"x": rng.random(1000), "s": [str(i) for i in range(1000)]}),
            "text": "done",
        }

    first = build(1)
    second = build(1)
    assert counter.calls == 1
    for name in ("big", "fortran", "small"):
        np.testing.assert_array_equal(first[name], second[name])
        assert first[name].dtype == second[name].dtype
        assert second[name].flags.writeable
    assert second["fortran"].flags.f_contiguous
    pd.testing.assert_frame_equal(first["frame"], second["frame"])
    assert second["text"] == "done"
    second["big"][0, 0] = -1.0  # writes reach the caller's copy only
    assert build(1)["big"][0, 0] == first["big"][0, 0]


@pytest.mark.parametrize("size", [10, 400_000])  # a read entry and a mapped one
def test_a_truncated_entry_is_recomputed(
    tmp_path: Path, size: int, capsys: pytest.CaptureFixture
) -> None:
    counter = Counter(tmp_path / "calls")
    compute = cached(tmp_path, counter)
    assert compute(3.0, size)["value"] == 3.0
    [entry] = list(tmp_path.rglob("*.entry"))
    with open(entry, "r+b") as file:
        file.truncate(entry.stat().st_size // 2)
    result = compute(3.0, size)
    assert counter.calls == 2
    assert result["value"] == 3.0 and len(result["payload"]) == size
    assert "damaged" in capsys.readouterr().err
    assert compute(3.0, size)["value"] == 3.0  # the rewritten entry is sound again
    assert counter.calls == 2


def test_a_corrupted_byte_is_caught_by_the_checksum(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    counter = Counter(tmp_path / "calls")
    compute = cached(tmp_path, counter)
    compute(5.0, 1000)
    [entry] = list(tmp_path.rglob("*.entry"))
    data = bytearray(entry.read_bytes())
    data[len(data) - 100] ^= 0x01  # one bit of the array's payload
    entry.write_bytes(bytes(data))
    np.testing.assert_array_equal(compute(5.0, 1000)["payload"], np.full(1000, 5.0))
    assert counter.calls == 2
    assert "checksum" in capsys.readouterr().err


def test_an_empty_or_foreign_file_is_recomputed(tmp_path: Path) -> None:
    counter = Counter(tmp_path / "calls")
    compute = cached(tmp_path, counter)
    compute(1, 0)
    [entry] = list(tmp_path.rglob("*.entry"))
    for garbage in (b"", b"not an entry at all, just some bytes" * 3):
        entry.write_bytes(garbage)
        assert compute(1, 0)["value"] == 1
    assert counter.calls == 3


def test_two_processes_racing_on_a_key_compute_it_once(project: ResearchProject) -> None:
    project.write(
        "main.py",
        """\
        import os, sys, time
        import secd

        @secd.cache
        def slow(x):
            with open("computed.log", "a") as log:
                log.write(f"{os.getpid()}\\n")
            time.sleep(1.0)  # long enough for every racer to arrive while it runs
            return x * 2

        # Start together: wait for the go file the test writes once all are up.
        open(f"ready.{os.getpid()}", "w").close()
        while not os.path.exists("go"):
            time.sleep(0.005)
        print(slow(int(sys.argv[1])))
        """,
    )
    env = {k: v for k, v in os.environ.items() if k not in ("SECD", "SECD_CACHE_DIR")}
    racers = [
        subprocess.Popen(
            [sys.executable, "main.py", "21"],
            cwd=project.root,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(3)
    ]
    deadline = time.monotonic() + 30
    while len(list(project.root.glob("ready.*"))) < len(racers):
        assert time.monotonic() < deadline, "racers did not start"
        time.sleep(0.01)
    (project.root / "go").touch()
    outputs = [racer.communicate(timeout=60) for racer in racers]
    assert [out for out, _ in outputs] == ["42\n"] * 3, outputs
    assert project.computed == 1
    key_locks = [p for p in project.root.rglob("*.lock") if p.name != ".evict.lock"]
    assert not key_locks, "key lock files are removed after use"


def test_threads_racing_on_a_key_compute_it_once(tmp_path: Path) -> None:
    counter = Counter(tmp_path / "calls")

    @secd.cache(project_root=HERE, directory=tmp_path)
    def slow(x):
        counter.bump()
        time.sleep(0.3)
        return x + 1

    results: list[int] = []
    threads = [threading.Thread(target=lambda: results.append(slow(1))) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert results == [2, 2, 2, 2]
    assert counter.calls == 1


@pytest.mark.parametrize("victim", [1.0, 2.0, 3.0])
def test_least_recently_used_entries_are_evicted_first(tmp_path: Path, victim: float) -> None:
    counter = Counter(tmp_path / "calls")
    size = 100_000  # 800 kB of payload each: three fit in 2.5 MB, four do not
    compute = cached(tmp_path / "cache", counter, max_bytes="2.5MB")
    for value in (1.0, 2.0, 3.0):
        compute(value, size)
    for value in (1.0, 2.0, 3.0):
        if value != victim:
            compute(value, size)  # hits: the victim is now the least recently used
    assert counter.calls == 3
    compute(4.0, size)  # over the limit: the victim goes, and only it
    assert EntryStore(tmp_path / "cache", 2_500_000).total_bytes() <= 2_500_000
    assert len(list((tmp_path / "cache").rglob("*.entry"))) == 3
    for value in (1.0, 2.0, 3.0, 4.0):
        if value != victim:
            compute(value, size)
    assert counter.calls == 4  # the others are all still there
    compute(victim, size)
    assert counter.calls == 5  # the victim was evicted, so it ran again


def test_a_result_larger_than_the_cache_is_returned_uncached(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    counter = Counter(tmp_path / "calls")
    compute = cached(tmp_path, counter, max_bytes=10_000)
    assert len(compute(1.0, 100_000)["payload"]) == 100_000
    assert len(compute(1.0, 100_000)["payload"]) == 100_000
    assert counter.calls == 2
    assert "more than the cache's limit" in capsys.readouterr().err
    assert not list(tmp_path.rglob("*.entry"))


def test_an_unpicklable_result_is_returned_uncached(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    @secd.cache(project_root=HERE, directory=tmp_path)
    def opens():
        return threading.Lock()

    assert opens() is not None
    assert "cannot be pickled" in capsys.readouterr().err


def test_production_uses_the_mounted_cache(project: ResearchProject, tmp_path: Path) -> None:
    mounted = tmp_path / "mounted"
    mounted.mkdir()
    project.write(
        "main.py",
        """\
        import secd

        @secd.cache(directory="somewhere-else")  # outside secd only
        def step(x):
            with open("computed.log", "a") as log:
                log.write("step\\n")
            return x + 1

        print(step(1), step(1))
        """,
    )
    env = {"SECD": "PRODUCTION", "SECD_CACHE_DIR": str(mounted), "OUTPUT_PATH": str(tmp_path)}
    assert project.run(**env).stdout == "2 2\n"
    assert project.run(**env).stdout == "2 2\n"
    assert project.computed == 1
    assert len(project.entries(mounted)) == 1
    assert not (project.root / "somewhere-else").exists()
    assert not (project.root / ".secd-cache").exists()


def test_production_without_a_mounted_cache_computes_and_says_so_once(
    project: ResearchProject,
) -> None:
    project.write(
        "main.py",
        """\
        import secd

        @secd.cache
        def step(x):
            with open("computed.log", "a") as log:
                log.write("step\\n")
            return x + 1

        print(step(1), step(1), step(2))
        """,
    )
    run = project.run(SECD="PRODUCTION", OUTPUT_PATH=str(project.root))
    assert run.stdout == "2 2 3\n"
    assert project.computed == 3  # no silent fallback to a folder that dies with the run
    assert run.stderr.count("no cache mounted") == 1
    assert not list(project.root.rglob("*.entry"))


def test_production_with_an_unwritable_cache_computes_and_says_so(
    project: ResearchProject, tmp_path: Path
) -> None:
    project.write(
        "main.py",
        "import secd\nprint(secd.cache(lambda x: x + 1)(1))\n",
    )
    run = project.run(
        SECD="PRODUCTION", SECD_CACHE_DIR=str(tmp_path / "missing"), OUTPUT_PATH=str(tmp_path)
    )
    assert run.stdout == "2\n"
    assert "not a writable directory" in run.stderr


def test_outside_secd_the_cache_is_in_the_project(project: ResearchProject) -> None:
    project.write("src/main.py", "import secd\nprint(secd.cache(lambda x: x)(1))\n")
    project.run("src/main.py")
    assert len(project.entries(project.root / ".secd-cache")) == 1  # the project, not src/


def test_output_path(project: ResearchProject, tmp_path: Path, monkeypatch) -> None:
    project.write("main.py", "import secd\nprint(secd.output_path())\n")
    assert project.run().stdout == f"{project.root / 'output'}\n"
    assert (project.root / "output").is_dir()
    given = tmp_path / "given"
    assert project.run(OUTPUT_PATH=str(given)).stdout == f"{given}\n"
    monkeypatch.setenv("SECD", "PRODUCTION")
    with pytest.raises(RuntimeError, match="OUTPUT_PATH is not set"):
        secd.output_path()


def test_bad_size_limits_are_refused_with_the_setting_named(monkeypatch, tmp_path) -> None:
    with pytest.raises(ValueError, match=r"max_bytes.*like 500MB"):
        secd.cache(max_bytes="lots")(lambda: 1)
    monkeypatch.setenv("SECD_CACHE_MAX_BYTES", "-3")
    with pytest.raises(ValueError, match="SECD_CACHE_MAX_BYTES"):
        secd.cache(directory=tmp_path)(lambda: 1)()
