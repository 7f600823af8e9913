"""Batched 64-bit perceptual hashes (pHash, dHash) with imagehash's semantics and bit order, as uint64."""
from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import pyarrow as pa
from PIL import Image

from curate.config import DedupConfig
from curate.imageproc import open_image
from curate.schema import COL, set_column
from curate.stage import StageStats

HASH_SIZE = 8                      # 8x8 bits = 64
PHASH_SIDE = HASH_SIZE * 4         # imagehash's highfreq_factor 4: a 32x32 grayscale image
FAST_GRID = (96, 64)               # fast path: (columns, rows) nearest-sampled per image; rows cost memory reads,
                                   # more columns in the same rows come almost free and cut aliasing
FAST_FULL_PIXELS = 128 * 128       # fast path: images this small use all their pixels (as fast as sampling)
FAST_DRAFT = 64                    # fast path: JPEG bytes decode in draft mode (DCT scaling) to at least this side
FAST_BATCH = 256                   # images per fast-path batch (one 96x64 RGB canvas cell each, ~6 MB in all)
FLAT_EPS = 1e-5                    # fast path: DCT terms below this share of the DC term count as 0 (float noise)
CANVAS_COLUMNS = 16                # fast-path samples side by side on one canvas line
TRIM_TOL = 12                      # gray levels: how far a border line may stray from its colour (JPEG noise)
TRIM_FRACTION = 0.98               # share of a line's pixels that must be within TRIM_TOL to count as border
TRIM_MAX = 0.10                    # a uniform run reaching this share of a side is content (sky, page), not a frame
HASH_BATCH = 256                   # decoded images held at once by add_hashes (~50 MB at 256 px RGB)
GRID = 4                           # rgb_grid: cells per side of the colour thumbnail (GRID * GRID * 3 bytes)
GRID_BYTES = GRID * GRID * 3       # rgb_grid: its length
DC_SCALE = 4 * PHASH_SIDE * PHASH_SIDE  # the low DCT's DC term is this x the mean gray (scipy's unnormalised DCT-II)
LANCZOS = Image.Resampling.LANCZOS
NEAREST = Image.Resampling.NEAREST


def _bits_to_uint64(bits: np.ndarray) -> np.ndarray:
    """(N, 64) bools -> uint64, first bit most significant (imagehash's hex string order)."""
    packed = np.packbits(bits.reshape(len(bits), 64).astype(np.uint8), axis=1)  # big-endian within bytes
    return packed.view(">u8").reshape(-1).astype(np.uint64)


def _low_dct(stack: np.ndarray) -> np.ndarray:
    """(N, 64) low 8x8 DCT of a (N, 32, 32) stack of grayscale pixels, computed exactly as imagehash does it per
    image (scipy.fftpack, rows then columns), so the float values (ties at the median included) are the same."""
    import scipy.fftpack  # the exact path only: ~28 MB of RSS that a worker on the default fast path never needs

    cols = scipy.fftpack.dct(np.asarray(stack), axis=1)[:, :HASH_SIZE]  # the row transforms need 8 rows only
    return scipy.fftpack.dct(cols, axis=2)[:, :, :HASH_SIZE].reshape(len(stack), -1)


def phash_pixels(stack: np.ndarray) -> np.ndarray:
    """pHash of a (N, 32, 32) stack of grayscale pixels -> (N,) uint64, bit for bit imagehash's."""
    if len(stack) == 0:
        return np.zeros(0, np.uint64)
    return _phash_bits(_low_dct(stack))


def _phash_bits(low: np.ndarray) -> np.ndarray:
    """(N,) uint64 pHashes from (N, 64) low DCTs: the bits above each row's median."""
    return _bits_to_uint64(low > np.median(low, axis=1, keepdims=True))


def detail(low: np.ndarray) -> np.ndarray:
    """(N,) float32 from (N, 64) low DCTs: the root sum of squares of the 63 AC terms over DC_SCALE, i.e. how
    much the image's coarse (8x8) structure varies, in gray levels. A plain image scores well under 1, a
    photo tens: below dedup.plain_detail an image is plain, its pHash and dHash are its noise, and dedup
    matches it by colour instead (curate/dedup/cluster.py)."""
    return (np.sqrt(np.square(low[:, 1:], dtype=np.float64).sum(axis=1)) / DC_SCALE).astype(np.float32)


def dhash_pixels(stack: np.ndarray) -> np.ndarray:
    """dHash of a (N, 8, 9) stack of grayscale pixels (rows, cols) -> (N,) uint64."""
    if len(stack) == 0:
        return np.zeros(0, np.uint64)
    stack = np.asarray(stack)
    return _bits_to_uint64(stack[:, :, 1:] > stack[:, :, :-1])


def _uniform(lines: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per line (row of `lines`): (is it uniform, its colour). Uniform: TRIM_FRACTION of its pixels lie within
    TRIM_TOL of its median colour, so JPEG ringing and a few specks do not break a frame."""
    mid = lines.shape[1] // 2
    ref = np.partition(lines, mid, axis=1)[:, mid].astype(np.int16)
    near = np.abs(lines.astype(np.int16) - ref[:, None]) <= TRIM_TOL
    return near.mean(axis=1) >= TRIM_FRACTION, ref


def _border_run(lines: np.ndarray, limit: int) -> int:
    """Number of leading lines (rows of `lines`) that are uniform in the colour of the first line; 0 when
    the run reaches `limit` (a long uniform run is content: sky, a page, not a frame)."""
    uniform, ref = _uniform(lines[:limit])
    run = uniform & (np.abs(ref - ref[0]) <= TRIM_TOL)
    return 0 if run.all() else int(np.argmin(run))


def _frame(a: np.ndarray) -> tuple[int, int, int, int]:
    """(top, bottom, left, right): how many lines of a 2-D gray array are a thin uniform frame on each side
    (lines of one colour, shorter than TRIM_MAX of the side); all 0 when there is none."""
    h, w = a.shape
    if h < 8 or w < 8:
        return 0, 0, 0, 0
    if not (_uniform(a[[0, -1]])[0].any() or _uniform(a[:, [0, -1]].T)[0].any()):  # the common case, cheaply
        return 0, 0, 0, 0
    lim_h, lim_w = max(1, int(h * TRIM_MAX)), max(1, int(w * TRIM_MAX))
    return _border_run(a, lim_h), _border_run(a[::-1], lim_h), _border_run(a.T, lim_w), _border_run(a.T[::-1], lim_w)


def trim_borders(gray: Image.Image) -> Image.Image:
    """Crops thin uniform frames off a grayscale ('L') image (see _frame); returns the image itself when there
    is none, so frameless images keep imagehash's bits."""
    top, bottom, left, right = _frame(np.asarray(gray))
    if top == bottom == left == right == 0:
        return gray
    return gray.crop((left, top, gray.width - right, gray.height - bottom))


def _gray(img: Image.Image, cfg: DedupConfig) -> Image.Image:
    """The grayscale image that the exact path hashes: imagehash's convert('L'), optionally trimmed."""
    gray = img.convert("L")
    return trim_borders(gray) if cfg.trim_borders else gray


def hash_images(images: list[Image.Image], cfg: DedupConfig = DedupConfig(),
                dhash: bool = True) -> tuple[np.ndarray, np.ndarray | None]:
    """(phash, dhash) uint64 arrays for decoded PIL images (dhash None when not asked for). _hash_features
    gives their detail too.

    Exact (fast_hash off): per image only PIL's convert('L') and LANCZOS resizes run in Python's loop, bits
    come from one batched DCT; with trim_borders off too, both equal imagehash.phash / imagehash.dhash bit for
    bit. About 1.3-1.6x imagehash.phash: PIL's LANCZOS over every pixel, which exactness needs, is most of it.

    Fast (fast_hash on, see _fast_hashes): not bit-exact. Measured (tests/bench/results/dedup.json, 2,000
    decoded ~256 px photo crops, shared 2-core machine): 12.5x imagehash.phash for pHash alone (14x in an
    earlier run), 26x imagehash phash+dhash, about 10x with trim_borders on; pHash 1.86 bits from imagehash's
    on average (max 14, 43% identical), dHash 1.54. From stored JPEG bytes (add_hashes, draft decode, all
    pixels of the small decode): 0.89 bits from decode + imagehash.phash, 1.8x its speed (decode-bound).
    Near-duplicate F1 at k=8 on tests/test_cluster.py's photo set: clusters 0.983 from bytes, as exact
    (pairwise 0.976, exact 0.967); pairwise 0.920 from decoded images, where sampling aliases."""
    return _hash_features(images, cfg, dhash)[:2]


def _hash_features(images: list[Image.Image], cfg: DedupConfig,
                   dhash: bool = True) -> tuple[np.ndarray, np.ndarray | None, np.ndarray]:
    """(phash, dhash, detail) for decoded PIL images: hash_images' hashes and the detail of the same low DCT."""
    if cfg.fast_hash:
        return _fast_hashes(images, cfg, dhash)
    p32 = np.empty((len(images), PHASH_SIDE, PHASH_SIDE), np.uint8)
    d98 = np.empty((len(images) if dhash else 0, HASH_SIZE, HASH_SIZE + 1), np.uint8)
    for i, img in enumerate(images):
        gray = _gray(img, cfg)
        p32[i] = np.asarray(gray.resize((PHASH_SIDE, PHASH_SIDE), LANCZOS))
        if dhash:
            d98[i] = np.asarray(gray.resize((HASH_SIZE + 1, HASH_SIZE), LANCZOS))
    low = _low_dct(p32) if len(images) else np.zeros((0, HASH_SIZE * HASH_SIZE))
    return _phash_bits(low), (dhash_pixels(d98) if dhash else None), detail(low)


@functools.lru_cache(maxsize=1024)
def _lanczos(n_in: int, n_out: int) -> np.ndarray:
    """(n_out, n_in) matrix of PIL's LANCZOS resize along one axis (Resample.c precompute_coeffs, in floats)."""
    scale = n_in / n_out
    fscale = max(scale, 1.0)
    support = 3.0 * fscale
    m = np.zeros((n_out, n_in))
    for i in range(n_out):
        center = (i + 0.5) * scale
        lo, hi = max(int(center - support + 0.5), 0), min(int(center + support + 0.5), n_in)
        x = (np.arange(lo, hi) - center + 0.5) / fscale
        w = np.where((x >= -3) & (x < 3), np.sinc(x) * np.sinc(x / 3), 0.0)
        m[i, lo:hi] = w / w.sum()
    return m


@functools.lru_cache(maxsize=1024)
def _axis_operators(n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """For an axis of n pixels, float32: (8, n) low DCT rows of its 32 px LANCZOS resize (pHash), and its 8 px
    and 9 px LANCZOS resizes (dHash rows and columns). The resize and the DCT are linear, so for a gray image
    G (rows, cols): P[rows] @ G @ P[cols].T is the 8x8 low DCT of its 32x32 resize, D8[rows] @ G @ D9[cols].T
    its 9x8 resize."""
    k = np.arange(PHASH_SIDE)
    dct8 = 2 * np.cos(np.pi * np.arange(HASH_SIZE)[:, None] * (2 * k + 1) / (2 * PHASH_SIDE))  # scipy's DCT-II
    ops = dct8 @ _lanczos(n, PHASH_SIDE), _lanczos(n, HASH_SIZE), _lanczos(n, HASH_SIZE + 1)
    return tuple(op.astype(np.float32) for op in ops)


def _edge_uniform(gray: np.ndarray) -> np.ndarray:
    """(N,) bools: is any of the 4 edge lines of each (N, rows, cols) gray sample uniform (trim candidates)."""
    n = len(gray)
    rows = _uniform(np.concatenate([gray[:, 0], gray[:, -1]]))[0].reshape(2, n)
    cols = _uniform(np.concatenate([gray[:, :, 0], gray[:, :, -1]]))[0].reshape(2, n)
    return rows.any(axis=0) | cols.any(axis=0)


def _pixels(gray: Image.Image) -> np.ndarray:
    """The bytes of an 'L' image as a flat uint8 array: a zero-copy Arrow view where Pillow offers one (11.2+,
    single-block images), else tobytes (which costs as much as the RGB -> L conversion of the canvas)."""
    try:
        flat = np.asarray(pa.array(gray).buffers()[1]).view(np.uint8)
        if len(flat) == gray.width * gray.height:
            return flat
    except (TypeError, ValueError, AttributeError, pa.ArrowException):
        pass
    return np.frombuffer(gray.tobytes(), np.uint8)


def _samples(images: list[Image.Image], cfg: DedupConfig) -> np.ndarray:
    """(N, rows, cols) uint8 gray nearest-neighbour samples (FAST_GRID) of the images, trimmed like the exact
    path where the sample shows a frame. Values are PIL's convert('L') of the sampled pixels."""
    cols, rows = FAST_GRID
    per_line = CANVAS_COLUMNS
    n_lines = -(-len(images) // per_line)
    canvas = Image.new("RGB", (cols * per_line, rows * n_lines))  # wide lines: tobytes' cost is per line
    core = canvas.im
    for i, img in enumerate(images):
        if img.mode == "RGB":  # ImagingCore calls: the Image wrappers would cost as much again
            img.load()
            small = img.im.resize(FAST_GRID, NEAREST, (0, 0) + img.size)  # reads `rows` lines only
        else:  # L -> RGB -> L gives the same gray back; other modes reach L as in imagehash
            small = img.resize(FAST_GRID, NEAREST).convert("L").convert("RGB").im
        x, y = i % per_line * cols, i // per_line * rows
        core.paste(small, (x, y, x + cols, y + rows))
    gray = _pixels(canvas.convert("L")).reshape(n_lines, rows, per_line, cols)
    gray = gray.transpose(0, 2, 1, 3).reshape(-1, rows, cols)[:len(images)].copy()
    if cfg.trim_borders:
        _trim_samples(images, gray)
    return gray


def _trim_samples(images: list[Image.Image], gray: np.ndarray) -> None:
    """Re-samples, in place, the images whose sample shows a frame (_frame on the sample) from their exactly
    trimmed full image, as the exact path would trim it. Frames are rare, so the full-size work is too. A
    frame thinner than the sampling step was never sampled, so it cannot sway the hash anyway."""
    for i in np.flatnonzero(_edge_uniform(gray)):
        if _frame(gray[i]) == (0, 0, 0, 0):
            continue  # a uniform edge that runs too long is content (sky, a page), as in the exact path
        full = images[i].convert("L")
        trimmed = trim_borders(full)
        if trimmed is not full:
            gray[i] = np.asarray(trimmed.resize(FAST_GRID, NEAREST))


def _fast_hashes(images: list[Image.Image], cfg: DedupConfig,
                 dhash: bool) -> tuple[np.ndarray, np.ndarray | None, np.ndarray]:
    """Fast, not bit-exact hashes. Small images (up to FAST_FULL_PIXELS, or a side under FAST_GRID's rows:
    what a JPEG draft decode gives) use all their pixels (_full_features). Larger ones are nearest-sampled
    on FAST_GRID (_sample_features): one PIL call that reads 64 of their lines, since reading every pixel, as
    any area filter must, costs more than the whole 10x budget; the loss is aliasing from the unread pixels.
    Either way the 32 px LANCZOS, the DCT and the 9x8 dHash resize run as small matrix products. Returns
    (phash, dhash, detail)."""
    low, d98 = _fast_features(images, cfg)
    flat = low.reshape(len(images), -1)
    flat[np.abs(flat) <= FLAT_EPS * np.abs(flat[:, :1])] = 0  # a flat image's AC terms are float noise: zero them,
    phash = _phash_bits(flat)  # so flat images hash alike at any size
    # dHash pixels rounded like PIL's 8-bit output, so flat areas tie (bit 0) as in imagehash
    return phash, (dhash_pixels(np.floor(d98 + 0.5)) if dhash else None), detail(flat)


def _fast_features(images: list[Image.Image], cfg: DedupConfig) -> tuple[np.ndarray, np.ndarray]:
    """(low DCT (N, 8, 8), 9x8 resize (N, 8, 9)) of the fast path: _full_features for small images,
    _sample_features for the others (see _fast_hashes)."""
    n = len(images)
    sizes = [img.size for img in images]
    full = np.array([w * h <= FAST_FULL_PIXELS or min(w, h) < FAST_GRID[1] for w, h in sizes], bool)
    low = np.empty((n, HASH_SIZE, HASH_SIZE), np.float32)
    d98 = np.empty((n, HASH_SIZE, HASH_SIZE + 1), np.float32)
    idx = np.flatnonzero(full)
    if len(idx):
        low[idx], d98[idx] = _full_features([images[i] for i in idx], cfg)
    for lo in range(0, n, FAST_BATCH):
        idx = lo + np.flatnonzero(~full[lo:lo + FAST_BATCH])
        if len(idx):
            low[idx], d98[idx] = _sample_features([images[i] for i in idx], cfg)
    return low, d98


def _full_features(images: list[Image.Image], cfg: DedupConfig) -> tuple[np.ndarray, np.ndarray]:
    """(low DCT (N, 8, 8), 9x8 resize (N, 8, 9)) from all pixels of each (small) image's gray, trimmed as in
    the exact path: LANCZOS as matrices, without the exact path's 8-bit rounding between the two passes."""
    low = np.empty((len(images), HASH_SIZE, HASH_SIZE), np.float32)
    d98 = np.empty((len(images), HASH_SIZE, HASH_SIZE + 1), np.float32)
    for i, img in enumerate(images):
        g = np.asarray(_gray(img, cfg), np.float32)
        (pv, dv, _), (ph, _, dh) = _axis_operators(g.shape[0]), _axis_operators(g.shape[1])
        low[i], d98[i] = pv @ g @ ph.T, dv @ g @ dh.T
    return low, d98


def _sample_features(images: list[Image.Image], cfg: DedupConfig) -> tuple[np.ndarray, np.ndarray]:
    """(low DCT, 9x8 resize) of up to FAST_BATCH images from their FAST_GRID samples. numpy's stacked matmul
    makes one small product per image, so OpenBLAS stays single-threaded: its threads spin on a busy machine."""
    cols, rows = FAST_GRID
    (pv, dv, _), (ph, _, dh) = _axis_operators(rows), _axis_operators(cols)
    right = _samples(images, cfg).astype(np.float32) @ np.concatenate([ph, dh]).T
    return pv @ right[:, :, :HASH_SIZE], dv @ right[:, :, HASH_SIZE:]


def rgb_grid(img: Image.Image) -> bytes:
    """The GRID x GRID RGB box thumbnail of an image (rows top to bottom, R G B per cell), inside the frame that
    trim_borders cuts for the hashes. pHash and dHash are gray: this is the colour that dedup's colour check
    compares (curate/dedup/cluster.py)."""
    if img.mode not in ("RGB", "YCbCr", "L"):
        img = img.convert("RGB")
    top, bottom, left, right = _frame(np.asarray(img.convert("L")))
    if top or bottom or left or right:
        img = img.crop((left, top, img.width - right, img.height - bottom))
    return img.resize((GRID, GRID), Image.Resampling.BOX).convert("RGB").tobytes()


def _decode(data: bytes, cfg: DedupConfig) -> Image.Image | None:
    """Decodes stored image bytes; JPEG in draft mode (DCT-domain downscale) when fast_hash is on. A colour JPEG
    decodes to YCbCr there: its Y is the gray that draft('L') gives (the same bits), and it keeps the colour."""
    try:
        img = open_image(data)  # format allowlist: never a Ghostscript or rare-decoder run
        if cfg.fast_hash and img.format == "JPEG":
            img.draft("YCbCr" if img.mode == "RGB" else "L", (FAST_DRAFT, FAST_DRAFT))
        img.load()
        return img
    except Exception:  # decode boundary: the image stage already validated these bytes; a failure is a null hash
        return None


def add_hashes(table: pa.Table, cfg: DedupConfig = DedupConfig()) -> pa.Table:
    """Adds COL.PHASH and COL.DHASH (uint64), COL.DETAIL (detail) and COL.RGB_GRID (rgb_grid) for rows with
    non-null COL.IMAGE bytes; null elsewhere (also where the bytes no longer decode). Works in chunks of
    HASH_BATCH decoded images to bound memory."""
    n = table.num_rows
    phash, dhash, details = np.zeros(n, np.uint64), np.zeros(n, np.uint64), np.zeros(n, np.float32)
    grids: list = [None] * n
    valid = np.zeros(n, bool)
    column = table[COL.IMAGE] if COL.IMAGE in table.column_names else pa.nulls(n, pa.binary())
    for lo in range(0, n, HASH_BATCH):
        chunk = column.slice(lo, HASH_BATCH).to_pylist()
        decoded = [(lo + i, img) for i, b in enumerate(chunk) if b is not None and (img := _decode(b, cfg)) is not None]
        if decoded:
            rows = [i for i, _ in decoded]
            phash[rows], dhash[rows], details[rows] = _hash_features([img for _, img in decoded], cfg)
            for i, img in decoded:
                grids[i] = rgb_grid(img)
            valid[rows] = True
    table = set_column(table, COL.PHASH, pa.array(phash, pa.uint64(), mask=~valid))
    table = set_column(table, COL.DHASH, pa.array(dhash, pa.uint64(), mask=~valid))
    table = set_column(table, COL.DETAIL, pa.array(details, pa.float32(), mask=~valid))
    return set_column(table, COL.RGB_GRID, pa.array(grids, pa.binary()))


@dataclass(frozen=True)
class HashingStage:
    """Phase A's hashing stage: add_hashes over the rows that carry image bytes (counts nothing)."""
    dedup: DedupConfig
    name: ClassVar[str] = "hashing"

    def __call__(self, table: pa.Table, stats: StageStats | None = None) -> pa.Table:
        return add_hashes(table, self.dedup)
