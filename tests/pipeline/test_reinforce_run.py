"""Reinforced runs end to end: a run with reinforce on writes KEY.npz + KEY.json view parameters that webdataset
decodes and open_clip_train ignores; turning it on for a finished output computes only the teacher embeddings."""
from __future__ import annotations

import io
import json
import shutil
from contextlib import redirect_stderr
from pathlib import Path

import numpy as np
import pytest
import webdataset as wds
from PIL import Image

import pyarrow.parquet as pq

from curate.reinforce import read_npz, view_params
from curate.reinforce.store import NPZ
from curate.schema import COL
from pipelines.build_shards import run
from tests.pipeline.helpers import run_config, served_corpus, tiny_clip_config, tree_digest

DEMO = Path(__file__).resolve().parents[2] / "pipelines" / "demo_assets" / "clip_demo"
TEACHER = f"{DEMO / 'open_clip_config.json'}|{DEMO}"
REINFORCE = {"reinforce.enabled": True, "reinforce.teachers": [TEACHER], "reinforce.views": 2, "seed": 4}
REPO = Path(__file__).resolve().parents[2]


def _samples(out: Path) -> list[dict]:
    n = len(json.loads((out / "manifest.json").read_text())["shards"])
    urls = f"{out}/shards/{{00000..{n - 1:05d}}}.tar"
    return list(wds.WebDataset(urls, shardshuffle=False, empty_check=False).decode())  # default decoders


def _check_reinforced(out: Path) -> None:
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["reinforce"] == {"teachers": [TEACHER], "views": 2, "min_scale": 0.35}
    samples = _samples(out)
    assert len(samples) == manifest["written_samples"] > 0
    for s in samples:
        meta, emb = s["json"], s["npz"]
        ext = next(k for k in s if k in ("jpg", "png", "webp"))
        w, h = Image.open(io.BytesIO(s[ext])).size  # the stored image: views are in its pixels
        assert meta["reinforce"]["teachers"] == [TEACHER]
        assert meta["reinforce"]["views"] == view_params(meta["uid"], 4, 2, w, h, 0.35)
        assert set(emb) == {"image_emb_0", "text_emb_0"}
        assert emb["image_emb_0"].shape[0] == 2 and emb["text_emb_0"].shape[0] == 1
        norms = np.linalg.norm(emb["image_emb_0"].astype(np.float32), axis=1)
        np.testing.assert_allclose(norms, 1, atol=3e-3)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """(a folder, the server, the url list): one served corpus for the module, so every run has the same uids."""
    tmp = tmp_path_factory.mktemp("reinforce")
    with served_corpus(tmp, n=60, seed=5) as (srv, path, _):
        yield tmp, srv, path


@pytest.fixture(scope="module")
def runs(corpus):
    """(an output built without reinforce, then reinforced; a fresh output built with it; what the reruns
    said on stderr; hits of the first run, of the reinforcing rerun)."""
    tmp, srv, path = corpus
    err = io.StringIO()
    out, fresh = tmp / "out", tmp / "fresh"
    run(run_config(path, out, seed=4))
    hits = [srv.hits]
    with redirect_stderr(err):
        run(run_config(path, out, **REINFORCE))  # only the teacher embeddings are computed
        hits.append(srv.hits)
        shards = tree_digest(out, ("shards",))
        with open(sorted((out / "stage").glob("*.reinforce.parquet"))[0], "r+b") as f:
            f.truncate(100)  # a torn file (a killed run): never trusted, redone
        run(run_config(path, out, **REINFORCE))
        assert tree_digest(out, ("shards",)) == shards
    run(run_config(path, fresh, **REINFORCE))  # inside the download tasks this time
    return out, fresh, err.getvalue(), hits


def test_reinforce_a_finished_run_then_a_fresh_one_gives_the_same_shards(runs):
    out, fresh, err, hits = runs
    assert hits[1] == hits[0]  # turning reinforce on fetched nothing again
    assert "redoing its teacher embeddings" in err
    _check_reinforced(out)
    assert tree_digest(fresh, ("shards",)) == tree_digest(out, ("shards",))
    stats = [json.loads(p.read_text()) for p in sorted((fresh / "stage").glob("*_stats.json"))]
    assert sum(s.get("reinforce_rows", 0) for s in stats) >= len(_samples(fresh))  # the in-unit route did it
    assert not any("reinforce_rows" in json.loads(p.read_text()) for p in (out / "stage").glob("*_stats.json"))


def test_open_clip_train_ignores_the_npz(runs, tmp_path):
    from tests.test_writer import run_open_clip_train
    out = runs[0]
    assert "npz" in _samples(out)[0]
    run_open_clip_train(out, len(json.loads((out / "manifest.json").read_text())["shards"]), tmp_path)

ACTOR_ROUTE = {"clip.cpu_in_units": False, "clip.device": "cpu"}  # the GPU route's Ray Data pass, on CPU


@pytest.fixture(scope="module")
def actor_run(corpus, runs):
    """(an output whose scores and teacher embeddings the Ray Data pass computed on CPU actors, the same
    output resumed after one unit's reinforce file was deleted, what that rerun said on stderr)."""
    tmp, _, path = corpus
    out = tmp / "actor"
    cfg = run_config(path, out, clip_model=tiny_clip_config(tmp), **REINFORCE, **ACTOR_ROUTE)
    run(cfg)
    first = {p.name: p.read_bytes() for p in (out / "stage").glob("*.reinforce.parquet")}
    gone = sorted((out / "stage").glob("*.reinforce.parquet"))[1]
    gone.unlink()  # a run killed before this unit's teachers ran: the resumed run's pass does it
    err = io.StringIO()
    with redirect_stderr(err):
        run(cfg)
    return out, first, gone.name, err.getvalue()


def _npz_by_uid(out: Path) -> dict[str, bytes]:
    return {u: n for p in sorted((out / "stage").glob("*.reinforce.parquet"))
            for u, n in zip(*pq.read_table(p).select([COL.UID, NPZ]).to_pydict().values())}


def test_the_actor_pass_writes_the_same_teacher_embeddings(runs, actor_run):
    """The GPU route (teachers on the scoring pass's actors, after the downloads), forced onto CPU actors,
    gives every kept sample the same KEY.npz, views and teachers as the download tasks' route; the download
    tasks ran no teacher; a resumed run redoes a missing reinforce file in the pass, not in CPU tasks."""
    fresh, (out, first, gone, err) = runs[1], actor_run
    _check_reinforced(out)
    stats = [json.loads(p.read_text()) for p in sorted((out / "stage").glob("*_stats.json"))]
    assert stats and not any("reinforce_rows" in s or "reinforce" in s.get("timings", {}) for s in stats)
    assert all(s.get("clip_scored", 0) == 0 for s in stats)  # the scores came from the pass too
    assert all((out / "stage" / n.replace(".reinforce.", ".scores.")).exists() for n in first)
    ours, theirs = _npz_by_uid(out), _npz_by_uid(fresh)
    kept = [s["json"]["uid"] for s in _samples(out)]
    assert kept and set(kept) <= set(ours) and set(ours) == set(theirs)
    for uid in kept:
        a, b = read_npz(ours[uid]), read_npz(theirs[uid])
        assert a.keys() == b.keys()
        for k in a:  # fp32 forwards in other batch shapes, rounded to float16: equal or one ulp apart
            np.testing.assert_allclose(a[k].astype(np.float32), b[k].astype(np.float32), atol=2e-3)
    assert "'units_reinforced': 1" in err and "phase A (reinforce)" not in err
    assert (out / "stage" / gone).read_bytes() == first[gone]  # redone alike


def test_a_teachers_only_pass_rewrites_the_tasks_files(runs, tmp_path):
    """CLIP off, reinforce on, the pass route (a GPU cluster's choice: the teachers alone on the actors, no
    preprocess tasks): the reinforce files of the download tasks' route, deleted, come back with the same
    uids, views and record; the embeddings within float16 rounding."""
    import ray

    from curate import stage_io
    from curate.config import ClipConfig
    from curate.reinforce.store import VIEWS
    from pipelines.scoring import PassModels, run_pass

    fresh, out = runs[1], tmp_path / "out"
    shutil.copytree(fresh / "stage", out / "stage")
    units = sorted(int(p.name.split(".")[0]) for p in (out / "stage").glob("*.done.json") if p.name.count(".") == 2)
    for u in units:
        stage_io.invalidate_reinforce(str(out), u)
    cfg = run_config(fresh, out, **REINFORCE)
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        res = run_pass(str(out), units, PassModels(ClipConfig(device="cpu"), False, cfg.reinforce, cfg.seed))
    finally:
        ray.shutdown()
    assert res["units_reinforced"] == len(units) and res["units_scored"] == 0
    ident = json.loads((fresh / "stage" / f"{units[0]:06d}.reinforce.done.json").read_text())["made_by"]
    for u in units:
        assert stage_io.reinforce_done(str(out), u, made_by=ident)
        a, b = stage_io.read_reinforce(str(out), u), stage_io.read_reinforce(str(fresh), u)
        assert a.schema == b.schema and a.select([COL.UID, VIEWS]) == b.select([COL.UID, VIEWS])
        for x, y in zip(a[NPZ].to_pylist(), b[NPZ].to_pylist()):
            for k, v in read_npz(y).items():
                np.testing.assert_allclose(read_npz(x)[k].astype(np.float32), v.astype(np.float32), atol=2e-3)
