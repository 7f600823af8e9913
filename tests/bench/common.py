"""Shared helpers for benchmarks: machine facts, package versions, peak memory, result files."""
from __future__ import annotations

import datetime as _dt
import json
import os
import platform
import resource
from importlib import metadata
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"


def machine_info() -> dict:
    """Platform, CPU count and memory of this machine."""
    mem_gb = None
    try:
        with open("/proc/meminfo") as f:
            mem_gb = round(int(f.readline().split()[1]) / 1024**2, 1)
    except OSError:
        pass
    return {"platform": platform.platform(), "processor": platform.machine(),
            "cpu_count": os.cpu_count(), "mem_gb": mem_gb, "python": platform.python_version()}


def versions(*pkgs: str) -> dict:
    """Installed versions of the named distributions (None when missing)."""
    out = {}
    for p in ("curate", *pkgs):
        try:
            out[p] = metadata.version(p)
        except metadata.PackageNotFoundError:
            out[p] = None
    return out


def ratio(ours: float, peer: float, digits: int = 3) -> float:
    """ours / peer, rounded for a result file (a zero peer figure gives a huge ratio, not a crash)."""
    return round(ours / max(peer, 1e-9), digits)


def peak_rss_mb(children: bool = False) -> float:
    """Peak resident memory of this process (or of its waited-for children) in MiB."""
    who = resource.RUSAGE_CHILDREN if children else resource.RUSAGE_SELF
    return round(resource.getrusage(who).ru_maxrss / 1024, 1)


def write_result(name: str, result: dict, keep: tuple[str, ...] = ()) -> Path:
    """Writes tests/bench/results/<name>.json with machine, date and the figures; returns the path. Keys in
    `keep` that another benchmark adds to the same file carry over from the file as it was."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{name}.json"
    old = json.loads(path.read_text()) if keep and path.exists() else {}
    doc = {"benchmark": name, "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
           "machine": machine_info(), **result, **{k: old[k] for k in keep if k in old}}
    path.write_text(json.dumps(doc, indent=2, sort_keys=False, default=str) + "\n")
    print(f"wrote {path}")
    return path
