"""Builds an open_clip model (by name or from a model config JSON) with its train/eval transforms and tokenizer."""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import open_clip
import torch

from curate.train.losses import init_kwargs


@dataclass
class Built:
    model: torch.nn.Module
    name: str                  # the open_clip name the config is registered under
    model_cfg: dict            # the full open_clip model config (what open_clip_config.json stores)
    train_transform: object
    eval_transform: object
    tokenizer: object


def register_model(model: str) -> str:
    """The open_clip name for `model`: a built-in name as is, or a config JSON registered under its stem."""
    if model.endswith(".json"):
        path = Path(model)
        if not path.is_file():
            raise FileNotFoundError(f"model config not found: {model}")
        open_clip.add_model_config(path)
        return path.stem
    if open_clip.get_model_config(model) is None:
        raise ValueError(f"unknown open_clip model {model!r} (not a name, nor a .json config)")
    return model


def build(model: str, loss: str, device: torch.device | str = "cpu", pretrained: str | None = None) -> Built:
    """Model (fp32 weights; autocast does mixed precision), transforms and tokenizer for `model`."""
    name = register_model(model)
    kwargs = init_kwargs(loss)
    cfg = dict(open_clip.get_model_config(name))
    net, train_tf, eval_tf = open_clip.create_model_and_transforms(
        name, pretrained=pretrained, device=device, output_dict=True, **kwargs)
    cfg.update(kwargs)  # saved with checkpoints, so plain open_clip rebuilds the logit bias too
    return Built(net, name, cfg, train_tf, eval_tf, open_clip.get_tokenizer(name))


def preprocess_cfg(model: torch.nn.Module) -> dict:
    """The model's preprocessing config (size, mean, std, ...) as open_clip records it."""
    visual = getattr(model, "visual", None)
    cfg = dict(getattr(visual, "preprocess_cfg", {}) or {})
    return json.loads(json.dumps(cfg, default=list))
