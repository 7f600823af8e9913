"""Shared pieces of the pipeline tests: a served generated corpus, a small run config, checks on a finished run."""
from __future__ import annotations

import functools
import hashlib
import json
import re
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from curate.config import load_config
from curate.democorpus import CorpusServer, make_corpus
from curate.schema import COL, Status

TINY_CLIP = {  # an open_clip model config small enough to score on CPU in milliseconds
    "embed_dim": 16,
    "vision_cfg": {"image_size": 32, "layers": 1, "width": 32, "patch_size": 8, "head_width": 16},
    "text_cfg": {"context_length": 32, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1},
}


def write_corpus(tmp: Path, base_url: str, n: int, seed: int = 0) -> tuple[Path, list, dict]:
    """Writes a url list (parquet: url, caption, kind) of `n` generated rows; returns (path, rows, files)."""
    rows, files = make_corpus(n, seed, base_url)
    path = tmp / "urls.parquet"
    pq.write_table(pa.table({"url": [r.url for r in rows], "caption": [r.caption for r in rows],
                             "kind": [r.kind for r in rows]}), path)
    return path, rows, files


@contextmanager
def served_corpus(tmp: Path, n: int, seed: int = 0):
    """A CorpusServer on 127.0.0.1 serving `n` generated rows whose url list write_corpus put in `tmp`;
    yields (server, url-list path, rows)."""
    with CorpusServer() as srv:
        path, rows, files = write_corpus(tmp, srv.base_url, n=n, seed=seed)
        srv.set_files(files)
        yield srv, path, rows


def tiny_clip_config(tmp: Path) -> Path:
    p = tmp / "tiny-clip.json"
    p.write_text(json.dumps(TINY_CLIP))
    return p


def run_config(input_path: Path, output: Path, clip_model: Path | None = None, **over):
    """A run config for tests: private networks allowed, small units, English only, small shards."""
    o = {"input.paths": [str(input_path)], "output": str(output), "download.allow_private_networks": True,
         "download.timeout": 2, "download.retries": 0, "input.unit_size": 25, "language.languages": ["en"],
         "image.size": 64, "shards.samples_per_shard": 16, "num_cpus": 2, "progress": False,
         "clip.enabled": clip_model is not None, "clip.batch_size": 32}
    if clip_model is not None:
        o["clip.model"] = str(clip_model)
    o.update(over)
    return load_config(None, o)


# columns that record when the run read something from the web, not what it made: two runs on the same inputs
# differ there and only there (the opt-out evidence: when each origin's robots.txt / tdmrep.json was read)
VOLATILE_COLUMNS = {"metadata/optout_hosts.parquet": ("fetched_at",)}


def tree_digest(root: Path, subdirs=("shards", "metadata")) -> dict[str, str]:
    """sha256 of every file under the given subfolders (for byte-identity checks); a file with VOLATILE_COLUMNS
    is digested by its content without them."""
    out = {}
    for sub in subdirs:
        for p in sorted((root / sub).rglob("*")):
            rel = p.relative_to(root).as_posix()
            if p.is_file() and rel in VOLATILE_COLUMNS:
                rows = pq.read_table(p).drop_columns(list(VOLATILE_COLUMNS[rel])).to_pylist()
                out[rel] = hashlib.sha256(json.dumps(rows, sort_keys=True).encode()).hexdigest()
            elif p.is_file():
                out[str(p.relative_to(root))] = hashlib.sha256(p.read_bytes()).hexdigest()
    return out


# the near-duplicate reasons of curate/dedup/cluster.py
NEAR_REASON = re.compile(r"duplicate:(?P<how>low_detail:|second_hash:|plain:)?duplicate_of:(?P<rep>.+)")


def assert_duplicate_rule(out: Path) -> int:
    """The dedup rule on a finished run (its config.yaml and metadata/ledger), per duplicate row and its
    representative <uid>: duplicate_of:<uid> within dedup.k on the configured hash; low_detail:duplicate_of:<uid>
    the same and the second hash within dedup.low_detail_k (or, lacking one, the same first hash);
    second_hash:duplicate_of:<uid> the second hash within dedup.second_k and the first within dedup.loose_k;
    plain:duplicate_of:<uid> both plain with grids alike (plain_agrees); with dedup.colour_check, any of them also
    with rgb_grids that agree (colour_agrees). And <uid> is a row of the run
    that no dedup decision dropped (a later global filter may have). Semantic dedup's duplicate:semantic_of:<uid>
    rows are checked by assert_semantic_rule. Returns the number of rows checked."""
    from curate.dedup.cluster import hash_columns

    cfg = load_config(str(out / "config.yaml")).dedup
    first, second = hash_columns(cfg)
    rows = pq.read_table(out / "metadata" / "ledger",
                         columns=[COL.UID, COL.STATUS, COL.REASON, first, second, COL.RGB_GRID, COL.DETAIL])
    by_uid = {r[COL.UID]: r for r in rows.to_pylist()}
    checked = 0
    for r in by_uid.values():
        m = NEAR_REASON.fullmatch(r[COL.REASON] or "") if r[COL.STATUS] == Status.DUPLICATE else None
        if m is None:
            continue
        rep, where = by_uid.get(m["rep"]), f"{out}: row {r[COL.UID]} ({r[COL.REASON]})"
        assert rep is not None, f"{where}: its representative is not a row of the run"
        assert rep[COL.STATUS] not in (Status.DUPLICATE, Status.EVAL_OVERLAP, Status.OK), \
            f"{where}: its representative was dropped as {rep[COL.REASON]}"
        assert colour_agrees(r[COL.RGB_GRID], rep[COL.RGB_GRID], cfg), f"{where}: colours that the check parts"
        checked += 1
        if m["how"] == "plain:":
            assert plain_agrees(r, rep, cfg), f"{where}: not both plain with grids alike"
            continue
        dist = functools.partial(_hash_bits, r, rep)
        bound = cfg.loose_k if m["how"] == "second_hash:" else cfg.k
        assert dist(first) <= bound, f"{where}: {dist(first)} bits from its representative on {first}, bound {bound}"
        if m["how"] == "low_detail:":
            ok = dist(second) <= cfg.low_detail_k if None not in (r[second], rep[second]) else r[first] == rep[first]
            assert ok, f"{where}: a low-detail match without {second} within {cfg.low_detail_k}"
        if m["how"] == "second_hash:":
            assert dist(second) <= cfg.second_k, f"{where}: {dist(second)} bits on {second}, second_k={cfg.second_k}"
    return checked + assert_semantic_rule(out)


def colour_agrees(a: bytes | None, b: bytes | None, cfg) -> bool:
    """dedup's colour check written the slow way (curate/dedup/cluster.py _same_colour), for two rgb_grids (48
    bytes each, or None: no check): per cell, each of r, g, b (+GRID_OFFSET) over the cell's mean apart by at
    most cfg.colour_chroma, unless one grid is grey (every such share within GREY_TOL of 1)."""
    from curate.dedup.cluster import GREY_TOL, GRID_OFFSET

    if not cfg.colour_check or a is None or b is None:
        return True
    cells = lambda g: [[v + GRID_OFFSET for v in g[i:i + 3]] for i in range(0, len(g), 3)]  # noqa: E731
    shares = lambda g: [[v / (sum(c) / 3) for v in c] for c in cells(g)]  # noqa: E731
    if any(all(abs(x - 1) <= GREY_TOL for c in shares(g) for x in c) for g in (a, b)):
        return True
    return max(abs(x - y) for ca, cb in zip(shares(a), shares(b)) for x, y in zip(ca, cb)) <= cfg.colour_chroma


def plain_agrees(a: dict, b: dict, cfg) -> bool:
    """dedup's plain rule written the slow way (curate/dedup/cluster.py _plain, _claim_plain), for two rows with
    detail and rgb_grid: both details below cfg.plain_detail; each grid over its mean (at least PLAIN_FLOOR) x128
    with a mean absolute difference of at most cfg.plain_tol; their means' log ratio at most PLAIN_BRIGHTNESS.
    In float32 as there, so a pair on the bound decides alike."""
    from curate.dedup.cluster import PLAIN_BRIGHTNESS, PLAIN_FLOOR

    if any(r[COL.DETAIL] is None or r[COL.DETAIL] >= cfg.plain_detail or r[COL.RGB_GRID] is None for r in (a, b)):
        return False
    grids = [np.frombuffer(r[COL.RGB_GRID], np.uint8).astype(np.float32)[None] for r in (a, b)]
    bright = [np.maximum(g.mean(axis=1), PLAIN_FLOOR) for g in grids]
    (na, nb) = (g / m[:, None] * 128 for g, m in zip(grids, bright))
    total = 0.0
    for d in np.abs(na[0] - nb[0]):
        total += float(d)
    return total / na.shape[1] <= cfg.plain_tol and abs(np.log(bright[0])[0] - np.log(bright[1])[0]) <= PLAIN_BRIGHTNESS


# the semantic dedup reason of curate/dedup/semantic.py
SEMANTIC_REASON = re.compile(r"duplicate:semantic_of:(?P<rep>.+)")
EMB_TOL = 1e-5  # float32 rounding of the cosine (curate/dedup/semantic.py compares with TOL = 1e-6)


def assert_semantic_rule(out: Path) -> int:
    """The semantic dedup rule on a finished run: every duplicate:semantic_of:<uid> row's stored image embedding
    (stage/*.emb.parquet) is within dedup.semantic_eps (cosine distance) of <uid>'s, and <uid> is a row of the run
    that no dedup decision dropped. Returns the number of rows checked."""
    import numpy as np

    from curate.clip.scorer import IMAGE_EMB

    rows = pq.read_table(out / "metadata" / "ledger", columns=[COL.UID, COL.STATUS, COL.REASON]).to_pylist()
    by_uid = {r[COL.UID]: r for r in rows}
    pairs = [(r, m["rep"]) for r in rows if (m := SEMANTIC_REASON.fullmatch(r[COL.REASON] or ""))]
    if not pairs:
        return 0
    eps = load_config(str(out / "config.yaml")).dedup.semantic_eps
    emb = {}
    for path in sorted((out / "stage").glob("*.emb.parquet")):
        t = pq.read_table(path, columns=[COL.UID, IMAGE_EMB]).to_pylist()
        emb.update((e[COL.UID], np.asarray(e[IMAGE_EMB], np.float32)) for e in t)
    for r, rep_uid in pairs:
        rep, where = by_uid.get(rep_uid), f"{out}: row {r[COL.UID]} ({r[COL.REASON]})"
        assert rep is not None, f"{where}: its representative is not a row of the run"
        assert rep[COL.STATUS] not in (Status.DUPLICATE, Status.EVAL_OVERLAP, Status.OK), \
            f"{where}: its representative was dropped as {rep[COL.REASON]}"
        a, b = emb[r[COL.UID]], emb[rep_uid]
        dist = 1 - float(a @ b) / float(np.linalg.norm(a) * np.linalg.norm(b))
        assert dist <= eps + EMB_TOL, f"{where}: cosine distance {dist:.6f} from its representative, eps {eps}"
    return len(pairs)


def _hash_bits(a: dict, b: dict, col: str) -> int:
    """Bits that differ between two ledger rows' hash `col`; 65 (beyond any bound) when either lacks it."""
    return bin(a[col] ^ b[col]).count("1") if None not in (a[col], b[col]) else 65


_CHECKED: set = set()


def check_new_runs(root: Path) -> int:
    """assert_duplicate_rule on every finished run (config.yaml, manifest.json and metadata/ledger) under `root`
    not checked before in this session (tests/pipeline/conftest.py calls it after every pipeline test).
    Returns the number of runs checked now."""
    n = 0
    for cfg_path in sorted(root.rglob("config.yaml")):
        out = cfg_path.parent
        manifest = out / "manifest.json"
        if not (manifest.exists() and (out / "metadata" / "ledger").exists()):
            continue
        key = (str(out), manifest.stat().st_mtime_ns)
        if key not in _CHECKED:
            assert_duplicate_rule(out)
            _CHECKED.add(key)
            n += 1
    return n
