"""Caption language identification (langdetect, vectorised and bit-exact, or lingua) and the pre-download prefilter."""
from __future__ import annotations

import html
import itertools
import math
import random
import re
import sys
from collections.abc import Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from curate.config import LanguageConfig, TextConfig
from curate.schema import COL, Status, ok_mask, set_column, set_status
from curate.text import IMAGE_EXTENSIONS, apply_text_rules

UND = "und"
BACKENDS = ("langdetect", "lingua")

# --------------------------------------------------------------------------------------------------
# Cleaning before detection: web noise carries no language signal but does move langdetect's n-grams.
_URL = r"(?:(?:https?|ftp)://|www\.)\S+"
_EMAIL = r"[\w.+-]+@[\w-]+(?:\.[\w-]+)+"
_TAG = r"<[^<>]{0,500}>"
_FILENAME = rf"[\w\-.()]*\w\.(?:{'|'.join(IMAGE_EXTENSIONS)})\b"
_EMOJI = ("[\U0001F000-\U0001FAFF\U0001FB00-\U0001FBFF\u2190-\u21FF\u2300-\u23FF\u2460-\u27BF"
          "\u2900-\u297F\u2B00-\u2BFF\u3030\u303D\u3297\u3299\uFE0E\uFE0F\u200D\u20E3"
          "\U000E0020-\U000E007F]+")
# One pass for all the noise (an alternation is tried left to right at each position: a tag wins over the
# URL inside it); entities are decoded before, so only unknown ones are left for _ENTITY.
_NOISE = re.compile("|".join((_TAG, _URL, _EMAIL, _FILENAME, _EMOJI)), re.IGNORECASE)
_ENTITY = re.compile(r"&(?:#\d{1,7}|#x[0-9a-f]{1,6}|[a-z][a-z0-9]{1,31});?", re.IGNORECASE)
_REPEAT_PUNCT = re.compile(r"([^\w\s])\1+")
_WS = re.compile(r"\s+")
_LETTER = re.compile(r"[^\W\d_]")


def clean_for_detection(text: str | None) -> str:
    """Text with URLs, e-mails, HTML tags/entities, image file names, emoji and repeated punctuation removed.

    Entities are decoded first (&eacute; is a letter, &lt;b&gt; a tag), then tags and what is left of them go.
    """
    if not text:
        return ""
    s = text
    if "&" in s:
        s = _ENTITY.sub(" ", html.unescape(s))
    s = _NOISE.sub(" ", s)
    s = _REPEAT_PUNCT.sub(r"\1", s)
    return _WS.sub(" ", s).strip()


def letter_count(text: str) -> int:
    """Letters in `text` (word characters that are neither digits nor '_')."""
    return len(_LETTER.findall(text))


def iso639_1(code: str | None) -> str:
    """Normalises a backend's language code to ISO 639-1: zh-cn/zh-tw -> zh, nb/nn -> no, '' -> und."""
    if not code:
        return UND
    code = code.lower().replace("_", "-")
    base = code.split("-", 1)[0]
    return {"nb": "no", "nn": "no"}.get(base, base)


# --------------------------------------------------------------------------------------------------
# langdetect, vectorised. langdetect's answer for a text is a deterministic function of (text, seed): it
# reseeds its Mersenne Twister per text, draws an n-gram index per step and multiplies a 55-float vector in
# Python. Every text therefore reads the SAME random word stream from position 0, and only the number of words
# it consumes differs. We precompute that stream once and run all texts' chains in lockstep with numpy, doing
# the same IEEE operations in the same order (including Python's left-to-right float sum), so the result is
# bit-identical to langdetect.detect_langs — at a fraction of the per-step interpreter cost.

_N_TRIAL = 7
_ALPHA, _ALPHA_WIDTH, _BASE_FREQ = 0.5, 0.05, 10000
_CONV_THRESHOLD, _ITERATION_LIMIT, _PROB_THRESHOLD = 0.99999, 1000, 0.1
_MAX_TEXT = 10000
_TWOPI = 2.0 * math.pi


class LangdetectEngine:
    """langdetect's algorithm over a batch; profiles shared with langdetect's own factory (loaded once)."""

    WORD_CACHE_MAX = 500_000  # distinct normalised words whose n-gram rows are remembered
    DRAWS = 40                # random draws precomputed per chain and refill (8 rounds of 5 updates)

    def __init__(self, seed: int):
        from langdetect import DetectorFactory, detector_factory
        from langdetect.detector import Detector
        from langdetect.utils.ngram import NGram

        if DetectorFactory.seed is None:  # make plain langdetect calls in this process deterministic too
            DetectorFactory.seed = seed
        consts = (Detector.ITERATION_LIMIT, Detector.CONV_THRESHOLD, Detector.BASE_FREQ, Detector.ALPHA_DEFAULT,
                  Detector.ALPHA_WIDTH, Detector.PROB_THRESHOLD)
        if consts != (_ITERATION_LIMIT, _CONV_THRESHOLD, _BASE_FREQ, _ALPHA, _ALPHA_WIDTH, _PROB_THRESHOLD):
            raise RuntimeError(f"langdetect's constants changed ({consts}); the vectorised engine mirrors 1.0.9")
        detector_factory.init_factory()
        fac = detector_factory._factory
        self.seed = int(seed)
        self.langs = list(fac.langlist)
        self.codes = [iso639_1(c) for c in self.langs]
        self._wmap = fac.word_lang_prob_map
        self._url_re, self._mail_re = Detector.URL_RE, Detector.MAIL_RE
        self._ngram = NGram
        self._norm: dict[int, str] = {}       # ord(ch) -> NGram.normalize(ch), filled lazily
        self._rows: dict[str, int] = {}       # n-gram -> row of self._mat, filled lazily
        self._words_rows: dict[tuple[str, bool], list[int]] = {}  # (word, space follows) -> its n-gram rows
        self._mat = np.zeros((4096, len(self.langs)))
        self._rng = random.Random(self.seed)  # the stream every text's detector would read
        self._words = np.zeros(0, dtype=np.int64)
        self._gauss: dict[int, tuple[float, float]] = {}
        self._grow_words(1 << 16)
        self.prior: np.ndarray | None = None  # langdetect's prior map (Detector.set_prior_map), normalised

    def set_prior(self, weights: dict[str, float] | None) -> None:
        """langdetect's prior map over ISO codes (zh spreads over zh-cn/zh-tw); None: uniform, as by default."""
        if not weights:
            self.prior = None
            return
        p = np.array([float(weights.get(c, 0.0)) for c in self.codes])
        if (p < 0).any() or p.sum() <= 0:
            raise ValueError(f"langdetect prior needs non-negative weights with a positive sum: {weights}")
        self.prior = p / p.sum()

    # ---- features: exactly Detector.append + cleaning_text + _extract_ngrams
    def features(self, text: str) -> list[int]:
        """Rows of the n-grams langdetect would sample from for `text`, in its order (empty: 'No features')."""
        text = self._url_re.sub(" ", text)
        text = self._mail_re.sub(" ", text)
        ascii_only = text.isascii()  # then neither the Vietnamese nor the non-Latin step can change it
        if not ascii_only:
            text = self._ngram.normalize_vi(text)
        text = _SPACE_RUN.sub(" ", text[:_MAX_TEXT])
        if not ascii_only:
            text = _strip_latin_if_minor(text)
        norm = self._norm
        for ch in set(text):
            if ord(ch) not in norm:
                norm[ord(ch)] = self._ngram.normalize(ch)
        parts = text.translate(norm).split(" ")
        last = len(parts) - 1
        cache = self._words_rows
        if len(cache) > self.WORD_CACHE_MAX:
            cache.clear()
        out: list[int] = []
        for k, w in enumerate(parts):
            if w:
                key = (w, k < last)
                rows = cache.get(key)
                if rows is None:
                    rows = cache[key] = self._row_ids(_word_ngrams(w, k < last, self._wmap))
                out.extend(rows)
        return out

    def _row_ids(self, grams: list[str]) -> list[int]:
        rows = self._rows
        out = []
        for g in grams:
            r = rows.get(g)
            if r is None:
                r = rows[g] = len(rows)
                if r >= len(self._mat):
                    self._mat = np.concatenate([self._mat, np.zeros_like(self._mat)])
                self._mat[r] = self._wmap[g]
            out.append(r)
        return out

    # ---- the random stream
    def _grow_words(self, n: int) -> None:
        if n <= len(self._words):
            return
        n = max(n, 2 * len(self._words))
        extra = [self._rng.getrandbits(32) for _ in range(n - len(self._words))]
        self._words = np.concatenate([self._words, np.array(extra, dtype=np.int64)])

    def _gauss_at(self, pos: int) -> tuple[float, float]:
        """random.gauss's (z, gauss_next) when its two random() calls start at stream position `pos`."""
        g = self._gauss.get(pos)
        if g is None:
            self._grow_words(pos + 4)
            w = [int(x) for x in self._words[pos:pos + 4]]
            r1 = ((w[0] >> 5) * 67108864.0 + (w[1] >> 6)) * (1.0 / 9007199254740992.0)
            r2 = ((w[2] >> 5) * 67108864.0 + (w[3] >> 6)) * (1.0 / 9007199254740992.0)
            x2pi = r1 * _TWOPI
            g2rad = math.sqrt(-2.0 * math.log(1.0 - r2))
            g = self._gauss[pos] = (math.cos(x2pi) * g2rad, math.sin(x2pi) * g2rad)
        return g

    def _fill(self, st: "_Chains", cs: np.ndarray, p0: np.ndarray) -> None:
        """Precomputes the next DRAWS results of random.choice(ngrams) for chains `cs`, from stream positions p0.

        _randbelow(n) takes 32-bit words >> (32 - n.bit_length()) and rejects values >= n, so the accepted
        draws are the candidates below n, in stream order; the stream position after each is kept.
        """
        k = 3 * self.DRAWS
        self._grow_words(int(p0.max()) + k + 1)
        cand = self._words[p0[:, None] + np.arange(k)] >> st.shift[cs, None]
        acc = cand < st.n[cs, None]
        rank = np.cumsum(acc, axis=1) - 1
        r, c = np.nonzero(acc & (rank < self.DRAWS))
        st.buf[cs[r], rank[r, c]] = st.flat[st.start[cs[r]] + cand[r, c]]
        st.end[cs[r], rank[r, c]] = p0[r] + c + 1
        st.avail[cs] = np.minimum(acc.sum(axis=1), self.DRAWS)
        st.drawn[cs] = 0

    # ---- the detection
    def probabilities(self, feats: Sequence[list[int]]) -> np.ndarray:
        """(len(feats), n_langs) averaged trial probabilities, as Detector.langprob; NaN rows for no features."""
        out = np.full((len(feats), len(self.langs)), np.nan)
        idx = [i for i, f in enumerate(feats) if len(f)]
        if idx:
            out[idx] = self._run([feats[i] for i in idx])
        return out

    def _run(self, feats: list[list[int]]) -> np.ndarray:
        """All texts' 7 trials in lockstep; state arrays hold only unfinished texts, contiguous."""
        st = _Chains(feats, len(self.langs), self.DRAWS)
        out = np.zeros((st.size, len(self.langs)))
        self._start_trials(st, np.arange(st.size))
        while st.size:
            self._advance(st)
            self._check(st, out)
        return out

    def _start_trials(self, st: "_Chains", cs: np.ndarray) -> None:
        pos = st.pos
        even = st.trial[cs] % 2 == 0  # gauss() computes a pair and caches the second for the next call
        new = cs[even]
        if new.size:
            pairs = np.array([self._gauss_at(p) for p in pos[new].tolist()])
            st.gnext[new] = pairs[:, 1]
            pos[new] += 4
        z = st.gnext[cs].copy()
        if new.size:
            z[even] = pairs[:, 0]
        st.weight[cs] = (_ALPHA + z * _ALPHA_WIDTH) / _BASE_FREQ
        st.prob[cs] = 1.0 / len(self.langs) if self.prior is None else self.prior
        st.first[cs] = True
        st.icheck[cs] = 0
        self._fill(st, cs, pos[cs])

    def _advance(self, st: "_Chains") -> None:
        """One update (a trial's first step) or five updates (later steps) per chain.

        Chains at their first step multiply by 1.0 in steps 2-5, which leaves their values bit-identical.
        """
        low = np.flatnonzero(st.avail - st.drawn < 5)
        if low.size:
            d = st.drawn[low]
            self._fill(st, low, np.where(d > 0, st.end[low, np.maximum(d - 1, 0)], st.pos[low]))
        idx = st.buf[np.arange(st.size)[:, None], st.drawn[:, None] + _STEPS]
        w = st.weight[:, None]
        first = st.first if st.first.any() else None
        prob = st.prob
        for s in range(5):  # prob[i] *= weight + lang_prob_map[i], one sampled n-gram at a time
            g = self._mat[idx[:, s]]
            g += w
            if s and first is not None:
                g[first] = 1.0
            prob *= g
        st.drawn += np.where(st.first, 1, 5)

    def _check(self, st: "_Chains", out: np.ndarray) -> None:
        """_normalize_prob + convergence test; finished trials are accumulated and restarted, finished texts
        written to `out` and dropped from the state."""
        p = st.prob
        p /= _python_sum(p)[:, None]
        done = (p.max(axis=1) > _CONV_THRESHOLD) | (st.icheck >= _ITERATION_LIMIT)
        st.icheck += 5
        st.first[:] = False
        if not done.any():
            return
        fin = np.flatnonzero(done)
        st.langprob[fin] += p[fin] / _N_TRIAL
        st.trial[fin] += 1
        st.pos[fin] = st.end[fin, st.drawn[fin] - 1]
        over = st.trial[fin] >= _N_TRIAL
        if (~over).any():
            self._start_trials(st, fin[~over])
        if over.any():
            gone = fin[over]
            out[st.ids[gone]] = st.langprob[gone]
            keep = np.ones(st.size, dtype=bool)
            keep[gone] = False
            st.compact(keep)


_STEPS = np.arange(5)


class _Chains:
    """Per-text state of the lockstep run (unfinished texts only)."""

    def __init__(self, feats: list[list[int]], n_langs: int, draws: int):
        size = len(feats)
        self.n = np.array([len(f) for f in feats], dtype=np.int64)
        self.shift = np.array([32 - int(k).bit_length() for k in self.n], dtype=np.int64)
        self.start = np.concatenate([[0], np.cumsum(self.n)[:-1]]).astype(np.int64)
        self.flat = np.fromiter(itertools.chain.from_iterable(feats), dtype=np.int64, count=int(self.n.sum()))
        self.ids = np.arange(size)                       # index of the text in the batch
        self.pos = np.zeros(size, dtype=np.int64)        # stream position at the next trial start
        self.trial = np.zeros(size, dtype=np.int64)
        self.icheck = np.zeros(size, dtype=np.int64)     # langdetect's i at the next convergence check
        self.first = np.ones(size, dtype=bool)           # next round is a trial's single first update
        self.weight = np.zeros(size)
        self.gnext = np.zeros(size)                      # random.gauss's cached second value
        self.prob = np.zeros((size, n_langs))
        self.langprob = np.zeros((size, n_langs))
        self.buf = np.zeros((size, draws), dtype=np.int64)  # precomputed n-gram rows
        self.end = np.zeros((size, draws), dtype=np.int64)  # stream position after each of them
        self.avail = np.zeros(size, dtype=np.int64)
        self.drawn = np.zeros(size, dtype=np.int64)

    _PER_CHAIN = ("n", "shift", "start", "ids", "pos", "trial", "icheck", "first", "weight", "gnext", "prob",
                  "langprob", "buf", "end", "avail", "drawn")

    @property
    def size(self) -> int:
        return len(self.ids)

    def compact(self, keep: np.ndarray) -> None:
        for name in self._PER_CHAIN:
            setattr(self, name, getattr(self, name)[keep])


def _python_sum(p: np.ndarray) -> np.ndarray:
    """Row sums with the rounding of Python's built-in sum() over a list of floats."""
    if sys.version_info < (3, 12):  # left to right, no compensation
        return np.add.accumulate(p, axis=1)[:, -1]
    f, c = p[:, 0].copy(), np.zeros(len(p))  # 3.12+: Neumaier-compensated
    for j in range(1, p.shape[1]):
        x = p[:, j]
        t = f + x
        c += np.where(np.abs(f) >= np.abs(x), (f - t) + x, (x - t) + f)
        f = t
    return np.where(np.isfinite(c) & (c != 0), f + c, f)


_SPACE_RUN = re.compile(" {2,}")
_LATIN = re.compile("[A-z]")
_NON_LATIN = re.compile("[\u0300-\U0010ffff]")


def _strip_latin_if_minor(text: str) -> str:
    """Detector.cleaning_text: drop A-z when Latin letters are under a third of the text's letters."""
    latin = len(_LATIN.findall(text))
    if latin and latin * 2 < len(_NON_LATIN.findall(text)):
        return _LATIN.sub("", text)
    return text


def _word_ngrams(w: str, space_after: bool, wmap: dict) -> list[str]:
    """The n-grams Detector._extract_ngrams emits for one normalised word (no spaces inside).

    Its buffer reads ' ' + word (+ ' ' when a space follows); at each character it emits the 1-, 2- and
    3-gram ending there, except inside a run of capitals (from the second capital on) and the bare ' '.
    """
    p = " " + w + (" " if space_after else "")
    out: list[str] = []
    for i in range(1, len(p)):
        ch = p[i]
        if ch.isupper() and p[i - 1].isupper():
            continue
        if ch != " " and ch in wmap:
            out.append(ch)
        if p[i - 1:i + 1] in wmap:
            out.append(p[i - 1:i + 1])
        if i >= 2 and p[i - 2:i + 1] in wmap:
            out.append(p[i - 2:i + 1])
    return out


# --------------------------------------------------------------------------------------------------
# lingua. Measured on the labelled set (tests/data): all 75 languages' high-accuracy models take ~1.3 GB and
# ~590 captions/CPU-s; the 52 that langdetect also knows (its 55 less kn, ml, ne; Norwegian as nb + nn) take
# ~0.9 GB and ~1,100 captions/CPU-s with the same accuracy (99.6%), so we load those: both backends then
# answer from the same language set. Low-accuracy mode (trigrams only): ~0.1 GB, ~3,500/CPU-s, 96.6%.
LINGUA_CODES = ("af", "ar", "bg", "bn", "ca", "cs", "cy", "da", "de", "el", "en", "es", "et", "fa", "fi", "fr",
                "gu", "he", "hi", "hr", "hu", "id", "it", "ja", "ko", "lt", "lv", "mk", "mr", "nb", "nl", "nn",
                "pa", "pl", "pt", "ro", "ru", "sk", "sl", "so", "sq", "sv", "sw", "ta", "te", "th", "tl", "tr",
                "uk", "ur", "vi", "zh")


class LinguaEngine:
    """lingua-language-detector over the languages langdetect also knows."""

    def __init__(self, low_accuracy: bool = False):
        from lingua import IsoCode639_1, LanguageDetectorBuilder

        builder = LanguageDetectorBuilder.from_iso_codes_639_1(*[getattr(IsoCode639_1, c.upper())
                                                                 for c in LINGUA_CODES])
        if low_accuracy:
            builder = builder.with_low_accuracy_mode()
        self._det = builder.build()

    def detect(self, texts: list[str], codes: list[str]) -> tuple[list[str], list[float], list[np.ndarray | None]]:
        """Top language, its confidence and all confidences over `codes` per text ('und', 0.0, None when lingua
        has no answer)."""
        index = {c: j for j, c in enumerate(codes)}
        langs, probs, vecs = [], [], []
        for values in self._det.compute_language_confidence_values_in_parallel(texts):
            if not values or values[0].value <= 0.0:
                langs.append(UND)
                probs.append(0.0)
                vecs.append(None)
                continue
            langs.append(iso639_1(values[0].language.iso_code_639_1.name))
            probs.append(float(values[0].value))
            vec = np.zeros(len(codes), dtype=np.float32)
            for v in values:  # nb and nn both count as no
                vec[index[iso639_1(v.language.iso_code_639_1.name)]] += v.value
            vecs.append(vec)
        return langs, probs, vecs


# --------------------------------------------------------------------------------------------------
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
        member = _membership(eng.codes, self.codes)
        for i in range(0, len(texts), self.CHUNK):  # bounds the lockstep state (~2.5 KB per text)
            part = texts[i:i + self.CHUNK]
            raw = eng.probabilities([eng.features(t) for t in part])
            lg, pr = _top_codes(raw, eng.codes)
            langs += lg
            probs += pr
            summed = np.minimum(raw @ member, 1.0).astype(np.float32)
            vecs += [None if np.isnan(row).any() else row for row in summed]
        return langs, probs, vecs


def _membership(variants: list[str], codes: list[str]) -> np.ndarray:
    """(len(variants), len(codes)) 0/1 matrix: which ISO code each backend variant (zh-cn, zh-tw) belongs to."""
    return np.array([[v == c for c in codes] for v in variants], dtype=np.float64)


def _top_codes(langprob: np.ndarray, codes: list[str]) -> tuple[list[str], list[float]]:
    """langdetect's first answer (largest probability above 0.1), mapped to ISO 639-1; the probability is summed
    over variants of that code (zh-cn + zh-tw). No answer -> 'und'."""
    uniq = sorted(set(codes))
    member = _membership(codes, uniq)  # (langs, codes)
    valid = ~np.isnan(langprob).any(axis=1)
    lp = np.where(valid[:, None], langprob, 0.0)
    top = np.argmax(lp, axis=1)
    ok = valid & (lp.max(axis=1) > _PROB_THRESHOLD)
    code_of = np.array([uniq.index(c) for c in codes])[top]
    summed = np.minimum((lp @ member)[np.arange(len(lp)), code_of], 1.0)
    langs = [codes[t] if v else UND for t, v in zip(top.tolist(), ok.tolist())]
    return langs, np.where(ok, summed, 0.0).tolist()


_DETECTORS: dict[tuple, LanguageDetector] = {}


def get_detector(cfg: LanguageConfig) -> LanguageDetector:
    """The process-wide detector for this backend/seed (profiles and models load once per worker)."""
    key = (cfg.backend, cfg.seed, cfg.min_letters, cfg.lingua_low_accuracy)
    det = _DETECTORS.get(key)
    if det is None:
        det = _DETECTORS[key] = LanguageDetector(cfg.backend, cfg.seed, cfg.min_letters, cfg.lingua_low_accuracy)
    return det


def check_backend(cfg: LanguageConfig) -> None:
    """Raises now (at pipeline build) when the configured backend, decision or word lists are unusable; builds
    the word index here (once per host) rather than on every worker at once."""
    if not cfg.enabled:
        return
    if cfg.decision not in DECISIONS:
        raise ValueError(f"language.decision {cfg.decision!r} is not one of {', '.join(DECISIONS)}")
    if cfg.word_lists not in WORD_LISTS:
        raise ValueError(f"language.word_lists {cfg.word_lists!r} is not one of {', '.join(WORD_LISTS)}")
    __import__("langdetect" if cfg.backend == "langdetect" else "lingua")
    if cfg.decision == "evidence" and cfg.word_lists != "none" and "all" not in cfg.languages:
        __import__("simplemma")
        if cfg.word_lists == "all":
            from curate.langrules import word_index

            word_index(cfg.word_index_dir)


# --------------------------------------------------------------------------------------------------
# Decisions. `argmax` is the detector's answer against the kept set. `evidence` (the default) drops a caption
# as another language only when that language clearly beats every kept one: a script that no kept language
# is written in decides at once; then the words (word_lists): with `all`, every language's list weighs them
# (a word known in k lists gives 1/k to each: "chat" is English and French, "chaton" only French); another
# language must know more of the words than every kept language, or as many with more weight while the
# detector gives the kept languages less than tie_keep_prob. Captions none of whose words any list knows (and
# `kept`, `none`) go to the backend: its best other language must beat its best kept one by `margin`. What is
# left is 'und'.
DECISIONS = ("evidence", "argmax")
WORD_LISTS = ("all", "kept", "none")
_NO_LIST = {"no": ("nb", "nn")}  # ISO 639-1 codes whose word lists go by other names
_EPS = 1e-9


def kept_word_lists(languages: Sequence[str]) -> list[frozenset[str]]:
    """The word lists of the kept languages that have one (loaded once per process)."""
    from curate.langrules import word_list

    return [wl for code in languages for c in _NO_LIST.get(code, (code,)) if (wl := word_list(c))]


def word_scores(cleaned: list[str], index) -> tuple[np.ndarray, np.ndarray]:
    """(count, weight), each (len(cleaned), len(index.codes)): how many of a caption's words each list knows, and
    the sum over them of 1/(lists knowing the word). Acronyms (NASA, BMW in a caption not all capitals) and
    camera file prefixes carry no language."""
    from curate.langrules import words_of

    per_row = [[w.lower() for w in words_of(t, keep_case=True) if not (len(w) > 1 and w.isupper() and not t.isupper())]
               for t in cleaned]
    vocab = sorted({w for ws in per_row for w in ws})
    masks = dict(zip(vocab, index.lookup(vocab).tolist()))
    n_codes = len(index.codes)
    count, weight = np.zeros((len(cleaned), n_codes)), np.zeros((len(cleaned), n_codes))
    rows = [i for i, ws in enumerate(per_row) for _ in ws]
    if not rows:
        return count, weight
    flat = np.array([masks[w] for ws in per_row for w in ws], dtype=np.uint64)
    bits = ((flat[:, None] >> np.arange(n_codes, dtype=np.uint64)) & np.uint64(1)).astype(np.float64)
    k = bits.sum(axis=1, keepdims=True)
    np.add.at(count, rows, bits)
    np.add.at(weight, rows, np.divide(bits, k, out=np.zeros_like(bits), where=k > 0))
    return count, weight


def _word_verdicts(cleaned: list[str], mat: np.ndarray, codes: list[str], wanted: set[str],
                   cfg: LanguageConfig) -> tuple[np.ndarray, np.ndarray, list[str | None]] | None:
    """(has words, drop, language) per row from every language's list; None when a kept language has no list."""
    from curate.langrules import word_index

    index = word_index(cfg.word_index_dir)
    kept_bits = [index.bits[c] for code in sorted(wanted) for c in _NO_LIST.get(code, (code,)) if c in index.bits]
    if not all(any(c in index.bits for c in _NO_LIST.get(code, (code,))) for code in wanted):
        return None
    count, weight = word_scores(cleaned, index)
    other = np.ones(len(index.codes), dtype=bool)
    other[kept_bits] = False
    c_kept, w_kept = count[:, kept_bits].max(axis=1), weight[:, kept_bits].max(axis=1)
    c_oth, w_oth = count[:, other], weight[:, other]
    kept = np.array([c in wanted for c in codes])
    p_kept = np.nan_to_num(mat)[:, kept].max(axis=1, initial=0.0)
    tie = (c_oth == c_kept[:, None]) & (w_oth > w_kept[:, None] + _EPS)
    drop = (c_oth > c_kept[:, None]).any(axis=1) | (tie.any(axis=1) & (p_kept < cfg.tie_keep_prob))
    best = np.flatnonzero(other)[np.argmax(c_oth * 1000.0 + w_oth, axis=1)]
    wins = (c_kept > c_oth.max(axis=1, initial=0.0)) | ((c_kept == c_oth.max(axis=1, initial=0.0))
                                                        & (w_kept > w_oth.max(axis=1, initial=0.0) + _EPS))
    best_kept = np.array(kept_bits)[np.argmax(count[:, kept_bits] * 1000.0 + weight[:, kept_bits], axis=1)]
    names = [iso639_1(c) for c in index.codes]
    lang = [names[b] if d else (names[k] if w else None) for d, b, k, w in zip(drop, best, best_kept, wins)]
    return count.sum(axis=1) > 0, drop, lang


def decide(cleaned: list[str], langs: list[str], probs: np.ndarray, mat: np.ndarray, codes: list[str],
           cfg: LanguageConfig) -> tuple[list[str], np.ndarray]:
    """(language per row, drop-as-lang mask) for detected rows; see DECISIONS."""
    wanted = None if "all" in cfg.languages else set(cfg.languages)
    if wanted is None or cfg.decision == "argmax":
        return list(langs), language_drop_mask(langs, probs, cfg)
    from curate.langrules import SCRIPT_LANGS, deciding_script, known_share, words_of

    kept = np.array([c in wanted for c in codes])
    verdicts = _word_verdicts(cleaned, mat, codes, wanted, cfg) if cfg.word_lists == "all" else None
    lists = kept_word_lists(sorted(wanted)) if cfg.word_lists == "kept" else []
    out, drop = list(langs), np.zeros(len(langs), dtype=bool)
    for i, (text, lang) in enumerate(zip(cleaned, langs)):
        script = deciding_script(text)
        if script is not None and not wanted & set(SCRIPT_LANGS[script]):
            drop[i] = True  # written in a script that no kept language uses: decided even for one character
            out[i] = lang if lang in SCRIPT_LANGS[script] else SCRIPT_LANGS[script][0]
            continue
        if lang == UND:
            drop[i] = not cfg.keep_und
            continue
        row = np.nan_to_num(mat[i])
        best_kept = codes[int(np.argmax(np.where(kept, row, -1.0)))]
        if verdicts is not None and verdicts[0][i]:
            drop[i] = bool(verdicts[1][i])
            word_lang = verdicts[2][i]
            if drop[i]:
                out[i] = word_lang
            elif lang not in wanted:
                out[i] = word_lang or UND  # the kept language's words win, or nothing tells
                drop[i] = word_lang is None and not cfg.keep_und
            else:
                drop[i] = float(probs[i]) < cfg.min_lang_prob
            continue
        if lists and known_share(words_of(text), lists) >= cfg.min_known_share:
            out[i] = lang if lang in wanted else best_kept  # the words are the kept language's
            continue
        p_kept, p_other = row[kept].max(initial=0.0), row[~kept].max(initial=0.0)
        if p_other - p_kept > cfg.margin:
            drop[i] = True
        elif lang not in wanted:
            out[i] = UND  # too little evidence either way
            drop[i] = not cfg.keep_und
        else:
            drop[i] = float(probs[i]) < cfg.min_lang_prob
    return out, drop


def language_drop_mask(langs: list[str], probs: np.ndarray, cfg: LanguageConfig) -> np.ndarray:
    """True where a detected row must be dropped as `lang` under the argmax rule (or languages = all)."""
    wanted = None if "all" in cfg.languages else set(cfg.languages)
    drop = np.zeros(len(langs), dtype=bool)
    for i, (lang, p) in enumerate(zip(langs, probs)):
        if lang == UND:
            drop[i] = not cfg.keep_und
        else:
            drop[i] = (wanted is not None and lang not in wanted) or p < cfg.min_lang_prob
    return drop


def apply_language(table: pa.Table, cfg: LanguageConfig) -> pa.Table:
    """Detects the language of rows still ok (lang, lang_prob; null for rows already dropped), drops as `lang`.

    lang_prob is the backend's probability of the language recorded (0.0 for 'und')."""
    if not cfg.enabled:
        return table
    rows = np.flatnonzero(ok_mask(table).to_numpy(zero_copy_only=False))
    texts = pc.take(table[COL.CAPTION_CLEAN], pa.array(rows, pa.int64())).to_pylist() if rows.size else []
    det = get_detector(cfg)
    cleaned, langs, probs, mat = det.detect_full(texts)
    langs, drop_rows = decide(cleaned, langs, probs, mat, det.codes, cfg)
    probs = _prob_of(langs, probs, mat, det.codes, cfg)
    lang_col: list[str | None] = [None] * table.num_rows
    prob_col = np.full(table.num_rows, np.nan, dtype=np.float32)
    for r, lang, p in zip(rows, langs, probs):
        lang_col[r] = lang
        prob_col[r] = p
    table = set_column(table, COL.LANG, pa.array(lang_col, pa.string()))
    table = set_column(table, COL.LANG_PROB, pa.array(prob_col, pa.float32(), mask=np.isnan(prob_col)))
    drop = np.zeros(table.num_rows, dtype=bool)
    drop[rows] = drop_rows
    return set_status(table, pa.array(drop, pa.bool_()), Status.LANG)


def _prob_of(langs: list[str], top: np.ndarray, mat: np.ndarray, codes: list[str], cfg: LanguageConfig) -> np.ndarray:
    """The backend's probability for each row's recorded language (the top answer's when it is unchanged)."""
    if "all" in cfg.languages or cfg.decision == "argmax":
        return top
    index = {c: j for j, c in enumerate(codes)}
    out = top.copy()
    for i, lang in enumerate(langs):
        if lang == UND:
            out[i] = 0.0
        elif not np.isnan(mat[i]).any():
            out[i] = mat[i, index[lang]] if lang in index else out[i]
    return out


def prefilter(table: pa.Table, text: TextConfig, lang: LanguageConfig) -> pa.Table:
    """The pre-download stage: caption_clean, text rules, duplicate URLs, then language. Row count in = out."""
    n = table.num_rows
    table = apply_language(apply_text_rules(table, text), lang)
    if table.num_rows != n:
        raise RuntimeError(f"prefilter lost rows: {n} in, {table.num_rows} out")
    return table


__all__ = ["LanguageDetector", "LangdetectEngine", "LinguaEngine", "clean_for_detection", "get_detector",
           "check_backend", "iso639_1", "prefilter", "apply_language", "decide", "language_drop_mask", "DECISIONS",
           "WORD_LISTS", "word_scores", "UND"]
