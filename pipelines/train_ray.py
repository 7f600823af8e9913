"""`python -m curate.train --ray`: runs curate.train's training function on Ray Train workers (Ray Train sets up
the process group)."""
from __future__ import annotations

import dataclasses
import os

from curate.train.config import TrainConfig


def _worker_loop(config: dict) -> None:
    import ray.train
    from curate.train.trainer import train

    os.environ["LOCAL_RANK"] = str(ray.train.get_context().get_local_rank())
    summary = train(TrainConfig(**config["cfg"]))
    ray.train.report({k: v for k, v in summary.items() if isinstance(v, (int, float))})


def launch(cfg: TrainConfig) -> dict:
    """Trains with `cfg.ray_workers` Ray Train workers (GPU ones when cfg.device allows); returns the metrics."""
    try:
        import torch
        from ray.train import RunConfig, ScalingConfig
        from ray.train.torch import TorchTrainer
    except ImportError as e:
        raise RuntimeError("--ray needs ray[train] installed (pip install 'ray[train]')") from e
    use_gpu = cfg.device == "cuda" or (cfg.device == "auto" and torch.cuda.is_available())
    trainer = TorchTrainer(
        _worker_loop,
        train_loop_config={"cfg": dataclasses.asdict(cfg) | {"ray": False}},
        scaling_config=ScalingConfig(num_workers=cfg.ray_workers, use_gpu=use_gpu),
        run_config=RunConfig(storage_path=os.path.abspath(os.path.join(cfg.output, "ray"))),
    )
    result = trainer.fit()
    return {"output": cfg.output, **(result.metrics or {})}
