"""The model environment: the one door to scikit-learn and skops, which the airlock's own
process never imports.

A virtual environment of exact versions (LOCK), built by uv on first use under the folder
`[airlock] model_env_dir` names (a site without a package index points `model_python` at an
interpreter that has LOCK installed instead), one folder per lock and Python version, reused
after. Each attack runs secd_airlock/model_attacks.py in that environment's Python, in a
process of its own with a time limit, reading the model and the table from a private
temporary folder that is removed after; its figures come back as JSON on stdout.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

log = logging.getLogger("secd.airlock")

__all__ = ["LOCK", "ModelEnvError", "ModelEnvironment"]

# The model environment's packages, every one pinned, dependencies included (installed with
# --no-deps: nothing else comes in; `uv pip compile` of scikit-learn==1.9.1 and skops==0.16.0).
# Changing a line builds a new environment beside the old.
LOCK = (
    "cloudpickle==3.1.3",
    "joblib==1.6.0",
    "narwhals==2.29.0",
    "numpy==2.4.6",
    "packaging==26.4",
    "prettytable==3.19.0",
    "scikit-learn==1.9.1",
    "scipy==1.17.1",
    "skops==0.16.0",
    "threadpoolctl==3.8.0",
    "wcwidth==0.9.5",
)
ATTACKS = Path(__file__).with_name("model_attacks.py")
_READY = ".secd-model-env"
BUILD_TIMEOUT_S = 600.0


class ModelEnvError(Exception):
    """The model environment could not be built or found; the message says why and what to do."""


def lock_key(python_version: str) -> str:
    """The environment's folder name: a digest of LOCK and the Python version it is for."""
    text = "\n".join((python_version, *LOCK))
    return "env-" + hashlib.sha256(text.encode()).hexdigest()[:16]


def _uv() -> str:
    """uv beside the airlock's Python (secd-airlock depends on it), else on PATH."""
    beside = Path(sys.executable).parent / "uv"
    if beside.exists():
        return str(beside)
    found = shutil.which("uv")
    if found is None:
        raise ModelEnvError("uv is not installed beside the airlock: pip install uv")
    return found


class ModelEnvironment:
    """Builds (once) and runs the model environment; `attack` is what check_model calls."""

    def __init__(
        self,
        root: Path,
        *,
        python: Path | None = None,
        timeout_s: float = 120.0,
        base_python: str | None = None,
    ) -> None:
        self.root = root
        self.given_python = python
        self.timeout_s = timeout_s
        self.base_python = base_python or sys.executable
        self.build_s: float | None = None  # seconds the last build took (None: none built)

    @property
    def folder(self) -> Path:
        """Where this lock's environment lives."""
        version = f"{sys.version_info.major}.{sys.version_info.minor}"
        return self.root / lock_key(version)

    def python(self) -> Path:
        """The environment's interpreter, building the environment first when it is missing."""
        if self.given_python is not None:
            if not self.given_python.exists():
                raise ModelEnvError(
                    f"airlock.model_python {self.given_python} does not exist: install the "
                    "model environment there (docs/operator.md) or unset it"
                )
            return self.given_python
        target = self.folder / "bin" / "python"
        if (self.folder / _READY).exists():
            return target
        self.root.mkdir(parents=True, exist_ok=True)
        with open(self.root / ".build.lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)  # one build at a time, across processes
            if not (self.folder / _READY).exists():
                self._build()
        return target

    def _build(self) -> None:
        started = time.monotonic()
        temp = self.root / f".building-{os.getpid()}"
        shutil.rmtree(temp, ignore_errors=True)
        uv = _uv()
        steps = [
            [uv, "venv", "--quiet", "--python", self.base_python, str(temp)],
            [
                uv,
                "pip",
                "install",
                "--quiet",
                "--no-deps",
                "--python",
                str(temp / "bin" / "python"),
                *LOCK,
            ],
        ]
        for step in steps:
            try:
                done = subprocess.run(
                    step,
                    stdin=subprocess.DEVNULL,
                    capture_output=True,
                    timeout=BUILD_TIMEOUT_S,
                    check=False,
                )
            except (OSError, subprocess.TimeoutExpired) as exc:
                shutil.rmtree(temp, ignore_errors=True)
                raise ModelEnvError(f"building the model environment: {exc}") from None
            if done.returncode != 0:
                shutil.rmtree(temp, ignore_errors=True)
                tail = done.stderr.decode("utf-8", "replace").strip().splitlines()[-1:]
                raise ModelEnvError(
                    f"building the model environment failed ({' '.join(tail)[:300]}); "
                    "without a package index, set airlock.model_python (docs/operator.md)"
                )
        (temp / _READY).write_text("\n".join(LOCK) + "\n")
        shutil.rmtree(self.folder, ignore_errors=True)
        temp.rename(self.folder)
        self.build_s = time.monotonic() - started
        log.info("model environment built in %.1f s at %s", self.build_s, self.folder)

    def attack(
        self, model: bytes, data: dict[str, Any] | None, params: dict[str, Any]
    ) -> dict[str, Any]:
        """Run the attacks on `model` (skops bytes) against `data` (secd_airlock.checks.models
        .table_data), in the environment's own process; the figures, or {"error": why}."""
        try:
            python = self.python()
        except ModelEnvError as exc:
            return {"error": str(exc)}
        with tempfile.TemporaryDirectory(prefix="secd-model-") as tmp:
            folder = Path(tmp)  # 0700: only the airlock reads the table's rows written here
            (folder / "model.skops").write_bytes(model)
            (folder / "params.json").write_text(json.dumps(params))
            if data is not None:
                (folder / "data.json").write_text(json.dumps(data))
            env = {
                "PATH": "/usr/bin:/bin",
                "HOME": tmp,
                "OMP_NUM_THREADS": "1",
                "OPENBLAS_NUM_THREADS": "1",
                "MKL_NUM_THREADS": "1",
            }
            try:
                done = subprocess.run(
                    [str(python), "-I", str(ATTACKS), tmp],
                    stdin=subprocess.DEVNULL,
                    capture_output=True,
                    timeout=self.timeout_s,
                    env=env,
                    cwd=tmp,
                    check=False,
                )
            except subprocess.TimeoutExpired:
                return {"error": f"the attacks ran past {self.timeout_s:.0f} s"}
            except OSError as exc:
                return {"error": f"the model environment did not start: {exc.strerror}"}
        lines = done.stdout.decode("utf-8", "replace").strip().splitlines()
        try:
            figures = json.loads(lines[-1]) if lines else None
        except ValueError:
            figures = None
        if not isinstance(figures, dict):
            # stderr is not logged: a traceback could quote the table's values.
            return {"error": f"the attacks exited with {done.returncode} and no figures"}
        return figures
