"""Rule options for the dedup benchmark's labelled pool, measured by brute force (every pair of the ~3,000 images):
other hashes of the same pixels (float, contrast-stretched, equalised, central-crop pHash) and candidate claim rules
over pHash, dHash and colour thumbnails, each run through the same greedy leader order as curate/dedup/cluster.py."""
from __future__ import annotations

import io

import numpy as np

LOW_BITS = 12  # DedupConfig.low_detail_bits


def _ph(low: np.ndarray) -> np.uint64:
    from curate.dedup.hashing import _bits_to_uint64

    return _bits_to_uint64((low.ravel() > np.median(low))[None])[0]


def _gray_hashes(gray) -> dict:
    """pHash variants of one trimmed gray image: float (no 8-bit rounding of the 32 px resize), after a 1-99 %
    contrast stretch, after histogram equalisation, and of the central 84 % (crops)."""
    import scipy.fftpack
    from PIL import Image, ImageOps

    from curate.dedup.hashing import _axis_operators

    dct = lambda g: scipy.fftpack.dct(scipy.fftpack.dct(g, axis=0), axis=1)[:8, :8]  # noqa: E731
    small = lambda im: np.asarray(im.resize((32, 32), Image.Resampling.LANCZOS), np.float64)  # noqa: E731
    g = np.asarray(gray, np.float64)
    (pv, _, _), (ph, _, _) = _axis_operators(g.shape[0]), _axis_operators(g.shape[1])
    lo, hi = np.percentile(g, [1, 99])
    stretched = Image.fromarray(np.clip((g - lo) / max(hi - lo, 1) * 255, 0, 255).astype(np.uint8))
    w, h = gray.size
    centre = gray.crop((int(w * .08), int(h * .08), int(w * .92), int(h * .92)))
    return {"phash_float": _ph(pv.astype(np.float64) @ g @ ph.T.astype(np.float64)),
            "phash_stretched": _ph(dct(small(stretched))), "phash_equalised": _ph(dct(small(ImageOps.equalize(gray)))),
            "phash_centre_84pct": _ph(dct(small(centre)))}


def _unit(v: np.ndarray) -> np.ndarray:
    v = v - v.mean(axis=1, keepdims=True) if v.shape[1] > 63 else v
    return v / np.maximum(np.linalg.norm(v, axis=1, keepdims=True), 1e-9)


def _features(pool) -> dict:
    """Per image: the pHash variants, a 4x4 RGB box thumbnail (float), the gray std of a 16x16 box thumbnail
    (flat images: plain colours, weak gradients, night skies, whose pHash is their noise), and two real-valued
    descriptors as unit vectors: the 63 AC terms of the low DCT that the default (fast) pHash thresholds
    (`dct`), and the trimmed gray 16x16 box thumbnail less its mean (`thumb16`); and the energy of that DCT
    outside its 2x2 lowest terms, in gray levels (`outside_2x2`: small for plain images and smooth gradients)."""
    from PIL import Image

    from curate.config import DedupConfig
    from curate.dedup import hashing
    from curate.dedup.hashing import trim_borders

    out: dict = {}
    cfg = DedupConfig()
    for p in pool:
        img = Image.open(io.BytesIO(p.data)).convert("RGB")
        gray = trim_borders(img.convert("L"))
        for key, v in _gray_hashes(gray).items():
            out.setdefault(key, []).append(v)
        small = hashing._decode(p.data, cfg)
        low = hashing._fast_features([small], cfg)[0][0]
        out.setdefault("dct", []).append(low.reshape(-1)[1:])
        out.setdefault("outside_2x2", []).append(np.sqrt(np.square(low[2:]).sum() + np.square(low[:2, 2:]).sum())
                                                 / hashing.DC_SCALE)
        out.setdefault("thumb16", []).append(np.asarray(gray.resize((16, 16), Image.Resampling.BOX), np.float32).ravel())
        out.setdefault("thumb", []).append(np.asarray(img.resize((4, 4), Image.Resampling.BOX), np.float32).ravel())
        out.setdefault("std16", []).append(np.asarray(img.convert("L").resize((16, 16), Image.Resampling.BOX),
                                                      np.float32).std())
    feats = {k: np.array(v) for k, v in out.items()}
    feats["dct"], feats["thumb16"] = _unit(feats["dct"].astype(np.float64)), _unit(feats["thumb16"].astype(np.float64))
    return feats


def _hamming(h: np.ndarray) -> np.ndarray:
    return np.bitwise_count(h[:, None] ^ h[None, :]).astype(np.int16)


def greedy(match: np.ndarray, order: np.ndarray) -> np.ndarray:
    """Leader per row: rows in representative order; an unclaimed row claims every unclaimed row it matches."""
    leader = np.full(len(match), -1)
    for r in order:
        if leader[r] < 0:
            leader[r] = r
            leader[np.flatnonzero(match[r] & (leader < 0))] = r
    return leader


def _drops(meta, leader: np.ndarray):
    import pyarrow as pa

    uid = np.array(meta["uid"].to_pylist(), object)
    dup = np.flatnonzero(leader != np.arange(len(leader)))
    return pa.table({"uid": uid[dup].tolist(), "status": ["duplicate"] * len(dup),
                     "reason": [f"duplicate:duplicate_of:{u}" for u in uid[leader[dup]]]})


def order(pool) -> np.ndarray:
    """Representative order without CLIP scores (cluster.py's _rank): largest stored image first, then uid."""
    from PIL import Image

    area = np.array([np.prod(Image.open(io.BytesIO(p.data)).size) for p in pool])
    return np.lexsort((np.arange(len(pool)), -area))


def colour_agreement(meta, cfg=None) -> np.ndarray:
    """Pair matrix of the colour check (curate/dedup/cluster.py _same_colour) over the rows' rgb_grids."""
    from curate.config import DedupConfig
    from curate.dedup.cluster import _colours

    cfg = cfg or DedupConfig()
    _, gid, chroma, grey, max_chroma = _colours(meta, np.arange(meta.num_rows), cfg)
    assert (gid == np.arange(meta.num_rows)).all(), "every pool image has a grid"
    return (np.abs(chroma[:, None] - chroma[None]).max(-1) <= max_chroma) | grey[:, None] | grey[None, :]


def plain_rule(meta, cfg=None) -> np.ndarray:
    """Pair matrix of the plain rule (curate/dedup/cluster.py _claim_plain): both details under plain_detail,
    grids over their mean brightness (x128) within plain_tol on average, brightness within PLAIN_BRIGHTNESS."""
    from curate.config import DedupConfig
    from curate.dedup.cluster import PLAIN_BRIGHTNESS, PLAIN_FLOOR

    cfg = cfg or DedupConfig()
    plain = meta["detail"].to_numpy(zero_copy_only=False) < cfg.plain_detail
    grid = np.frombuffer(b"".join(meta["rgb_grid"].to_pylist()), np.uint8).reshape(meta.num_rows, -1)
    bright = np.maximum(grid.astype(np.float32).mean(axis=1), PLAIN_FLOOR)
    norm = grid.astype(np.float32) / bright[:, None] * 128
    near = np.abs(norm[:, None] - norm[None]).astype(np.float64).mean(-1) <= cfg.plain_tol
    logb = np.log(bright)
    return plain[:, None] & plain[None, :] & near & (np.abs(logb[:, None] - logb[None]) <= PLAIN_BRIGHTNESS)


def _any_detail():
    """DedupConfig() with every image counting as plain (the plain rule's grid test alone)."""
    from dataclasses import replace

    from curate.config import DedupConfig

    return replace(DedupConfig(), plain_detail=float("inf"))


def default_rule(meta, colour: bool = True, plain: bool = True) -> np.ndarray:
    """Pair matrix of DedupConfig()'s rule: pHash within k (a low-detail pair: dHash within low_detail_k too), or,
    neither low-detail, dHash within second_k and pHash within loose_k, or (plain) the plain rule; and (colour)
    the colour check."""
    from curate.config import DedupConfig
    from curate.dedup.cluster import low_detail

    cfg = DedupConfig()
    ph, dh = _hamming(meta["phash"].to_numpy()), _hamming(meta["dhash"].to_numpy())
    flat = low_detail(meta["dhash"].to_numpy(), np.ones(meta.num_rows, bool), cfg.low_detail_bits)
    lp = flat[:, None] | flat[None, :]
    hashes = ((ph <= cfg.k) & (~lp | (dh <= cfg.low_detail_k))) | ((dh <= cfg.second_k) & (ph <= cfg.loose_k) & ~lp)
    if plain:
        hashes |= plain_rule(meta, cfg)
    return hashes & colour_agreement(meta, cfg) if colour else hashes


def hash_options(pool, meta, feats: dict, k: int) -> list[dict]:
    """Per hash (pHash, dHash and the pHash variants): the share of planted copies within k of their original,
    photos and low-detail apart, and the share of images with an unrelated image within k (crowded)."""
    group = np.array([p.group for p in pool])
    low = np.array([p.kind.startswith("low:") for p in pool])
    orig = {p.group: i for i, p in enumerate(pool) if p.variant == "original"}
    copies = np.array([i for i, p in enumerate(pool) if p.variant != "original"])
    o = np.array([orig[group[i]] for i in copies])
    unrelated = group[:, None] != group[None, :]
    hashes = {"phash": meta["phash"].to_numpy(), "dhash": meta["dhash"].to_numpy(),
              **{n: v for n, v in feats.items() if n.startswith("phash_")}}
    out = []
    for name, h in hashes.items():
        d = _hamming(h)
        near, crowded = d[copies, o] <= k, ((d <= k) & unrelated).any(1)
        out.append({"hash": name, "k": k, "copies_within_k_photo": round(float(near[~low[copies]].mean()), 4),
                    "copies_within_k_low_detail": round(float(near[low[copies]].mean()), 4),
                    "crowded_photo": round(float(crowded[~low].mean()), 4),
                    "crowded_low_detail": round(float(crowded[low].mean()), 4)})
    d_ph, d_dh = _hamming(hashes["phash"]), _hamming(hashes["dhash"])
    iu = np.triu_indices(len(pool), 1)
    far, p4, d4 = unrelated[iu], d_ph[iu], d_dh[iu]  # no pHash-dHash rule can part these
    out.append({"unrelated_pairs_both_hashes_identical": int((far & (p4 == 0) & (d4 == 0)).sum()),
                "unrelated_pairs_pHash_le_4_and_dHash_le_4": int((far & (p4 <= 4) & (d4 <= 4)).sum()),
                "planted_pairs": int((~far).sum())})
    return out


def rule_options(pool, meta, feats: dict, score) -> list[dict]:
    """Candidate claim rules (a pair matches when any clause holds), each scored by `score(drops)` (pool_scores'
    headline keys). L: either image low-detail (dHash imbalance >= 12). t4: mean |RGB| difference of the 4x4
    thumbnails; chroma4: the same on per-cell chromaticity (brightness-invariant); tn4: on the thumbnail divided
    by its mean (brightness-invariant, grey kept). Colour confirmations part product shots of one shape but lose
    the brightness copies (t4 13-34 from their original, against at most 4 for 99 % of the other copies). C: the
    default's colour check (max per-cell chromaticity difference, colour_agreement); the hash-only
    rules are measured without it, the rules marked C with it."""
    from curate.dedup.cluster import low_detail

    ph, dh = _hamming(meta["phash"].to_numpy()), _hamming(meta["dhash"].to_numpy())
    n = len(pool)
    flat = low_detail(meta["dhash"].to_numpy(), np.ones(n, bool), LOW_BITS)
    lp = flat[:, None] | flat[None, :]
    thumb = feats["thumb"].reshape(n, 16, 3)
    t4 = np.abs(thumb[:, None] - thumb[None]).mean((-1, -2))
    chroma = thumb / np.maximum(thumb.sum(-1, keepdims=True), 1) * 255
    c4 = np.abs(chroma[:, None] - chroma[None]).mean((-1, -2))
    norm = thumb / np.maximum(thumb.mean((1, 2), keepdims=True), 1) * 128  # brightness-normalised thumbnail
    tn = np.abs(norm[:, None] - norm[None]).mean((-1, -2))
    flat = feats["std16"] < 2
    flat_any, flat_both = flat[:, None] | flat[None, :], flat[:, None] & flat[None, :]
    rank = order(pool)
    base = lambda lk: (ph <= 8) & (~lp | (dh <= lk))  # noqa: E731
    second = (dh <= 4) & (ph <= 16) & ~lp
    c = colour_agreement(meta)
    hashes_only = default_rule(meta, colour=False)
    default = default_rule(meta)
    cos, corr = feats["dct"] @ feats["dct"].T, feats["thumb16"] @ feats["thumb16"].T
    rules = {
        "default: C and (pHash<=8 (L: and dHash<=8) | not L: dHash<=4 and pHash<=16 | plain rule)": default,
        "no plain rule (plain_detail 0)": default_rule(meta, plain=False),
        **{f"+ smooth (outside_2x2 < {t}) pairs: the plain rule's grid and brightness test": default | (
            smooth[:, None] & smooth[None, :] & plain_rule(meta, cfg=_any_detail()) & c)
           for t in (0.25, 0.5, 1.0) for smooth in [feats["outside_2x2"] < t]},
        **{f"+ C and {band} and {name}>={t}" + (" (needs a k=16 search)" if band[0] == "p" else ""):
           default | (c & m & (v >= t)) for band, m in (("pHash<=16", ph <= 16), ("dHash<=4", dh <= 4))
           for name, v in (("dct_cos", cos), ("thumb16_corr", corr)) for t in (0.9, 0.95, 0.97)},
        "hashes only (colour_check false)": hashes_only,
        "C + L: pHash<=8 alone (no dHash agreement)": c & ((ph <= 8) | second),
        "C + L too: dHash<=4 and pHash<=16": c & (base(8) | ((dh <= 4) & (ph <= 16))),
        "C + not L: pHash<=12 and dHash<=12 (needs a k=12 search)": c & (base(8) | second | ((ph <= 12) & (dh <= 12)
                                                                                              & ~lp)),
        "low_detail_k 6": base(6) | second,
        "low_detail_k 5": base(5) | second,
        "+ not L: pHash<=12 and dHash<=8 (needs a k=12 search)": base(8) | second | ((ph <= 12) & (dh <= 8) & ~lp),
        "+ not L: pHash<=12 and dHash<=12 (needs a k=12 search)": base(8) | second | ((ph <= 12) & (dh <= 12) & ~lp),
        "low_detail_k 6 + not L: pHash<=12 and dHash<=12": base(6) | second | ((ph <= 12) & (dh <= 12) & ~lp),
        "+ L: dHash<=2 and pHash<=12 (second search over low-detail too)":
            base(8) | second | ((dh <= 2) & (ph <= 12) & lp),
        "+ not L: second_k 8, loose_k 12": base(8) | second | ((dh <= 8) & (ph <= 12) & ~lp),
        "+ pHash<=12 and t4<=4 (colour thumbnail confirms the loose band)": base(8) | second | ((ph <= 12) & (t4 <= 4)),
        "+ pHash<=16 and t4<=4": base(8) | second | ((ph <= 16) & (t4 <= 4)),
        "+ pHash<=12 and chroma4<=2 (L: also dHash<=8)":
            base(8) | second | ((ph <= 12) & (c4 <= 2) & (~lp | (dh <= 8))),
        "L pairs: chroma4<=1.5 also required": base(8) & (~lp | (c4 <= 1.5)) | second,
        "+ pHash<=12 and tn4<=3 (brightness-normalised thumbnail)": base(8) | second | ((ph <= 12) & (tn <= 3)),
        "+ pHash<=14 and dHash<=12 and tn4<=3": base(8) | second | ((ph <= 14) & (dh <= 12) & (tn <= 3)),
        "+ tn4<=1 at any pHash (plain and gradient images)": base(8) | second | (tn <= 1),
        "L pairs: ph+dh<=10 (low_detail_k 6)": base(6) & (~lp | (ph + dh <= 10)) | second,
        "L pairs: t4<=4 also required (product shots apart by colour)": hashes_only & (~lp | (t4 <= 4)),
        "flat pairs (16x16 std<2): t4<=2 instead of the hashes": np.where(flat_any, flat_both & (t4 <= 2),
                                                                           hashes_only),
    }
    return [{"rule": name, **score(_drops(meta, greedy(m, rank)))} for name, m in rules.items()]


NOTE = ("brute force over every pair of the pool; the replay of the default rule equals find_duplicates "
        "(tests/test_cluster.py). None reaches all three targets. Real-valued confirmations (the pHash's own low "
        "DCT as a vector, a 16x16 gray thumbnail: cosine) of pairs in a looser band trade groups for precision as "
        "the hash bands do: the pool's distinct crops of one photo (IoU < 0.5) and of one texture lie as close. "
        "A pHash<=12 band needs a k=12 search: 87-110 s against 17-19 s for k=8 at 1M planted hashes (shared 2 cores), past the 1.5x budget. Colour as a "
        "confirmation of looser hash bands loses precision; as a veto on the hash rule (the default's colour check, "
        "the rgb_grid ledger column) it parts most unrelated pairs at almost no cost in groups")


def options(pool, meta, score, k: int) -> dict:
    feats = _features(pool)
    return {"note": NOTE, "hashes": hash_options(pool, meta, feats, k), "rules": rule_options(pool, meta, feats, score)}
