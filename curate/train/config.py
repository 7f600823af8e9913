"""The trainer's one frozen config: a dataclass loaded from YAML with strict keys, overridable from the CLI."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import yaml

from curate.config import ConfigError, dump_yaml, from_dict


@dataclass(frozen=True)
class TrainConfig:
    data: str = ""                       # run output folder (reads sizes.json) or shard spec 'a/{00000..00009}.tar', local or s3://
    num_samples: int = 0                 # samples in `data`; 0 = from sizes.json / manifest.json
    val_data: str = ""                   # held-out shards: validation loss + retrieval recall@1/5/10
    zeroshot_data: str = ""              # held-out labelled shards (KEY.json has `label_key`) for zero-shot top-1/top-5
    zeroshot_classes: tuple[str, ...] = ()    # class names by label index; one entry = a file with one name a line
    zeroshot_templates: tuple[str, ...] = ("a photo of a {}.",)  # prompts; one entry ending in .txt = a file
    label_key: str = "label"             # key of the class (index or name) in each sample's JSON
    eval_samples: int = 2_000            # cap on held-out samples read per evaluation
    output: str = "train_output"         # local folder: checkpoints/, metrics.csv, config.yaml, tensorboard/
    model: str = "ViT-B-32"              # open_clip name, or a model config JSON file (its stem becomes the name)
    loss: str = "clip"                   # clip (InfoNCE) | siglip (sigmoid) | clip+distill | siglip+distill (reinforced shards)
    distill_weight: float = 1.0          # +distill: loss = contrastive + distill_weight x KL(teachers || student)
    distill_temperature: float = 0.0     # +distill: teacher softmax temperature; 0 = 1 / the stored teacher scale (100 if none)
    batch_size: int = 256                # samples per rank per micro-batch
    accum_steps: int = 1                 # micro-batches per optimizer step
    steps: int = 0                       # optimizer steps; 0 = epochs x num_samples / global batch
    epochs: float = 1.0                  # used when steps == 0
    lr: float = 5e-4
    lr_end: float = 0.0                  # cosine schedule floor
    warmup: int = 100                    # steps of linear warmup
    weight_decay: float = 0.2            # decoupled, not on gains, biases, temperature
    beta1: float = 0.9
    beta2: float = 0.98
    eps: float = 1e-6
    grad_clip: float = 1.0               # global gradient-norm clip; 0 = off
    precision: str = "auto"              # auto (bf16 on GPU, fp32 on CPU) | fp32 | bf16 | fp16
    device: str = "auto"                 # auto | cpu | cuda
    grad_checkpointing: bool = False
    compile: bool = False                # torch.compile the model
    workers: int = 2                     # data-loader processes per rank; 0 = in the training process
    threads: int = 0                     # torch intra-op threads; 0 = torch's default
    shuffle_buffer: int = 1_000          # samples in the in-worker shuffle buffer; 0 = no sample shuffle
    resampled: bool = False              # draw shards with replacement (many-epoch runs) instead of per-epoch permutations
    seed: int = 0
    log_every: int = 10                  # steps between progress lines / CSV rows
    eval_every: int = 0                  # steps between evaluations; 0 = at the end only
    save_every: int = 0                  # steps between checkpoints; 0 = at the end only
    keep_checkpoints: int = 2            # most recent checkpoints kept (the final one always)
    resume: str = ""                     # '' | latest | a checkpoint folder
    ray: bool = False                    # launch through Ray Train
    ray_workers: int = 1                 # Ray Train workers (processes) when ray is true


CHOICES = {"loss": ("clip", "siglip", "clip+distill", "siglip+distill"), "precision": ("auto", "fp32", "bf16", "fp16"),
           "device": ("auto", "cpu", "cuda")}


def check(cfg: TrainConfig) -> None:
    """Cross-field checks with messages that name the key."""
    for key, allowed in CHOICES.items():
        if getattr(cfg, key) not in allowed:
            raise ConfigError(f"{key}: {getattr(cfg, key)!r} is not one of {', '.join(allowed)}")
    if not cfg.data:
        raise ConfigError("data: a run output folder or a shard spec is required")
    for key in ("batch_size", "accum_steps", "log_every", "ray_workers", "eval_samples"):
        if getattr(cfg, key) <= 0:
            raise ConfigError(f"{key}: must be > 0, got {getattr(cfg, key)}")
    for key in ("steps", "warmup", "workers", "threads", "shuffle_buffer", "num_samples", "eval_every",
                "save_every", "keep_checkpoints", "distill_weight", "distill_temperature"):
        if getattr(cfg, key) < 0:
            raise ConfigError(f"{key}: must be >= 0, got {getattr(cfg, key)}")
    if cfg.steps == 0 and cfg.epochs <= 0:
        raise ConfigError("epochs: must be > 0 when steps is 0")
    if cfg.zeroshot_data and not cfg.zeroshot_classes:
        raise ConfigError("zeroshot_classes: required with zeroshot_data")


def _parse_override(key: str, value):
    """CLI strings parsed as YAML ('5' -> 5, '[a, b]' -> list), except for string fields: a shard spec
    such as '{00000..00009}.tar' would otherwise read as a YAML mapping."""
    if not isinstance(value, str) or value == "" or TrainConfig.__annotations__.get(key) == "str":
        return value
    try:
        return yaml.safe_load(value)
    except yaml.YAMLError:
        return value


def load_train_config(path: str | None = None, overrides: dict | None = None) -> TrainConfig:
    """YAML file `path` (optional) + {key: value} overrides -> a checked TrainConfig; unknown keys are errors."""
    data: dict = {}
    if path:
        p = Path(path)
        if not p.is_file():
            raise ConfigError(f"config file not found: {path}")
        data = yaml.safe_load(p.read_text()) or {}
        if not isinstance(data, dict):
            raise ConfigError(f"config file {path}: top level must be a mapping")
    for k, v in (overrides or {}).items():
        data[k] = _parse_override(k, v)
    cfg = from_dict(TrainConfig, data)
    check(cfg)
    return cfg


def save_config(cfg: TrainConfig, folder: str) -> None:
    """Writes the resolved config beside the run's outputs (config.yaml)."""
    from curate import fsutil
    fs, out = fsutil.get_fs(folder)
    fsutil.atomic_write(fs, fsutil.join(out, "config.yaml"), dump_yaml(cfg).encode())


def read_list(entries: tuple[str, ...]) -> list[str]:
    """A list given inline, or as a single file path (one entry a line)."""
    if len(entries) == 1 and Path(entries[0]).is_file():
        return [ln.strip() for ln in Path(entries[0]).read_text().splitlines() if ln.strip()]
    return list(entries)
