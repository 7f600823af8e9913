"""Reinforced runs end to end: a run with reinforce on writes KEY.npz + KEY.json view parameters that webdataset
decodes and open_clip_train ignores; turning it on for a finished output computes only the teacher embeddings."""
from __future__ import annotations

import io
import json
from contextlib import redirect_stderr
from pathlib import Path

import numpy as np
import pytest
import webdataset as wds
from PIL import Image

from curate.reinforce import view_params
from pipelines.build_shards import run
from tests.pipeline.helpers import run_config, served_corpus, tree_digest

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
def runs(tmp_path_factory):
    """(an output built without reinforce, then reinforced; a fresh output built with it; what the reruns
    said on stderr; hits of the first run, of the reinforcing rerun)."""
    tmp = tmp_path_factory.mktemp("reinforce")
    err = io.StringIO()
    with served_corpus(tmp, n=60, seed=5) as (srv, path, _):
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
