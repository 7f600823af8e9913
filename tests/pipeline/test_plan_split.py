"""Small inputs are cut so every CPU has UNITS_PER_CPU (4) units; a saved plan is reused on resume."""
from __future__ import annotations

import json

import pyarrow as pa
import pyarrow.parquet as pq

from curate.config import InputConfig
from curate.inputs.plan import MIN_UNIT_ROWS, UNITS_PER_CPU, load_plan, plan_units, unit_rows
from curate.inputs.rows import read_unit
from curate.schema import COL


def _urls(path, n: int, start: int = 0, scheme: str = "http"):
    pq.write_table(pa.table({"url": [f"{scheme}://img.example/{i}.jpg" for i in range(start, start + n)],
                             "caption": [f"a photo {i}" for i in range(start, start + n)]}), path)
    return path


def _covered(output, units) -> list[tuple[str, int]]:
    """(source_file, row_index) of every planned row, unit by unit, read back from the unit files."""
    out = []
    for u in units:
        t = read_unit(str(output), u.unit_id)
        assert t.num_rows == u.num_rows
        out += list(zip(t[COL.SOURCE_FILE].to_pylist(), t[COL.ROW_INDEX].to_pylist()))
    return out


def test_unit_rows_gives_each_cpu_four_units_with_a_floor():
    assert UNITS_PER_CPU == 4
    assert unit_rows(6_000, 10_000, 2) == 750
    assert unit_rows(1_000_000, 10_000, 2) == 10_000         # a large input keeps unit_size
    assert unit_rows(600, 10_000, 8) == MIN_UNIT_ROWS         # never below the floor ...
    assert unit_rows(6_000, 100, 2) == 100                    # ... unless the user asked for smaller units
    assert unit_rows(6_000, 10_000, None) == 10_000           # no CPU count: plain unit_size


def test_six_thousand_rows_on_two_cpus_make_four_units_and_resume_keeps_the_plan(tmp_path):
    cfg = InputConfig(paths=(str(_urls(tmp_path / "urls.parquet", 6_000)),))
    out = tmp_path / "out"
    units = plan_units(cfg, str(out), cpus=2)
    assert len(units) >= 4
    assert [u.unit_id for u in units] == list(range(len(units)))
    assert max(u.num_rows for u in units) - min(u.num_rows for u in units) <= 1  # equal parts
    rows = _covered(out, units)
    assert [r for _, r in rows] == list(range(6_000))  # every row once, in order
    plan = load_plan(str(out))
    assert plan["unit_rows"] == 750 and plan["key"]["unit_size"] == 10_000
    before = (out / "_input" / "plan.json").read_bytes()
    for cpus in (8, 1, None):  # a resume on another cluster size reuses the saved plan as it is
        assert plan_units(cfg, str(out), cpus=cpus) == units
    assert (out / "_input" / "plan.json").read_bytes() == before


def test_split_keeps_units_within_their_files(tmp_path):
    a = _urls(tmp_path / "a.parquet", 3_000)
    b = _urls(tmp_path / "b.parquet", 700, start=3_000)
    cfg = InputConfig(paths=(str(a), str(b)), unit_size=2_000)
    # 3,700 rows / (4 x 2 CPUs) = 463, raised to the 500-row floor: a's units of 2,000 + 1,000 are cut in
    # 4 + 2, and b's 700 rows in two equal parts, never across the two files
    units = plan_units(cfg, str(tmp_path / "out"), cpus=2)
    assert [(u.source_file.rsplit("/", 1)[1], u.start_row, u.num_rows) for u in units] == \
        [("a.parquet", 0, 500), ("a.parquet", 500, 500), ("a.parquet", 1000, 500), ("a.parquet", 1500, 500),
         ("a.parquet", 2000, 500), ("a.parquet", 2500, 500), ("b.parquet", 0, 350), ("b.parquet", 350, 350)]
    rows = _covered(tmp_path / "out", units)
    assert rows == [("a.parquet", i) for i in range(3_000)] + [("b.parquet", i) for i in range(700)]


def test_a_run_on_two_cpus_cuts_six_thousand_rows_into_units_and_its_resume_reuses_them(tmp_path):
    """Through build_shards.run with local Ray: the CPU count comes from the cluster. The URLs are
    invalid (ftp), so phase A fetches nothing and the test stays quick."""
    from tests.pipeline.helpers import run_config
    from pipelines.build_shards import run

    inp = _urls(tmp_path / "urls.parquet", 6_000, scheme="ftp")
    out = tmp_path / "run"
    over = {"input.unit_size": 10_000, "language.enabled": False, "dedup.enabled": False, "num_cpus": 2}
    run(run_config(inp, out, **over))
    plan = json.loads((out / "_input" / "plan.json").read_text())
    assert len(plan["units"]) >= 4 and plan["cpus"] == 2
    stats = sorted(p.name for p in (out / "stage").glob("*_stats.json"))
    assert len(stats) == len(plan["units"])
    timings = json.loads((out / "stage" / "timings.json").read_text())
    assert {"ray_start", "plan", "phase_a", "phase_c_write", "ray_teardown"} <= set(timings["run"])
    assert timings["units_timed"] == len(plan["units"]) and "download" in timings["units"]

    run(run_config(inp, out, **{**over, "num_cpus": 1}))  # resume on one CPU: same plan, nothing redone
    assert json.loads((out / "_input" / "plan.json").read_text()) == plan
    assert json.loads((out / "stage" / "timings.json").read_text())["units_timed"] == 0
