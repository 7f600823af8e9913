"""Image metadata: the kinds image.keep_metadata keeps, validated; kept source bytes stripped losslessly.

A source image whose pixels already fit is stored as its own bytes (image.skip_reencode); those bytes may carry
EXIF with GPS positions, comments, XMP, Photoshop blocks, broken ICC profiles and any amount of data after the
image's end. `strip_source` rewrites the container without touching the compressed pixels: JPEG segments,
PNG chunks and WebP chunks other than the image data are dropped, then the kept metadata is written back.
"""
from __future__ import annotations

import io
import re
import struct
import zlib

from PIL import Image

_EXIF_PREFIX = b"Exif\x00\x00"
_ICC_TAG = b"ICC_PROFILE\x00"
_JPEG_SEGMENT_MAX = 65533         # payload bytes of one JPEG marker segment (the length field counts itself)
_ICC_CHUNK = _JPEG_SEGMENT_MAX - len(_ICC_TAG) - 2   # ICC bytes per APP2 segment (+ sequence number and count)
# a marker inside entropy-coded data: 0xFF then neither a stuffed zero, a restart marker nor a fill byte
_JPEG_MARKER = re.compile(rb"\xff[^\x00\xd0-\xd7\xff]")
_JPEG_STANDALONE = frozenset({0x01, *range(0xD0, 0xD8)})  # markers without a length field
_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_PNG_KEEP = frozenset({b"IHDR", b"IDAT", b"IEND"})         # the image itself; every ancillary chunk goes
_WEBP_IMAGE = frozenset({b"VP8 ", b"VP8L"})
_WEBP_REFUSE = frozenset({b"ALPH", b"ANIM", b"ANMF"})     # would change the pixels: re-encode instead


def kept_metadata(im: Image.Image, keep: tuple[str, ...]) -> dict[str, bytes]:
    """Encoder arguments (icc_profile, exif) for the kept kinds that `im` carries and that are valid.

    icc: kept only when ImageCms parses it and it describes RGB (the output is always RGB).
    exif: re-serialised by Pillow without the orientation tag (the pixels are stored upright).
    """
    out: dict[str, bytes] = {}
    if "icc" in keep and (icc := im.info.get("icc_profile")) and _is_rgb_icc(icc):
        out["icc_profile"] = icc
    if "exif" in keep and (exif := _exif_bytes(im)):
        out["exif"] = exif
    return out


def header_exif(im: Image.Image) -> Image.Exif:
    """im's EXIF without decoding pixels: Pillow's PNG getexif() decodes the whole image to look for an eXIf
    chunk after the pixel data (before any size check could run), so a PNG has EXIF only from its header."""
    if im.format == "PNG" and "exif" not in im.info:
        return Image.Exif()
    return im.getexif()


def _is_rgb_icc(icc: bytes) -> bool:
    from PIL import ImageCms
    try:
        return ImageCms.ImageCmsProfile(io.BytesIO(icc)).profile.xcolor_space.strip() == "RGB"
    except Exception:  # noqa: BLE001 - any parse failure means a profile we will not store
        return False


def _exif_bytes(im: Image.Image) -> bytes | None:
    try:
        exif = header_exif(im)
        exif.pop(0x0112, None)  # orientation: already applied to the pixels
        data = exif.tobytes() if len(exif) else b""
    except Exception:  # noqa: BLE001 - a broken EXIF block is dropped, not stored
        return None
    if not data:
        return None
    return data if data.startswith(_EXIF_PREFIX) else _EXIF_PREFIX + data


def strip_source(body: bytes, fmt: str | None, meta: dict[str, bytes]) -> bytes | None:
    """`body` without metadata, trailing bytes or unknown segments, plus `meta` (from kept_metadata).

    `body` itself when nothing changes; None when its layout is not one this rewriter is sure about
    (the caller then re-encodes the decoded pixels). The compressed image data is copied, never decoded.
    """
    strip = {"JPEG": _strip_jpeg, "PNG": _strip_png, "WEBP": _strip_webp}.get(fmt or "")
    try:
        return strip(body, meta) if strip else None
    except (IndexError, struct.error):  # a length field that points past the end
        return None


def _join(body: bytes, parts: list[bytes], same: bool) -> bytes:
    return body if same else b"".join(parts)


def _jpeg_meta_segments(meta: dict[str, bytes]) -> list[bytes]:
    out = []
    exif = meta.get("exif")
    if exif and len(exif) <= _JPEG_SEGMENT_MAX:
        out.append(b"\xff\xe1" + struct.pack(">H", len(exif) + 2) + exif)
    icc = meta.get("icc_profile")
    if icc:
        chunks = [icc[i:i + _ICC_CHUNK] for i in range(0, len(icc), _ICC_CHUNK)]
        if len(chunks) < 256:
            for k, c in enumerate(chunks, 1):
                payload = _ICC_TAG + bytes([k, len(chunks)]) + c
                out.append(b"\xff\xe2" + struct.pack(">H", len(payload) + 2) + payload)
    return out


def _keep_jpeg_app(marker: int, seg: bytes) -> bool:
    """APP0 JFIF without a thumbnail and APP14 Adobe (its colour-transform flag decides how the pixels
    decode) are kept when they have their standard length; every other APPn and COM segment goes."""
    if marker == 0xE0:
        return len(seg) == 18 and seg[4:9] == b"JFIF\x00" and seg[16:18] == b"\x00\x00"
    return marker == 0xEE and len(seg) == 16 and seg[4:9] == b"Adobe"


def _strip_jpeg(body: bytes, meta: dict[str, bytes]) -> bytes | None:
    """SOI, then every table/frame/scan segment and the entropy-coded data up to EOI; nothing after EOI."""
    if body[:2] != b"\xff\xd8":
        return None
    inserted = _jpeg_meta_segments(meta)
    parts, pos, same = [body[:2]], 2, not inserted
    while True:
        start = pos
        while body[pos] == 0xFF and body[pos + 1] == 0xFF:  # fill bytes before a marker
            pos += 1
        if body[pos] != 0xFF:
            return None
        marker = body[pos + 1]
        if marker == 0xD9:  # EOI: the image ends here, whatever follows
            parts.append(body[pos:pos + 2])
            return _join(body, parts, same and start == pos and pos + 2 == len(body))
        if marker in _JPEG_STANDALONE:
            parts.append(body[pos:pos + 2])
            pos += 2
            continue
        (length,) = struct.unpack_from(">H", body, pos + 2)
        end = pos + 2 + length
        if length < 2 or end > len(body):
            return None
        seg = body[pos:end]
        if 0xE0 <= marker <= 0xEF or marker == 0xFE:
            if _keep_jpeg_app(marker, seg):
                parts.append(seg)
            else:
                same = False
        else:
            if inserted:  # kept metadata goes after the leading APP0/APP14, before the first table
                parts.extend(inserted)
                inserted = []
            parts.append(seg)
        same = same and start == pos
        pos = end
        if marker == 0xDA:  # SOS: entropy-coded data runs to the next real marker
            m = _JPEG_MARKER.search(body, pos)
            if m is None:
                return None
            parts.append(body[pos:m.start()])
            pos = m.start()


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def _strip_png(body: bytes, meta: dict[str, bytes]) -> bytes | None:
    """IHDR, IDAT and IEND (plus iCCP/eXIf from `meta` after IHDR); nothing after IEND."""
    if body[:8] != _PNG_SIGNATURE:
        return None
    parts, pos, same = [body[:8]], 8, not meta
    while pos + 8 <= len(body):
        (length,), kind = struct.unpack_from(">I", body, pos), body[pos + 4:pos + 8]
        end = pos + 12 + length
        if end > len(body):
            return None
        if kind in _PNG_KEEP:
            parts.append(body[pos:end])
        elif kind[0] & 0x20 == 0 and kind != b"PLTE":  # unknown critical chunk (PLTE of RGB: a suggestion)
            return None
        else:
            same = False
        if kind == b"IHDR":
            if icc := meta.get("icc_profile"):
                parts.append(_png_chunk(b"iCCP", b"icc\x00\x00" + zlib.compress(icc)))
            if exif := meta.get("exif"):
                parts.append(_png_chunk(b"eXIf", exif.removeprefix(_EXIF_PREFIX)))
        pos = end
        if kind == b"IEND":
            return _join(body, parts, same and pos == len(body))
    return None


def _strip_webp(body: bytes, meta: dict[str, bytes]) -> bytes | None:
    """The simple (lossy VP8 or lossless VP8L) file of the one image chunk; nothing after the RIFF end.
    Kept metadata needs the extended layout: None, the caller re-encodes."""
    if body[:4] != b"RIFF" or body[8:12] != b"WEBP" or meta:
        return None
    (riff_size,) = struct.unpack_from("<I", body, 4)
    riff_end = min(len(body), 8 + riff_size)
    image, pos, n_chunks = None, 12, 0
    while pos + 8 <= riff_end:
        kind, (length,) = body[pos:pos + 4], struct.unpack_from("<I", body, pos + 4)
        end = pos + 8 + length + (length & 1)
        if kind in _WEBP_REFUSE or end > len(body):
            return None
        if kind in _WEBP_IMAGE:
            if image is not None:
                return None
            image = body[pos:end]
        n_chunks += 1
        pos = end
    if image is None:
        return None
    same = n_chunks == 1 and pos == len(body) == 8 + riff_size
    return _join(body, [b"RIFF", struct.pack("<I", 4 + len(image)), b"WEBP", image], same)
