"""Exact Hamming-radius search over 64-bit hashes: multi-index hashing with neighbour probing, in numba.

Why not plain banding (k+1 bands, exact match on one): at the default k=8 a band is 7 bits wide, so among n random
hashes each one shares a bucket with 9 * n / 128 others and the join grows as n^2 (200k hashes took 27 s).

The scheme (Norouzi et al., "Fast search in Hamming space with multi-index hashing", 2012):
  * split the 64 bits into m substrings with search radii r_i such that sum(r_i + 1) >= k + 1. Two hashes within
    distance k then differ in at most r_i bits of some substring i (else they would differ in >= k + 1 bits);
  * per substring, a table: the hashes sorted by the top `bits` bits of the substring (bits <= its width, about
    log2(n)), with CSR offsets over all 2^bits values;
  * every query probes, in each table, the buckets of its own key XOR every mask of weight <= r_i over those bits,
    and compares its full hash with every hash there (popcount of the XOR). A hash within r_i bits on the
    substring is within r_i bits on its top bits, so it lies in one of the probed buckets: no false negatives;
  * `plan` picks m (and so the widths and radii) that minimises probes + comparisons for the table size: for
    16M hashes at k=8 that is three 21-bit tables with radius 2 (232 probes each, ~8 hashes per bucket).
Giant buckets (real photo sets put many near-blank images on one key): only the first `max_bucket` hashes of a
bucket (ascending hash order) take part in its comparisons, so work is bounded by probes * n * max_bucket. A
pair with a hash beyond that cap is then found only through another table, or missed (clustering then keeps
both images); `giant_buckets` counts such buckets so a run can report it.
The kernel releases the GIL, so chunks of a table's buckets run on threads, one per core.
"""
from __future__ import annotations

import math
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from itertools import combinations

import numba
import numpy as np
from numba import types
from numba.extending import intrinsic

MAX_INDEX_BITS = 24      # largest key: 2^24 buckets cost 384 MB of int64 offsets and bounds
PROBE_COST = 3.0         # relative cost of one bucket lookup against one hash comparison (measured ~2-4x)
TABLE_COST = 60.0        # relative cost per hash of building one table (key, sort, offsets)
KEY_CHUNK = 1 << 16      # bucket keys per kernel call: enough to amortise the call, small enough to spread on threads


@dataclass(frozen=True)
class Substring:
    """One table: bits [shift, shift + width) of the hash, indexed by its top `bits` bits, probed to `radius`."""
    shift: int
    width: int
    bits: int
    radius: int

    def keys(self, h: np.ndarray) -> np.ndarray:
        return (h >> np.uint64(self.shift + self.width - self.bits)) & np.uint64((1 << self.bits) - 1)

    def masks(self) -> np.ndarray:
        """All `bits`-bit masks of weight <= radius (the XORs to probe), weight 0 first."""
        out = [0]
        for w in range(1, self.radius + 1):
            out += [sum(1 << b for b in c) for c in combinations(range(self.bits), w)]
        return np.array(out, np.uint64)

    def probes(self) -> int:
        return sum(math.comb(self.bits, w) for w in range(self.radius + 1))


@dataclass
class SearchStats:
    """Counts of one search, for logs and the benchmark."""
    compared: int = 0          # hash pairs whose distance was computed
    giant_buckets: int = 0     # buckets above max_bucket (compared against their first members only)
    tables: list = field(default_factory=list)  # the plan used: one Substring per table


def _split(m: int, total: int) -> list[int]:
    return [total // m + (1 if i < total % m else 0) for i in range(m)]


def substrings(m: int, k: int, n_index: int) -> list[Substring]:
    """m substrings covering the 64 bits, radii summing to k + 1 - m, index bits about log2(n_index) + 1."""
    widths, radii = _split(m, 64), _split(m, k + 1 - m)
    target = min(MAX_INDEX_BITS, max(4, int(n_index).bit_length() + 1))
    shifts = np.cumsum([0] + widths[:-1])
    return [Substring(int(s), w, min(w, target), r) for s, w, r in zip(shifts, widths, radii)]


def plan(k: int, n_index: int, n_query: int) -> list[Substring]:
    """The substrings with the least estimated work (probes, comparisons, table builds) for this search."""
    if not 0 <= k < 64:
        raise ValueError(f"Hamming radius must be in [0, 63], got {k}")
    best, best_cost = None, math.inf
    for m in range(1, min(k + 1, 64) + 1):
        subs = substrings(m, k, n_index)
        per_query = sum(s.probes() * (PROBE_COST + n_index / 2 ** s.bits) for s in subs)
        cost = n_query * per_query + TABLE_COST * m * (n_index + n_query)
        if cost < best_cost:
            best, best_cost = subs, cost
    return best


@intrinsic
def _popcount(typingctx, x):
    """LLVM's ctpop: one POPCNT instruction on x86-64 (numba has no popcount of its own)."""
    def codegen(context, builder, signature, args):
        return builder.ctpop(args[0])
    return types.uint64(types.uint64), codegen


@numba.njit(nogil=True, cache=True)
def _probe(q_keys, q_hash, d_hash, offsets, masks, k, hit_q, hit_d):
    """Marks the queries and the indexed positions that have a partner within distance k (probed buckets in
    full, no cap)."""
    for mi in range(masks.size):
        for qi in range(q_keys.size):
            key = q_keys[qi] ^ masks[mi]
            for p in range(offsets[key], offsets[key + 1]):
                if _popcount(q_hash[qi] ^ d_hash[p]) <= k:
                    hit_q[qi] = True
                    hit_d[p] = True


@numba.njit(nogil=True, cache=True)
def _self_probe(keys, hashes, bounds, masks, k, lo, hi, out_a, out_b):
    """Pairs (positions) within distance k among the hashes of one table, for the buckets of the distinct keys
    keys[lo:hi]; masks[0] is 0. Bucket pairs are visited once: i < j within a bucket, (K, K ^ mask) only when
    K ^ mask > K. Writes at most len(out_a) pairs; returns (pairs found, comparisons): a caller whose buffer
    was too small calls again with a larger one (keeps the hot loop free of reallocation)."""
    n = 0
    compared = 0
    cap = out_a.size
    for ki in range(lo, hi):
        key = keys[ki]
        s, e = bounds[key, 0], bounds[key, 1]
        compared += (e - s) * (e - s - 1) // 2
        for i in range(s, e):
            h = hashes[i]
            for j in range(i + 1, e):
                if _popcount(h ^ hashes[j]) <= k:
                    if n < cap:
                        out_a[n] = i
                        out_b[n] = j
                    n += 1
    for mi in range(1, masks.size):
        mask = masks[mi]
        for ki in range(lo, hi):
            key = keys[ki]
            other = key ^ mask
            if other < key:
                continue
            s2, e2 = bounds[other, 0], bounds[other, 1]
            if s2 == e2:
                continue
            s1, e1 = bounds[key, 0], bounds[key, 1]
            compared += (e1 - s1) * (e2 - s2)
            for i in range(s1, e1):
                h = hashes[i]
                for j in range(s2, e2):
                    if _popcount(h ^ hashes[j]) <= k:
                        if n < cap:
                            out_a[n] = i
                            out_b[n] = j
                        n += 1
    return n, compared


@dataclass
class Table:
    """One substring's index: hashes sorted by key (ascending hash within a key), CSR offsets over keys."""
    sub: Substring
    order: np.ndarray      # position -> row of the indexed array
    hashes: np.ndarray     # hashes in `order`
    offsets: np.ndarray    # 2^bits + 1 bucket bounds
    bounds: np.ndarray     # per key, [start, end) of the part of its bucket that takes part (max_bucket cap);
                           # start and end side by side: one cache line per probed bucket
    distinct: np.ndarray   # the non-empty keys, ascending
    giant: int             # buckets above max_bucket
    masks: np.ndarray      # sub.masks(), made once: every chunk of the table probes the same ones


def build(index: np.ndarray, sub: Substring, max_bucket: int) -> Table:
    keys = sub.keys(index)
    order = np.argsort(keys, kind="stable")  # stable: ascending hash within a bucket when `index` is sorted
    counts = np.bincount(keys.astype(np.int64), minlength=1 << sub.bits)
    offsets = np.zeros(len(counts) + 1, np.int64)
    np.cumsum(counts, out=offsets[1:])
    bounds = np.stack([offsets[:-1], np.minimum(offsets[1:], offsets[:-1] + max_bucket)], axis=1)
    return Table(sub, order, index[order], offsets, bounds, np.flatnonzero(counts).astype(np.uint64),
                 int(np.count_nonzero(counts > max_bucket)), sub.masks())


def _threads() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not Linux
        return max(1, os.cpu_count() or 1)


def _chunks(n: int, size: int) -> list[tuple[int, int]]:
    return [(lo, min(n, lo + size)) for lo in range(0, n, size)]


def _gather(parts: list, stats: SearchStats) -> tuple[np.ndarray, np.ndarray]:
    stats.compared += sum(int(c) for _, _, c in parts)
    if not parts:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    return np.concatenate([a for a, _, _ in parts]), np.concatenate([b for _, b, _ in parts])


def table_pairs(table: Table, k: int, lo: int, hi: int) -> tuple:
    """_self_probe over the distinct keys [lo, hi) of `table`: (rows a, rows b, comparisons)."""
    size = max(4096, hi - lo)  # near-duplicate pairs are rarer than buckets; a rerun covers the odd exception
    while True:
        out_a, out_b = np.empty(size, np.int64), np.empty(size, np.int64)
        n, compared = _self_probe(table.distinct, table.hashes, table.bounds, table.masks,
                                  k, lo, hi, out_a, out_b)
        if n <= size:
            return table.order[out_a[:n]], table.order[out_b[:n]], compared
        size = n


def near_pairs(uniq: np.ndarray, k: int, max_bucket: int, stats: SearchStats | None = None):
    """All index pairs (a, b), a < b, of the sorted distinct hashes `uniq` within Hamming distance k."""
    stats = stats if stats is not None else SearchStats()
    uniq = np.ascontiguousarray(uniq, np.uint64)
    pa_, pb_ = [], []
    with ThreadPoolExecutor(_threads()) as pool:  # the kernel releases the GIL
        for sub in plan(k, len(uniq), len(uniq)):
            table = build(uniq, sub, max_bucket)
            stats.tables.append(sub)
            stats.giant_buckets += table.giant
            bounds = _chunks(len(table.distinct), KEY_CHUNK)
            a, b = _gather(list(pool.map(lambda lh, t=table: table_pairs(t, k, *lh), bounds)), stats)
            pa_.append(np.minimum(a, b))
            pb_.append(np.maximum(a, b))
    return unique_pairs(np.concatenate(pa_), np.concatenate(pb_))


def cross_hits(data: np.ndarray, probe: np.ndarray, k: int) -> np.ndarray:
    """Sorted indices into `data` of hashes within distance k of any hash in `probe` (evaluation images), with
    no bucket cap: no false negatives at all. The larger set is indexed (a few sorts) and the smaller one
    queries it (probes per query are the expensive part)."""
    if len(data) == 0 or len(probe) == 0:
        return np.zeros(0, np.int64)
    data = np.ascontiguousarray(data, np.uint64)
    probe = np.unique(np.asarray(probe, np.uint64))
    index, query = (data, probe) if len(data) >= len(probe) else (probe, data)
    hit = np.zeros(len(data), bool)
    for sub in plan(k, len(index), len(query)):
        table = build(index, sub, len(index))
        hit_q, hit_d = np.zeros(len(query), bool), np.zeros(len(index), bool)
        _probe(sub.keys(query), query, table.hashes, table.offsets, table.masks, k, hit_q, hit_d)
        hit[np.flatnonzero(hit_q) if query is data else table.order[hit_d]] = True
    return np.flatnonzero(hit)


def unique_pairs(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Distinct (a, b) pairs, sorted."""
    if a.size == 0:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    width = int(max(a.max(), b.max())) + 1  # one int64 per pair: row counts stay far below 2^31
    key = np.unique(a.astype(np.int64) * width + b)
    return key // width, key % width
