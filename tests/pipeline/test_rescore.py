"""The bootstrap recipe without downloadable weights: build without CLIP, then rebuild the same output with a
scorer; only scoring and the global phases run again (no row is fetched twice), and a new scorer rescores."""
from __future__ import annotations

from pathlib import Path

import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from curate.schema import COL, Status
from pipelines.build_shards import RunError, run
from tests.pipeline.helpers import run_config, served_corpus, tiny_clip_config

DEMO_CKPT = Path(__file__).resolve().parents[2] / "pipelines" / "demo_assets" / "clip_demo"


def _ledger(out: Path):
    return pq.read_table(out / "metadata" / "ledger")


def test_rebuild_with_a_scorer_reuses_downloads_and_a_new_scorer_rescores(tmp_path, capsys):
    with served_corpus(tmp_path, n=60, seed=3) as (srv, path, _):
        out = tmp_path / "out"
        run(run_config(path, out))  # round 0: no CLIP
        assert pc.sum(pc.is_valid(_ledger(out)[COL.CLIP_SCORE])).as_py() == 0
        fetched = srv.hits

        demo = {"clip.model": str(DEMO_CKPT / "open_clip_config.json"), "clip.pretrained": str(DEMO_CKPT),
                "clip.keep_top_fraction": 0.5}
        run(run_config(path, out, clip_model=DEMO_CKPT / "open_clip_config.json", **demo))
        assert srv.hits == fetched  # nothing fetched again: only scoring and phases B/C ran
        led = _ledger(out)
        kept = led.filter(pc.equal(led[COL.STATUS], Status.KEPT))
        assert kept.num_rows > 0 and pc.all(pc.is_valid(kept[COL.CLIP_SCORE])).as_py()
        assert pc.sum(pc.equal(led[COL.STATUS], Status.LOW_CLIP_SCORE)).as_py() > 0
        assert set(kept[COL.CLIP_PRETRAINED].to_pylist()) == {str(DEMO_CKPT)}

        capsys.readouterr()
        run(run_config(path, out, clip_model=tiny_clip_config(tmp_path), **{"clip.keep_top_fraction": 0.5}))
        assert srv.hits == fetched
        assert "this run asks for" in capsys.readouterr().err  # the old scores were made by another scorer
        kept = _ledger(out).filter(pc.equal(_ledger(out)[COL.STATUS], Status.KEPT))
        assert set(kept[COL.CLIP_MODEL].to_pylist()) == {str(tmp_path / "tiny-clip.json")}

        with pytest.raises(RunError, match="differs in: image.size"):  # phase-A settings still may not change
            run(run_config(path, out, **{"image.size": 32}))
