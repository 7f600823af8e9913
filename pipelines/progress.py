"""Progress of a phase: a bar on a terminal, periodic log lines otherwise (rows, images, rate, ETA, failures);
and the run's time breakdown per phase (stage/timings.json)."""
from __future__ import annotations

import json
import sys
import time

from curate import fsutil
from curate.layout import RunLayout
from curate.stage import UnitStats
from curate.timing import Phases, TreeCpu, merge


class Progress:
    """Counts finished work units of one phase and reports rate, ETA and failures so far."""

    def __init__(self, phase: str, total_units: int, total_rows: int, enabled: bool = True,
                 log_every_s: float = 10.0):
        self.phase, self.total_units, self.total_rows = phase, total_units, total_rows
        self.enabled = enabled
        self.units = self.rows = self.images = self.failures = 0
        self.t0 = self.last = time.time()
        self.log_every_s = log_every_s
        self.tty = sys.stderr.isatty()
        self._bar = None
        if enabled and self.tty:
            from tqdm import tqdm
            self._bar = tqdm(total=total_rows, desc=phase, unit="row", dynamic_ncols=True)

    def update(self, rows: int, images: int = 0, failures: int = 0) -> None:
        """Records one finished unit of `rows` input rows, `images` images, `failures` failed rows."""
        self.units += 1
        self.rows += rows
        self.images += images
        self.failures += failures
        if not self.enabled:
            return
        if self._bar is not None:
            self._bar.update(rows)
            self._bar.set_postfix(images=self.images, failed=self.failures, units=f"{self.units}/{self.total_units}")
        elif time.time() - self.last >= self.log_every_s or self.units == self.total_units:
            self.last = time.time()
            print(self.line(), file=sys.stderr, flush=True)

    def line(self) -> str:
        el = max(time.time() - self.t0, 1e-6)
        rate = self.rows / el
        left = (self.total_rows - self.rows) / rate if rate > 0 else float("nan")
        return (f"[{self.phase}] units {self.units}/{self.total_units}  rows {self.rows}/{self.total_rows}  "
                f"images {self.images}  failed {self.failures}  {rate:.0f} rows/s  "
                f"{self.images / el:.1f} images/s  ETA {left:.0f} s")

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
        if self.enabled:
            print(f"[{self.phase}] done in {time.time() - self.t0:.1f} s", file=sys.stderr, flush=True)


class RunTimes:
    """The run's time breakdown: the driver's phases (wall seconds; CPU seconds of the driver's process
    tree, local Ray included) and the units' phases summed over the units this run processed (wall and
    CPU seconds inside the tasks; download.* sub-phases are per-row work: thread-seconds and thread CPU)."""

    def __init__(self):
        self.run = Phases(TreeCpu())
        self.units: dict[str, dict] = {}
        self.units_timed = 0

    def add_unit(self, stats: UnitStats | None) -> None:
        """Adds one finished unit's stats (process_unit / retry_unit); None (nothing retried) adds nothing."""
        if not stats:
            return
        merge(self.units, stats.timings or {})
        merge(self.units, {f"download.{k}": v for k, v in stats.download_timings.items()})
        self.units_timed += 1

    def as_dict(self) -> dict:
        return {"run": self.run.as_dict(), "units": self.units, "units_timed": self.units_timed}

    def write(self, output: str) -> None:
        """<output>/stage/timings.json (replaced by each run or resume)."""
        fs, out = fsutil.get_fs(output)
        fsutil.atomic_write(fs, RunLayout(out).timings, json.dumps(self.as_dict(), indent=1).encode())

    def summary(self) -> str:
        """One line per driver phase and per unit phase: where the run's time went."""
        lines = ["time per phase (wall s / CPU s):"]
        lines += [f"  {k:<22} {v['wall_s']:>9.1f} {v['cpu_s']:>9.1f}" for k, v in self.run.as_dict().items()]
        lines.append(f"  in units, summed over {self.units_timed} (wall or thread s / CPU s):")
        lines += [f"  {k:<22} {v.get('wall_s', v.get('thread_s', 0.0)):>9.1f} {v.get('cpu_s', 0.0):>9.1f}"
                  for k, v in self.units.items()]
        return "\n".join(lines)
