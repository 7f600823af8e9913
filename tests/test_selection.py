"""select(): dedup drops, CLIP filter, balancing statuses, shard assignment and keys, shard-mix stats."""
from __future__ import annotations

import hashlib
import re

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pytest

from curate.config import BalanceConfig, ClipConfig, RunConfig, ShardConfig
from curate.schema import COL, SchemaError, Status, conform, reason, validate
from curate.select import key_widths, select

WORDS = ("goldfish", "tabby cat", "pizza", "volcano")


def _ledger(n: int = 1000, seed: int = 0) -> pa.Table:
    rng = np.random.default_rng(seed)
    w = rng.choice(len(WORDS) + 1, size=n, p=[0.6, 0.2, 0.1, 0.05, 0.05])
    caps = [f"a photo of a {WORDS[k]}" if k < len(WORDS) else "something else" for k in w]
    st = [Status.OK if i % 10 else Status.DOWNLOAD_ERROR for i in range(n)]
    return conform(pa.table({
        COL.UID: [hashlib.blake2b(f"{seed}-{i}".encode(), digest_size=16).hexdigest() for i in range(n)],
        COL.UNIT_ID: pa.array(np.arange(n) // 100, pa.int32()),
        COL.SOURCE_FILE: ["in.parquet"] * n,
        COL.ROW_INDEX: pa.array(np.arange(n), pa.int64()),
        COL.CAPTION_CLEAN: caps,
        COL.STATUS: st,
        COL.REASON: [None if s == Status.OK else reason(s, "timeout") for s in st],
        COL.LANG: rng.choice(["en", "de", "fr"], size=n, p=[0.6, 0.3, 0.1]).tolist(),
        COL.CLIP_SCORE: pa.array(rng.uniform(0, 0.5, n), pa.float32()),
    }), "ledger")


def _cfg(**kw) -> RunConfig:
    return RunConfig(seed=kw.pop("seed", 0), clip=ClipConfig(**kw.pop("clip", {})),
                     balance=BalanceConfig(**kw.pop("balance", {})),
                     shards=ShardConfig(**kw.pop("shards", {"samples_per_shard": 64})))


def _by_uid(t: pa.Table) -> dict:
    return {r[COL.UID]: (r[COL.STATUS], r[COL.REASON], r[COL.KEY]) for r in
            t.select([COL.UID, COL.STATUS, COL.REASON, COL.KEY]).to_pylist()}


def test_every_row_decided_and_earlier_drops_kept():
    ledger = _ledger()
    final, stats = select(ledger, None, _cfg())
    validate(final, "ledger")
    assert final.num_rows == ledger.num_rows
    assert set(final[COL.STATUS].to_pylist()) == {Status.KEPT, Status.DOWNLOAD_ERROR}
    before = ledger.filter(pc.equal(ledger[COL.STATUS], Status.DOWNLOAD_ERROR))[COL.REASON].to_pylist()
    after = final.filter(pc.equal(final[COL.STATUS], Status.DOWNLOAD_ERROR))[COL.REASON].to_pylist()
    assert before == after
    kept = final.filter(pc.equal(final[COL.STATUS], Status.KEPT))
    assert kept[COL.REASON].null_count == kept.num_rows == 900
    assert stats["steps"][Status.KEPT] == 900


def test_dedup_drops_apply_only_to_ok_rows():
    ledger = _ledger(100)
    uids = ledger[COL.UID].to_pylist()
    drops = pa.table({COL.UID: [uids[1], uids[10]], COL.STATUS: [Status.DUPLICATE, Status.DUPLICATE],
                      COL.REASON: [reason(Status.DUPLICATE, f"duplicate_of:{uids[2]}"), "duplicate:sha256"]})
    final, _ = select(ledger, drops, _cfg())
    got = _by_uid(final)
    assert got[uids[1]][:2] == (Status.DUPLICATE, f"duplicate:duplicate_of:{uids[2]}")
    assert got[uids[10]][0] == Status.DOWNLOAD_ERROR  # already dropped: keeps its first reason
    with pytest.raises(SchemaError):
        select(ledger, pa.table({COL.UID: [uids[1]], COL.STATUS: ["gone"], COL.REASON: ["gone"]}), _cfg())


def test_dedup_drops_mark_through_set_status_and_reject_bad_reasons():
    ledger = _ledger(100)
    uids = ledger[COL.UID].to_pylist()
    drops = pa.table({COL.UID: [uids[1], uids[2], uids[1]],
                      COL.STATUS: [Status.EVAL_OVERLAP, Status.DUPLICATE, Status.DUPLICATE],
                      COL.REASON: [Status.EVAL_OVERLAP, "duplicate:sha256", "duplicate:sha256"]})
    got = _by_uid(select(ledger, drops, _cfg())[0])
    assert got[uids[1]][:2] == (Status.EVAL_OVERLAP, Status.EVAL_OVERLAP)  # a uid listed twice: its first entry
    assert got[uids[2]][:2] == (Status.DUPLICATE, "duplicate:sha256")
    bad = pa.table({COL.UID: [uids[3]], COL.STATUS: [Status.DUPLICATE], COL.REASON: ["lang"]})
    with pytest.raises(SchemaError, match=uids[3]):
        select(ledger, bad, _cfg())


def test_clip_threshold_and_top_fraction():
    ledger = _ledger()
    score = ledger[COL.CLIP_SCORE].to_numpy()
    ok = np.array(ledger[COL.STATUS].to_pylist()) == Status.OK
    final, _ = select(ledger, None, _cfg(clip={"threshold": 0.2}))
    st = np.array(final[COL.STATUS].to_pylist())
    assert ((st == Status.LOW_CLIP_SCORE) == (ok & (score < 0.2))).all()
    assert set(final.filter(pc.equal(final[COL.STATUS], Status.LOW_CLIP_SCORE))[COL.REASON].to_pylist()) == {
        "low_clip_score:threshold"}
    final, _ = select(ledger, None, _cfg(clip={"keep_top_fraction": 0.3}))
    kept = np.array(final[COL.STATUS].to_pylist()) == Status.KEPT
    assert kept.sum() == int(0.3 * ok.sum())
    assert score[kept].min() >= score[ok & ~kept].max()
    missing = ledger.set_column(ledger.schema.get_field_index(COL.CLIP_SCORE), COL.CLIP_SCORE,
                                pa.nulls(ledger.num_rows, pa.float32()))
    final, _ = select(missing, None, _cfg(clip={"threshold": 0.2}))
    assert set(final[COL.REASON].to_pylist()) == {"low_clip_score:missing", "download_error:timeout"}


def test_concepts_filled_and_balanced():
    ledger = _ledger(4000)
    cfg = _cfg(balance={"concepts": True, "vocabulary": "imagenet", "t": 150, "unmatched": "drop"})
    final, stats = select(ledger, None, cfg)
    conc = final[COL.CONCEPTS].to_pylist()
    st = final[COL.STATUS].to_pylist()
    caps = final[COL.CAPTION_CLEAN].to_pylist()
    for c, s, cap in zip(conc, st, caps):
        if s == Status.DOWNLOAD_ERROR:
            assert c is None
        elif "goldfish" in cap:
            assert c == ["goldfish"]
        elif "something" in cap:
            assert c == [] and s == Status.BALANCED_OUT
    kept_gold = sum(s == Status.KEPT and "goldfish" in cap for s, cap in zip(st, caps))
    assert abs(kept_gold - 150) < 5 * np.sqrt(150)
    assert stats["concepts"]["top"]["goldfish"] > 2000
    assert {r for r in final[COL.REASON].to_pylist() if r and r.startswith("balanced")} == {
        "balanced_out:concept"}


def test_lang_balancing_reason():
    final, _ = select(_ledger(), None, _cfg(balance={"lang_caps": {"en": 100}}))
    t = final.filter(pc.equal(final[COL.STATUS], Status.KEPT))
    assert t.filter(pc.equal(t[COL.LANG], "en")).num_rows == 100
    assert "balanced_out:lang" in final[COL.REASON].to_pylist()


def test_shards_exact_sizes_and_img2dataset_keys():
    final, stats = select(_ledger(), None, _cfg(shards={"samples_per_shard": 64}))
    kept = final.filter(pc.equal(final[COL.STATUS], Status.KEPT))
    sizes = np.bincount(kept[COL.SHARD].to_numpy())
    assert sizes.tolist() == [64] * 14 + [900 - 14 * 64]
    keys = kept[COL.KEY].to_pylist()
    assert len(set(keys)) == len(keys) and all(re.fullmatch(r"\d{7}", k) for k in keys)
    for k, s in zip(keys, kept[COL.SHARD].to_pylist()):
        assert int(k[:5]) == s and int(k[5:]) < 64
    assert key_widths(900, 10_000) == (5, 4) and key_widths(10, 1) == (5, 1) and key_widths(10**6, 1) == (6, 1)
    mix = stats["shard_mix"]
    assert 0 < mix["max_lang_deviation"] < 0.3 and len(mix["per_shard"]) == 15
    assert mix["per_shard"][14]["lang"] >= 0  # the short last shard is reported on its own


def test_shuffle_mixes_languages_and_is_seeded_and_order_free():
    ledger = _ledger(3000)
    # languages in input order: an unshuffled cut gives (nearly) pure-language shards
    ledger = ledger.set_column(ledger.schema.get_field_index(COL.LANG), COL.LANG,
                               pa.array(sorted(ledger[COL.LANG].to_pylist())))
    a, sa = select(ledger, None, _cfg(seed=1, shards={"samples_per_shard": 300}))
    _, sn = select(ledger, None, _cfg(seed=1, shards={"samples_per_shard": 300, "shuffle": False}))
    assert sa["shard_mix"]["max_lang_deviation"] < 0.15 < sn["shard_mix"]["max_lang_deviation"]
    perm = pa.array(np.random.default_rng(5).permutation(ledger.num_rows))
    b, _ = select(ledger.take(perm), None, _cfg(seed=1, shards={"samples_per_shard": 300}))
    assert _by_uid(a) == _by_uid(b)
    c, _ = select(ledger, None, _cfg(seed=2, shards={"samples_per_shard": 300}))
    assert _by_uid(a) != _by_uid(c)


def test_empty_and_all_dropped():
    empty = conform(_ledger(10).slice(0, 0), "ledger")
    final, stats = select(empty, None, _cfg(balance={"concepts": True, "vocabulary": "imagenet"}))
    assert final.num_rows == 0 and stats["shard_mix"]["max_lang_deviation"] == 0.0
    led = _ledger(20)
    final, _ = select(led, None, _cfg(clip={"threshold": 2.0}))
    assert Status.KEPT not in final[COL.STATUS].to_pylist()
