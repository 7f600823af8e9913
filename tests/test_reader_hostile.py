"""Hostile input files: JSONL columns over the whole file, captions that are not text, huge values cut while
reading in bounded memory, and source_file relative to the input root (issue 12)."""
import gzip
import json
import os
import shutil
import subprocess
import sys
import textwrap

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from curate.captions import apply_text_rules
from curate.config import InputConfig, TextConfig
from curate.inputs import InputError
from curate.inputs.columns import URL_MAX_BYTES
from curate.inputs.plan import load_plan, plan_units
from curate.inputs.rows import make_uid, read_unit
from curate.schema import COL, conform


def cfg(paths, **kw):
    return InputConfig(paths=tuple(str(p) for p in ([paths] if not isinstance(paths, list) else paths)), **kw)


def read_all(output, units):
    return pa.concat_tables([read_unit(str(output), u.unit_id) for u in units], promote_options="default")


def jsonl(path, objs):
    path.write_text("".join(json.dumps(o, ensure_ascii=False) + "\n" for o in objs), encoding="utf-8")
    return path


# ---------------------------------------------------------------- bug 6: JSONL columns over the whole file

def test_jsonl_columns_are_the_union_of_keys(tmp_path):
    src = jsonl(tmp_path / "a.jsonl", [{"id": 0}, {"url": "http://a.com/1.jpg", "caption": "one"},
                                       {"caption": "two", "url": "http://a.com/2.jpg", "extra": 1}])
    units = plan_units(cfg(src), str(tmp_path / "o1"))
    t = read_all(tmp_path / "o1", units)
    assert t[COL.CAPTION].to_pylist() == [None, "one", "two"]
    assert t[COL.URL].to_pylist() == [None, "http://a.com/1.jpg", "http://a.com/2.jpg"]
    assert t[COL.REASON].to_pylist() == ["invalid_url:empty", None, None]  # the first row is still a row
    units = plan_units(cfg(src, caption_col="caption"), str(tmp_path / "o2"))  # an explicit column is found
    assert read_all(tmp_path / "o2", units)[COL.CAPTION].to_pylist() == [None, "one", "two"]


def test_jsonl_case_insensitive_key_per_object(tmp_path):
    src = jsonl(tmp_path / "l.jsonl", [{"URL": "http://a.com/1.jpg"}, {"url": "http://a.com/2.jpg", "text": "b"},
                                       {"URL": "http://a.com/3.jpg", "TEXT": "c"}])
    units = plan_units(cfg(src, preset="laion"), str(tmp_path / "out"))
    t = read_all(tmp_path / "out", units)
    assert t[COL.URL].to_pylist() == [f"http://a.com/{i}.jpg" for i in (1, 2, 3)]
    assert t[COL.CAPTION].to_pylist() == [None, "b", "c"]


def test_jsonl_key_in_no_row_is_a_clear_error(tmp_path):
    src = jsonl(tmp_path / "a.jsonl", [{"id": 0}, {"url": "http://a.com/1.jpg", "caption": "one"}])
    with pytest.raises(InputError) as e:
        plan_units(cfg(src, caption_col="alt"), str(tmp_path / "out"))
    msg = str(e.value)
    assert str(src) in msg and "'alt' (caption column)" in msg and "columns present: id, url, caption" in msg
    assert load_plan(str(tmp_path / "out")) is None
    with pytest.raises(InputError, match=r"'link' \(url column\).*present: id, url, caption"):
        plan_units(cfg(src, url_col="link"), str(tmp_path / "out"))


# ---------------------------------------------------------------- captions that are not text

def test_jsonl_non_string_captions_are_not_text_rows(tmp_path):
    values = [float("nan"), 12.5, 3, True, [1, "a"], {"a": 1}, "real text", None]
    src = tmp_path / "n.jsonl"
    src.write_text("".join(json.dumps({"url": f"http://a.com/{i}.jpg", "caption": v}) + "\n"
                           for i, v in enumerate(values)))  # json.dumps writes NaN, as Python json files do
    units = plan_units(cfg(src), str(tmp_path / "out"))
    t = read_all(tmp_path / "out", units)
    assert t[COL.REASON].to_pylist() == ["caption_rule:not_text"] * 6 + [None, None]
    assert t[COL.CAPTION].to_pylist() == [None] * 6 + ["real text", None]  # never "NaN" or "12.5" as text
    msgs = t[COL.ERROR_MESSAGE].to_pylist()
    assert msgs[0] == "caption is a number, not text: NaN"
    assert msgs[1].endswith("12.5") and msgs[3] == "caption is a boolean, not text: true"
    assert msgs[4] == 'caption is a list, not text: [1, "a"]' and msgs[5] == 'caption is an object, not text: {"a": 1}'
    assert conform(t, "ledger").num_rows == len(values)
    after = apply_text_rules(t, TextConfig())  # the reading reason stays the row's reason
    assert after[COL.REASON].to_pylist()[:7] == ["caption_rule:not_text"] * 6 + [None]
    assert after[COL.REASON][7].as_py() == "caption_rule:empty"


def test_csv_captions_are_always_text(tmp_path):
    (tmp_path / "a.csv").write_text("url,caption\nhttp://a.com/1.jpg,12.5\nhttp://a.com/2.jpg,NaN\n")
    units = plan_units(cfg(tmp_path / "a.csv"), str(tmp_path / "out"))
    t = read_all(tmp_path / "out", units)
    assert t[COL.CAPTION].to_pylist() == ["12.5", "NaN"] and t[COL.STATUS].to_pylist() == ["ok", "ok"]


@pytest.mark.parametrize("values, typ", [([1.5, float("nan")], pa.float64()), ([1, 2], pa.int64()),
                                         ([["a"], ["b"]], pa.list_(pa.string())), ([True, False], pa.bool_())])
def test_parquet_non_text_caption_column_is_a_clear_error(tmp_path, values, typ):
    pq.write_table(pa.table({"url": ["http://a.com/1.jpg", "http://a.com/2.jpg"], "caption": pa.array(values, typ)}),
                   tmp_path / "p.parquet")
    kind = str(typ).split("<")[0]
    msg = rf"p\.parquet: caption column 'caption' holds {kind}.*not text.*--caption-col"
    with pytest.raises(InputError, match=msg):
        plan_units(cfg(tmp_path / "p.parquet"), str(tmp_path / "out"))


def test_parquet_text_like_caption_columns(tmp_path):
    pq.write_table(pa.table({"url": ["http://a.com/1.jpg", "http://a.com/2.jpg"],
                             "caption": pa.array([b"caf\xc3\xa9", None], pa.binary()),
                             "alt": pa.nulls(2, pa.null())}), tmp_path / "p.parquet")
    units = plan_units(cfg(tmp_path / "p.parquet"), str(tmp_path / "o1"))
    assert read_all(tmp_path / "o1", units)[COL.CAPTION].to_pylist() == ["caf\u00e9", None]
    units = plan_units(cfg(tmp_path / "p.parquet", caption_col="alt"), str(tmp_path / "o2"))
    assert read_all(tmp_path / "o2", units)[COL.CAPTION].to_pylist() == [None, None]


def test_jsonl_lone_surrogate_is_not_a_crash(tmp_path):
    (tmp_path / "s.jsonl").write_text('{"url": "http://a.com/1.jpg", "caption": "a\\ud800b"}\n')
    units = plan_units(cfg(tmp_path / "s.jsonl"), str(tmp_path / "out"))
    caption = read_all(tmp_path / "out", units)[COL.CAPTION][0].as_py()
    assert caption.startswith("a\ufffd") and caption.endswith("b")


# ---------------------------------------------------------------- long values cut while reading

@pytest.mark.parametrize("fmt", ["csv", "tsv", "jsonl", "parquet"])
def test_long_caption_and_url_are_cut_and_kept_as_rows(tmp_path, fmt):
    cap = 1000
    rows = [{"url": "http://a.com/0.jpg", "caption": "fine"},
            {"url": "http://a.com/1.jpg", "caption": "a\u00e9" * 2000},       # 6000 bytes, the cap falls in a char
            {"url": "http://a.com/" + "p" * 20_000, "caption": "long url"}]
    path = tmp_path / f"l.{fmt}"
    if fmt == "parquet":
        pq.write_table(pa.Table.from_pylist(rows), path)
    elif fmt == "jsonl":
        jsonl(path, rows)
    else:
        d = "," if fmt == "csv" else "\t"
        path.write_text("url" + d + "caption\n" + "".join(r["url"] + d + r["caption"] + "\n" for r in rows))
    units = plan_units(cfg(path, max_caption_bytes=cap), str(tmp_path / "out"))
    t = read_all(tmp_path / "out", units)
    captions = t[COL.CAPTION].to_pylist()
    assert captions[0] == "fine" and captions[2] == "long url"
    assert captions[1] == ("a\u00e9" * 2000).encode()[:cap].decode("utf-8", "ignore")  # 999 bytes: whole chars
    assert t[COL.REASON].to_pylist() == [None, "caption_rule:too_long", "invalid_url:too_long"]
    assert "input.max_caption_bytes" in t[COL.ERROR_MESSAGE][1].as_py()
    assert len(t[COL.URL][2].as_py().encode()) <= URL_MAX_BYTES  # a cut URL is never fetched


_MEASURE = textwrap.dedent("""
    import json, os, resource, sys, tempfile
    from curate.config import InputConfig
    from curate.inputs.plan import plan_units
    from curate.inputs.rows import read_unit
    warm = tempfile.mkdtemp()  # load every code path before the baseline
    for name, text in (("w.jsonl", '{"url": "http://a/1", "caption": "c"}\\n'),
                       ("w.csv", "url,caption\\nhttp://a/1,c\\n")):
        open(os.path.join(warm, name), "w").write(text)
        plan_units(InputConfig(paths=(os.path.join(warm, name),)), os.path.join(warm, name + ".out"))
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    units = plan_units(InputConfig(paths=(sys.argv[1],)), sys.argv[2])
    rows = [r for u in units for r in read_unit(sys.argv[2], u.unit_id).to_pylist()]
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    keep = ("url", "caption", "reason", "source_file", "row_index")
    print(json.dumps({"rss_mb": (peak - base) / 1024, "rows": [{k: r[k] for k in keep} for r in rows]}))
""")


def _write_huge(path, fmt: str, mb: int) -> None:
    """Three rows; the middle one holds a caption (a .txt: a URL) of `mb` MiB, written in pieces."""
    piece = "a\u00e9" * 21_845  # 65,535 bytes
    opener = gzip.open if str(path).endswith(".gz") else open
    kw = {"compresslevel": 1} if str(path).endswith(".gz") else {}
    with opener(path, "wt", encoding="utf-8", **kw) as f:
        def huge():
            for _ in range(mb * 16):
                f.write(piece)
        if fmt == "jsonl":  # the URL comes after the huge caption
            f.write('{"url": "http://a.com/0.jpg", "caption": "first"}\n{"caption": "')
            huge()
            f.write('", "url": "http://a.com/1.jpg", "n": [1, {"x": "y"}]}\n')
            f.write('{"url": "http://a.com/2.jpg", "caption": "last"}\n')
        elif fmt in ("csv", "tsv"):
            d, q = ("," if fmt == "csv" else "\t"), ('"' if fmt == "csv" else "")
            f.write(f"caption{d}url\nfirst{d}http://a.com/0.jpg\n{q}")
            huge()
            f.write(f"{q}{d}http://a.com/1.jpg\n{q}last{q}{d}http://a.com/2.jpg\n")
        else:
            f.write("http://a.com/0.jpg\nhttp://a.com/1.jpg/")
            huge()
            f.write("\nhttp://a.com/2.jpg\n")


@pytest.mark.parametrize("name", ["huge.jsonl", "huge.jsonl.gz", "huge.csv", "huge.tsv", "huge.txt"])
def test_huge_value_read_in_bounded_memory(tmp_path, name):
    fmt = name.split(".")[1]
    _write_huge(tmp_path / name, fmt, mb=120)
    proc = subprocess.run([sys.executable, "-c", _MEASURE, str(tmp_path / name), str(tmp_path / "out")],
                          capture_output=True, text=True, timeout=600, cwd=os.getcwd())
    (tmp_path / name).unlink()  # 120 MiB: do not leave it in the kept pytest folders
    assert proc.returncode == 0, proc.stderr[-3000:]
    got = json.loads(proc.stdout)
    assert got["rss_mb"] < 100, got["rss_mb"]  # a 120 MiB value costs well under its own size
    rows = got["rows"]
    assert [(r["source_file"], r["row_index"]) for r in rows] == [(name, i) for i in range(3)]  # one row each
    assert [r["url"] for r in rows][::2] == ["http://a.com/0.jpg", "http://a.com/2.jpg"]
    if fmt == "txt":
        assert rows[1]["reason"] == "invalid_url:too_long" and len(rows[1]["url"].encode()) <= URL_MAX_BYTES
        return
    assert [r["caption"] for r in rows][::2] == ["first", "last"]
    assert rows[1]["url"] == "http://a.com/1.jpg"  # found after the huge caption
    assert rows[1]["reason"] == "caption_rule:too_long"
    assert rows[1]["caption"] == ("a\u00e9" * 30_000).encode()[:65_536].decode("utf-8", "ignore")


def test_huge_json_structure_is_a_clear_error(tmp_path):
    path = tmp_path / "s.jsonl"
    with open(path, "w") as f:
        f.write('{"url": "http://a.com/1.jpg", "caption": [')
        for _ in range(200):
            f.write("1, " * 20_000)
        f.write("1]}\n")
    with pytest.raises(InputError, match=r"s\.jsonl:1: a JSON line too long to read"):
        plan_units(cfg(path), str(tmp_path / "out"))


# ---------------------------------------------------------------- source_file relative to the input root

def _tree(root):
    (root / "sub").mkdir(parents=True)
    jsonl(root / "a.jsonl", [{"url": "http://a.com/x.jpg", "caption": "c"}] * 2)
    jsonl(root / "sub" / "b.jsonl", [{"url": "http://a.com/x.jpg", "caption": "c"}])
    return root


def test_source_file_is_relative_to_the_input_root(tmp_path):
    d = _tree(tmp_path / "in")
    cases = {str(d): ["a.jsonl", "a.jsonl", "sub/b.jsonl"], str(d / "a.jsonl"): ["a.jsonl"] * 2,
             str(d / "**" / "*.jsonl"): ["a.jsonl", "a.jsonl", "sub/b.jsonl"],
             str(d / "sub" / "*.jsonl"): ["b.jsonl"]}
    for i, (path, names) in enumerate(cases.items()):
        units = plan_units(cfg(path), str(tmp_path / f"o{i}"))
        assert read_all(tmp_path / f"o{i}", units)[COL.SOURCE_FILE].to_pylist() == names, path
    units = plan_units(cfg([d / "a.jsonl", d / "sub"]), str(tmp_path / "two"))  # two paths: their common folder
    assert read_all(tmp_path / "two", units)[COL.SOURCE_FILE].to_pylist() == ["a.jsonl", "a.jsonl", "sub/b.jsonl"]
    plan = load_plan(str(tmp_path / "two"))
    assert [(f["path"], f["name"]) for f in plan["files"]] == [(str(d / "a.jsonl"), "a.jsonl"),
                                                               (str(d / "sub" / "b.jsonl"), "sub/b.jsonl")]
    assert [u.source_file for u in units] == [str(d / "a.jsonl"), str(d / "sub" / "b.jsonl")]  # full paths


def test_moved_input_keeps_its_uids(tmp_path):
    first = _tree(tmp_path / "one" / "in")
    units = plan_units(cfg(first), str(tmp_path / "o1"))
    t1 = read_all(tmp_path / "o1", units)
    moved = tmp_path / "elsewhere" / "copy"
    shutil.copytree(first, moved)
    t2 = read_all(tmp_path / "o2", plan_units(cfg(moved), str(tmp_path / "o2")))
    assert t1[COL.UID].to_pylist() == t2[COL.UID].to_pylist()
    assert len(set(t1[COL.UID].to_pylist())) == 3  # repeats are still told apart, by relative file and row
    assert t1[COL.UID][1].as_py() == make_uid("http://a.com/x.jpg", "c", "a.jsonl:1")
