"""Loads any open_clip model (name or config JSON) with its weights (tag, file or checkpoint dir), failing clearly."""
from __future__ import annotations

import difflib
import hashlib
import json
import logging
import os
import socket
import tempfile
import threading
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlparse

import open_clip
import torch

from curate.checkpoint_files import CONFIG_FILE, WEIGHTS_FILE

# torch-free parts, re-exported: the driver reads scorer identities without importing torch
from curate.clip.identity import _looks_like_path, scorer_identity  # noqa: F401

HUB_PROBE = ("huggingface.co", 443)
PROBE_TIMEOUT_S = 3.0  # seconds: an offline machine must fail within seconds, not after minutes of retries
RANDOM_INIT_SEED = 0
_PREPROCESS_KEYS = ("mean", "std", "interpolation", "resize_mode")


class ClipLoadError(ValueError):
    """The model or its weights cannot be loaded; the message says what failed and what to pass instead."""


@dataclass(frozen=True)
class Resolved:
    """What open_clip's factory is called with for a (model, pretrained) pair."""
    name: str                      # factory model name: builtin, registered config, or local-dir:<ckpt dir>
    weights: str | None = None     # local weights file; None for random init or a checkpoint dir
    preprocess: dict = field(default_factory=dict)  # image_mean/std/... overrides from a pretrained tag


def _offline_env() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on")


def hub_reachable(host: str = HUB_PROBE[0], port: int = HUB_PROBE[1], timeout: float = PROBE_TIMEOUT_S) -> bool:
    """True when a TCP connection to host:port opens within `timeout` seconds (DNS included)."""
    result = [False]

    def probe():
        try:
            with socket.create_connection((host, port), timeout=timeout):
                result[0] = True
        except OSError:
            pass

    t = threading.Thread(target=probe, daemon=True)  # getaddrinfo ignores socket timeouts: bound it here
    t.start()
    t.join(timeout)
    return result[0]


def _online() -> bool:
    """False when HF_HUB_OFFLINE is set or the hub (or the HTTPS proxy) does not answer within seconds."""
    if _offline_env():
        return False
    proxy = os.environ.get("HTTPS_PROXY") or os.environ.get("https_proxy")
    if proxy:
        u = urlparse(proxy if "://" in proxy else f"http://{proxy}")
        return hub_reachable(u.hostname or "", u.port or 80)
    return hub_reachable()


def _register_config(path: Path) -> str:
    """Registers a model config JSON with open_clip under a content-derived name; returns that name."""
    try:
        cfg = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise ClipLoadError(f"clip.model: cannot read model config {path}: {e}") from None
    cfg = cfg.get("model_cfg", cfg)  # accept open_clip's hub format too
    missing = [k for k in ("embed_dim", "vision_cfg", "text_cfg") if k not in cfg]
    if missing:
        raise ClipLoadError(f"clip.model: {path} is not an open_clip model config (missing {', '.join(missing)})")
    blob = json.dumps(cfg, sort_keys=True)
    name = f"curate-{path.stem}-{hashlib.sha1(blob.encode()).hexdigest()[:8]}"
    if name not in open_clip.list_models():
        # a fresh file in a private dir: registering the user's path could shadow a builtin of the same stem
        tmp = Path(tempfile.mkdtemp(prefix="curate-clip-")) / f"{name}.json"
        tmp.write_text(blob)
        open_clip.add_model_config(tmp)
    return name


def _model_name(model: str) -> str:
    """The factory name for clip.model: a builtin name, or a registered config JSON path."""
    if model.startswith("hf-hub:"):
        if not _online():
            raise ClipLoadError(f"clip.model: {model!r} needs the Hugging Face hub, which is unreachable; pass a "
                                f"model config JSON and a local weights file instead")
        return model
    if model.startswith("local-dir:") or model in open_clip.list_models():
        return model
    if model.endswith(".json") or os.sep in model:
        p = Path(model).expanduser()
        if not p.is_file():
            raise ClipLoadError(f"clip.model: model config file not found: {model}")
        return _register_config(p)
    close = difflib.get_close_matches(model, open_clip.list_models(), n=5, cutoff=0.5)
    hint = f"; close names: {', '.join(close)}" if close else ""
    raise ClipLoadError(f"clip.model: unknown open_clip model {model!r}{hint} "
                        f"(or pass a model config JSON path)")


def _cached_tag_file(tag_cfg: dict) -> str | None:
    """The local copy of a tag's weights when open_clip (HF hub or URL cache) already fetched them."""
    hub = tag_cfg.get("hf_hub", "")
    if hub:
        from huggingface_hub import try_to_load_from_cache
        repo, fname = os.path.split(hub)
        names = [fname] if fname else [WEIGHTS_FILE, "open_clip_pytorch_model.bin"]
        if fname.endswith((".bin", ".pth")):
            names.insert(0, fname[:-4] + ".safetensors")
        for n in names:
            hit = try_to_load_from_cache(repo, n)
            if isinstance(hit, str):
                return hit
    url = tag_cfg.get("url", "")
    if url:
        p = Path("~/.cache/clip").expanduser() / os.path.basename(url)
        if p.is_file():
            return str(p)
    return None


def _tag_weights(model: str, name: str, tag: str, tag_cfg: dict) -> str:
    """A local weights file for an open_clip tag: cached, else downloaded; fails fast when offline."""
    cached = _cached_tag_file(tag_cfg)
    if cached:
        return cached
    source = tag_cfg.get("hf_hub") or tag_cfg.get("url") or "?"
    if not _online():
        why = "HF_HUB_OFFLINE is set" if _offline_env() else f"{HUB_PROBE[0]} is unreachable"
        raise ClipLoadError(
            f"clip: cannot fetch weights for model {model!r} pretrained tag {tag!r} ({why}; source: {source}) "
            f"and they are not in the local cache. Download them where there is network "
            f"(open_clip.create_model({name!r}, pretrained={tag!r}) or `hf download {source.rstrip('/')}`), "
            f"then set clip.pretrained to the local file (.safetensors/.bin/.pt) or checkpoint directory.")
    try:
        return open_clip.download_pretrained(tag_cfg)
    except Exception as e:  # network boundary: any fetch failure becomes one clear message
        raise ClipLoadError(f"clip: downloading weights for model {model!r} tag {tag!r} from {source} "
                            f"failed: {e}. Pass a local weights file as clip.pretrained instead.") from None


def _checkpoint_dir(path: Path) -> Resolved:
    if not (path / CONFIG_FILE).is_file():
        raise ClipLoadError(f"clip.pretrained: {path} is a directory without {CONFIG_FILE} "
                            f"(expected a curate.train checkpoint dir)")
    if not any(path.glob(f"*{s}") for s in (".safetensors", ".bin", ".pth")):
        raise ClipLoadError(f"clip.pretrained: checkpoint dir {path} has no weights file ({WEIGHTS_FILE})")
    return Resolved(name=f"local-dir:{path}")


def resolve(model: str, pretrained: str) -> Resolved:
    """Maps (clip.model, clip.pretrained) to open_clip factory arguments; raises ClipLoadError clearly."""
    pretrained = (pretrained or "").strip()
    if pretrained and Path(pretrained).expanduser().is_dir():
        return _checkpoint_dir(Path(pretrained).expanduser().resolve())
    name = _model_name(model)
    if not pretrained:
        return Resolved(name=name)
    p = Path(pretrained).expanduser()
    if p.is_file():
        return Resolved(name=name, weights=str(p.resolve()))
    tag_cfg = open_clip.get_pretrained_cfg(name, pretrained)
    if tag_cfg:
        return Resolved(name=name, weights=_tag_weights(model, name, pretrained, tag_cfg),
                        preprocess={k: tag_cfg[k] for k in _PREPROCESS_KEYS if k in tag_cfg})
    if _looks_like_path(pretrained):
        raise ClipLoadError(f"clip.pretrained: no such file or directory: {pretrained}")
    tags = open_clip.list_pretrained_tags_by_model(name)
    raise ClipLoadError(f"clip.pretrained: {pretrained!r} is neither a file nor a known tag for {model!r} "
                        f"(tags: {', '.join(tags) or 'none'})")


def _factory_kwargs(r: Resolved) -> dict:
    pp = r.preprocess
    return {"image_mean": pp.get("mean"), "image_std": pp.get("std"),
            "image_interpolation": pp.get("interpolation"), "image_resize_mode": pp.get("resize_mode")}


def _mismatch_summary(r: Resolved, limit: int = 3) -> str:
    """Which keys/shapes of the weights file disagree with the architecture, briefly."""
    try:
        with torch.device("meta"):
            ref = open_clip.create_model(r.name, device="meta", load_weights=False).state_dict()
        path = r.weights or open_clip.factory._find_checkpoint_in_dir(Path(r.name.split(":", 1)[1]))
        got = open_clip.factory.load_state_dict(path)
    except Exception as e:  # diagnosis only: never hide the original error behind a new one
        return f"(could not compare keys: {e})"
    missing = [k for k in ref if k not in got]
    extra = [k for k in got if k not in ref]
    shapes = [f"{k} {tuple(got[k].shape)} vs {tuple(ref[k].shape)}" for k in ref
              if k in got and tuple(got[k].shape) != tuple(ref[k].shape)]
    parts = []
    for label, items in (("missing", missing), ("unexpected", extra), ("shape (file vs model)", shapes)):
        if items:
            more = f" +{len(items) - limit} more" if len(items) > limit else ""
            parts.append(f"{len(items)} {label}: {', '.join(items[:limit])}{more}")
    return "; ".join(parts) or "keys and shapes match"


class _TransformsOnly(logging.Filter):
    """A transforms-only creation (load_weights=False) makes open_clip log "No pretrained weights loaded ...
    Model initialized randomly": true of that throwaway meta model, but read in a run's log as if the scorer
    had no weights. Dropped while such a model is made."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "initialized randomly" not in record.getMessage()


def _create(r: Resolved, model: str, pretrained: str, device: str, meta: bool = False):
    kwargs = dict(device="meta" if meta else device, load_weights=not meta, **_factory_kwargs(r))
    try:
        if meta:
            quiet = _TransformsOnly()
            logging.getLogger().addFilter(quiet)  # open_clip logs through the root logger
            try:
                with torch.device("meta"):
                    return open_clip.create_model_and_transforms(r.name, pretrained=r.weights, **kwargs)
            finally:
                logging.getLogger().removeFilter(quiet)
        return open_clip.create_model_and_transforms(r.name, pretrained=r.weights, **kwargs)
    except RuntimeError as e:
        if "state_dict" not in str(e):
            raise
        raise ClipLoadError(f"clip: weights {pretrained!r} do not fit model {model!r}: "
                            f"{_mismatch_summary(r)}") from None


def load_clip(model: str, pretrained: str = "", device: str = "cpu"):
    """(model in eval mode on `device`, inference preprocess, tokenizer) through open_clip's factory.

    model: open_clip name or model config JSON path. pretrained: '' (random init), an open_clip tag,
    a weights file (.safetensors/.pt/.bin), or a checkpoint dir with open_clip_config.json.
    """
    r = resolve(model, pretrained)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(RANDOM_INIT_SEED)  # random init (pretrained='') gives the same model in every actor
        net, _, preprocess = _create(r, model, pretrained, device)
    return net.eval(), preprocess, open_clip.get_tokenizer(r.name)


def load_transforms(model: str, pretrained: str = ""):
    """(inference preprocess, tokenizer) without materialising weights: for CPU preprocessing tasks."""
    r = resolve(model, pretrained)
    _, _, preprocess = _create(r, model, pretrained, "cpu", meta=True)
    return preprocess, open_clip.get_tokenizer(r.name)
