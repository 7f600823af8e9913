"""Where the pipeline benchmark's peak memory sits: per-role RSS (and USS/PSS) of the run's process tree over time.

Runs bench_pipeline's every-stage configuration (or download-only) once on a small list and samples every
process of its tree by role (driver, Ray launcher, gcs_server, raylet, Ray's agents, Ray workers idle or busy,
the CLIP check child); reports the composition at the peak of the summed RSS (what bench_pipeline measures).
`--env K=V` sets an environment variable for the run (it reaches Ray's processes through the launcher);
`--record LABEL` adds the summary to tests/bench/results/pipeline_memory.json under that label.

    python -m tests.bench.mem_profile --rows 4000 [--download-only] [--env MALLOC_ARENA_MAX=2] [--record base]
"""
from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path

import psutil

from curate.timing import TreeCpu
from tests.bench import web_corpus
from tests.bench.bench_pipeline import _warm_page_cache, run_download_only, run_every_stage
from tests.bench.common import RESULTS, write_result

MB = 2**20
RAY_AGENTS = {"DashboardAgent": "dashboard_agent", "RuntimeEnvAgent": "runtime_env_agent"}
RSS_EVERY_S = 0.2   # bench_pipeline's sampling interval
FULL_EVERY_S = 1.0  # USS/PSS read /proc/PID/smaps: slower, so less often
RAY_SCRIPTS = (("ray_start.py", "ray_launcher"), ("dashboard/agent.py", "dashboard_agent"),
               ("runtime_env/agent", "runtime_env_agent"), ("log_monitor.py", "log_monitor"),
               ("monitor.py", "monitor"), ("dashboard.py", "dashboard"), ("curate-clip-load-error", "clip_check"))


def role(p: psutil.Process, driver_pid: int) -> str:
    """The process's job in the run, from its name and command line (Ray workers retitle themselves)."""
    if p.pid == driver_pid:
        return "driver"
    name, cmd = p.name(), p.cmdline()
    if name in ("gcs_server", "raylet"):
        return name
    if cmd and cmd[0].startswith("ray::"):
        title = cmd[0].split()[0][5:]
        if title in RAY_AGENTS:  # Ray's agents retitle themselves like workers
            return RAY_AGENTS[title]
        return "worker_idle" if title == "IDLE" else f"worker_busy:{title}"
    line = " ".join(cmd)
    for needle, r in RAY_SCRIPTS:
        if needle in line:
            return r
    return "worker_starting" if "default_worker.py" in line else f"other:{name}"


class Sampler:
    """Samples the tree under `root`; keeps the peak of summed RSS with its per-process composition, the peak
    summed PSS/USS, the peak per role, and a coarse timeline."""

    def __init__(self, root: psutil.Process):
        self.root, self.t0 = root, time.monotonic()
        self.peak_rss, self.peak_at, self.peak_procs = 0, 0.0, []
        self.peak_pss = self.peak_uss = 0
        self.role_peak: dict[str, int] = {}
        self.timeline: list[dict] = []

    def sample(self, full: bool) -> None:
        try:
            procs = [self.root, *self.root.children(recursive=True)]
        except psutil.Error:
            return
        rows = []
        for p in procs:
            try:
                with p.oneshot():
                    r = role(p, self.root.pid)
                    row = {"pid": p.pid, "role": r, "rss": p.memory_info().rss}
                if full:
                    fi = p.memory_full_info()
                    row.update(uss=fi.uss, pss=fi.pss)
                rows.append(row)
            except psutil.Error:
                pass
        self._account(rows, full)

    def _account(self, rows: list[dict], full: bool) -> None:
        t = round(time.monotonic() - self.t0, 1)
        total = sum(r["rss"] for r in rows)
        by_role: dict[str, int] = {}
        for r in rows:
            key = r["role"].split(":")[0]
            by_role[key] = by_role.get(key, 0) + r["rss"]
        for k, v in by_role.items():
            self.role_peak[k] = max(self.role_peak.get(k, 0), v)
        if total > self.peak_rss:
            self.peak_rss, self.peak_at, self.peak_procs = total, t, rows
        if full:
            self.peak_pss = max(self.peak_pss, sum(r["pss"] for r in rows))
            self.peak_uss = max(self.peak_uss, sum(r["uss"] for r in rows))
            self.timeline.append({"t": t, "rss_mb": round(total / MB), **{k: round(v / MB) for k, v in by_role.items()}})

    def summary(self) -> dict:
        procs = sorted(self.peak_procs, key=lambda r: -r["rss"])
        return {"peak_rss_mb": round(self.peak_rss / MB, 1), "peak_at_s": self.peak_at,
                "peak_pss_mb": round(self.peak_pss / MB, 1), "peak_uss_mb": round(self.peak_uss / MB, 1),
                "at_peak": [{"role": r["role"], "rss_mb": round(r["rss"] / MB, 1)} for r in procs],
                "role_peaks_mb": {k: round(v / MB, 1) for k, v in sorted(self.role_peak.items(), key=lambda kv: -kv[1])},
                "timeline": self.timeline}


def profile(target, urls: str, out_dir: str, args) -> dict:
    """Runs target (bench_pipeline's child body) in a spawned process while sampling its tree."""
    ctx = mp.get_context("spawn")
    recv, send = ctx.Pipe(duplex=False)
    t0 = time.monotonic()
    proc = ctx.Process(target=target, args=(urls, out_dir, args.processes, args.threads, 256, 95, args.timeout,
                                            args.unit_rows, send))
    proc.start()
    smp, stop, cpu = Sampler(psutil.Process(proc.pid)), threading.Event(), TreeCpu()

    def loop():
        last_full = 0.0
        while not stop.is_set():
            now = time.monotonic()
            full = now - last_full >= FULL_EVERY_S
            smp.sample(full)
            cpu.sample(smp.root)
            last_full = now if full else last_full
            stop.wait(RSS_EVERY_S)

    th = threading.Thread(target=loop, daemon=True)
    th.start()
    send.close()
    try:
        out = recv.recv()
    except EOFError:
        raise RuntimeError(f"run died with exit code {proc.join() or proc.exitcode}") from None
    proc.join()
    stop.set()
    th.join()
    return {"wall_s": round(time.monotonic() - t0, 1), "cpu_s": round(sum(cpu.seen.values()), 1), "ok": out["ok"],
            "written": out["written"], "units": out["units"], **smp.summary()}


def _record(label: str, args, res: dict) -> None:
    path = RESULTS / "pipeline_memory.json"
    doc = json.loads(path.read_text()) if path.exists() else {}
    options = doc.get("options", {})
    options[label] = {"rows": args.rows, "env": args.env, "download_only": args.download_only,
                      **{k: v for k, v in res.items() if k != "timeline"}}
    keep = {k: v for k, v in doc.items() if k not in ("benchmark", "date", "machine", "options")}
    write_result("pipeline_memory", {**keep, "options": options})


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=4000)
    ap.add_argument("--processes", type=int, default=2)
    ap.add_argument("--threads", type=int, default=32)
    ap.add_argument("--timeout", type=int, default=5)
    ap.add_argument("--unit-rows", type=int, default=0)
    ap.add_argument("--download-only", action="store_true")
    ap.add_argument("--env", action="append", default=[], help="K=V for the run's processes (repeatable)")
    ap.add_argument("--record", default="", help="label: add the summary to results/pipeline_memory.json")
    ap.add_argument("--json", default="", help="also write the full summary (with timeline) here")
    args = ap.parse_args(argv)
    os.environ.update(dict(kv.split("=", 1) for kv in args.env))  # a spawned child and Ray inherit them
    corpus = web_corpus.ensure_corpus(args.rows, 0, processes=args.processes)
    _warm_page_cache(web_corpus.cache_dir(0))
    server, base = web_corpus.start_disk_server(0)
    work = Path(tempfile.mkdtemp(prefix="curate-mem-profile-"))
    try:
        urls = work / "urls.parquet"
        web_corpus.write_url_list(urls, base, corpus, 0)
        (work / "run").mkdir()
        res = profile(run_download_only if args.download_only else run_every_stage, str(urls), str(work / "run"), args)
    finally:
        server.kill()
        shutil.rmtree(work, ignore_errors=True)
    res["load_avg_1m"] = round(os.getloadavg()[0], 2)
    print(json.dumps({k: v for k, v in res.items() if k != "timeline"}, indent=1))
    if args.json:
        Path(args.json).write_text(json.dumps(res, indent=1))
    if args.record:
        _record(args.record, args, res)
    return res


if __name__ == "__main__":
    main(sys.argv[1:])
