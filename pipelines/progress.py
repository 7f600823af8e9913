"""Progress of a phase: a bar on a terminal, periodic log lines otherwise (rows, images, rate, ETA, failures)."""
from __future__ import annotations

import sys
import time


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
