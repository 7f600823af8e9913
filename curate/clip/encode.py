"""Fast forwards of open_clip's towers for scoring, output-identical to encode_image/encode_text: the last block
runs for the pooled token alone, and text is cut to its longest row (in length buckets on CPU)."""
from __future__ import annotations

import numpy as np
import open_clip
import torch

def _plain_blocks(transformer) -> bool:
    """True for open_clip's default Transformer: batch-first ResidualAttentionBlocks over nn.MultiheadAttention,
    the only layout whose last block _last_block_rows reproduces."""
    tf = open_clip.transformer
    blocks = getattr(transformer, "resblocks", None)
    return (type(transformer) is tf.Transformer and getattr(transformer, "batch_first", False) and bool(blocks)
            and all(type(r) is tf.ResidualAttentionBlock and not hasattr(r, "ln_1_kv")
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
