"""CLIP (InfoNCE) and SigLIP (sigmoid) contrastive losses, with features gathered across ranks with gradients.

Local-loss formulation: each rank scores its own rows against the global batch; the mean of the ranks' losses
equals the single-process loss on the global batch, and so do the DDP-averaged gradients.
"""
from __future__ import annotations

import math

import torch
import torch.distributed as dist
import torch.nn.functional as F

CLIP_INIT_LOGIT_SCALE = math.log(1 / 0.07)  # CLIP paper: temperature 0.07
CLIP_MAX_LOGIT_SCALE = math.log(100)        # CLIP clamps the learned scale at 100
SIGLIP_INIT_LOGIT_SCALE = math.log(10)      # SigLIP paper: t' = log 10
SIGLIP_INIT_LOGIT_BIAS = -10.0              # SigLIP paper: b = -10


def _world() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def gather_with_grad(x: torch.Tensor) -> torch.Tensor:
    """All ranks' rows concatenated in rank order; gradients flow back to the rank that owns each row."""
    _, world = _world()
    if world == 1:
        return x
    import warnings

    import torch.distributed.nn  # autograd-aware collectives: backward sends each rank its rows' gradients
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # deprecated for a private replacement; still supported
        return torch.cat(torch.distributed.nn.all_gather(x), dim=0)


def clip_loss(image_features: torch.Tensor, text_features: torch.Tensor, logit_scale: torch.Tensor,
              logit_bias: torch.Tensor | None = None) -> torch.Tensor:
    """Symmetric InfoNCE over the global batch, computed for this rank's rows (features are L2-normalised)."""
    rank, _ = _world()
    all_images, all_texts = gather_with_grad(image_features), gather_with_grad(text_features)
    logits_i = logit_scale * image_features @ all_texts.T
    logits_t = logit_scale * text_features @ all_images.T
    if logit_bias is not None:
        logits_i, logits_t = logits_i + logit_bias, logits_t + logit_bias
    n = image_features.shape[0]
    labels = torch.arange(n, device=image_features.device) + rank * n
    return (F.cross_entropy(logits_i.float(), labels) + F.cross_entropy(logits_t.float(), labels)) / 2


def siglip_loss(image_features: torch.Tensor, text_features: torch.Tensor, logit_scale: torch.Tensor,
                logit_bias: torch.Tensor | None = None) -> torch.Tensor:
    """Pairwise sigmoid loss: this rank's images against every text, summed, divided by the local batch."""
    rank, _ = _world()
    all_texts = gather_with_grad(text_features)
    logits = logit_scale * image_features @ all_texts.T
    if logit_bias is not None:
        logits = logits + logit_bias
    n = image_features.shape[0]
    signs = -torch.ones_like(logits)
    idx = torch.arange(n, device=logits.device)
    signs[idx, idx + rank * n] = 1.0
    return -F.logsigmoid((signs * logits).float()).sum() / n


LOSSES = {"clip": clip_loss, "siglip": siglip_loss}


def init_kwargs(loss: str) -> dict:
    """open_clip model kwargs that initialise temperature (and bias) as the loss's paper does."""
    if loss == "siglip":
        return {"init_logit_scale": SIGLIP_INIT_LOGIT_SCALE, "init_logit_bias": SIGLIP_INIT_LOGIT_BIAS}
    return {"init_logit_scale": CLIP_INIT_LOGIT_SCALE}


def clamp_logit_scale(model: torch.nn.Module, loss: str) -> None:
    """Clamps the learned log-scale to [0, ln 100] after each step, as CLIP does (SigLIP leaves it free)."""
    if loss != "clip":
        return
    with torch.no_grad():
        model.logit_scale.clamp_(0, CLIP_MAX_LOGIT_SCALE)
