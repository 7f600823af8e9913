"""Hostile image bytes (issue 12): no Ghostscript or rare decoder runs, decoded-memory caps, no metadata or tails."""
from __future__ import annotations

import io
import json
import os
import shlex
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
from PIL import EpsImagePlugin, Image, ImageCms

from curate.config import ClipConfig, DedupConfig, DownloadConfig, ImageConfig
from curate.dedup.hashing import add_hashes
from curate.download import download_stage
from curate.imageproc import process_image
from curate.report.figures import thumbnail as _thumb
from curate.schema import COL, Status
from curate.train.data import decode_sample
from tests import fault_server as fs

REPO = Path(__file__).resolve().parents[1]
EPS = (b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 64 48\n%%EndComments\n"
       b"newpath 0 0 moveto 64 48 lineto stroke showpage\n%%EOF\n")
DL = DownloadConfig(timeout=2, deadline=5, retries=0, allow_private_networks=True)


def _pil_bytes(fmt: str, mode: str = "RGB", **kw) -> bytes:
    return fs.encode(Image.new(mode, (64, 48), 200), fmt, **kw)


@pytest.fixture
def fake_gs(tmp_path, monkeypatch) -> Path:
    """A stand-in `gs` first on PATH that only leaves a marker file: proof that Pillow tried Ghostscript."""
    marker, bindir = tmp_path / "gs-ran", tmp_path / "bin"
    bindir.mkdir()
    (bindir / "gs").write_text(f"#!/bin/sh\ntouch {shlex.quote(str(marker))}\nexit 0\n")
    (bindir / "gs").chmod(0o755)
    monkeypatch.setenv("PATH", f"{bindir}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setattr(EpsImagePlugin, "gs_binary", None)  # Pillow caches whether (and where) it found gs
    return marker


def _table(urls: list[str]) -> pa.Table:
    n = len(urls)
    return pa.table({COL.UID: [f"u{i}" for i in range(n)], COL.URL: urls, COL.CAPTION: ["c"] * n,
                     COL.STATUS: [Status.OK] * n, COL.REASON: pa.array([None] * n, pa.string())})


# ---------------------------------------------------------------- bug 1: only allowed formats are opened

def test_downloaded_eps_never_reaches_ghostscript(image_server, fake_gs):
    others = {"/x.ppm": _pil_bytes("PPM"), "/x.ico": _pil_bytes("ICO"), "/x.pcx": _pil_bytes("PCX"),
              "/x.sgi": _pil_bytes("SGI"), "/x.dds": _pil_bytes("DDS"), "/x.qoi": _pil_bytes("QOI")}
    urls = [image_server.add("/a.eps", EPS, "application/postscript"), image_server.add("/b.jpg", EPS),
            image_server.add("/c.pdf", _pil_bytes("PDF"), "application/pdf"),
            *(image_server.add(p, b, "image/x-anything") for p, b in others.items()),
            image_server.add("/ok.jpg", fs.jpeg(64, 48))]
    out, _ = download_stage(_table(urls), DL, ImageConfig(size=32))
    reasons = out[COL.REASON].to_pylist()
    assert not fake_gs.exists(), "Ghostscript was run on a downloaded body"
    assert reasons[:2] == ["decode_error:format"] * 2
    assert reasons[2] == "decode_error:unidentified"          # Pillow cannot read PDF at all
    assert reasons[3:-1] == ["decode_error:format"] * len(others)
    assert out[COL.STATUS].to_pylist()[-1] == Status.OK
    messages = out[COL.ERROR_MESSAGE].to_pylist()
    assert messages[0].startswith("EPS image") and messages[3].startswith("PPM image")  # names what it was


def test_eps_is_refused_by_every_other_opener(fake_gs, tmp_path):
    from curate.clip.scorer import PIXELS_OK, ClipPreprocess
    hashed = add_hashes(pa.table({COL.IMAGE: pa.array([EPS, fs.jpeg(64, 48)], pa.binary())}), DedupConfig())
    assert not fake_gs.exists(), "hashing ran Ghostscript"
    assert hashed[COL.PHASH].to_pylist()[0] is None and hashed[COL.PHASH].to_pylist()[1] is not None
    with pytest.raises(ValueError, match="image decode"):
        decode_sample({"jpg": EPS, "txt": b"a caption"})
    assert not fake_gs.exists(), "the trainer's decode ran Ghostscript"
    assert _thumb(EPS) is None
    assert not fake_gs.exists(), "the report's thumbnails ran Ghostscript"
    tiny = {"embed_dim": 8, "vision_cfg": {"image_size": 32, "layers": 1, "width": 16, "patch_size": 8,
                                           "head_width": 8},
            "text_cfg": {"context_length": 8, "vocab_size": 49408, "width": 16, "heads": 2, "layers": 1}}
    (tmp_path / "tiny-safety.json").write_text(json.dumps(tiny))
    pre = ClipPreprocess(ClipConfig(model=str(tmp_path / "tiny-safety.json"), device="cpu"))
    out = pre(pa.table({COL.UID: ["a", "b"], COL.IMAGE: pa.array([EPS, fs.jpeg(64, 48)], pa.binary()),
                        COL.CAPTION_CLEAN: ["x", "y"]}))
    assert not fake_gs.exists(), "CLIP preprocessing ran Ghostscript"
    assert out[PIXELS_OK].to_pylist() == [False, True]


@pytest.mark.parametrize("fmt,mode", [("JPEG", "RGB"), ("PNG", "RGBA"), ("WEBP", "RGB"), ("GIF", "P"),
                                      ("BMP", "RGB"), ("TIFF", "RGB"), ("MPO", "RGB")])
def test_allowed_formats_still_decode(fmt, mode):
    kw = {"save_all": True, "append_images": [Image.new(mode, (64, 48))]} if fmt == "MPO" else {}
    res = process_image(_pil_bytes(fmt, mode, **kw), ImageConfig(size=32))
    assert (res.status, res.width, res.height) == (Status.OK, 43, 32), res.message


# ---------------------------------------------------------------- decoded-size caps

def _png_rgba(path: Path, w: int, h: int) -> Path:
    """A valid w x h RGBA PNG written row by row (the raster never exists in this process): small on disk."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    def deflate(data: bytes) -> bytes:  # fully flushed raw deflate: no back-references, so it can be repeated
        z = zlib.compressobj(6, zlib.DEFLATED, -15)
        return z.compress(data) + z.flush(zlib.Z_FULL_FLUSH)
    row, block = b"\x00" + bytes([255, 0, 0, 128]) * w, 64   # filter byte + half-transparent red
    full, rest = divmod(h, block)
    adler = 1
    for _ in range(h):
        adler = zlib.adler32(row, adler)
    idat = (b"\x78\x9c" + deflate(row * block) * full + deflate(row * rest)
            + zlib.compressobj(6, zlib.DEFLATED, -15).flush() + struct.pack(">I", adler))
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 6, 0, 0, 0))
                     + chunk(b"IDAT", idat) + chunk(b"IEND", b""))
    return path


def _tiff_float(path: Path, w: int, h: int, rows: int = 80) -> Path:
    """A valid w x h float32 TIFF (deflate strips that all share one compressed block): small on disk."""
    assert h % rows == 0
    blob = zlib.compress(np.full((rows, w), 300.0, "<f4").tobytes(), 9)
    n = h // rows
    tags = [(256, 4, 1, w), (257, 4, 1, h), (258, 3, 1, 32), (259, 3, 1, 8), (262, 3, 1, 1),
            (273, 4, n, None), (277, 3, 1, 1), (278, 4, 1, rows), (279, 4, n, None), (339, 3, 1, 3)]
    ifd_end = 8 + 2 + 12 * len(tags) + 4
    offsets_at, counts_at, blob_at = ifd_end, ifd_end + 4 * n, ifd_end + 8 * n
    out = [b"II*\x00", struct.pack("<I", 8), struct.pack("<H", len(tags))]
    for tag, typ, count, value in tags:
        value = {273: offsets_at, 279: counts_at}.get(tag, value)
        out.append(struct.pack("<HHI", tag, typ, count) + (struct.pack("<HH", value, 0) if typ == 3 and count == 1
                                                            else struct.pack("<I", value)))
    out += [struct.pack("<I", 0), struct.pack(f"<{n}I", *[blob_at] * n), struct.pack(f"<{n}I", *[len(blob)] * n),
            blob]
    path.write_bytes(b"".join(out))
    return path


@pytest.fixture(scope="module")
def big_files(tmp_path_factory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("big")
    return {"rgba_at_cap": _png_rgba(d / "rgba10k.png", 10_000, 9_999),        # 99.99 MP, 400 MB as RGBA
            "float_at_cap": _tiff_float(d / "f10k.tif", 9_999, 10_000),        # 99.99 MP, 400 MB as float32
            "rgba_under": _png_rgba(d / "rgba8k.png", 8_000, 8_000),           # 256 MB: under the byte cap
            "float_under": _tiff_float(d / "f8k.tif", 8_000, 8_000)}


# peak RSS from VmHWM: getrusage's ru_maxrss would start at the forking pytest process's size
_MEASURE = """
import re, sys
from curate.config import ImageConfig
from curate.imageproc import process_image
def hwm_kb():
    return int(re.search(r"VmHWM:\\s+(\\d+) kB", open("/proc/self/status").read()).group(1))
data = open(sys.argv[1], "rb").read()
base = hwm_kb()
res = process_image(data, ImageConfig(size=256))
print(res.status, res.detail, res.width, res.height, (hwm_kb() - base) // 1024)
"""


def _measure(path: Path) -> tuple[str, str, int]:
    """(status, detail, peak MB above the baseline) of process_image on one file, in a fresh interpreter."""
    out = subprocess.run([sys.executable, "-c", _MEASURE, str(path)], cwd=REPO, capture_output=True, text=True,
                         timeout=600, check=True).stdout.split()
    return out[0], out[1], int(out[-1])


@pytest.mark.parametrize("name", ["rgba_at_cap", "float_at_cap"])
def test_wide_modes_at_the_pixel_cap_are_refused_from_the_header(big_files, name):
    status, detail, extra_mb = _measure(big_files[name])
    assert (status, detail) == (Status.DECODE_ERROR, "too_large_decoded")
    assert extra_mb < 100, f"{extra_mb} MB for an image refused from its header"


@pytest.mark.parametrize("name", ["rgba_under", "float_under"])
def test_conversion_of_a_large_image_stays_bounded(big_files, name):
    # 8000 x 8000 at 4 bytes/pixel is a 256 MB raster; the old RGBA composite / float32 scaling copied it 3-5x
    status, detail, extra_mb = _measure(big_files[name])
    assert (status, detail) == (Status.OK, "None")
    assert extra_mb < 400, f"peak {extra_mb} MB above the baseline for a 256 MB raster"


def test_byte_cap_counts_what_the_draft_decode_allocates():
    src = fs.encode(Image.fromarray(fs.gradient(2000, 1500)).convert("CMYK"), "JPEG", quality=80)  # 12 MB raster
    cfg = ImageConfig(size=128, max_decoded_bytes=4_000_000)
    assert process_image(src, cfg).status == Status.OK                      # decoded at 1/8 scale: 188 KB
    res = process_image(src, ImageConfig(resize_mode="no", max_decoded_bytes=4_000_000))
    assert (res.status, res.detail) == (Status.DECODE_ERROR, "too_large_decoded")
    assert "2000x1500 CMYK" in res.message


# ---------------------------------------------------------------- metadata that was not asked for

TAIL = b"<html>" + b"<p>tracking junk</p>" * 52_429 + b"</html>"   # ~1 MB after the image's end
SECRET_COMMENT = b"secret-comment-1234"


def _gps_exif(orientation: int | None = None) -> bytes:
    exif = Image.Exif()
    exif[0x010F] = "SecretCam"
    if orientation:
        exif[0x0112] = orientation
    exif.get_ifd(0x8825).update({1: "N", 2: (52.0, 31.0, 12.5), 3: "E", 4: (13.0, 24.0, 5.0)})
    return exif.tobytes()


def _hostile_jpeg(w: int = 96, h: int = 64) -> bytes:
    """EXIF with GPS, a comment, an APP13 Photoshop block, a malformed ICC profile and an HTML tail."""
    body = fs.encode(Image.fromarray(fs.gradient(w, h, 3)), "JPEG", quality=90, exif=_gps_exif(),
                     comment=SECRET_COMMENT, icc_profile=b"not-an-icc-profile" * 20)
    app13 = b"Photoshop 3.0\x008BIM\x04\x04\x00\x00\x00\x00\x00\x0csecret-iptc!"
    return body[:2] + b"\xff\xed" + struct.pack(">H", len(app13) + 2) + app13 + body[2:] + TAIL


def _assert_clean(data: bytes) -> None:
    for needle in (b"Exif\x00\x00", b"SecretCam", SECRET_COMMENT, b"Photoshop", b"8BIM", b"ICC_PROFILE",
                   b"not-an-icc", b"tracking junk", b"<html>"):
        assert needle not in data, needle
    im = Image.open(io.BytesIO(data))
    assert not {"icc_profile", "exif", "comment", "xmp", "photoshop"} & set(im.info), im.info.keys()
    assert len(im.getexif()) == 0


def test_kept_source_jpeg_is_stripped_losslessly():
    src = _hostile_jpeg()
    res = process_image(src, ImageConfig(size=64, resize_mode="keep_ratio", format="jpg"))
    assert res.status == Status.OK and (res.width, res.height) == (96, 64)
    _assert_clean(res.data)
    assert len(res.data) < len(src) - len(TAIL)
    same = np.asarray(Image.open(io.BytesIO(res.data)).convert("RGB"))
    np.testing.assert_array_equal(same, np.asarray(Image.open(io.BytesIO(src)).convert("RGB")))


@pytest.mark.parametrize("cfg", [ImageConfig(size=32), ImageConfig(size=64, skip_reencode=False),
                                 ImageConfig(size=64, format="png"), ImageConfig(size=64, format="webp")])
def test_reencoded_outputs_carry_no_metadata(cfg):
    res = process_image(_hostile_jpeg(), cfg)
    assert res.status == Status.OK
    _assert_clean(res.data)


def _png_with_junk() -> bytes:
    body = fs.encode(Image.fromarray(fs.gradient(96, 64, 4)), "PNG", icc_profile=b"broken-icc" * 30,
                     exif=_gps_exif(), pnginfo=_pnginfo())
    return body + TAIL


def _pnginfo():
    from PIL import PngImagePlugin
    info = PngImagePlugin.PngInfo()
    info.add_text("Comment", SECRET_COMMENT.decode())
    return info


def test_kept_source_png_and_webp_are_stripped_losslessly():
    png = _png_with_junk()
    res = process_image(png, ImageConfig(size=64, format="png"))
    assert res.data is not png and len(res.data) < len(png) - len(TAIL)
    _assert_clean(res.data)
    assert not {"Comment"} & set(Image.open(io.BytesIO(res.data)).info)
    np.testing.assert_array_equal(np.asarray(Image.open(io.BytesIO(res.data))), np.asarray(Image.open(io.BytesIO(png))))
    webp = fs.encode(Image.fromarray(fs.gradient(96, 64, 5)), "WEBP", quality=80, exif=_gps_exif(),
                     xmp=b"<x:xmpmeta>secret</x:xmpmeta>") + TAIL
    res = process_image(webp, ImageConfig(size=64, format="webp"))
    assert b"secret" not in res.data and len(res.data) < len(webp) - len(TAIL)
    _assert_clean(res.data)
    np.testing.assert_array_equal(np.asarray(Image.open(io.BytesIO(res.data))),
                                  np.asarray(Image.open(io.BytesIO(webp))))


def test_keep_metadata_keeps_only_valid_rgb_icc_and_exif_without_orientation():
    srgb = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
    good = fs.encode(Image.fromarray(fs.gradient(96, 64, 6)), "JPEG", icc_profile=srgb, exif=_gps_exif(6))
    for cfg in (ImageConfig(size=64, keep_metadata=("icc", "exif")),     # the kept source (rotated: re-encoded)
                ImageConfig(size=32, keep_metadata=("icc", "exif"), format="png")):
        res = process_image(good, cfg)
        out = Image.open(io.BytesIO(res.data))
        assert out.info.get("icc_profile") == srgb
        exif = out.getexif()
        assert exif.get(0x010F) == "SecretCam" and 0x0112 not in exif and exif.get_ifd(0x8825).get(1) == "N"
        assert out.height > out.width   # orientation 6 applied to the pixels, not left to the reader
    upright = fs.encode(Image.fromarray(fs.gradient(96, 64, 6)), "JPEG", icc_profile=srgb, exif=_gps_exif())
    res = process_image(upright + TAIL, ImageConfig(size=64, keep_metadata=("icc",)))   # kept source
    out = Image.open(io.BytesIO(res.data))
    assert out.info.get("icc_profile") == srgb and len(out.getexif()) == 0 and TAIL not in res.data
    res = process_image(upright + TAIL, ImageConfig(size=64, keep_metadata=("exif",)))
    out = Image.open(io.BytesIO(res.data))
    assert "icc_profile" not in out.info and out.getexif().get_ifd(0x8825).get(3) == "E"
    np.testing.assert_array_equal(np.asarray(out), np.asarray(Image.open(io.BytesIO(upright))))
    cmyk_icc = process_image(_hostile_jpeg(), ImageConfig(size=64, keep_metadata=("icc",)))
    _assert_clean(cmyk_icc.data)   # a malformed profile is dropped even when icc is kept
