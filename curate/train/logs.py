"""Training logs: a progress line, metrics CSV files, and TensorBoard when it is installed."""
from __future__ import annotations

import csv
import logging
from pathlib import Path

log = logging.getLogger("curate.train")


class MetricsLog:
    """Appends rows to <output>/<name>.csv (header from the first row) and mirrors them to TensorBoard."""

    def __init__(self, output: str | Path, enabled: bool = True):
        self.output, self.enabled = Path(output), enabled
        self.tb = None
        if enabled:
            try:
                from torch.utils.tensorboard import SummaryWriter
                self.tb = SummaryWriter(str(self.output / "tensorboard"))
            except ImportError:  # TensorBoard is optional
                self.tb = None

    def write(self, name: str, row: dict) -> None:
        if not self.enabled:
            return
        path = self.output / f"{name}.csv"
        new = not path.exists()
        with path.open("a", newline="") as f:
            w = csv.DictWriter(f, fieldnames=list(row), extrasaction="ignore")
            if new:
                w.writeheader()
            w.writerow(row)
        if self.tb is not None:
            for k, v in row.items():
                if k != "step" and isinstance(v, (int, float)):
                    self.tb.add_scalar(f"{name}/{k}", v, row["step"])

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()


def progress_line(step: int, total: int, sps: float, loss: float, lr: float, scale: float, skipped: int) -> str:
    return (f"step {step}/{total} | {sps:,.1f} samples/s | loss {loss:.4f} | lr {lr:.3e} | "
            f"temperature {1 / scale:.4f} (scale {scale:.2f}) | skipped {skipped}")
