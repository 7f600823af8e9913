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

EXACT = DedupConfig(trim_borders=False)


def _images() -> list[Image.Image]:
    import skimage.data

    rng = np.random.default_rng(0)
    out = []
    for name in ("astronaut", "coffee", "chelsea", "rocket", "camera", "coins", "moon", "page"):
        photo = Image.fromarray(getattr(skimage.data, name)())
        out += [photo.resize((s, max(1, photo.height * s // photo.width))) for s in (256, 173, 40)]
    # uniform images: every AC coefficient ties at the median, so float noise decides the bits
    out += [Image.new("RGB", (90, 70), (5, 5, 5)), Image.new("L", (64, 64), 200), Image.new("RGBA", (33, 41), (1, 2, 3, 4)),
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


def test_fast_hash_is_close_to_imagehash():
    images = _images()[:24]
    fast, _ = hash_images(images, DedupConfig(trim_borders=False, fast_hash=True))
    dist = np.bitwise_count(fast ^ _ih(imagehash.phash, images))
    assert dist.mean() <= 2 and dist.max() <= 8, dist


def test_trim_borders_removes_a_thin_frame_only():
    import skimage.data

    gray = Image.fromarray(skimage.data.astronaut()).resize((200, 200)).convert("L")
    framed = ImageOps.expand(gray, border=4, fill=255)
    assert trim_borders(framed).size == (200, 200)
    assert trim_borders(gray) is gray                     # no uniform edge: untouched, bits stay exact
    half_black = Image.new("L", (100, 100), 0)
    half_black.paste(128, (0, 0, 100, 50))
    assert trim_borders(half_black).size == (100, 100)    # a uniform run this long is content, not a frame
    h = hash_images([gray, framed], DedupConfig())[0]
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


def test_add_hashes_fast_path_and_empty():
    blobs = [_encode(im.convert("RGB"), "JPEG") for im in _images()[:6]]
    table = pa.table({COL.IMAGE: pa.array(blobs, pa.binary())})
    exact = np.array(add_hashes(table, EXACT)[COL.PHASH].to_pylist(), np.uint64)
    fast = np.array(add_hashes(table, DedupConfig(trim_borders=False, fast_hash=True))[COL.PHASH].to_pylist(), np.uint64)
    assert np.bitwise_count(exact ^ fast).max() <= 8
    empty = add_hashes(pa.table({COL.IMAGE: pa.array([], pa.binary())}), DedupConfig())
    assert empty.num_rows == 0 and empty[COL.PHASH].type == pa.uint64()
