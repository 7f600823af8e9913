"""The language detector of a worker process: cleans captions, applies the 'und' rules, asks one backend and
caches its answers; one instance per backend and seed (get_detector)."""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from curate.config import LanguageConfig
from curate.langid.cleaning import UND, clean_for_detection, iso639_1, letter_count
from curate.langid.langdetect_port import LangdetectEngine, membership, top_codes
from curate.langid.lingua_engine import LINGUA_CODES, LinguaEngine

BACKENDS = ("langdetect", "lingua")


class LanguageDetector:
    """Cleans captions, applies the 'und' rules and detects with one backend; one instance per process."""

    CACHE_MAX = 200_000  # cleaned texts remembered (web captions repeat: "image", product titles)
    CHUNK = 16_384       # texts run in lockstep at once by the langdetect engine

    def __init__(self, backend: str = "langdetect", seed: int = 0, min_letters: int = 3,
                 lingua_low_accuracy: bool = False):
        if backend not in BACKENDS:
            raise ValueError(f"language backend {backend!r} is not one of {', '.join(BACKENDS)}")
        self.backend, self.seed, self.min_letters = backend, seed, min_letters
        if backend == "langdetect":
            self._engine = LangdetectEngine(seed)
            self.codes = sorted(set(self._engine.codes))
        else:
            self._engine = LinguaEngine(lingua_low_accuracy)
            self.codes = sorted({iso639_1(c) for c in LINGUA_CODES})
        # cleaned text -> (top language, its probability, float32 probabilities over self.codes)
        self._cache: dict[str, tuple[str, float, np.ndarray | None]] = {}

    def detect_batch(self, texts: Sequence[str | None]) -> tuple[list[str], np.ndarray]:
        """(ISO 639-1 codes or 'und', float32 probabilities) for each text; None and letter-less texts are 'und'."""
        _, langs, probs, _ = self.detect_full(texts)
        return langs, probs

    def detect_full(self, texts: Sequence[str | None]) -> tuple[list[str], list[str], np.ndarray, np.ndarray]:
        """(cleaned texts, top codes, top probabilities, (n, len(self.codes)) probabilities; NaN rows for 'und')."""
        cleaned = [clean_for_detection(t) for t in texts]
        todo = sorted({c for c in cleaned if c not in self._cache and letter_count(c) >= self.min_letters})
        if len(self._cache) + len(todo) > self.CACHE_MAX:
            self._cache.clear()
        if todo:
            self._cache.update(zip(todo, zip(*self._detect(todo))))
        langs, probs = [], np.zeros(len(texts), dtype=np.float32)
        mat = np.full((len(texts), len(self.codes)), np.nan, dtype=np.float32)
        for i, c in enumerate(cleaned):
            lang, p, vec = self._cache.get(c, (UND, 0.0, None))
            langs.append(lang)
            probs[i] = p
            if vec is not None:
                mat[i] = vec
        return cleaned, langs, probs, mat

    def _detect(self, texts: list[str]) -> tuple[list[str], list[float], list[np.ndarray | None]]:
        if self.backend == "lingua":
            return self._engine.detect(texts, self.codes)
        eng, langs, probs, vecs = self._engine, [], [], []
        member = membership(eng.codes, self.codes)
        for i in range(0, len(texts), self.CHUNK):  # bounds the lockstep state (~2.5 KB per text)
            part = texts[i:i + self.CHUNK]
            raw = eng.probabilities([eng.features(t) for t in part])
            lg, pr = top_codes(raw, eng.codes)
            langs += lg
            probs += pr
            summed = np.minimum(raw @ member, 1.0).astype(np.float32)
            vecs += [None if np.isnan(row).any() else row for row in summed]
        return langs, probs, vecs


_DETECTORS: dict[tuple, LanguageDetector] = {}


def get_detector(cfg: LanguageConfig) -> LanguageDetector:
    """The process-wide detector for this backend/seed (profiles and models load once per worker)."""
    key = (cfg.backend, cfg.seed, cfg.min_letters, cfg.lingua_low_accuracy)
    det = _DETECTORS.get(key)
    if det is None:
        det = _DETECTORS[key] = LanguageDetector(cfg.backend, cfg.seed, cfg.min_letters, cfg.lingua_low_accuracy)
    return det
