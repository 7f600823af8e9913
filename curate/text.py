"""Caption text rules before download: Unicode cleaning, length/word/file-name/URL/blocklist rules."""
from __future__ import annotations

import re

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from curate.config import TextConfig
from curate.schema import COL, Status, set_column, set_status

# Whitespace-like control characters become a space; every other C0/C1 control char is deleted.
_CTRL_SPACE = r"[\t\n\r\x0b\x0c\x1c-\x1f\x85\x{2028}\x{2029}]+"
_CTRL_DROP = r"[\x00-\x08\x0e-\x1b\x7f-\x84\x86-\x9f]"
_SPACES = r"\s{2,}"

IMAGE_EXTENSIONS = ("jpg", "jpeg", "jfif", "png", "gif", "webp", "bmp", "tif", "tiff", "heic", "heif",
                    "svg", "avif", "ico", "raw", "cr2", "nef")
_EXT = "|".join(IMAGE_EXTENSIONS)
# Whole caption is one URL (with or without scheme) ...
_ONLY_URL = re.compile(r"^\s*(?:(?:https?|ftp)://|www\.)\S+\s*$", re.IGNORECASE)
# ... or one file name such as IMG_1234.jpg, DSC01234.JPG, photo (2).png, 2019-05-01 13.45.12.jpeg
_ONLY_FILENAME = re.compile(rf"^\s*[\w\-.()\[\] ]{{0,200}}\.(?:{_EXT})\s*$", re.IGNORECASE)
# A "word": a run of non-space characters, except that each CJK ideograph or kana counts as one word
# (those scripts do not separate words with spaces, so whitespace splitting would call a sentence one word).
_CJK = r"\x{3040}-\x{30ff}\x{3400}-\x{4dbf}\x{4e00}-\x{9fff}\x{f900}-\x{faff}"
_WORD = rf"[{_CJK}]|[^\s{_CJK}]+"


def clean_captions(captions: pa.Array | pa.ChunkedArray) -> pa.ChunkedArray:
    """NFC-normalised captions with control characters removed and whitespace runs collapsed, trimmed.

    Null stays null. Runs in Arrow's C++ kernels (no per-row Python).
    """
    arr = captions if isinstance(captions, pa.ChunkedArray) else pa.chunked_array([captions])
    arr = arr.cast(pa.string())
    arr = pc.utf8_normalize(arr, form="NFC")
    arr = pc.replace_substring_regex(arr, _CTRL_SPACE, " ")
    arr = pc.replace_substring_regex(arr, _CTRL_DROP, "")
    arr = pc.replace_substring_regex(arr, _SPACES, " ")
    return pc.utf8_trim_whitespace(arr)


def word_counts(clean: pa.ChunkedArray) -> np.ndarray:
    """Words per caption (CJK characters count one each); 0 for null."""
    counts = pc.count_substring_regex(clean, _WORD)
    return pc.fill_null(counts, 0).to_numpy().astype(np.int64)


def compile_blocklist(entries: tuple[str, ...]) -> re.Pattern | None:
    """One case-insensitive pattern: plain words match as whole words, anything else is a regex."""
    if not entries:
        return None
    parts = [rf"\b{re.escape(e)}\b" if re.fullmatch(r"[\w\s'-]+", e) else f"(?:{e})" for e in entries]
    return re.compile("|".join(parts), re.IGNORECASE)


def rule_details(clean: pa.ChunkedArray, cfg: TextConfig) -> list[str | None]:
    """Per row, the caption_rule detail that drops it (first failing rule), or None when it passes.

    Rules in order: empty, only_url, only_filename, too_short, too_long, too_few_words, too_many_words,
    blocklist. Lengths are in characters of the cleaned caption.
    """
    texts = clean.to_pylist()
    chars = pc.fill_null(pc.utf8_length(clean), 0).to_numpy()
    words = word_counts(clean)
    block = compile_blocklist(cfg.blocklist)
    out: list[str | None] = []
    for s, nc, nw in zip(texts, chars, words):
        out.append(_first_failure(s, int(nc), int(nw), cfg, block))
    return out


def _first_failure(s: str | None, nc: int, nw: int, cfg: TextConfig, block) -> str | None:
    if not s:
        return "empty" if cfg.drop_empty else None
    if cfg.drop_only_url and _ONLY_URL.match(s):
        return "only_url"
    if cfg.drop_only_filename and _ONLY_FILENAME.match(s):
        return "only_filename"
    if nc < cfg.min_chars:
        return "too_short"
    if nc > cfg.max_chars:
        return "too_long"
    if nw < cfg.min_words:
        return "too_few_words"
    if nw > cfg.max_words:
        return "too_many_words"
    if block is not None and block.search(s):
        return "blocklist"
    return None


def caption_rules(table: pa.Table, cfg: TextConfig) -> pa.Table:
    """Sets caption_clean for every row, then drops rows still ok as caption_rule:<detail>.

    Rows the reader already dropped (caption_rule:not_text, caption_rule:too_long for a caption cut at
    input.max_caption_bytes) keep that reason, also with the text rules disabled."""
    table = set_column(table, COL.CAPTION_CLEAN, clean_captions(table[COL.CAPTION]))
    if cfg.enabled:
        details = rule_details(table[COL.CAPTION_CLEAN], cfg)
        mask = pa.array([d is not None for d in details], pa.bool_())
        table = set_status(table, mask, Status.CAPTION_RULE, detail=details)
    return table

