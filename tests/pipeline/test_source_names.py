"""source_file in every shard's KEY.json and in the ledger is relative to the input root; the manifest keeps
the full input paths (issue 12). Phase A on single units, phases B and C in-process, without Ray."""
from __future__ import annotations

import json
import tarfile

import pyarrow.parquet as pq

from curate.democorpus import CorpusServer
from curate.inputs.plan import plan_units
from curate.schema import COL
from curate.unit import process_unit
from pipelines.select_write import phase_b_c
from tests.pipeline.helpers import run_config, write_corpus


def test_key_json_and_ledger_carry_the_relative_source_file(tmp_path):
    with CorpusServer() as srv:
        (tmp_path / "lists" / "part").mkdir(parents=True)
        inp, _, files = write_corpus(tmp_path / "lists" / "part", srv.base_url, 40)
        srv.set_files(files)
        cfg = run_config(tmp_path / "lists", tmp_path / "out", **{"language.enabled": False})
        units = plan_units(cfg.input, cfg.output)
        for u in units:
            process_unit(u.unit_id, cfg)
        manifest = phase_b_c(cfg, units)
    assert [i["path"] for i in manifest["inputs"]] == [str(inp)]  # the full path stays in the manifest
    ledger = pq.read_table(tmp_path / "out" / "metadata" / "ledger")
    assert set(ledger[COL.SOURCE_FILE].to_pylist()) == {"part/urls.parquet"}
    shards = sorted((tmp_path / "out" / "shards").glob("*.tar"))
    metas = []
    for shard in shards:
        with tarfile.open(shard) as tar:
            metas += [json.load(tar.extractfile(m)) for m in tar.getmembers() if m.name.endswith(".json")]
    assert metas and {m[COL.SOURCE_FILE] for m in metas} == {"part/urls.parquet"}
    assert str(tmp_path) not in json.dumps(metas)  # no local path leaks into the shards
