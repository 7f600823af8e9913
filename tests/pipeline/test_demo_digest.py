"""The demo's output is pinned: a small seeded `make demo`-style run (every stage on: language, download,
dedup, the shipped CLIP checkpoint, selection, shards, metadata, manifest) must produce the same bytes as
the run the digests in tests/data/demo_digest.json were taken from. Refactors that claim "behaviour
unchanged" are held to it; a change that means to alter outputs re-pins the file
(`python -m tests.pipeline.test_demo_digest --pin`) and says why in its commit."""
from __future__ import annotations

import errno
import hashlib
import json
import shutil
import socket
import sys
from pathlib import Path

import PIL
import pyarrow as pa
import pyarrow.parquet as pq

from curate.config import load_config
from curate.democorpus import CorpusServer, make_corpus

PIN = Path(__file__).resolve().parents[1] / "data" / "demo_digest.json"
CHECKPOINT = Path(__file__).resolve().parents[2] / "pipelines" / "demo_assets" / "clip_demo"
ROWS, SEED = 300, 7
# uids hash the URL, port included, so the run needs a known port: the first free one of these.
PORTS = (38517, 38529, 38541)
VOLATILE_MANIFEST_KEYS = ("created", "config_hash")  # the clock; a hash of the config's tmp paths
VOLATILE_COLUMNS = ("fetched_at",)  # the clock: when the opt-out pre-pass fetched each origin's policy files


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _parquet_digest(path: Path, tmp: Path) -> str:
    """By content (schema + rows), so a new pyarrow writer version alone does not break the pin; the run's
    temporary folder (in the clip model path columns) is written as <TMP>."""
    t = pq.read_table(path)
    t = t.drop_columns([c for c in VOLATILE_COLUMNS if c in t.column_names])
    text = t.schema.remove_metadata().to_string() + "\n" + json.dumps(t.to_pylist(), sort_keys=True, default=str)
    return _sha(text.replace(str(tmp), "<TMP>").encode())


def output_digests(run: Path, tmp: Path) -> dict[str, str]:
    """file (relative to the run) -> digest: parquet by content, tars and json by bytes, manifest canonical."""
    out = {}
    for p in sorted(run.rglob("*")):
        rel = p.relative_to(run).as_posix()
        if p.is_file() and rel.startswith(("shards/", "metadata/")):
            out[rel] = _parquet_digest(p, tmp) if p.suffix == ".parquet" else _sha(p.read_bytes())
    m = json.loads((run / "manifest.json").read_text())
    for k in VOLATILE_MANIFEST_KEYS:
        m.pop(k, None)
    out["manifest.json"] = _sha(json.dumps(m, sort_keys=True).replace(str(tmp), "<TMP>").encode())
    return out


def _free_port() -> int:
    for port in PORTS:
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
                return port
            except OSError as e:
                if e.errno != errno.EADDRINUSE:
                    raise
    raise RuntimeError(f"ports {PORTS} are all in use: the pinned demo run needs one of them")


def seeded_run(tmp: Path) -> tuple[int, dict[str, str]]:
    """The demo's configuration on ROWS rows; returns (port, digests)."""
    from pipelines.build_shards import run
    ckpt = tmp / "clip_demo"
    shutil.copytree(CHECKPOINT, ckpt)
    threshold = json.loads((ckpt / "demo_calibration.json").read_text())["threshold"]
    port = _free_port()
    with CorpusServer(port=port) as srv:
        rows, files = make_corpus(ROWS, SEED, srv.base_url)
        srv.set_files(files)
        urls = tmp / "urls.parquet"
        pq.write_table(pa.table({"url": [r.url for r in rows], "caption": [r.caption for r in rows]}), urls)
        cfg = load_config(None, {
            "input.paths": [str(urls)], "output": str(tmp / "run"), "seed": SEED, "progress": False,
            "download.allow_private_networks": True, "download.timeout": 5, "input.unit_size": 60, "num_cpus": 2,
            "language.languages": ["en"], "image.size": 64, "shards.samples_per_shard": 40,
            "clip.model": str(ckpt / "open_clip_config.json"), "clip.pretrained": str(ckpt),
            "clip.threshold": threshold, "clip.batch_size": 64, "dedup.enabled": True})
        run(cfg)
    return port, output_digests(tmp / "run", tmp)


def _env() -> dict:
    return {"pillow": PIL.__version__}


def test_demo_output_matches_pinned_digest(tmp_path):
    pins = json.loads(PIN.read_text())
    port, got = seeded_run(tmp_path)
    want = pins["runs"][str(port)]
    if pins["env"]["pillow"] != PIL.__version__:  # image bytes come from Pillow's codecs: compare the rest
        got = {k: v for k, v in got.items() if not k.endswith(".tar")}
        want = {k: v for k, v in want.items() if not k.endswith(".tar")}
    differ = sorted(k for k in set(got) | set(want) if got.get(k) != want.get(k))
    assert not differ, f"outputs differ from the pinned demo run (port {port}): {differ[:12]}"


def pin() -> None:
    import tempfile
    runs = {}
    for port in PORTS:  # pins every port by taking the others while running
        holders = []
        for other in PORTS:
            if other != port:
                s = socket.socket()
                s.bind(("127.0.0.1", other))
                holders.append(s)
        with tempfile.TemporaryDirectory() as d:
            got_port, runs[str(port)] = seeded_run(Path(d))
        assert got_port == port, (got_port, port)
        for s in holders:
            s.close()
    PIN.write_text(json.dumps({"env": _env(), "rows": ROWS, "seed": SEED, "runs": runs}, indent=1, sort_keys=True))
    print(f"pinned {len(runs)} runs into {PIN}")


if __name__ == "__main__":
    if "--pin" in sys.argv:
        pin()
