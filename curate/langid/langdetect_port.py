"""langdetect 1.0.9, vectorised with numpy and bit-identical to langdetect.detect_langs, over a batch."""
from __future__ import annotations

import itertools
import math
import random
import re
import sys
from collections.abc import Sequence

import numpy as np

from curate.langid.cleaning import UND, iso639_1
from curate.langid.langdetect_profiles import load_profiles

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
    """langdetect's algorithm over a batch; langdetect's profiles read compactly (once per process)."""

    WORD_CACHE_MAX = 500_000  # distinct normalised words whose n-gram rows are remembered
    DRAWS = 40                # random draws precomputed per chain and refill (8 rounds of 5 updates)

    def __init__(self, seed: int):
        from langdetect import DetectorFactory
        from langdetect.detector import Detector
        from langdetect.utils.ngram import NGram

        # Not used by the engine (its stream comes from `seed`): makes plain langdetect calls in this process
        # deterministic too, and under the same seed, so they agree with the engine.
        if DetectorFactory.seed is None:
            DetectorFactory.seed = seed
        consts = (Detector.ITERATION_LIMIT, Detector.CONV_THRESHOLD, Detector.BASE_FREQ, Detector.ALPHA_DEFAULT,
                  Detector.ALPHA_WIDTH, Detector.PROB_THRESHOLD)
        if consts != (_ITERATION_LIMIT, _CONV_THRESHOLD, _BASE_FREQ, _ALPHA, _ALPHA_WIDTH, _PROB_THRESHOLD):
            raise RuntimeError(f"langdetect's constants changed ({consts}); the vectorised engine mirrors 1.0.9")
        # Not langdetect's DetectorFactory: its boxed-float lists cost ~64 MB of RSS per worker (issue #14).
        self._prof = load_profiles()
        self.seed = int(seed)
        self.langs = list(self._prof.langs)
        self.codes = [iso639_1(c) for c in self.langs]
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
                    rows = cache[key] = self._row_ids(_word_ngrams(w, k < last, self._prof.index))
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
                self._mat[r] = self._prof.row(g)
            out.append(r)
        return out

    # ---- the random stream
    def _grow_words(self, n: int) -> None:
        if n <= len(self._words):
            return
        n = max(n, 2 * len(self._words))
        k, bits = n - len(self._words), self._rng.getrandbits
        # fromiter, not a list: 65,536+ boxed ints at once would leave MBs of freed heap in the worker's RSS
        extra = np.fromiter((bits(32) for _ in range(k)), dtype=np.int64, count=k)
        self._words = np.concatenate([self._words, extra])

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


def membership(variants: list[str], codes: list[str]) -> np.ndarray:
    """(len(variants), len(codes)) 0/1 matrix: which ISO code each backend variant (zh-cn, zh-tw) belongs to."""
    return np.array([[v == c for c in codes] for v in variants], dtype=np.float64)


def top_codes(langprob: np.ndarray, codes: list[str]) -> tuple[list[str], list[float]]:
    """langdetect's first answer (largest probability above 0.1), mapped to ISO 639-1; the probability is summed
    over variants of that code (zh-cn + zh-tw). No answer -> 'und'."""
    uniq = sorted(set(codes))
    member = membership(codes, uniq)  # (langs, codes)
    valid = ~np.isnan(langprob).any(axis=1)
    lp = np.where(valid[:, None], langprob, 0.0)
    top = np.argmax(lp, axis=1)
    ok = valid & (lp.max(axis=1) > _PROB_THRESHOLD)
    code_of = np.array([uniq.index(c) for c in codes])[top]
    summed = np.minimum((lp @ member)[np.arange(len(lp)), code_of], 1.0)
    langs = [codes[t] if v else UND for t, v in zip(top.tolist(), ok.tolist())]
    return langs, np.where(ok, summed, 0.0).tolist()
