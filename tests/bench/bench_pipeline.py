"""Benchmark: the whole build_shards run with every stage on (language ID, dedup, CLIP, writer, report) and
download-only, against img2dataset download-only on the same list of distinct images, in one run; with the
run's per-phase time breakdown (wall and CPU seconds)."""
from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path

import psutil

from tests.bench import web_corpus
from tests.bench.bench_download import _tree_rss, run_img2dataset
from tests.bench.common import machine_info, ratio, versions, write_result

CLIP_DEMO = Path(__file__).resolve().parents[2] / "pipelines" / "demo_assets" / "clip_demo"  # trained by curate.train
SIZE, QUALITY = 256, 95  # both tools: 256 px keep_ratio, encode quality 95 (img2dataset's default)
BREAKDOWN = (  # (name in the result, where: run = driver phases, units = summed over units, keys summed)
    ("check_dependencies", "run", ("check_dependencies",)), ("ray_start", "run", ("ray_start",)),
    ("plan", "run", ("plan",)), ("verify_units", "run", ("verify_units",)), ("phase_a", "run", ("phase_a",)),
    ("read_unit", "units", ("read",)), ("prefilter", "units", ("prefilter",)),
    ("download", "units", ("download",)), ("fetch", "units", ("download.fetch",)),
    ("sha256", "units", ("download.sha256",)),
    ("decode_resize_encode", "units", ("download.decode_resize_encode",)),
    ("hashing", "units", ("hashing",)), ("scoring_in_units", "units", ("scoring",)),
    ("stage_write", "units", ("stage_write",)), ("scoring_pass", "run", ("scoring_pass",)),
    ("phase_b", "run", ("phase_b_load", "phase_b_dedup", "phase_b_select")),
    ("phase_b_dedup", "run", ("phase_b_dedup",)), ("phase_c_write", "run", ("phase_c_write",)),
    ("report", "run", ("report",)), ("ray_teardown", "run", ("ray_teardown",)),
)


def curate_overrides(urls_path: str, out: str, processes: int, threads: int, timeout: int, unit_rows: int,
                     every_stage: bool) -> dict:
    """The run config: every stage on (language ID over all languages, dedup, CLIP with the demo
    checkpoint, no CLIP threshold so the writer writes every image), or download-only."""
    o = {"input.paths": [urls_path], "output": out, "num_cpus": processes, "progress": False,
         "download.threads": threads, "download.timeout": timeout, "download.allow_private_networks": True,
         "download.per_domain_concurrency": threads, "image.size": SIZE, "image.resize_mode": "keep_ratio",
         "image.quality": QUALITY, "language.enabled": every_stage, "dedup.enabled": every_stage,
         "clip.enabled": every_stage}
    if every_stage:
        o.update({"clip.model": str(CLIP_DEMO / "open_clip_config.json"), "clip.pretrained": str(CLIP_DEMO),
                  "clip.device": "cpu"})
    if unit_rows:
        o["input.unit_size"] = unit_rows
    return o


def _run_curate(urls_path, out_dir, processes, threads, timeout, unit_rows, every_stage, result) -> None:
    import pyarrow.parquet as pq

    from curate.config import load_config
    from curate.schema import COL
    from pipelines.build_shards import run

    out = Path(out_dir) / "run"
    manifest = run(load_config(None, curate_overrides(urls_path, str(out), processes, threads, timeout,
                                                      unit_rows, every_stage)))
    ledger = pq.read_table(out / "metadata" / "ledger", columns=[COL.WIDTH])
    plan = json.loads((out / "_input" / "plan.json").read_text())
    result.send({"ok": int(ledger.num_rows - ledger[COL.WIDTH].null_count), "written": manifest["written_samples"],
                 "counts": manifest["counts"], "units": len(plan["units"]), "unit_rows": plan.get("unit_rows"),
                 "timings": json.loads((out / "stage" / "timings.json").read_text())})


def run_every_stage(urls_path, out_dir, processes, threads, size, quality, timeout, unit_rows, result) -> None:
    """Child process (bench_download.measure): the whole run, every stage on."""
    _run_curate(urls_path, out_dir, processes, threads, timeout, unit_rows, True, result)


def run_download_only(urls_path, out_dir, processes, threads, size, quality, timeout, unit_rows, result) -> None:
    """Child process: the whole run with --no-clip --no-dedup and language off (writer and report stay)."""
    _run_curate(urls_path, out_dir, processes, threads, timeout, unit_rows, False, result)


def measure(target, *args) -> dict:
    """Runs target(*args, conn) in a fresh spawned process: wall time, and peak RSS and CPU seconds of its
    whole process tree, sampled every 0.2 s with psutil (local Ray runs in its own session under a
    launcher, so the children's rusage would miss its workers; an exited process keeps its last reading)."""
    from curate.timing import TreeCpu

    ctx = mp.get_context("spawn")
    recv, send = ctx.Pipe(duplex=False)
    t0 = time.monotonic()
    proc = ctx.Process(target=target, args=(*args, send))
    proc.start()
    ps, cpu = psutil.Process(proc.pid), TreeCpu()
    peak, stop = [0], threading.Event()

    def sample():
        while not stop.is_set():
            peak[0] = max(peak[0], _tree_rss(ps))
            cpu.sample(ps)
            stop.wait(0.2)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    send.close()  # ours: so recv() sees EOF if the child dies without answering
    try:
        out = recv.recv()
    except EOFError:
        raise RuntimeError(f"{target.__name__} died with exit code {proc.join() or proc.exitcode}") from None
    proc.join()
    wall = time.monotonic() - t0
    stop.set()
    sampler.join()
    cpu_s = sum(cpu.seen.values())
    return {**out, "wall_s": round(wall, 2), "peak_rss_mb": round(peak[0] / 2**20, 1),
            "images_per_s": round(out["ok"] / wall, 1), "cpu_s": round(cpu_s, 1),
            "cpu_ms_per_image": round(1000 * cpu_s / max(out["ok"], 1), 2)}


def breakdown(timings: dict) -> dict:
    """The issue's phases as {name: {"wall_s", "cpu_s"}} from stage/timings.json (missing phases left out).
    Unit phases: wall_s summed over units (several run at once), download sub-phases: thread_s."""
    out = {}
    for name, where, keys in BREAKDOWN:
        found = [timings[where][k] for k in keys if k in timings[where]]
        if found:
            out[name] = {f: round(sum(t.get(f, 0.0) for t in found), 2) for f in found[0]}
    return out


def _warm_page_cache(corpus_dir: Path) -> None:
    """Reads every image once, so no tool pays for cold disk reads the other does not."""
    for p in corpus_dir.iterdir():
        p.read_bytes()


def run_tools(urls: Path, work: Path, args) -> dict:
    """Each configuration in turn, in a fresh process; img2dataset between the two curate runs."""
    common = (args.processes, args.threads, SIZE, QUALITY, args.timeout)
    # img2dataset: its default shard of 10,000 rows, smaller when that would leave a process without a shard
    shard = args.unit_rows or min(10_000, -(-args.rows // args.processes))
    tools = (("curate_every_stage", run_every_stage, args.unit_rows),
             ("img2dataset", run_img2dataset, shard),
             ("curate_download_only", run_download_only, args.unit_rows))
    res = {}
    for name, fn, unit_rows in tools:
        out = work / name
        out.mkdir()
        res[name] = measure(fn, str(urls), str(out), *common, unit_rows)
        shown = {k: v for k, v in res[name].items() if k != "timings"}
        print(f"{name}: {json.dumps(shown)}", flush=True)
        shutil.rmtree(out, ignore_errors=True)  # the next tool's page cache and disk are not crowded
    return res


def summarise(args, corpus_info: dict, res: dict, seconds: float) -> dict:
    c, i, d = res["curate_every_stage"], res["img2dataset"], res["curate_download_only"]
    for r in (c, d):
        r["breakdown"] = breakdown(r.pop("timings"))
    return {
        "rows": args.rows, "quick": args.quick, "corpus": corpus_info, "processes": args.processes,
        "threads": args.threads, "image_size": SIZE, "resize_mode": "keep_ratio", "encode_quality": QUALITY,
        "timeout_s": args.timeout, "bench_seconds": round(seconds, 1),
        "curate_every_stage": c, "img2dataset": i, "curate_download_only": d,
        "images_per_s_ratio": ratio(c["images_per_s"], i["images_per_s"], 3),
        "peak_rss_ratio": ratio(c["peak_rss_mb"], i["peak_rss_mb"], 3),
        "download_only_images_per_s_ratio": ratio(d["images_per_s"], i["images_per_s"], 3),
        "download_only_peak_rss_ratio": ratio(d["peak_rss_mb"], i["peak_rss_mb"], 3),
        "versions": versions("img2dataset", "ray", "open_clip_torch", "torch", "pillow", "langdetect"),
        "notes": (
            "distinct generated images (tests/bench/web_corpus.py: lognormal longest side, JPEG/PNG/WebP) served "
            "from disk by a threaded server in its own process on 127.0.0.1, page cache warmed; real multilingual "
            "captions (tests/data/captions_multilingual.jsonl, 17 languages). curate_every_stage = plan + text "
            "rules + language ID (langdetect, all languages kept) + download/decode/resize/encode + pHash/dHash + "
            "CLIP scoring (the demo's curate.train checkpoint on CPU, called by the download tasks, run by a shared "
            "scorer actor) + dedup + "
            "selection + shard writing + report, default unit_size (the planner cuts small inputs so each CPU "
            "has two units); curate_download_only = the same run with language ID, dedup and CLIP off; "
            "img2dataset = download + resize + webdataset write only, shards of 10,000 rows (its default) or "
            "rows / processes if smaller. images_per_s "
            "= images downloaded and decoded / wall time of the tool's whole process (Ray start and teardown "
            "included); peak RSS summed over each tool's process tree. breakdown: driver phases (wall, CPU of "
            "the driver's process tree) and unit phases summed over units (wall = task-seconds, CPU of the "
            "worker); fetch / sha256 / decode_resize_encode are per-row work summed over rows (thread_s, and "
            "the CPU of the threads that did it)"),
    }


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--rows", type=int, default=20_000, help="distinct images in the URL list")
    ap.add_argument("--quick", action="store_true",
                    help="2,000 rows (unless --rows), result to a temp file, not tests/bench/results")
    ap.add_argument("--processes", type=int, default=2)
    ap.add_argument("--threads", type=int, default=32)
    ap.add_argument("--timeout", type=int, default=5, help="seconds, every tool")
    ap.add_argument("--unit-rows", type=int, default=0,
                    help="curate input.unit_size and img2dataset shard size (0: each tool's default)")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    if args.quick and "--rows" not in (argv if argv is not None else sys.argv[1:]):
        args.rows = 2_000
    t0 = time.time()
    corpus = web_corpus.ensure_corpus(args.rows, args.seed, processes=args.processes)
    info = web_corpus.describe(corpus, args.seed)
    print(f"corpus: {json.dumps(info)} ({time.time() - t0:.0f} s)", flush=True)
    _warm_page_cache(web_corpus.cache_dir(args.seed))
    server, base = web_corpus.start_disk_server(args.seed)
    work = Path(tempfile.mkdtemp(prefix="curate-bench-pipe-"))
    try:
        urls = work / "urls.parquet"
        web_corpus.write_url_list(urls, base, corpus, args.seed)
        res = run_tools(urls, work, args)
    finally:
        server.kill()
        shutil.rmtree(work, ignore_errors=True)
    result = summarise(args, info, res, time.time() - t0)
    _print_summary(result)
    if args.quick:
        path = Path(tempfile.gettempdir()) / "curate-bench-pipeline-quick.json"
        path.write_text(json.dumps({"benchmark": "pipeline (quick)", "machine": machine_info(), **result}, indent=2))
        print(f"wrote {path}")
    else:
        write_result("pipeline", result)
    return result


def _print_summary(r: dict) -> None:
    c, i, d = r["curate_every_stage"], r["img2dataset"], r["curate_download_only"]
    print(f"every stage {c['images_per_s']} images/s, download-only {d['images_per_s']}, img2dataset "
          f"{i['images_per_s']}: ratios {r['images_per_s_ratio']} / {r['download_only_images_per_s_ratio']}; "
          f"peak RSS {c['peak_rss_mb']} / {d['peak_rss_mb']} vs {i['peak_rss_mb']} MB "
          f"(ratios {r['peak_rss_ratio']} / {r['download_only_peak_rss_ratio']})")
    print("breakdown of the every-stage run (wall s, CPU s):")
    for name, t in c["breakdown"].items():
        print(f"  {name:<22} {t.get('wall_s', t.get('thread_s', 0.0)):>9.1f} {t.get('cpu_s', 0.0):>9.1f}")


if __name__ == "__main__":
    main(sys.argv[1:])
