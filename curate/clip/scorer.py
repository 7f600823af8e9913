"""CLIP scoring as two Arrow-table stages: CPU decode+tokenize (ClipPreprocess), then the model (ClipScorer)."""
from __future__ import annotations

import contextlib
import os
import warnings
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import open_clip
import pyarrow as pa
import pyarrow.compute as pc
import torch
from PIL import Image
from torchvision.transforms import Normalize, ToTensor

from curate.clip.model import load_clip, load_transforms
from curate.config import ClipConfig
from curate.imageproc import open_image
from curate.schema import COL

# Transient columns between the two stages (never in the ledger): uint8 HWC pixels keep the object store
# traffic at 1 byte per value and make the normalisation a GPU op.
PIXELS = "clip_pixels"        # fixed_size_list<uint8>[H*W*3] (or <float32>[3*H*W] for non-PIL preprocess)
PIXELS_OK = "clip_pixels_ok"  # bool: the image decoded; False rows get a null clip_score
TOKENS = "clip_tokens"        # fixed_size_list<int32>[context_length]
# Optional outputs (stage/<unit>.emb.parquet)
IMAGE_EMB = "clip_image_emb"  # fixed_size_list<float16>[embed_dim], L2-normalised
TEXT_EMB = "clip_text_emb"    # fixed_size_list<float16>[embed_dim], L2-normalised
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


def _plain_blocks(transformer) -> bool:
    """True for open_clip's default Transformer: batch-first ResidualAttentionBlocks over nn.MultiheadAttention,
    the only layout whose last block _last_block_rows reproduces."""
    T = open_clip.transformer
    blocks = getattr(transformer, "resblocks", None)
    return (type(transformer) is T.Transformer and getattr(transformer, "batch_first", False) and bool(blocks)
            and all(type(r) is T.ResidualAttentionBlock and not hasattr(r, "ln_1_kv")
                    and type(r.attn) is torch.nn.MultiheadAttention and r.attn.batch_first for r in blocks))


def _last_block_rows(block, x: torch.Tensor, rows: torch.Tensor | None, key_pad: torch.Tensor | None = None):
    """ResidualAttentionBlock.forward for one token per sequence (x[b, rows[b]], or token 0 when rows is None):
    keys and values come from every token, but queries, the output projection and the MLP run for that token
    only, since the pooled output reads nothing else. key_pad (N, L) bool hides the keys a causal mask hides."""
    kv = block.ln_1(x)
    if rows is None:
        q_x, q = x[:, :1], kv[:, :1]
    else:
        at = torch.arange(x.shape[0], device=x.device)
        q_x, q = x[at, rows].unsqueeze(1), kv[at, rows].unsqueeze(1)
    a = block.attn(q, kv, kv, need_weights=False, key_padding_mask=key_pad)[0]
    y = q_x + block.ls_1(a)
    return (y + block.ls_2(block.mlp(block.ln_2(y))))[:, 0]


def _vit_fast(visual) -> bool:
    """The vision tower is open_clip's standard class-token ViT (pooled output = ln_post(token 0) @ proj)."""
    return (type(visual) is open_clip.transformer.VisionTransformer and visual.attn_pool is None
            and visual.pool_type == "tok" and not visual.output_tokens and hasattr(visual, "_embeds")
            and _plain_blocks(visual.transformer))


def encode_image(model, pixels: torch.Tensor) -> torch.Tensor:
    """model.encode_image(pixels); for a standard ViT the last block runs for the class token alone."""
    v = model.visual
    if not _vit_fast(v):
        return model.encode_image(pixels)
    x = v._embeds(pixels)
    for r in v.transformer.resblocks[:-1]:
        x = r(x)
    x = v.ln_post(_last_block_rows(v.transformer.resblocks[-1], x, None))  # ln is per token: before/after pool alike
    return x @ v.proj if v.proj is not None else x


def _text_fast(model) -> bool:
    """open_clip CLIP whose causal text tower pools one token (argmax/eos): padding after it can be cut and
    its last block can run for that token alone."""
    return (isinstance(model, open_clip.CLIP) and getattr(model, "attn_mask", None) is not None
            and model.text_pool_type in ("argmax", "eos") and _plain_blocks(model.transformer))


def _pool_index(model, text: torch.Tensor) -> torch.Tensor:
    """The position text_global_pool reads in each row."""
    if model.text_pool_type == "argmax":
        return text.argmax(dim=-1)
    return (text == model.text_eos_id).int().argmax(dim=-1)


def _encode_text_trimmed(model, text: torch.Tensor) -> torch.Tensor:
    """open_clip CLIP.encode_text on tokens cut to their longest row: under the causal mask the pooled
    position never sees the padding after it, so dropping it changes nothing but the cost; the last block
    runs for the pooled position alone, with the causal mask's row for it as a key padding mask."""
    n_ctx = text.shape[1]
    cast = model.transformer.get_cast_dtype()
    x = model.token_embedding(text).to(cast) + model.positional_embedding[:n_ctx].to(cast)
    blocks = model.transformer.resblocks
    mask = model.attn_mask[:n_ctx, :n_ctx]
    for r in blocks[:-1]:
        x = r(x, attn_mask=mask)
    idx = _pool_index(model, text)
    key_pad = torch.arange(n_ctx, device=text.device)[None, :] > idx[:, None]
    x = model.ln_final(_last_block_rows(blocks[-1], x, idx, key_pad))
    if model.text_projection is not None:
        x = model.text_projection(x) if isinstance(model.text_projection, torch.nn.Linear) \
            else x @ model.text_projection
    return x


def length_buckets(lengths: np.ndarray, overhead: float) -> list[np.ndarray]:
    """Row groups (indices into lengths) minimising sum(rows x longest row) + overhead per group, over
    length-sorted contiguous groups (exact dynamic programme): the text tower's cost is linear in the padded
    tokens, plus a fixed cost per forward expressed as `overhead` tokens."""
    order = np.argsort(lengths, kind="stable")
    if not np.isfinite(overhead):
        return [order] if len(order) else []
    s = lengths[order].astype(np.float64)
    n = len(s)
    best = np.zeros(n + 1)
    cut = np.zeros(n + 1, dtype=np.int64)
    for j in range(1, n + 1):  # group (i, j] costs (j - i) * s[j-1] + overhead
        cost = best[:j] + (j - np.arange(j)) * s[j - 1] + overhead
        cut[j] = int(np.argmin(cost))
        best[j] = cost[cut[j]]
    groups, j = [], n
    while j > 0:
        groups.append(order[cut[j]:j])
        j = cut[j]
    return groups[::-1]


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


def score_table(table: pa.Table, cfg: ClipConfig) -> pa.Table:
    """ClipPreprocess then ClipScorer in this process (tests, notebooks, small runs)."""
    return ClipScorer(cfg)(ClipPreprocess(cfg)(table))
