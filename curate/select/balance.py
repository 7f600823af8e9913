"""MetaCLIP concept balancing (Aho–Corasick whole-word matching, per-entry caps) and language caps/shares."""
from __future__ import annotations

import hashlib
import itertools
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

UNMATCHED = "<unmatched>"  # the pseudo-entry that unmatched captions share when balance.unmatched == cap
CHUNK_ROWS = 100_000  # captions matched per automaton pass: bounds the code-point buffer (~4 bytes/char)
_MASK64 = np.uint64(0xFFFFFFFFFFFFFFFF)


# ---------------------------------------------------------------- hashing: row-order independent draws
def _splitmix64(x: np.ndarray) -> np.ndarray:
    """A 64-bit mixer (splitmix64 finaliser) over a uint64 array; wraps modulo 2**64 on purpose."""
    with np.errstate(over="ignore"):
        x = x + np.uint64(0x9E3779B97F4A7C15)
        x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        return x ^ (x >> np.uint64(31))


def str_hash64(s: str) -> int:
    """A stable 64-bit hash of a string (blake2b): same on every machine and Python run."""
    return int.from_bytes(hashlib.blake2b(s.encode("utf-8"), digest_size=8).digest(), "little")


def uid_hash64(uids: pa.Array | pa.ChunkedArray) -> np.ndarray:
    """uint64 per uid. 32-hex uids (blake2b-128, the house format) are read directly, vectorised;
    any other uid is hashed with blake2b. Decided per row, so the result never depends on the batch."""
    arr = pc.cast(uids, pa.string())
    arr = arr.combine_chunks() if isinstance(arr, pa.ChunkedArray) else arr
    n = len(arr)
    out = np.zeros(n, dtype=np.uint64)
    if n == 0:
        return out
    is_hex = pc.and_(pc.equal(pc.utf8_length(arr), 32), pc.match_substring_regex(arr, "^[0-9a-fA-F]{32}$"))
    is_hex = pc.fill_null(is_hex, False).to_numpy(zero_copy_only=False)
    idx = np.flatnonzero(is_hex)
    if len(idx):
        hexes = pc.utf8_lower(arr.take(pa.array(idx))).to_pylist()
        raw = np.frombuffer(bytes.fromhex("".join(hexes)), dtype="<u8").reshape(-1, 2)
        out[idx] = raw[:, 0] ^ _splitmix64(raw[:, 1])
    other = np.flatnonzero(~is_hex)
    if len(other):
        vals = arr.take(pa.array(other)).to_pylist()
        out[other] = np.array([str_hash64("" if v is None else v) for v in vals], dtype=np.uint64)
    return out


def uniform(seed: int, uid_h: np.ndarray, salt: np.ndarray | int) -> np.ndarray:
    """Uniform [0, 1) draws that are a pure function of (seed, uid, salt): the same row gets the
    same draw whatever the row order or partitioning of the run."""
    salt = np.asarray(salt, dtype=np.uint64)
    seed_h = np.uint64(str_hash64(f"seed:{int(seed)}"))
    h = _splitmix64(_splitmix64(uid_h ^ seed_h) ^ salt)
    return (h >> np.uint64(11)).astype(np.float64) * (1.0 / (1 << 53))


# ---------------------------------------------------------------- vocabulary and matching
def load_vocabulary(spec: str, fs_open=None) -> list[str]:
    """Vocabulary entries: 'imagenet' (open_clip's ImageNet class names) or a file, one entry a line.

    Blank lines and duplicates are dropped; order is kept (it fixes entry ids, not results)."""
    if spec == "imagenet":
        raw = list(_imagenet_classnames())
    else:
        with open(spec, encoding="utf-8") as f:
            raw = f.read().splitlines()
    seen, out = set(), []
    for e in raw:
        e = e.strip()
        if e and "\n" not in e and e not in seen:
            seen.add(e)
            out.append(e)
    return out


def _imagenet_classnames() -> tuple[str, ...]:
    """open_clip.zero_shot_metadata.IMAGENET_CLASSNAMES, loaded from its file alone: importing the
    open_clip package would pull in torch (seconds) for a tuple of strings."""
    import importlib.util
    from pathlib import Path
    spec = importlib.util.find_spec("open_clip")
    if spec is None or not spec.submodule_search_locations:
        raise ImportError("balance.vocabulary 'imagenet' needs open_clip_torch installed")
    path = Path(list(spec.submodule_search_locations)[0]) / "zero_shot_metadata.py"
    mod_spec = importlib.util.spec_from_file_location("_curate_zero_shot_metadata", path)
    mod = importlib.util.module_from_spec(mod_spec)
    mod_spec.loader.exec_module(mod)
    return tuple(mod.IMAGENET_CLASSNAMES)


@dataclass
class Matcher:
    """An Aho–Corasick automaton over a vocabulary; matches whole words, case-insensitively by default."""
    entries: list[str]
    case_sensitive: bool = False

    def __post_init__(self):
        import ahocorasick
        self._auto = ahocorasick.Automaton()
        keys = self.entries if self.case_sensitive else [e.lower() for e in self.entries]
        self.lengths = np.fromiter((len(k) for k in keys), dtype=np.int64, count=len(keys))
        first: dict[str, int] = {}
        for i, k in enumerate(keys):
            first.setdefault(k, i)  # entries equal after lowercasing share the first id
        for k, i in first.items():
            self._auto.add_word(k, i)
        self._auto.make_automaton()

    def match(self, captions: pa.Array | pa.ChunkedArray) -> tuple[np.ndarray, np.ndarray]:
        """(row, entry id) pairs, each pair once, sorted by row then entry; nulls match nothing."""
        arr = captions.combine_chunks() if isinstance(captions, pa.ChunkedArray) else captions
        rows, ents = [], []
        for start in range(0, len(arr), CHUNK_ROWS):
            r, e = self._match_chunk(arr.slice(start, CHUNK_ROWS))
            rows.append(r + start)
            ents.append(e)
        if not rows:
            return np.zeros(0, np.int64), np.zeros(0, np.int64)
        return np.concatenate(rows), np.concatenate(ents)

    def _match_chunk(self, arr: pa.Array) -> tuple[np.ndarray, np.ndarray]:
        texts = pc.fill_null(pc.replace_substring(arr, "\n", " "), "").to_pylist()
        if not self.case_sensitive:
            texts = [t.lower() for t in texts]  # str.lower, as for the entries
        # one automaton pass over all captions joined by '\n' (no entry holds '\n', so no match spans two)
        text = "\n".join(texts)
        lens = np.fromiter((len(t) + 1 for t in texts), dtype=np.int64, count=len(texts))
        offsets = np.concatenate([[0], np.cumsum(lens)[:-1]])
        hits = np.fromiter(itertools.chain.from_iterable(self._auto.iter(text)), dtype=np.int64).reshape(-1, 2)
        if len(hits) == 0:
            return np.zeros(0, np.int64), np.zeros(0, np.int64)
        end, ent = hits[:, 0], hits[:, 1]
        start = end - self.lengths[ent] + 1
        word = _word_chars(text)
        before_ok = (start == 0) | ~word[np.maximum(start - 1, 0)]
        after_ok = (end + 1 >= len(word)) | ~word[np.minimum(end + 1, len(word) - 1)]
        keep = before_ok & after_ok
        row = np.searchsorted(offsets, start[keep], side="right") - 1
        pairs = np.unique(row * np.int64(len(self.entries) + 1) + ent[keep])
        return pairs // (len(self.entries) + 1), pairs % (len(self.entries) + 1)


def _word_chars(text: str) -> np.ndarray:
    """Boolean per code point: True for letters, digits and '_' (what a whole-word match may not touch)."""
    cps = np.frombuffer(text.encode("utf-32-le"), dtype=np.uint32)
    word = np.zeros(len(cps), dtype=bool)
    ascii_ = cps < 128
    word[ascii_] = _ASCII_WORD[cps[ascii_]]
    rest = np.flatnonzero(~ascii_)
    if len(rest):
        uniq, inv = np.unique(cps[rest], return_inverse=True)
        word[rest] = np.array([chr(c).isalnum() for c in uniq], dtype=bool)[inv]
    return word


_ASCII_WORD = np.array([chr(c).isalnum() or chr(c) == "_" for c in range(128)], dtype=bool)


@lru_cache(maxsize=4)
def cached_matcher(spec: str, case_sensitive: bool) -> Matcher:
    """One automaton per vocabulary per process (a 500k-entry build takes seconds)."""
    return Matcher(load_vocabulary(spec), case_sensitive)


# ---------------------------------------------------------------- MetaCLIP balancing
def concept_keep(uid_h: np.ndarray, rows: np.ndarray, ents: np.ndarray, entries: list[str], t: int,
                 unmatched: str, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """MetaCLIP's draw. Each matched entry e of a row draws with p_e = t / max(count_e, t); the row is
    kept if any draw succeeds. Rows without a match: keep | drop | cap (one pseudo-entry).

    uid_h: uint64 per candidate row; (rows, ents): match pairs, ents indexing `entries`.
    The draw of (row, e) is a pure function of (seed, uid, entry string). Returns (keep mask, count per entry)."""
    n = len(uid_h)
    counts = np.bincount(ents, minlength=len(entries)).astype(np.int64)
    p = t / np.maximum(counts, t).astype(np.float64)
    salt = np.zeros(len(entries), dtype=np.uint64)
    for e in np.unique(ents):  # only matched entries: a 500k vocabulary is not hashed for nothing
        salt[e] = str_hash64(entries[e])
    success = uniform(seed, uid_h[rows], salt[ents]) < p[ents]
    keep = np.zeros(n, dtype=bool)
    keep[rows[success]] = True
    matched = np.zeros(n, dtype=bool)
    matched[rows] = True
    free = ~matched
    if unmatched == "keep":
        keep |= free
    elif unmatched == "cap":
        n_free = int(free.sum())
        p_free = t / max(n_free, t)
        keep |= free & (uniform(seed, uid_h, np.uint64(str_hash64(UNMATCHED))) < p_free)
    elif unmatched != "drop":
        raise ValueError(f"balance.unmatched: {unmatched!r} is not one of keep, drop, cap")
    return keep, counts


# ---------------------------------------------------------------- language caps and shares
def lang_keep(langs: list[str] | np.ndarray, uid_h: np.ndarray, caps: dict, shares: dict,
              seed: int) -> np.ndarray:
    """Keep mask over candidate rows: per-language caps first (exact counts), then target shares.

    caps {lang: max rows}. shares {lang: s}: listed languages end with share s of the kept set, the
    unlisted ones together share 1 - sum(s) (dropped entirely when the shares sum to 1). The kept set
    is the largest that meets the shares. Which rows survive is decided by a seeded hash rank, so it
    does not depend on row order."""
    langs = np.asarray(langs, dtype=object)
    n = len(langs)
    keep = np.ones(n, dtype=bool)
    rank = uniform(seed, uid_h, np.uint64(str_hash64("lang")))
    for lang, cap in caps.items():
        _keep_lowest(keep, (langs == lang) & keep, int(cap), rank)
    if shares:
        total_share = float(sum(shares.values()))
        if not 0 < total_share <= 1 + 1e-9:
            raise ValueError(f"balance.lang_shares: shares must sum to (0, 1], got {total_share}")
        groups = {lang: (langs == lang) & keep for lang in shares}
        rest = keep & ~np.isin(langs, list(shares))
        n_rest = int(rest.sum())
        rest_share = max(0.0, 1.0 - total_share)
        limits = [groups[g].sum() / s for g, s in shares.items() if s > 0]
        if rest_share > 1e-9 and n_rest:
            limits.append(n_rest / rest_share)
        elif rest_share > 1e-9:  # nothing to fill the rest: shares are relative among the listed
            shares = {g: s / total_share for g, s in shares.items()}
            limits = [groups[g].sum() / s for g, s in shares.items() if s > 0]
        total = min(limits) if limits else 0.0
        for g, s in shares.items():
            _keep_lowest(keep, groups[g], int(np.floor(s * total + 1e-9)), rank)
        _keep_lowest(keep, rest, int(np.floor(rest_share * total + 1e-9)) if n_rest else 0, rank)
    return keep


def _keep_lowest(keep: np.ndarray, group: np.ndarray, k: int, rank: np.ndarray) -> None:
    """Within `group`, keep only the k rows of lowest rank (in place)."""
    idx = np.flatnonzero(group)
    if len(idx) <= k:
        return
    order = idx[np.argsort(rank[idx], kind="stable")]
    keep[order[max(k, 0):]] = False
