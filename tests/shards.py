"""Webdataset shards as the pipeline's writer lays them out, for tests and benchmarks.

KEY.jpg, KEY.txt, KEY.json per sample and sizes.json per folder."""
from __future__ import annotations

import json
from pathlib import Path

from curate.tario import tar_bytes


def write_webdataset(folder: Path, samples: list[tuple], per_shard: int) -> Path:
    """Writes (JPEG bytes, caption, metadata[, {ext: bytes} of further members such as npz]) samples as
    <folder>/shards/NNNNN.tar + sizes.json with img2dataset-style keys (KEY.json is {"key": KEY, **metadata});
    returns the folder."""
    shard_dir = Path(folder) / "shards"
    shard_dir.mkdir(parents=True, exist_ok=True)
    sizes = {}
    for s in range(0, len(samples), per_shard):
        members = []
        for i, (data, caption, meta, *extra) in enumerate(samples[s:s + per_shard]):
            key = f"{s // per_shard:05d}{i:04d}"
            members += [(f"{key}.jpg", data), (f"{key}.txt", caption.encode()),
                        (f"{key}.json", json.dumps({"key": key, **meta}).encode())]
            members += [(f"{key}.{ext}", body) for ext, body in (extra[0] if extra else {}).items()]
        name = f"{s // per_shard:05d}.tar"
        (shard_dir / name).write_bytes(tar_bytes(members))
        sizes[name] = len(samples[s:s + per_shard])
    (shard_dir / "sizes.json").write_text(json.dumps(sizes))
    return Path(folder)
