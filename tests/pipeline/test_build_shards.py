"""End-to-end runs of pipelines.build_shards on local Ray against a real HTTP server on 127.0.0.1."""
from __future__ import annotations

import json

import duckdb
import pyarrow.parquet as pq
import pytest
import webdataset as wds

from curate.schema import COL, STATUSES
from pipelines.build_shards import main, run
from tests.pipeline.helpers import run_config, served_corpus, tiny_clip_config, tree_digest


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("corpus")
    with served_corpus(tmp, n=90) as (srv, path, rows):
        yield srv, path, rows, tmp


@pytest.fixture(scope="module")
def first_run(served):
    srv, path, rows, tmp = served
    out = tmp / "run1"
    cfg = run_config(path, out, clip_model=tiny_clip_config(tmp))
    before = srv.hits
    manifest = run(cfg)
    return {"out": out, "manifest": manifest, "cfg": cfg, "hits": srv.hits - before}


def test_every_input_row_is_one_ledger_row(served, first_run):
    _, _, rows, _ = served
    ledger = pq.read_table(first_run["out"] / "metadata" / "ledger").to_pandas()
    assert len(ledger) == len(rows)
    assert sorted(ledger[COL.ROW_INDEX]) == list(range(len(rows)))
    assert set(ledger[COL.STATUS]) <= set(STATUSES)
    m = first_run["manifest"]
    assert sum(m["counts"].values()) == m["total_rows"] == len(rows)


def test_drop_reasons_match_what_the_rows_are(served, first_run):
    _, _, rows, _ = served
    ledger = pq.read_table(first_run["out"] / "metadata" / "ledger").to_pandas().sort_values(COL.ROW_INDEX)
    by_kind = {}
    for r, st in zip(rows, ledger[COL.STATUS]):
        by_kind.setdefault(r.kind, []).append(st)
    assert set(by_kind["foreign"]) == {"lang"}
    assert set(by_kind["dup_url"]) == {"duplicate_url"}
    assert set(by_kind["broken"]) <= {"invalid_url", "download_error", "decode_error"}
    assert "kept" in by_kind["match"]
    kept = ledger[ledger[COL.STATUS] == "kept"]
    assert kept[COL.SHA256].is_unique  # identical bytes are written once, whichever copy represents them
    assert (ledger[COL.REASON] == "duplicate:sha256").sum() >= len(by_kind["exact_dup"])


def test_rows_dropped_before_fetch_were_never_requested(served, first_run):
    _, _, rows, _ = served
    ledger = pq.read_table(first_run["out"] / "metadata" / "ledger").to_pandas()
    prefetch = ledger[ledger[COL.STATUS].isin(["lang", "caption_rule", "duplicate_url", "invalid_url"])]
    fetched = ledger[ledger[COL.HTTP_STATUS].notna()]
    assert len(prefetch) > 0
    assert prefetch[COL.HTTP_STATUS].isna().all()
    # the server saw exactly one request per fetched row (no retries configured), plus one robots.txt and
    # one tdmrep.json for the run's one origin (the opt-out pre-pass): nothing else went out
    assert first_run["hits"] == len(fetched) + 2


def test_shards_are_read_by_webdataset_and_duckdb(first_run):
    out, m = first_run["out"], first_run["manifest"]
    tars = sorted(str(p) for p in (out / "shards").glob("*.tar"))
    n = sum(1 for _ in wds.WebDataset(tars, shardshuffle=False).decode("pil").to_tuple("jpg", "txt"))
    assert n == m["written_samples"] > 0
    con = duckdb.connect()
    got = con.execute(f"select count(*) from read_parquet('{out}/metadata/samples/*.parquet')").fetchone()[0]
    assert got == n
    sizes = json.loads((out / "shards" / "sizes.json").read_text())
    assert sum(sizes.values()) == n


def test_rerun_fetches_nothing_and_is_byte_identical(served, first_run):
    srv, _, _, _ = served
    digest = tree_digest(first_run["out"])
    before = srv.hits
    run(first_run["cfg"])
    assert srv.hits == before
    assert tree_digest(first_run["out"]) == digest


def test_cli_rejects_unknown_config_key_and_bad_input(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text("download:\n  timout: 3\n")
    assert main(["--config", str(bad), "--output", str(tmp_path / "o")]) == 2
    assert "timout" in capsys.readouterr().err
    assert main(["--input", str(tmp_path / "missing*.parquet"), "--output", str(tmp_path / "o")]) == 2
    assert "missing" in capsys.readouterr().err


def test_a_model_that_does_not_load_fails_before_the_output_changes(served, first_run):
    """The CLIP check runs in a child process while Ray starts; its error (load_clip's own message) comes
    before --overwrite deletes anything or a config is saved."""
    from curate.clip.model import ClipLoadError, load_clip

    _, path, _, _ = served
    with pytest.raises(ClipLoadError) as direct:
        load_clip("ViT-B-33")
    out = first_run["out"]
    before = (tree_digest(out, ("shards", "metadata", "stage")), (out / "config.yaml").read_bytes())
    with pytest.raises(ClipLoadError) as via_run:
        run(run_config(path, out, clip_model="ViT-B-33", overwrite=True))
    assert str(via_run.value) == str(direct.value)
    assert (tree_digest(out, ("shards", "metadata", "stage")), (out / "config.yaml").read_bytes()) == before
