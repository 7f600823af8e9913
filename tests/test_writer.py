"""Final writer: real readers (webdataset, open_clip_train, DuckDB), S3 on moto's server, byte-identical reruns."""
from __future__ import annotations

import hashlib
import io
import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
import textwrap
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
from PIL import Image

from curate import stage_io
from curate.config import BalanceConfig, ClipConfig, RunConfig, ShardConfig
from curate.schema import COL, Status, conform, reason
from curate.select import select
from curate.tario import scan_ustar
from curate.tario import tar_bytes as ustar_bytes
from curate.writer import write_outputs

WORDS = ("cat", "dog", "bird", "tree", "car", "boat")
LANGS = ("en", "de", "fr")
REPO = Path(__file__).resolve().parent.parent


def _image(i: int, fmt: str, size: int = 16) -> bytes:
    rng = np.random.default_rng(i)
    img = Image.fromarray(rng.integers(0, 255, (size, size, 3), dtype=np.uint8))
    buf = io.BytesIO()
    img.save(buf, format={"jpg": "JPEG", "png": "PNG", "webp": "WEBP"}[fmt], quality=80)
    return buf.getvalue()


def make_stage_run(output: str, n_rows: int, unit_size: int, seed: int = 0, image_size: int = 16,
                   dropped_every: int = 7) -> tuple[pa.Table, list[dict]]:
    """Writes synthetic stage units (tiny images, ledgers) under `output`; returns (union ledger, inputs).

    Every `dropped_every`-th row is a download failure (no image); the rest are 'ok' with an image."""
    rng = np.random.default_rng(seed)
    parts = []
    for u, start in enumerate(range(0, n_rows, unit_size)):
        idx = np.arange(start, min(start + unit_size, n_rows))
        words = rng.choice(len(WORDS), size=len(idx), p=[0.5, 0.2, 0.1, 0.1, 0.05, 0.05])
        ok = (idx % dropped_every) != 3
        fmt = np.where(idx % 5 == 0, "png", "jpg")
        t = pa.table({
            COL.UID: [hashlib.blake2b(f"u{i}".encode(), digest_size=16).hexdigest() for i in idx],
            COL.UNIT_ID: pa.array([u] * len(idx), pa.int32()),
            COL.SOURCE_FILE: ["input.parquet"] * len(idx),
            COL.ROW_INDEX: pa.array(idx, pa.int64()),
            COL.URL: [f"http://127.0.0.1/{i}.jpg" for i in idx],
            COL.CAPTION: [f"A {WORDS[w]} number {i} ☃" for w, i in zip(words, idx)],
            COL.CAPTION_CLEAN: [f"a {WORDS[w]} number {i} ☃" for w, i in zip(words, idx)],
            COL.STATUS: [Status.OK if k else Status.DOWNLOAD_ERROR for k in ok],
            COL.REASON: [None if k else reason(Status.DOWNLOAD_ERROR, "timeout") for k in ok],
            COL.LANG: [LANGS[i % 3] for i in idx],
            COL.CLIP_SCORE: pa.array(np.where(ok, rng.uniform(0.1, 0.4, len(idx)), np.nan), pa.float32(),
                                     mask=~ok),
            COL.PHASH: pa.array(rng.integers(0, 2**63, len(idx)).astype(np.uint64), pa.uint64()),
            COL.IMAGE_FORMAT: [f if k else None for f, k in zip(fmt, ok)],
            COL.WIDTH: pa.array([image_size if k else None for k in ok], pa.int32()),
            COL.HEIGHT: pa.array([image_size if k else None for k in ok], pa.int32()),
        })
        images = [(f"{uid}.{f}", _image(int(i), f, image_size))
                  for uid, i, f, k in zip(t[COL.UID].to_pylist(), idx, fmt, ok) if k]
        stage_io.write_unit(output, u, t, images, {"rows": len(idx)})
        parts.append(conform(t, "ledger"))
    return pa.concat_tables(parts), [{"path": "input.parquet", "rows": n_rows}]


def _cfg(output: str, **shards) -> RunConfig:
    """Seed 3, CLIP threshold 0.15, concept balancing (t=20) over `vocab` (a file: importing open_clip
    for the ImageNet names costs seconds; test_balance covers it)."""
    return RunConfig(output=output, seed=3, shards=ShardConfig(samples_per_shard=shards.get("sps", 16)),
                     clip=ClipConfig(threshold=0.15),
                     balance=BalanceConfig(concepts=True, vocabulary=shards["vocab"], t=20))


def _build(tmp: Path, name: str, n_rows: int = 120, unit_size: int = 50) -> tuple[str, dict, pa.Table]:
    out = str(tmp / name)
    ledger, inputs = make_stage_run(out, n_rows, unit_size)
    cfg = _cfg(out, vocab=str(_vocab(tmp)))
    final, _ = select(ledger, None, cfg)
    return out, write_outputs(out, final, cfg, inputs), final


def _vocab(tmp: Path) -> Path:
    p = tmp / "vocab.txt"
    p.write_text("\n".join(WORDS) + "\n")
    return p


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """One written run shared by the reader tests."""
    return _build(tmp_path_factory.mktemp("writer"), "out")


def test_manifest_counts_add_up(run):
    out, manifest, final = run
    assert manifest["total_rows"] == final.num_rows == 120
    assert sum(manifest["counts"].values()) == manifest["total_rows"]
    assert sum(manifest["reasons"].values()) == manifest["total_rows"] - manifest["counts"][Status.KEPT]
    assert manifest["written_samples"] == manifest["counts"][Status.KEPT] == sum(s["count"] for s in manifest["shards"])
    assert {Status.DOWNLOAD_ERROR, Status.LOW_CLIP_SCORE, Status.BALANCED_OUT} <= set(manifest["counts"])
    on_disk = json.loads(Path(out, "manifest.json").read_text())
    assert on_disk == manifest
    sizes = json.loads(Path(out, "shards", "sizes.json").read_text())
    assert sizes == {s["name"].split("/")[-1]: s["count"] for s in manifest["shards"]}
    counts = [s["count"] for s in manifest["shards"]]
    assert all(c == 16 for c in counts[:-1]) and 0 < counts[-1] <= 16
    for s in manifest["shards"]:
        data = Path(out, s["name"]).read_bytes()
        assert len(data) == s["bytes"] and hashlib.sha256(data).hexdigest() == s["sha256"]
        stats = json.loads(Path(out, s["name"].replace(".tar", "_stats.json")).read_text())
        assert stats["count"] == s["count"] and sum(stats["langs"].values()) == s["count"]
    assert "max_lang_deviation" in manifest["shard_mix"]


def test_webdataset_reads_every_sample(run):
    import webdataset as wds
    out, manifest, _ = run
    samples = pq.read_table(Path(out, "metadata", "samples")).to_pylist()
    by_key = {r[COL.KEY]: r for r in samples}
    n = len(manifest["shards"])
    url = str(Path(out, "shards")) + f"/{{00000..{n - 1:05d}}}.tar"
    seen = 0
    for s in wds.WebDataset(url, shardshuffle=False):
        row = by_key[s["__key__"]]
        assert s["txt"].decode("utf-8") == row[COL.CAPTION]
        assert json.loads(s["json"])[COL.UID] == row[COL.UID]
        ext = "png" if "png" in s else "jpg"
        assert ext == row[COL.IMAGE_FORMAT]
        assert Image.open(io.BytesIO(s[ext])).convert("RGB").size == (16, 16)
        seen += 1
    assert seen == manifest["written_samples"] == len(samples)


def test_keys_and_tar_layout(run):
    out, manifest, final = run
    with tarfile.open(Path(out, "shards", "00001.tar")) as tar:
        members = tar.getmembers()
    names = [m.name for m in members]
    assert names[0] in ("0000100.jpg", "0000100.png") and names[1:3] == ["0000100.json", "0000100.txt"]
    assert all(m.mtime == 0 and m.uname == "" for m in members)
    keys = sorted({n.split(".")[0] for n in names})
    assert keys == [f"00001{i:02d}" for i in range(16)]  # 5 shard digits + ceil(log10(16)) = 2 index digits
    kept = final.filter(pc.equal(final[COL.STATUS], Status.KEPT))
    assert sorted(kept.filter(pc.equal(kept[COL.SHARD], 1))[COL.KEY].to_pylist()) == keys


def test_duckdb_counts_agree_with_manifest(run):
    import duckdb
    out, manifest, _ = run
    con = duckdb.connect()
    n = con.execute(f"select count(*) from read_parquet('{out}/metadata/samples/*.parquet')").fetchone()[0]
    assert n == manifest["written_samples"]
    rows = con.execute(f"select status, count(*) from read_parquet('{out}/metadata/ledger/*.parquet') "
                       "group by status").fetchall()
    assert dict(rows) == manifest["counts"]
    ledger = f"{out}/metadata/ledger/*.parquet"
    n_uid = con.execute(f"select count(distinct uid) from read_parquet('{ledger}')").fetchone()[0]
    assert n_uid == manifest["total_rows"]
    ledger_parts = sorted(os.listdir(Path(out, "metadata", "ledger")))
    assert ledger_parts == ["part-000000.parquet", "part-000001.parquet", "part-000002.parquet"]


def test_same_seed_same_bytes(tmp_path, monkeypatch):
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "1700000000")
    files = []
    for _ in range(2):  # same output path (it is part of the config), rebuilt from scratch
        out, _, _ = _build(tmp_path, "a", n_rows=60, unit_size=25)
        root = Path(out)
        files.append({str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*"))
                      if p.is_file() and "stage" not in p.parts})
        shutil.rmtree(root)
    assert files[0].keys() == files[1].keys() and len(files[0]) > 8
    for k in files[0]:
        assert files[0][k] == files[1][k], k


def test_rewrite_with_fewer_shards_removes_stale_files(tmp_path):
    out = str(tmp_path / "o")
    ledger, inputs = make_stage_run(out, 80, 40)
    cfg = _cfg(out, sps=4, vocab=str(_vocab(tmp_path)))
    write_outputs(out, select(ledger, None, cfg)[0], cfg, inputs)
    cfg = _cfg(out, sps=50, vocab=str(_vocab(tmp_path)))
    manifest = write_outputs(out, select(ledger, None, cfg)[0], cfg, inputs)
    tars = sorted(p.name for p in Path(out, "shards").glob("*.tar"))
    assert tars == [s["name"].split("/")[-1] for s in manifest["shards"]]
    assert len(list(Path(out, "metadata", "samples").glob("*.parquet"))) == len(tars)


def test_refuses_undecided_rows_and_missing_images(tmp_path):
    out = str(tmp_path / "o")
    ledger, inputs = make_stage_run(out, 20, 20)
    cfg = _cfg(out, vocab=str(_vocab(tmp_path)))
    with pytest.raises(ValueError, match="still 'ok'"):
        write_outputs(out, ledger, cfg, inputs)
    final, _ = select(ledger, None, cfg)
    stage_io.write_unit(out, 0, ledger, [], {})  # the stage tar loses its images
    with pytest.raises(ValueError, match="no image in their stage tar"):
        write_outputs(out, final, cfg, inputs)


def test_fast_tar_matches_tarfile_bytes_and_scan():
    members = [(f"{i:07d}.{e}", os.urandom(i * 131 % 3000)) for i in range(40) for e in ("jpg", "json", "txt")]
    members.append(("é.txt", b""))
    data = ustar_bytes(members)
    assert data == stage_io.tar_bytes(members)
    got = scan_ustar(memoryview(data))
    assert [(n, data[o:o + s]) for n, o, s in got] == members
    pax = io.BytesIO()
    with tarfile.open(fileobj=pax, mode="w", format=tarfile.PAX_FORMAT) as tar:
        info = tarfile.TarInfo("x" * 150)
        tar.addfile(info, io.BytesIO(b""))
    assert scan_ustar(memoryview(pax.getvalue())) is None  # long names: tarfile's job


def test_s3_output_on_moto_server(tmp_path, moto_s3):
    s3 = moto_s3
    out = "s3://bkt/run1"
    ledger, inputs = make_stage_run(out, 40, 20)
    cfg = _cfg(out, vocab=str(_vocab(tmp_path)))
    manifest = write_outputs(out, select(ledger, None, cfg)[0], cfg, inputs)
    keys = {o["Key"] for o in s3.list_objects_v2(Bucket="bkt", Prefix="run1/")["Contents"]}
    assert {"run1/manifest.json", "run1/shards/sizes.json", "run1/shards/00000.tar",
            "run1/metadata/samples/part-00000.parquet", "run1/metadata/ledger/part-000001.parquet"} <= keys
    body = s3.get_object(Bucket="bkt", Key="run1/shards/00000.tar")["Body"].read()
    assert hashlib.sha256(body).hexdigest() == manifest["shards"][0]["sha256"]
    with tarfile.open(fileobj=io.BytesIO(body)) as tar:
        n_img = sum(m.name.endswith((".jpg", ".png")) for m in tar.getmembers())
    assert n_img == manifest["shards"][0]["count"]
    assert not [k for k in keys if ".tmp-" in k]


# open_clip_train 3.3 + webdataset >= 0.2.96 crash with KeyError 'fname' (open_clip issue 935): the
# end-of-shard marker must be off. This sitecustomize turns it off before open_clip_train imports it.
SITECUSTOMIZE = textwrap.dedent("""
    import webdataset.tariterators as _t
    _t.tar_file_expander.__defaults__ = _t.tar_file_expander.__defaults__[:-1] + (None,)  # eof_value=None
""")
TINY_MODEL = {"model_cfg": {"embed_dim": 16,
                            "vision_cfg": {"image_size": 32, "layers": 1, "width": 32, "head_width": 16,
                                           "patch_size": 16},
                            "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 32, "heads": 2,
                                         "layers": 1}}}


def run_open_clip_train(out: Path, n_shards: int, tmp_path: Path) -> str:
    """open_clip_train.main for one epoch of 8 samples of the tiny model on out's shards (CPU, webdataset);
    returns its log after asserting that it exited 0 and that both steps ran."""
    (tmp_path / "site").mkdir()
    (tmp_path / "site" / "sitecustomize.py").write_text(SITECUSTOMIZE)
    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "open_clip_config.json").write_text(json.dumps(TINY_MODEL))
    cmd = [sys.executable, "-m", "open_clip_train.main", "--dataset-type", "webdataset",
           "--train-data", f"{out}/shards/{{00000..{n_shards - 1:05d}}}.tar", "--train-num-samples", "8",
           "--model", f"local-dir:{tmp_path / 'model'}", "--batch-size", "4", "--epochs", "1", "--workers", "0",
           "--device", "cpu", "--lr", "1e-3", "--warmup", "1", "--logs", str(tmp_path / "logs"),
           "--name", "t", "--save-frequency", "0", "--log-every-n-steps", "1", "--seed", "0"]
    env = {**os.environ, "PYTHONPATH": f"{tmp_path / 'site'}{os.pathsep}{REPO}", "CUDA_VISIBLE_DEVICES": ""}
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=240, cwd=tmp_path)
    log = proc.stdout + proc.stderr
    assert proc.returncode == 0, log[-3000:]
    assert re.search(r"Train Epoch: 0 \[\s*8/8 \(100%\)\]", log), log[-2000:]  # both steps ran
    return log


def test_open_clip_train_consumes_shards(run, tmp_path):
    out, manifest, _ = run
    log = run_open_clip_train(Path(out), len(manifest["shards"]), tmp_path)
    assert "KeyError" not in log


def test_ray_tasks_write_the_same_bytes(tmp_path, monkeypatch):
    import ray
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "1700000000")
    out = str(tmp_path / "o")
    ledger, inputs = make_stage_run(out, 60, 20)
    cfg = _cfg(out, vocab=str(_vocab(tmp_path)), sps=8)
    final, _ = select(ledger, None, cfg)
    write_outputs(out, final, cfg, inputs, map_fn=lambda fn, items: [fn(x) for x in items])
    serial = {p: p.read_bytes() for p in sorted(Path(out).rglob("*")) if p.is_file() and "stage" not in p.parts}
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        manifest = write_outputs(out, final, cfg, inputs)  # default map_fn: Ray tasks while Ray is up
    finally:
        ray.shutdown()
    assert len(manifest["shards"]) > 2
    assert {p: p.read_bytes() for p in serial} == serial
