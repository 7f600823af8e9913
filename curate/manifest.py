"""manifest.json (schemas/manifest.json): built from the final ledger and the shard entries, written and read back."""
from __future__ import annotations

import datetime as _dt
import json
import os
from importlib import metadata as _md

import pyarrow as pa
import pyarrow.compute as pc

from curate import fsutil
from curate.config import RunConfig, config_hash, to_dict
from curate.layout import NAMES, RunLayout
from curate.optout.evidence import optout_summary
from curate.schema import COL, Status


def build_manifest(ledger: pa.Table, cfg: RunConfig, inputs: list[dict], shards: list[dict], mix: dict) -> dict:
    """manifest.json's content (schemas/manifest.json); raises if the counts do not add up."""
    total = ledger.num_rows
    counts = value_counts(ledger[COL.STATUS])
    dropped = ledger.filter(pc.not_equal(ledger[COL.STATUS], Status.KEPT))[COL.REASON]
    # one key per cluster representative would make the manifest grow with the run: group them
    reasons = value_counts(pc.replace_substring_regex(dropped, r"(duplicate|semantic)_of:[0-9a-f]+", r"\1_of"))
    written = sum(s["count"] for s in shards)
    in_rows = [i.get("rows") for i in inputs]
    if inputs and None not in in_rows and sum(in_rows) != total:
        raise ValueError(f"manifest: inputs hold {sum(in_rows)} rows but the ledger has {total}")
    if written != counts.get(Status.KEPT, 0) or sum(counts.values()) != total:
        raise ValueError(f"manifest: counts do not add up ({counts}, {written} written, {total} rows)")
    out = {"curate_version": _version(), "created": _created(), "config": to_dict(cfg),
            "config_hash": config_hash(cfg), "inputs": list(inputs), "total_rows": total, "counts": counts,
            "reasons": reasons, "written_samples": written, "shards": shards, "layout": NAMES.manifest_layout(),
            "shard_mix": {k: mix[k] for k in ("max_lang_deviation", "max_concept_deviation")},
            "optout": optout_summary(ledger, cfg, _optout_hosts(cfg.output))}
    if cfg.reinforce.enabled:  # what a distilling trainer needs to know about each KEY.npz
        r = cfg.reinforce
        out["reinforce"] = {"teachers": list(r.teachers), "views": r.views, "min_scale": r.min_scale}
    return out


def _optout_hosts(output: str) -> pa.Table | None:
    """The run's published host-policy table (metadata/optout_hosts.parquet); None when there is none."""
    from curate.optout.stage import read_hosts

    return read_hosts(RunLayout(output).optout_hosts) if output else None


def write_manifest(output: str, manifest: dict) -> None:
    """<output>/manifest.json, atomically, as canonical JSON (the same manifest gives the same bytes)."""
    fs, out = fsutil.get_fs(output)
    fsutil.atomic_write(fs, RunLayout(out).manifest, canonical_json(manifest, indent=1))


def read_manifest(output: str) -> dict | None:
    """<output>/manifest.json as a dict; None when the run has not written one (yet)."""
    fs, out = fsutil.get_fs(output)
    path = RunLayout(out).manifest
    return json.loads(fsutil.read_bytes(fs, path)) if fsutil.exists(fs, path) else None


def value_counts(arr) -> dict:
    """{value: rows} of an Arrow array, in value order (so the JSON it goes into is stable)."""
    return {d["values"]: d["counts"] for d in sorted(pc.value_counts(arr).to_pylist(), key=lambda d: d["values"])}


def _version() -> str:
    try:
        return _md.version("curate")
    except _md.PackageNotFoundError:
        return "0+unknown"


def _created() -> str:
    """ISO 8601 UTC; SOURCE_DATE_EPOCH (the reproducible-builds convention) pins it for byte-identical reruns."""
    epoch = os.environ.get("SOURCE_DATE_EPOCH")
    now = _dt.datetime.fromtimestamp(int(epoch), _dt.timezone.utc) if epoch else _dt.datetime.now(_dt.timezone.utc)
    return now.isoformat(timespec="seconds").replace("+00:00", "Z")


def canonical_json(obj, indent: int | None = None) -> bytes:
    """Canonical JSON (sorted keys, UTF-8): the same object always gives the same bytes."""
    seps = (",", ":") if indent is None else (",", ": ")
    return json.dumps(obj, sort_keys=True, ensure_ascii=False, separators=seps, indent=indent).encode("utf-8")
