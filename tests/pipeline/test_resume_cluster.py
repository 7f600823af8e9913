"""Resume after kill -9, the cluster path (ray start + ray job submit) and a two-node cluster."""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil
import pytest

from tests.pipeline.helpers import served_corpus, tree_digest

REPO = Path(__file__).resolve().parents[2]
VENV_BIN = Path(sys.executable).parent


def _cli(inp: Path, out: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "pipelines.build_shards", "--input", str(inp), "--output", str(out),
            "--allow-private-networks", "--unit-size", "15", "--languages", "en", "--image-size", "64",
            "--samples-per-shard", "16", "--no-clip", "--num-cpus", "2", "--no-progress",
            "--set", "download.timeout=2", "--set", "download.retries=0", *extra]


def _env() -> dict:
    return {**os.environ, "PYTHONPATH": str(REPO), "RAY_USAGE_STATS_ENABLED": "0",
            "PATH": f"{VENV_BIN}:{os.environ.get('PATH', '')}"}


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("corpus")
    with served_corpus(tmp, n=75, seed=1) as (srv, path, rows):
        yield srv, path, rows, tmp


def test_kill_dash_nine_then_rerun_is_byte_identical(corpus):
    srv, inp, rows, tmp = corpus
    ref = tmp / "uninterrupted"
    subprocess.run(_cli(inp, ref), check=True, env=_env(), cwd=REPO, timeout=300)

    out = tmp / "killed"
    proc = subprocess.Popen(_cli(inp, out), env=_env(), cwd=REPO, start_new_session=True)
    deadline = time.time() + 240
    while time.time() < deadline and not list((out / "stage").glob("*[0-9].parquet")):
        assert proc.poll() is None, "the run ended before it could be killed"
        time.sleep(0.2)
    os.killpg(proc.pid, signal.SIGKILL)  # the driver and every Ray process it started
    proc.wait()
    done_before = {p.name for p in (out / "stage").glob("*[0-9].parquet")}
    assert done_before and not (out / "manifest.json").exists()

    hits = srv.hits
    subprocess.run(_cli(inp, out), check=True, env=_env(), cwd=REPO, timeout=300)
    assert tree_digest(out) == tree_digest(ref)
    ledger_rows = json.loads((out / "manifest.json").read_text())["total_rows"]
    assert ledger_rows == len(rows)
    # completed units were not fetched again: fewer requests than a full run made
    ref_fetched = sum(1 for r in rows if r.url.startswith(srv.base_url + "/img/"))
    assert srv.hits - hits < ref_fetched


def _ray_pids(temp_dir: str) -> list[psutil.Process]:
    out = []
    for p in psutil.process_iter(["cmdline"]):
        try:
            if any(temp_dir in part for part in (p.info["cmdline"] or [])):
                out.append(p)
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            pass
    return out


def _free_port() -> int:
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_ray_job_submit_on_a_started_head(corpus):
    _, inp, rows, tmp = corpus
    temp_dir = tempfile.mkdtemp(prefix="rc", dir="/tmp")  # short: Ray's socket paths have a length limit
    port, dash = _free_port(), _free_port()
    # a throwaway cluster bound to 127.0.0.1: Ray's token auth would need a token shared by head and client
    env = {**_env(), "RAY_AUTH_MODE": "disabled"}
    subprocess.run([str(VENV_BIN / "ray"), "start", "--head", "--port", str(port), "--num-cpus", "2",
                    "--dashboard-host", "127.0.0.1", "--dashboard-port", str(dash), "--disable-usage-stats",
                    "--temp-dir", temp_dir, "--include-dashboard", "true"],
                   check=True, env=env, cwd=REPO, timeout=180, capture_output=True)
    out = tmp / "job_out"
    try:
        cmd = [str(VENV_BIN / "ray"), "job", "submit", "--address", f"http://127.0.0.1:{dash}",
               "--working-dir", str(REPO), "--", *[a if a != sys.executable else "python"
                                                   for a in _cli(inp, out)]]
        deadline = time.monotonic() + 240  # the head's job agent comes up seconds (a minute or more on a
        while True:                        # loaded machine) after `ray start` returns
            res = subprocess.run(cmd, env=env, cwd=REPO, timeout=400, capture_output=True, text=True)
            if "No available agent" not in res.stdout + res.stderr or time.monotonic() > deadline:
                break
            time.sleep(3)
        assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
        assert "connected to Ray cluster" in res.stdout + res.stderr
        manifest = json.loads((out / "manifest.json").read_text())
        assert manifest["total_rows"] == len(rows) and manifest["written_samples"] > 0
    finally:
        procs = _ray_pids(temp_dir)
        for p in procs:
            try:
                p.kill()
            except psutil.NoSuchProcess:
                pass
        psutil.wait_procs(procs, timeout=20)
        shutil.rmtree(temp_dir, ignore_errors=True)


def test_two_node_cluster_runs_units_on_both_nodes(corpus, capfd):
    import ray
    from ray.cluster_utils import Cluster

    from pipelines.build_shards import run
    from tests.pipeline.helpers import run_config

    _, inp, rows, tmp = corpus
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1})
    cluster.add_node(num_cpus=1)
    try:
        ray.init(address=cluster.address)
        out = tmp / "two_nodes"
        run(run_config(inp, out, **{"input.unit_size": 10, "dedup.spread_min": 1}))
        nodes = {json.loads(p.read_text()).get("node_id") for p in (out / "stage").glob("*_stats.json")}
        assert len(nodes - {None}) == 2
        assert "(Ray Data job over the cluster)" in capfd.readouterr().err  # phase B's search spread too
        assert json.loads((out / "manifest.json").read_text())["total_rows"] == len(rows)
    finally:
        ray.shutdown()
        cluster.shutdown()
