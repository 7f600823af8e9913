"""curate.train data: shard resolution, rank/worker split, shuffling, corrupt samples, exact replay; plus the
small shard writer the trainer tests share (webdataset layout: shards/NNNNN.tar with KEY.jpg/.txt/.json, sizes.json)."""
from __future__ import annotations

import io
import json
import random
from pathlib import Path

import pytest
import torch

from curate import synth
from curate.train.data import StreamSpec, ShardStream, SkipCounter, make_loader, resolve_shards
from tests.shards import write_webdataset

torch.set_num_threads(2)

# A tiny open_clip architecture (embed_dim 64, 32 px, 2 layers, width 64) that trains in minutes on 2 CPU
# cores; most of its 3.6 M parameters are the token embedding of open_clip's 49,408-token vocabulary.
TINY_MODEL_CFG = {
    "embed_dim": 64,
    "vision_cfg": {"image_size": 32, "layers": 2, "width": 64, "patch_size": 8, "head_width": 32},
    "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 64, "heads": 2, "layers": 2},
}


def write_tiny_model(folder: Path, name: str = "curate-tiny") -> Path:
    """Writes the tiny config as <folder>/<name>.json (open_clip registers it under its stem)."""
    path = Path(folder) / f"{name}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(TINY_MODEL_CFG))
    return path


def jpeg(img) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=90)
    return buf.getvalue()


def write_shards(folder: Path, samples: list, per_shard: int, corrupt: set[int] = frozenset()) -> Path:
    """Writes (image, caption, label) samples as <folder>/shards/NNNNN.tar + sizes.json; returns the folder.

    Stand-in for the pipeline's writer (curate.writer.write_outputs): same layout, img2dataset-style keys.
    Indices in `corrupt` get truncated JPEG bytes.
    """
    names = synth.class_names()
    rows = []
    for n, (img, caption, label) in enumerate(samples):
        data = jpeg(img) if img is not None else b""
        if n in corrupt:
            data = data[: len(data) // 3]
        rows.append((data, caption, {"caption": caption, "label": names[label]}))
    return write_webdataset(folder, rows, per_shard)


def write_synth_shards(folder: Path, n: int, seed: int, per_shard: int = 64, size: int = 48) -> Path:
    return write_shards(folder, synth.make_captioned_set(n, seed, size=size), per_shard)


def _tf(img):
    return torch.tensor([img.getpixel((0, 0))[0] / 255.0, float(img.size[0])])


def _tok(texts):
    # encodes each caption by its text, so that tests can see which sample is which
    return list(texts)


def _spec(urls, **kw) -> StreamSpec:
    return StreamSpec(urls=urls, transform=_tf, tokenizer=_tok, **kw)


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    samples = [(synth.draw_sample("circle", "red", random.Random(i), 16), f"caption {i}", 0) for i in range(40)]
    return write_shards(tmp_path_factory.mktemp("run"), samples, per_shard=10)


def test_synth_is_deterministic_and_labelled():
    a, b = synth.make_captioned_set(20, seed=3, size=32), synth.make_captioned_set(20, seed=3, size=32)
    assert [x[1] for x in a] == [x[1] for x in b]
    assert all(x[0].tobytes() == y[0].tobytes() for x, y in zip(a, b))
    names = synth.class_names()
    assert len(names) == 48
    for img, caption, label in a:
        assert img.size == (32, 32)
        assert names[label] in caption  # the caption names the class: 'red circle' etc.
    assert synth.make_captioned_set(5, seed=4)[0][1] != a[0][1] or synth.make_captioned_set(5, 4)[1][1] != a[1][1]


def test_resolve_run_folder_and_brace_spec(run_dir):
    urls, n = resolve_shards(str(run_dir))
    assert [Path(u).name for u in urls] == ["00000.tar", "00001.tar", "00002.tar", "00003.tar"] and n == 40
    urls2, n2 = resolve_shards(str(run_dir / "shards" / "{00000..00001}.tar"))
    assert len(urls2) == 2 and n2 == 20
    with pytest.raises(FileNotFoundError):
        resolve_shards(str(run_dir / "nothing_here"))


def test_resolve_from_manifest_when_sizes_json_is_missing(tmp_path, run_dir):
    (tmp_path / "shards").mkdir()
    for name in ("00000.tar", "00001.tar"):
        (tmp_path / "shards" / name).write_bytes((run_dir / "shards" / name).read_bytes())
    shards = [{"name": f"shards/{n}", "count": 10} for n in ("00000.tar", "00001.tar")]
    (tmp_path / "manifest.json").write_text(json.dumps({"shards": shards}))
    urls, n = resolve_shards(str(tmp_path))
    assert [Path(u).name for u in urls] == ["00000.tar", "00001.tar"] and n == 20


def _captions(spec, workers=0) -> list[str]:
    spec.infinite = False
    return [t for b in make_loader(spec, workers) for t in b["texts"]]


def test_ranks_and_workers_partition_the_data(run_dir):
    urls, _ = resolve_shards(str(run_dir))
    seen = []
    for rank in range(2):
        seen += _captions(_spec(urls, batch_size=3, rank=rank, world_size=2, shuffle_buffer=5), workers=2)
    assert sorted(seen) == sorted(f"caption {i}" for i in range(40))  # each sample exactly once
    # fewer shards than consumers: sample-level split, still a partition
    seen = []
    for rank in range(3):
        seen += _captions(_spec(urls[:2], batch_size=2, rank=rank, world_size=3), workers=1)
    assert sorted(seen) == sorted(f"caption {i}" for i in range(20))


def test_infinite_stream_reshuffles_each_epoch_and_resampled_mode(run_dir):
    urls, _ = resolve_shards(str(run_dir))
    it = iter(ShardStream(_spec(urls, batch_size=40, shuffle_buffer=0)))  # one batch = one epoch
    e1, e2 = next(it)["texts"], next(it)["texts"]
    assert sorted(e1) == sorted(e2) and e1 != e2
    it = iter(ShardStream(_spec(urls, batch_size=40, resampled=True)))
    drawn = next(it)["texts"] + next(it)["texts"]
    assert len(set(drawn)) < len(drawn)  # shards drawn with replacement repeat samples


def test_corrupt_samples_are_skipped_and_counted(tmp_path, caplog):
    samples = [(synth.draw_sample("square", "blue", random.Random(i), 16), f"c{i}", 0) for i in range(12)]
    folder = write_shards(tmp_path, samples, per_shard=6, corrupt={1, 7, 8})
    shard_dir = folder / "shards"
    (shard_dir / "00001.tar").write_bytes((shard_dir / "00001.tar").read_bytes()[:-2000])  # truncated shard
    urls, _ = resolve_shards(str(folder))
    counter = SkipCounter()
    spec = _spec(urls, batch_size=2)
    spec.infinite = False
    texts, total = [], 0
    for b in make_loader(spec, workers=0):
        texts += b["texts"]
        total = counter.update(b)
    assert "c1" not in texts and "c0" in texts and "c7" not in texts
    assert total >= 3  # three bad JPEGs, plus the truncated shard
    assert "skipping corrupt sample" in caplog.text


def test_start_batch_replays_the_same_stream(run_dir):
    urls, _ = resolve_shards(str(run_dir))
    kw = dict(batch_size=4, shuffle_buffer=6, seed=5)
    full = make_loader(_spec(urls, **kw), workers=2)
    it = iter(full)
    first = [next(it) for _ in range(7)]
    resumed = iter(make_loader(_spec(urls, start_batch=4, **kw), workers=2))
    for expected in first[4:]:
        got = next(resumed)
        assert got["texts"] == expected["texts"]
        assert torch.equal(got["images"], expected["images"])


def test_shards_on_s3_moto_server(moto_s3, run_dir):
    s3 = moto_s3
    for f in sorted((run_dir / "shards").iterdir()):
        s3.put_object(Bucket="bkt", Key=f"out/shards/{f.name}", Body=f.read_bytes())
    urls, n = resolve_shards("s3://bkt/out")  # a run output folder on S3, via its sizes.json
    assert n == 40 and urls[0] == "s3://bkt/out/shards/00000.tar"
    urls, n = resolve_shards("s3://bkt/out/shards/{00002..00003}.tar")
    assert n == 20
    assert sorted(_captions(_spec(urls, batch_size=5))) == sorted(f"caption {i}" for i in range(20, 40))
