"""curate.train: a compact CLIP / SigLIP trainer over webdataset shards (`python -m curate.train`)."""
from curate.train.config import TrainConfig, load_train_config

__all__ = ["TrainConfig", "load_train_config", "train"]


def train(cfg: TrainConfig) -> dict:
    """Runs training (see curate.train.trainer.train); imported lazily to keep `import curate.train` light."""
    from curate.train.trainer import train as _train
    return _train(cfg)
