"""A/B benchmark: curate's download stage in an earlier checkout (`--before`, e.g. a `git worktree` of the last
landed commit) against this checkout, on the same URL list, alternating runs; adds the figures to
tests/bench/results/download.json under `before_after` (the "no slowdown over 5%" check of a change)."""
from __future__ import annotations

import argparse
import datetime as _dt
import json
import subprocess
import sys
from pathlib import Path

from tests.bench.common import RESULTS, machine_info, ratio

ROOT = Path(__file__).resolve().parents[2]
# Runs in the checkout under test (its cwd comes first on sys.path): the same pool, server and run_curate as
# bench_download, so both sides do exactly what the download benchmark measures.
_CHILD = r"""
import json, shutil, tempfile
from pathlib import Path
import numpy as np
from tests.bench import bench_download as b
pool = b.make_pool({pool})
server, port = b.start_server(pool, slow_seconds=15, drip_seconds=60, endless_bytes=200 * 2**20)
ks = np.random.default_rng(1).integers(0, len(pool), {rows})
urls = [f"http://127.0.0.1:{{port}}/pool/{{i}}/{{k}}.{{pool[k][0]}}" for i, k in enumerate(ks)]
work = Path(tempfile.mkdtemp(prefix="curate-ab-"))
try:
    b.write_url_list(work / "u.parquet", urls)
    (work / "o").mkdir()
    print("RESULT " + json.dumps(b.measure(b.run_curate, str(work / "u.parquet"), str(work / "o"), 2, 32, 256, 95, 10, 1000)))
finally:
    server.kill()
    shutil.rmtree(work, ignore_errors=True)
"""


def _one(tree: str, rows: int, pool: int) -> dict:
    out = subprocess.run([sys.executable, "-c", _CHILD.format(rows=rows, pool=pool)], cwd=tree,
                         capture_output=True, text=True)
    line = next((ln for ln in out.stdout.splitlines() if ln.startswith("RESULT ")), None)
    if line is None:
        raise RuntimeError(f"run in {tree} failed: {out.stderr[-2000:]}")
    return json.loads(line[len("RESULT "):])


def _total(runs: list[dict]) -> dict:
    ok, wall, cpu = (sum(r[k] for r in runs) for k in ("ok", "wall_s", "cpu_s"))
    return {"images_per_s": round(ok / wall, 1), "cpu_ms_per_image": round(1000 * cpu / ok, 2),
            "peak_rss_mb": max(r["peak_rss_mb"] for r in runs), "runs": len(runs), "ok": ok}


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--before", required=True, help="checkout of the earlier code (e.g. git worktree add /tmp/b HEAD~3)")
    ap.add_argument("--rows", type=int, default=10_000)
    ap.add_argument("--pool", type=int, default=300)
    ap.add_argument("--repeat", type=int, default=4, help="runs per side, alternating which goes first")
    args = ap.parse_args(argv)
    trees = {"before": args.before, "after": str(ROOT)}
    runs: dict[str, list] = {k: [] for k in trees}
    for r in range(args.repeat):
        for side in (list(trees) if r % 2 == 0 else list(trees)[::-1]):
            runs[side].append(_one(trees[side], args.rows, args.pool))
            print(side, json.dumps(runs[side][-1]), flush=True)
    b, a = _total(runs["before"]), _total(runs["after"])
    rev = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=args.before, capture_output=True, text=True)
    res = {"date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"), "machine": machine_info(),
           "before_commit": rev.stdout.strip() or None, "rows": args.rows, "distinct_images": args.pool,
           "before": b, "after": a, "images_per_s_ratio_after_vs_before": ratio(a["images_per_s"], b["images_per_s"]),
           "cpu_per_image_ratio_after_vs_before": ratio(a["cpu_ms_per_image"], b["cpu_ms_per_image"])}
    path = RESULTS / "download.json"
    doc = json.loads(path.read_text())
    doc["before_after"] = res
    path.write_text(json.dumps(doc, indent=2) + "\n")
    print(json.dumps(res))
    return res


if __name__ == "__main__":
    main()
