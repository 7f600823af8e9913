"""Evaluation on held-out shards: zero-shot classification top-1/top-5 and image<->text retrieval recall@1/5/10."""
from __future__ import annotations

import contextlib

import torch
import torch.nn.functional as F

from curate.train.data import StreamSpec, make_loader, resolve_shards


@torch.no_grad()
def encode(model, loader, device, autocast=contextlib.nullcontext) -> dict[str, torch.Tensor]:
    """Normalised image/text features (and labels when present) of every batch of `loader`."""
    out: dict[str, list] = {"image": [], "text": [], "labels": []}
    for batch in loader:
        with autocast():
            img = model.encode_image(batch["images"].to(device), normalize=True)
            txt = model.encode_text(batch["texts"].to(device), normalize=True)
        out["image"].append(img.float().cpu())
        out["text"].append(txt.float().cpu())
        if "labels" in batch:
            out["labels"].append(batch["labels"])
    return {k: torch.cat(v) for k, v in out.items() if v}


@torch.no_grad()
def zeroshot_classifier(model, tokenizer, classnames: list[str], templates: list[str], device,
                        autocast=contextlib.nullcontext) -> torch.Tensor:
    """[dim, classes] weights: each class's prompt embeddings averaged, normalised (as in CLIP)."""
    weights = []
    for name in classnames:
        tokens = tokenizer([t.format(name) for t in templates]).to(device)
        with autocast():
            emb = model.encode_text(tokens, normalize=True).float()
        weights.append(F.normalize(emb.mean(0), dim=-1))
    return torch.stack(weights, dim=1)


def topk_accuracy(logits: torch.Tensor, labels: torch.Tensor, ks=(1, 5)) -> dict[str, float]:
    out = {}
    for k in ks:
        k_ = min(k, logits.shape[1])
        hit = (logits.topk(k_, dim=1).indices == labels[:, None]).any(dim=1)
        out[f"top{k}"] = hit.float().mean().item()
    return out


def retrieval_recall(image: torch.Tensor, text: torch.Tensor, ks=(1, 5, 10)) -> dict[str, float]:
    """Recall@k both ways for paired rows (row i's caption is text i)."""
    sim = image @ text.T
    target = torch.arange(sim.shape[0])
    out = {}
    for direction, s in (("image_to_text", sim), ("text_to_image", sim.T)):
        rank = (s > s[target, target][:, None]).sum(dim=1)  # how many candidates beat the true pair
        for k in ks:
            out[f"{direction}_R@{k}"] = (rank < k).float().mean().item()
    return out


def _loader(spec_str: str, transform, tokenizer, batch_size: int, max_samples: int, label_key=None,
            classnames=None):
    urls, _ = resolve_shards(spec_str)
    spec = StreamSpec(urls=urls, transform=transform, tokenizer=tokenizer, batch_size=batch_size,
                      infinite=False, max_samples=max_samples, label_key=label_key,
                      class_index={c: i for i, c in enumerate(classnames or [])})
    return make_loader(spec, workers=0)


def evaluate(model, tokenizer, transform, device, *, val_data: str = "", zeroshot_data: str = "",
             classnames: list[str] = (), templates: list[str] = (), label_key: str = "label",
             batch_size: int = 256, max_samples: int = 2000, autocast=contextlib.nullcontext) -> dict:
    """Metrics dict: zeroshot_top1/top5 (when zeroshot_data) and retrieval recall (when val_data)."""
    was_training = model.training
    model.eval()
    metrics: dict[str, float] = {}
    if zeroshot_data:
        feats = encode(model, _loader(zeroshot_data, transform, tokenizer, batch_size, max_samples, label_key,
                                      classnames), device, autocast)
        w = zeroshot_classifier(model, tokenizer, list(classnames), list(templates), device, autocast).cpu()
        acc = topk_accuracy(feats["image"] @ w, feats["labels"])
        metrics.update({f"zeroshot_{k}": v for k, v in acc.items()})
        metrics["zeroshot_n"] = len(feats["labels"])
    if val_data:
        feats = encode(model, _loader(val_data, transform, tokenizer, batch_size, max_samples), device, autocast)
        metrics.update({f"retrieval_{k}": v for k, v in retrieval_recall(feats["image"], feats["text"]).items()})
        metrics["retrieval_n"] = len(feats["image"])
    model.train(was_training)
    return metrics
