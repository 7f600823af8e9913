"""Tests for curate.inputs with real files of every format: inputs, presets, errors, units, uids, duplicates."""
import csv
import gzip
import hashlib
import io
import json
import os

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from curate.config import InputConfig
from curate.inputs import InputError
from curate.inputs.files import resolve_inputs
from curate.inputs.plan import UnitSpec, load_plan, plan_units
from curate.inputs.rows import make_uid, read_unit
from curate.schema import COL, Status, conform

ROWS = [
    {"url": "http://example.com/0.jpg", "caption": "a cat, sitting"},
    {"url": "http://example.com/1.jpg", "caption": 'a "quoted" dog'},
    {"url": "http://example.com/caf\u00e9 1.jpg", "caption": "caf\u00e9 \u65e5\u672c"},
    {"url": "https://example.org/3.png?x=1&y=2", "caption": ""},
    {"url": "http://example.com/0.jpg", "caption": "same url again"},
]


def write(path, rows, fmt=None, gz=False):
    """Writes rows (list of dicts) as the format named by fmt or the path's extension."""
    fmt = fmt or os.path.splitext(str(path).removesuffix(".gz"))[1].lstrip(".")
    buf = io.BytesIO()
    if fmt == "parquet":
        pq.write_table(pa.Table.from_pylist(rows), buf)
    elif fmt in ("csv", "tsv"):
        text = io.StringIO()
        w = csv.DictWriter(text, fieldnames=list(rows[0]), delimiter="," if fmt == "csv" else "\t")
        w.writeheader()
        w.writerows(rows)
        buf.write(text.getvalue().encode())
    elif fmt in ("jsonl", "json"):
        buf.write("".join(json.dumps(r) + "\n" for r in rows).encode())
    elif fmt == "txt":
        buf.write("".join(r["url"] + "\n" for r in rows).encode())
    data = buf.getvalue()
    path.write_bytes(gzip.compress(data) if gz else data)
    return path


def cfg(paths, **kw):
    return InputConfig(paths=tuple(str(p) for p in ([paths] if not isinstance(paths, list) else paths)), **kw)


def read_all(output, units):
    return pa.concat_tables([read_unit(str(output), u.unit_id) for u in units], promote_options="default")


@pytest.mark.parametrize("fmt", ["parquet", "csv", "tsv", "jsonl", "json", "txt"])
@pytest.mark.parametrize("gz", [False, True])
def test_every_format(tmp_path, fmt, gz):
    src = write(tmp_path / f"list.{fmt}{'.gz' if gz else ''}", ROWS, gz=gz)
    units = plan_units(cfg(src), str(tmp_path / "out"))
    t = read_all(tmp_path / "out", units)
    assert t[COL.URL].to_pylist() == [r["url"] for r in ROWS]
    captions = [None] * len(ROWS) if fmt == "txt" else [r["caption"] for r in ROWS]
    assert t[COL.CAPTION].to_pylist() == captions
    assert t[COL.ROW_INDEX].to_pylist() == list(range(len(ROWS)))
    assert set(t[COL.SOURCE_FILE].to_pylist()) == {src.name}  # relative to the input root
    assert t[COL.STATUS].to_pylist() == [Status.OK] * len(ROWS)  # space + non-ASCII URL is fine
    assert t[COL.DUP_URL].to_pylist() == [False, False, False, False, True]


def test_forced_format(tmp_path):
    src = write(tmp_path / "urls.list", ROWS, fmt="txt")
    with pytest.raises(InputError, match="urls.list.*file_format"):
        resolve_inputs([str(src)])
    units = plan_units(cfg(src, file_format="txt"), str(tmp_path / "out"))
    assert read_all(tmp_path / "out", units)[COL.URL].to_pylist() == [r["url"] for r in ROWS]


def test_csv_quoted_newlines_and_blank_lines(tmp_path):
    rows = [{"url": "http://a.com/1.jpg", "caption": "line one\nline two"}, {"url": "http://a.com/2.jpg",
                                                                             "caption": "x"}]
    units = plan_units(cfg(write(tmp_path / "a.csv", rows)), str(tmp_path / "o1"))
    assert read_all(tmp_path / "o1", units)[COL.CAPTION].to_pylist() == ["line one\nline two", "x"]
    (tmp_path / "b.txt").write_text("\ufeffhttp://a.com/1.jpg\n\n   \nhttp://a.com/2.jpg\n")
    units = plan_units(cfg(tmp_path / "b.txt"), str(tmp_path / "o2"))
    assert read_all(tmp_path / "o2", units)[COL.URL].to_pylist() == ["http://a.com/1.jpg", "http://a.com/2.jpg"]


def test_folder_and_glob(tmp_path):
    d = tmp_path / "in"
    (d / "sub").mkdir(parents=True)
    a = write(d / "b.parquet", ROWS[:2])
    b = write(d / "a.csv.gz", ROWS[2:4], gz=True)
    c = write(d / "sub" / "c.jsonl", ROWS[4:])
    (d / "notes.md").write_text("not a list")
    (d / "_SUCCESS").write_text("")
    write(d / ".hidden.csv", ROWS)
    assert resolve_inputs([str(d)]) == sorted(map(str, [a, b, c]))
    assert resolve_inputs([str(d / "*.parquet")]) == [str(a)]
    assert resolve_inputs([str(d / "**" / "*.jsonl"), str(a), str(d / "*.parquet")]) == sorted(map(str, [a, c]))
    with pytest.raises(InputError, match=r"no input files match '.*\*\.tsv'"):
        resolve_inputs([str(d / "*.tsv")])
    with pytest.raises(InputError, match="input not found: '.*missing.csv'"):
        resolve_inputs([str(d / "missing.csv")])
    units = plan_units(cfg(d), str(tmp_path / "out"))
    assert [u.source_file for u in units] == sorted(map(str, [a, b, c]))  # global sorted-file order
    assert read_all(tmp_path / "out", units).num_rows == len(ROWS)


def test_laion_preset_keep_columns(tmp_path):
    rows = [{"URL": r["url"], "TEXT": r["caption"], "WIDTH": 640 + i, "HEIGHT": 480, "similarity": 0.3,
             "NSFW": "UNLIKELY"} for i, r in enumerate(ROWS)]
    src = write(tmp_path / "laion.parquet", rows)
    units = plan_units(cfg(src, preset="laion", keep_columns=("preset",)), str(tmp_path / "out"))
    t = read_unit(str(tmp_path / "out"), units[0].unit_id)
    assert t[COL.URL].to_pylist() == [r["url"] for r in ROWS]
    assert t[COL.CAPTION].to_pylist() == [r["caption"] for r in ROWS]
    assert t["src_WIDTH"].to_pylist() == [640, 641, 642, 643, 644]  # native type kept from parquet
    assert t["src_NSFW"].to_pylist()[0] == "UNLIKELY"
    assert t["src_LICENSE"].null_count == len(ROWS)  # a preset keep column the file lacks: null
    assert COL.INPUT_PHASH not in t.column_names
    ledger = conform(t, "ledger")  # transient columns go, src_* stay, types match the ledger
    assert "src_WIDTH" in ledger.column_names and COL.DUP_URL not in ledger.column_names


def test_laion_lowercase_columns(tmp_path):
    src = write(tmp_path / "l.parquet", [{"url": "http://a.com/x.jpg", "text": "hi"}])
    units = plan_units(cfg(src, preset="laion"), str(tmp_path / "out"))
    assert read_unit(str(tmp_path / "out"), 0)[COL.CAPTION].to_pylist() == ["hi"] and len(units) == 1


def test_coyo_preset_phash_duplicates(tmp_path):
    rows = [{"id": i, "url": f"http://a.com/{i}.jpg", "text": f"t{i}", "image_phash": h}
            for i, h in enumerate(["ff00", "aa11", "ff00", None, "aa11", None])]
    a = write(tmp_path / "a.parquet", rows[:3])
    b = write(tmp_path / "b.csv", rows[3:])  # empty phash in CSV reads as "" -> still a value
    units = plan_units(cfg([a, b], preset="coyo", unit_size=2), str(tmp_path / "out"))
    t = read_all(tmp_path / "out", units)
    assert t[COL.INPUT_PHASH].to_pylist() == ["ff00", "aa11", "ff00", "", "aa11", ""]
    assert t[COL.DUP_PHASH].to_pylist() == [False, False, True, False, True, True]
    assert t[COL.DUP_URL].to_pylist() == [False] * 6


def test_coyo_null_phash_not_duplicate(tmp_path):
    rows = [{"url": f"http://a.com/{i}.jpg", "text": "t", "image_phash": None} for i in range(3)]
    units = plan_units(cfg(write(tmp_path / "a.jsonl", rows), preset="coyo"), str(tmp_path / "out"))
    assert read_all(tmp_path / "out", units)[COL.DUP_PHASH].to_pylist() == [False] * 3


def test_datacomp_preset(tmp_path):
    rows = [{"uid": f"{i:032x}", "url": f"http://a.com/{i}.jpg", "text": f"c{i}", "sha256": "ab"}
            for i in range(3)]
    src = write(tmp_path / "dc.parquet", rows)
    units = plan_units(cfg(src, preset="datacomp", keep_columns=("uid",)), str(tmp_path / "out"))
    t = read_all(tmp_path / "out", units)
    assert t["src_uid"].to_pylist() == [r["uid"] for r in rows]
    assert t[COL.UID].to_pylist() == [make_uid(r["url"], r["text"]) for r in rows]


def test_explicit_columns(tmp_path):
    rows = [{"link": "http://a.com/1.jpg", "alt": "one", "score": 0.5}]
    src = write(tmp_path / "x.tsv", rows)
    units = plan_units(cfg(src, url_col="link", caption_col="alt", keep_columns=("score",)), str(tmp_path / "out"))
    t = read_unit(str(tmp_path / "out"), units[0].unit_id)
    assert (t[COL.URL][0].as_py(), t[COL.CAPTION][0].as_py(), t["src_score"][0].as_py()) == \
        ("http://a.com/1.jpg", "one", "0.5")  # text formats carry extras as text


@pytest.mark.parametrize("name", ["l.parquet", "l.csv", "l.jsonl.gz"])
def test_missing_column_error(tmp_path, name):
    src = write(tmp_path / name, [{"link": "http://a.com/1.jpg", "alt": "x", "w": 1}], gz=name.endswith(".gz"))
    with pytest.raises(InputError) as e:
        plan_units(cfg(src, preset="laion"), str(tmp_path / "out"))
    msg = str(e.value)
    assert str(src) in msg and "'URL'" in msg and "'TEXT'" in msg
    assert "columns present: link, alt, w" in msg


def test_missing_explicit_keep_column(tmp_path):
    src = write(tmp_path / "a.parquet", ROWS)
    msg = r"a\.parquet: missing column 'nope' \(keep column\).*present: url, caption"
    with pytest.raises(InputError, match=msg):
        plan_units(cfg(src, keep_columns=("nope",)), str(tmp_path / "out"))


def test_default_preset_caption_optional(tmp_path):
    src = write(tmp_path / "a.csv", [{"url": "http://a.com/1.jpg"}])
    plan_units(cfg(src), str(tmp_path / "out"))
    assert read_unit(str(tmp_path / "out"), 0)[COL.CAPTION].to_pylist() == [None]
    with pytest.raises(InputError, match="'alt' \\(caption column\\)"):
        plan_units(cfg(src, caption_col="alt"), str(tmp_path / "out2"))


@pytest.mark.parametrize("name, data", [
    ("bad.parquet", b"PAR1 this is not parquet at all"),
    ("bad.csv.gz", b"\x1f\x8b\x08\x00 truncated gzip"),
    ("bad.jsonl", b'{"url": "http://a.com/1.jpg"}\n{not json\n'),
    ("bad.txt", b"http://a.com/\xff\xfe.jpg\n"),
    ("empty.csv", b""),
])
def test_corrupt_file_names_itself(tmp_path, name, data):
    (tmp_path / name).write_bytes(data)
    with pytest.raises(InputError, match=rf"{tmp_path / name}"):
        plan_units(cfg(tmp_path / name), str(tmp_path / "out"))
    assert load_plan(str(tmp_path / "out")) is None


def test_invalid_urls_become_rows(tmp_path):
    urls = ["", None, "javascript:alert(1)", "ftp://a.com/x.jpg", "http://a.com/a b/\u00fc.jpg", "a.com/x.jpg",
            "http://\u00fcber.de/x.jpg"]
    src = write(tmp_path / "u.jsonl", [{"url": u, "caption": "c"} for u in urls])
    units = plan_units(cfg(src), str(tmp_path / "out"))
    t = read_unit(str(tmp_path / "out"), units[0].unit_id)
    assert t[COL.STATUS].to_pylist() == ["invalid_url"] * 4 + ["ok", "invalid_url", "ok"]
    assert t[COL.REASON].to_pylist() == ["invalid_url:empty", "invalid_url:empty", "invalid_url:bad_scheme",
                                         "invalid_url:bad_scheme", None, "invalid_url:bad_scheme", None]
    assert "javascript" in t[COL.ERROR_MESSAGE][2].as_py() and t[COL.ERROR_MESSAGE][4].as_py() is None
    assert t[COL.URL].to_pylist() == urls  # the ledger keeps the URL as given
    assert t[COL.UID].null_count == 0
    assert conform(t, "ledger").num_rows == len(urls)  # statuses and types are valid ledger values


def test_non_string_url_values(tmp_path):
    pq.write_table(pa.table({"url": pa.array([1, None, 3], pa.int64()), "caption": ["a", "b", "c"]}),
                   tmp_path / "n.parquet")
    write(tmp_path / "m.jsonl", [{"url": {"nested": 1}, "caption": 5}, {"url": ["x"], "caption": None}])
    units = plan_units(cfg([tmp_path / "n.parquet", tmp_path / "m.jsonl"]), str(tmp_path / "out"))
    t = read_all(tmp_path / "out", units)
    assert t[COL.STATUS].to_pylist() == ["invalid_url"] * 5
    assert t[COL.CAPTION].to_pylist() == [None, None, "a", "b", "c"]  # m.jsonl sorts first; 5 is not text


def test_uid():
    uid = make_uid("http://a.com/x.jpg", "a cat")
    assert uid == hashlib.blake2b(b"http://a.com/x.jpg\x00a cat", digest_size=16).hexdigest()
    assert len(uid) == 32 and int(uid, 16) >= 0
    assert make_uid("http://a.com/x.jpg", None) == make_uid("http://a.com/x.jpg", "")
    assert make_uid("http://a.com/x.jpg", "a dog") != uid
    assert make_uid("ab", "c") != make_uid("a", "bc")  # the separator matters


def test_units_stable_and_within_files(tmp_path):
    a = write(tmp_path / "a.parquet", [{"url": f"http://a.com/{i}", "caption": str(i)} for i in range(25)])
    b = write(tmp_path / "b.csv", [{"url": f"http://b.com/{i}", "caption": str(i)} for i in range(7)])
    c1 = cfg([b, a], unit_size=10)
    u1 = plan_units(c1, str(tmp_path / "o1"))
    assert u1 == [UnitSpec(0, str(a), 0, 10), UnitSpec(1, str(a), 10, 10), UnitSpec(2, str(a), 20, 5),
                  UnitSpec(3, str(b), 0, 7)]
    u2 = plan_units(cfg([a, b], unit_size=10), str(tmp_path / "o2"))  # order of paths does not matter
    assert u1 == u2
    for u in u1:
        t1, t2 = read_unit(str(tmp_path / "o1"), u.unit_id), read_unit(str(tmp_path / "o2"), u.unit_id)
        assert t1.equals(t2)
        assert t1[COL.UNIT_ID].to_pylist() == [u.unit_id] * u.num_rows
        assert t1[COL.ROW_INDEX].to_pylist() == list(range(u.start_row, u.start_row + u.num_rows))
    plan = load_plan(str(tmp_path / "o1"))
    assert [f["rows"] for f in plan["files"]] == [25, 7] and plan["key"]["unit_size"] == 10


def test_resume_reuses_plan_without_reading(tmp_path):
    src = write(tmp_path / "a.parquet", [{"url": f"http://a.com/{i}", "caption": "c"} for i in range(30)])
    out = str(tmp_path / "out")
    units = plan_units(cfg(src, unit_size=8), out)
    unit_file = tmp_path / "out" / "_input" / "000001.parquet"
    before = unit_file.stat().st_mtime_ns
    st = src.stat()
    src.write_bytes(b"x" * st.st_size)  # same size and mtime but unreadable: proves nothing is reread
    os.utime(src, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert plan_units(cfg(src, unit_size=8), out) == units
    assert unit_file.stat().st_mtime_ns == before
    with pytest.raises(InputError, match="input changed since this output was planned.*unit_size: 8 -> 16"):
        plan_units(cfg(src, unit_size=16), out)  # units of the old plan may be processed already
    with pytest.raises(InputError, match="a.parquet"):  # a fresh output rereads the (now unreadable) input
        plan_units(cfg(src, unit_size=8), str(tmp_path / "out2"))


def test_changed_input_is_refused(tmp_path):
    src = write(tmp_path / "a.csv", [{"url": "http://a.com/1", "caption": "c"}])
    out = str(tmp_path / "out")
    assert len(plan_units(cfg(src), out)) == 1
    write(src, [{"url": f"http://a.com/{i}", "caption": "c"} for i in range(5)])
    extra = write(tmp_path / "b.csv", ROWS)
    with pytest.raises(InputError, match=rf"new file {extra}.*file modified {src}"):
        plan_units(cfg(tmp_path / "*.csv"), out)
    units = plan_units(cfg(tmp_path / "*.csv", unit_size=2), str(tmp_path / "fresh"))
    assert units[2] == UnitSpec(2, str(src), 4, 1)


def test_dup_url_across_units_and_files_every_row_once(tmp_path):
    files = []
    for f in range(3):
        rows = [{"url": f"http://h{i % 4}.com/{i % 40}.jpg", "caption": f"{f}-{i}"} for i in range(53)]
        files.append(write(tmp_path / f"part{f}.jsonl", rows))
    units = plan_units(cfg(tmp_path / "part*.jsonl", unit_size=10), str(tmp_path / "out"))
    assert len(units) == 3 * 6
    t = read_all(tmp_path / "out", units)
    keys = list(zip(t[COL.SOURCE_FILE].to_pylist(), t[COL.ROW_INDEX].to_pylist()))
    assert len(keys) == len(set(keys)) == 3 * 53
    assert set(keys) == {(p.name, i) for p in files for i in range(53)}
    seen, expected = set(), []
    for u in t[COL.URL].to_pylist():
        expected.append(u in seen)
        seen.add(u)
    assert t[COL.DUP_URL].to_pylist() == expected
    assert sum(expected) == 3 * 53 - 40 and len(set(t[COL.UID].to_pylist())) == 3 * 53


def test_identical_rows_get_distinct_uids(tmp_path):
    rows = [{"url": "http://a.com/x.jpg", "caption": "same"}] * 3 + [{"url": "http://a.com/y.jpg", "caption": "y"}]
    src = write(tmp_path / "dups.jsonl", rows)
    units = plan_units(cfg(src, unit_size=2), str(tmp_path / "out"))
    uids = read_all(tmp_path / "out", units)[COL.UID].to_pylist()
    assert len(set(uids)) == 4
    assert uids[0] == make_uid("http://a.com/x.jpg", "same") and uids[3] == make_uid("http://a.com/y.jpg", "y")
    assert uids[1] == make_uid("http://a.com/x.jpg", "same", "dups.jsonl:1")  # deterministic: file and row


def test_read_unit_missing(tmp_path):
    with pytest.raises(InputError, match="unit 3 has no input file"):
        read_unit(str(tmp_path), 3)


def test_empty_file_gives_no_unit(tmp_path):
    (tmp_path / "a.csv").write_text("url,caption\n")
    b = write(tmp_path / "b.txt", ROWS[:1])
    units = plan_units(cfg(tmp_path), str(tmp_path / "out"))
    assert units == [UnitSpec(0, str(b), 0, 1)]
    assert [f["rows"] for f in load_plan(str(tmp_path / "out"))["files"]] == [0, 1]


def test_s3_inputs_on_moto_server(moto_s3):
    s3 = moto_s3
    buf = io.BytesIO()
    pq.write_table(pa.Table.from_pylist(ROWS[:3]), buf)
    s3.put_object(Bucket="bkt", Key="lists/a.parquet", Body=buf.getvalue())
    s3.put_object(Bucket="bkt", Key="lists/sub/b.jsonl.gz",
                  Body=gzip.compress("".join(json.dumps(r) + "\n" for r in ROWS[3:]).encode()))
    s3.put_object(Bucket="bkt", Key="lists/readme.md", Body=b"x")
    assert resolve_inputs(["s3://bkt/lists"]) == ["s3://bkt/lists/a.parquet", "s3://bkt/lists/sub/b.jsonl.gz"]
    assert resolve_inputs(["s3://bkt/lists/*.parquet"]) == ["s3://bkt/lists/a.parquet"]
    units = plan_units(cfg("s3://bkt/lists", unit_size=2), "s3://bkt/run")
    assert [(u.source_file, u.num_rows) for u in units] == [
        ("s3://bkt/lists/a.parquet", 2), ("s3://bkt/lists/a.parquet", 1), ("s3://bkt/lists/sub/b.jsonl.gz", 2)]
    t = read_all("s3://bkt/run", units)
    assert t[COL.URL].to_pylist() == [r["url"] for r in ROWS]
    assert t[COL.SOURCE_FILE].to_pylist() == ["a.parquet"] * 3 + ["sub/b.jsonl.gz"] * 2  # relative to s3://bkt/lists
    assert t[COL.DUP_URL].to_pylist()[-1] is True
    assert plan_units(cfg("s3://bkt/lists", unit_size=2), "s3://bkt/run") == units  # resume on S3


def test_tsv_stray_quote_does_not_swallow_rows(tmp_path):
    (tmp_path / "q.tsv").write_text('url\tcaption\nhttp://a.com/1\t5" screen\n'
                                    'http://a.com/2\t"opening quote only\nhttp://a.com/3\t"say ""hi"""\n')
    units = plan_units(cfg(tmp_path / "q.tsv"), str(tmp_path / "out"))
    t = read_all(tmp_path / "out", units)
    assert t[COL.CAPTION].to_pylist() == ['5" screen', '"opening quote only', 'say "hi"']


def test_binary_url_column_with_bad_utf8(tmp_path):
    pq.write_table(pa.table({"url": pa.array([b"http://a.com/\xff.jpg", b"http://a.com/ok.jpg"], pa.binary()),
                             "caption": pa.array(["x", "y"], pa.large_string())}), tmp_path / "b.parquet")
    units = plan_units(cfg(tmp_path / "b.parquet"), str(tmp_path / "out"))
    t = read_all(tmp_path / "out", units)
    assert t[COL.URL].to_pylist() == ["http://a.com/\ufffd.jpg", "http://a.com/ok.jpg"]
    assert t[COL.STATUS].to_pylist() == ["ok", "ok"] and t[COL.CAPTION].type == pa.string()
