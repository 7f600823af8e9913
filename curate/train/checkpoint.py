"""Checkpoints as folders open_clip loads as they are: open_clip_config.json + open_clip_model.safetensors,
plus train_state.pt (optimizer, schedule, step, RNG; tensors only, for weights_only loading) and train_meta.json."""
from __future__ import annotations

import json
import os
import random
import shutil
import uuid
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from curate.checkpoint_files import CONFIG_FILE, META_FILE, STATE_FILE, WEIGHTS_FILE


def step_dir(root: str | Path, step: int) -> Path:
    return Path(root) / "checkpoints" / f"step_{step:08d}"


def python_rng_state() -> dict:
    version, state, gauss = random.getstate()
    return {"version": version, "state": torch.tensor(state, dtype=torch.int64), "gauss": gauss}


def set_python_rng_state(s: dict) -> None:
    random.setstate((s["version"], tuple(int(v) for v in s["state"].tolist()), s["gauss"]))


def rng_state() -> dict:
    """This process's RNG states as tensors (weights_only-loadable)."""
    state = {"torch": torch.get_rng_state(), "python": python_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    set_python_rng_state(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def unwrap(model: torch.nn.Module) -> torch.nn.Module:
    """The plain open_clip module inside DDP / torch.compile wrappers."""
    while True:
        inner = getattr(model, "module", None) or getattr(model, "_orig_mod", None)
        if inner is None:
            return model
        model = inner


def save(root: str | Path, step: int, model: torch.nn.Module, model_cfg: dict, preprocess: dict,
         train_state: dict, meta: dict) -> Path:
    """Writes checkpoint `step` under a temporary name, then renames it: a folder is whole or absent."""
    final = step_dir(root, step)
    tmp = final.with_name(f".{final.name}.tmp-{uuid.uuid4().hex[:8]}")
    tmp.mkdir(parents=True)
    weights = {k: v.detach().to("cpu").contiguous().clone() for k, v in unwrap(model).state_dict().items()}
    save_file(weights, str(tmp / WEIGHTS_FILE))
    (tmp / CONFIG_FILE).write_text(json.dumps({"model_cfg": model_cfg, "preprocess_cfg": preprocess}, indent=2))
    torch.save(train_state, tmp / STATE_FILE)
    (tmp / META_FILE).write_text(json.dumps({**meta, "step": step}, indent=2, default=str))
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)
    return final


def list_checkpoints(root: str | Path) -> list[Path]:
    """Complete checkpoints under root/checkpoints, oldest first."""
    folder = Path(root) / "checkpoints"
    if not folder.is_dir():
        return []
    done = [p for p in folder.glob("step_*") if (p / META_FILE).is_file()]
    return sorted(done, key=lambda p: int(p.name.split("_")[1]))


def resolve(root: str | Path, resume: str) -> Path | None:
    """The checkpoint folder for --resume: 'latest' (None when there is none yet) or a folder path."""
    if not resume:
        return None
    if resume == "latest":
        found = list_checkpoints(root)
        return found[-1] if found else None
    path = Path(resume)
    if not (path / META_FILE).is_file():
        raise FileNotFoundError(f"not a complete checkpoint folder: {resume}")
    return path


def prune(root: str | Path, keep: int) -> None:
    """Deletes all but the `keep` most recent checkpoints (0 keeps all)."""
    if keep <= 0:
        return
    for old in list_checkpoints(root)[:-keep]:
        shutil.rmtree(old, ignore_errors=True)


def load_weights(model: torch.nn.Module, path: str | Path) -> None:
    unwrap(model).load_state_dict(load_file(str(Path(path) / WEIGHTS_FILE)), strict=True)


def load_state(path: str | Path) -> dict:
    return torch.load(Path(path) / STATE_FILE, map_location="cpu", weights_only=True)


def read_meta(path: str | Path) -> dict:
    return json.loads((Path(path) / META_FILE).read_text())


def load_model(path: str | Path, device: str = "cpu"):
    """(model in eval mode, eval preprocess, tokenizer) from a checkpoint folder, through plain open_clip."""
    import open_clip
    ident = f"local-dir:{Path(path).resolve()}"
    model, _, preprocess = open_clip.create_model_and_transforms(ident, device=device)
    model.eval()
    return model, preprocess, open_clip.get_tokenizer(ident)
