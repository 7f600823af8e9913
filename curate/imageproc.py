"""Opens untrusted image bytes safely (format allowlist, pixel and decoded-byte caps from the header), then
decodes, filters, resizes and re-encodes them (EXIF orientation, any mode to RGB, metadata stripped)."""
from __future__ import annotations

import io
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageMode, UnidentifiedImageError

from curate.config import ImageConfig
from curate.imagemeta import header_exif, kept_metadata, strip_source
from curate.schema import Status

# The formats curate decodes, in the order Image.open tries them (JPEG first: most of the web). Every other
# format Pillow knows is refused before its plugin runs: EPS would hand the bytes to Ghostscript, and the rare
# decoders (PSD, ICO, PCX, SGI, FITS, TGA, ...) are attack surface no dataset needs. MPO (phone JPEGs with a
# multi-picture index) is opened by the JPEG plugin and decodes its first picture; AVIF/HEIF are not opened.
ALLOWED_FORMATS = ("JPEG", "PNG", "WEBP", "GIF", "BMP", "TIFF")
_PIL_FORMAT = {"jpg": "JPEG", "png": "PNG", "webp": "WEBP"}
_EXT = {"JPEG": "jpg", "PNG": "png", "WEBP": "webp"}
_SWAPS_AXES = frozenset({5, 6, 7, 8})            # EXIF orientations that rotate by 90 degrees
_TRANSPOSE = {2: Image.Transpose.FLIP_LEFT_RIGHT, 3: Image.Transpose.ROTATE_180,
              4: Image.Transpose.FLIP_TOP_BOTTOM, 5: Image.Transpose.TRANSPOSE,
              6: Image.Transpose.ROTATE_270, 7: Image.Transpose.TRANSVERSE, 8: Image.Transpose.ROTATE_90}
_WHITE = (255, 255, 255)
_ALPHA_MODES = frozenset({"RGBA", "LA", "PA", "RGBa", "La"})
_PNG_COMPRESS = 6  # zlib level for png output: the usual speed/size balance
# pixels converted to RGB at once: a mode conversion of a larger image runs strip by strip, so its full-size
# temporaries (RGBA copy + white canvas + alpha band, or float32 arrays) never exist (4 MP: ~16 MB per copy)
_STRIP_PIXELS = 1 << 22


class FormatRefused(UnidentifiedImageError):
    """Bytes of an image format Pillow could decode but curate does not open (not in ALLOWED_FORMATS)."""


class DecodedTooLarge(ValueError):
    """The decoded raster (decoded_bytes, from the header) is above the configured cap."""


def detect_format(data: bytes) -> str | None:
    """The Pillow format whose signature `data` starts with; only the plugins' prefix checks run."""
    Image.init()
    prefix = data[:16]
    for fmt in Image.ID:
        accept = Image.OPEN[fmt][1]
        try:
            hit = accept is not None and accept(prefix)
        except Exception:  # noqa: BLE001 - a signature check that trips on a short prefix is a miss
            hit = False
        if hit and not isinstance(hit, str):  # a str is Pillow's "maybe" warning
            return fmt
    return None


def decoded_bytes(im: Image.Image) -> int:
    """Bytes of im's raster at its mode's nominal depth (RGB 3, RGBA/CMYK/I/F 4, I;16 2, L/P 1 per pixel)."""
    m = ImageMode.getmode(im.mode)
    return im.width * im.height * len(m.bands) * np.dtype(m.typestr).itemsize


def open_image(data: bytes, max_decoded_bytes: int | None = None) -> Image.Image:
    """Opens image bytes from the web or an input file (header only; pixels decode on load()).

    Only ALLOWED_FORMATS are tried. Raises FormatRefused (naming the detected format) for another format
    Pillow knows, UnidentifiedImageError for anything else, DecodedTooLarge when decoded_bytes >
    max_decoded_bytes, and Pillow's DecompressionBombError above 2 x Image.MAX_IMAGE_PIXELS.
    """
    try:
        im = Image.open(io.BytesIO(data), formats=ALLOWED_FORMATS)
    except UnidentifiedImageError:
        fmt = detect_format(data)
        if fmt is None:
            raise
        raise FormatRefused(f"{fmt} image: format not opened (allowed: {', '.join(ALLOWED_FORMATS)})") from None
    if max_decoded_bytes is not None and (n := decoded_bytes(im)) > max_decoded_bytes:
        im.close()
        raise DecodedTooLarge(f"{im.width}x{im.height} {im.mode}: {n} decoded bytes > {max_decoded_bytes}")
    return im


@dataclass(slots=True)
class ImageResult:
    """The outcome for one image: encoded bytes on success, else a status + detail."""
    status: str
    detail: str | None = None
    message: str | None = None
    data: bytes | None = None
    image_format: str | None = None   # jpg | png | webp
    orig_width: int | None = None     # after EXIF orientation
    orig_height: int | None = None
    width: int | None = None
    height: int | None = None


def _fail(status: str, detail: str | None, message: str, **sizes) -> ImageResult:
    return ImageResult(status, detail, message, **sizes)


def target_size(w: int, h: int, img: ImageConfig) -> tuple[tuple[int, int], tuple[int, int] | None]:
    """(scaled size, final canvas or None) for an oriented w x h image, with img2dataset's resize modes.

    keep_ratio/center_crop scale the smaller side to img.size; keep_ratio_largest/border the larger side.
    center_crop then crops and border pads to size x size. resize_only_if_bigger never upscales
    (and, as in img2dataset, then neither crops nor pads).
    """
    mode, s = img.resize_mode, img.size
    if mode == "no":
        return (w, h), None
    side = min(w, h) if mode in ("keep_ratio", "center_crop") else max(w, h)
    if img.resize_only_if_bigger and side <= s:
        return (w, h), None
    scale = s / side
    scaled = (max(1, round(w * scale)), max(1, round(h * scale)))
    if mode in ("keep_ratio", "center_crop"):  # the smaller side is exactly s, whatever the rounding
        scaled = (s, scaled[1]) if w <= h else (scaled[0], s)
    else:
        scaled = (s, scaled[1]) if w >= h else (scaled[0], s)
    canvas = (s, s) if mode in ("center_crop", "border") else None
    return scaled, canvas


def _orientation(im: Image.Image) -> int:
    try:
        return int(header_exif(im).get(0x0112, 1) or 1)
    except Exception:  # noqa: BLE001 - a broken EXIF block is ignored, as browsers do
        return 1


def _int_range(im: Image.Image) -> float | None:
    """The value that maps to 255 for I/F modes (16-bit: 65535; else 255 unless values exceed it); None for others."""
    if not (im.mode.startswith("I") or im.mode == "F"):
        return None
    return 65535.0 if im.mode.startswith("I;16") or im.getextrema()[1] > 255 else 255.0


def _to_rgb(im: Image.Image, hi: float | None = None) -> Image.Image:
    """Any Pillow mode to RGB: alpha on white, 16/32-bit scaled to 8-bit (`hi` -> 255), CMYK/P/L converted."""
    if im.mode == "RGB":
        return im
    if im.mode == "P" and "transparency" in im.info:
        im = im.convert("RGBA")
    if im.mode in _ALPHA_MODES:
        rgba = im.convert("RGBA")
        bg = Image.new("RGB", rgba.size, _WHITE)
        bg.paste(rgba, mask=rgba.getchannel("A"))
        return bg
    if im.mode.startswith("I") or im.mode == "F":
        arr = np.multiply(np.asarray(im), 255.0 / (hi or _int_range(im)), dtype=np.float32)
        np.clip(arr, 0, 255, out=arr)  # in place: one float32 copy, not four
        return Image.fromarray(arr.astype(np.uint8)).convert("RGB")
    return im.convert("RGB")


def _to_rgb_reduced(im: Image.Image, target: tuple[int, int]) -> Image.Image:
    """_to_rgb(im), box-reduced by an integer factor that leaves at least twice `target` (as Pillow's
    reducing_gap), converted _STRIP_PIXELS at a time: memory is the decoded raster plus one strip's copies."""
    w, h = im.size
    f = max(1, min(w // max(1, target[0]), h // max(1, target[1])) // 2)
    rows = max(f, _STRIP_PIXELS // w // f * f)  # a multiple of f: the strips reduce exactly like the whole
    hi = _int_range(im)  # one scale for all strips
    out = Image.new("RGB", (-(-w // f), -(-h // f)))
    for y in range(0, h, rows):
        part = _to_rgb(im.crop((0, y, w, min(h, y + rows))), hi)
        out.paste(part.reduce(f) if f > 1 else part, (0, y // f))
    return out


def _can_keep_source(im: Image.Image, orientation: int, scaled, canvas, orig, img: ImageConfig) -> bool:
    """True when the original bytes already are what we would write: same format, size, plain RGB."""
    return (img.skip_reencode and _EXT.get(im.format) == img.format and orientation == 1
            and scaled == orig and canvas is None and im.mode == "RGB"
            and getattr(im, "n_frames", 1) == 1 and "transparency" not in im.info)


def _resize(im: Image.Image, stored_size: tuple[int, int]) -> Image.Image:
    if im.size == stored_size:
        return im
    if stored_size[0] < im.size[0]:
        # area averaging (img2dataset's INTER_AREA): Pillow's BOX scales its support with the ratio, so it
        # is antialiased, and it is the cheapest filter (about half of BICUBIC's time)
        return im.resize(stored_size, Image.Resampling.BOX)
    return im.resize(stored_size, Image.Resampling.BICUBIC)  # upscaling: smooth, cheaper than LANCZOS


def _fit_canvas(im: Image.Image, canvas: tuple[int, int] | None, mode: str) -> Image.Image:
    if canvas is None or im.size == canvas:
        return im
    w, h = im.size
    cw, ch = canvas
    if mode == "center_crop":
        left, top = (w - cw) // 2, (h - ch) // 2
        return im.crop((left, top, left + cw, top + ch))
    out = Image.new("RGB", canvas, _WHITE)  # border: white padding, as img2dataset
    out.paste(im, ((cw - w) // 2, (ch - h) // 2))
    return out


def _encode(im: Image.Image, img: ImageConfig, meta: dict[str, bytes]) -> bytes:
    im.info = {}  # Pillow writes parts of info back (PNG: the ICC profile, JPEG: comments): store only `meta`
    buf = io.BytesIO()
    if img.format == "png":
        im.save(buf, "PNG", compress_level=_PNG_COMPRESS, **meta)
    else:
        im.save(buf, _PIL_FORMAT[img.format], quality=img.quality, **meta)
    return buf.getvalue()


def _rgb_at(im: Image.Image, size: tuple[int, int]) -> Image.Image:
    """im as RGB at `size`; a large image that needs a mode conversion is converted strip by strip."""
    if im.mode != "RGB" and im.width * im.height > _STRIP_PIXELS:
        im = _to_rgb_reduced(im, size)
    return _resize(_to_rgb(im), size)


def _check_size(w: int, h: int, img: ImageConfig) -> ImageResult | None:
    sizes = dict(orig_width=w, orig_height=h)
    if w * h > img.max_pixels:
        return _fail(Status.DECODE_ERROR, "too_many_pixels", f"{w}x{h} > {img.max_pixels} pixels", **sizes)
    if w < img.min_width or h < img.min_height:
        return _fail(Status.TOO_SMALL, None, f"{w}x{h} < {img.min_width}x{img.min_height}", **sizes)
    if img.max_aspect_ratio and max(w, h) / max(1, min(w, h)) > img.max_aspect_ratio:
        return _fail(Status.BAD_ASPECT, None, f"{w}x{h}: aspect > {img.max_aspect_ratio:g}", **sizes)
    return None


def _transform(im: Image.Image, body: bytes, img: ImageConfig) -> ImageResult:
    """The decode/resize/encode path once the header passed every check."""
    orientation = _orientation(im)
    sw, sh = im.size
    orig = (sh, sw) if orientation in _SWAPS_AXES else (sw, sh)
    if (bad := _check_size(*orig, img)) is not None:
        return bad
    scaled, canvas = target_size(*orig, img)
    stored_target = (scaled[1], scaled[0]) if orientation in _SWAPS_AXES else scaled
    sizes = dict(orig_width=orig[0], orig_height=orig[1])
    keep = _can_keep_source(im, orientation, scaled, canvas, orig, img)
    if not keep and im.format == "JPEG" and stored_target[0] * 2 <= sw:
        # DCT-domain downscale by 1/2..1/8 while decoding: the biggest saving for large photos
        im.draft("RGB", stored_target)
    if (n := decoded_bytes(im)) > img.max_decoded_bytes:  # after draft: what the decode will really allocate
        return _fail(Status.DECODE_ERROR, "too_large_decoded",
                     f"{im.width}x{im.height} {im.mode}: {n} decoded bytes > {img.max_decoded_bytes}", **sizes)
    meta = kept_metadata(im, img.keep_metadata) if img.keep_metadata else {}
    if keep:
        im.load()  # still decoded once: a truncated file must not pass as fitting
        data = strip_source(body, im.format, meta)  # None: a layout the rewriter does not know -> re-encode
        if data is not None:
            return ImageResult(Status.OK, data=data, image_format=img.format, width=orig[0], height=orig[1], **sizes)
    im = _rgb_at(im, stored_target)  # an animated image is on its first frame after open
    if orientation in _TRANSPOSE:  # rotating the small result is cheaper than rotating the source
        im = im.transpose(_TRANSPOSE[orientation])
    im = _fit_canvas(im, canvas, img.resize_mode)
    return ImageResult(Status.OK, data=_encode(im, img, meta), image_format=img.format,
                       width=im.size[0], height=im.size[1], **sizes)


def process_image(body: bytes, img: ImageConfig) -> ImageResult:
    """Decodes `body`, applies filters and resize mode, re-encodes as img.format.

    On success `data` is the bytes to store: the original bytes when they already fit (`data is body` when they
    carry nothing to strip), else a fresh encode; only the metadata in img.keep_metadata is stored.
    Failures: decode_error:<empty|format|unidentified|too_many_pixels|too_large_decoded|truncated|corrupt>,
    too_small, bad_aspect.
    """
    if not body:
        return _fail(Status.DECODE_ERROR, "empty", "empty body")
    try:
        with open_image(body) as im:
            return _transform(im, body, img)
    except FormatRefused as e:
        return _fail(Status.DECODE_ERROR, "format", str(e))
    except UnidentifiedImageError:
        return _fail(Status.DECODE_ERROR, "unidentified", f"not an image format Pillow knows; starts {body[:16]!r}")
    except Image.DecompressionBombError as e:
        return _fail(Status.DECODE_ERROR, "too_many_pixels", str(e))
    except OSError as e:  # Pillow reports truncated and broken streams as OSError
        detail = "truncated" if "truncated" in str(e) else "corrupt"
        return _fail(Status.DECODE_ERROR, detail, str(e))
    except Exception as e:  # noqa: BLE001 - the decode boundary: a hostile file is a row, not a crash
        return _fail(Status.DECODE_ERROR, "corrupt", f"{type(e).__name__}: {e}")
