"""CLIP (InfoNCE) and SigLIP (sigmoid) contrastive losses, with features gathered across ranks with gradients,
and their +distill forms: KL divergence from a teacher ensemble's similarity distributions (MobileCLIP).

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
DISTILL_SUFFIX = "+distill"


def base_loss(loss: str) -> str:
    """The contrastive loss under `loss`: 'siglip+distill' -> 'siglip'."""
    return loss.removesuffix(DISTILL_SUFFIX)


def is_distill(loss: str) -> bool:
    return loss.endswith(DISTILL_SUFFIX)


def _kl(teacher_log_probs: torch.Tensor, student_logits: torch.Tensor) -> torch.Tensor:
    """KL(teacher || softmax(student)) per row, averaged over rows."""
    return F.kl_div(student_logits.float().log_softmax(1), teacher_log_probs, log_target=True,
                    reduction="batchmean")


def _ensemble(logits: list[torch.Tensor]) -> torch.Tensor:
    """log of the teachers' softmax distributions averaged (MobileCLIP's --distill-average-after-softmax)."""
    return torch.logsumexp(torch.stack([x.log_softmax(1) for x in logits]), dim=0) - math.log(len(logits))


def teacher_log_probs(images: list[torch.Tensor], texts: list[torch.Tensor], scale: torch.Tensor):
    """(image->text, text->image) log-distributions of this rank's rows over the global batch: per teacher
    softmax(scale x cosine similarity), averaged over the ensemble."""
    per_i, per_t = [], []
    for k, (img, txt) in enumerate(zip(images, texts)):
        img, txt = F.normalize(img.float(), dim=-1), F.normalize(txt.float(), dim=-1)
        all_i, all_t = gather_with_grad(img), gather_with_grad(txt)
        per_i.append(scale[k] * img @ all_t.T)
        per_t.append(scale[k] * txt @ all_i.T)
    return _ensemble(per_i), _ensemble(per_t)


def distill_loss(image_features: torch.Tensor, text_features: torch.Tensor, logit_scale: torch.Tensor,
                 teachers: dict) -> torch.Tensor:
    """Mean of KL(p_teacher || p_student) over the image->text and text->image distributions of this rank's
    rows over the global batch. `teachers`: {'image': [B, D_t] per teacher, 'text': ..., 'scale': [T]}; the
    student's logits use its own learned scale (a SigLIP bias would not change a softmax)."""
    all_images, all_texts = gather_with_grad(image_features), gather_with_grad(text_features)
    student_i = logit_scale * image_features @ all_texts.T
    student_t = logit_scale * text_features @ all_images.T
    t_i, t_t = teacher_log_probs(teachers["image"], teachers["text"], teachers["scale"].to(student_i.device))
    return (_kl(t_i, student_i) + _kl(t_t, student_t)) / 2


class Objective:
    """The training loss named by `loss`: contrastive, plus weight x distill_loss for the +distill forms.
    temperature > 0 replaces the teachers' logit scale by 1 / temperature."""

    def __init__(self, loss: str, weight: float = 1.0, temperature: float = 0.0):
        self.contrastive, self.distill = LOSSES[base_loss(loss)], is_distill(loss)
        self.name, self.weight, self.temperature = loss, weight, temperature

    def __call__(self, out: dict, teachers: dict | None = None) -> torch.Tensor:
        img, txt, scale = out["image_features"], out["text_features"], out["logit_scale"]
        loss = self.contrastive(img, txt, scale, out.get("logit_bias"))
        if not self.distill:
            return loss
        if teachers is None:
            raise ValueError(f"loss {self.name}: the batch carries no teacher embeddings (reinforced shards)")
        if self.temperature > 0:
            teachers = {**teachers, "scale": torch.full_like(teachers["scale"], 1.0 / self.temperature)}
        return loss + self.weight * distill_loss(img, txt, scale, teachers)


def init_kwargs(loss: str) -> dict:
    """open_clip model kwargs that initialise temperature (and bias) as the loss's paper does."""
    if base_loss(loss) == "siglip":
        return {"init_logit_scale": SIGLIP_INIT_LOGIT_SCALE, "init_logit_bias": SIGLIP_INIT_LOGIT_BIAS}
    return {"init_logit_scale": CLIP_INIT_LOGIT_SCALE}


def clamp_logit_scale(model: torch.nn.Module, loss: str) -> None:
    """Clamps the learned log-scale to [0, ln 100] after each step, as CLIP does (SigLIP leaves it free)."""
    if base_loss(loss) != "clip":
        return
    with torch.no_grad():
        model.logit_scale.clamp_(0, CLIP_MAX_LOGIT_SCALE)
