"""Decode, filter, resize and encode: every mode to RGB, img2dataset resize semantics, pixel cap from the header."""
from __future__ import annotations

import dataclasses
import io
import time

import numpy as np
import pytest
from PIL import Image

from curate.config import ImageConfig
from curate import imageproc
from curate.imageproc import process_image, target_size
from curate.schema import Status
from tests import fault_server as fs


def decoded(res) -> Image.Image:
    assert res.status == Status.OK, (res.detail, res.message)
    im = Image.open(io.BytesIO(res.data))
    assert im.size == (res.width, res.height)
    return im


@pytest.mark.parametrize("mode,w,h,expected", [
    ("no", 300, 200, (300, 200)),
    ("keep_ratio", 300, 200, (384, 256)),
    ("keep_ratio", 200, 300, (256, 384)),
    ("keep_ratio", 100, 50, (512, 256)),          # upscales, as img2dataset does
    ("keep_ratio_largest", 300, 200, (256, 171)),
    ("keep_ratio_largest", 200, 400, (128, 256)),
    ("center_crop", 300, 200, (256, 256)),
    ("center_crop", 64, 100, (256, 256)),
    ("border", 300, 200, (256, 256)),
    ("border", 1000, 10, (256, 256)),
])
def test_resize_mode_output_sizes(mode, w, h, expected):
    res = process_image(fs.jpeg(w, h), ImageConfig(size=256, resize_mode=mode))
    assert decoded(res).size == expected
    assert (res.orig_width, res.orig_height) == (w, h)


def test_resize_only_if_bigger_never_upscales():
    cfg = ImageConfig(size=256, resize_mode="keep_ratio", resize_only_if_bigger=True)
    assert target_size(100, 50, cfg) == ((100, 50), None)
    assert target_size(600, 300, cfg) == ((512, 256), None)
    border = dataclasses.replace(cfg, resize_mode="border")
    assert target_size(100, 50, border) == ((100, 50), None)     # img2dataset: no padding either
    assert target_size(1000, 500, border) == ((256, 128), (256, 256))


def test_border_pads_white_and_center_crop_takes_the_middle():
    arr = np.zeros((100, 200, 3), np.uint8)
    arr[:, 50:150] = (0, 0, 255)                      # blue middle, black sides
    src = fs.encode(Image.fromarray(arr), "PNG")
    border = decoded(process_image(src, ImageConfig(size=64, resize_mode="border", format="png")))
    assert border.getpixel((32, 2)) == (255, 255, 255) and border.getpixel((32, 32)) == (0, 0, 255)
    crop = decoded(process_image(src, ImageConfig(size=64, resize_mode="center_crop", format="png")))
    assert crop.getpixel((2, 32)) == (0, 0, 255) and crop.getpixel((62, 32)) == (0, 0, 255)


@pytest.mark.parametrize("fmt,pil", [("jpg", "JPEG"), ("png", "PNG"), ("webp", "WEBP")])
def test_output_formats(fmt, pil):
    im = decoded(process_image(fs.png(90, 60), ImageConfig(size=32, format=fmt)))
    assert (im.format, im.mode) == (pil, "RGB")


def test_quality_changes_jpeg_size():
    src = fs.jpeg(400, 300)
    small = process_image(src, ImageConfig(size=256, quality=30)).data
    big = process_image(src, ImageConfig(size=256, quality=95)).data
    assert len(small) < len(big)


def test_source_kept_when_it_already_fits():
    src = fs.jpeg(341, 256)
    res = process_image(src, ImageConfig(size=256, resize_mode="keep_ratio"))
    assert res.data is src and (res.width, res.height) == (341, 256)
    assert process_image(src, ImageConfig(size=256, skip_reencode=False)).data is not src
    assert process_image(src, ImageConfig(size=256, format="webp")).data is not src
    png = fs.png(256, 256)
    assert process_image(png, ImageConfig(size=256, format="png")).data is png
    assert process_image(png, ImageConfig(size=256, format="jpg")).data is not png


def test_truncated_source_that_fits_is_still_refused():
    src = fs.jpeg(256, 256)[:1500]
    res = process_image(src, ImageConfig(size=256, resize_mode="no", format="jpg"))
    assert (res.status, res.detail) == (Status.DECODE_ERROR, "truncated")


def test_modes_to_rgb():
    cmyk = decoded(process_image(fs.cmyk_jpeg(), ImageConfig(resize_mode="no")))
    assert cmyk.mode == "RGB"
    rgba = decoded(process_image(fs.rgba_png(), ImageConfig(resize_mode="no", format="png")))
    assert rgba.getpixel((5, 5)) == (255, 255, 255)     # transparent -> white
    assert rgba.getpixel((50, 5)) == (255, 0, 0)
    p16 = decoded(process_image(fs.png16(), ImageConfig(resize_mode="no", format="png")))
    assert p16.getpixel((47, 31)) == (238, 238, 238)   # 16-bit scaled down, not clipped to 255
    gif = decoded(process_image(fs.animated_gif(), ImageConfig(resize_mode="no", format="png")))
    assert gif.getpixel((3, 3)) == (255, 0, 0)         # the first frame
    la = Image.new("LA", (20, 10), (0, 0))
    assert decoded(process_image(fs.encode(la, "PNG"), ImageConfig(resize_mode="no", format="png"))).getpixel(
        (1, 1)) == (255, 255, 255)
    pal = Image.new("P", (20, 10), 0)
    pal.info["transparency"] = 0
    assert decoded(process_image(fs.encode(pal, "PNG", transparency=0), ImageConfig(resize_mode="no", format="png"))
                   ).getpixel((1, 1)) == (255, 255, 255)
    one = Image.new("1", (20, 10), 1)
    assert decoded(process_image(fs.encode(one, "PNG"), ImageConfig(resize_mode="no", format="png"))).getpixel(
        (1, 1)) == (255, 255, 255)


def test_exif_orientation_is_applied():
    res = process_image(fs.exif_rotated_jpeg(), ImageConfig(size=20, resize_mode="keep_ratio"))
    assert (res.orig_width, res.orig_height) == (40, 80)
    assert decoded(res).size == (20, 40)


def test_draft_decode_matches_a_full_decode():
    src = fs.jpeg(2000, 1500, seed=5)
    fast = np.asarray(decoded(process_image(src, ImageConfig(size=256, format="png"))), np.float32)
    full = Image.open(io.BytesIO(src)).convert("RGB").resize((341, 256), Image.Resampling.LANCZOS)
    assert fast.shape == (256, 341, 3)
    assert np.abs(fast - np.asarray(full, np.float32)).mean() < 8


@pytest.mark.parametrize("cfg,status", [
    (ImageConfig(min_width=100), "too_small"), (ImageConfig(min_height=49), "too_small"),
    (ImageConfig(max_aspect_ratio=1.2), "bad_aspect"), (ImageConfig(max_pixels=64 * 48 - 1), "decode_error"),
    (ImageConfig(min_width=64, min_height=48, max_aspect_ratio=1.4), "ok")])
def test_filters_on_a_64x48_image(cfg, status):
    assert process_image(fs.jpeg(64, 48), cfg).status == status


def test_filters_use_the_oriented_size():
    # stored 80x40, displayed 40x80: a min_height of 60 passes only because the orientation is applied
    assert process_image(fs.exif_rotated_jpeg(), ImageConfig(min_height=60)).status == Status.OK


@pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")
def test_decompression_bomb_is_refused_from_the_header():
    t0 = time.monotonic()
    res = process_image(fs.bomb_png(), ImageConfig())
    assert (res.status, res.detail) == (Status.DECODE_ERROR, "too_many_pixels")
    assert time.monotonic() - t0 < 2   # 10^10 pixels were never allocated
    medium = fs.bomb_png(12_000, 12_000)  # under Pillow's own limit (2 x 89 M), over ours
    assert process_image(medium, ImageConfig(max_pixels=100_000_000)).detail == "too_many_pixels"


@pytest.mark.parametrize("body,detail", [(b"", "empty"), (b"<html>hi</html>", "unidentified"),
                                         (fs.jpeg(300, 300)[:800], "truncated")])
def test_undecodable_bodies(body, detail):
    res = process_image(body, ImageConfig())
    assert (res.status, res.detail, res.data) == (Status.DECODE_ERROR, detail, None)


def _modes() -> list[Image.Image]:
    rgba = Image.fromarray(np.dstack([fs.gradient(97, 61, 1), fs.gradient(97, 61, 2)[..., :1]]), "RGBA")
    pal = rgba.convert("RGB").convert("P")
    pal.info["transparency"] = 3
    floats = Image.fromarray(fs.gradient(97, 61, 3)[..., 0].astype(np.float32) * 3.5)  # F, max > 255
    return [rgba, rgba.convert("LA"), pal, floats, floats.convert("I"), Image.open(io.BytesIO(fs.png16())),
            rgba.convert("CMYK"), rgba.convert("L"), rgba.convert("1")]


@pytest.mark.parametrize("im", _modes(), ids=lambda im: im.mode)
def test_strip_conversion_equals_the_whole_image_conversion(im, monkeypatch):
    monkeypatch.setattr(imageproc, "_STRIP_PIXELS", 500)   # many strips, each a few rows
    whole = imageproc._to_rgb(im)
    w, h = im.size
    for target, f in (((w, h), 1), ((w // 4, h // 4), 2), ((w // 8, h // 8), 4)):
        strips = imageproc._to_rgb_reduced(im, target)
        expected = whole.reduce(f) if f > 1 else whole
        np.testing.assert_array_equal(np.asarray(strips), np.asarray(expected))


def test_large_wide_mode_image_goes_through_strips(monkeypatch):
    monkeypatch.setattr(imageproc, "_STRIP_PIXELS", 1000)
    src = fs.encode(_modes()[0], "PNG")
    direct = np.asarray(decoded(process_image(src, ImageConfig(size=32, format="png"))), np.float32)
    monkeypatch.setattr(imageproc, "_STRIP_PIXELS", 1 << 22)
    whole = np.asarray(decoded(process_image(src, ImageConfig(size=32, format="png"))), np.float32)
    assert direct.shape == whole.shape and np.abs(direct - whole).mean() < 3  # reduce + box vs one box resize


def test_png_exif_after_the_pixels_is_not_searched_by_decoding():
    # Pillow's PNG getexif() decodes every pixel to look for a late eXIf chunk: the caps ran after that
    res = process_image(fs.bomb_png(9_000, 9_000), ImageConfig(max_decoded_bytes=10**6))
    assert (res.status, res.detail) == (Status.DECODE_ERROR, "too_large_decoded")


def _markers(data: bytes) -> list[int]:
    """JPEG marker bytes outside the entropy-coded data (a small reader independent of curate.imagemeta)."""
    out, pos = [], 2
    while pos < len(data) - 1:
        marker = data[pos + 1]
        out.append(marker)
        if marker == 0xD9:
            break
        pos += 2 + int.from_bytes(data[pos + 2:pos + 4], "big")
        if marker == 0xDA:
            while not (data[pos] == 0xFF and data[pos + 1] not in (0x00, *range(0xD0, 0xD8))):
                pos += 1
    return out


@pytest.mark.parametrize("kw", [{}, {"progressive": True}, {"optimize": True, "restart_marker_rows": 1}])
def test_jpeg_surgery_keeps_every_scan(kw):
    from curate.imagemeta import strip_source
    src = fs.encode(Image.fromarray(fs.gradient(120, 90, 8)), "JPEG", quality=85, comment=b"c", **kw)
    out = strip_source(src + b"\x00tail", "JPEG", {})
    assert 0xFE not in _markers(out) and out.endswith(b"\xff\xd9")
    assert [m for m in _markers(src) if m != 0xFE] == _markers(out)
    np.testing.assert_array_equal(np.asarray(Image.open(io.BytesIO(out))), np.asarray(Image.open(io.BytesIO(src))))
    clean = strip_source(src, "JPEG", {})
    assert strip_source(clean, "JPEG", {}) is clean   # nothing left to strip: the same bytes object


def test_unusual_layouts_are_reencoded_not_guessed():
    from curate.imagemeta import strip_source
    assert strip_source(b"\xff\xd8\x00\x00junk", "JPEG", {}) is None
    assert strip_source(fs.jpeg(40, 30)[:-2], "JPEG", {}) is None    # no EOI: unknown end
    assert strip_source(b"\x89PNG\r\n\x1a\n" + b"\x00\x00\x00\x00ABCD\x00\x00\x00\x00", "PNG", {}) is None
    assert strip_source(fs.jpeg(40, 30), "GIF", {}) is None


def test_keep_metadata_is_validated():
    from curate.config import ConfigError, load_config
    assert load_config(overrides={"image.keep_metadata": "[icc, exif]"}).image.keep_metadata == ("icc", "exif")
    with pytest.raises(ConfigError, match=r"image.keep_metadata\[0\]: 'gps'"):
        load_config(overrides={"image.keep_metadata": "[gps]"})
