"""The time breakdown: Phases and merge, the process-tree CPU clock, and the download stage's per-row timings."""
from __future__ import annotations

import subprocess
import sys
import time

import pyarrow as pa

from curate.timing import Phases, TreeCpu, merge


def _burn(seconds_of_work: int = 300_000) -> int:
    return sum(i * i for i in range(seconds_of_work))


def test_phases_sum_repeated_blocks_in_first_run_order():
    ph = Phases()
    with ph("b"):
        _burn()
    with ph("a"):
        pass
    with ph("b"):
        _burn()
    d = ph.as_dict()
    assert list(d) == ["b", "a"]
    assert d["b"]["cpu_s"] > 0 and d["b"]["wall_s"] >= d["a"]["wall_s"]
    total = merge({}, d)
    merge(total, {"b": {"wall_s": 1.0, "cpu_s": 2.0}, "c": {"thread_s": 3.0}})
    assert total["b"]["cpu_s"] == round(d["b"]["cpu_s"] + 2.0, 3) and total["c"] == {"thread_s": 3.0}


def test_tree_cpu_counts_a_child_and_keeps_it_after_the_child_exits():
    clock = TreeCpu()
    before = clock()
    code = "import time\nt=time.process_time()\nwhile time.process_time() - t < 0.5: pass\nimport sys; sys.stdin.read()"
    child = subprocess.Popen([sys.executable, "-c", code],
                             stdin=subprocess.PIPE)
    try:
        seen = before
        for _ in range(600):  # the child burns 0.5 s of CPU, then waits for stdin; hang bound only
            seen = clock()
            if seen - before > 0.3:
                break
            time.sleep(0.05)
        assert seen - before > 0.3
    finally:
        child.stdin.close()
        child.wait()
    assert clock() >= seen  # an exited child keeps its last reading: the clock never runs backwards


def test_download_stage_records_per_row_timings():
    from curate.config import DownloadConfig, ImageConfig
    from curate.democorpus import CorpusServer, make_corpus
    from curate.download import download_stage
    from curate.schema import COL, Status

    with CorpusServer() as srv:
        rows, files = make_corpus(12, 1, srv.base_url)
        srv.set_files(files)
        n = len(rows)
        table = pa.table({COL.UID: [f"{i:04d}" for i in range(n)], COL.URL: [r.url for r in rows],
                          COL.STATUS: [Status.OK] * n})
        _, stats = download_stage(table, DownloadConfig(allow_private_networks=True, timeout=2, retries=0),
                                  ImageConfig(size=64))
    t = stats["download_timings"]
    assert set(t) == {"fetch", "sha256", "decode_resize_encode"}
    assert stats["download_status_counts"].get(Status.OK, 0) > 0
    assert t["fetch"]["thread_s"] > 0 and t["decode_resize_encode"]["cpu_s"] > 0
