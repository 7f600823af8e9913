"""Global exact and near-duplicate clustering over hashes (phase B): multi-index search, then greedy leader
clustering, so that every duplicate is within k of the row that represents it (clusters never chain).

How near-duplicates are found (no false negatives against brute force, up to the giant-bucket rule):
  * identical hash values are collapsed first, so a million blank images are one value, not a million;
  * every pair of distinct hashes within Hamming distance k is found by multi-index hashing with neighbour
    probing (curate/dedup/mih.py): the 64 bits are split into a few substrings with small search radii whose
    sum guarantees that a pair within k is within the radius on at least one of them; each substring indexes
    the hashes by its top ~log2(n) bits and every bucket is compared with the buckets at those radii;
  * giant buckets: only the first `max_bucket` hashes of a bucket (ascending) take part in its comparisons, so
    work is bounded by probes * n * max_bucket; a pair of two later members may then be missed (SearchStats
    counts such buckets): a missed pair only keeps an image, it never joins two far ones.
How clusters are formed (why not connected components: over all pairs within k, chains a-b-c with d(a, c) > k
joined unrelated images; on a 3,000-image photo pool, clusters of 20-50 where no planted group had over 4):
  * exact copies first: rows with the same sha256 keep their best row (the representative order below); the
    others follow it and are `duplicate:sha256` when it is kept;
  * then greedy leader clustering over the pairs: rows in representative order; the best unclaimed row leads
    and claims every unclaimed row within k of it (its own hash value and the values the search paired with
    it: a CSR adjacency over distinct hashes, O(pairs)). A claimed row never claims, so each duplicate is
    within k of its representative itself;
  * low-detail images: an image whose dHash has at least `low_detail_bits` more 0 than 1 bits (or the reverse)
    is mostly flat cells (product shots on white, text, logos, sky around a rocket): its pHash says little and
    lies near many others. A pair with such an image matches only when the second hash (dHash for pHash, and
    the reverse) is within `low_detail_k` too, or, where a row has no second hash, when the first is identical.
    Measured (tests/bench/results/dedup.json, `low_detail`): on generated and photo images, pixel variance and
    DCT energy do not separate the hashes that lie near unrelated ones (those are higher in them), dHash bit
    balance does;
  * second search: a 2-6 % crop moves pHash past k for about one copy in six, while dHash often moves less. A
    second multi-index search over the second hash at the small radius `second_k` finds such pairs; one
    counts when neither image is low-detail and the first hash is within `loose_k` (random pairs almost never
    are both). The leader claims these after its first-hash partners. Defaults (second_k 4, loose_k 16,
    low_detail_bits 12, low_detail_k 8) and the settings rejected beside them: dedup.json `pool_quality` and
    `second_search_cost` (second_k 6 keeps a few more groups to one member but costs about twice the time of 4).
    Other hashes and rules, measured by brute force on the same pool (dedup.json `pool_quality.options`):
    pHash in float, after a contrast stretch, after equalisation or of a central crop moves few more copies within
    k; on pHash and dHash each rule trades groups kept to one against precision (low_detail_k 6: precision 0.984
    but 83 % of groups); a pHash<=12 band with dHash<=12 gains 1.5 points but needs a k=12 search (5-6x the time
    of k=8 at 1M); 4x4 colour-thumbnail confirmations keep up to 91 % of groups to one at precision 0.92-0.96.
    Plain and gradient images are told apart by colour only, which the two gray hashes do not see;
  * colour check (`colour_check`): both hashes are gray, so a red and a blue plain image, or two product shots
    of one shape in other colours, hash alike. Every claim above also needs the rows' rgb_grids (a 4x4 RGB box
    thumbnail, ledger column rgb_grid) to agree: no cell's chromaticity (its r, g, b over their mean, each
    + GRID_OFFSET) apart by more than `colour_chroma` on any channel; skipped when either grid is grey, so a
    black-and-white copy still matches. A brightness change leaves chromaticity as it is. A check, never a way
    to match: it only keeps rows. Measured: dedup.json `pool_quality` (the default against the hash rule alone,
    the settings beside it, five other pools in `seeds`). A brightness-layout part (the cells' log-brightness
    ratios within a bound of each other) was measured and dropped: on crops of line art (skimage's horse) it
    parted 26 of 930 true copies on the quality pool for 0.2 points of precision on the dedup pool. Rows without
    a grid (hashed by an older curate) are not checked.
  * plain images (`plain_detail`): an image whose low 8x8 DCT has almost no AC energy (ledger column detail,
    curate/dedup/hashing.py) is a plain colour with noise, and its pHash and dHash are that noise: its copies
    (re-encoded, downscaled) often land 10-30 bits away. Two plain images match when their rgb_grids over
    their mean brightness (x128) differ by at most `plain_tol` per value on average, their mean brightness by at
    most a factor e^PLAIN_BRIGHTNESS (1.05: a plain image made 20 % brighter is another plain image of that hue,
    and a pool's distinct plain images of one hue lie that close), and the colour check passes. They are found
    in the plain rows sorted by brightness cell (e^PLAIN_BRIGHTNESS wide), then by that grid's mean red (a pair
    within plain_tol is within 3 x plain_tol there): three short ranges per leader, claimed rows skipped, at
    most PLAIN_STEPS live rows a range. Measured (dedup.json `pool_quality.plain`, six pools): groups kept to
    one 85.6 -> 87.1 % (low-detail ones 56 -> 64 %) at unchanged precision (0.988). The same test for
    smooth images (gradients: little energy outside the 2x2 lowest DCT terms) merged night skies and other
    images without a copy (88.3 % of groups at precision 0.984, 89.6 % at 0.893), and real-valued confirmations
    of the photos' looser bands (the low DCT as a vector, a 16x16 gray thumbnail) reach 91-93 % of groups only
    at precision 0.96-0.98 (`options`).
The rule, exact for every dropped row against its representative: first hash within k and neither image
low-detail (`duplicate_of:`); or first within k and second within low_detail_k (`low_detail:duplicate_of:`);
or neither low-detail, second within second_k and first within loose_k (`second_hash:duplicate_of:`); or
both plain with grids and brightness alike as above (`plain:duplicate_of:`); and each with the colour check
passed.
Measured (tests/bench/results/dedup.json, 2 shared cores): see that file; at the default k=8 16M hashes fit in
minutes, where the former k+1-band join (7-bit bands) already took 27 s at 200k and grew as n^2.
k=8 is the smallest k whose pairwise F1 on the real-photo near-duplicate set (tests/test_cluster.py) stays well
above imagehash's (pHash distances are even, so odd k add nothing).
Representative order: highest clip_score (nulls last), then largest width*height, then smallest uid.
Reasons: a row byte-identical (same sha256) to its representative gets `duplicate:sha256`; a row claimed under
the low-detail rule `duplicate:low_detail:duplicate_of:<uid>`; every other one `duplicate:duplicate_of:<uid>`, uid
being the representative, which the cluster keeps. Rows within k of an evaluation hash get `eval_overlap` and
are removed before clustering, so a cluster's representative is never an evaluation image.
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable

import numba
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from curate.config import DedupConfig
from curate.dedup.hashing import GRID_BYTES
from curate.dedup.mih import SearchStats, cross_hits, near_pairs, _popcount
from curate.schema import COL, Status, reason

GRID_OFFSET = 32.0       # added to each channel before the colour check's ratios: the hue of a near-black cell is
                         # JPEG noise, this damps it (dedup.json pool_quality.grid_offset: 8 and 16 beside it)
PLAIN_BRIGHTNESS = 0.05  # a plain pair's mean brightness may differ by a factor up to e^this (1.05). A brightness
                         # copy of a plain image is another plain image of its hue: at 0.1-0.25 the dedup pools' plain
                         # originals of one hue 6-18 % apart merged (precision 0.982 -> 0.976 on one)
PLAIN_STEPS = 128        # live rows a plain leader looks at per range: rows it turns away stay live, and plain
                         # images that all differ (dark ones, whose grid noise their brightness magnifies) would
                         # each look at all the others. 16M synthetic rows, 2 % plain, half in 8 placeholder
                         # colours with +-2 of grid noise: the leader loop took 4.5 s looking at none, 7.7 s at
                         # 128, 13.8 s at 512 (whole clustering 117 s at 5,000). A copy past it is kept
CELL_STRIDE = 1e6        # the plain sweep's place: brightness cell x this + mean red (red stays far below it)
PLAIN_FLOOR = 16.0       # gray levels: the least mean brightness a plain grid is divided by (a near-black grid's
                         # ratios would be its JPEG noise)
GREY_TOL = 0.03          # a grid whose every cell's r, g, b shares are within this of 1 is grey (a black-and-white
                         # copy): the chromaticity part of the colour check is skipped for a pair with one
OUT_SCHEMA = pa.schema([(COL.UID, pa.string()), (COL.STATUS, pa.string()), (COL.REASON, pa.string())])
NEAR = "duplicate_of:"                  # reason detail, followed by the representative's uid
LOW_DETAIL = "low_detail:" + NEAR      # the same, claimed under the low-detail rule (keeps the duplicate_of:<uid>
                                        # suffix that the manifest's reason counts and the report collapse)
SECOND = "second_hash:" + NEAR         # the same, claimed through the second search (second_k, loose_k)
PLAIN = "plain:" + NEAR                # the same, two plain images matched by colour (plain_detail, plain_tol)
DETAILS = ("sha256", NEAR, LOW_DETAIL, SECOND, PLAIN)  # index = how a row was claimed (0: a sha256 copy)
# (sorted distinct hashes, k, max_bucket) -> (a, b): every index pair a < b within Hamming distance k
PairSearch = Callable[[np.ndarray, int, int], tuple[np.ndarray, np.ndarray]]


def load_eval_hashes(path: str | None, column: str = COL.PHASH) -> np.ndarray:
    """Evaluation-image hashes as uint64: a Parquet file with a `column` column (uint64/int64, or hex
    strings), or a text file with one hash a line: 16 hex digits (imagehash's str), 0x-hex, or a decimal
    integer of another length."""
    if not path:
        return np.zeros(0, np.uint64)
    p = Path(path)
    if p.suffix in (".parquet", ".pq"):
        col = pq.read_table(p, columns=[column])[column].drop_null()
        if pa.types.is_string(col.type):
            return np.array([int(x, 16) for x in col.to_pylist()], np.uint64)
        return col.cast(pa.uint64()).to_numpy()
    out = []
    for line in p.read_text().split():
        s = line.strip().lower()
        out.append(int(s, 16) if (len(s) == 16 or s.startswith("0x") or not s.isdigit()) else int(s))
    return np.array(out, np.uint64)


def hash_columns(cfg: DedupConfig) -> tuple[str, str]:
    """(the configured hash column, the second hash column that low-detail pairs must agree on)."""
    return (COL.PHASH, COL.DHASH) if cfg.hash == "phash" else (COL.DHASH, COL.PHASH)


def _hashes(meta: pa.Table, cfg: DedupConfig) -> tuple[np.ndarray, np.ndarray]:
    """(uniq, inv): sorted distinct hashes of the rows with a hash, and each row's index into uniq (-1: none)."""
    col = meta[hash_columns(cfg)[0]]
    valid = col.is_valid().to_numpy(zero_copy_only=False)
    inv = np.full(meta.num_rows, -1, np.int64)
    uniq, inv_valid = np.unique(col.drop_null().cast(pa.uint64()).to_numpy(), return_inverse=True)
    inv[valid] = inv_valid
    return uniq, inv


def _uint64(meta: pa.Table, column: str) -> tuple[np.ndarray, np.ndarray]:
    """(values with nulls as 0, valid mask) of a hash column; all invalid when the table lacks it."""
    if column not in meta.column_names:
        return np.zeros(meta.num_rows, np.uint64), np.zeros(meta.num_rows, bool)
    col = meta[column].cast(pa.uint64())
    return col.fill_null(0).to_numpy(zero_copy_only=False), col.is_valid().to_numpy(zero_copy_only=False)


def low_detail(dhash: np.ndarray, valid: np.ndarray, bits: int) -> np.ndarray:
    """Per row: is the image low-detail, i.e. its dHash has at least `bits` more 0 than 1 bits or the reverse
    (flat cells compare equal and give 0; a smooth ramp gives all 1). Rows without a dHash are not."""
    imbalance = np.abs(np.bitwise_count(dhash).astype(np.int64) - 32)
    return valid & (imbalance >= bits)


def _adjacency(pairs, n_uniq: int) -> tuple[np.ndarray, np.ndarray]:
    """CSR (ptr, neighbours) over distinct hashes: the values that the search paired with each value."""
    a, b = (np.asarray(x, np.int64) for x in pairs)
    src, dst = np.concatenate([a, b]), np.concatenate([b, a])
    ptr = np.zeros(n_uniq + 1, np.int64)
    np.cumsum(np.bincount(src, minlength=n_uniq), out=ptr[1:])
    return ptr, dst[np.argsort(src, kind="stable")]


def _rank(meta: pa.Table, rows: np.ndarray) -> np.ndarray:
    """`rows` in representative order: clip_score desc (nulls and NaN last), width*height desc, uid asc."""
    sub = meta.take(pa.array(rows))
    area = pc.multiply(sub[COL.WIDTH].cast(pa.int64()), sub[COL.HEIGHT].cast(pa.int64()))
    clip = sub[COL.CLIP_SCORE].cast(pa.float64())
    clip = pc.if_else(pc.is_nan(clip), pa.scalar(None, pa.float64()), clip)
    t = pa.table({"clip": clip, "area": area, "uid": sub[COL.UID]})
    keys = [("clip", "descending"), ("area", "descending"), ("uid", "ascending")]
    return rows[pc.sort_indices(t, sort_keys=[(c, o, "at_end") for c, o in keys]).to_numpy()]


def _sha_survivors(meta: pa.Table, ranked: np.ndarray, cfg: DedupConfig) -> np.ndarray:
    """Per row, the row it is a byte-identical copy of (its sha256 group's best row in `ranked`), or -1."""
    first = np.full(meta.num_rows, -1, np.int64)
    if not (cfg.exact_sha256 and COL.SHA256 in meta.column_names) or ranked.size == 0:
        return first
    codes = pc.dictionary_encode(meta[COL.SHA256].take(pa.array(ranked))).combine_chunks()
    code = codes.indices.fill_null(-1).to_numpy(zero_copy_only=False).astype(np.int64)
    has = code >= 0
    ids, at = np.unique(code[has], return_index=True)  # return_index: the first (best) occurrence
    best = np.full(len(codes.dictionary), -1, np.int64)
    best[ids] = ranked[has][at]
    first[ranked[has]] = best[code[has]]
    first[first == np.arange(meta.num_rows)] = -1
    return first


def _colours(meta: pa.Table, rows: np.ndarray, cfg: DedupConfig) -> tuple:
    """The colour check's inputs (_same_colour): (on, gid, chroma, grey, max_chroma). gid[row] indexes the
    per-cell chromaticity (r, g, b over their mean, +GRID_OFFSET each) and grey flag of `rows` that have a valid
    rgb_grid; -1 for the others (no check: a row hashed before the grid existed). Off (the check is off, or no
    row has a grid): gid is empty, so a run without grids holds no per-row array for it."""
    on = cfg.colour_check and COL.RGB_GRID in meta.column_names and rows.size > 0 and \
        meta[COL.RGB_GRID].null_count < meta.num_rows
    gid = np.full(meta.num_rows if on else 0, -1, np.int32)
    if on:  # in place where it can be: at 16M rows the involved ones' float grids are GBs
        col = meta[COL.RGB_GRID].take(pa.array(rows)).combine_chunks()
        ok = (pc.binary_length(col).fill_null(0).to_numpy(zero_copy_only=False) == GRID_BYTES)
        rgb = _grid_bytes(col if ok.all() else col.filter(pa.array(ok))).reshape(-1, GRID_BYTES // 3, 3)
        rgb = rgb.astype(np.float32)
        del col
        rgb += GRID_OFFSET
        rgb /= rgb.mean(axis=2, keepdims=True)
        gid[rows[ok]] = np.arange(len(rgb), dtype=np.int32)
        chroma = rgb.reshape(len(rgb), GRID_BYTES)
    else:
        chroma = np.zeros((0, GRID_BYTES), np.float32)
    grey = (chroma.max(axis=1, initial=1) <= 1 + GREY_TOL) & (chroma.min(axis=1, initial=1) >= 1 - GREY_TOL)
    return on, gid, chroma, grey, float(cfg.colour_chroma)


def plain_rows(meta: pa.Table, rows: np.ndarray, cfg: DedupConfig) -> np.ndarray:
    """The `rows` whose image is plain: a detail below cfg.plain_detail and an rgb_grid (none when off). The
    detail is compared over the whole column first: at 16M rows, taking every grid would copy 0.8 GB."""
    if not (cfg.plain_detail > 0 and COL.DETAIL in meta.column_names and COL.RGB_GRID in meta.column_names):
        return rows[:0]
    flat = pc.less(meta[COL.DETAIL], cfg.plain_detail).fill_null(False).to_numpy(zero_copy_only=False)
    rows = rows[flat[rows]]
    grid = pc.binary_length(meta[COL.RGB_GRID].take(pa.array(rows))).fill_null(0).to_numpy(zero_copy_only=False)
    return rows[grid == GRID_BYTES]


def _plain(meta: pa.Table, plain: np.ndarray, cfg: DedupConfig) -> tuple:
    """The plain-image claim's inputs (_claim_plain): (pos, prow, cell, red, place, norm, logb, nxt, tol,
    max_logb, max_steps). cell: a row's log brightness over max_logb, floored; red: its grid's mean red over
    its brightness (x128); prow: the `plain` rows sorted by place = cell x CELL_STRIDE + red; pos[row]: its index
    in prow (-1: not plain; empty when fewer than two rows are); norm: the grids over their mean brightness (at
    least PLAIN_FLOOR) x128; logb: the log of that brightness; nxt: next-live pointers over prow (_next_live)."""
    if plain.size < 2:
        return (np.zeros(0, np.int32), np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0, np.float64),
                np.zeros(0, np.float64), np.zeros((0, GRID_BYTES), np.float32), np.zeros(0, np.float32),
                np.zeros(1, np.int64), 0.0, 0.0, 0)
    col = meta[COL.RGB_GRID].take(pa.array(plain)).combine_chunks()
    grid = _grid_bytes(col).reshape(len(plain), GRID_BYTES).astype(np.float32)
    bright = np.maximum(grid.mean(axis=1), PLAIN_FLOOR)
    norm = grid / bright[:, None] * 128
    logb = np.log(bright)
    cell = np.floor(logb.astype(np.float64) / PLAIN_BRIGHTNESS).astype(np.int64)
    red = norm.reshape(len(plain), -1, 3)[:, :, 0].mean(axis=1).astype(np.float64)
    place = cell * CELL_STRIDE + red
    by = np.argsort(place, kind="stable")
    pos = np.full(meta.num_rows, -1, np.int32)
    pos[plain[by]] = np.arange(len(plain), dtype=np.int32)
    return (pos, plain[by], cell[by], red[by], place[by], norm[by], logb[by], np.arange(len(plain) + 1),
            float(cfg.plain_tol), float(PLAIN_BRIGHTNESS), PLAIN_STEPS)


def _grid_bytes(col: pa.Array) -> np.ndarray:
    """The bytes of a binary array (the ledger's type) whose values all have GRID_BYTES, concatenated, read from
    its buffers."""
    offsets = np.frombuffer(col.buffers()[1], np.int32)[col.offset:col.offset + len(col) + 1]
    if len(col) == 0:
        return np.zeros(0, np.uint8)
    return np.frombuffer(col.buffers()[2], np.uint8)[offsets[0]:offsets[-1]]


@numba.njit(cache=True, inline="always")
def _same_colour(r, s, colour):
    """The colour check: rows r and s agree unless both have an rgb_grid, neither grid is grey, and some cell's
    chromaticity differs by more than max_chroma (a brightness change leaves chromaticity as it is)."""
    on, gid, chroma, grey, max_chroma = colour
    if not on:
        return True
    a, b = gid[r], gid[s]
    if a < 0 or b < 0 or grey[a] or grey[b]:
        return True
    for j in range(chroma.shape[1]):
        if abs(chroma[a, j] - chroma[b, j]) > max_chroma:
            return False
    return True


@numba.njit(cache=True, inline="always")
def _may_claim(r, s, same_value, low, second, has_second, low_k):
    """Whether leader r may claim row s, which is within k of it on the first hash: always, unless one of them
    is low-detail; then only with the second hash within low_k too (or, lacking one, an identical first hash)."""
    if not (low[r] or low[s]):
        return True
    if has_second[r] and has_second[s]:
        return _popcount(second[r] ^ second[s]) <= low_k
    return same_value


@numba.njit(cache=True)
def _claim_first(r, inv, ptr, nbr, hptr, hrows, live, low, second, has_second, low_k, colour, leader, how):
    """Leader r claims the unclaimed rows of its own and its paired first-hash values that _may_claim and the
    colour check allow.
    hrows[hptr[v]:live[v]] are the rows of value v not yet claimed here: a claimed row is swapped past live[v],
    so each is looked at again only when a low-detail rule or the colour check turned it away (or the second
    search claimed it)."""
    u = inv[r]
    for q in range(ptr[u] - 1, ptr[u + 1]):  # its own value first, then the paired ones
        v = u if q < ptr[u] else nbr[q]
        p = hptr[v]
        while p < live[v]:
            s = hrows[p]
            if s == r or leader[s] >= 0 or (_may_claim(r, s, v == u, low, second, has_second, low_k)
                                            and _same_colour(r, s, colour)):
                if leader[s] < 0:
                    leader[s] = r
                    how[s] = 2 if low[r] or low[s] else 1
                live[v] -= 1
                hrows[p], hrows[live[v]] = hrows[live[v]], s
            else:
                p += 1


@numba.njit(cache=True)
def _claim_second(r, first, inv2, ptr2, nbr2, hptr2, hrows2, loose_k, colour, leader, how):
    """Leader r (not low-detail) claims the unclaimed rows of its own and its paired second-hash values (only
    rows that are not low-detail have one) whose first hash is within loose_k of its own and that pass the
    colour check."""
    u = inv2[r]
    if u < 0:
        return
    for q in range(ptr2[u] - 1, ptr2[u + 1]):
        v = u if q < ptr2[u] else nbr2[q]
        for p in range(hptr2[v], hptr2[v + 1]):
            s = hrows2[p]
            if leader[s] < 0 and _popcount(first[r] ^ first[s]) <= loose_k and _same_colour(r, s, colour):
                leader[s] = r
                how[s] = 3


@numba.njit(cache=True, inline="always")
def _grids_within(norm, i, j, tol):
    """Whether rows i and j of norm lie within tol in mean absolute difference (the plain rule's grid test);
    stops once the sum is clearly past it (most pairs a leader turns away are far past)."""
    total, bound = 0.0, tol * norm.shape[1] + 1.0
    for c in range(norm.shape[1]):
        total += abs(norm[i, c] - norm[j, c])
        if total > bound:
            return False
    return total / norm.shape[1] <= tol


@numba.njit(cache=True)
def _next_live(nxt, j):
    """The first index >= j of prow not yet known to be claimed (nxt[j] == j: live), compressing the path."""
    root = j
    while nxt[root] != root:
        root = nxt[root]
    while nxt[j] != root:
        nxt[j], j = root, nxt[j]
    return root


@numba.njit(cache=True)
def _claim_plain(r, plain, colour, leader, how):
    """Leader r, when plain, claims the unclaimed plain rows whose normalised grid lies within tol of its own
    (mean absolute difference), whose log brightness is within max_logb (PLAIN_BRIGHTNESS) and that pass the
    colour check. Such a row lies in r's brightness cell or a neighbour, with a mean red within 3 x tol of r's
    (the red cells' share of the grid distance): three ranges of prow, each walked over its live rows (claimed
    ones are skipped for good via nxt) up to max_steps (PLAIN_STEPS) rows."""
    pos, prow, cell, red, place, norm, logb, nxt, tol, max_logb, max_steps = plain
    if pos.size == 0 or pos[r] < 0:
        return
    i = pos[r]
    nxt[i] = i + 1  # r leads: never a candidate again
    for near_cell in range(cell[i] - 1, cell[i] + 2):
        centre = near_cell * CELL_STRIDE + red[i]
        j = _next_live(nxt, np.searchsorted(place, centre - 3 * tol - 1e-3))
        end = np.searchsorted(place, centre + 3 * tol + 1e-3, side="right")
        walked = 0
        while j < end and walked < max_steps:
            s = prow[j]
            if leader[s] >= 0:
                nxt[j] = j + 1  # claimed by another rule: skipped from now on
            elif abs(logb[j] - logb[i]) <= max_logb and _grids_within(norm, i, j, tol) and \
                    _same_colour(r, s, colour):
                leader[s] = r
                how[s] = 4
                nxt[j] = j + 1
            walked += 1
            j = _next_live(nxt, j + 1)


@numba.njit(cache=True)
def _leaders(order, inv, ptr, nbr, hptr, hrows, live, low, second, has_second, low_k,
             first, inv2, ptr2, nbr2, hptr2, hrows2, loose_k, colour, plain, leader, how):
    """Greedy leader clustering: for rows in `order` (representative order), an unclaimed row leads and claims
    the unclaimed rows that the rule allows: first-hash partners (_claim_first), then second-search partners
    (_claim_second), then, plain, other plain rows (_claim_plain). how[s]: 1 duplicate_of, 2 low_detail,
    3 second_hash, 4 plain."""
    for r in order:
        if leader[r] >= 0:
            continue
        leader[r] = r
        _claim_first(r, inv, ptr, nbr, hptr, hrows, live, low, second, has_second, low_k, colour, leader, how)
        _claim_second(r, first, inv2, ptr2, nbr2, hptr2, hrows2, loose_k, colour, leader, how)
        _claim_plain(r, plain, colour, leader, how)


def _rows_by_value(rows: np.ndarray, inv: np.ndarray, n_uniq: int) -> tuple[np.ndarray, np.ndarray]:
    """CSR (ptr, rows) of `rows` grouped by their hash value."""
    ptr = np.zeros(n_uniq + 1, np.int64)
    np.cumsum(np.bincount(inv[rows], minlength=n_uniq), out=ptr[1:])
    return ptr, rows[np.argsort(inv[rows], kind="stable")]


def _involved(inv: np.ndarray, pairs, eligible: np.ndarray, n_uniq: int) -> np.ndarray:
    """Eligible rows that can take part in a near-duplicate cluster: their hash value has a partner or
    another row."""
    if n_uniq == 0:
        return eligible[:0]
    touched = np.bincount(inv[eligible], minlength=n_uniq) > 1
    touched[np.asarray(pairs[0], np.int64)] = True
    touched[np.asarray(pairs[1], np.int64)] = True
    return eligible[touched[inv[eligible]]]


def _shared_sha256(meta: pa.Table, cfg: DedupConfig) -> np.ndarray:
    """Per row: does another row have the same sha256 (when exact_sha256 is on)."""
    shared = np.zeros(meta.num_rows, bool)
    if not (cfg.exact_sha256 and COL.SHA256 in meta.column_names):
        return shared
    codes = pc.dictionary_encode(meta[COL.SHA256]).combine_chunks()
    code = codes.indices.fill_null(-1).to_numpy(zero_copy_only=False).astype(np.int64)
    has = code >= 0
    shared[has] = np.bincount(code[has], minlength=len(codes.dictionary))[code[has]] > 1
    return shared


def _second_search(second: np.ndarray, eligible: np.ndarray, cfg: DedupConfig, search) -> tuple:
    """(inv2, n_uniq2, pairs2): the second search over the distinct second-hash values of the `eligible` rows
    (hashed, not low-detail, with a second hash): each row's value index (-1: not searched) and the value
    pairs within cfg.second_k."""
    inv2 = np.full(len(second), -1, np.int64)
    if cfg.second_k < 0 or eligible.size == 0:
        return inv2, 0, (np.zeros(0, np.int64), np.zeros(0, np.int64))
    uniq2, inv2[eligible] = np.unique(second[eligible], return_inverse=True)
    return inv2, len(uniq2), search(uniq2, cfg.second_k)


def _cluster(meta: pa.Table, cfg: DedupConfig, uniq: np.ndarray, inv: np.ndarray, pairs, banned: np.ndarray,
             search):
    """(leader, how, copy_of) per row: the representative row of each row (-1: none), how it was claimed
    (index into DETAILS), and the row it is a sha256 copy of (-1: none)."""
    n, n_uniq = meta.num_rows, len(uniq)
    second, has_second = _uint64(meta, hash_columns(cfg)[1])
    low = low_detail(*_uint64(meta, COL.DHASH), cfg.low_detail_bits)
    hashed = np.flatnonzero((inv >= 0) & ~banned)
    inv2, n_uniq2, pairs2 = _second_search(second, hashed[has_second[hashed] & ~low[hashed]], cfg, search)
    plain = plain_rows(meta, hashed, cfg)
    rows = np.union1d(np.union1d(_involved(inv, pairs, hashed, n_uniq),
                                 _involved(inv2, pairs2, hashed[inv2[hashed] >= 0], n_uniq2)),
                      plain if plain.size > 1 else plain[:0])
    sha = _shared_sha256(meta, cfg) & ~banned
    ranked = _rank(meta, np.union1d(rows, np.flatnonzero(sha)))
    copy_of = _sha_survivors(meta, ranked[sha[ranked]], cfg)
    leader, how = np.full(n, -1, np.int64), np.zeros(n, np.int8)
    order = ranked[(inv[ranked] >= 0) & (copy_of[ranked] < 0)]
    if order.size:
        hptr, hrows = _rows_by_value(order, inv, n_uniq)
        hptr2, hrows2 = _rows_by_value(order[inv2[order] >= 0], inv2, n_uniq2)
        first = np.where(inv >= 0, uniq[np.maximum(inv, 0)], np.uint64(0)) if n_uniq else np.zeros(n, np.uint64)
        _leaders(order, inv, *_adjacency(pairs, n_uniq), hptr, hrows, hptr[1:].copy(), low, second, has_second,
                 cfg.low_detail_k, first, inv2, *_adjacency(pairs2, n_uniq2), hptr2, hrows2, cfg.loose_k,
                 _colours(meta, order, cfg), _plain(meta, plain[copy_of[plain] < 0], cfg), leader, how)
    return leader, how, copy_of


def _output(meta: pa.Table, evals: np.ndarray, dups: np.ndarray, reps: np.ndarray, details: np.ndarray) -> pa.Table:
    """The uid/status/reason table: eval overlaps first, then duplicates in row order. details: per dup, an
    index into DETAILS (0: sha256, without the representative's uid)."""
    uid = meta[COL.UID].combine_chunks()
    rep_uid = uid.take(pa.array(reps, pa.int64()))
    prefix = pa.array(np.array([reason(Status.DUPLICATE, d) for d in DETAILS], object)[details], pa.string())
    near = pc.binary_join_element_wise(prefix, pc.if_else(pa.array(details == 0), "", rep_uid), "")
    n_eval, n_dup = len(evals), len(dups)
    return pa.table({
        COL.UID: pa.concat_arrays([uid.take(pa.array(evals, pa.int64())), uid.take(pa.array(dups, pa.int64()))]),
        COL.STATUS: pa.array([Status.EVAL_OVERLAP] * n_eval + [Status.DUPLICATE] * n_dup, pa.string()),
        COL.REASON: pa.concat_arrays([pa.array([reason(Status.EVAL_OVERLAP)] * n_eval, pa.string()),
                                      near.cast(pa.string())]),
    }, schema=OUT_SCHEMA)


def resolve(meta: pa.Table, cfg: DedupConfig, uniq: np.ndarray, inv: np.ndarray, pairs, search=None) -> pa.Table:
    """Turns near pairs (indices into `uniq`) into the rows to drop: eval overlaps, then duplicates.
    search(values, k): the pair search for the second hash (default: near_pairs on this node)."""
    search = search or (lambda values, k: near_pairs(values, k, cfg.max_bucket))
    banned = np.zeros(meta.num_rows, bool)
    eval_hits = cross_hits(uniq, load_eval_hashes(cfg.eval_hashes, hash_columns(cfg)[0]), cfg.k)
    if eval_hits.size:
        banned = np.isin(inv, eval_hits)
    leader, how, copy_of = _cluster(meta, cfg, uniq, inv, pairs, banned, search)
    copies = np.flatnonzero(copy_of >= 0)
    survivor = copy_of[copies]
    rep = np.where(leader[survivor] >= 0, leader[survivor], survivor)
    # a copy reports its survivor's cluster, with the survivor's reason where its hashes are the survivor's
    second, has_second = _uint64(meta, hash_columns(cfg)[1])
    same_hash = (inv[copies] == inv[survivor]) & (second[copies] == second[survivor]) & \
        (has_second[copies] == has_second[survivor])
    copy_detail = np.where((rep == survivor) | ~same_hash, 0, how[survivor])
    near = np.flatnonzero((leader >= 0) & (leader != np.arange(meta.num_rows)))
    dups = np.concatenate([near, copies])
    reps = np.concatenate([leader[near], rep])
    details = np.concatenate([how[near], copy_detail]).astype(np.int64)
    order = np.argsort(dups, kind="stable")
    return _output(meta, np.flatnonzero(banned), dups[order], reps[order], details[order])


def find_duplicates(meta: pa.Table, cfg: DedupConfig = DedupConfig(), stats: SearchStats | None = None,
                    pair_search: PairSearch | None = None) -> pa.Table:
    """Rows of `meta` (uid, sha256, phash, dhash, clip_score, width, height; 'ok' rows only) to drop, as a
    table of uid, status, reason: eval_overlap, or duplicate with a detail of DETAILS (see the module's rule).
    pair_search(values, k, max_bucket): the pair search, default near_pairs on this node's threads (with
    `stats`); pipelines.dedup_ray.ray_pairs runs it as a Ray Data job over the connected cluster."""
    if not cfg.enabled or meta.num_rows == 0:
        return OUT_SCHEMA.empty_table()
    if pair_search is None:
        search = lambda values, k: near_pairs(values, k, cfg.max_bucket, stats)  # noqa: E731
    else:
        search = lambda values, k: pair_search(values, k, cfg.max_bucket)  # noqa: E731
    uniq, inv = _hashes(meta, cfg)
    return resolve(meta, cfg, uniq, inv, search(uniq, cfg.k), search)
