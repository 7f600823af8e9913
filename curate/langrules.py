"""Evidence rules for short captions: which script decides a language, and which languages know each word."""
from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
from functools import lru_cache
from pathlib import Path

import numpy as np

# Scripts that name a language (or a small group): a caption written in one of them is not in any language
# written in another script, however few letters it has. Ranges are code points, end exclusive.
_SCRIPTS = (
    ("greek", 0x0370, 0x0400, ("el",)), ("cyrillic", 0x0400, 0x0530, ("ru", "uk", "bg", "mk", "sr", "be", "kk")),
    ("armenian", 0x0530, 0x0590, ("hy",)), ("hebrew", 0x0590, 0x0600, ("he", "yi")),
    ("arabic", 0x0600, 0x0780, ("ar", "fa", "ur", "ps")), ("devanagari", 0x0900, 0x0980, ("hi", "mr", "ne")),
    ("bengali", 0x0980, 0x0A00, ("bn",)), ("gurmukhi", 0x0A00, 0x0A80, ("pa",)), ("gujarati", 0x0A80, 0x0B00, ("gu",)),
    ("tamil", 0x0B80, 0x0C00, ("ta",)), ("telugu", 0x0C00, 0x0C80, ("te",)), ("kannada", 0x0C80, 0x0D00, ("kn",)),
    ("malayalam", 0x0D00, 0x0D80, ("ml",)), ("thai", 0x0E00, 0x0E80, ("th",)), ("georgian", 0x10A0, 0x1100, ("ka",)),
    ("hangul", 0x1100, 0x1200, ("ko",)), ("kana", 0x3040, 0x3100, ("ja",)), ("hangul", 0x3130, 0x3190, ("ko",)),
    ("han", 0x3400, 0x4DC0, ("zh", "ja")), ("han", 0x4E00, 0xA000, ("zh", "ja")), ("hangul", 0xAC00, 0xD7B0, ("ko",)),
)
SCRIPT_LANGS = {name: langs for name, _, _, langs in _SCRIPTS}
_CLASS = {name: re.compile("[" + "".join(f"\\U{a:08x}-\\U{b - 1:08x}" for n, a, b, _ in _SCRIPTS if n == name) + "]")
          for name in SCRIPT_LANGS}
_LATIN = re.compile(r"[A-Za-z\u00C0-\u024F]")
# A script decides when it holds this share of the letters: brand names in Latin letters ("Getty Images 猫")
# must not hide the caption's own script. Han and Hangul carry a syllable or a word per character.
SCRIPT_SHARE = 0.15
_WEIGHT = {"han": 2, "hangul": 2, "kana": 2}


def deciding_script(text: str) -> str | None:
    """The non-Latin script that names this caption's language (None: Latin, none, or too little of one).

    Any kana makes Han text Japanese; otherwise the script with the most (weighted) characters wins.
    """
    if text.isascii():
        return None
    counts = {name: len(rx.findall(text)) * _WEIGHT.get(name, 1) for name, rx in _CLASS.items()}
    if counts["kana"]:
        counts["kana"] += counts.pop("han")
    name, n = max(counts.items(), key=lambda kv: kv[1])
    total = n + len(_LATIN.findall(text)) + sum(v for k, v in counts.items() if k != name)
    return name if n and n >= SCRIPT_SHARE * total else None


# --------------------------------------------------------------------------------------------------
# Word lists: simplemma's dictionaries (inflected forms from Wiktionary, offline, ~50 MB and 0.3 s for English).
# Only the kept languages' lists are loaded: a caption whose words are mostly known in a kept language is
# evidence for it, however little the n-gram models can say about two words.
_TOKEN = re.compile(r"[^\W\d_]+(?:['’-][^\W\d_]+)*")
# camera file-name prefixes and single letters carry no language
_NEUTRAL = frozenset({"img", "dsc", "dscn", "dcim", "jpg", "jpeg", "png", "pic", "p"})


def word_list_languages() -> frozenset[str]:
    """ISO 639-1 codes that have a shipped word list."""
    from simplemma.strategies.dictionaries.dictionary_factory import SUPPORTED_LANGUAGES

    return frozenset(c for c in SUPPORTED_LANGUAGES if len(c) == 2)


@lru_cache(maxsize=None)
def word_list(lang: str) -> frozenset[str]:
    """The lower-cased word forms known in `lang` (empty when there is no list for it); loaded once per process."""
    if lang not in word_list_languages():
        return frozenset()
    from simplemma.strategies.dictionaries.dictionary_factory import DefaultDictionaryFactory

    words = DefaultDictionaryFactory(cache_max_size=0).get_dictionary(lang)
    return frozenset(w.lower() for w in words.keys() if isinstance(w, str))


def words_of(text: str, keep_case: bool = False) -> list[str]:
    """The caption's words that can carry language (file-name prefixes dropped), lower-cased unless keep_case."""
    return [t if keep_case else t.lower() for t in _TOKEN.findall(text) if t.lower() not in _NEUTRAL]


def known_share(words: list[str], lists: list[frozenset[str]]) -> float:
    """Share of `words` found in any of `lists` (0.0 for no words)."""
    if not words:
        return 0.0
    return sum(any(w in wl for wl in lists) for w in words) / len(words)


# --------------------------------------------------------------------------------------------------
# Which languages know a word: every simplemma list at once. Loading them all as Python sets takes ~2.4 GB and
# ~40 s per process, so they are hashed once into one sorted uint64 array (64-bit FNV-1a over the first
# _HASH_BYTES bytes of the UTF-8 form) with a bitmask of the languages that list each word, cached on disk
# (~0.2 GB for ~13M distinct forms) and memory-mapped, so workers on one host share the pages.
_HASH_BYTES = 32  # longer forms are told apart by their first 32 bytes only (no caption word is that long)
_FNV_OFFSET, _FNV_PRIME = np.uint64(0xCBF29CE484222325), np.uint64(0x100000001B3)
INDEX_VERSION = 1


def word_hashes(words: list[str]) -> np.ndarray:
    """uint64 FNV-1a hashes of the lower-cased words (zero-padded to _HASH_BYTES: build and lookup agree)."""
    raw = np.array([w.lower().encode("utf-8")[:_HASH_BYTES] for w in words], dtype=f"S{_HASH_BYTES}")
    cols = raw.view(np.uint8).reshape(len(words), _HASH_BYTES)
    h = np.full(len(words), _FNV_OFFSET, dtype=np.uint64)
    with np.errstate(over="ignore"):
        for j in range(_HASH_BYTES):
            h ^= cols[:, j]
            h *= _FNV_PRIME
    return h


def index_codes() -> tuple[str, ...]:
    """The word lists in the index, one bit each (at most 64): simplemma's ISO 639-1 codes, sorted."""
    return tuple(sorted(word_list_languages()))


class WordIndex:
    """Sorted word hashes and, per hash, the bitmask of `codes` whose list has that word."""

    def __init__(self, keys: np.ndarray, masks: np.ndarray, codes: tuple[str, ...]):
        self.keys, self.masks, self.codes = keys, masks, codes
        self.bits = {c: i for i, c in enumerate(codes)}

    def lookup(self, words: list[str]) -> np.ndarray:
        """(len(words),) uint64 bitmasks of the lists that know each word (0: none)."""
        if not words or not len(self.keys):
            return np.zeros(len(words), dtype=np.uint64)
        h = word_hashes(words)
        pos = np.minimum(np.searchsorted(self.keys, h), len(self.keys) - 1)
        return np.where(self.keys[pos] == h, self.masks[pos], np.uint64(0))


def index_dir(root: str = "") -> Path:
    """Where the index for the installed simplemma lives ('' -> ~/.cache/curate)."""
    from importlib.metadata import version

    base = Path(root).expanduser() if root else Path.home() / ".cache" / "curate"
    return base / f"wordindex-v{INDEX_VERSION}-simplemma-{version('simplemma')}"


@lru_cache(maxsize=4)
def word_index(root: str = "") -> WordIndex:
    """The cached index, built on first use (~1 min and ~1 GB once per host), memory-mapped after that."""
    path = index_dir(root)
    if not (path / "codes.json").exists():
        build_index(path)
    codes = tuple(json.loads((path / "codes.json").read_text()))
    return WordIndex(np.load(path / "keys.npy", mmap_mode="r"), np.load(path / "masks.npy", mmap_mode="r"), codes)


def build_index(path: Path) -> None:
    """Hashes every list into `path` (written under a temporary name and renamed: concurrent builders agree)."""
    codes = index_codes()
    if len(codes) > 64:
        raise RuntimeError(f"{len(codes)} word lists do not fit a 64-bit language mask")
    keys, masks = [], []
    for bit, code in enumerate(codes):
        words = list(word_list(code))
        word_list.cache_clear()  # one list in memory at a time
        h = np.unique(word_hashes(words))
        keys.append(h)
        masks.append(np.full(len(h), np.uint64(1) << np.uint64(bit), dtype=np.uint64))
    k, m = np.concatenate(keys), np.concatenate(masks)
    order = np.argsort(k, kind="stable")
    k, m = k[order], m[order]
    starts = np.flatnonzero(np.r_[True, k[1:] != k[:-1]])
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=path.name + ".", dir=path.parent))
    np.save(tmp / "keys.npy", k[starts])
    np.save(tmp / "masks.npy", np.bitwise_or.reduceat(m, starts))
    (tmp / "codes.json").write_text(json.dumps(codes))
    try:
        os.rename(tmp, path)
    except OSError:  # another process finished first: its index is the same
        shutil.rmtree(tmp, ignore_errors=True)


__all__ = ["deciding_script", "SCRIPT_LANGS", "word_list", "word_list_languages", "words_of", "known_share",
           "WordIndex", "word_index", "word_hashes", "index_codes", "index_dir", "build_index"]
