"""Tests for global near-duplicate clustering: a real-photo near-duplicate set, the search and the greedy
leader rule against brute force (no chaining), the low-detail rule, the second search, Ray."""
from __future__ import annotations

import io
from dataclasses import replace

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import given, settings, strategies as st
from PIL import Image, ImageDraw, ImageEnhance, ImageOps

from curate.config import DedupConfig
from curate.dedup.cluster import SearchStats, find_duplicates, near_pairs
from curate.dedup.hashing import add_hashes
from curate.dedup.mih import cross_hits, plan
from curate.schema import COL, Status
from tests.pipeline.helpers import colour_agrees, plain_agrees

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


def _meta(hashes, sha=None, clip=None, width=None, height=None, uids=None, dhash=None, grids=None,
          details=None) -> pa.Table:
    n = len(hashes)
    return pa.table({
        COL.UID: uids or [f"u{i:04d}" for i in range(n)],
        COL.SHA256: sha or [f"s{i}" for i in range(n)],
        COL.PHASH: pa.array(hashes, pa.uint64()),
        COL.DHASH: pa.array(dhash or [None] * n, pa.uint64()),
        COL.CLIP_SCORE: pa.array(clip or [None] * n, pa.float32()),
        COL.WIDTH: pa.array(width or [100] * n, pa.int32()),
        COL.HEIGHT: pa.array(height or [100] * n, pa.int32()),
        COL.RGB_GRID: pa.array(grids or [None] * n, pa.binary()),
        COL.DETAIL: pa.array(details or [None] * n, pa.float32()),
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
    meta = hashed.select([COL.UID, COL.PHASH, COL.DHASH, COL.RGB_GRID]).append_column(
        COL.SHA256, pa.array([f"s{i}" for i in range(n)])).append_column(
        COL.CLIP_SCORE, pa.array([None] * n, pa.float32())).append_column(
        COL.WIDTH, pa.array([256] * n, pa.int32())).append_column(COL.HEIGHT, pa.array([256] * n, pa.int32()))
    return groups, variants, blobs, meta


def _cluster_f1(groups, meta, k: int) -> dict:
    """Pairwise scores at threshold k, the low-detail bound moved with it (the default's k - 1)."""
    labels = np.array(_clusters(meta, find_duplicates(meta, DedupConfig(k=k, low_detail_k=max(0, k - 1)))))
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
    # measured at k=8: precision 1.0, recall 0.908, F1 0.952 (connected components: recall 0.966, through
    # chains; leaders claim only what is within k of themselves); imagehash 0.898 at k=8, best 0.994 at k=16
    # (this set's hard negatives are all >= 18 bits apart, so imagehash can afford k=16 here; ours: F1 1.0)
    assert ours["precision"] == 1.0 and ours["recall"] >= 0.9
    assert ours["f1"] > 0.95
    assert ours["f1"] > theirs[k] + 0.03           # same threshold: border trimming
    assert ours_at_best["f1"] > theirs[best]       # and at imagehash's own best threshold


def test_each_variant_clusters_with_its_original_and_crops_do_not(photo_set):
    groups, variants, _, meta = photo_set
    labels = _clusters(meta, find_duplicates(meta, DedupConfig()))
    original = {g: labels[i] for i, (g, v) in enumerate(zip(groups, variants)) if v == "original"}
    recall = {}
    for variant in VARIANTS:
        hits = [labels[i] == original[g] for i, (g, v) in enumerate(zip(groups, variants)) if v == variant]
        recall[variant] = sum(hits) / len(hits)
    print(recall)  # measured at k=8: crop_3pct and thin_border 15/17, watermark 16/17, the others 17/17
    # (low_detail_k 7 instead of 8 lost a watermark and a jpeg_q15 copy here: one reason the default is 8)
    assert all(r >= (0.85 if v in ("crop_3pct", "thin_border") else 0.94) for v, r in recall.items()), recall
    photo_labels = {original[p] for p in PHOTOS}
    crops = [labels[i] for i, g in enumerate(groups) if "/crop" in g]
    assert len(set(crops)) == len(crops) and not photo_labels & set(crops)


def test_border_trimming_lifts_thin_border_recall(photo_set):
    groups, variants, blobs, meta = photo_set
    plain = add_hashes(pa.table({COL.IMAGE: blobs}), DedupConfig(trim_borders=False))
    plain_meta = meta.set_column(meta.schema.get_field_index(COL.PHASH), COL.PHASH, plain[COL.PHASH])
    recall = {}
    for name, m in (("trim", meta), ("plain", plain_meta)):  # pHash alone: plain_meta keeps the trimmed dHash
        labels = _clusters(m, find_duplicates(m, DedupConfig(second_k=-1)))
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


def _grids(rng, n: int) -> list:
    """rgb_grids for n rows: a few base colourings (one grey), each row one of them shifted a little (the colour
    check mostly agrees) or a lot (it parts them), brightened as a whole or in its top half only (chromaticity
    mostly stays); some rows lack a grid (no check)."""
    base = rng.integers(0, 200, (3, 48))
    base[2] = np.repeat(base[2, ::3], 3)  # grey: r = g = b in every cell
    pick, how = rng.integers(0, 3, n), rng.integers(0, 5, n)
    out = []
    for p, h in zip(pick, how):
        g = base[p] + (rng.integers(-3, 4, 48) if h == 0 else rng.integers(-60, 61, 48) if h == 1 else 0)
        g = g * 1.15 if h == 2 else g * np.repeat([1.4, 1.0], 24) if h == 4 else g
        out.append(None if h == 3 and rng.random() < 0.5 else bytes(np.clip(g, 0, 255).astype(np.uint8)))
    return out


def _claim_detail(h, dh, low, r, s, cfg: DedupConfig, grids=None, details=None) -> str | None:
    """The rule for one pair, the slow way: the reason detail under which leader r claims row s, or None."""
    if grids is not None and not colour_agrees(grids[r], grids[s], cfg):
        return None
    by_hash = _hash_detail(h, dh, low, r, s, cfg)
    if by_hash or details is None or grids is None:
        return by_hash
    rows = [{COL.DETAIL: details[i], COL.RGB_GRID: grids[i]} for i in (r, s)]
    return "plain:duplicate_of:" if cfg.plain_detail > 0 and plain_agrees(*rows, cfg) else None


def _hash_detail(h, dh, low, r, s, cfg: DedupConfig) -> str | None:
    """The hash part of the rule for one pair: duplicate_of, low_detail or second_hash, or None."""
    dist = lambda x, y: bin(int(x) ^ int(y)).count("1")
    strict = low[r] or low[s]
    if dist(h[r], h[s]) <= cfg.k:
        if not strict:
            return "duplicate_of:"
        if dh[r] is None or dh[s] is None:
            return "low_detail:duplicate_of:" if h[r] == h[s] else None
        if dist(dh[r], dh[s]) <= cfg.low_detail_k:
            return "low_detail:duplicate_of:"
    if strict or dh[r] is None or dh[s] is None or cfg.second_k < 0:
        return None
    ok = dist(dh[r], dh[s]) <= cfg.second_k and dist(h[r], h[s]) <= cfg.loose_k
    return "second_hash:duplicate_of:" if ok else None


def _greedy_reference(h: np.ndarray, dh: list, clip: list, cfg: DedupConfig, grids=None, details=None) -> dict:
    """The clustering rule written the slow way, for _meta rows (equal areas, uid = row order): rows by clip
    score (desc); the best unclaimed row claims every unclaimed row that _claim_detail allows. Returns
    {uid: reason} of the claimed rows."""
    order = sorted(range(len(h)), key=lambda i: (-clip[i], i))
    low = [d is not None and abs(bin(d).count("1") - 32) >= cfg.low_detail_bits for d in dh]
    leader, out = {}, {}
    for r in order:
        if r in leader:
            continue
        leader[r] = r
        for s in order:
            detail = None if s in leader else _claim_detail(h, dh, low, r, s, cfg, grids, details)
            if detail:
                leader[s] = r
                out[f"u{s:04d}"] = f"duplicate:{detail}u{r:04d}"
    return out


def assert_rule_against_kept_representative(meta: pa.Table, drops: pa.Table, cfg: DedupConfig) -> None:
    """Every duplicate_of row satisfies the rule of its reason against its representative, which is not
    dropped (the same check as tests/pipeline/helpers.py: assert_duplicate_rule, on find_duplicates' output)."""
    h = dict(zip(meta[COL.UID].to_pylist(), meta[COL.PHASH].to_pylist()))
    dh = dict(zip(meta[COL.UID].to_pylist(), meta[COL.DHASH].to_pylist()))
    grid = dict(zip(meta[COL.UID].to_pylist(), meta[COL.RGB_GRID].to_pylist()))
    plain = {r[COL.UID]: r for r in meta.select([COL.UID, COL.DETAIL, COL.RGB_GRID]).to_pylist()} \
        if COL.DETAIL in meta.column_names else {}
    dropped = set(drops[COL.UID].to_pylist())
    dist = lambda x, y: bin(x ^ y).count("1") if None not in (x, y) else 65
    for row in drops.to_pylist():
        if ":duplicate_of:" in row[COL.REASON]:
            u, rep = row[COL.UID], row[COL.REASON].rsplit(":", 1)[1]
            assert rep not in dropped, row
            assert colour_agrees(grid[u], grid[rep], cfg), row
            if row[COL.REASON].startswith("duplicate:plain:"):
                assert plain_agrees(plain[u], plain[rep], cfg), row
                continue
            if row[COL.REASON].startswith("duplicate:second_hash:"):
                assert dist(h[u], h[rep]) <= cfg.loose_k and dist(dh[u], dh[rep]) <= cfg.second_k, row
                continue
            assert dist(h[u], h[rep]) <= cfg.k, row
            if row[COL.REASON].startswith("duplicate:low_detail:"):
                assert dist(dh[u], dh[rep]) <= cfg.low_detail_k or (dh[u] is None and h[u] == h[rep]), row


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), k=st.integers(0, 12), n=st.integers(2, 200), narrow=st.booleans(),
       with_dhash=st.booleans(), low_k=st.integers(0, 10), second_k=st.integers(-1, 8), loose=st.integers(0, 8),
       with_grid=st.booleans(), plain_tol=st.sampled_from([0.0, 0.5, 1.5, 4.0]))
def test_clustering_equals_the_greedy_rule_by_brute_force(seed, k, n, narrow, with_dhash, low_k, second_k, loose,
                                                          with_grid, plain_tol):
    rng = np.random.default_rng(seed)
    h = _planted(rng, n, n // 2 + 1, k)
    if narrow:  # few distinct bits: many shared buckets and exact repeats
        h &= np.uint64(0xFF00000000000FFF)
    clip = [float(x) for x in rng.integers(0, 50, len(h))]  # ties: uid decides
    # dHashes: all 0 / all 1 (low-detail) or balanced, each with a few random bits: pairs near and far
    kinds = np.array([0, 2**64 - 1, 0x5555AAAA5555AAAA], np.uint64)[rng.integers(0, 3, len(h))]
    noise = rng.integers(0, 2**8, len(h), dtype=np.uint64) << np.uint64(20)
    dh = [int(x) for x in kinds ^ noise] if with_dhash else [None] * len(h)
    grids = _grids(rng, len(h)) if with_grid else None
    # plain rows (detail under plain_detail, some null) whose grids are close, some in brightness too; 0: off
    details = [None if x == 0 else float(x) for x in rng.choice([0.0, 0.1, 0.3, 5.0], len(h))]
    meta = _meta(h.tolist(), clip=clip, dhash=dh, grids=grids, details=details)
    cfg = DedupConfig(k=k, max_bucket=10**9, low_detail_bits=10, low_detail_k=low_k, second_k=second_k,
                      loose_k=min(31, k + loose), plain_detail=0.5 if plain_tol else 0.0, plain_tol=plain_tol or 1.0)
    drops = find_duplicates(meta, cfg)
    assert {r[COL.UID]: r[COL.REASON] for r in drops.to_pylist()} == _greedy_reference(h, dh, clip, cfg, grids,
                                                                                      details)
    assert_rule_against_kept_representative(meta, drops, cfg)


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), k=st.integers(1, 12), n_chains=st.integers(1, 30), noise=st.integers(0, 300))
def test_planted_chains_do_not_join_their_ends(seed, k, n_chains, noise):
    # a - b - c with d(a, b) = d(b, c) = k and d(a, c) = 2k > k, a the best: c must not end up under a
    rng = np.random.default_rng(seed)
    rows, clip = [], []
    for _ in range(n_chains):
        a = int(rng.integers(0, 2**64, dtype=np.uint64))
        bits = rng.choice(64, 2 * k, replace=False)
        b = a ^ sum(1 << int(x) for x in bits[:k])
        c = b ^ sum(1 << int(x) for x in bits[k:])
        rows += [a, b, c]
        clip += [0.9, 0.5, 0.1]
    rows += [int(x) for x in rng.integers(0, 2**64, noise, dtype=np.uint64)]
    clip += [0.0] * noise
    meta = _meta(rows, clip=clip)
    drops = find_duplicates(meta, DedupConfig(k=k))
    reasons = {r[COL.UID]: r[COL.REASON] for r in drops.to_pylist()}
    assert_rule_against_kept_representative(meta, drops, DedupConfig(k=k))
    for i in range(n_chains):
        a, b, c = (f"u{3 * i + j:04d}" for j in range(3))
        assert reasons.get(b) == f"duplicate:duplicate_of:{a}" and c not in reasons and a not in reasons


def test_low_detail_pairs_need_the_second_hash():
    # rows 0/1: pHash 2 apart, row 0 low-detail (dHash all 0), row 1's dHash far: both kept
    # rows 2/3: the same, dHash 2 apart: low_detail:duplicate_of; rows 4/5: balanced dHashes far apart: duplicate_of
    # rows 6/7: low-detail row without a dHash partner: only identical pHashes match (7 does, 8 does not)
    bal = 0x5555AAAA5555AAAA  # 32 ones: balanced
    b, c = 0xAB << 40, 0x1234 << 20
    h = [0xF0F0, 0xF0F3, 0xFF00FF, 0xFF00FC, b, b ^ 3, c, c, c ^ 1]
    dh = [0, bal, 0, 3, bal, bal ^ 0xFFFFFFFF, 0, None, None]
    clip = [0.9, 0.1, 0.9, 0.1, 0.9, 0.1, 0.9, 0.1, 0.1]
    cfg = DedupConfig(k=2, low_detail_bits=10, low_detail_k=2, second_k=-1)  # the second search: its own test
    drops = find_duplicates(_meta(h, clip=clip, dhash=dh), cfg)
    assert {r[COL.UID]: r[COL.REASON] for r in drops.to_pylist()} == {
        "u0003": "duplicate:low_detail:duplicate_of:u0002", "u0005": "duplicate:duplicate_of:u0004",
        "u0007": "duplicate:low_detail:duplicate_of:u0006"}
    off = find_duplicates(_meta(h, clip=clip, dhash=dh), DedupConfig(k=2, low_detail_bits=33, second_k=-1))
    assert sorted(off[COL.UID].to_pylist()) == ["u0001", "u0003", "u0005", "u0007", "u0008"]


def test_second_search_claims_pairs_that_both_hashes_call_near():
    # balanced dHashes (not low-detail). rows 0/1: pHash 12 apart, dHash 3 apart: second_hash (k=8, loose 16);
    # rows 2/3: pHash 18 apart, dHash 1 apart: kept (past loose_k); rows 4/5: pHash 12 apart, dHash 9 apart:
    # kept (past second_k); rows 6/7: pHash 12 apart, dHash 0 apart but both low-detail (dHash all 0): kept
    bal = 0x5555AAAA5555AAAA
    rng = np.random.default_rng(3)
    base = [int(x) for x in rng.integers(0, 2**63, 4, dtype=np.uint64)]  # pairwise ~32 bits apart
    far = lambda x, bits: x ^ sum(1 << int(b) for b in rng.choice(64, bits, replace=False))
    h = [base[0], far(base[0], 12), base[1], far(base[1], 18), base[2], far(base[2], 12), base[3], far(base[3], 12)]
    dist = lambda i, j: bin(h[i] ^ h[j]).count("1")
    assert all(dist(i, j) > 16 for i in range(8) for j in range(8) if i // 2 != j // 2)  # only the planted pairs
    dh = [bal, bal ^ 0b111, bal ^ 0xF0, bal ^ 0xF1, bal, bal ^ 0x1FF, 0, 0]
    clip = [0.9, 0.1] * 4
    meta = _meta(h, clip=clip, dhash=dh)
    cfg = DedupConfig(k=8, second_k=6, loose_k=16)
    drops = find_duplicates(meta, cfg)
    assert {r[COL.UID]: r[COL.REASON] for r in drops.to_pylist()} == {
        "u0001": "duplicate:second_hash:duplicate_of:u0000"}
    assert_rule_against_kept_representative(meta, drops, cfg)
    assert find_duplicates(meta, DedupConfig(k=8, second_k=-1)).num_rows == 0  # off: the pHash rule alone


def test_colour_check_parts_flat_images_of_other_colours_but_not_a_brighter_or_grey_copy():
    # plain images hash alike whatever their colour (pHash and dHash are gray, and flat): red, blue and a 10 %
    # darker red. The colour check keeps blue apart; the darker red is the red's copy, and so are a darker and a
    # black-and-white copy of a photo (a grey grid skips the chromaticity part). Off: the blue one is dropped too.
    import skimage.data

    photo = Image.fromarray(skimage.data.chelsea())
    images = [Image.new("RGB", (120, 90), c) for c in ((200, 40, 40), (40, 40, 200), (180, 36, 36))]
    images += [photo, ImageEnhance.Brightness(photo).enhance(0.85), photo.convert("L")]
    table = pa.table({COL.UID: [f"u{i:04d}" for i in range(6)], COL.IMAGE: [_jpeg(im, 90) for im in images]})
    hashed = add_hashes(table, DedupConfig())
    assert all(len(g) == 48 for g in hashed[COL.RGB_GRID].to_pylist())
    meta = _meta(hashed[COL.PHASH].to_pylist(), clip=[0.9, 0.8, 0.7, 0.9, 0.8, 0.7],
                 dhash=hashed[COL.DHASH].to_pylist(), grids=hashed[COL.RGB_GRID].to_pylist())
    assert meta[COL.PHASH][0] == meta[COL.PHASH][1] and meta[COL.DHASH][0] == meta[COL.DHASH][1]
    out = find_duplicates(meta, DedupConfig())
    assert {r[COL.UID]: r[COL.REASON] for r in out.to_pylist()} == {
        "u0002": "duplicate:low_detail:duplicate_of:u0000", "u0004": "duplicate:duplicate_of:u0003",
        "u0005": "duplicate:duplicate_of:u0003"}
    assert_rule_against_kept_representative(meta, out, DedupConfig())
    off = find_duplicates(meta, DedupConfig(colour_check=False))
    assert set(off[COL.UID].to_pylist()) == {"u0001", "u0002", "u0004", "u0005"}
    legacy = meta.set_column(meta.schema.get_field_index(COL.RGB_GRID), COL.RGB_GRID, pa.nulls(6, pa.binary()))
    assert find_duplicates(legacy, DedupConfig()).equals(off)  # rows hashed by an older curate: no check


def _plain_image(rng, colour, size=(120, 90), sigma=3.0) -> Image.Image:
    a = np.array(colour, np.float32) + rng.normal(0, sigma, (size[1], size[0], 1))
    return Image.fromarray(np.clip(a, 0, 255).astype(np.uint8))


def test_plain_images_match_by_colour_when_their_hashes_are_noise():
    # a plain colour with noise, re-encoded at q25 and downscaled: its pHash is the noise's, and the q25 copy's
    # lies past loose_k, so the hashes alone keep it; the plain rule claims it by colour (the downscaled copy's
    # pHash happens to lie near). Another hue, the same hue 20 % brighter and a photo stay. Plain images' details
    # are far under plain_detail, the photo's far over.
    import skimage.data

    rng = np.random.default_rng(0)
    base = _plain_image(rng, (120, 160, 200))
    images = [_jpeg(base, 95), _jpeg(base, 25), _jpeg(base.resize((72, 54), Image.BILINEAR), 95),
              _jpeg(_plain_image(rng, (200, 160, 120)), 95), _jpeg(_plain_image(rng, (144, 192, 240)), 95),
              _jpeg(Image.fromarray(skimage.data.chelsea()).resize((120, 90)), 95)]
    table = pa.table({COL.UID: [f"u{i:04d}" for i in range(6)], COL.IMAGE: images})
    hashed = add_hashes(table, DedupConfig())
    detail = hashed[COL.DETAIL].to_pylist()
    assert max(detail[:5]) < 0.25 and detail[5] > 5, detail
    meta = _meta(hashed[COL.PHASH].to_pylist(), clip=[0.9, 0.8, 0.7, 0.9, 0.9, 0.9],
                 dhash=hashed[COL.DHASH].to_pylist(), grids=hashed[COL.RGB_GRID].to_pylist(), details=detail)
    ph = np.array(hashed[COL.PHASH].to_pylist(), np.uint64)
    assert int(np.bitwise_count(ph[1] ^ ph[0])) > DedupConfig().loose_k  # noise: no hash rule reaches the q25 copy
    out = {r[COL.UID]: r[COL.REASON] for r in find_duplicates(meta, DedupConfig()).to_pylist()}
    assert out.keys() == {"u0001", "u0002"} and out["u0001"] == "duplicate:plain:duplicate_of:u0000", out
    assert out["u0002"].endswith("duplicate_of:u0000"), out  # the downscaled copy: its pHash happens to lie near
    assert_rule_against_kept_representative(meta, find_duplicates(meta, DedupConfig()), DedupConfig())
    assert "u0001" not in find_duplicates(meta, DedupConfig(plain_detail=0))[COL.UID].to_pylist()  # off
    older = meta.set_column(meta.schema.get_field_index(COL.DETAIL), COL.DETAIL, pa.nulls(6, pa.float32()))
    assert "u0001" not in find_duplicates(older, DedupConfig())[COL.UID].to_pylist()  # an older curate's rows


def test_real_photos_and_low_detail_images_keep_the_distance_rule():
    from tests.bench.bench_dedup import _pool_meta, pool_scores
    from tests.bench.dedup_pool import make_pool

    pool = make_pool(300, seed=5)
    meta = _pool_meta(pool)  # its column names are the ledger's
    drops = find_duplicates(meta, DedupConfig())
    assert_rule_against_kept_representative(meta, drops, DedupConfig())
    scores = pool_scores(pool, meta, drops)
    print(scores)  # connected components: 3 duplicate_of rows 10+ bits from their representative; on the
    # benchmark's 2,000-image pool: 1 % dropped, precision 0.977 (tests/bench/results/dedup.json)
    assert scores["without_copy_dropped"] <= 0.02 and scores["pairwise_precision"] >= 0.95



def test_benchmark_options_replay_the_default_rule_by_brute_force():
    # the rule options in dedup.json (pool_quality.options) are scored by tests/bench/dedup_options.py's brute-force
    # greedy; on real generated images it must drop exactly the rows find_duplicates drops, under the same leaders
    from tests.bench.bench_dedup import _pool_meta
    from tests.bench.dedup_options import default_rule, greedy, order
    from tests.bench.dedup_pool import make_pool

    pool = make_pool(300, seed=13)  # a pool where the colour check parts pairs that the hashes join
    meta = _pool_meta(pool)
    uid = meta["uid"].to_pylist()
    leader = greedy(default_rule(meta), order(pool))
    assert (greedy(default_rule(meta, colour=False), order(pool)) != leader).any()
    assert (greedy(default_rule(meta, plain=False), order(pool)) != leader).any()  # the plain rule matters too
    replayed = {uid[i]: uid[leader[i]] for i in range(len(uid)) if leader[i] != i}
    drops = find_duplicates(meta, DedupConfig(exact_sha256=False))
    assert {r[COL.UID]: r[COL.REASON].rsplit(":", 1)[1] for r in drops.to_pylist()} == replayed
    assert len(replayed) > 20

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
        "u0003": "duplicate:sha256",  # same bytes as u0000 (its hash disagrees: 2 bits from u0001, k=1)
        "u0004": "duplicate:duplicate_of:u0005",
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
    no_sha = _meta([5, 5, 7], clip=[0.1, 0.3, 0.2]).set_column(1, COL.SHA256, pa.nulls(3, pa.string()))
    assert find_duplicates(no_sha, DedupConfig(k=0)).to_pylist() == [
        {COL.UID: "u0000", COL.STATUS: Status.DUPLICATE, COL.REASON: "duplicate:duplicate_of:u0001"}]


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

    from pipelines.dedup_ray import find_duplicates_ray

    rng = np.random.default_rng(11)
    h = _planted(rng, 60, 60, 3)
    n = len(h)
    meta = _meta(h.tolist(), sha=[f"s{i % 110}" for i in range(n)],
                 clip=[float(x) for x in rng.random(n)], uids=[f"{i:05d}" for i in range(n)], grids=_grids(rng, n))
    status = pa.array([Status.OK] * (n - 5) + [Status.DOWNLOAD_ERROR] * 5)
    ledger = meta.append_column(COL.STATUS, status)
    paths, split = [], np.array_split(rng.permutation(n), 3)  # clusters span the three units
    for unit, rows in enumerate(split):
        paths.append(str(tmp_path / f"{unit:06d}.parquet"))
        part = ledger.take(pa.array(np.sort(rows)))
        pq.write_table(part.drop_columns([COL.RGB_GRID]) if unit == 2 else part, paths[-1])  # 2: an older unit
    cfg = DedupConfig(k=3, max_bucket=40)
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        got = find_duplicates_ray(paths, cfg)
    finally:
        ray.shutdown()
    older = np.isin(np.arange(n), split[2])
    ledger = ledger.set_column(ledger.schema.get_field_index(COL.RGB_GRID), COL.RGB_GRID, pa.array(
        [None if old else g for old, g in zip(older, ledger[COL.RGB_GRID].to_pylist())], pa.binary()))
    ok = ledger.filter(pa.compute.equal(ledger[COL.STATUS], Status.OK))
    want = find_duplicates(ok.drop_columns([COL.STATUS]), cfg)
    assert not want.equals(find_duplicates(ok.drop_columns([COL.STATUS]), replace(cfg, colour_check=False)))
    assert got.sort_by(COL.UID).equals(want.sort_by(COL.UID))
    units = {u: i for i, p in enumerate(paths) for u in pq.read_table(p)[COL.UID].to_pylist()}
    spans = [r for r in got.to_pylist() if "duplicate_of:" in r[COL.REASON]
             and units[r[COL.UID]] != units[r[COL.REASON].rsplit(":", 1)[1]]]
    assert len(spans) > 5
