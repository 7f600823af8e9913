"""curate.capped: bounded reading of lines, JSON lines and CSV/TSV rows agrees with the unbounded readers."""
import io
import json

import pyarrow as pa
import pyarrow.csv as pacsv
import pytest

from curate import capped

CSV_CASES = [  # "|" stands for the delimiter
    b'url|caption\nhttp://a/1|plain\nhttp://a/2|"quoted, comma"\n',
    b'url|caption\r\nhttp://a/1|"two\nlines"\r\nhttp://a/2|"say ""hi"""\r\n',
    b"url|caption\rhttp://a/1|cr only\rhttp://a/2|x\r",
    b'url|caption\n\nhttp://a/1|after blank\n\n\nhttp://a/2|\nhttp://a/3|"" \n',
    b"url|caption\nhttp://a/1|no final newline",
    b'url|caption\nhttp://a/1|5" screen\nhttp://a/2|caf\xc3\xa9\n',
]


def arrow_rows(data: bytes, delimiter: str) -> list[list[str]]:
    tsv = delimiter == "\t"
    parse = pacsv.ParseOptions(delimiter=delimiter, newlines_in_values=not tsv, quote_char=False if tsv else '"')
    t = pacsv.read_csv(io.BytesIO(data), parse_options=parse,
                       convert_options=pacsv.ConvertOptions(column_types={"url": pa.string(), "caption": pa.string()},
                                                            strings_can_be_null=False))
    return [t.column_names] + [[r["url"], r["caption"]] for r in t.to_pylist()]


@pytest.mark.parametrize("data", CSV_CASES)
@pytest.mark.parametrize("delimiter", [",", "\t"])
def test_csv_rows_match_pyarrow(data, delimiter):
    if delimiter == "\t" and b"two\nlines" in data:
        pytest.skip("a TSV row is one line")
    data = data.replace(b"|", delimiter.encode())
    got = [[f.decode() for f in row] for row in capped.csv_rows(io.BytesIO(data), delimiter, delimiter == ",", 1 << 20)]
    assert got == arrow_rows(data, delimiter)


def test_csv_rows_cut_long_fields_on_character_boundaries(monkeypatch):
    monkeypatch.setattr(capped, "CHUNK", 7)  # values arrive in many small pieces
    data = ('url,caption\nhttp://a/1,"' + "\u00e9" * 50 + '""x"\nhttp://a/2,' + "y" * 40 + "\n").encode()
    rows = list(capped.csv_rows(io.BytesIO(data), ",", True, keep=11))
    assert rows == [[b"url", b"caption"], [b"http://a/1", "\u00e9\u00e9\u00e9\u00e9\u00e9".encode()],
                    [b"http://a/2", b"y" * 11]]


def test_lines_hand_over_oversized_lines(monkeypatch):
    monkeypatch.setattr(capped, "CHUNK", 5)
    data = b"short\n" + b"x" * 100 + b"\nend"
    out = []
    for n, line, stream in capped.lines(io.BytesIO(data), limit=20):
        out.append((n, line if line is not None else capped.head_of_line(stream, 8)))
    assert out == [(1, b"short"), (2, b"x" * 8), (3, b"end")]


@pytest.mark.parametrize("chunk", [3, 1 << 20])
def test_capped_json_line_cuts_strings_and_keeps_the_rest(monkeypatch, chunk):
    monkeypatch.setattr(capped, "CHUNK", chunk)
    obj = {"caption": 'a"b\\c\n\u00e9' * 100, "url": "http://a/1", "n": [1.5, {"k": "\U0001F600"}], "t": True}
    line = json.dumps(obj).encode() + b"\n" + b'{"next": 1}\n'
    stream = capped._Stream(io.BytesIO(line))
    got = json.loads(capped.capped_json_line(stream, keep=20, bound=1000))
    assert {k: v for k, v in got.items() if k != "caption"} == {k: v for k, v in obj.items() if k != "caption"}
    assert obj["caption"].startswith(got["caption"]) and 17 <= len(got["caption"].encode()) <= 40
    assert stream.buf[stream.pos:] + stream.raw.read() == b'{"next": 1}\n'  # read exactly through the newline
    with pytest.raises(capped.TooMuchStructure):
        capped.capped_json_line(capped._Stream(io.BytesIO(json.dumps(list(range(500))).encode())), 20, 100)
