"""The CLIP scoring stage (ClipScore) and its halves: CPU decode+tokenize (ClipPreprocess), the model (ClipScorer)."""
from __future__ import annotations

import contextlib
import os
import warnings
from concurrent.futures import ThreadPoolExecutor

from functools import lru_cache

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import torch
from PIL import Image
from torchvision.transforms import Normalize, ToTensor

from curate.clip.identity import IMAGE_EMB, TEXT_EMB  # optional outputs (stage/<unit>.emb.parquet)
from curate.clip.encode import _encode_text_trimmed, _text_fast, encode_image, length_buckets
from curate.clip.model import load_clip, load_transforms
from curate.config import ClipConfig
from curate.imageproc import open_image
from curate.schema import COL

# Transient columns between the two stages (never in the ledger): uint8 HWC pixels keep the object store
# traffic at 1 byte per value and make the normalisation a GPU op.
PIXELS = "clip_pixels"        # fixed_size_list<uint8>[H*W*3] (or <float32>[3*H*W] for non-PIL preprocess)
PIXELS_OK = "clip_pixels_ok"  # bool: the image decoded; False rows get a null clip_score
TOKENS = "clip_tokens"        # fixed_size_list<int32>[context_length]
CPU_TEXT_OVERHEAD = 64        # tokens: fixed cost of one CPU text forward, for length_buckets' trade-off
CPU_IMAGE_CHUNK = 32          # images per CPU image forward: a ViT-B-32 batch of 32 keeps its activations in
                              # cache; measured on 2 cores, 32 ran 1.3x faster per image than 256 (64: 1.1x)


def _split_preprocess(preprocess):
    """(PIL-level ops, mean, std) when preprocess is [PIL ops..., ToTensor, Normalize], else None."""
    ops = list(getattr(preprocess, "transforms", []))
    idx = [i for i, op in enumerate(ops) if isinstance(op, ToTensor)]
    if len(idx) != 1 or idx[0] != len(ops) - 2 or not isinstance(ops[-1], Normalize):
        return None
    return ops[:idx[0]], tuple(ops[-1].mean), tuple(ops[-1].std)


def _threads() -> int:
    # Ray sets OMP_NUM_THREADS to a task's CPU share; outside Ray use the machine
    return max(1, int(os.environ.get("OMP_NUM_THREADS") or os.cpu_count() or 1))


class ClipPreprocess:
    """Decodes COL.IMAGE and tokenizes COL.CAPTION_CLEAN on CPU into model-ready columns.

    Output: the input columns minus the image bytes and captions, plus PIXELS, PIXELS_OK, TOKENS.
    """

    def __init__(self, cfg: ClipConfig):
        preprocess, self.tokenizer = load_transforms(cfg.model, cfg.pretrained)
        self.preprocess = preprocess
        self.split = _split_preprocess(preprocess)
        crop = next((op for op in preprocess.transforms if hasattr(op, "size") and
                     isinstance(op.size, (tuple, list))), None)
        self.draft_size = tuple(crop.size[::-1]) if crop is not None and cfg.draft_decode else None
        self.pool = ThreadPoolExecutor(_threads()) if _threads() > 1 else None
        self.blank = self._blank()  # the shape every row must have; also the stand-in for failed rows

    def _pixels(self, data: bytes | None) -> np.ndarray | None:
        """One image as uint8 HWC after the PIL-level ops (or float32 CHW); None when undecodable."""
        if data is None:
            return None
        try:
            img = open_image(data)  # format allowlist: never a Ghostscript or rare-decoder run
            if self.draft_size and img.format == "JPEG":
                img.draft("RGB", self.draft_size)  # DCT-domain downscale, only while it stays >= model size
            if self.split is None:
                return self.preprocess(img).numpy().astype(np.float32, copy=False)
            for op in self.split[0]:
                img = op(img)
            arr = np.asarray(img, dtype=np.uint8)
            return arr if arr.shape == self.blank.shape else None
        except Exception:  # decode boundary: a broken image becomes a null score, not a crashed actor
            return None

    def __call__(self, batch: pa.Table) -> pa.Table:
        images = batch[COL.IMAGE].to_pylist()
        arrays = list(self.pool.map(self._pixels, images)) if self.pool else [self._pixels(b) for b in images]
        ok = [a is not None for a in arrays]
        ref = self.blank
        flat = np.stack([a if a is not None else ref for a in arrays]) if arrays else ref[:0]
        captions = [c or "" for c in batch[COL.CAPTION_CLEAN].to_pylist()]
        tokens = self.tokenizer(captions).numpy().astype(np.int32) if captions else \
            np.zeros((0, self.tokenizer.context_length), np.int32)
        out = batch.drop_columns([c for c in (COL.IMAGE, COL.CAPTION_CLEAN) if c in batch.column_names])
        out = out.append_column(PIXELS, pa.FixedSizeListArray.from_arrays(pa.array(flat.reshape(-1)), ref.size))
        out = out.append_column(PIXELS_OK, pa.array(ok, pa.bool_()))
        return out.append_column(TOKENS, pa.FixedSizeListArray.from_arrays(pa.array(tokens.reshape(-1)),
                                                                           tokens.shape[1]))

    def _blank(self) -> np.ndarray:
        img = Image.new("RGB", (8, 8))
        if self.split is None:
            return np.zeros_like(self.preprocess(img).numpy(), dtype=np.float32)
        for op in self.split[0]:
            img = op(img)
        return np.zeros_like(np.asarray(img, dtype=np.uint8))


def _device(name: str) -> str:
    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return name


def _autocast(device: str, precision: str):
    """The autocast context for `precision` (auto: bf16 on GPU, fp32 on CPU)."""
    if precision == "auto":
        precision = "bf16" if device.startswith("cuda") else "fp32"
    if precision == "fp32":
        return contextlib.nullcontext()
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    return torch.autocast(device_type="cuda" if device.startswith("cuda") else "cpu", dtype=dtype)


class ClipScorer:
    """Adds COL.CLIP_SCORE (float32 cosine), COL.CLIP_MODEL, COL.CLIP_PRETRAINED (and float16 embeddings
    when cfg.save_embeddings) to a ClipPreprocess output; drops the pixel and token columns.

    The model is loaded once per instance (one Ray actor = one model).
    """

    def __init__(self, cfg: ClipConfig):
        self.cfg = cfg
        self.device = _device(cfg.device)
        self.model, _, _ = load_clip(cfg.model, cfg.pretrained, self.device)
        pp = self.model.visual.preprocess_cfg
        self.size = tuple(pp["size"]) if isinstance(pp["size"], (tuple, list)) else (pp["size"], pp["size"])
        self.mean = torch.tensor(pp["mean"], device=self.device).view(1, 3, 1, 1)
        self.std = torch.tensor(pp["std"], device=self.device).view(1, 3, 1, 1)
        m = self.model
        self.trim = _text_fast(m)
        self.embed_dim = int(getattr(m.visual, "output_dim", 0) or 0) or self._probe_dim()
        # GPU: one text forward per batch (launch-bound); CPU: compute-bound, so length buckets pay
        self.text_overhead = float("inf") if self.device.startswith("cuda") else CPU_TEXT_OVERHEAD
        self.image_chunk = self.cfg.batch_size if self.device.startswith("cuda") else CPU_IMAGE_CHUNK

    def _probe_dim(self) -> int:
        with torch.inference_mode():
            return int(self.model.encode_text(torch.zeros((1, 8), dtype=torch.long, device=self.device)).shape[-1])

    def _images(self, pixels: pa.ChunkedArray) -> torch.Tensor:
        arr = pixels.combine_chunks()
        vals = np.asarray(arr.flatten().to_numpy(zero_copy_only=False))
        h, w = self.size
        with warnings.catch_warnings():  # read-only Arrow buffer: never written, only copied by .to()/.float()
            warnings.simplefilter("ignore", UserWarning)
            x = torch.from_numpy(vals)
        if vals.dtype == np.uint8:  # NHWC bytes -> normalised NCHW (channels_last strides), as ToTensor+Normalize
            x = x.view(len(arr), h, w, 3).to(self.device, non_blocking=True).permute(0, 3, 1, 2)
            return x.float().div_(255).sub_(self.mean).div_(self.std)  # in place: no 3 batch-sized temporaries
        return x.view(len(arr), 3, h, w).to(self.device, non_blocking=True)

    def _encode_text(self, tokens: np.ndarray) -> torch.Tensor:
        if not self.trim:
            return self.model.encode_text(torch.from_numpy(tokens).long().to(self.device))
        lengths = np.maximum(1, tokens.shape[1] - np.argmax(tokens[:, ::-1] != 0, axis=1))
        parts = []
        for idx in length_buckets(lengths, self.text_overhead):
            n_ctx = int(lengths[idx].max())
            t = torch.from_numpy(np.ascontiguousarray(tokens[idx, :n_ctx])).long().to(self.device)
            parts.append((idx, _encode_text_trimmed(self.model, t)))
        emb = torch.empty((len(tokens), parts[0][1].shape[1]), dtype=parts[0][1].dtype, device=self.device)
        for idx, e in parts:
            emb[torch.from_numpy(idx).to(self.device)] = e
        return emb

    def _embed(self, batch: pa.Table) -> tuple[torch.Tensor, torch.Tensor]:
        """L2-normalised (image, text) embeddings in float32, on CPU."""
        imgs, txts = [], []
        tokens = batch[TOKENS].combine_chunks()
        tok = np.asarray(tokens.flatten().to_numpy()).reshape(len(tokens), tokens.type.list_size)
        with torch.inference_mode(), _autocast(self.device, self.cfg.precision):
            for s in range(0, batch.num_rows, self.cfg.batch_size):
                part = batch.slice(s, self.cfg.batch_size)
                x = self._images(part[PIXELS])
                imgs += [encode_image(self.model, x[c:c + self.image_chunk]).float()
                         for c in range(0, len(x), self.image_chunk)]
                txts.append(self._encode_text(tok[s:s + self.cfg.batch_size]).float())
            img = torch.nn.functional.normalize(torch.cat(imgs), dim=-1)
            txt = torch.nn.functional.normalize(torch.cat(txts), dim=-1)
        return img.cpu(), txt.cpu()

    def __call__(self, batch: pa.Table) -> pa.Table:
        n = batch.num_rows
        out = batch.drop_columns([c for c in (PIXELS, PIXELS_OK, TOKENS) if c in batch.column_names])
        if n:
            img, txt = self._embed(batch)
            score = (img * txt).sum(dim=-1).numpy().astype(np.float32)
            valid = batch[PIXELS_OK].combine_chunks()
            scores = pc.if_else(valid, pa.array(score), pa.nulls(n, pa.float32()))
        else:
            img = txt = torch.zeros((0, self.embed_dim))
            scores = pa.array([], pa.float32())
        out = out.append_column(COL.CLIP_SCORE, scores.cast(pa.float32()))
        out = out.append_column(COL.CLIP_MODEL, pa.array([self.cfg.model] * n, pa.string()))
        out = out.append_column(COL.CLIP_PRETRAINED, pa.array([self.cfg.pretrained] * n, pa.string()))
        if self.cfg.save_embeddings:
            for name, emb in ((IMAGE_EMB, img), (TEXT_EMB, txt)):
                vals = emb.numpy().astype(np.float16)
                out = out.append_column(name, pa.FixedSizeListArray.from_arrays(
                    pa.array(vals.reshape(-1)), self.embed_dim))
        return out


HALVES = ("preprocess", "model")  # ClipScore's halves: where the Ray Data route splits it (CPU tasks, actors)


def load_half(cfg: ClipConfig, half: str):
    """The one loader of scoring resources: "preprocess" -> ClipPreprocess (transforms and tokenizer, no
    weights), "model" -> ClipScorer (the weights on cfg.device)."""
    if half == "preprocess":
        return ClipPreprocess(cfg)
    if half == "model":
        return ClipScorer(cfg)
    raise ValueError(f"clip: unknown scoring half {half!r} (one of {', '.join(HALVES)})")


class ClipScore:
    """The scoring stage: a table with COL.IMAGE (encoded bytes) and COL.CAPTION_CLEAN -> the same rows without
    those two columns, plus COL.CLIP_SCORE (null where the image does not decode), COL.CLIP_MODEL,
    COL.CLIP_PRETRAINED (and the embeddings when cfg.save_embeddings).

    Holds its ClipConfig; each half loads once per instance, on first use (load_half). Both routes run it: the
    in-unit route whole, inside the download task (worker_stage); the Ray Data route `preprocess` in CPU tasks
    and `score` in model actors (pipelines/scoring.py)."""

    def __init__(self, cfg: ClipConfig):
        self.cfg = cfg
        self._loaded: dict = {}

    def load(self, half: str):
        """The loaded half (ClipPreprocess or ClipScorer), loading it now if needed."""
        if half not in self._loaded:
            self._loaded[half] = load_half(self.cfg, half)
        return self._loaded[half]

    def preprocess(self, table: pa.Table) -> pa.Table:
        """CPU half: decoded pixels and tokens in place of the image bytes and captions."""
        return self.load("preprocess")(table)

    def score(self, table: pa.Table) -> pa.Table:
        """Model half: the score columns in place of preprocess's pixel and token columns."""
        return self.load("model")(table)

    def __call__(self, table: pa.Table) -> pa.Table:
        return self.score(self.preprocess(table))


@lru_cache(maxsize=2)
def worker_stage(cfg: ClipConfig) -> ClipScore:
    """This process's ClipScore for `cfg` (frozen, so hashable): Ray reuses worker processes across tasks, so
    task-based callers (the in-unit route, the Ray Data decode tasks) load each half once per worker."""
    return ClipScore(cfg)


def score_table(table: pa.Table, cfg: ClipConfig) -> pa.Table:
    """ClipScore in this process, loaded afresh (tests, notebooks, small runs)."""
    return ClipScore(cfg)(table)
