"""Tests for global near-duplicate clustering: a real-photo near-duplicate set, banding vs brute force, Ray."""
from __future__ import annotations

import io

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import given, settings, strategies as st
from PIL import Image, ImageDraw, ImageEnhance, ImageOps

from curate.config import DedupConfig
from curate.dedup.cluster import SearchStats, find_duplicates, find_duplicates_ray, near_pairs
from curate.dedup.hashing import add_hashes
from curate.dedup.mih import cross_hits, plan
from curate.schema import COL, Status

PHOTOS = ("astronaut", "coffee", "chelsea", "rocket", "camera", "coins", "moon", "clock", "hubble_deep_field",
          "immunohistochemistry", "retina", "cell", "brick", "grass", "gravel", "page", "text")
STORE_SIDE = 256  # the pipeline hashes the stored image, resized to about this side


def _jpeg(img: Image.Image, quality: int) -> bytes:
    buf = io.BytesIO()
    img.convert("RGB").save(buf, "JPEG", quality=quality)
    return buf.getvalue()


def _stored(img: Image.Image) -> bytes:
    """What the image stage would store: longest side at most STORE_SIDE, JPEG q95."""
    img = img.convert("RGB")
    scale = STORE_SIDE / max(img.size)
    if scale < 1:
        img = img.resize((max(1, round(img.width * scale)), max(1, round(img.height * scale))), Image.LANCZOS)
    return _jpeg(img, 95)


def _crop(img: Image.Image, left: float, top: float, right: float, bottom: float) -> Image.Image:
    w, h = img.size
    return img.crop((int(w * left), int(h * top), int(w * right), int(h * bottom)))


def _watermark(img: Image.Image) -> Image.Image:
    img = img.convert("RGB").copy()
    ImageDraw.Draw(img).text((int(img.width * 0.6), int(img.height * 0.88)), "(c) stock", fill=(255, 255, 255))
    return img


VARIANTS = {
    "half": lambda im: im.resize((im.width // 2, im.height // 2), Image.BILINEAR),
    "jpeg_q15": lambda im: Image.open(io.BytesIO(_jpeg(im, 15))),
    "crop_3pct": lambda im: _crop(im, 0.015, 0.015, 0.985, 0.985),
    "brightness_10pct": lambda im: ImageEnhance.Brightness(im).enhance(1.1),
    "watermark": _watermark,
    "thin_border": lambda im: ImageOps.expand(im.convert("RGB"), border=max(2, max(im.size) // 50), fill="white"),
}
# Hard negatives: different crops of the same photo (60 % of each side, from three corners).
NEGATIVE_CROPS = ((0, 0, 0.6, 0.6), (0.4, 0.4, 1, 1), (0, 0.4, 0.6, 1))


def near_dup_set() -> tuple[list[str], list[str], list[bytes]]:
    """(group, variant, stored bytes) per image: each photo with its variants share a group; every hard
    negative crop is a group of its own."""
    import skimage.data

    groups, variants, blobs = [], [], []
    for name in PHOTOS:
        photo = Image.fromarray(getattr(skimage.data, name)()).convert("RGB")
        made = [(name, v, make(photo)) for v, make in {"original": lambda im: im, **VARIANTS}.items()]
        made += [(f"{name}/crop{i}", "original", _crop(photo, *box)) for i, box in enumerate(NEGATIVE_CROPS)]
        for group, variant, img in made:
            groups.append(group)
            variants.append(variant)
            blobs.append(_stored(img))
    return groups, variants, blobs


def pair_scores(groups: list[str], same: np.ndarray) -> dict:
    """Pairwise precision/recall/F1 of a predicted same-cluster matrix against the groups."""
    truth = np.array([[a == b for b in groups] for a in groups])
    iu = np.triu_indices(len(groups), 1)
    t, p = truth[iu], same[iu]
    tp = int((t & p).sum())
    precision = tp / max(1, int(p.sum()))
    recall = tp / max(1, int(t.sum()))
    return {"precision": precision, "recall": recall, "f1": 2 * precision * recall / max(1e-9, precision + recall)}


def _meta(hashes, sha=None, clip=None, width=None, height=None, uids=None) -> pa.Table:
    n = len(hashes)
    return pa.table({
        COL.UID: uids or [f"u{i:04d}" for i in range(n)],
        COL.SHA256: sha or [f"s{i}" for i in range(n)],
        COL.PHASH: pa.array(hashes, pa.uint64()),
        COL.DHASH: pa.array([None] * n, pa.uint64()),
        COL.CLIP_SCORE: pa.array(clip or [None] * n, pa.float32()),
        COL.WIDTH: pa.array(width or [100] * n, pa.int32()),
        COL.HEIGHT: pa.array(height or [100] * n, pa.int32()),
    })


def _clusters(meta: pa.Table, drops: pa.Table) -> list[str]:
    """Cluster label per row of meta: the representative's uid (own uid for kept rows)."""
    rep = {}
    for row in drops.to_pylist():
        if row[COL.STATUS] == Status.DUPLICATE:
            rep[row[COL.UID]] = row[COL.REASON].rsplit(":", 1)[1]
    return [rep.get(u, u) for u in meta[COL.UID].to_pylist()]


@pytest.fixture(scope="module")
def photo_set():
    groups, variants, blobs = near_dup_set()
    table = pa.table({COL.UID: [f"{g}|{v}" for g, v in zip(groups, variants)], COL.IMAGE: blobs})
    hashed = add_hashes(table, DedupConfig())
    n = table.num_rows
    meta = hashed.select([COL.UID, COL.PHASH, COL.DHASH]).append_column(
        COL.SHA256, pa.array([f"s{i}" for i in range(n)])).append_column(
        COL.CLIP_SCORE, pa.array([None] * n, pa.float32())).append_column(
        COL.WIDTH, pa.array([256] * n, pa.int32())).append_column(COL.HEIGHT, pa.array([256] * n, pa.int32()))
    return groups, variants, blobs, meta


def _cluster_f1(groups, meta, k: int) -> dict:
    labels = np.array(_clusters(meta, find_duplicates(meta, DedupConfig(k=k))))
    return pair_scores(groups, labels[:, None] == labels[None, :])


def test_near_duplicate_set_beats_imagehash(photo_set):
    import imagehash

    groups, variants, blobs, meta = photo_set
    k = DedupConfig().k
    ours = _cluster_f1(groups, meta, k)
    ih = np.array([int(str(imagehash.phash(Image.open(io.BytesIO(b)))), 16) for b in blobs], np.uint64)
    dist = np.bitwise_count(ih[:, None] ^ ih[None, :])
    theirs = {t: pair_scores(groups, dist <= t)["f1"] for t in range(0, 33)}
    best = max(theirs, key=theirs.get)
    ours_at_best = _cluster_f1(groups, meta, best)
    print(f"ours k={k}: {ours}; at k={best}: {ours_at_best}; imagehash k={k}: {theirs[k]:.3f}, "
          f"best k={best}: {theirs[best]:.3f}")
    # measured at k=8: precision 1.0, recall 0.966, F1 0.983; imagehash 0.898 at k=8, best 0.994 at k=16
    # (this set's hard negatives are all >= 18 bits apart, so imagehash can afford k=16 here; ours: F1 1.0)
    assert ours["precision"] == 1.0 and ours["recall"] >= 0.94
    assert ours["f1"] > 0.954
    assert ours["f1"] > theirs[k] + 0.03           # same threshold: border trimming + union-find
    assert ours_at_best["f1"] > theirs[best]       # and at imagehash's own best threshold


def test_each_variant_clusters_with_its_original_and_crops_do_not(photo_set):
    groups, variants, _, meta = photo_set
    labels = _clusters(meta, find_duplicates(meta, DedupConfig()))
    original = {g: labels[i] for i, (g, v) in enumerate(zip(groups, variants)) if v == "original"}
    recall = {}
    for variant in VARIANTS:
        hits = [labels[i] == original[g] for i, (g, v) in enumerate(zip(groups, variants)) if v == variant]
        recall[variant] = sum(hits) / len(hits)
    print(recall)  # measured at k=8: crop_3pct and thin_border 16/17, the other variants 17/17
    assert all(r >= (0.85 if v == "crop_3pct" else 0.94) for v, r in recall.items()), recall
    photo_labels = {original[p] for p in PHOTOS}
    crops = [labels[i] for i, g in enumerate(groups) if "/crop" in g]
    assert len(set(crops)) == len(crops) and not photo_labels & set(crops)


def test_border_trimming_lifts_thin_border_recall(photo_set):
    groups, variants, blobs, meta = photo_set
    plain = add_hashes(pa.table({COL.IMAGE: blobs}), DedupConfig(trim_borders=False))
    plain_meta = meta.set_column(meta.schema.get_field_index(COL.PHASH), COL.PHASH, plain[COL.PHASH])
    recall = {}
    for name, m in (("trim", meta), ("plain", plain_meta)):
        labels = _clusters(m, find_duplicates(m, DedupConfig()))
        original = {g: labels[i] for i, (g, v) in enumerate(zip(groups, variants)) if v == "original"}
        hits = [labels[i] == original[g] for i, (g, v) in enumerate(zip(groups, variants)) if v == "thin_border"]
        recall[name] = sum(hits) / len(hits)
    print(recall)  # measured at k=8: trim 16/17, plain 8/17
    assert recall["trim"] >= recall["plain"] + 0.2, recall


def _planted(rng, n_random: int, n_planted: int, k: int) -> np.ndarray:
    base = rng.integers(0, 2**64, n_random, dtype=np.uint64, endpoint=False)
    src = base[rng.integers(0, n_random, n_planted)]
    flips = np.zeros(n_planted, np.uint64)
    for t in range(n_planted):
        for bit in rng.choice(64, int(rng.integers(0, k + 3)), replace=False):
            flips[t] |= np.uint64(1) << np.uint64(bit)
    return np.concatenate([base, src ^ flips])


def _brute_components(h: np.ndarray, k: int) -> list[frozenset]:
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    i, j = np.nonzero(np.bitwise_count(h[:, None] ^ h[None, :]) <= k)
    _, comp = connected_components(coo_matrix((np.ones(len(i)), (i, j)), shape=(len(h), len(h))))
    groups: dict = {}
    for r, c in enumerate(comp):
        groups.setdefault(c, set()).add(r)
    return sorted(frozenset(g) for g in groups.values() if len(g) > 1)


@settings(max_examples=12, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), k=st.integers(0, 12), n=st.integers(2, 300), narrow=st.booleans())
def test_multi_index_clustering_equals_brute_force(seed, k, n, narrow):
    rng = np.random.default_rng(seed)
    h = _planted(rng, n, n // 2 + 1, k)
    if narrow:  # few distinct bits: many shared buckets and exact repeats
        h &= np.uint64(0xFF00000000000FFF)
    drops = find_duplicates(_meta(h.tolist()), DedupConfig(k=k, max_bucket=10**9))
    labels = _clusters(_meta(h.tolist()), drops)
    got: dict = {}
    for r, lab in enumerate(labels):
        got.setdefault(lab, set()).add(r)
    assert sorted(frozenset(g) for g in got.values() if len(g) > 1) == _brute_components(h, k)


def test_near_pairs_equal_brute_force_pairs():
    rng = np.random.default_rng(7)
    for k in (0, 3, 8, 12):
        u = np.unique(_planted(rng, 1500, 600, k))
        a, b = near_pairs(u, k, max_bucket=10**9)
        i, j = np.nonzero(np.triu(np.bitwise_count(u[:, None] ^ u[None, :]) <= k, 1))
        assert set(zip(a.tolist(), b.tolist())) == set(zip(i.tolist(), j.tolist()))


@pytest.mark.parametrize("n_data,n_probe", [(2000, 30), (30, 2000)])  # both sides get indexed
def test_cross_hits_equal_brute_force(n_data, n_probe):
    rng = np.random.default_rng(n_data)
    for k in (0, 2, 8):
        data = np.unique(_planted(rng, n_data, n_data // 3 + 1, k))
        probe = data[rng.integers(0, len(data), n_probe)] ^ (np.uint64(1) << rng.integers(0, 64, n_probe).astype(np.uint64))
        want = np.flatnonzero((np.bitwise_count(data[:, None] ^ probe[None, :]) <= k).any(axis=1))
        assert np.array_equal(cross_hits(data, probe, k), want)


def test_plan_at_scale():
    # the search the docs describe: 16M hashes at k=8 -> three 21/22-bit tables probed to radius 2
    subs = plan(8, 16_000_000, 16_000_000)
    assert [(s.width, s.radius) for s in subs] == [(22, 2), (21, 2), (21, 2)]
    assert sum(s.radius + 1 for s in subs) >= 8 + 1  # the pigeonhole condition: no false negatives
    for k in range(0, 32):
        assert sum(s.radius + 1 for s in plan(k, 1000, 1000)) >= k + 1


def test_giant_bucket_is_bounded_and_counted():
    # 3000 hashes with only their low 20 bits set: whatever the split, most keys are shared by hundreds
    rng = np.random.default_rng(3)
    h = rng.integers(0, 2**20, 3000, dtype=np.uint64)
    stats = SearchStats()
    find_duplicates(_meta(h.tolist()), DedupConfig(k=2, max_bucket=50), stats)
    assert stats.giant_buckets >= 1
    probes = sum(sub.probes() for sub in stats.tables)
    assert 0 < stats.compared <= probes * 3000 * 50  # probes * n * max_bucket, not n^2
    assert stats.compared < 3000 * 2999 // 2


def test_representative_rule_and_reasons():
    # rows 0-3 one cluster: 1 has the best clip score; 4/5 tie on clip (null) -> larger area 5; 6/7 tie -> uid
    b, c = 0xFFFF0000FFFF0000, 0x00FF00FF00FF00FF
    h = [0b0, 0b1, 0b11, 0b111, b, b ^ 1, c, c ^ 2, 0x5555555555555555]
    sha = ["a", "b", "c", "a", "d", "e", "f", "g", "b"]
    meta = _meta(h, sha=sha, clip=[0.1, 0.9, 0.2, None, None, None, None, None, 0.05],
                 width=[10, 10, 10, 10, 10, 20, 10, 10, 10])
    drops = {r[COL.UID]: r[COL.REASON] for r in find_duplicates(meta, DedupConfig(k=1)).to_pylist()}
    assert drops == {
        "u0000": "duplicate:duplicate_of:u0001", "u0002": "duplicate:duplicate_of:u0001",
        "u0003": "duplicate:duplicate_of:u0001", "u0004": "duplicate:duplicate_of:u0005",
        "u0007": "duplicate:duplicate_of:u0006",
        "u0008": "duplicate:sha256",  # identical bytes to u0001 whatever its hash
    }


def test_exact_sha256_without_hashes_and_disabled():
    meta = _meta([None, None, 5], sha=["x", "x", "x"], clip=[0.1, 0.3, 0.2])
    out = find_duplicates(meta, DedupConfig(k=0))
    assert sorted(out[COL.UID].to_pylist()) == ["u0000", "u0002"]
    assert set(out[COL.REASON].to_pylist()) == {"duplicate:sha256"}
    assert find_duplicates(meta, DedupConfig(enabled=False)).num_rows == 0
    assert find_duplicates(meta, DedupConfig(exact_sha256=False)).num_rows == 0


def test_eval_overlap_from_parquet_and_text(tmp_path):
    h = [0xF0F0F0F0F0F0F0F0, 0xF0F0F0F0F0F0F0F3, 0x0F0F0F0F0F0F0F0F, 0x1234]
    meta = _meta(h, clip=[0.9, 0.1, 0.5, 0.5])
    pq.write_table(pa.table({COL.PHASH: pa.array([0xF0F0F0F0F0F0F0F1], pa.uint64())}), tmp_path / "e.parquet")
    (tmp_path / "e.txt").write_text("f0f0f0f0f0f0f0f1\n")
    for path in (tmp_path / "e.parquet", tmp_path / "e.txt"):
        out = find_duplicates(meta, DedupConfig(k=2, eval_hashes=str(path))).to_pylist()
        assert out == [{COL.UID: u, COL.STATUS: Status.EVAL_OVERLAP, COL.REASON: "eval_overlap"}
                       for u in ("u0000", "u0001")]


def test_ray_version_finds_clusters_across_units(tmp_path):
    import ray

    rng = np.random.default_rng(11)
    h = _planted(rng, 60, 60, 3)
    n = len(h)
    meta = _meta(h.tolist(), sha=[f"s{i % 110}" for i in range(n)],
                 clip=[float(x) for x in rng.random(n)], uids=[f"{i:05d}" for i in range(n)])
    status = pa.array([Status.OK] * (n - 5) + [Status.DOWNLOAD_ERROR] * 5)
    ledger = meta.append_column(COL.STATUS, status)
    paths = []
    for unit, rows in enumerate(np.array_split(rng.permutation(n), 3)):  # clusters span the three units
        paths.append(str(tmp_path / f"{unit:06d}.parquet"))
        pq.write_table(ledger.take(pa.array(np.sort(rows))), paths[-1])
    cfg = DedupConfig(k=3, max_bucket=40)
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        got = find_duplicates_ray(paths, cfg)
    finally:
        ray.shutdown()
    ok = pa.concat_tables([pq.read_table(p) for p in paths]).filter(pa.compute.equal(pa.compute.field(COL.STATUS), Status.OK))
    want = find_duplicates(ok.drop_columns([COL.STATUS]), cfg)
    assert got.sort_by(COL.UID).equals(want.sort_by(COL.UID))
    units = {u: i for i, p in enumerate(paths) for u in pq.read_table(p)[COL.UID].to_pylist()}
    spans = [r for r in got.to_pylist() if "duplicate_of:" in r[COL.REASON]
             and units[r[COL.UID]] != units[r[COL.REASON].rsplit(":", 1)[1]]]
    assert len(spans) > 5
