"""Webdataset shards (local or s3://) as a stream of batches: shard shuffling, rank/worker split, sample
shuffle buffer, resampling, per-sample seeded augmentation (exact resume), corrupt samples skipped and counted;
for distillation, each sample's stored view reapplied and its teachers' embeddings collated."""
from __future__ import annotations

import json
import logging
import random
from dataclasses import dataclass, field
from typing import Callable, Iterator

import braceexpand
import torch
from PIL import Image

from curate import fsutil, tario
from curate.config import ImageConfig
from curate.imageproc import open_image
from curate.layout import NAMES, RunLayout
from curate.reinforce import apply_view
from curate.train import reinforced

log = logging.getLogger("curate.train")
IMAGE_EXTS = ("jpg", "jpeg", "png", "webp")
MAX_WARNINGS = 5  # per consumer: corrupt samples are counted, only the first few are described


def _read_json(path: str) -> dict | None:
    fs, p = fsutil.get_fs(path)
    return json.loads(fsutil.read_bytes(fs, p)) if fsutil.exists(fs, p) else None


def _sizes_for(urls: list[str]) -> int | None:
    """Sample count of `urls` from the sizes.json beside them (open_clip_train's convention)."""
    folder = urls[0].rsplit("/", 1)[0] if "/" in urls[0] else "."
    sizes = _read_json(fsutil.join(folder, NAMES.sizes))
    if sizes is None:
        return None
    names = [u.rsplit("/", 1)[-1] for u in urls]
    if not all(n in sizes for n in names):
        return None
    return sum(int(sizes[n]) for n in names)


def resolve_shards(spec: str) -> tuple[list[str], int | None]:
    """(shard URLs, sample count or None) for a run output folder, a shard folder or a brace spec.

    Specs may list several brace patterns separated by '::'. A folder is read through its sizes.json
    (folder/shards/sizes.json, then folder/sizes.json), then its manifest.json, else by listing its .tar files.
    """
    if spec.endswith(".tar") or "{" in spec or "::" in spec:
        urls = [u for part in spec.split("::") for u in braceexpand.braceexpand(part)]
        return urls, _sizes_for(urls)
    base = spec.rstrip("/")
    for shard_dir in (RunLayout(base).shards, base):
        sizes = _read_json(fsutil.join(shard_dir, NAMES.sizes))
        if sizes:
            names = sorted(sizes)
            return [fsutil.join(shard_dir, n.rsplit("/", 1)[-1]) for n in names], sum(map(int, sizes.values()))
    manifest = _read_json(RunLayout(base).manifest)
    if manifest and manifest.get("shards"):  # schemas/manifest.json: shards = [{name: 'shards/00000.tar', count}]
        shards = manifest["shards"]
        return [fsutil.join(base, s["name"]) for s in shards], sum(int(s["count"]) for s in shards)
    for shard_dir in (RunLayout(base).shards, base):
        fs, p = fsutil.get_fs(shard_dir)
        if fsutil.exists(fs, p):
            from pyarrow.fs import FileSelector
            infos = fs.get_file_info(FileSelector(p))
            tars = sorted(i.base_name for i in infos if i.base_name.endswith(".tar"))
            if tars:
                return [fsutil.join(shard_dir, t) for t in tars], None
    raise FileNotFoundError(f"no shards found at {spec!r} (expected sizes.json or *.tar)")


def iter_tar_samples(url: str, on_error: Callable[[str], None]) -> Iterator[dict]:
    """Samples ({'__key__', ext: bytes}) of one tar, grouped by key; a broken shard ends early via on_error."""
    fs, path = fsutil.get_fs(url)
    current: dict = {}
    try:
        with fs.open_input_stream(path) as stream:
            for name, data in tario.iter_stream(stream):
                folder, _, base = name.rpartition("/")
                stem, _, ext = base.partition(".")  # webdataset's rule: the key ends at the first dot
                if not stem or not ext:
                    continue
                key = f"{folder}/{stem}" if folder else stem
                if current and current["__key__"] != key:
                    yield current
                    current = {}
                current["__key__"] = key
                current[ext.lower()] = data
    except tario.READ_ERRORS as e:  # truncated or unreadable shard: keep what was read
        on_error(f"shard {url}: {type(e).__name__}: {e}")
        current = {}  # the sample being read when the shard broke may be incomplete
    if current:
        yield current


def decode_sample(raw: dict) -> tuple[Image.Image, str, dict]:
    """(RGB image, caption, metadata) of a raw sample; raises ValueError naming what is wrong."""
    ext = next((e for e in IMAGE_EXTS if e in raw), None)
    if ext is None:
        raise ValueError("no image")
    if "txt" not in raw:
        raise ValueError("no caption")
    try:
        # shards may come from anywhere: the format allowlist, and a decoded-size cap from the header
        img = open_image(raw[ext], ImageConfig.max_decoded_bytes)
        img = img.convert("RGB")
    except Exception as e:  # decode boundary: any decoder failure means a corrupt sample
        raise ValueError(f"image decode: {type(e).__name__}") from None
    caption = raw["txt"].decode("utf-8", errors="replace").strip()
    meta = {}
    if "json" in raw:
        try:
            meta = json.loads(raw["json"])
        except ValueError:
            meta = {}
    return img, caption, meta


@dataclass
class StreamSpec:
    """What one ShardStream reads and how; picklable so that loader workers receive it."""
    urls: list[str]
    transform: Callable
    tokenizer: Callable
    batch_size: int
    seed: int = 0
    rank: int = 0
    world_size: int = 1
    shuffle_buffer: int = 0
    resampled: bool = False
    infinite: bool = True          # training: loop over epochs forever; eval: one pass
    start_batch: int = 0           # batches this rank already consumed (resume): replayed without transform
    label_key: str | None = None   # eval: return labels from each sample's JSON
    class_index: dict = field(default_factory=dict)  # class name -> label, for string labels
    max_samples: int = 0           # eval: stop after this many samples (0 = all)
    num_workers: int = 1           # the DataLoader's workers (round-robin batch order)
    distill: bool = False          # reinforced shards: reapply a stored view, collate its teacher embeddings


class ShardStream(torch.utils.data.IterableDataset):
    """Yields ready batches: {'images', 'texts', 'labels'?, 'teachers'?, 'skipped', 'consumer'}."""

    def __init__(self, spec: StreamSpec):
        super().__init__()
        self.spec = spec

    def _consumer(self) -> tuple[int, int, int, int]:
        info = torch.utils.data.get_worker_info()
        wid, nw = (info.id, info.num_workers) if info else (0, 1)
        s = self.spec
        return s.rank * nw + wid, s.world_size * nw, wid, nw

    def _shard_order(self, cid: int, n_consumers: int) -> Iterator[tuple[str, int, int]]:
        """(url, sample stride, sample offset) per shard to read, epoch after epoch."""
        s = self.spec
        split_shards = len(s.urls) >= n_consumers
        epoch = 0
        rng = random.Random(f"{s.seed}-resample-{cid}")
        while True:
            if s.resampled:
                order = [rng.choice(s.urls) for _ in range(len(s.urls))]
            else:
                order = list(s.urls)
                if s.infinite:  # same permutation on every consumer, so the split stays a partition
                    random.Random(f"{s.seed}-epoch-{epoch}").shuffle(order)
            if s.resampled:  # independent draws per consumer: whole shards
                for u in order:
                    yield u, 1, 0
            elif not split_shards:
                # too few shards for shard-level splitting: every consumer reads all, keeps 1/n of samples
                for u in order:
                    yield u, n_consumers, cid
            else:
                for u in order[cid::n_consumers]:
                    yield u, 1, 0
            epoch += 1
            if not s.infinite:
                return

    def _raw_samples(self, cid: int, n_consumers: int, warn: Callable[[str], None]) -> Iterator[dict]:
        for url, stride, offset in self._shard_order(cid, n_consumers):
            for i, raw in enumerate(iter_tar_samples(url, warn)):
                if i % stride == offset:
                    raw["__url__"] = url  # webdataset's name for it: errors name the shard
                    yield raw

    def _shuffled(self, samples: Iterator[dict], rng: random.Random) -> Iterator[dict]:
        size = self.spec.shuffle_buffer
        if size <= 1:
            yield from samples
            return
        buf: list[dict] = []
        for x in samples:
            if len(buf) < size:
                buf.append(x)
                continue
            i = rng.randrange(size)
            buf[i], x = x, buf[i]
            yield x
        rng.shuffle(buf)
        yield from buf

    def __iter__(self):
        s = self.spec
        cid, n_consumers, wid, nw = self._consumer()
        state = {"skipped": 0, "warned": 0}

        def warn(msg: str) -> None:
            state["skipped"] += 1
            if state["warned"] < MAX_WARNINGS:
                state["warned"] += 1
                log.warning("skipping corrupt sample (%s)%s", msg,
                            "; further ones are only counted" if state["warned"] == MAX_WARNINGS else "")

        raw = self._shuffled(self._raw_samples(cid, n_consumers, warn), random.Random(f"{s.seed}-buf-{cid}"))
        to_skip = max(0, (s.start_batch - wid + nw - 1) // nw)  # batches of this worker already consumed
        yield from self._batches(raw, cid, to_skip, warn, state)

    def _batches(self, raw, cid, to_skip, warn, state):
        s = self.spec
        images, texts, labels, teachers = [], [], [], []
        n_seen = n_batches = 0
        for sample in raw:
            try:
                img, caption, meta = decode_sample(sample)
                label = self._label(meta) if s.label_key else None
                teach = reinforced.read_teachers(sample, meta) if s.distill else None
            except ValueError as e:
                warn(f"{sample.get('__key__')}: {e}")
                continue
            n_seen += 1
            if n_batches < to_skip:  # resume: replay the stream's decisions, skip the costly transform
                if n_seen % s.batch_size == 0:
                    n_batches += 1
                continue
            if teach is not None:  # the student sees exactly the view whose teacher embeddings were stored
                state["teachers"] = reinforced.check_same_teachers(teach, state.get("teachers"), sample)
                view = reinforced.pick_view(s.seed, cid, n_seen, len(teach.views))
                img = apply_view(img, teach.views[view])
                teachers.append((teach, view))
            images.append(self._augment(img, cid, n_seen))
            texts.append(caption)
            labels.append(label)
            if len(images) == s.batch_size:
                n_batches += 1
                yield self._collate(images, texts, labels, state, cid, teachers)
                images, texts, labels, teachers = [], [], [], []
            if s.max_samples and n_seen >= s.max_samples:
                break
        if images and not s.infinite:
            yield self._collate(images, texts, labels, state, cid, teachers)

    def _label(self, meta: dict) -> int:
        v = meta.get(self.spec.label_key)
        if isinstance(v, bool) or v is None:
            raise ValueError(f"no {self.spec.label_key!r} in JSON")
        if isinstance(v, int):
            return v
        if str(v) in self.spec.class_index:
            return self.spec.class_index[str(v)]
        raise ValueError(f"unknown label {v!r}")

    def _augment(self, img: Image.Image, cid: int, n: int) -> torch.Tensor:
        """The transform under a seed fixed by (seed, consumer, sample number): resumed runs redraw the
        same crops. In the training process itself, the global RNG is restored afterwards."""
        seed = hash((self.spec.seed, cid, n)) & 0x7FFF_FFFF_FFFF_FFFF
        gen = torch.default_generator  # its own manual_seed: ~1 us, torch.manual_seed costs ~200 us
        if torch.utils.data.get_worker_info() is not None:
            gen.manual_seed(seed)
            return self.spec.transform(img)
        with torch.random.fork_rng(devices=[]):
            gen.manual_seed(seed)
            return self.spec.transform(img)

    def _collate(self, images, texts, labels, state, cid, teachers) -> dict:
        batch = {"images": torch.stack(images), "texts": self.spec.tokenizer(texts),
                 "skipped": state["skipped"], "consumer": cid}
        if self.spec.label_key:
            batch["labels"] = torch.tensor(labels, dtype=torch.long)
        if teachers:
            batch["teachers"] = reinforced.collate_teachers(teachers)
        return batch


def make_loader(spec: StreamSpec, workers: int, pin_memory: bool = False) -> torch.utils.data.DataLoader:
    """A DataLoader over ready batches (batch_size=None); the workers keep their streams across epochs."""
    spec.num_workers = max(1, workers)
    kwargs = {"prefetch_factor": 2} if workers > 0 else {}
    return torch.utils.data.DataLoader(ShardStream(spec), batch_size=None, num_workers=workers,
                                       pin_memory=pin_memory, **kwargs)


class SkipCounter:
    """Total corrupt samples skipped, from the running per-consumer counts that batches carry."""

    def __init__(self):
        self.by_consumer: dict[int, int] = {}

    def update(self, batch: dict) -> int:
        self.by_consumer[batch["consumer"]] = batch["skipped"]
        return sum(self.by_consumer.values())
