"""Opt-out signals of the download stage against a real 127.0.0.1 server: response headers (X-Robots-Tag,
tdm-reservation/tdm-policy, Content-Usage) and metadata in the image bytes (XMP plus:DataMining, C2PA
training-mining in JPEG APP11 / PNG caBX / WebP C2PA), each ending with its status, reason and optout_signals.

The C2PA bytes are built here (JUMBF superboxes with a description box and a CBOR or JSON content box, as the
C2PA specification lays them out; no signature: curate does not validate one), the XMP packets by hand.
"""
from __future__ import annotations

import dataclasses
import io
import json
import struct
import time
import zlib

import pyarrow as pa
import pytest
from PIL import Image

from curate.config import DownloadConfig, ImageConfig, OptOutConfig
from curate.download import DownloadStage, download_stage
from curate.optout import embedded as emb
from curate.optout.signals import parse_usage, tdm_reserved, usage_disallows_training
from curate.schema import COL, Status
from tests.fault_server import ImageServer, gradient, jpeg, png

# every case answers at once from 127.0.0.1: the limits only bound a hang, and are wide so that a stall of the
# machine (CI saw three rows time out at 0.5 s) is not read as a timeout
FAST = DownloadConfig(timeout=5, deadline=10, retries=0, allow_private_networks=True)
IMG = ImageConfig(size=32)
POLICY = "https://example.com/tdm-policy.json"
HEADERS = ["x_robots_tag:allow", "tdm_header:allow", "content_usage:allow"]
ALL_ALLOW = [*HEADERS, "c2pa:allow", "iptc:allow"]
PLUS = "http://ns.useplus.org/ldf/vocab/"

# ------------------------------------------------------------------ building the bytes


def cbor(obj) -> bytes:
    """A minimal CBOR encoder for the test assertions (maps, arrays, text, ints, bools, null)."""
    def head(major: int, n: int) -> bytes:
        if n < 24:
            return bytes([major << 5 | n])
        for info, size in ((24, 1), (25, 2), (26, 4), (27, 8)):
            if n < 1 << (8 * size):
                return bytes([major << 5 | info]) + n.to_bytes(size, "big")
        raise ValueError(n)
    if obj is None or isinstance(obj, bool):
        return {None: b"\xf6", False: b"\xf4", True: b"\xf5"}[obj]
    if isinstance(obj, int):
        return head(0, obj) if obj >= 0 else head(1, -1 - obj)
    if isinstance(obj, str):
        raw = obj.encode()
        return head(3, len(raw)) + raw
    if isinstance(obj, list):
        return head(4, len(obj)) + b"".join(cbor(v) for v in obj)
    return head(5, len(obj)) + b"".join(cbor(k) + cbor(v) for k, v in obj.items())


def box(kind: bytes, payload: bytes) -> bytes:
    return struct.pack(">I", 8 + len(payload)) + kind + payload


def superbox(label: str, uuid4: bytes, *children: bytes) -> bytes:
    """A JUMBF superbox: description box (type UUID, toggles = requestable + label, label) then its content."""
    uuid = uuid4 + bytes.fromhex("00110010800000AA00389B71")
    return box(b"jumb", box(b"jumd", uuid + b"\x03" + label.encode() + b"\x00") + b"".join(children))


def c2pa_store(uses: dict[str, str], label: str = "c2pa.training-mining", as_json: bool = False) -> bytes:
    """A C2PA manifest store with one manifest: an actions assertion and a training-mining assertion."""
    entries = {"entries": {k: {"use": v} for k, v in uses.items()}}
    content = box(b"json", json.dumps(entries).encode()) if as_json else box(b"cbor", cbor(entries))
    assertion = superbox(label, b"json" if as_json else b"cbor", content)
    actions = superbox("c2pa.actions", b"cbor", box(b"cbor", cbor({"actions": [{"action": "c2pa.created"}]})))
    claim = superbox("c2pa.claim", b"c2cl", box(b"cbor", cbor({"dc:format": "image/jpeg", "alg": "sha256"})))
    manifest = superbox("urn:uuid:0b3c5e0e-0000-4000-8000-000000000001", b"c2ma",
                        superbox("c2pa.assertions", b"c2as", actions, assertion), claim)
    return superbox("c2pa", b"c2pa", manifest)


def xmp_packet(value: str, element: bool = False) -> bytes:
    prop = (f"<plus:DataMining>{value}</plus:DataMining>" if element else "")
    attr = "" if element else f' plus:DataMining="{value}"'
    return (f'<?xpacket begin="" id="W5M0MpCehiHzreSzNTczkc9d"?><x:xmpmeta xmlns:x="adobe:ns:meta/">'
            f'<rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#"><rdf:Description rdf:about=""'
            f' xmlns:plus="http://ns.useplus.org/ldf/xmp/1.0/"{attr}>{prop}</rdf:Description></rdf:RDF>'
            f'</x:xmpmeta><?xpacket end="w"?>').encode()


def jpeg_with(segments: list[bytes], seed: int = 1) -> bytes:
    """A real JPEG with marker segments inserted after SOI."""
    body = jpeg(64, 48, seed=seed)
    return body[:2] + b"".join(segments) + body[2:]


def app(marker: int, payload: bytes) -> bytes:
    return bytes([0xFF, marker]) + struct.pack(">H", len(payload) + 2) + payload


def jpeg_xmp(packet: bytes) -> bytes:
    return jpeg_with([app(0xE1, b"http://ns.adobe.com/xap/1.0/\x00" + packet)])


def jpeg_c2pa(store: bytes, packet_bytes: int = 120) -> bytes:
    """The store in APP11 JPEG XT packets: later packets repeat the box header (LBox, TBox), as C2PA writes them."""
    header, rest = store[:8], store[8:]
    chunks = [rest[i:i + packet_bytes] for i in range(0, len(rest), packet_bytes)]
    segs = [app(0xEB, b"JP" + struct.pack(">HI", 1, z) + header + c) for z, c in enumerate(chunks, 1)]
    return jpeg_with(segs)


def png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def png_with(chunks: list[bytes]) -> bytes:
    body = png(64, 48, seed=2)
    ihdr_end = 8 + 25
    return body[:ihdr_end] + b"".join(chunks) + body[ihdr_end:]


def png_xmp(packet: bytes, compressed: bool = True) -> bytes:
    text = zlib.compress(packet) if compressed else packet
    return png_with([png_chunk(b"iTXt", b"XML:com.adobe.xmp\x00" + bytes([compressed, 0]) + b"\x00\x00" + text)])


def webp_with(xmp: bytes | None = None, c2pa: bytes | None = None) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(gradient(64, 48, 3)).save(buf, "WEBP", **({"xmp": xmp} if xmp else {}))
    body = buf.getvalue()
    if c2pa is not None:
        body += b"C2PA" + struct.pack("<I", len(c2pa)) + c2pa + b"\x00" * (len(c2pa) & 1)
        body = body[:4] + struct.pack("<I", len(body) - 8) + body[8:]
    return body


NOT_ALLOWED = {"c2pa.ai_training": "notAllowed", "c2pa.data_mining": "allowed"}
ALLOWED = {"c2pa.ai_training": "allowed", "c2pa.ai_generative_training": "constrained", "c2pa.data_mining": "allowed"}

# path -> (body, content type, headers, expected reason, expected optout_signals with the default switches)
CASES = {
    "/h/tdm-1.jpg": (jpeg(64, 48), "image/jpeg", {"tdm-reservation": "1"}, "robots:tdm_header",
                     ["x_robots_tag:allow", "tdm_header:disallow", "content_usage:allow"]),
    "/h/tdm-1-accepted.jpg": (jpeg(64, 48), "image/jpeg", {"tdm-reservation": "1", "tdm-policy": POLICY}, "ok",
                              ALL_ALLOW),
    "/h/tdm-1-other-policy.jpg": (jpeg(64, 48), "image/jpeg",
                                  {"tdm-reservation": "1", "tdm-policy": "https://example.com/other.json"},
                                  "robots:tdm_header", ["x_robots_tag:allow", "tdm_header:disallow",
                                                        "content_usage:allow"]),
    "/h/tdm-0.jpg": (jpeg(64, 48), "image/jpeg", {"tdm-reservation": "0"}, "ok", ALL_ALLOW),
    "/h/usage-n.jpg": (jpeg(64, 48), "image/jpeg", {"Content-Usage": "train-ai=n"}, "robots:content_usage",
                       ["x_robots_tag:allow", "tdm_header:allow", "content_usage:disallow"]),
    "/h/usage-n-search-y.jpg": (jpeg(64, 48), "image/jpeg", {"Content-Usage": "train-ai=n, search=y"},
                                "robots:content_usage",
                                ["x_robots_tag:allow", "tdm_header:allow", "content_usage:disallow"]),
    "/h/usage-y.jpg": (jpeg(64, 48), "image/jpeg", {"Content-Usage": "train-ai=y, search=n"}, "ok", ALL_ALLOW),
    "/h/noai-and-usage-n.jpg": (jpeg(64, 48), "image/jpeg", {"X-Robots-Tag": "noai", "Content-Usage": "train-ai=n"},
                                "robots:x_robots_tag",
                                ["x_robots_tag:disallow", "tdm_header:allow", "content_usage:disallow"]),
    "/e/xmp-prohibited.jpg": (jpeg_xmp(xmp_packet(PLUS + "DMI-PROHIBITED")), "image/jpeg", {}, "robots:iptc",
                              [*HEADERS, "c2pa:allow", "iptc:disallow"]),
    "/e/xmp-allowed.jpg": (jpeg_xmp(xmp_packet(PLUS + "DMI-ALLOWED")), "image/jpeg", {}, "ok", ALL_ALLOW),
    "/e/xmp-aiml.png": (png_xmp(xmp_packet(PLUS + "DMI-PROHIBITED-AIMLTRAINING", element=True)), "image/png", {},
                        "robots:iptc", [*HEADERS, "c2pa:allow", "iptc:disallow"]),
    "/e/xmp-unspecified.png": (png_xmp(xmp_packet(PLUS + "DMI-UNSPECIFIED"), compressed=False), "image/png", {},
                               "ok", ALL_ALLOW),
    "/e/c2pa-not-allowed.jpg": (jpeg_c2pa(c2pa_store(NOT_ALLOWED)), "image/jpeg", {}, "robots:c2pa",
                                [*HEADERS, "c2pa:disallow", "iptc:allow"]),
    "/e/c2pa-allowed.jpg": (jpeg_c2pa(c2pa_store(ALLOWED)), "image/jpeg", {}, "ok", ALL_ALLOW),
    "/e/c2pa-json.png": (png_with([png_chunk(b"caBX", c2pa_store({"c2pa.data_mining": "notAllowed"},
                                                                 label="c2pa.training-mining__1", as_json=True))]),
                         "image/png", {}, "robots:c2pa", [*HEADERS, "c2pa:disallow", "iptc:allow"]),
    "/e/c2pa.webp": (webp_with(c2pa=c2pa_store({"cawg.ai_inference": "notAllowed"}, label="cawg.training-mining")),
                     "image/webp", {}, "robots:c2pa", [*HEADERS, "c2pa:disallow", "iptc:allow"]),
    "/e/c2pa-allowed.webp": (webp_with(c2pa=c2pa_store(ALLOWED)), "image/webp", {}, "ok", ALL_ALLOW),
    "/e/xmp.webp": (webp_with(xmp=xmp_packet(PLUS + "DMI-PROHIBITED-GENAIMLTRAINING")), "image/webp", {},
                    "robots:iptc", [*HEADERS, "c2pa:allow", "iptc:disallow"]),
}


def table_of(urls: list, signals: list | None = None) -> pa.Table:
    cols = {COL.UID: [f"u{i:04d}" for i in range(len(urls))], COL.URL: urls, COL.STATUS: [Status.OK] * len(urls),
            COL.REASON: pa.nulls(len(urls), pa.string())}
    if signals is not None:
        cols[COL.OPTOUT_SIGNALS] = pa.array(signals, pa.list_(pa.string()))
    return pa.table(cols)


def reasons(t: pa.Table) -> list[str]:
    return [r or s for s, r in zip(t[COL.STATUS].to_pylist(), t[COL.REASON].to_pylist())]


@pytest.fixture(scope="module")
def server():
    with ImageServer() as srv:
        for path, (body, ctype, headers, _, _) in CASES.items():
            srv.add(path, body, ctype, headers)
        srv.add("/h/redirect", b"", "text/html", {"Location": "/h/usage-y.jpg", "tdm-reservation": "1",
                                                   "Content-Usage": "train-ai=n"}, status=302)
        yield srv


def run(server, paths: list[str], dl: DownloadConfig = FAST, img: ImageConfig = IMG, signals=None) -> pa.Table:
    return DownloadStage(dl, img)(table_of([server.url(p) for p in paths], signals))


def test_every_signal_ends_with_its_status_reason_and_evidence(server):
    dl = dataclasses.replace(FAST, optout=OptOutConfig(accepted_tdm_policies=(POLICY,)))
    out = run(server, list(CASES), dl)
    got = dict(zip(CASES, zip(reasons(out), out[COL.OPTOUT_SIGNALS].to_pylist())))
    assert got == {p: (c[3], c[4]) for p, c in CASES.items()}
    robots = [i for i, s in enumerate(out[COL.STATUS].to_pylist()) if s == Status.ROBOTS]
    assert all(out[COL.IMAGE][i].as_py() is None for i in robots)
    messages = dict(zip(CASES, out[COL.ERROR_MESSAGE].to_pylist()))
    assert messages["/h/usage-n.jpg"] == "Content-Usage: train-ai=n"
    assert messages["/e/c2pa-not-allowed.jpg"] == "C2PA c2pa.training-mining: c2pa.ai_training notAllowed"
    assert messages["/e/xmp-prohibited.jpg"] == f"XMP plus:DataMining {PLUS}DMI-PROHIBITED"


def test_header_signals_apply_to_the_final_response_only(server):
    out = run(server, ["/h/redirect"])
    assert reasons(out) == ["ok"] and out[COL.OPTOUT_SIGNALS].to_pylist() == [ALL_ALLOW]


def test_the_embedded_check_sees_the_original_bytes_when_they_are_stored_as_is(server):
    """skip_reencode strips the metadata from the stored bytes; the check runs before, on what was served."""
    img = dataclasses.replace(IMG, size=256, skip_reencode=True)
    out = run(server, ["/e/xmp-prohibited.jpg", "/e/xmp-allowed.jpg"], img=img)
    assert reasons(out) == ["robots:iptc", "ok"]
    stored = out[COL.IMAGE][1].as_py()
    assert b"DataMining" not in stored  # stored as its own bytes, stripped: the check could not have used these


def test_switched_off_signals_are_not_checked_and_leave_no_entry(server):
    paths = ["/h/tdm-1.jpg", "/h/usage-n.jpg", "/e/c2pa-not-allowed.jpg", "/e/xmp-prohibited.jpg",
             "/h/noai-and-usage-n.jpg"]
    off = dataclasses.replace(FAST, optout=OptOutConfig(headers=False, embedded=False))
    out = run(server, paths, off)
    assert reasons(out) == ["ok", "ok", "ok", "ok", "robots:x_robots_tag"]
    assert out[COL.OPTOUT_SIGNALS].to_pylist() == [["x_robots_tag:allow"]] * 4 + [["x_robots_tag:disallow"]]
    out = run(server, paths, dataclasses.replace(off, robots_disallow=()))
    assert reasons(out) == ["ok"] * 5 and out[COL.OPTOUT_SIGNALS].to_pylist() == [[]] * 5


def test_entries_of_the_optout_stage_are_kept_and_rows_not_fetched_untouched(server):
    before = [["robots_txt:allow", "tdmrep:allow"], ["robots_txt:disallow"], None]
    t = table_of([server.url(p) for p in ("/h/usage-n.jpg", "/h/usage-y.jpg", "/e/xmp-allowed.jpg")], before)
    t = t.set_column(t.column_names.index(COL.STATUS), COL.STATUS, pa.array(["ok", "robots", "ok"]))
    out, _ = download_stage(t, FAST, IMG)
    assert reasons(out) == ["robots:content_usage", "robots", "ok"]
    assert out[COL.OPTOUT_SIGNALS].to_pylist() == [
        ["robots_txt:allow", "tdmrep:allow", "x_robots_tag:allow", "tdm_header:allow", "content_usage:disallow"],
        ["robots_txt:disallow"], ALL_ALLOW]


def test_formats_without_a_parser_get_no_embedded_entry(server):
    buf = io.BytesIO()
    Image.fromarray(gradient(64, 48)).save(buf, "GIF")
    server.add("/e/plain.gif", buf.getvalue(), "image/gif")
    out = run(server, ["/e/plain.gif"])
    assert reasons(out) == ["ok"] and out[COL.OPTOUT_SIGNALS].to_pylist() == [HEADERS]


# ------------------------------------------------------------------ the parsers on their own

@pytest.mark.parametrize("value,disallows", [
    ("train-ai=n", True), ("train-ai=n, search=y", True), ("train-ai=y", False), ("search=n", False),
    ("train-ai=y, train-ai=n", True), ("train-ai=n, train-ai=y", False), ('train-ai=n;reason="x"', True),
    ("train-genai=n", True), ("bots=n", True), ("bots=n, train-ai=y", False), ("all=n", True),
    ('train-ai="n"', False),   # a string, not the token n: no preference
    ("Train-AI=n", False),       # keys are lower case: the whole field is malformed
    ("train-ai=n,", False),      # trailing comma: malformed
    ("train-ai=n search=y", False), ("ai=n, tdm=n", False), ("", False),
    ("x=(a b);p=1, train-ai=n", True), ("train-ai=?1, bots=n", True),
])
def test_content_usage_vocabulary(value, disallows):
    assert usage_disallows_training(parse_usage([value])) is disallows


def test_content_usage_lines_are_one_dictionary():
    assert usage_disallows_training(parse_usage(["search=y", "train-ai=n"]))
    assert not usage_disallows_training(parse_usage(["train-ai=n", "train-ai=y"]))


@pytest.mark.parametrize("res,pol,expected", [
    (["1"], [], True), ([" 1 "], [POLICY], False), (["1"], ["https://other"], True), (["0"], [], False),
    (["yes"], [], False), ([], [POLICY], False)])
def test_tdm_reservation_header(res, pol, expected):
    assert tdm_reserved(res, pol, (POLICY,)) is expected


def test_cbor_reader_reads_what_the_assertions_use():
    obj = {"entries": {"c2pa.ai_training": {"use": "notAllowed", "n": [1, -2, 300, 70000, 2**40]}},
           "flag": True, "none": None}
    assert emb.cbor_loads(cbor(obj)) == obj
    indefinite = b"\xbf" + cbor("a") + b"\x9f\x01\x02\xff" + cbor("s") + b"\x7f" + cbor("ab")[0:3] + b"\xff\xff"
    assert emb.cbor_loads(indefinite) == {"a": [1, 2], "s": "ab"}
    assert emb.cbor_loads(b"\xd8\x18" + cbor("tagged")) == "tagged"
    for bad in (b"\xa1", b"\x5a\xff\xff\xff\xff", b"\x9f" * 40, b"\x1c", b"\xbf\x80\x01\xff"):
        with pytest.raises(ValueError):
            emb.cbor_loads(bad)


def test_broken_metadata_is_no_signal_and_never_raises():
    store = c2pa_store(NOT_ALLOWED)
    body = jpeg_c2pa(store)
    for cut in range(0, len(body), 37):  # every truncation of the file, mid-segment and mid-box
        emb.embedded_signals(body[:cut])
    mangled = store.replace(b"\xa1\x67entries", b"\xa1\x67entriez")
    assert emb.c2pa_not_allowed(mangled) is None
    assert emb.c2pa_not_allowed(store[:-5]) is None  # the store's length now points past the end
    assert emb.embedded_signals(b"GIF89a" + b"\x00" * 20) == ((), None, None)


def test_scan_is_bounded():
    empty_chunks = png_chunk(b"tEXt", b"") * 200_000   # 2.4 MB of empty chunks before the XMP
    body = png_with([empty_chunks, png_chunk(b"iTXt", b"XML:com.adobe.xmp\x00\x00\x00\x00\x00"
                                             + xmp_packet(PLUS + "DMI-PROHIBITED"))])
    t0 = time.perf_counter()
    assert emb.embedded_signals(body) == (("c2pa:allow", "iptc:allow"), None, None)  # past MAX_SEGMENTS: unread
    assert time.perf_counter() - t0 < 0.5
    big = xmp_packet(PLUS + "DMI-PROHIBITED").replace(b"<x:xmpmeta", b" " * (emb.SCAN_MAX + 1) + b"<x:xmpmeta")
    assert emb.embedded_signals(png_xmp(big, compressed=False))[1] is None  # over SCAN_MAX: unread
    assert emb.embedded_signals(png_xmp(xmp_packet(PLUS + "DMI-PROHIBITED")))[1] == "iptc"
