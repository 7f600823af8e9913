"""Opt-out signals inside the image bytes: C2PA training-mining assertions and IPTC/XMP plus:DataMining, from the
metadata segments only (JPEG, PNG, WebP), never the pixels.

What is read, per container (the same segments curate/imagemeta.py walks when it strips them):
  JPEG  APP1 "http://ns.adobe.com/xap/1.0/" (and extended XMP) up to the first scan; APP11 JPEG XT boxes ("JP",
        box instance, sequence number: the packets of one JUMBF box are joined in sequence order)
  PNG   iTXt "XML:com.adobe.xmp" (inflated up to INFLATE_MAX), caBX (a JUMBF box), every chunk up to IEND
  WebP  the top-level "XMP " and "C2PA" chunks
At most SCAN_MAX bytes of metadata and MAX_SEGMENTS segments are looked at per image; beyond that the rest is not
read (a signal there is not seen). C2PA manifests are parsed for their assertions only: no signature, hash or
certificate is validated, so a stripped or forged manifest counts as what it says (an opt-out is honoured
whoever wrote it; a claim of permission is only the absence of one).
"""
from __future__ import annotations

import json
import re
import struct
import zlib

from curate.imagemeta import _JPEG_STANDALONE, _PNG_SIGNATURE  # the container walkers' constants, once

C2PA, IPTC = "c2pa", "iptc"
SCAN_MAX = 4 * 1024 * 1024   # bytes of metadata payload (XMP + JUMBF) examined per image
MAX_SEGMENTS = 4096          # segments / chunks / boxes walked per image (a file of empty chunks stops here)
INFLATE_MAX = 1024 * 1024    # bytes a compressed PNG iTXt XMP packet may inflate to
CBOR_MAX_ITEMS = 10_000      # CBOR data items decoded per assertion
CBOR_MAX_DEPTH = 16
_XMP_JPEG = b"http://ns.adobe.com/xap/1.0/\x00"
_XMP_JPEG_EXT = b"http://ns.adobe.com/xmp/extension/\x00"   # + GUID(32) + full length(4) + offset(4) + data
_XMP_PNG = b"XML:com.adobe.xmp\x00"
# plus:DataMining (PLUS LDF, IPTC Photo Metadata 2023.1). Every DMI-PROHIBITED* value means no use by curate:
#   DMI-PROHIBITED                              all data mining: curate mines and builds training sets
#   -AIMLTRAINING                               AI/ML training: what the set is for
#   -GENAIMLTRAINING                            generative training: curate cannot promise its sets never train a
#                                               generative model (CLIP-style sets do, as their text encoders)
#   -EXCEPTSEARCHENGINEINDEXING                 all but search indexing, which curate is not
#   -SEECONSTRAINT / -SEEEMBEDDEDRIGHTSEXPR /   prohibited, with terms in another property no machine can check
#   -SEELINKEDRIGHTSEXPR                          here: prohibited stands
# DMI-ALLOWED and DMI-UNSPECIFIED are no opt-out.
_PLUS_NS = b"ns.useplus.org/ldf/xmp/1.0/"
_DATA_MINING = re.compile(rb":DataMining(?:\s*=\s*[\"']|\s*>\s*|[^<>]{0,200}?rdf:resource\s*=\s*[\"'])([^\"'<]{0,300})")
# C2PA training-and-data-mining assertion (C2PA 1.x: c2pa.*; its CAWG successor: cawg.*); labels may carry a
# version and a multiple-instance suffix. Entries that say "notAllowed" for a use curate makes of the image:
# training (ai_training, ai_generative_training as above), data mining, and ai_inference: curate runs every
# kept image through CLIP. "constrained" (allowed on human-readable terms) is not an opt-out.
_TDM_LABEL = re.compile(r"(c2pa|cawg)\.training-mining(\.v\d+)?(__\d+)?")
_TDM_USES = frozenset({"ai_training", "ai_generative_training", "data_mining", "ai_inference"})


def embedded_signals(body: bytes) -> tuple[tuple[str, ...], str | None, str | None]:
    """(evidence entries, deciding signal or None, message) for the original bytes of one image.

    No entries when the container is not JPEG, PNG or WebP (nothing was checked); else `c2pa:<outcome>` and
    `iptc:<outcome>`, C2PA deciding first when both opt out.
    """
    found = _metadata(body)
    if found is None:
        return (), None, None
    xmp, jumbf = found
    c2pa_why = next((w for box in jumbf if (w := c2pa_not_allowed(box))), None)
    iptc_why = next((w for packet in xmp if (w := xmp_prohibited(packet))), None)
    entries = (f"{C2PA}:{'disallow' if c2pa_why else 'allow'}", f"{IPTC}:{'disallow' if iptc_why else 'allow'}")
    if c2pa_why:
        return entries, C2PA, c2pa_why
    if iptc_why:
        return entries, IPTC, iptc_why
    return entries, None, None


def xmp_prohibited(packet: bytes) -> str | None:
    """The plus:DataMining value when an XMP packet prohibits data mining (see _DATA_MINING notes), else None."""
    if b"DataMining" not in packet or _PLUS_NS not in packet:
        return None
    for m in _DATA_MINING.finditer(packet):
        value = m.group(1).strip()
        if value.rsplit(b"/", 1)[-1].upper().startswith(b"DMI-PROHIBITED"):
            return "XMP plus:DataMining " + value.decode("ascii", "replace")
    return None


class _Budget:
    """Counts segments and metadata bytes against MAX_SEGMENTS / SCAN_MAX for one image."""
    __slots__ = ("segments", "bytes")

    def __init__(self):
        self.segments, self.bytes = 0, 0

    def step(self) -> bool:
        self.segments += 1
        return self.segments <= MAX_SEGMENTS

    def take(self, n: int) -> bool:
        self.bytes += n
        return self.bytes <= SCAN_MAX


def _metadata(body: bytes) -> tuple[list[bytes], list[bytes]] | None:
    """(XMP packets, JUMBF boxes) of a JPEG, PNG or WebP; None for other containers."""
    walk = (_jpeg if body[:2] == b"\xff\xd8" else _png if body[:8] == _PNG_SIGNATURE
            else _webp if body[:4] == b"RIFF" and body[8:12] == b"WEBP" else None)
    if walk is None:
        return None
    xmp: list[bytes] = []
    jumbf: list[bytes] = []
    try:
        walk(body, xmp, jumbf, _Budget())
    except (IndexError, struct.error):  # a length field past the end: what was read so far counts
        pass
    return xmp, jumbf


def _jpeg(body: bytes, xmp: list[bytes], jumbf: list[bytes], budget: _Budget) -> None:
    """APP1 XMP and APP11 JUMBF segments before the first scan (the metadata of a JPEG comes first)."""
    pos, ext, jp = 2, [], {}
    while budget.step() and pos + 4 <= len(body) and body[pos] == 0xFF:
        marker = body[pos + 1]
        if marker == 0xFF or marker in _JPEG_STANDALONE:  # a fill byte, or a marker without a length
            pos += 1 if marker == 0xFF else 2
            continue
        if marker in (0xD9, 0xDA):  # EOI, SOS: no metadata segment is read past the first scan
            break
        (length,) = struct.unpack_from(">H", body, pos + 2)
        seg, pos = body[pos + 4:pos + 2 + length], pos + 2 + length
        if marker == 0xE1 and seg.startswith(_XMP_JPEG) and budget.take(len(seg)):
            xmp.append(seg[len(_XMP_JPEG):])
        elif marker == 0xE1 and seg.startswith(_XMP_JPEG_EXT) and budget.take(len(seg)):
            start = len(_XMP_JPEG_EXT) + 40
            ext.append((struct.unpack_from(">I", seg, start - 4)[0], seg[start:]))
        elif marker == 0xEB and seg[:2] == b"JP" and len(seg) >= 16 and budget.take(len(seg)):
            en, z = struct.unpack_from(">HI", seg, 2)
            jp.setdefault(en, []).append((z, seg[8:]))
    if ext:
        xmp.append(b"".join(data for _, data in sorted(ext)))
    jumbf.extend(_join_jpeg_xt(packets) for packets in jp.values())


def _join_jpeg_xt(packets: list[tuple[int, bytes]]) -> bytes:
    """One JUMBF box from its APP11 packets: the first whole, later ones without the repeated box header."""
    packets.sort(key=lambda p: p[0])
    parts = [packets[0][1]]
    for _, data in packets[1:]:
        header = 16 if struct.unpack_from(">I", data)[0] == 1 else 8  # LBox + TBox (+ XLBox)
        parts.append(data[header:])
    return b"".join(parts)


def _png(body: bytes, xmp: list[bytes], jumbf: list[bytes], budget: _Budget) -> None:
    """iTXt XMP and caBX chunks, up to IEND."""
    pos = 8
    while budget.step() and pos + 8 <= len(body):
        (length,), kind = struct.unpack_from(">I", body, pos), body[pos + 4:pos + 8]
        start, pos = pos + 8, pos + 12 + length  # the data is sliced only when read: IDAT is never copied
        if kind == b"IEND":
            break
        if kind == b"caBX" and budget.take(length):
            jumbf.append(body[start:start + length])
        elif (kind == b"iTXt" and body.startswith(_XMP_PNG, start) and budget.take(length)
              and (packet := _itxt_text(body[start + len(_XMP_PNG):start + length])) is not None):
            xmp.append(packet)


def _itxt_text(rest: bytes) -> bytes | None:
    """The text of an iTXt chunk after its keyword: flag, method, language\\0, translated keyword\\0, text."""
    compressed = rest[:1] == b"\x01"
    parts = rest[2:].split(b"\x00", 2)
    if len(parts) < 3:
        return None
    if not compressed:
        return parts[2]
    d = zlib.decompressobj()
    try:
        out = d.decompress(parts[2], INFLATE_MAX)
    except zlib.error:
        return None
    return out


def _webp(body: bytes, xmp: list[bytes], jumbf: list[bytes], budget: _Budget) -> None:
    """The top-level "XMP " and "C2PA" chunks of the RIFF container."""
    (riff_size,) = struct.unpack_from("<I", body, 4)
    end, pos = min(len(body), 8 + riff_size), 12
    while budget.step() and pos + 8 <= end:
        kind, (length,) = body[pos:pos + 4], struct.unpack_from("<I", body, pos + 4)
        start, pos = pos + 8, pos + 8 + length + (length & 1)
        if kind in (b"XMP ", b"C2PA") and budget.take(length):
            (xmp if kind == b"XMP " else jumbf).append(body[start:start + length])


# ------------------------------------------------------------------ C2PA (JUMBF boxes, ISO/IEC 19566-5)

def c2pa_not_allowed(data: bytes) -> str | None:
    """'<label>: <entry> notAllowed' when a training-mining assertion in these JUMBF boxes opts out, else None.

    Every manifest in the store is looked at (the active one and those of ingredients: a restriction on a
    source carries to what was made from it). Unparseable assertions are skipped.
    """
    if b"training-mining" not in data:  # the common case: no such assertion, nothing to parse
        return None
    budget = _Budget()
    stack = [(list(_boxes(data, 0, len(data), budget)), 0)]
    while stack:
        boxes, depth = stack.pop()
        for kind, s, e in boxes:
            if kind != b"jumb" or depth > 8:
                continue
            children = list(_boxes(data, s, e, budget))
            label = _jumd_label(data, children)
            if label is not None and _TDM_LABEL.fullmatch(label):
                why = _assertion_not_allowed(data, children)
                if why:
                    return f"C2PA {label}: {why}"
            else:
                stack.append((children, depth + 1))
    return None


def _boxes(data: bytes, start: int, end: int, budget: _Budget):
    """(type, payload start, payload end) of the boxes in data[start:end]; stops at a malformed one."""
    pos = start
    while pos + 8 <= end and budget.step():
        lbox, kind = struct.unpack_from(">I4s", data, pos)
        header = 8
        if lbox == 1:
            if pos + 16 > end:
                return
            (lbox,), header = struct.unpack_from(">Q", data, pos + 8), 16
        elif lbox == 0:  # to the end of the enclosing box
            lbox = end - pos
        if lbox < header or pos + lbox > end:
            return
        yield kind, pos + header, pos + lbox
        pos += lbox


def _jumd_label(data: bytes, children: list) -> str | None:
    """The label of a JUMBF superbox: its first child is the description box (type UUID, toggles, label)."""
    if not children or children[0][0] != b"jumd":
        return None
    _, s, e = children[0]
    if e - s < 17 or not data[s + 16] & 0x02:  # toggles bit 1: a label follows
        return None
    raw = data[s + 17:e].split(b"\x00", 1)[0]
    return raw.decode("utf-8", "replace")


def _assertion_not_allowed(data: bytes, children: list) -> str | None:
    """The first entry of a training-mining assertion's content box (CBOR or JSON) that says notAllowed."""
    for kind, s, e in children[1:]:
        try:
            if kind == b"cbor":
                obj = cbor_loads(data[s:e])
            elif kind == b"json":
                obj = json.loads(data[s:e])
            else:
                continue
        except (ValueError, RecursionError):  # malformed: not a statement we can read
            continue
        entries = obj.get("entries") if isinstance(obj, dict) else None
        for name, entry in (entries.items() if isinstance(entries, dict) else ()):
            if (isinstance(name, str) and name.rsplit(".", 1)[-1] in _TDM_USES and isinstance(entry, dict)
                    and entry.get("use") == "notAllowed"):
                return f"{name} notAllowed"
    return None


# ------------------------------------------------------------------ a minimal CBOR reader (RFC 8949)

def cbor_loads(data: bytes) -> object:
    """The first CBOR data item of `data` (ints, strings, arrays, maps, tags (dropped), simple values, floats);
    ValueError when malformed or past CBOR_MAX_ITEMS / CBOR_MAX_DEPTH. Enough for a C2PA assertion; no more."""
    try:
        return _cbor_item(data, 0, 0, [CBOR_MAX_ITEMS])[0]
    except (IndexError, struct.error, UnicodeDecodeError) as e:
        raise ValueError(f"malformed CBOR: {e}") from e


def _cbor_arg(data: bytes, pos: int, info: int) -> tuple[int | None, int]:
    if info < 24:
        return info, pos
    if 24 <= info <= 27:
        size = 1 << (info - 24)
        if pos + size > len(data):
            raise ValueError("CBOR argument past the end")
        return int.from_bytes(data[pos:pos + size], "big"), pos + size
    if info == 31:
        return None, pos  # indefinite length
    raise ValueError(f"CBOR reserved additional information {info}")


def _cbor_item(data: bytes, pos: int, depth: int, budget: list[int]) -> tuple[object, int]:
    budget[0] -= 1
    if budget[0] < 0 or depth > CBOR_MAX_DEPTH:
        raise ValueError("CBOR item too deep or too many items")
    major, info = data[pos] >> 5, data[pos] & 31
    if major == 7:
        return _cbor_simple(data, pos + 1, info)
    arg, pos = _cbor_arg(data, pos + 1, info)
    if major in (0, 1):
        if arg is None:
            raise ValueError("CBOR indefinite integer")
        return (arg if major == 0 else -1 - arg), pos
    if major in (2, 3):
        return _cbor_string(data, pos, arg, major, depth, budget)
    if major == 6:
        return _cbor_item(data, pos, depth + 1, budget)  # the tag's meaning is not needed here
    out: list | dict = [] if major == 4 else {}
    count = 0
    while (data[pos] != 0xFF) if arg is None else count < arg:
        value, pos = _cbor_item(data, pos, depth + 1, budget)
        if major == 5:
            if isinstance(value, (list, dict)):
                raise ValueError("CBOR map key is a container")
            out[value], pos = _cbor_item(data, pos, depth + 1, budget)
        else:
            out.append(value)
        count += 1
    return out, pos + 1 if arg is None else pos


def _cbor_string(data: bytes, pos: int, arg, major: int, depth: int, budget: list[int]) -> tuple[object, int]:
    if arg is None:  # indefinite: definite chunks of the same type up to a break
        chunks = []
        while data[pos] != 0xFF:
            chunk, pos = _cbor_item(data, pos, depth + 1, budget)
            if not isinstance(chunk, (bytes, str)):
                raise ValueError("CBOR string chunk of another type")
            chunks.append(chunk.encode() if isinstance(chunk, str) else chunk)
        raw, pos = b"".join(chunks), pos + 1
    else:
        if pos + arg > len(data):
            raise ValueError("CBOR string past the end")
        raw, pos = data[pos:pos + arg], pos + arg
    return (raw.decode("utf-8") if major == 3 else bytes(raw)), pos


def _cbor_simple(data: bytes, pos: int, info: int) -> tuple[object, int]:
    if info in (20, 21, 22, 23):
        return {20: False, 21: True}.get(info), pos
    if info == 24:
        return None, pos + 1
    if info in (25, 26, 27):
        fmt, size = {25: (">e", 2), 26: (">f", 4), 27: (">d", 8)}[info]
        return struct.unpack_from(fmt, data, pos)[0], pos + size
    if info < 20:
        return None, pos
    raise ValueError(f"CBOR unexpected simple value {info}")
