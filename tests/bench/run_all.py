"""Runs every benchmark under tests/bench/ in turn (make bench); each writes tests/bench/results/<name>.json."""
from __future__ import annotations

import importlib
import sys
import time

BENCHES = ["bench_language", "bench_download", "bench_dedup", "bench_scoring", "bench_select",
           "bench_train", "bench_pipeline", "bench_quality"]


def main(argv=None) -> int:
    names = (argv if argv is not None else sys.argv[1:]) or BENCHES
    failed = []
    for name in names:
        print(f"=== {name} ===", flush=True)
        t0 = time.time()
        try:
            mod = importlib.import_module(f"tests.bench.{name}")
            mod.main([])
        except Exception as e:  # one broken benchmark must not hide the others' figures
            print(f"{name} FAILED: {e!r}", flush=True)
            failed.append(name)
        print(f"=== {name}: {time.time() - t0:.0f} s ===", flush=True)
    if failed:
        print("failed:", ", ".join(failed))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
