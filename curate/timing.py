"""Wall and CPU seconds of named phases, summed per phase: the time breakdown of a run and of each unit."""
from __future__ import annotations

import time
from contextlib import contextmanager
from typing import Callable


def process_cpu() -> float:
    """CPU seconds of this process (every thread) so far."""
    return time.process_time()


class TreeCpu:
    """A clock of the CPU seconds of this process and its descendants (local Ray's raylet, GCS and
    workers), or of this process alone without psutil. A descendant that exits keeps its last reading, so
    the clock never runs backwards (what it used between the last reading and its exit is not seen)."""

    def __init__(self):
        self.seen: dict[tuple[int, float], float] = {}  # (pid, start time) -> CPU seconds last read

    def __call__(self) -> float:
        try:
            import psutil
        except ImportError:
            return process_cpu()
        self.sample(psutil.Process())
        return sum(self.seen.values())

    def sample(self, root) -> None:
        """Reads the CPU seconds of `root` (a psutil.Process) and of its live descendants."""
        import psutil

        try:
            procs = [root, *root.children(recursive=True)]
        except psutil.Error:  # the root itself has exited
            return
        for p in procs:
            try:
                with p.oneshot():
                    t, key = p.cpu_times(), (p.pid, p.create_time())
                self.seen[key] = t.user + t.system
            except psutil.Error:  # exited while we walked the tree
                pass


class Phases:
    """Accumulates {phase: wall seconds, CPU seconds}; `with phases("download"): ...` times one block.

    cpu is the clock that measures the work: process_cpu inside a task (one task per worker process),
    a TreeCpu in the driver (local Ray's processes are its children).
    """

    def __init__(self, cpu: Callable[[], float] = process_cpu):
        self.cpu = cpu
        self.wall: dict[str, float] = {}
        self.cpu_s: dict[str, float] = {}

    def add(self, name: str, wall_s: float, cpu_s: float) -> None:
        """Adds seconds to a phase (a phase timed in several pieces, or measured elsewhere)."""
        self.wall[name] = self.wall.get(name, 0.0) + wall_s
        self.cpu_s[name] = self.cpu_s.get(name, 0.0) + cpu_s

    @contextmanager
    def __call__(self, name: str):
        w0, c0 = time.monotonic(), self.cpu()
        try:
            yield
        finally:
            self.add(name, time.monotonic() - w0, self.cpu() - c0)

    def as_dict(self) -> dict[str, dict[str, float]]:
        """{phase: {"wall_s", "cpu_s"}} in the order the phases first ran, rounded to milliseconds."""
        return {k: {"wall_s": round(self.wall[k], 3), "cpu_s": round(self.cpu_s[k], 3)} for k in self.wall}


def merge(into: dict, timings: dict) -> dict:
    """Sums one {phase: {"wall_s", "cpu_s", ...}} mapping into another (e.g. over units); returns `into`."""
    for name, t in timings.items():
        acc = into.setdefault(name, {})
        for k, v in t.items():
            acc[k] = round(acc.get(k, 0.0) + float(v or 0.0), 3)
    return into
