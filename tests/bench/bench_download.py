"""Benchmark: curate's download stage vs img2dataset on the same 127.0.0.1 URL lists: distinct images served
from disk (the headline: images/s, peak RSS, CPU per image), a repeated pool, a fault list, the opt-out checks."""
from __future__ import annotations

import argparse
import io
import json
import math
import multiprocessing as mp
import os
import resource
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import psutil
import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image

from tests.bench import web_corpus
from tests.bench.common import ratio, versions, write_result
from tests.fault_server import FAULT_ROUTES, Route, serve_forever

CTYPES = {"jpg": "image/jpeg", "png": "image/png", "webp": "image/webp"}
POOL_VERSION = 1
OPTOUT_HOSTS = "optout_hosts.parquet"  # the host table of the opt-out figure's runs, in their output folder
QUICK_ROWS = 1_500
QUICK_OUT = Path(tempfile.gettempdir()) / "curate-bench-download-quick.json"
# figures written by other runs that carry their own date: a rewrite of the result file keeps them
CARRIED = ("before_after", "optout", "optout_checks_images_per_s_ratio", "optout_checks_cpu_per_image_ratio")
NOTES = ("headline (curate, img2dataset, images_per_s_ratio, peak_rss_ratio, cpu_per_image_ratio): --rows distinct "
         "images of tests/bench/web_corpus.py (lognormal longest side, JPEG/PNG/WebP: see corpus), cached on disk "
         "and served from disk (page cache warmed) by a threaded server in its own process on 127.0.0.1 (it "
         "shares the machine's cores); repeated_pool (secondary, flattering): the same number of rows repeating "
         "--pool images served from memory by tests/fault_server.py; the fault list and the opt-out figure use "
         "tests/fault_server.py too. peak RSS = max over 0.2 s samples of the summed RSS of each tool's process "
         "tree; curate: spawn Pool(processes) over units, download_stage + stage_io.write_unit; "
         "img2dataset: multiprocessing distributor, webdataset output, retries=0 (its default), "
         "curate retries=2 (its default); both timeout --timeout; img2dataset opens a connection per request, "
         "curate reuses them; images/s over `repeat` alternating runs; cpu_ms_per_image (CPU of each "
         "tool's process tree) is the figure least distorted by a shared, busy machine")
# what each of the opt-out figure's origins serves: rules every row is matched against, none of which drops an
# image of the list (/pool/...), so both runs write the same images and only the checks' cost differs
BENCH_ROBOTS = b"User-agent: *\nDisallow: /private/\nAllow: /pool/\n\nUser-agent: CCBot\nDisallow: /*.gif$\n"
BENCH_TDMREP = b'[{"location": "/reserved/*", "tdm-reservation": 1}, {"location": "/*", "tdm-reservation": 0}]'


# ---------------------------------------------------------------- inputs

def _photo_like(rng: np.random.Generator, w: int, h: int) -> Image.Image:
    """Smooth random colour field plus grain: compresses like a photo (about 2-3 bits/pixel at q90)."""
    small = Image.fromarray(rng.integers(0, 256, (6, 8, 3), dtype=np.uint8))
    arr = np.asarray(small.resize((w, h), Image.Resampling.BICUBIC), dtype=np.int16)
    arr = arr + rng.integers(-10, 11, (h, w, 1), dtype=np.int16)  # luminance grain: texture for the encoder
    return Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8))


def make_pool(n: int, seed: int = 0) -> list[tuple[str, bytes]]:
    """n distinct images (ext, bytes): longest side log-uniform in 64..2000 px, 85% JPEG, 10% PNG, 5% WebP.

    Cached in the temp dir: generating the large ones takes a while on a busy machine.
    """
    cache = Path(tempfile.gettempdir()) / f"curate-bench-pool-v{POOL_VERSION}-{n}-{seed}"
    if cache.is_dir() and len(list(cache.iterdir())) == n:
        files = sorted(cache.iterdir(), key=lambda p: int(p.stem))
        return [(p.suffix[1:], p.read_bytes()) for p in files]
    rng = np.random.default_rng(seed)
    tmp = cache.with_suffix(".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    out = []
    for k in range(n):
        longest = int(math.exp(rng.uniform(math.log(64), math.log(2000))))
        aspect = rng.uniform(0.5, 2.0)
        w, h = (longest, max(16, int(longest / aspect))) if aspect >= 1 else (max(16, int(longest * aspect)), longest)
        ext = rng.choice(["jpg"] * 17 + ["png"] * 2 + ["webp"])
        im = _photo_like(rng, w, h)
        buf = io.BytesIO()
        im.save(buf, {"jpg": "JPEG", "png": "PNG", "webp": "WEBP"}[ext], **({"quality": 90} if ext != "png" else {}))
        (tmp / f"{k}.{ext}").write_bytes(buf.getvalue())
        out.append((str(ext), buf.getvalue()))
    shutil.rmtree(cache, ignore_errors=True)
    tmp.rename(cache)
    return out


def write_url_list(path: Path, urls: list[str]) -> None:
    pq.write_table(pa.table({"url": urls, "caption": [f"an image number {i}" for i in range(len(urls))]}), path)


# ---------------------------------------------------------------- the two tools (each run in a child process)

def _curate_unit(job: tuple) -> dict:
    from curate import stage_io
    from curate.config import ImageConfig
    from curate.download import download_stage
    from curate.schema import COL, Status

    urls_path, out_dir, unit_id, start, length, threads, size, quality, timeout, optout = job
    src = pq.read_table(urls_path).slice(start, length)
    n = src.num_rows
    table = pa.table({
        COL.UID: [f"{start + i:012d}" for i in range(n)], COL.UNIT_ID: pa.array([unit_id] * n, pa.int32()),
        COL.SOURCE_FILE: [urls_path] * n, COL.ROW_INDEX: pa.array(range(start, start + n), pa.int64()),
        COL.URL: src["url"], COL.CAPTION: src["caption"], COL.STATUS: [Status.OK] * n})
    dl = _download_config(threads, timeout, optout)
    if optout is not None:  # the opt-out figure: phase A's recipe from the opt-out stage on
        from curate.optout.stage import OptOutStage
        table = OptOutStage(dl, str(Path(out_dir) / OPTOUT_HOSTS))(table)
    table, stats = download_stage(table, dl, ImageConfig(size=size, resize_mode="keep_ratio", quality=quality))
    images = [(f"{u}.{f}", b) for u, f, b in zip(table[COL.UID].to_pylist(), table[COL.IMAGE_FORMAT].to_pylist(),
                                                    table[COL.IMAGE].to_pylist()) if b is not None]
    stage_io.write_unit(out_dir, unit_id, table.drop_columns([COL.IMAGE]), images, stats)
    return {"ok": len(images), "reasons": stats["download_reason_counts"]}


def _download_config(threads: int, timeout: int, optout: str | None):
    """The benchmark's DownloadConfig; optout "off" switches every opt-out signal off, "on" (and None, the
    comparison with img2dataset) keeps the defaults (all on)."""
    from curate.config import DownloadConfig, OptOutConfig

    off = OptOutConfig(robots_txt=False, tdmrep=False, headers=False, embedded=False)
    return DownloadConfig(threads=threads, timeout=timeout, per_domain_concurrency=threads,
                          allow_private_networks=True, **({"optout": off} if optout == "off" else {}))


def _optout_prepass(urls_path: str, out_dir: str, threads: int, timeout: int) -> None:
    """The driver's pre-pass as the pipeline runs it (pipelines/optout_hosts.py): the origins' robots.txt and
    tdmrep.json, fetched once, into the host table the units' opt-out stages read."""
    from curate.optout.hosts import fetch_host_policies, origin_of
    from curate.stage_io import parquet_bytes

    urls = pq.read_table(urls_path, columns=["url"])["url"].unique().to_pylist()
    origins = sorted({origin_of(u) for u in urls} - {None})
    table = fetch_host_policies(origins, _download_config(threads, timeout, "on"))
    (Path(out_dir) / OPTOUT_HOSTS).write_bytes(parquet_bytes(table))


def run_curate(urls_path: str, out_dir: str, processes: int, threads: int, size: int, quality: int,
               timeout: int, unit_rows: int, result, optout: str | None = None) -> None:
    n = pq.read_metadata(urls_path).num_rows
    if optout == "on":
        _optout_prepass(urls_path, out_dir, threads, timeout)
    jobs = [(urls_path, out_dir, u, s, min(unit_rows, n - s), threads, size, quality, timeout, optout)
            for u, s in enumerate(range(0, n, unit_rows))]
    with mp.get_context("spawn").Pool(processes) as pool:
        stats = pool.map(_curate_unit, jobs, chunksize=1)
    reasons: dict = {}
    for s in stats:
        for k, v in s["reasons"].items():
            reasons[k] = reasons.get(k, 0) + v
    result.send({"ok": sum(s["ok"] for s in stats), "reasons": reasons})


def run_curate_checks_on(*args) -> None:
    """curate with the opt-out checks on: the host pre-pass, the opt-out stage, header and metadata checks."""
    run_curate(*args, optout="on")


def run_curate_checks_off(*args) -> None:
    """curate with every opt-out signal off (the same recipe: the opt-out stage then only writes empty lists)."""
    run_curate(*args, optout="off")


def run_img2dataset(urls_path: str, out_dir: str, processes: int, threads: int, size: int, quality: int,
                    timeout: int, unit_rows: int, result) -> None:
    os.environ["NO_ALBUMENTATIONS_UPDATE"] = "1"  # its import-time version check would try the network
    from img2dataset import download

    sys.stdout = open(os.devnull, "w")  # its per-shard progress lines would drown the report
    download(url_list=urls_path, input_format="parquet", url_col="url", caption_col="caption",
             output_folder=out_dir, processes_count=processes, thread_count=threads, image_size=size,
             resize_mode="keep_ratio", encode_quality=quality, output_format="webdataset",
             number_sample_per_shard=unit_rows, timeout=timeout, retries=0, enable_wandb=False)
    ok, reasons = 0, {}
    for p in Path(out_dir).glob("*_stats.json"):
        st = json.loads(p.read_text())
        ok += st.get("successes", 0)
        for k, v in (st.get("status_dict") or {}).items():
            reasons[k[:60]] = reasons.get(k[:60], 0) + v
    result.send({"ok": ok, "reasons": reasons})


def _tree_rss(proc: psutil.Process) -> int:
    total = 0
    for p in [proc, *proc.children(recursive=True)]:
        try:
            total += p.memory_info().rss
        except psutil.Error:
            pass
    return total


def _children_cpu() -> float:
    ru = resource.getrusage(resource.RUSAGE_CHILDREN)
    return ru.ru_utime + ru.ru_stime


def measure(target, *args) -> dict:
    """Runs target(*args, conn) in a fresh spawned process: wall time, peak RSS summed over its tree, and
    the CPU seconds of the whole tree (waited-for descendants), which a busy shared machine distorts less."""
    ctx = mp.get_context("spawn")
    recv, send = ctx.Pipe(duplex=False)
    cpu0 = _children_cpu()
    t0 = time.monotonic()
    proc = ctx.Process(target=target, args=(*args, send))
    proc.start()
    ps = psutil.Process(proc.pid)
    peak, stop = [0], threading.Event()

    def sample():
        while not stop.is_set():
            peak[0] = max(peak[0], _tree_rss(ps))
            stop.wait(0.2)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    send.close()  # ours: so recv() sees EOF if the child dies without answering
    try:
        out = recv.recv()  # the result arrives before the process exits
    except EOFError:
        raise RuntimeError(f"{target.__name__} died with exit code {proc.join() or proc.exitcode}") from None
    proc.join()
    wall = time.monotonic() - t0
    cpu = _children_cpu() - cpu0
    stop.set()
    sampler.join()
    return {**out, "wall_s": round(wall, 2), "peak_rss_mb": round(peak[0] / 2**20, 1),
            "images_per_s": round(out["ok"] / wall, 1), "cpu_s": round(cpu, 1),
            "cpu_ms_per_image": round(1000 * cpu / max(out["ok"], 1), 2)}


# ---------------------------------------------------------------- driver

def start_server(pool: list[tuple[str, bytes]], target=serve_forever, **kw) -> tuple[mp.Process, int]:
    ctx = mp.get_context("fork")  # a separate process: the server must not take the tools' GIL
    recv, send = ctx.Pipe(duplex=False)
    routes = [Route(body, CTYPES[ext]) for ext, body in pool]
    proc = ctx.Process(target=target, args=(send,), kwargs={"pool": routes, **kw}, daemon=True)
    proc.start()
    return proc, recv.recv()


def serve_all_loopback(ready, **kw) -> None:
    """serve_forever, listening on every local address (so on all of 127.0.0.0/8, which Linux routes to lo)
    instead of 127.0.0.1: the opt-out figure's origins are the loopback aliases 127.0.0.2, 127.0.0.3, ..."""
    from tests.fault_server import ImageServer, _Handler, _Server

    srv = ImageServer(**kw)
    srv._httpd.server_close()
    srv._httpd = _Server(("0.0.0.0", 0), _Handler)
    srv._httpd.owner = srv
    srv.add("/robots.txt", BENCH_ROBOTS, "text/plain")
    srv.add("/.well-known/tdmrep.json", BENCH_TDMREP, "application/json")
    ready.send(srv.port)
    srv._httpd.serve_forever(poll_interval=0.2)


def _combine(runs: list[dict]) -> dict:
    """Totals over repeated runs of one tool: images/s = all images / all wall time, peak = max."""
    ok, wall, cpu = (sum(r[k] for r in runs) for k in ("ok", "wall_s", "cpu_s"))
    return {**runs[0], "ok": ok, "wall_s": round(wall, 2), "cpu_s": round(cpu, 1),
            "images_per_s": round(ok / wall, 1), "cpu_ms_per_image": round(1000 * cpu / max(ok, 1), 2),
            "peak_rss_mb": max(r["peak_rss_mb"] for r in runs), "runs": len(runs)}


def compare(name: str, urls_path: Path, work: Path, common: tuple, repeat: int = 1, tools=None) -> dict:
    """Runs both tools (default: curate and img2dataset) on the URL list `repeat` times, alternating which goes
    first (ABBA...), so a change in the load of a shared machine during the benchmark does not favour one."""
    tools = tools or [("curate", run_curate), ("img2dataset", run_img2dataset)]
    runs: dict[str, list] = {t: [] for t, _ in tools}
    for r in range(repeat):
        for tool, fn in (tools if r % 2 == 0 else tools[::-1]):
            out_dir = work / f"{name}-{tool}"
            shutil.rmtree(out_dir, ignore_errors=True)
            out_dir.mkdir(parents=True)
            runs[tool].append(measure(fn, str(urls_path), str(out_dir), *common))
            print(f"[{name}] {tool}: {json.dumps(runs[tool][-1])}", flush=True)
            shutil.rmtree(out_dir, ignore_errors=True)  # the next run's page cache and disk are not crowded
    return {tool: _combine(rs) for tool, rs in runs.items()}


def _url_list(work: Path, name: str, urls: list[str]) -> Path:
    path = work / f"{name}.parquet"
    write_url_list(path, urls)
    return path


def corpus_figure(args, corpus: list[tuple[int, str, int]], work: Path, common: tuple) -> dict:
    """The headline: --rows distinct images of tests/bench/web_corpus.py (cached on disk), served from disk by
    a threaded server in its own process, page cache warmed first so neither tool pays for cold reads."""
    folder = web_corpus.cache_dir(args.seed)
    for k, ext, _ in corpus:
        (folder / f"{k}.{ext}").read_bytes()
    server, base = web_corpus.start_disk_server(args.seed)
    try:
        urls_path = work / "corpus.parquet"
        web_corpus.write_url_list(urls_path, base, corpus, args.seed)
        return compare("corpus", urls_path, work, common, args.repeat)
    finally:
        server.kill()


def pool_figures(args, pool: list[tuple[str, bytes]], work: Path, common: tuple) -> tuple[dict | None, dict | None]:
    """The secondary figures, on tests/fault_server.py (served from memory): --rows rows repeating the --pool
    images (flattering: a few hundred images stay in every cache), and the fault list."""
    # the fault server: slow beyond the timeout, a 60 s drip, an "endless" body bounded at 200 MB
    server, port = start_server(pool, slow_seconds=args.timeout + 5, drip_seconds=60, endless_bytes=200 * 2**20)
    base = f"http://127.0.0.1:{port}"
    repeated = faults = None
    try:
        if args.pool_repeat:
            ks = np.random.default_rng(1).integers(0, len(pool), args.rows)
            urls = [f"{base}/pool/{i}/{k}.{pool[k][0]}" for i, k in enumerate(ks)]
            repeated = compare("repeated_pool", _url_list(work, "repeated_pool", urls), work, common,
                               args.pool_repeat)
        if not args.no_faults:
            from urllib.parse import quote
            furls = [base + quote(p, safe="/") for p in FAULT_ROUTES] * args.fault_repeat
            faults = compare("faults", _url_list(work, "faults", furls), work, common)
    finally:
        server.kill()
    return repeated, faults


def _args(argv) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--rows", type=int, default=10_000, help="rows of the image lists (the corpus: all distinct)")
    ap.add_argument("--seed", type=int, default=0, help="web corpus seed (its disk cache is shared with bench_pipeline)")
    ap.add_argument("--processes", type=int, default=2)
    ap.add_argument("--threads", type=int, default=32)
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--quality", type=int, default=95)
    ap.add_argument("--timeout", type=int, default=10, help="seconds, both tools")
    ap.add_argument("--unit-rows", type=int, default=1000, help="rows per unit / img2dataset shard")
    ap.add_argument("--repeat", type=int, default=2, help="runs per tool on the corpus list, alternating order")
    ap.add_argument("--pool", type=int, default=300, help="distinct images of the repeated-pool and opt-out lists")
    ap.add_argument("--pool-repeat", type=int, default=1,
                    help="runs per tool on the repeated-pool list (secondary figure; 0: skip it)")
    ap.add_argument("--fault-repeat", type=int, default=10, help="copies of the fault routes in the fault list")
    ap.add_argument("--no-faults", action="store_true")
    ap.add_argument("--optout-origins", type=int, default=100, help="origins (127.0.0.2, ...) of the opt-out figure")
    ap.add_argument("--no-optout", action="store_true", help="skip the opt-out figure")
    ap.add_argument("--optout-only", action="store_true",
                    help="only the opt-out figure, merged into the existing result file")
    ap.add_argument("--quick", action="store_true",
                    help=f"{QUICK_ROWS:,} rows (unless --rows), one run per tool, no fault or opt-out figure, "
                         f"result to {QUICK_OUT} (unless --out)")
    ap.add_argument("--out", type=Path, default=None, help="result file (default tests/bench/results/download.json)")
    args = ap.parse_args(argv)
    given = argv if argv is not None else sys.argv[1:]
    if args.quick:
        args.rows = args.rows if "--rows" in given else QUICK_ROWS
        args.repeat, args.pool_repeat = (1, min(args.pool_repeat, 1))
        args.no_faults = args.no_optout = True
        args.out = args.out or QUICK_OUT
    return args


def main(argv=None) -> dict:
    args = _args(argv)
    common = (args.processes, args.threads, args.size, args.quality, args.timeout, args.unit_rows)
    pool = make_pool(args.pool)
    if args.optout_only:
        return merge_optout(optout_figure(args, pool, common), args.out)
    t0 = time.time()
    corpus = web_corpus.ensure_corpus(args.rows, args.seed, processes=args.processes)
    info = web_corpus.describe(corpus, args.seed)
    print(f"corpus: {json.dumps(info)}", flush=True)
    work = Path(tempfile.mkdtemp(prefix="curate-bench-dl-"))
    try:
        main_res = corpus_figure(args, corpus, work, common)
        repeated, fault_res = pool_figures(args, pool, work, common)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    optout = None if args.no_optout else optout_figure(args, pool, common)
    result = report(args, info, main_res, repeated_pool_section(args, pool, repeated), fault_res, optout)
    result["bench_seconds"] = round(time.time() - t0, 1)
    save(result, args.out)
    return result


def optout_figure(args, pool: list[tuple[str, bytes]], common: tuple) -> dict:
    """The cost of the opt-out checks: --rows rows over the --pool images spread over --optout-origins origins
    on loopback aliases, curate with every check on (host pre-pass, opt-out stage, header and image-metadata
    checks) vs every check off, alternating order; each origin serves a robots.txt and a tdmrep.json."""
    if not 1 <= args.optout_origins <= 250:
        raise SystemExit(f"--optout-origins {args.optout_origins}: the aliases 127.0.0.2..251 hold at most 250")
    server, port = start_server(pool, target=serve_all_loopback)
    work = Path(tempfile.mkdtemp(prefix="curate-bench-optout-"))
    try:
        ks = np.random.default_rng(1).integers(0, len(pool), args.rows)
        urls = [f"http://127.0.0.{2 + i % args.optout_origins}:{port}/pool/{i}/{k}.{pool[k][0]}"
                for i, k in enumerate(ks)]
        tools = [("checks_on", run_curate_checks_on), ("checks_off", run_curate_checks_off)]
        res = compare("optout", _url_list(work, "optout", urls), work, common, args.repeat, tools)
    finally:
        server.kill()
        shutil.rmtree(work, ignore_errors=True)
    on, off = res["checks_on"], res["checks_off"]
    out = {"optout": {**res, "origins": args.optout_origins, "rows": args.rows, "date": _now(), "notes": (
               "one server (tests/fault_server.py) listening on 0.0.0.0, reached as 127.0.0.2.. (Linux routes "
               "127/8 to lo); checks_on: DownloadConfig defaults (robots.txt, TDMRep, headers, embedded), "
               "the host pre-pass (curate.optout.hosts.fetch_host_policies, timed inside the run) and "
               "OptOutStage before download_stage; checks_off: every download.optout switch off")},
           "optout_checks_images_per_s_ratio": ratio(on["images_per_s"], off["images_per_s"], 3),
           "optout_checks_cpu_per_image_ratio": ratio(on["cpu_ms_per_image"], off["cpu_ms_per_image"], 3)}
    print(f"opt-out checks: {on['images_per_s']} images/s on vs {off['images_per_s']} off "
          f"(ratio {out['optout_checks_images_per_s_ratio']}, target >= 0.9); CPU ms/image "
          f"{on['cpu_ms_per_image']} vs {off['cpu_ms_per_image']}")
    return out


def _now() -> str:
    import datetime as dt
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")


def _result_path(out: Path | None) -> Path:
    from tests.bench.common import RESULTS

    return out or RESULTS / "download.json"


def merge_optout(figure: dict, out: Path | None = None) -> dict:
    """The result file with the opt-out figure replaced and its other figures kept (--optout-only),
    their date and machine too (the figure carries its own date)."""
    path = _result_path(out)
    if not path.exists():
        save(figure, out)
        return figure
    doc = {**json.loads(path.read_text()), **figure}
    path.write_text(json.dumps(doc, indent=2, sort_keys=False, default=str) + "\n")
    print(f"wrote {path}")
    return doc


def save(result: dict, out: Path | None) -> Path:
    """Writes the result file (tests/bench/results/download.json unless --out). Figures of other runs that carry
    their own date (ab_download's before_after; the opt-out figure when --no-optout) are kept from the old file."""
    path = _result_path(out)
    if path.exists():
        old = json.loads(path.read_text())
        kept = {k: v for k, v in old.items() if k in CARRIED and k not in result}
        result = {**result, **kept}
    if out is None:
        return write_result("download", result)
    from tests.bench.common import machine_info

    path.parent.mkdir(parents=True, exist_ok=True)
    doc = {"benchmark": "download", "date": _now(), "machine": machine_info(), **result}
    path.write_text(json.dumps(doc, indent=2, sort_keys=False, default=str) + "\n")
    print(f"wrote {path}")
    return path


def repeated_pool_section(args, pool: list[tuple[str, bytes]], res: dict | None) -> dict:
    """The secondary, flattering figure: --rows rows that repeat --pool images served from memory."""
    if res is None:
        return {}
    c, i = res["curate"], res["img2dataset"]
    return {"repeated_pool": {
                "rows": args.rows, "distinct_images": len(pool), "repeat": args.pool_repeat,
                "pool_mean_bytes": int(np.mean([len(b) for _, b in pool])), **res,
                "notes": ("NOT the headline: the --pool images (bench_download.make_pool: longest side log-uniform "
                          "64..2000 px) repeated under distinct URLs, served from memory by tests/fault_server.py; "
                          "a few hundred images stay in every cache, so this flatters both tools")},
            "repeated_pool_images_per_s_ratio": ratio(c["images_per_s"], i["images_per_s"], 2),
            "repeated_pool_peak_rss_ratio": ratio(c["peak_rss_mb"], i["peak_rss_mb"], 3),
            "repeated_pool_cpu_per_image_ratio": ratio(c["cpu_ms_per_image"], i["cpu_ms_per_image"], 3)}


def report(args, corpus_info: dict, main_res: dict, repeated: dict, fault_res: dict | None,
           optout: dict | None = None) -> dict:
    """The result: the headline keys (images_per_s_ratio, ...) are the distinct corpus's."""
    c, i = main_res["curate"], main_res["img2dataset"]
    result = {
        "rows": args.rows, "repeat": args.repeat, "distinct_images": corpus_info["images"], "corpus": corpus_info,
        "processes": args.processes, "threads": args.threads, "image_size": args.size, "resize_mode": "keep_ratio",
        "encode_quality": args.quality, "timeout_s": args.timeout, "unit_rows": args.unit_rows,
        "curate": c, "img2dataset": i,
        "images_per_s_ratio": ratio(c["images_per_s"], i["images_per_s"], 2),
        "peak_rss_ratio": ratio(c["peak_rss_mb"], i["peak_rss_mb"], 3),
        "cpu_per_image_ratio": ratio(c["cpu_ms_per_image"], i["cpu_ms_per_image"], 3),
        "versions": versions("img2dataset", "pillow", "urllib3", "pyarrow", "opencv-python-headless"),
        "notes": NOTES, **repeated,
    }
    if fault_res:
        fc, fi = fault_res["curate"], fault_res["img2dataset"]
        result.update({"faults": fault_res, "fault_rows": args.fault_repeat * len(FAULT_ROUTES),
                       "fault_wall_time_ratio": ratio(fc["wall_s"], fi["wall_s"], 3),
                       "fault_peak_rss_ratio": ratio(fc["peak_rss_mb"], fi["peak_rss_mb"], 3)})
    _print_summary(result)
    result.update(optout or {})
    return result


def _print_summary(r: dict) -> None:
    c, i = r["curate"], r["img2dataset"]
    print(f"distinct corpus: curate {c['images_per_s']} vs img2dataset {i['images_per_s']} images/s "
          f"(ratio {r['images_per_s_ratio']}); peak RSS {c['peak_rss_mb']} vs {i['peak_rss_mb']} MB "
          f"(ratio {r['peak_rss_ratio']}); CPU ms/image {c['cpu_ms_per_image']} vs {i['cpu_ms_per_image']} "
          f"(ratio {r['cpu_per_image_ratio']})")
    if "repeated_pool" in r:
        print(f"repeated pool (secondary): images/s ratio {r['repeated_pool_images_per_s_ratio']}, peak RSS "
              f"ratio {r['repeated_pool_peak_rss_ratio']}, CPU/image ratio {r['repeated_pool_cpu_per_image_ratio']}")
    if "faults" in r:
        fc, fi = r["faults"]["curate"], r["faults"]["img2dataset"]
        print(f"fault list wall: curate {fc['wall_s']} s vs img2dataset {fi['wall_s']} s "
              f"(ratio {r['fault_wall_time_ratio']})")


if __name__ == "__main__":
    main()
