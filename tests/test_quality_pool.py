"""The curation-quality benchmark's labelled pool (tests/bench/quality_pool.py) and its decision scoring
(tests/bench/bench_quality.py): seeded, the planted proportions hold, copies are near duplicates of their
original while distinct crops are not, held-out crops are new images, and the scoring counts right."""
from __future__ import annotations

import io
import json
from collections import Counter

import pytest
from PIL import Image

from curate.train.data import iter_tar_samples, resolve_shards
from tests.bench import alttext, bench_quality, quality_pool as qp

N = 360


@pytest.fixture(scope="module")
def pool():
    return qp.make_pool(N, seed=3)


def _phash(data: bytes) -> int:
    import imagehash
    return int(str(imagehash.phash(Image.open(io.BytesIO(data)))), 16)


def test_pool_is_seeded(pool):
    rows, files = pool
    rows2, files2 = qp.make_pool(N, seed=3)
    assert rows2 == rows and files2 == files
    rows3, _ = qp.make_pool(N, seed=4)
    assert [r.caption for r in rows3] != [r.caption for r in rows]


def test_planted_proportions_and_labels(pool):
    rows, files = pool
    assert len(rows) == len(files) == N and {r.path for r in rows} == set(files)
    roles = Counter(r.role for r in rows)
    assert roles["copy"] == round(0.2 * N)
    assert 0.28 <= sum(r.mismatch for r in rows) / N <= 0.42
    assert 0.09 <= sum(r.lang != "en" for r in rows) / N <= 0.21
    assert {r.lang for r in rows} <= set(alttext.LANGS) and len({r.lang for r in rows}) >= 8
    assert Counter(r.subject for r in rows).keys() == qp.SUBJECTS.keys()
    for r in rows:
        assert r.mismatch == (r.caption_subject != r.subject) and r.caption
    groups = Counter(r.group for r in rows if r.group >= 0)
    assert max(groups.values()) <= 4 and min(groups.values()) >= 2
    originals = Counter(r.group for r in rows if r.role == "original")
    assert set(originals) == set(groups) and set(originals.values()) == {1}
    assert all(r.group < 0 for r in rows if r.role == "single")


def test_sizes_are_web_thumbnails(pool):
    rows, files = pool
    sides = sorted(max(Image.open(io.BytesIO(files[r.path])).size) for r in rows)
    assert sides[0] >= qp.MIN_COPY_PX - 1 and sides[-1] <= qp.SIDE_PX[1]
    assert 64 <= sides[len(sides) // 2] <= 96  # the median image is a 64-96 px thumbnail


def test_copies_are_near_duplicates_and_distinct_crops_are_not(pool):
    rows, files = pool
    h = {r.path: _phash(files[r.path]) for r in rows}
    orig = {r.group: h[r.path] for r in rows if r.role == "original"}
    d_copy = [bin(h[r.path] ^ orig[r.group]).count("1") for r in rows if r.role == "copy"]
    assert sum(d <= 8 for d in d_copy) / len(d_copy) >= 0.8  # 2-6% crops move pHash most; see _within_k
    distinct = [h[r.path] for r in rows if r.role != "copy"]
    close = sum(bin(a ^ b).count("1") <= 8 for i, a in enumerate(distinct) for b in distinct[i + 1:])
    assert close <= len(distinct) // 50  # crops of one photo rarely hash alike
    assert len(set(files.values())) == N  # no two rows share bytes


def test_heldout_crops_are_new_and_seeded(pool):
    _, files = pool
    held = qp.heldout_crops(3, seed=3)
    assert held == qp.heldout_crops(3, seed=3)
    assert Counter(s for s, _ in held) == dict.fromkeys(qp.SUBJECTS, 3)
    assert not {b for _, b in held} & set(files.values())
    assert len(qp.class_names()) == len(qp.SUBJECTS)


def test_oracle_keeps_clean_pairs_once_per_group(pool):
    rows, _ = pool
    keep = qp.oracle_mask(rows)
    kept = [r for r, k in zip(rows, keep) if k]
    assert all(r.lang == "en" and not r.mismatch for r in kept)
    assert max(Counter(r.group for r in kept if r.group >= 0).values()) == 1
    clean_singles = [r for r in rows if r.role == "single" and r.lang == "en" and not r.mismatch]
    assert set(clean_singles) <= set(kept)


def test_write_shards_reads_back_through_curate_train(tmp_path, pool):
    rows, files = pool
    samples = [(files[r.path], r.caption, i) for i, r in enumerate(rows[:25])]
    qp.write_shards(tmp_path / "set", samples, per_shard=10)
    urls, n = resolve_shards(str(tmp_path / "set"))
    assert n == 25 and len(urls) == 3
    got = [s for u in urls for s in iter_tar_samples(u, on_error=pytest.fail)]
    assert [(s["jpg"], s["txt"].decode(), json.loads(s["json"])["label"]) for s in got] == samples


def _led(rows, statuses, reasons, phash=0):
    return [{"uid": f"{i:032x}", "status": st, "reason": rs, "phash": phash, "lang": "en", "label": r}
            for i, (r, st, rs) in enumerate(zip(rows, statuses, reasons))]


def test_dup_metrics_counts_groups_singles_and_pairs():
    mk = lambda i, g, role: qp.PoolRow(i, f"/q/{i}", "cat", "cat", "cat", "en", False, g, role, "")  # noqa: E731
    rows = [mk(0, 7, "original"), mk(1, 7, "copy"), mk(2, 9, "original"), mk(3, 9, "copy"), mk(4, -1, "single"),
            mk(5, -1, "single")]
    led = _led(rows, ["kept", "duplicate", "duplicate", "duplicate", "duplicate", "kept"],
               [None] + [f"duplicate:duplicate_of:{u:032x}" for u in (0, 5, 5, 5)] + [None])
    m = bench_quality.dup_metrics(led)
    # group 7 keeps exactly one; group 9 keeps none (1 correct drop of 2); the single row 4 is a wrong drop
    assert m["groups_keep_exactly_one"] == 0.5 and m["groups_keep_none"] == 0.5
    assert m["precision"] == round(2 / 4, 4) and m["recall"] == 1.0
    assert m["no_copy_dropped"] == 0.5 and m["pairwise_precision"] == 0.25
    assert m["copies_within_k_of_original"] == 1.0
    assert m["reasons"] == {"duplicate:duplicate_of:<uid>": 4}
