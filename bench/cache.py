"""@secd.cache against joblib.Memory on the same inputs: time to key, time for a hit.

Inputs: a 100 MB float64 array, a DataFrame (500 000 rows: int, float, category, str, datetime
columns) and a dict of small values (what an experiment's parameters look like).

Time to key: computing the cache key of a call with that input as its argument, without loading
anything: `CachedFunction.key(x)` for secd (the function's code walk included) and
`joblib.hash({"x": x})` for joblib (what joblib.Memory hashes for a call's arguments).

Time for a hit: a cached call `load(name)` that returns the input object, once it is cached,
for secd and for joblib.Memory; the baseline is a bare `pickle.load` of the same object from a file
(pickled with the highest protocol). Every file is in the page cache (written just before), as
on a second run. secd maps large entries and verifies their xxh3 checksum; "then summed" also
times reading every element of the array once after the hit, against the same after pickle.load.

All figures are medians of --repeat runs, in this one process; for the small dict each run is the
mean of a batch of calls. Last line:

    key_speedup_vs_joblib=<joblib key time / secd key time, 100 MB array>
    hit_vs_pickle=<secd hit time / bare pickle.load time, 100 MB array> ...
"""

from __future__ import annotations

import argparse
import gc
import pickle
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import joblib
import numpy as np
import pandas as pd

import secd

ARRAY_BYTES = 100 * 1000 * 1000
ROWS = 500_000
# Calls of a few microseconds are timed in batches: one call is too short for the clock.
SMALL_BATCH = 200


def _inputs() -> dict[str, object]:
    rng = np.random.default_rng(0)
    array = rng.random(ARRAY_BYTES // 8)
    frame = pd.DataFrame(
        {
            "id": np.arange(ROWS, dtype=np.int64),
            "weight": rng.normal(70, 10, ROWS),
            "site": pd.Categorical(rng.choice(["north", "south", "east", "west"], ROWS)),
            "name": [f"patient-{i}" for i in range(ROWS)],
            "seen": pd.date_range("2024-01-01", periods=ROWS, freq="min"),
        }
    )
    params = {
        "alpha": 0.05,
        "seed": 42,
        "features": ["age", "sex", "bmi", "smoker", "region"],
        "model": {"kind": "gbm", "depth": 6, "rate": 0.1, "rounds": 500},
        "name": "cohort-2024-run-3",
        "folds": (1, 2, 3, 4, 5),
    }
    return {"array_100MB": array, "dataframe": frame, "small_dict": params}


def _median(action: Callable[[], object], repeat: int, batch: int = 1) -> float:
    """Median over `repeat` samples of the mean time of `batch` back-to-back calls."""
    times = []
    for _ in range(repeat):
        gc.collect()
        started = time.perf_counter()
        for _ in range(batch):
            result = action()
            del result
        times.append((time.perf_counter() - started) / batch)
    return statistics.median(times)


def _pickle_load(path: Path) -> object:
    with open(path, "rb") as file:
        return pickle.load(file)  # noqa: S301 - our own file, just written


def bench(repeat: int) -> str:
    inputs = _inputs()
    workdir = Path(tempfile.mkdtemp(prefix="secd-bench-cache-"))
    memory = joblib.Memory(location=workdir / "joblib", verbose=0)

    def load(name):
        # Stands in for the slow step (a query); its code and what it refers to are walked.
        return _pickle_load(workdir / f"{name}.pkl")

    here = Path(__file__).parent
    secd_load = secd.cache(directory=workdir / "secd", max_bytes="2GB", project_root=here)(load)
    joblib_load = memory.cache(load)

    def fingerprint(x):
        return x

    secd_key = secd.cache(directory=workdir / "secd", project_root=here)(fingerprint)

    results: dict[str, dict[str, float]] = {}
    print(
        f"python {sys.version.split()[0]}, numpy {np.__version__}, pandas {pd.__version__}, "
        f"joblib {joblib.__version__}; medians of {repeat} runs "
        f"(each the mean of {SMALL_BATCH} calls for small_dict)\n"
    )
    header = f"{'input':12} {'what':22} {'secd':>11} {'joblib':>11} {'pickle.load':>12}  ratios"
    print(header)
    for name, value in inputs.items():
        batch = SMALL_BATCH if name == "small_dict" else 1
        pickled = workdir / f"{name}.pkl"
        with open(pickled, "wb") as file:
            pickle.dump(value, file, protocol=pickle.HIGHEST_PROTOCOL)
        del value
        secd_load(name)  # the misses: both caches now hold the entry
        joblib_load(name)
        _pickle_load(pickled)
        figures = {
            "key_secd": _median(lambda n=name: secd_key.key(inputs[n]), repeat, batch),
            "key_joblib": _median(lambda n=name: joblib.hash({"x": inputs[n]}), repeat, batch),
            "hit_secd": _median(lambda n=name: secd_load(n), repeat, batch),
            "hit_joblib": _median(lambda n=name: joblib_load(n), repeat, batch),
            "load_pickle": _median(lambda p=pickled: _pickle_load(p), repeat, batch),
        }
        if name == "array_100MB":
            figures["use_secd"] = _median(lambda: secd_load("array_100MB").sum(), repeat, batch)
            figures["use_pickle"] = _median(lambda p=pickled: _pickle_load(p).sum(), repeat, batch)
        results[name] = figures

        def ms(seconds: float) -> str:
            return f"{seconds * 1000:9.3f}ms"

        print(
            f"{name:12} {'time to key':22} {ms(figures['key_secd'])} {ms(figures['key_joblib'])} "
            f"{'':>12}  joblib/secd {figures['key_joblib'] / figures['key_secd']:.1f}"
        )
        print(
            f"{'':12} {'hit':22} {ms(figures['hit_secd'])} {ms(figures['hit_joblib'])} "
            f"{ms(figures['load_pickle'])}  "
            f"secd/pickle {figures['hit_secd'] / figures['load_pickle']:.2f}, "
            f"joblib/pickle {figures['hit_joblib'] / figures['load_pickle']:.2f}"
        )
        if "use_secd" in figures:
            print(
                f"{'':12} {'hit then summed':22} {ms(figures['use_secd'])} {'':>11} "
                f"{ms(figures['use_pickle'])}  secd/pickle "
                f"{figures['use_secd'] / figures['use_pickle']:.2f}"
            )
    joblib.Memory(location=workdir / "joblib", verbose=0).clear(warn=False)
    _remove(workdir)

    array, frame, small = results["array_100MB"], results["dataframe"], results["small_dict"]
    pairs = {
        "key_speedup_vs_joblib": array["key_joblib"] / array["key_secd"],
        "hit_vs_pickle": array["hit_secd"] / array["load_pickle"],
        "hit_then_sum_vs_pickle": array["use_secd"] / array["use_pickle"],
        "df_key_speedup_vs_joblib": frame["key_joblib"] / frame["key_secd"],
        "df_hit_vs_pickle": frame["hit_secd"] / frame["load_pickle"],
        "dict_key_speedup_vs_joblib": small["key_joblib"] / small["key_secd"],
        "dict_hit_vs_pickle": small["hit_secd"] / small["load_pickle"],
        "array_key_ms": array["key_secd"] * 1000,
        "array_hit_ms": array["hit_secd"] * 1000,
        "array_pickle_load_ms": array["load_pickle"] * 1000,
    }
    return "\n" + " ".join(f"{name}={value:.2f}" for name, value in pairs.items())


def _remove(path: Path) -> None:
    import shutil

    shutil.rmtree(path, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=7, help="runs per figure (default 7)")
    print(bench(parser.parse_args().repeat))


if __name__ == "__main__":
    main()
