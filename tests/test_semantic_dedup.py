"""Semantic dedup (curate/dedup/semantic.py): k-means, the ε rule against the representative, no chaining,
representatives by pHash dedup's order, rows that take no part, the stored-embedding reader, real tiny-CLIP
embeddings and the config check."""
from __future__ import annotations

import io

import numpy as np
import pyarrow as pa
import pytest
from PIL import Image

from curate.config import ConfigError, DedupConfig, load_config
from curate.dedup.semantic import (DETAIL, find_semantic_duplicates, kmeans, assign, load_embeddings,
                                   n_clusters, normalised, phash_representatives)
from curate.layout import RunLayout
from curate.schema import COL, Status

EPS = 0.1


def _meta(n: int, scores=None, areas=None) -> pa.Table:
    scores = [0.5] * n if scores is None else scores
    areas = [64] * n if areas is None else areas
    return pa.table({COL.UID: [f"u{i:04d}" for i in range(n)], COL.CLIP_SCORE: pa.array(scores, pa.float32()),
                     COL.WIDTH: pa.array([a // 8 for a in areas], pa.int32()),
                     COL.HEIGHT: pa.array([8] * n, pa.int32())})


def _unit(v) -> np.ndarray:
    v = np.asarray(v, np.float64)
    return v / np.linalg.norm(v, axis=-1, keepdims=True)


def _at_distance(base: np.ndarray, other: np.ndarray, dist: float) -> np.ndarray:
    """A unit vector at cosine distance `dist` from unit `base`, in the plane of base and `other`."""
    ortho = _unit(other - (other @ base) * base)
    cos = 1 - dist
    return cos * base + np.sqrt(1 - cos * cos) * ortho


def _drops(meta, emb, eps=EPS, clusters=1, protected=None, has=None) -> dict[str, str]:
    cfg = DedupConfig(semantic=True, semantic_eps=eps, semantic_clusters=clusters)
    has = np.ones(meta.num_rows, bool) if has is None else has
    out = find_semantic_duplicates(meta, emb.astype(np.float16), has, cfg, seed=0, protected=protected)
    assert set(out[COL.STATUS].to_pylist()) <= {Status.DUPLICATE}
    return dict(zip(out[COL.UID].to_pylist(), out[COL.REASON].to_pylist()))


def _rep(reason: str) -> str:
    assert reason.startswith(f"{Status.DUPLICATE}:{DETAIL}"), reason
    return reason.split(DETAIL, 1)[1]


def test_kmeans_finds_planted_groups():
    rng = np.random.default_rng(0)
    centres = _unit(rng.standard_normal((6, 32)))
    truth = np.repeat(np.arange(6), 50)
    x = normalised(centres[truth] + 0.05 * rng.standard_normal((300, 32))).astype(np.float16)
    labels = assign(x, kmeans(x, 6, seed=0))
    for g in range(6):  # every planted group lies in one cluster, and no cluster mixes groups
        assert len(set(labels[truth == g])) == 1
    assert len(set(labels)) == 6
    assert n_clusters(10_000) == 100 and n_clusters(3, 0) == 2 and n_clusters(5, 50) == 5


def test_no_chaining_and_the_distance_rule():
    # a -> b -> c each 0.8 eps apart, a and c 1.6 eps apart (cosine distance): b joins a, c stays
    rng = np.random.default_rng(1)
    a = _unit(rng.standard_normal(16))
    b = _at_distance(a, _unit(rng.standard_normal(16)), 0.8 * EPS)
    c = _at_distance(b, b - a + 1e-3 * rng.standard_normal(16), 0.8 * EPS)
    assert 1 - a @ c > EPS  # the chain really is longer than eps end to end
    emb = np.stack([a, b, c])
    assert _drops(_meta(3, scores=[0.9, 0.8, 0.7]), emb) == {"u0001": f"duplicate:{DETAIL}u0000"}
    # rank b first: b leads and claims both a and c (each within eps of b itself)
    assert _drops(_meta(3, scores=[0.8, 0.9, 0.7]), emb) == {"u0000": f"duplicate:{DETAIL}u0001",
                                                             "u0002": f"duplicate:{DETAIL}u0001"}


def test_representative_order_is_phash_dedups():
    rng = np.random.default_rng(2)
    base = _unit(rng.standard_normal(16))
    emb = np.stack([base, base, base, base])
    # clip_score desc (nulls take no part), then area desc, then uid asc
    drops = _drops(_meta(4, scores=[0.1, 0.3, 0.3, 0.2], areas=[64, 64, 128, 512]), emb)
    assert set(drops) == {"u0000", "u0001", "u0003"} and {_rep(r) for r in drops.values()} == {"u0002"}
    drops = _drops(_meta(4, scores=[0.3, 0.3, 0.3, 0.3]), emb)
    assert {_rep(r) for r in drops.values()} == {"u0000"}


def test_random_groups_keep_the_rule_over_many_clusters():
    rng = np.random.default_rng(3)
    centres = _unit(rng.standard_normal((40, 24)))
    emb = normalised(centres[rng.integers(0, 40, 600)] + 0.06 * rng.standard_normal((600, 24)))
    meta = _meta(600, scores=list(rng.random(600)))
    drops = _drops(meta, emb, eps=0.02, clusters=0)
    assert 0 < len(drops) < 600
    uids = meta[COL.UID].to_pylist()
    x = normalised(emb.astype(np.float16))
    for uid, why in drops.items():
        rep = _rep(why)
        assert rep not in drops  # the representative is kept
        i, j = uids.index(uid), uids.index(rep)
        assert 1 - float(x[i] @ x[j]) <= 0.02 + 1e-5
        assert meta[COL.CLIP_SCORE][j].as_py() >= meta[COL.CLIP_SCORE][i].as_py()


def test_rows_that_take_no_part_and_protected_representatives():
    base = _unit(np.arange(1, 17))
    emb = np.stack([base] * 5)
    meta = _meta(5, scores=[0.9, None, 0.5, 0.4, 0.3])
    has = np.array([True, True, True, True, False])
    # u0001: no CLIP score (its embedding is a blank image's); u0004: no stored embedding
    assert set(_drops(meta, emb, has=has)) == {"u0002", "u0003"}
    # a pHash representative may lead but is never claimed
    drops = _drops(meta, emb, has=has, protected=np.array([False, False, True, False, False]))
    assert set(drops) == {"u0003"} and _rep(drops["u0003"]) == "u0000"
    ph = pa.table({COL.UID: ["x", "y"], COL.STATUS: [Status.DUPLICATE] * 2,
                   COL.REASON: ["duplicate:duplicate_of:u0002", "duplicate:sha256"]})
    assert phash_representatives(meta, ph).tolist() == [False, False, True, False, False]


def test_eps_zero_drops_only_identical_embeddings():
    rng = np.random.default_rng(4)
    a, b = _unit(rng.standard_normal(16)), _unit(rng.standard_normal(16))
    emb = np.stack([a, a, _at_distance(a, b, 0.01), b])
    assert _drops(_meta(4), emb, eps=0.0) == {"u0001": f"duplicate:{DETAIL}u0000"}


def test_load_embeddings_in_row_order(tmp_path):
    from curate.clip.scorer import IMAGE_EMB
    from curate.stage_io import parquet_bytes

    lay = RunLayout(str(tmp_path))
    (tmp_path / "stage").mkdir()
    vecs = np.arange(12, dtype=np.float16).reshape(3, 4)
    for unit, rows in ((0, [0, 1]), (1, [2])):
        t = pa.table({COL.UID: [f"u{r}" for r in rows], IMAGE_EMB: pa.FixedSizeListArray.from_arrays(
            pa.array(vecs[rows].reshape(-1)), 4)})
        (tmp_path / "stage" / lay.unit(unit).embeddings.rsplit("/", 1)[1]).write_bytes(parquet_bytes(t))
    emb, has = load_embeddings(str(tmp_path), [0, 1, 2], pa.array(["u2", "nope", "u0"]))
    assert has.tolist() == [True, False, True]
    assert emb[0].tolist() == vecs[2].tolist() and emb[2].tolist() == vecs[0].tolist() and not emb[1].any()


def test_semantic_dedup_in_the_driver_does_not_import_torch():
    """Phase B runs semantic dedup in the driver, which stays torch-free (the column names come from
    curate.clip.identity, not from the scorer)."""
    import subprocess
    import sys
    from pathlib import Path

    code = ("import sys, pyarrow as pa, tempfile\nfrom curate.dedup.semantic import load_embeddings\n"
            "load_embeddings(tempfile.mkdtemp(), [0], pa.array(['u0']))\nprint('torch' in sys.modules)")
    root = Path(__file__).resolve().parents[1]
    r = subprocess.run([sys.executable, "-c", code], cwd=root, capture_output=True, text=True, check=True)
    assert r.stdout.strip() == "False"


def test_real_tiny_clip_copies_are_semantic_duplicates(tmp_path):
    """A tiny open_clip model's stored embeddings: a re-encoded copy lies within ε, other images do not."""
    from curate.clip.scorer import IMAGE_EMB, score_table
    from curate.config import ClipConfig
    from tests.pipeline.helpers import tiny_clip_config

    rng = np.random.default_rng(5)
    imgs = [Image.fromarray(rng.integers(0, 255, (48, 48, 3), np.uint8)) for _ in range(3)]
    imgs[2] = Image.fromarray(np.kron(rng.integers(0, 255, (4, 4, 3), np.uint8), np.ones((12, 12, 1), np.uint8)))

    def jpeg(img, q):
        buf = io.BytesIO()
        img.save(buf, "JPEG", quality=q)
        return buf.getvalue()
    data = [jpeg(imgs[0], 95), jpeg(imgs[0], 60), jpeg(imgs[1], 95), jpeg(imgs[2], 95)]
    table = pa.table({COL.UID: [f"u{i:04d}" for i in range(4)], "image": data,
                      COL.CAPTION_CLEAN: ["a photo"] * 4})
    cfg = ClipConfig(model=str(tiny_clip_config(tmp_path)), device="cpu", save_embeddings=True)
    scored = score_table(table, cfg)
    col = scored[IMAGE_EMB].combine_chunks()
    emb = col.flatten().to_numpy(zero_copy_only=False).reshape(4, -1)
    x = normalised(emb)
    dist = 1 - x @ x.T
    eps = float(dist[0, 1]) * 1.01 + 1e-4  # just past the copy's distance
    meta = _meta(4, scores=[0.9, 0.8, 0.7, 0.6])
    drops = _drops(meta, emb, eps=eps)
    assert drops.get("u0001") == f"duplicate:{DETAIL}u0000"
    assert all(1 - float(x[int(u[1:])] @ x[int(_rep(r)[1:])]) <= eps + 1e-5 for u, r in drops.items())
    assert dist[0, 1] < dist[0, 2]  # the copy is nearer than another image


def test_config_needs_stored_embeddings():
    with pytest.raises(ConfigError, match="dedup.semantic.*clip.save_embeddings"):
        load_config(None, {"dedup.semantic": True})
    with pytest.raises(ConfigError, match="dedup.semantic.*dedup.enabled"):
        load_config(None, {"dedup.semantic": True, "dedup.enabled": False, "clip.save_embeddings": True})
    with pytest.raises(ConfigError, match="dedup.semantic_eps"):
        load_config(None, {"dedup.semantic_eps": 2.5})
    with pytest.raises(ConfigError, match="dedup.semantic_clusters"):
        load_config(None, {"dedup.semantic_clusters": -1})
    cfg = load_config(None, {"dedup.semantic": True, "clip.save_embeddings": True})
    assert cfg.dedup.semantic and cfg.dedup.semantic_clusters == 0
