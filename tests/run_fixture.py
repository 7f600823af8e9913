"""Builds a small but realistic run output folder (ledger, samples, stage, shards, manifest) for report tests."""
from __future__ import annotations

import hashlib
import io
import json
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
from PIL import Image

from curate import stage_io
from curate.config import RunConfig, ClipConfig, config_hash, dump_yaml, to_dict
from curate.optout.evidence import optout_summary
from curate.schema import COL, Status, conform, reason

UNIT_SIZE = 20  # rows per work unit in the fixture
THRESHOLD = 0.25  # the fixture's clip.threshold

# One entry per input row: (status, detail, lang, domain, clip_score, concepts).
# The order mimics a real run: early drops have no language/image, later ones carry everything.
_ROWS = [
    (Status.INVALID_URL, None, None, None, None, None),
    (Status.INVALID_URL, None, None, "ftp", None, None),
    (Status.CAPTION_RULE, "empty", None, "a", None, None),
    (Status.CAPTION_RULE, "too_short", "de", "b", None, None),
    (Status.LANG, None, "ru", "a", None, None),
    (Status.LANG, None, "ru", "b", None, None),
    (Status.DUPLICATE_URL, None, "en", "a", None, None),
    (Status.DUPLICATE_PREFETCH, None, "en", "a", None, None),
    (Status.ROBOTS, None, "en", "b", None, None),
    (Status.DOWNLOAD_ERROR, "timeout", "en", "b", None, None),
    (Status.DOWNLOAD_ERROR, "timeout", "fr", "b", None, None),
    (Status.DOWNLOAD_ERROR, "http_404", "en", "a", None, None),
    (Status.DECODE_ERROR, "unidentified", "en", "a", None, None),
    (Status.TOO_SMALL, None, "en", "a", None, None),
    (Status.BAD_ASPECT, None, "fr", "c", None, None),
    (Status.KEPT, None, "en", "a", 0.41, ["dog"]),            # 15: representative of cluster A
    (Status.DUPLICATE, "dupA", "en", "a", 0.40, ["dog"]),
    (Status.DUPLICATE, "sha256", "en", "c", 0.39, ["dog"]),
    (Status.LOW_CLIP_SCORE, None, "de", "c", 0.12, ["cat"]),  # 18: representative of cluster B
    (Status.DUPLICATE, "dupB", "de", "c", 0.11, ["cat"]),
    (Status.DUPLICATE, "dupA", "en", "a", 0.30, None),       # 20: in unit 1, its representative in unit 0
    (Status.EVAL_OVERLAP, None, "en", "b", 0.33, None),
    (Status.LOW_CLIP_SCORE, None, "en", "b", 0.08, ["car"]),
    (Status.LOW_CLIP_SCORE, None, "fr", "a", 0.21, None),
    (Status.BALANCED_OUT, "concept", "en", "a", 0.35, ["dog"]),
    (Status.BALANCED_OUT, "concept", "en", "b", 0.36, ["dog"]),
    (Status.KEPT, None, "en", "b", 0.31, ["cat"]),
    (Status.KEPT, None, "en", "c", 0.29, ["dog", "ball"]),
    (Status.KEPT, None, "en", "a", 0.45, None),
    (Status.KEPT, None, "de", "a", 0.27, ["car"]),
    (Status.KEPT, None, "de", "b", 0.33, ["cat"]),
    (Status.KEPT, None, "de", "c", 0.38, ["dog"]),
    (Status.KEPT, None, "fr", "c", 0.26, ["car"]),
    (Status.CAPTION_RULE, "too_short", "und", "c", None, None),
]
_REPS = {"dupA": 15, "dupB": 18}  # cluster name -> row index of its representative
# statuses whose rows were downloaded and decoded, so they have an image in stage/<unit>.tar
_HAS_IMAGE = {Status.KEPT, Status.DUPLICATE, Status.EVAL_OVERLAP, Status.LOW_CLIP_SCORE, Status.BALANCED_OUT}
_REACHED_OPTOUT = _HAS_IMAGE | {Status.DOWNLOAD_ERROR, Status.DECODE_ERROR, Status.TOO_SMALL, Status.BAD_ASPECT}
_CAPTIONS = {"en": "a photo of a {c} on the grass", "de": "ein Foto von einem {c} im Garten",
             "fr": "une photo d'un {c} dans le jardin", "ru": "фотография {c}", "und": "x"}


@dataclass
class Fixture:
    """What a test needs to check a report or notebook against the run it describes."""
    output: str
    manifest: dict
    ledger: pa.Table
    dup_clusters: dict  # representative uid -> sorted member uids


def _uid(url: str, caption: str) -> str:
    return hashlib.blake2b(f"{url}\x00{caption}".encode(), digest_size=16).hexdigest()


def _jpeg(i: int, size: tuple[int, int]) -> bytes:
    img = Image.new("RGB", size, ((37 * i) % 256, (91 * i) % 256, (53 * i) % 256))
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=80)
    return buf.getvalue()


def _signals(status: str) -> list[str] | None:
    """optout_signals: rows that reached the opt-out stage passed robots.txt and TDMRep; the robots row did not."""
    if status == Status.ROBOTS:
        return ["robots_txt:disallow"]
    return ["robots_txt:allow", "tdmrep:allow"] if status in _REACHED_OPTOUT else None


def _row(i: int, spec, clip_scores: bool, concepts: bool) -> dict:
    status, detail, lang, domain, score, conc = spec
    concept = (conc or ["thing"])[0]
    caption = "" if detail == "empty" else _CAPTIONS.get(lang or "en", "x").format(c=concept)
    url = "" if domain is None else (f"ftp://x/{i}" if domain == "ftp" else f"http://{domain}.example/img/{i}.jpg")
    has_image = status in _HAS_IMAGE
    w, h = (20, 20) if status == Status.TOO_SMALL else (300 + 10 * i, 200 + 5 * i)
    return {
        COL.UID: _uid(url, caption), COL.UNIT_ID: i // UNIT_SIZE, COL.SOURCE_FILE: "urls.parquet",
        COL.ROW_INDEX: i, COL.URL: url, COL.CAPTION: caption, COL.CAPTION_CLEAN: caption or None,
        COL.STATUS: status, COL.LANG: lang, COL.LANG_PROB: None if lang is None else 0.99,
        COL.ERROR_MESSAGE: "read timed out (10.0 s)" if detail == "timeout" else None,
        COL.HTTP_STATUS: 404 if detail == "http_404" else (200 if has_image else None),
        COL.ORIG_WIDTH: w if has_image or status in (Status.TOO_SMALL, Status.BAD_ASPECT) else None,
        COL.ORIG_HEIGHT: h if has_image or status in (Status.TOO_SMALL, Status.BAD_ASPECT) else None,
        COL.WIDTH: 64 if has_image else None, COL.HEIGHT: 48 if has_image else None,
        COL.IMAGE_FORMAT: "jpg" if has_image else None,
        COL.CLIP_SCORE: score if clip_scores else None,
        COL.CONCEPTS: conc if concepts else None, COL.OPTOUT_SIGNALS: _signals(status),
        "_detail": detail, "_has_image": has_image,
    }


def _set_reasons(rows: list[dict], duplicates: bool, dup_style: str) -> None:
    """Fills reason from status/detail; duplicate_of details point at the representative's uid."""
    for r in rows:
        detail = r.pop("_detail")
        if r[COL.STATUS] == Status.DUPLICATE and detail in _REPS:
            rep = rows[_REPS[detail]][COL.UID]
            if not duplicates:
                detail = "sha256"
            elif dup_style == "bare":  # the form the ledger doc gives as an example: duplicate_of:<uid>
                r[COL.REASON] = f"duplicate_of:{rep}"
                continue
            else:
                detail = f"duplicate_of:{rep}"
        r[COL.REASON] = None if r[COL.STATUS] == Status.KEPT else reason(r[COL.STATUS], detail)


def _assign_keys(rows: list[dict], per_shard: int) -> list[dict]:
    kept = [r for r in rows if r[COL.STATUS] == Status.KEPT]
    for j, r in enumerate(kept):
        r[COL.SHARD] = j // per_shard
        r[COL.KEY] = f"{j // per_shard:05d}{j % per_shard:04d}"
    return kept


def _write(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)


def _write_stage_and_ledger(out: Path, ledger: pa.Table, images: dict) -> None:
    for unit in sorted(set(ledger[COL.UNIT_ID].to_pylist())):
        part = ledger.filter(pc.equal(ledger[COL.UNIT_ID], unit))
        members = [(f"{u}.jpg", images[u]) for u in part[COL.UID].to_pylist() if u in images]
        stage_io.write_unit(str(out), unit, part, members, {"rows": part.num_rows})
        _write(out / "metadata" / "ledger" / f"part-{unit:06d}.parquet", stage_io.parquet_bytes(part))


def _write_shards(out: Path, kept: list[dict], images: dict, per_shard: int) -> list[dict]:
    shards, sizes = [], {}
    samples = conform(pa.Table.from_pylist(
        [{**r, COL.CAPTION: r[COL.CAPTION_CLEAN]} for r in kept]), "samples") if kept else None
    for s in sorted({r[COL.SHARD] for r in kept}):
        part = samples.filter(pc.equal(samples[COL.SHARD], s))
        members = []
        for row in part.to_pylist():
            members += [(f"{row[COL.KEY]}.jpg", images[row[COL.UID]]),
                        (f"{row[COL.KEY]}.txt", row[COL.CAPTION].encode()),
                        (f"{row[COL.KEY]}.json", json.dumps(row, sort_keys=True).encode())]
        tar = stage_io.tar_bytes(members)
        name = f"shards/{s:05d}.tar"
        _write(out / name, tar)
        _write(out / f"shards/{s:05d}.parquet", stage_io.parquet_bytes(part))
        _write(out / f"shards/{s:05d}_stats.json", json.dumps({"count": part.num_rows}).encode())
        _write(out / "metadata" / "samples" / f"part-{s:05d}.parquet", stage_io.parquet_bytes(part))
        shards.append({"name": name, "count": part.num_rows, "bytes": len(tar),
                       "sha256": hashlib.sha256(tar).hexdigest()})
        sizes[f"{s:05d}.tar"] = part.num_rows
    _write(out / "shards" / "sizes.json", json.dumps(sizes).encode())
    return shards


def _manifest(cfg: RunConfig, ledger: pa.Table, shards: list[dict], selection: dict | None) -> dict:
    statuses = ledger[COL.STATUS].to_pylist()
    reasons = Counter(r for s, r in zip(statuses, ledger[COL.REASON].to_pylist()) if s != Status.KEPT)
    m = {
        "curate_version": "0.1.0", "created": "2026-01-01T00:00:00Z", "config": to_dict(cfg),
        "config_hash": config_hash(cfg), "inputs": [{"path": "urls.parquet", "rows": ledger.num_rows}],
        "total_rows": ledger.num_rows, "counts": dict(Counter(statuses)), "reasons": dict(reasons),
        "written_samples": statuses.count(Status.KEPT), "shards": shards,
        "optout": optout_summary(ledger, cfg, None),
        "layout": {"shards": "shards", "samples": "metadata/samples", "ledger": "metadata/ledger",
                   "stage": "stage", "report": "report.html"},
    }
    if selection:
        m["selection"] = selection
    return m


def make_run(output, *, clip_scores: bool = True, concepts: bool = True, duplicates: bool = True,
             kept: bool = True, dup_style: str = "status", samples_per_shard: int = 4,
             selection: dict | None = None) -> Fixture:
    """Writes a finished run to `output` and returns it; flags remove pieces a report must cope without.

    kept=False turns every kept row into low_clip_score (no shards, no samples).
    dup_style: 'status' -> reason duplicate:duplicate_of:<uid>; 'bare' -> duplicate_of:<uid>.
    """
    out = Path(output)
    specs = [(Status.LOW_CLIP_SCORE, *s[1:]) if (not kept and s[0] == Status.KEPT) else s for s in _ROWS]
    rows = [_row(i, s, clip_scores, concepts) for i, s in enumerate(specs)]
    _set_reasons(rows, duplicates, dup_style)
    kept_rows = _assign_keys(rows, samples_per_shard)
    images = {r[COL.UID]: _jpeg(i, (32 + i, 24 + i)) for i, r in enumerate(rows) if r.pop("_has_image")}
    ledger = conform(pa.Table.from_pylist(rows), "ledger")
    _write_stage_and_ledger(out, ledger, images)
    shards = _write_shards(out, kept_rows, images, samples_per_shard)
    (out / "metadata" / "samples").mkdir(parents=True, exist_ok=True)
    cfg = RunConfig(output=str(out), clip=ClipConfig(threshold=THRESHOLD))
    _write(out / "config.yaml", dump_yaml(cfg).encode())
    manifest = _manifest(cfg, ledger, shards, selection)
    _write(out / "manifest.json", json.dumps(manifest, indent=1, sort_keys=True).encode())
    clusters: dict = {}
    for u, r in zip(ledger[COL.UID].to_pylist(), ledger[COL.REASON].to_pylist()):
        if r and "duplicate_of:" in r:
            clusters.setdefault(r.rsplit(":", 1)[1], []).append(u)
    return Fixture(str(out), manifest, ledger, {k: sorted(v) for k, v in clusters.items()})
