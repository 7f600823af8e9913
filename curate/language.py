"""Curate's language rule: detects each caption still ok (curate.langid) and decides keep or drop as `lang`."""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from curate.config import LanguageConfig
from curate.langid.cleaning import UND, iso639_1
from curate.langid.detector import get_detector
from curate.schema import COL, Status, ok_mask, set_column, set_status

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


__all__ = ["check_backend", "apply_language", "decide", "language_drop_mask", "kept_word_lists", "word_scores",
           "DECISIONS", "WORD_LISTS"]
