"""Phase A on single units without Ray: prefetch dedup of precomputed hashes, --retry-failed."""
from __future__ import annotations

import pyarrow as pa
import pyarrow.compute  # noqa: F401 (pa.compute)
import pyarrow.parquet as pq

from curate import stage_io
from curate.config import load_config
from curate.democorpus import CorpusServer, make_corpus
from curate.inputs.plan import plan_units
from curate.schema import COL
from curate.unit import process_unit, retry_unit


def _cfg(inp, out, **over):
    o = {"input.paths": [str(inp)], "output": str(out), "download.allow_private_networks": True,
         "download.timeout": 2, "download.retries": 0, "image.size": 64, "language.enabled": False,
         "clip.enabled": False}
    o.update(over)
    return load_config(None, o)


def test_coyo_precomputed_hash_duplicates_are_never_fetched(tmp_path):
    with CorpusServer() as srv:
        rows, files = make_corpus(30, 3, srv.base_url)
        srv.set_files(files)
        img = [r for r in rows if r.url.startswith(srv.base_url + "/img/")][:6]
        phash = ["ab12", "ab12", "cd34", None, "cd34", "ef56"]  # rows 1 and 4 repeat an earlier hash
        inp = tmp_path / "coyo.parquet"
        pq.write_table(pa.table({"url": [r.url for r in img], "text": [r.caption for r in img],
                                 "image_phash": phash}), inp)
        cfg = _cfg(inp, tmp_path / "out", **{"input.preset": "coyo"})
        (unit,) = plan_units(cfg.input, cfg.output)
        process_unit(unit.unit_id, cfg)
        led = stage_io.read_unit_ledger(cfg.output, unit.unit_id).to_pylist()
        assert [r[COL.STATUS] for r in led].count("duplicate_prefetch") == 2
        assert led[1][COL.STATUS] == led[4][COL.STATUS] == "duplicate_prefetch"
        assert led[1][COL.HTTP_STATUS] is None
        fetched = {img[i].url[len(srv.base_url):] for i in (0, 2, 3, 5)}
        # images: exactly the rows not dropped before fetch; besides them only the origin's policy files
        # (this unit runs without the driver's pre-pass, so its opt-out stage reads them itself)
        assert set(srv.path_hits) - {"/robots.txt", "/.well-known/tdmrep.json"} == fetched


def test_retry_failed_refetches_only_retryable_rows(tmp_path):
    with CorpusServer() as srv:
        rows, files = make_corpus(40, 4, srv.base_url)
        srv.set_files(files)
        inp = tmp_path / "urls.parquet"
        pq.write_table(pa.table({"url": [r.url for r in rows], "caption": [r.caption for r in rows]}), inp)
        paths = [r.url[len(srv.base_url):] for r in rows if r.url.startswith(srv.base_url + "/img/")]
        flaky = set(paths[:3])
        srv.failing.update(flaky)
        cfg = _cfg(inp, tmp_path / "out")
        (unit,) = plan_units(cfg.input, cfg.output)
        process_unit(unit.unit_id, cfg)
        before = stage_io.read_unit_ledger(cfg.output, unit.unit_id).to_pylist()
        failed = [r for r in before if r[COL.REASON] == "download_error:http_503"]
        assert len(failed) >= 3
        n_images = len(stage_io.read_unit_images(cfg.output, unit.unit_id))

        srv.failing.clear()
        srv.path_hits.clear()
        assert retry_unit(unit.unit_id, cfg) is not None
        after = stage_io.read_unit_ledger(cfg.output, unit.unit_id).to_pylist()
        assert len(after) == len(before)
        assert set(srv.path_hits) == {r[COL.URL][len(srv.base_url):] for r in failed}  # nothing else refetched
        for b, a in zip(before, after):
            assert a[COL.UID] == b[COL.UID]
            if b in failed:
                assert a[COL.STATUS] == "ok"
            else:
                assert a == b
        assert len(stage_io.read_unit_images(cfg.output, unit.unit_id)) == n_images + len(failed)
        assert retry_unit(unit.unit_id, cfg) is None  # nothing retryable is left


def test_scores_written_inside_the_unit_match_the_scorer(tmp_path):
    import json

    import numpy as np

    from curate.clip.scorer import score_table
    from tests.pipeline.helpers import TINY_CLIP

    model = tmp_path / "tiny.json"
    model.write_text(json.dumps(TINY_CLIP))
    with CorpusServer() as srv:
        rows, files = make_corpus(30, 5, srv.base_url)
        srv.set_files(files)
        inp = tmp_path / "urls.parquet"
        pq.write_table(pa.table({"url": [r.url for r in rows], "caption": [r.caption for r in rows]}), inp)
        cfg = _cfg(inp, tmp_path / "out", **{"clip.enabled": True, "clip.model": str(model)})
        (unit,) = plan_units(cfg.input, cfg.output)
        stats = process_unit(unit.unit_id, cfg, score=True)
    ledger = stage_io.read_unit_ledger(cfg.output, unit.unit_id)
    ok = ledger.filter(pa.compute.equal(ledger[COL.STATUS], "ok"))
    scores = pq.read_table(stage_io.unit_paths(cfg.output, unit.unit_id)["scores"])
    assert stats["clip_scored"] == ok.num_rows == scores.num_rows > 0
    assert scores[COL.UID].to_pylist() == ok[COL.UID].to_pylist()  # ledger order
    images = stage_io.read_unit_images(cfg.output, unit.unit_id)
    direct = score_table(pa.table({COL.UID: ok[COL.UID], COL.IMAGE: [images[u] for u in ok[COL.UID].to_pylist()],
                                   COL.CAPTION_CLEAN: ok[COL.CAPTION_CLEAN]}), cfg.clip)
    np.testing.assert_allclose(scores[COL.CLIP_SCORE].to_numpy(), direct[COL.CLIP_SCORE].to_numpy(), atol=1e-5)
    assert set(scores[COL.CLIP_MODEL].to_pylist()) == {str(model)}
