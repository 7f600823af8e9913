"""langdetect 1.0.9's n-gram profiles, read from its package files into a compact sparse form, once per process."""
from __future__ import annotations

import functools
import json
import os
from dataclasses import dataclass

import numpy as np

from curate.heap import trim_heap

# Why not langdetect's own DetectorFactory: it keeps every n-gram as a Python list of 55 boxed floats
# (87,598 lists, ~64 MB of RSS per process), and every Ray worker that runs language ID would hold it.
# Only 184,129 of the 4.8 M probabilities are non-zero, so a CSR matrix of float64 holds the same values
# in ~2.5 MB (dense would be 38.5 MB); the n-gram -> row dict (~13 MB) stays because the engine asks
# `gram in index` per n-gram, as langdetect does. RSS: ~18 MB per process instead of ~64 MB.


@dataclass(frozen=True)
class Profiles:
    """langdetect's word_lang_prob_map as CSR: row `index[gram]` holds that n-gram's probability per language."""

    langs: list[str]          # DetectorFactory.langlist, in its order (the order of os.listdir)
    index: dict[str, int]     # every n-gram of every profile -> its row, in the factory's insertion order
    indptr: np.ndarray        # (n_rows + 1,) int64: row r's non-zeros are [indptr[r], indptr[r + 1])
    cols: np.ndarray          # (nnz,) int16 language column of each non-zero
    vals: np.ndarray          # (nnz,) float64, computed exactly as DetectorFactory.add_profile does

    def row(self, gram: str) -> np.ndarray:
        """The (n_langs,) float64 probabilities of `gram`: the values of factory.word_lang_prob_map[gram]."""
        r = self.index[gram]
        a, b = self.indptr[r], self.indptr[r + 1]
        out = np.zeros(len(self.langs))
        out[self.cols[a:b]] = self.vals[a:b]
        return out


@functools.cache
def load_profiles() -> Profiles:
    """The installed langdetect's profiles (its package's profiles/ directory), read once per process."""
    from langdetect import detector_factory

    profiles = read_profiles(detector_factory.PROFILES_DIRECTORY)
    trim_heap()  # parsing 2.3 MB of JSON leaves ~11 MB of freed heap: RSS would stay ~28 MB up, not ~17
    return profiles


def read_profiles(directory: str) -> Profiles:
    """Reads the profiles as DetectorFactory.load_profile does: files in os.listdir order, one language each."""
    names = os.listdir(directory)
    files = [os.path.join(directory, n) for n in names]
    if not files or any(n.startswith(".") or not os.path.isfile(f) for n, f in zip(names, files)):
        # langdetect sizes each row by len(os.listdir) but skips such entries: rows would not match the languages
        raise RuntimeError(f"langdetect profile directory {directory} must hold only profile files: {names}")
    langs: list[str] = []
    index: dict[str, int] = {}
    rows, cols, vals = [], [], []
    for j, path in enumerate(files):
        r, v = _add_profile(path, langs, index)
        rows.append(r)
        vals.append(v)
        cols.append(np.full(len(r), j, dtype=np.int16))
    rows_a, cols_a = np.concatenate(rows), np.concatenate(cols)
    order = np.lexsort((cols_a, rows_a))  # CSR: by row, then language
    counts = np.bincount(rows_a, minlength=len(index))
    indptr = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
    return Profiles(langs, index, indptr, cols_a[order], np.concatenate(vals)[order])


def _add_profile(path: str, langs: list[str], index: dict[str, int]) -> tuple[np.ndarray, np.ndarray]:
    """DetectorFactory.add_profile for one file: (rows, probabilities) of its 1- to 3-grams.

    Every gram gets a row (as the factory gives it a list), but only lengths 1-3 get a value; the value is
    `1.0 * count / n_words[len - 1]` in Python floats, the factory's own expression, so the bits match.
    """
    with open(path, encoding="utf-8") as f:
        profile = json.load(f)
    lang, freq, n_words = profile["name"], profile["freq"], profile["n_words"]
    if lang in langs:
        raise RuntimeError(f"langdetect profile {path} repeats language {lang!r}")
    langs.append(lang)
    r, v = [], []
    for word, count in freq.items():
        i = index.setdefault(word, len(index))
        if 1 <= len(word) <= 3:
            r.append(i)
            v.append(1.0 * count / n_words[len(word) - 1])
    return np.array(r, dtype=np.int64), np.array(v, dtype=np.float64)
