"""`python -m curate.train`: contrastive (CLIP / SigLIP) training on webdataset shards."""
from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import sys

from curate.config import ConfigError
from curate.train.config import TrainConfig, load_train_config


def parse_args(argv=None) -> tuple[str | None, dict]:
    """(YAML path, {field: value}) from the command line: --config FILE, one --<field> flag per config field,
    and -s/--set key=value for any of them."""
    p = argparse.ArgumentParser(prog="python -m curate.train", description=__doc__)
    p.add_argument("--config", help="YAML file with TrainConfig keys")
    p.add_argument("-s", "--set", action="append", default=[], metavar="KEY=VALUE", help="override a key")
    for f in dataclasses.fields(TrainConfig):
        flag = "--" + f.name.replace("_", "-")
        if f.type == "bool":
            p.add_argument(flag, dest=f.name, nargs="?", const="true", default=None)
        else:
            p.add_argument(flag, dest=f.name, default=None)
    ns = p.parse_args(argv)
    overrides = {f.name: getattr(ns, f.name) for f in dataclasses.fields(TrainConfig)
                 if getattr(ns, f.name) is not None}
    for item in ns.set:
        key, sep, value = item.partition("=")
        if not sep:
            p.error(f"--set expects KEY=VALUE, got {item!r}")
        overrides[key.strip()] = value
    return ns.config, overrides


def _ray_launch():
    """pipelines.train_ray.launch (Ray lives in pipelines/, not in the library), or None after saying why."""
    try:
        from pipelines.train_ray import launch
    except ModuleNotFoundError as e:
        if e.name != "pipelines" and not (e.name or "").startswith("pipelines."):
            raise
        print("--ray runs training through pipelines/train_ray.py, which is not importable here "
              f"({e}); run from the curate repository root or install curate with its pipelines package",
              file=sys.stderr)
        return None
    return launch


def main(argv=None) -> int:
    # our progress lines at INFO; libraries (open_clip logs each factory step at INFO) only from WARNING
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(message)s", stream=sys.stderr)
    logging.getLogger("curate.train").setLevel(logging.INFO)
    path, overrides = parse_args(argv)
    try:
        cfg = load_train_config(path, overrides)
    except ConfigError as e:
        print(f"config error: {e}", file=sys.stderr)
        return 2
    if cfg.ray:
        launch = _ray_launch()
        if launch is None:
            return 2
        print(json.dumps(launch(cfg), default=str))
        return 0
    from curate.train.trainer import train
    summary = train(cfg)
    import torch.distributed as dist
    if not dist.is_initialized() or dist.get_rank() == 0:
        print(json.dumps({k: v for k, v in summary.items() if k != "losses"}, default=str))
    if dist.is_initialized():
        dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main())
