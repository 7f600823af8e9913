"""Phase B selection over the run's ledger: dedup drops, CLIP filter, balancing, seeded shard assignment.

Each step is a pure, seeded table function that takes only its sub-config and marks rows with
curate.schema.set_status (the one row-marking helper: a row keeps its first reason)."""
from __future__ import annotations

import math

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from curate.config import BalanceConfig, ClipConfig, RunConfig, ShardConfig
from curate.schema import COL, STATUSES, SchemaError, Status, conform, ok_rows, set_status
from curate.select import balance

SHARD_DIGITS = 5  # shards/00000.tar: img2dataset's minimum shard-id width
TOP_CONCEPTS = 1000  # concept-mix deviation is measured over the most frequent entries (and 'unmatched')


def select(ledger: pa.Table, drops: pa.Table | None, cfg: RunConfig) -> tuple[pa.Table, dict]:
    """The final ledger of a run and selection stats.

    Applies, to rows still 'ok': dedup `drops` (uid, status, reason) -> their status; the CLIP filter ->
    low_clip_score; concept balancing -> balanced_out:concept (fills COL.CONCEPTS for the candidates);
    language caps/shares -> balanced_out:lang; then every remaining row becomes 'kept' with COL.SHARD and
    COL.KEY. Every decision is a pure function of (cfg.seed, uid, ...), never of row order.
    stats: rows dropped per step, concept counts, and the shard mix deviations (see shard_mix)."""
    table = conform(ledger, "ledger")
    stats: dict = {"input_rows": table.num_rows}
    table = apply_drops(table, drops)
    table = clip_filter(table, cfg.clip, cfg.seed)
    stats["clip_threshold"] = effective_threshold(table, cfg.clip)
    table, stats["concepts"] = concept_balance(table, cfg.balance, cfg.seed)
    table = lang_balance(table, cfg.balance, cfg.seed)
    table = assign_shards(table, cfg.shards, cfg.seed)
    stats["steps"] = _step_counts(table)
    stats["shard_mix"] = shard_mix(table)
    return table, stats


# ---------------------------------------------------------------- steps (each marks rows with set_status)
def apply_drops(table: pa.Table, drops: pa.Table | None) -> pa.Table:
    """Gives each ok row listed in `drops` (uid, status, reason `status[:detail]`) that status and reason."""
    if drops is None or drops.num_rows == 0:
        return table
    statuses = set(pc.unique(drops[COL.STATUS]).to_pylist())
    bad = statuses - set(STATUSES)
    if bad or Status.KEPT in statuses:
        raise SchemaError(f"drops.status: not drop statuses: {sorted(map(str, bad)) or ['kept']}")
    idx = pc.index_in(table[COL.UID], value_set=drops[COL.UID])  # a uid listed twice: its first entry
    st, rs = pc.take(drops[COL.STATUS], idx), pc.take(drops[COL.REASON], idx)
    for status in sorted(statuses):
        hit = pc.fill_null(pc.equal(st, status), False)
        table = set_status(table, hit, status, _drop_details(table, hit, status, rs))
    return table


def _drop_details(table: pa.Table, hit, status: str, reasons) -> pa.ChunkedArray:
    """The detail part of each listed row's reason; raises SchemaError naming a reason not `status[:detail]`."""
    good = pc.or_(pc.equal(reasons, status), pc.starts_with(reasons, status + ":"))
    wrong = pc.and_(hit, pc.invert(pc.fill_null(good, False)))
    if pc.any(wrong).as_py():
        i = pc.index(wrong, True).as_py()
        raise SchemaError(f"drops.reason: {reasons[i].as_py()!r} for uid {table[COL.UID][i].as_py()!r} "
                          f"is not {status!r} or {status + ':<detail>'!r}")
    return pc.utf8_slice_codeunits(reasons, len(status) + 1)


def clip_filter(table: pa.Table, clip: ClipConfig, seed: int) -> pa.Table:
    """low_clip_score: below clip.threshold, and/or outside the top clip.keep_top_fraction of the run's
    ok rows (ties broken by a uid hash seeded with `seed`). Rows without a score fail an enabled filter."""
    thr, frac = clip.threshold, clip.keep_top_fraction
    if thr is None and frac is None:
        return table
    ok = ok_rows(table)
    score = table[COL.CLIP_SCORE].to_numpy(zero_copy_only=False).astype(np.float64)
    missing = ok & np.isnan(score)
    table = set_status(table, missing, Status.LOW_CLIP_SCORE, "missing")
    if thr is not None:
        table = set_status(table, ok & ~missing & (score < thr), Status.LOW_CLIP_SCORE, "threshold")
    if frac is not None:
        cand = np.flatnonzero(ok & ~missing)
        k = int(math.floor(frac * len(cand) + 1e-9))
        tie = balance.uniform(seed, balance.uid_hash64(table[COL.UID].take(pa.array(cand))),
                              np.uint64(balance.str_hash64("clip")))
        order = cand[np.lexsort((tie, -score[cand]))]
        drop = np.zeros(table.num_rows, dtype=bool)
        drop[order[k:]] = True
        table = set_status(table, drop, Status.LOW_CLIP_SCORE, "top_fraction")
    return table


def effective_threshold(table: pa.Table, clip: ClipConfig) -> float | None:
    """The CLIP score the filter really applied: the configured threshold, or with keep_top_fraction the
    lowest score that survived it (what the report draws); None when no filter is on."""
    if clip.threshold is None and clip.keep_top_fraction is None:
        return None
    survivors = table[COL.CLIP_SCORE].filter(pa.array(ok_rows(table)))
    low = pc.min(survivors).as_py() if len(survivors) else None
    if clip.keep_top_fraction is None:
        return clip.threshold
    return low if clip.threshold is None or low is None else max(low, clip.threshold)


def concept_balance(table: pa.Table, bc: BalanceConfig, seed: int) -> tuple[pa.Table, dict]:
    """MetaCLIP balancing of the ok rows (see balance.concept_keep); fills COL.CONCEPTS for them."""
    if not bc.concepts:
        return table, {}
    matcher = balance.cached_matcher(bc.vocabulary, bc.case_sensitive)
    cand = np.flatnonzero(ok_rows(table))
    sub = table.select([COL.UID, COL.CAPTION_CLEAN]).take(pa.array(cand))
    rows, ents = matcher.match(sub[COL.CAPTION_CLEAN])
    uid_h = balance.uid_hash64(sub[COL.UID])
    keep, counts = balance.concept_keep(uid_h, rows, ents, matcher.entries, bc.t, bc.unmatched, seed)
    concepts = _concept_lists(len(cand), rows, ents, matcher.entries)
    full = pa.nulls(table.num_rows, pa.list_(pa.string()))
    full = _scatter(full, cand, concepts)
    table = table.set_column(table.schema.get_field_index(COL.CONCEPTS), COL.CONCEPTS, full)
    drop = np.zeros(table.num_rows, dtype=bool)
    drop[cand[~keep]] = True
    table = set_status(table, drop, Status.BALANCED_OUT, "concept")
    top = np.argsort(-counts, kind="stable")[:20]
    return table, {"matched_rows": int(len(np.unique(rows))), "candidates": int(len(cand)),
                   "entries_matched": int((counts > 0).sum()), "t": bc.t,
                   "top": {matcher.entries[i]: int(counts[i]) for i in top if counts[i] > 0}}


def _concept_lists(n: int, rows: np.ndarray, ents: np.ndarray, entries: list[str]) -> pa.Array:
    """A list<string> array of n rows from sorted (row, entry) pairs; rows without a match get []."""
    offsets = np.zeros(n + 1, dtype=np.int32)
    np.add.at(offsets, rows + 1, 1) if len(rows) else None
    offsets = np.cumsum(offsets, dtype=np.int32)
    vocab = pa.array(entries, pa.string())
    values = vocab.take(pa.array(ents, pa.int64())) if len(ents) else pa.array([], pa.string())
    return pa.ListArray.from_arrays(pa.array(offsets), values)


def _scatter(full: pa.Array, idx: np.ndarray, values: pa.Array) -> pa.Array:
    """`full` with positions idx replaced by `values` (a take over [full, values])."""
    src = np.arange(len(full), dtype=np.int64)
    src[idx] = len(full) + np.arange(len(idx), dtype=np.int64)
    return pa.concat_arrays([full, values.cast(full.type)]).take(pa.array(src))


def lang_balance(table: pa.Table, bc: BalanceConfig, seed: int) -> pa.Table:
    """balanced_out:lang for rows beyond the per-language caps or target shares of the ok set."""
    if not bc.lang_caps and not bc.lang_shares:
        return table
    cand = np.flatnonzero(ok_rows(table))
    sub = table.select([COL.UID, COL.LANG]).take(pa.array(cand))
    langs = np.array(pc.fill_null(sub[COL.LANG], "und").to_pylist(), dtype=object)
    keep = balance.lang_keep(langs, balance.uid_hash64(sub[COL.UID]), bc.lang_caps, bc.lang_shares, seed)
    drop = np.zeros(table.num_rows, dtype=bool)
    drop[cand[~keep]] = True
    return set_status(table, drop, Status.BALANCED_OUT, "lang")


# ---------------------------------------------------------------- shards and keys
def key_widths(n_kept: int, samples_per_shard: int) -> tuple[int, int]:
    """(shard digits, index digits) as img2dataset computes them: at least 5 shard digits, and
    ceil(log10(samples_per_shard)) index digits (at least 1)."""
    n_shards = max(1, math.ceil(n_kept / samples_per_shard))
    return max(SHARD_DIGITS, len(str(n_shards - 1))), max(1, math.ceil(math.log10(samples_per_shard)))


def assign_shards(table: pa.Table, shards: ShardConfig, seed: int) -> pa.Table:
    """Marks every ok row 'kept' and gives it COL.SHARD and COL.KEY: a shuffle seeded with `seed` (or input
    order, shards.shuffle false) cut into shards of exactly samples_per_shard rows (the last may be short)."""
    sps = shards.samples_per_shard
    cand = np.flatnonzero(ok_rows(table))
    if shards.shuffle:
        uid_h = balance.uid_hash64(table[COL.UID].take(pa.array(cand)))
        h = balance.uniform(seed, uid_h, np.uint64(balance.str_hash64("shard")))
        order = cand[np.lexsort((uid_h, h))]  # the uid hash breaks (astronomically rare) draw ties
    else:
        src = table[COL.SOURCE_FILE].take(pa.array(cand)).to_pylist()
        ri = table[COL.ROW_INDEX].take(pa.array(cand)).to_numpy()
        order = cand[np.lexsort((ri, np.array(src, dtype=object)))]
    pos = np.arange(len(order))
    shard_of = np.full(table.num_rows, -1, dtype=np.int64)
    index_of = np.full(table.num_rows, -1, dtype=np.int64)
    shard_of[order], index_of[order] = pos // sps, pos % sps
    sw, iw = key_widths(len(order), sps)
    has = shard_of >= 0
    shard_arr = pa.array(np.where(has, shard_of, 0).astype(np.int32), mask=~has)
    keys = pc.binary_join_element_wise(
        pc.utf8_lpad(pc.cast(pa.array(shard_of[has]), pa.string()), sw, "0"),
        pc.utf8_lpad(pc.cast(pa.array(index_of[has]), pa.string()), iw, "0"), "")
    key_arr = _scatter(pa.nulls(table.num_rows, pa.string()), np.flatnonzero(has), keys)
    table = table.set_column(table.schema.get_field_index(COL.SHARD), COL.SHARD, shard_arr)
    table = table.set_column(table.schema.get_field_index(COL.KEY), COL.KEY, key_arr)
    return set_status(table, has, Status.KEPT)


def _step_counts(table: pa.Table) -> dict:
    vc = pc.value_counts(pc.fill_null(table[COL.REASON], Status.KEPT))
    return {d["values"]: d["counts"] for d in sorted(vc.to_pylist(), key=lambda d: d["values"])}


# ---------------------------------------------------------------- shard mix
def shard_mix(table: pa.Table) -> dict:
    """Largest absolute deviation of each shard's language / concept shares from the whole kept set.

    Concepts: over the TOP_CONCEPTS most frequent entries plus 'unmatched'. The maxima are over full
    shards (the short last shard's values are in per_shard). Returns the maxima and
    per-shard values ({shard: {"lang": d, "concept": d}}); deviations are fractions (0.01 = 1 point)."""
    kept = table.filter(pc.equal(table[COL.STATUS], Status.KEPT))
    if kept.num_rows == 0:
        return {"max_lang_deviation": 0.0, "max_concept_deviation": 0.0, "per_shard": {}}
    shard = kept[COL.SHARD].to_numpy(zero_copy_only=False).astype(np.int64)
    n_shards = int(shard.max()) + 1
    size = np.bincount(shard, minlength=n_shards).astype(np.float64)
    lang_dev = _mix_dev(shard, pc.fill_null(kept[COL.LANG], "und"), size)
    concept_dev = np.zeros(n_shards)
    concepts = kept[COL.CONCEPTS]
    if concepts.null_count < kept.num_rows:
        lens = pc.fill_null(pc.list_value_length(concepts), 0).to_numpy(zero_copy_only=False)
        flat = pc.list_flatten(concepts)
        row_of = np.repeat(np.arange(kept.num_rows), lens)
        labels = pa.concat_arrays([flat.combine_chunks() if isinstance(flat, pa.ChunkedArray) else flat,
                                   pa.array(["<unmatched>"] * int((lens == 0).sum()), pa.string())])
        rows = np.concatenate([row_of, np.flatnonzero(lens == 0)])
        concept_dev = _mix_dev(shard[rows], labels, size, top=TOP_CONCEPTS)
    per = {int(s): {"lang": round(float(lang_dev[s]), 6), "concept": round(float(concept_dev[s]), 6)}
           for s in range(n_shards)}
    full = size == size.max()  # a short last shard is a small sample: its own entry, not in the max
    return {"max_lang_deviation": round(float(lang_dev[full].max()), 6),
            "max_concept_deviation": round(float(concept_dev[full].max()), 6), "per_shard": per}


def _mix_dev(shard: np.ndarray, labels, size: np.ndarray, top: int | None = None) -> np.ndarray:
    """Per shard: max over labels of |count(shard, label) / size(shard) - count(label) / total|."""
    enc = pc.dictionary_encode(labels)
    enc = enc.combine_chunks() if isinstance(enc, pa.ChunkedArray) else enc
    code = enc.indices.to_numpy(zero_copy_only=False).astype(np.int64)
    n_lab = len(enc.dictionary)
    total = np.bincount(code, minlength=n_lab).astype(np.float64)
    if top is not None and n_lab > top:
        chosen = np.argsort(-total, kind="stable")[:top]
        remap = np.full(n_lab, -1)
        remap[chosen] = np.arange(len(chosen))
        code, total, n_lab = remap[code], total[chosen], len(chosen)
        shard = shard[code >= 0]
        code = code[code >= 0]
    mat = np.bincount(shard * n_lab + code, minlength=len(size) * n_lab).reshape(len(size), n_lab)
    share = mat / np.maximum(size, 1)[:, None]
    return np.abs(share - total / size.sum()).max(axis=1) if n_lab else np.zeros(len(size))
