"""A control group per run: its memory, process and CPU limits, enforced by the kernel.

Three ways, best first (`executor.cgroups`, "auto" picks the first that works here):

- **v2**: a cgroup v2 folder delegated to the executor (`executor.cgroup_root`, e.g. a systemd
  unit's with `Delegate=yes`); each run gets `<root>/<run>` with memory.max (swap off), pids.max
  and cpu.max. On a machine whose cgroup v2 root is ours (no systemd), `/sys/fs/cgroup/secd`.
- **v1**: as root, a folder `<cgroup_root>/<run>` in the memory, pids and cpu hierarchies.
- **none**: no cgroup; the sandbox falls back to rlimits (RLIMIT_AS for memory, RLIMIT_NPROC
  with the run's own uid for processes) and CPU affinity (see sandbox.py).

The launcher joins the run's cgroups before it execs anything, so every process of the run is
inside them from its first instruction. After the run, everything left in them is killed.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import signal
import time
from dataclasses import dataclass, field
from pathlib import Path

from secd_shared.limits import Limits

__all__ = ["CgroupError", "Cgroups", "RunCgroup", "detect_cgroups"]

log = logging.getLogger("secd.executor")

_V1 = Path("/sys/fs/cgroup")
_V2 = Path("/sys/fs/cgroup")
_CPU_PERIOD_US = 100_000


class CgroupError(RuntimeError):
    """The run's cgroup cannot be made or set; the sandbox does not start without it."""


@dataclass
class RunCgroup:
    """One run's cgroup folders (one per hierarchy on v1, one on v2)."""

    version: str
    folders: dict[str, Path] = field(default_factory=dict)

    @property
    def procs_files(self) -> list[str]:
        """The files the launcher writes its pid to."""
        return sorted({str(folder / "cgroup.procs") for folder in self.folders.values()})

    def limit_hit(self) -> str | None:
        """The limit the run ran into: "memory" (an OOM kill), "pids" (a refused fork), or None."""
        if self.version == "v2":
            folder = self.folders["unified"]
            if _event_count(folder / "memory.events", "oom_kill") > 0:
                return "memory"
            if _event_count(folder / "pids.events", "max") > 0:
                return "pids"
            return None
        memory = self.folders.get("memory")
        if memory is not None and _event_count(memory / "memory.oom_control", "oom_kill") > 0:
            return "memory"
        pids = self.folders.get("pids")
        if pids is not None and _event_count(pids / "pids.events", "max") > 0:
            return "pids"
        return None

    def kill(self) -> None:
        """SIGKILL every process still in the run's cgroups (a job that outlived its sandbox)."""
        for folder in self.folders.values():
            kill_file = folder / "cgroup.kill"
            if self.version == "v2" and kill_file.exists():
                with contextlib.suppress(OSError):
                    kill_file.write_text("1")
                continue
            # Processes killed with their pid namespace leave the list within a millisecond or
            # two; poll often so the run's end is not held up.
            for _ in range(1000):
                pids = _pids(folder)
                if not pids:
                    break
                for pid in pids:
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(pid, signal.SIGKILL)
                time.sleep(0.001)

    def remove(self) -> None:
        """Kill what is left and remove the folders; retried briefly while processes exit."""
        self.kill()
        for folder in self.folders.values():
            for _ in range(1000):
                try:
                    folder.rmdir()
                    break
                except FileNotFoundError:
                    break
                except OSError:
                    time.sleep(0.001)
            else:
                log.warning("cgroup %s could not be removed", folder)


def _event_count(path: Path, key: str) -> int:
    try:
        for line in path.read_text().splitlines():
            name, _, value = line.partition(" ")
            if name == key:
                return int(value)
    except (OSError, ValueError):
        pass
    return 0


def _pids(folder: Path) -> list[int]:
    try:
        return [int(p) for p in (folder / "cgroup.procs").read_text().split()]
    except (OSError, ValueError):
        return []


@dataclass(frozen=True)
class Cgroups:
    """Where this executor makes run cgroups: version "v2", "v1" or "none", and its root."""

    version: str
    root: Path | None = None

    def create(self, name: str, limits: Limits) -> RunCgroup | None:
        """The run's cgroup with its limits set, or None when there are no cgroups here."""
        if self.version == "none":
            return None
        assert self.root is not None
        if self.version == "v2":
            return self._create_v2(name, limits)
        return self._create_v1(name, limits)

    def _create_v2(self, name: str, limits: Limits) -> RunCgroup:
        assert self.root is not None
        folder = self.root / name
        run = RunCgroup("v2", {"unified": folder})
        try:
            folder.mkdir(exist_ok=True)
            _write(folder / "memory.max", limits.memory)
            _write(folder / "memory.swap.max", 0, optional=True)
            _write(folder / "pids.max", limits.pids)
            quota = max(1000, math.ceil(limits.cpus * _CPU_PERIOD_US))
            _write(folder / "cpu.max", f"{quota} {_CPU_PERIOD_US}", optional=True)
        except OSError as exc:
            run.remove()
            raise CgroupError(f"cannot set up cgroup {folder}: {exc.strerror}") from None
        return run

    def _create_v1(self, name: str, limits: Limits) -> RunCgroup:
        assert self.root is not None
        run = RunCgroup("v1")
        try:
            for controller in ("memory", "pids", "cpu"):
                folder = _V1 / controller / self.root / name
                folder.mkdir(parents=True, exist_ok=True)
                run.folders[controller] = folder
            memory = run.folders["memory"]
            _write(memory / "memory.limit_in_bytes", limits.memory)
            # memory + swap no more than memory: the job cannot page out to get around it.
            _write(memory / "memory.memsw.limit_in_bytes", limits.memory, optional=True)
            _write(run.folders["pids"] / "pids.max", limits.pids)
            cpu = run.folders["cpu"]
            _write(cpu / "cpu.cfs_period_us", _CPU_PERIOD_US)
            _write(cpu / "cpu.cfs_quota_us", max(1000, math.ceil(limits.cpus * _CPU_PERIOD_US)))
        except OSError as exc:
            run.remove()
            raise CgroupError(f"cannot set up the run's cgroup: {exc.strerror}") from None
        return run

    def sweep(self) -> None:
        """Remove the empty run cgroups an earlier executor left (it crashed).

        Only empty ones: other executors on this machine share the folder, and their runs'
        cgroups are not ours to touch. A crashed executor's sandboxes die with it (bwrap's
        --die-with-parent), so its cgroups empty themselves.
        """
        if self.version == "none" or self.root is None:
            return
        parents = (
            [self.root]
            if self.version == "v2"
            else [_V1 / c / self.root for c in ("memory", "pids", "cpu")]
        )
        for parent in parents:
            with contextlib.suppress(OSError):
                for child in parent.iterdir():
                    if child.is_dir() and child.name.startswith("secd-r") and not _pids(child):
                        with contextlib.suppress(OSError):
                            child.rmdir()


def _write(path: Path, value: object, *, optional: bool = False) -> None:
    try:
        path.write_text(str(value))
    except FileNotFoundError:
        if not optional:
            raise


def _is_v1(controller: str) -> bool:
    try:
        with open("/proc/self/mounts") as mounts:
            for line in mounts:
                parts = line.split()
                if len(parts) > 3 and parts[2] == "cgroup" and controller in parts[3].split(","):
                    return parts[1] == str(_V1 / controller)
    except OSError:
        pass
    return False


def _v2_root(configured: str) -> Path | None:
    """A cgroup v2 folder we may make children in, with memory and pids available."""
    root = Path(configured) if configured.startswith("/") else _V2 / configured
    parent = root if root.exists() else root.parent
    try:
        controllers = (parent / "cgroup.controllers").read_text().split()
    except OSError:
        return None
    if not {"memory", "pids"} <= set(controllers):
        return None
    try:
        root.mkdir(exist_ok=True)
        enable = " ".join(f"+{c}" for c in ("memory", "pids", "cpu") if c in controllers)
        (root / "cgroup.subtree_control").write_text(enable)
    except OSError:
        return None
    return root


def detect_cgroups(kind: str, cgroup_root: str) -> Cgroups:
    """The cgroups the executor uses: `kind` is auto, v2, v1 or none (executor.cgroups)."""
    if kind in ("auto", "v2"):
        root = _v2_root(cgroup_root)
        if root is not None:
            return Cgroups("v2", root)
        if kind == "v2":
            raise CgroupError(
                f"executor.cgroups = v2, but {cgroup_root} is not a cgroup v2 folder with the "
                "memory and pids controllers delegated to this executor"
            )
    if kind in ("auto", "v1"):
        if os.geteuid() == 0 and all(_is_v1(c) for c in ("memory", "pids", "cpu")):
            # An absolute cgroup_root names a v2 folder; its last part names ours on v1.
            relative = Path(Path(cgroup_root).name if cgroup_root.startswith("/") else cgroup_root)
            return Cgroups("v1", relative)
        if kind == "v1":
            raise CgroupError(
                "executor.cgroups = v1, but the memory, pids and cpu hierarchies are not "
                "mounted under /sys/fs/cgroup or the executor is not root"
            )
    return Cgroups("none")
