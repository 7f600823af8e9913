"""Batched 64-bit perceptual hashes (pHash, dHash) with imagehash's semantics and bit order, as uint64."""
from __future__ import annotations

import io

import numpy as np
import pyarrow as pa
import scipy.fftpack
from PIL import Image

from curate.config import DedupConfig
from curate.schema import COL, set_column

HASH_SIZE = 8                      # 8x8 bits = 64
PHASH_SIDE = HASH_SIZE * 4         # imagehash's highfreq_factor 4: a 32x32 grayscale image
FAST_SIDE = 2 * PHASH_SIDE         # fast path: shrink cheaply to >= 64 px before the exact 32 px LANCZOS
TRIM_TOL = 12                      # gray levels: how far a border line may stray from its colour (JPEG noise)
TRIM_FRACTION = 0.98               # share of a line's pixels that must be within TRIM_TOL to count as border
TRIM_MAX = 0.10                    # a uniform run reaching this share of a side is content (sky, page), not a frame
HASH_BATCH = 256                   # decoded images held at once by add_hashes (~50 MB at 256 px RGB)
LANCZOS = Image.Resampling.LANCZOS


def _bits_to_uint64(bits: np.ndarray) -> np.ndarray:
    """(N, 64) bools -> uint64, first bit most significant (imagehash's hex string order)."""
    packed = np.packbits(bits.reshape(len(bits), 64).astype(np.uint8), axis=1)  # big-endian within bytes
    return packed.view(">u8").reshape(-1).astype(np.uint64)


def phash_pixels(stack: np.ndarray) -> np.ndarray:
    """pHash of a (N, 32, 32) stack of grayscale pixels -> (N,) uint64.

    One 2-D DCT over the whole stack, done exactly as imagehash does it per image (scipy.fftpack, rows then
    columns), so the float values and hence the bits (ties at the median included) are the same."""
    if len(stack) == 0:
        return np.zeros(0, np.uint64)
    dct = scipy.fftpack.dct(scipy.fftpack.dct(np.asarray(stack), axis=1), axis=2)
    low = dct[:, :HASH_SIZE, :HASH_SIZE].reshape(len(stack), -1)
    med = np.median(low, axis=1, keepdims=True)
    return _bits_to_uint64(low > med)


def dhash_pixels(stack: np.ndarray) -> np.ndarray:
    """dHash of a (N, 8, 9) stack of grayscale pixels (rows, cols) -> (N,) uint64."""
    if len(stack) == 0:
        return np.zeros(0, np.uint64)
    stack = np.asarray(stack)
    return _bits_to_uint64(stack[:, :, 1:] > stack[:, :, :-1])


def _uniform(lines: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per line (row of `lines`): (is it uniform, its colour). Uniform: TRIM_FRACTION of its pixels lie within
    TRIM_TOL of its median colour, so JPEG ringing and a few specks do not break a frame."""
    ref = np.sort(lines, axis=1)[:, lines.shape[1] // 2].astype(np.int16)
    near = np.abs(lines.astype(np.int16) - ref[:, None]) <= TRIM_TOL
    return near.mean(axis=1) >= TRIM_FRACTION, ref


def _border_run(lines: np.ndarray, limit: int) -> int:
    """Number of leading lines (rows of `lines`) that are uniform in the colour of the first line; 0 when
    the run reaches `limit` (a long uniform run is content: sky, a page, not a frame)."""
    uniform, ref = _uniform(lines[:limit])
    run = uniform & (np.abs(ref - ref[0]) <= TRIM_TOL)
    return 0 if run.all() else int(np.argmin(run))


def trim_borders(gray: Image.Image) -> Image.Image:
    """Crops thin uniform frames (lines of one colour along a side, shorter than TRIM_MAX of it) off a
    grayscale ('L') image; returns the image itself when no edge line is uniform, so frameless images keep
    imagehash's bits."""
    a = np.asarray(gray)
    h, w = a.shape
    if h < 8 or w < 8:
        return gray
    if not (_uniform(a[[0, -1]])[0].any() or _uniform(a[:, [0, -1]].T)[0].any()):  # the common case, cheaply
        return gray
    lim_h, lim_w = max(1, int(h * TRIM_MAX)), max(1, int(w * TRIM_MAX))
    top, bottom = _border_run(a, lim_h), _border_run(a[::-1], lim_h)
    left, right = _border_run(a.T, lim_w), _border_run(a.T[::-1], lim_w)
    if top == bottom == left == right == 0:
        return gray
    return gray.crop((left, top, w - right, h - bottom))


def _gray(img: Image.Image, cfg: DedupConfig) -> Image.Image:
    """The grayscale image that gets hashed: optionally shrunk cheaply first (fast_hash), then trimmed."""
    gray = img.convert("L")
    if cfg.fast_hash:
        factor = min(gray.width, gray.height) // FAST_SIDE
        if factor >= 2:  # box shrink of one channel in C; LANCZOS over all pixels is most of imagehash's time
            gray = gray.reduce(factor)
    return trim_borders(gray) if cfg.trim_borders else gray


def hash_images(images: list[Image.Image], cfg: DedupConfig = DedupConfig(),
                dhash: bool = True) -> tuple[np.ndarray, np.ndarray | None]:
    """(phash, dhash) uint64 arrays for decoded PIL images (dhash None when not asked for).

    Per image only the C conversions/resizes run in Python's loop; bits come from one batched DCT/compare.
    With trim_borders off and fast_hash off both equal imagehash.phash / imagehash.dhash bit for bit."""
    p32 = np.empty((len(images), PHASH_SIDE, PHASH_SIDE), np.uint8)
    d98 = np.empty((len(images) if dhash else 0, HASH_SIZE, HASH_SIZE + 1), np.uint8)
    for i, img in enumerate(images):
        gray = _gray(img, cfg)
        p32[i] = np.asarray(gray.resize((PHASH_SIDE, PHASH_SIDE), LANCZOS))
        if dhash:
            d98[i] = np.asarray(gray.resize((HASH_SIZE + 1, HASH_SIZE), LANCZOS))
    return phash_pixels(p32), (dhash_pixels(d98) if dhash else None)


def _decode(data: bytes, cfg: DedupConfig) -> Image.Image | None:
    """Decodes stored image bytes; JPEG in draft mode (DCT-domain downscale) when fast_hash is on."""
    try:
        img = Image.open(io.BytesIO(data))
        if cfg.fast_hash and img.format == "JPEG":
            img.draft("L", (FAST_SIDE, FAST_SIDE))
        img.load()
        return img
    except Exception:  # decode boundary: the image stage already validated these bytes; a failure is a null hash
        return None


def add_hashes(table: pa.Table, cfg: DedupConfig = DedupConfig()) -> pa.Table:
    """Adds COL.PHASH and COL.DHASH (uint64) for rows with non-null COL.IMAGE bytes; null elsewhere
    (also where the bytes no longer decode). Works in chunks of HASH_BATCH decoded images to bound memory."""
    n = table.num_rows
    phash, dhash = np.zeros(n, np.uint64), np.zeros(n, np.uint64)
    valid = np.zeros(n, bool)
    column = table[COL.IMAGE] if COL.IMAGE in table.column_names else pa.nulls(n, pa.binary())
    for lo in range(0, n, HASH_BATCH):
        chunk = column.slice(lo, HASH_BATCH).to_pylist()
        decoded = [(lo + i, _decode(b, cfg)) for i, b in enumerate(chunk) if b is not None]
        rows = [i for i, img in decoded if img is not None]
        if rows:
            phash[rows], dhash[rows] = hash_images([img for _, img in decoded if img is not None], cfg)
            valid[rows] = True
    table = set_column(table, COL.PHASH, pa.array(phash, pa.uint64(), mask=~valid))
    return set_column(table, COL.DHASH, pa.array(dhash, pa.uint64(), mask=~valid))
