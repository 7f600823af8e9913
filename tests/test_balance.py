"""Concept balancing (MetaCLIP) and language caps/shares: matching, draw statistics, determinism."""
from __future__ import annotations

import hashlib

import numpy as np
import pyarrow as pa
import pytest

from curate.select import balance
from curate.select.balance import Matcher, concept_keep, lang_keep, load_vocabulary, uid_hash64, uniform


def _uids(n: int, prefix: str = "r") -> list[str]:
    return [hashlib.blake2b(f"{prefix}{i}".encode(), digest_size=16).hexdigest() for i in range(n)]


def _pairs(m: Matcher, captions: list) -> list[tuple[int, str]]:
    rows, ents = m.match(pa.array(captions, pa.string()))
    return [(int(r), m.entries[e]) for r, e in zip(rows, ents)]


def test_whole_word_case_insensitive_matching():
    m = Matcher(["cat", "hot dog", "dog", "New York", "café", "c++"])
    got = _pairs(m, ["A Cat, and a dog.", "category hotdogs dogma", "hot dog!", None, "new york's café",
                     "cat cat cat", "Café-cat", "", "learn c++ now"])
    assert got == [(0, "cat"), (0, "dog"), (2, "hot dog"), (2, "dog"), (4, "New York"), (4, "café"),
                   (5, "cat"), (6, "cat"), (6, "café"), (8, "c++")]


def test_case_sensitive_and_chunking(monkeypatch):
    monkeypatch.setattr(balance, "CHUNK_ROWS", 2)  # rows spread over several automaton passes
    m = Matcher(["Apple", "pie"], case_sensitive=True)
    assert _pairs(m, ["apple pie", "Apple", "x", "Apple pie"]) == [(0, "pie"), (1, "Apple"), (3, "Apple"), (3, "pie")]


def test_vocabularies(tmp_path):
    names = load_vocabulary("imagenet")
    assert len(names) > 990 and "goldfish" in names and len(set(names)) == len(names)
    assert _pairs(Matcher(names), ["a goldfish in a bowl"]) == [(0, "goldfish")]
    p = tmp_path / "v.txt"
    p.write_text("zebra\n\n  lion \nzebra\n")
    assert load_vocabulary(str(p)) == ["zebra", "lion"]


def test_uid_hash_is_per_row_and_stable():
    hexes = _uids(3)
    both = uid_hash64(pa.array(hexes + ["not-hex", None]))
    assert list(uid_hash64(pa.array(hexes[1:2]))) == [both[1]]
    assert list(uid_hash64(pa.array(["not-hex"]))) == [both[3]]
    assert len(set(both.tolist())) == 5
    u = uniform(7, both, np.uint64(11))
    assert ((u >= 0) & (u < 1)).all() and (u == uniform(7, both, np.uint64(11))).all()
    assert not (u == uniform(8, both, np.uint64(11))).all()


def _head_tail(counts: dict[str, int]) -> tuple[list[str], np.ndarray, np.ndarray, list[str]]:
    entries = list(counts)
    ents = np.concatenate([[i] * c for i, c in enumerate(counts.values())]).astype(np.int64)
    rows = np.arange(len(ents), dtype=np.int64)
    return entries, rows, ents, _uids(len(ents))


def test_kept_counts_follow_min_count_t():
    counts = {"head": 20_000, "mid": 3_000, "border": 500, "tail": 120, "rare": 7}
    t = 500
    entries, rows, ents, uids = _head_tail(counts)
    keep, got_counts = concept_keep(uid_hash64(pa.array(uids)), rows, ents, entries, t, "keep", seed=1)
    assert got_counts.tolist() == list(counts.values())
    for i, (name, c) in enumerate(counts.items()):
        kept = int(keep[ents == i].sum())
        p = t / max(c, t)
        sd = np.sqrt(c * p * (1 - p))
        assert abs(kept - min(c, t)) <= 5 * sd + 1e-9, (name, kept)
        if c <= t:
            assert kept == c  # tail entries are kept whole


def test_any_draw_keeps_and_multi_entry_probability():
    n = 40_000
    uids = uid_hash64(pa.array(_uids(n)))
    # every row matches 'a' (count n) and 'b' (count n): p = t/n each, kept w.p. 1-(1-p)^2
    rows = np.repeat(np.arange(n), 2)
    ents = np.tile([0, 1], n)
    t = 4_000
    keep, _ = concept_keep(uids, rows, ents, ["a", "b"], t, "keep", seed=0)
    p = t / n
    expect = n * (1 - (1 - p) ** 2)
    assert abs(keep.sum() - expect) < 5 * np.sqrt(expect)
    # a row that also matches a tail entry (count <= t) is always kept
    rows2 = np.concatenate([rows, [5, 6]])
    ents2 = np.concatenate([ents, [2, 2]])
    keep2, _ = concept_keep(uids, rows2, ents2, ["a", "b", "tail"], t, "keep", seed=0)
    assert keep2[5] and keep2[6]


def test_unmatched_modes():
    uids = uid_hash64(pa.array(_uids(1000)))
    rows, ents = np.array([0, 1], np.int64), np.array([0, 0], np.int64)
    keep, _ = concept_keep(uids, rows, ents, ["x"], 10, "keep", 0)
    assert keep.all()
    keep, _ = concept_keep(uids, rows, ents, ["x"], 10, "drop", 0)
    assert keep.sum() == 2
    keep, _ = concept_keep(uids, rows, ents, ["x"], 100, "cap", 0)
    assert 2 + 50 < keep.sum() < 2 + 160  # 998 unmatched rows as one entry capped at ~100
    with pytest.raises(ValueError, match="unmatched"):
        concept_keep(uids, rows, ents, ["x"], 10, "maybe", 0)


def test_draws_do_not_depend_on_row_order_or_partitioning():
    counts = {"head": 5_000, "tail": 50}
    entries, rows, ents, uids = _head_tail(counts)
    h = uid_hash64(pa.array(uids))
    keep, _ = concept_keep(h, rows, ents, entries, 100, "keep", seed=9)
    perm = np.random.default_rng(0).permutation(len(uids))
    inv = np.argsort(perm)
    keep_p, _ = concept_keep(h[perm], inv[rows], ents, entries, 100, "keep", seed=9)
    assert (keep_p[inv[np.arange(len(uids))]] == keep).all()
    # the same entry-level draws on a partition, given the global probabilities: same decisions
    part = np.arange(0, len(uids), 3)
    u_part = uniform(9, h[part], np.uint64(balance.str_hash64("head")))
    u_all = uniform(9, h, np.uint64(balance.str_hash64("head")))
    assert (u_part == u_all[part]).all()
    keep_other_seed, _ = concept_keep(h, rows, ents, entries, 100, "keep", seed=10)
    assert not (keep_other_seed == keep).all()


def test_lang_caps_and_shares():
    langs = np.array(["en"] * 600 + ["de"] * 300 + ["fr"] * 100, dtype=object)
    h = uid_hash64(pa.array(_uids(len(langs))))
    keep = lang_keep(langs, h, {"en": 200}, {}, seed=0)
    assert keep[langs == "en"].sum() == 200 and keep[langs != "en"].all()
    keep = lang_keep(langs, h, {}, {"en": 0.5, "de": 0.25}, seed=0)
    n = keep.sum()
    assert keep[langs == "fr"].sum() == 100  # the rest (fr, 25 %) limits the set: 400 rows
    assert n == 400 and keep[langs == "en"].sum() == 200 and keep[langs == "de"].sum() == 100
    keep = lang_keep(langs, h, {}, {"en": 0.5, "de": 0.5}, seed=0)
    assert keep[langs == "fr"].sum() == 0 and keep[langs == "en"].sum() == keep[langs == "de"].sum() == 300
    perm = np.random.default_rng(1).permutation(len(langs))
    keep_p = lang_keep(langs[perm], h[perm], {"en": 123}, {"en": 0.5, "de": 0.25}, seed=0)
    assert (keep_p == lang_keep(langs, h, {"en": 123}, {"en": 0.5, "de": 0.25}, seed=0)[perm]).all()
    with pytest.raises(ValueError, match="sum"):
        lang_keep(langs, h, {}, {"en": 0.9, "de": 0.9}, seed=0)
