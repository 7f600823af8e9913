"""Tests for batched perceptual hashing: bit-exact with imagehash, trimming, add_hashes on encoded bytes."""
from __future__ import annotations

import io

import imagehash
import numpy as np
import pyarrow as pa
import pytest
from PIL import Image, ImageOps

from curate.config import DedupConfig
from curate.dedup import hashing
from curate.dedup.hashing import add_hashes, hash_images, trim_borders
from curate.schema import COL
from tests.photos import photo_crops

EXACT = DedupConfig(trim_borders=False, fast_hash=False)
FAST = DedupConfig(trim_borders=False, fast_hash=True)


def _images() -> list[Image.Image]:
    import skimage.data

    rng = np.random.default_rng(0)
    out = []
    for name in ("astronaut", "coffee", "chelsea", "rocket", "camera", "coins", "moon", "page"):
        photo = Image.fromarray(getattr(skimage.data, name)())
        out += [photo.resize((s, max(1, photo.height * s // photo.width))) for s in (256, 173, 40)]
    # uniform images: every AC coefficient ties at the median, so float noise decides the bits
    out += [Image.new("RGB", (90, 70), (5, 5, 5)), Image.new("L", (64, 64), 200),
            Image.new("RGBA", (33, 41), (1, 2, 3, 4)),
            Image.fromarray(rng.integers(0, 256, (50, 70, 3), dtype=np.uint8)), Image.new("P", (20, 20), 3)]
    return out


def _ih(fn, images) -> np.ndarray:
    return np.array([int(str(fn(im)), 16) for im in images], np.uint64)


def test_bit_exact_with_imagehash():
    images = _images()
    phash, dhash = hash_images(images, EXACT)
    assert phash.dtype == np.uint64
    assert np.array_equal(phash, _ih(imagehash.phash, images))
    assert np.array_equal(dhash, _ih(imagehash.dhash, images))


def _photo_crops(n: int) -> list[Image.Image]:
    """n RGB crops of scikit-image's photos, 200-256 px wide: the benchmark's kind of decoded image."""
    return photo_crops(n, ("astronaut", "coffee", "chelsea", "rocket", "camera", "coins"), seed=1)


def test_fast_hash_is_close_to_imagehash_on_photos():
    images = _photo_crops(60)
    phash, dhash = hash_images(images, FAST)
    dist = np.bitwise_count(phash ^ _ih(imagehash.phash, images))
    ddist = np.bitwise_count(dhash ^ _ih(imagehash.dhash, images))
    # measured here 1.6 / 1.1 bits; benchmark (2,000 crops) 1.86 / 1.54; unrelated images are ~32 bits apart
    assert dist.mean() <= 3 and dist.max() <= 14, dist
    assert ddist.mean() <= 3 and ddist.max() <= 14, ddist


def test_fast_samples_are_pils_nearest_resize_in_every_mode():
    photo = _photo_crops(1)[0]
    images = [im for im in _images() if min(im.size) >= 64]
    images += [photo.convert(mode) for mode in ("L", "P", "RGBA", "CMYK", "LA")]  # 21: a partial canvas line
    gray = hashing._samples(images, FAST)
    assert gray.shape == (len(images), hashing.FAST_GRID[1], hashing.FAST_GRID[0])
    for img, sample in zip(images, gray):
        assert np.array_equal(sample, np.asarray(img.resize(hashing.FAST_GRID, Image.Resampling.NEAREST).convert("L")))


@pytest.mark.parametrize("n_in,n_out", [(96, 32), (64, 32), (96, 9), (64, 8), (20, 32)])
def test_lanczos_matrix_matches_pil(n_in, n_out):
    lines = np.random.default_rng(0).integers(0, 256, (16, n_in), dtype=np.uint8)
    pil = np.asarray(Image.fromarray(lines).resize((n_out, 16), Image.Resampling.LANCZOS)).astype(float)
    ours = np.clip(lines @ hashing._lanczos(n_in, n_out).T, 0, 255)
    assert np.abs(pil - ours).max() < 0.6  # PIL rounds its 8-bit output; nothing else may differ


def test_fast_hash_small_images_use_all_pixels_and_flat_images_hash_alike():
    small = [im.resize((im.width * 45 // 100, im.height * 45 // 100)) for im in _photo_crops(12)]  # ~100 px
    assert all(im.width * im.height <= hashing.FAST_FULL_PIXELS for im in small)
    phash, dhash = hash_images(small, FAST)
    assert np.bitwise_count(phash ^ _ih(imagehash.phash, small)).mean() <= 1  # measured 0.5: no sampling loss
    assert np.bitwise_count(dhash ^ _ih(imagehash.dhash, small)).mean() <= 1
    for v in (0, 128):  # through both paths, at any size
        flat = [Image.new("RGB", size, (v, v, v)) for size in ((20, 20), (100, 127), (256, 200), (33, 1000))]
        assert len(set(hash_images(flat + [Image.new("L", (640, 480), v)], FAST)[0].tolist())) == 1


def test_fast_hash_trims_frames():
    photos = _photo_crops(6)
    trim = DedupConfig(fast_hash=True)
    assert np.array_equal(hash_images(photos, trim)[0], hash_images(photos, FAST)[0])  # frameless: untouched
    framed = [ImageOps.expand(im, border=12, fill=255) for im in photos]
    with_trim = np.bitwise_count(hash_images(photos, trim)[0] ^ hash_images(framed, trim)[0])
    without = np.bitwise_count(hash_images(photos, FAST)[0] ^ hash_images(framed, FAST)[0])
    assert with_trim.mean() <= 3 and with_trim.mean() < without.mean(), (with_trim, without)
    half_black = Image.new("RGB", (200, 200))
    half_black.paste((128, 128, 128), (0, 0, 200, 100))  # a long uniform run is content: the sample stays
    assert hash_images([half_black], trim)[0] == hash_images([half_black], FAST)[0]


def test_trim_borders_removes_a_thin_frame_only():
    import skimage.data

    gray = Image.fromarray(skimage.data.astronaut()).resize((200, 200)).convert("L")
    framed = ImageOps.expand(gray, border=4, fill=255)
    assert trim_borders(framed).size == (200, 200)
    assert trim_borders(gray) is gray                     # no uniform edge: untouched, bits stay exact
    half_black = Image.new("L", (100, 100), 0)
    half_black.paste(128, (0, 0, 100, 50))
    assert trim_borders(half_black).size == (100, 100)    # a uniform run this long is content, not a frame
    h = hash_images([gray, framed], DedupConfig(fast_hash=False))[0]
    h_plain = hash_images([gray, framed], EXACT)[0]
    assert np.bitwise_count(h[0] ^ h[1]) < np.bitwise_count(h_plain[0] ^ h_plain[1])


def _encode(img: Image.Image, fmt: str) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt)
    return buf.getvalue()


@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "WEBP"])
def test_add_hashes_on_encoded_bytes(fmt, monkeypatch):
    monkeypatch.setattr(hashing, "HASH_BATCH", 4)  # chunk boundaries fall inside the table
    images = [im.convert("RGB") for im in _images()[:4]]
    blobs = [_encode(im, fmt) for im in images]
    table = pa.table({COL.UID: ["a", "b", "c", "d", "e", "f"],
                      COL.IMAGE: pa.array(blobs[:2] + [None, b"not an image"] + blobs[2:], pa.binary())})
    out = add_hashes(table, EXACT)
    assert out.schema.field(COL.PHASH).type == pa.uint64() and out.schema.field(COL.DHASH).type == pa.uint64()
    decoded = [Image.open(io.BytesIO(b)) for b in blobs]
    want = _ih(imagehash.phash, decoded).tolist()
    assert out[COL.PHASH].to_pylist() == want[:2] + [None, None] + want[2:]
    assert out[COL.DHASH].to_pylist()[2:4] == [None, None]
    grids = out[COL.RGB_GRID].to_pylist()
    assert grids[2:4] == [None, None] and all(len(g) == 48 for g in grids[:2] + grids[4:])
    details = out[COL.DETAIL].to_pylist()
    assert details[2:4] == [None, None] and all(d > 1 for d in details[:2] + details[4:]), details


def test_detail_parts_plain_images_from_photos_on_either_hashing_path():
    # the AC energy of the low DCT that pHash thresholds, in gray levels: a plain colour with JPEG and pixel
    # noise stays far under dedup.plain_detail (0.5) at any size, a smooth gradient and photo crops far over
    rng = np.random.default_rng(1)
    plain = [Image.fromarray(np.clip(np.array(c, np.float32) + rng.normal(0, 3, (h, w, 1)), 0, 255).astype(np.uint8))
             for c, (w, h) in (((200, 40, 40), (64, 48)), ((30, 30, 30), (256, 200)), ((250, 250, 240), (900, 700)))]
    ramp = Image.fromarray(np.tile(np.linspace(60, 200, 128, dtype=np.uint8), (96, 1))).convert("RGB")
    images = plain + [ramp] + [im.convert("RGB") for im in _photo_crops(3)]
    table = pa.table({COL.IMAGE: pa.array([_encode(im, "JPEG") for im in images], pa.binary())})
    for fast in (True, False):
        detail = add_hashes(table, DedupConfig(fast_hash=fast))[COL.DETAIL].to_pylist()
        assert max(detail[:3]) < DedupConfig().plain_detail and min(detail[3:]) > 5, (fast, detail)


def test_rgb_grid_is_the_colour_inside_the_frame_on_either_hashing_path():
    # the 4x4 colour thumbnail from the stored bytes: a JPEG's draft decode (YCbCr) and the full decode agree
    # to JPEG noise; a thin frame (which the hashes trim) is trimmed from it too; a grey image is grey
    photo = _photo_crops(1)[0].convert("RGB")
    plain, framed = _encode(photo, "JPEG"), _encode(ImageOps.expand(photo, border=6, fill=(255, 255, 255)), "JPEG")
    grey = _encode(photo.convert("L"), "JPEG")
    table = pa.table({COL.IMAGE: pa.array([plain, framed, grey], pa.binary())})
    fast, exact = (np.frombuffer(b"".join(add_hashes(table, DedupConfig(fast_hash=f))[COL.RGB_GRID].to_pylist()),
                                 np.uint8).reshape(3, 16, 3).astype(int) for f in (True, False))
    want = np.asarray(photo.resize((4, 4), Image.Resampling.BOX), int).reshape(16, 3)
    for got in (fast, exact):
        assert np.abs(got[0] - want).max() <= 6 and np.abs(got[1] - want).max() <= 12, (got[:2], want)
        assert (got[2] == got[2][:, :1]).all()  # r = g = b
    assert np.abs(ImageOps.expand(photo, border=6, fill=(255, 255, 255)).resize((4, 4), Image.Resampling.BOX)
                  .getpixel((0, 0))[0] - want[0, 0]) > 12  # untrimmed, the corner cell would move further


def test_add_hashes_fast_path_and_empty():
    photos = _photo_crops(12)
    blobs = [_encode(im, "JPEG") for im in photos] + [_encode(_images()[2].convert("RGB"), "JPEG")]  # + a 40 px one
    table = pa.table({COL.IMAGE: pa.array(blobs, pa.binary())})
    exact = np.array(add_hashes(table, EXACT)[COL.PHASH].to_pylist(), np.uint64)
    fast = add_hashes(table, FAST)
    assert fast[COL.PHASH].null_count == 0 and fast[COL.DHASH].null_count == 0
    dist = np.bitwise_count(exact ^ np.array(fast[COL.PHASH].to_pylist(), np.uint64))
    assert dist.mean() <= 1.5 and dist.max() <= 8, dist  # draft decode, all its pixels: measured 1.0 (bench 0.9)
    framed = [_encode(ImageOps.expand(im, border=12, fill=255), "JPEG") for im in photos]
    both = add_hashes(pa.table({COL.IMAGE: pa.array(blobs[:12] + framed, pa.binary())}), DedupConfig(fast_hash=True))
    h = np.array(both[COL.PHASH].to_pylist(), np.uint64)
    assert np.bitwise_count(h[:12] ^ h[12:]).mean() <= 2  # trimming works on the bytes path (untrimmed: ~17)
    empty = add_hashes(pa.table({COL.IMAGE: pa.array([], pa.binary())}), DedupConfig())
    assert empty.num_rows == 0 and empty[COL.PHASH].type == pa.uint64()
