"""The training run: model, data, optimizer, resume, the step loop with logging, evaluation and checkpoints."""
from __future__ import annotations

import logging
import math
import time
from pathlib import Path

import torch
import torch.distributed as dist

from curate.train import checkpoint, evaluate, model as model_lib, optim
from curate.train.config import TrainConfig, read_list, save_config
from curate.train.data import SkipCounter, StreamSpec, make_loader, resolve_shards
from curate.train.engine import Runtime, Stepper, reduce_mean, setup_runtime
from curate.train.logs import MetricsLog, progress_line
from curate.train.losses import is_distill

log = logging.getLogger("curate.train")


def total_steps(cfg: TrainConfig, num_samples: int | None, world: int) -> int:
    if cfg.steps:
        return cfg.steps
    n = cfg.num_samples or num_samples
    if not n:
        raise ValueError("steps: 0 needs a sample count: set num_samples or provide sizes.json")
    return max(1, math.floor(cfg.epochs * n / (cfg.batch_size * cfg.accum_steps * world)))


def build_stepper(cfg: TrainConfig, rt: Runtime, steps: int):
    """(Stepper, Built) with the model on its device, wrapped for DDP / compile as configured."""
    built = model_lib.build(cfg.model, cfg.loss, device=rt.device)
    net = built.model
    if cfg.grad_checkpointing:
        net.set_grad_checkpointing(True)
    if rt.world_size > 1:
        ids = [rt.device.index] if rt.device.type == "cuda" else None
        net = torch.nn.parallel.DistributedDataParallel(net, device_ids=ids)
    if cfg.compile:
        net = torch.compile(net)
    opt = optim.make_optimizer(built.model, cfg.lr, cfg.weight_decay, (cfg.beta1, cfg.beta2), cfg.eps)
    sched = optim.WarmupCosine(opt, cfg.lr, cfg.warmup, steps, cfg.lr_end)
    return Stepper(net, opt, sched, rt, cfg.loss, cfg.grad_clip, cfg.distill_weight, cfg.distill_temperature), built


def gather_rng() -> list[dict]:
    """Every rank's RNG state (rank order), so that a resumed run restores each rank's own."""
    state = checkpoint.rng_state()
    if not dist.is_initialized() or dist.get_world_size() == 1:
        return [state]
    out = [None] * dist.get_world_size()
    dist.all_gather_object(out, state)
    return out


def save_checkpoint(cfg, rt, stepper, built, step, metrics) -> None:
    rngs = gather_rng()
    if not rt.is_main:
        return
    state = {**stepper.state_dict(), "step": step, "rng": rngs}
    meta = {"model": built.name, "loss": cfg.loss, "metrics": metrics, "world_size": rt.world_size,
            "global_batch": cfg.batch_size * cfg.accum_steps * rt.world_size}
    path = checkpoint.save(cfg.output, step, stepper.model, built.model_cfg,
                           model_lib.preprocess_cfg(built.model), state, meta)
    checkpoint.prune(cfg.output, cfg.keep_checkpoints)
    log.info("saved checkpoint %s", path)


def maybe_resume(cfg, rt, stepper) -> int:
    """Loads --resume's checkpoint into the stepper; returns the step to continue from (0 when fresh)."""
    path = checkpoint.resolve(cfg.output, cfg.resume)
    if path is None:
        return 0
    checkpoint.load_weights(stepper.model, path)
    state = checkpoint.load_state(path)
    stepper.load_state_dict(state)
    rngs = state["rng"]
    checkpoint.set_rng_state(rngs[rt.rank] if rt.rank < len(rngs) else rngs[0])
    log.info("resumed from %s at step %d", path, state["step"])
    return int(state["step"])


def run_eval(cfg, rt, stepper, built) -> dict:
    if not rt.is_main or not (cfg.val_data or cfg.zeroshot_data):
        return {}
    return evaluate.evaluate(
        built.model, built.tokenizer, built.eval_transform, rt.device, val_data=cfg.val_data,
        zeroshot_data=cfg.zeroshot_data, classnames=read_list(cfg.zeroshot_classes),
        templates=read_list(cfg.zeroshot_templates), label_key=cfg.label_key, batch_size=cfg.batch_size,
        max_samples=cfg.eval_samples, autocast=rt.autocast)


def train(cfg: TrainConfig, rt: Runtime | None = None) -> dict:
    """Runs training as configured; returns a summary (losses per step, samples/s, final metrics)."""
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    rt = rt or setup_runtime(cfg.device, cfg.precision)
    torch.manual_seed(cfg.seed + rt.rank)
    urls, counted = resolve_shards(cfg.data)
    steps = total_steps(cfg, counted, rt.world_size)
    stepper, built = build_stepper(cfg, rt, steps)
    start = maybe_resume(cfg, rt, stepper)
    if rt.is_main:
        Path(cfg.output).mkdir(parents=True, exist_ok=True)
        save_config(cfg, cfg.output)
    distill = is_distill(cfg.loss)  # the stored view is the augmentation: then only resize + centre crop
    spec = StreamSpec(urls=urls, transform=built.eval_transform if distill else built.train_transform,
                      tokenizer=built.tokenizer, batch_size=cfg.batch_size, seed=cfg.seed, rank=rt.rank,
                      world_size=rt.world_size, shuffle_buffer=cfg.shuffle_buffer, resampled=cfg.resampled,
                      start_batch=start * cfg.accum_steps, distill=distill)
    loader = make_loader(spec, cfg.workers, pin_memory=rt.device.type == "cuda")
    return _loop(cfg, rt, stepper, built, loader, start, steps)


def _loop(cfg, rt, stepper, built, loader, start, steps) -> dict:
    mlog = MetricsLog(cfg.output, enabled=rt.is_main)
    skips, history, window, metrics = SkipCounter(), {}, [], {}
    global_batch = cfg.batch_size * cfg.accum_steps * rt.world_size
    it, t0, t_start, skipped = iter(loader), time.perf_counter(), time.perf_counter(), 0
    for step in range(start, steps):
        micro = [next(it) for _ in range(cfg.accum_steps)]
        skipped = skips.update(micro[-1])
        window.append(stepper.step(micro))
        done = step + 1
        if done % cfg.log_every == 0 or done == steps:
            window_losses = reduce_mean(torch.stack(window)).tolist()
            history.update(zip(range(done - len(window), done), window_losses))
            dt = time.perf_counter() - t0
            row = {"step": done, "samples_per_s": len(window) * global_batch / dt, "loss": window_losses[-1],
                   "lr": stepper.last_lr, "logit_scale": stepper.logit_scale(), "skipped": skipped}
            if rt.is_main:
                log.info(progress_line(done, steps, row["samples_per_s"], row["loss"], row["lr"],
                                       row["logit_scale"], skipped))
                mlog.write("metrics", row)
            window, t0 = [], time.perf_counter()
        if cfg.eval_every and done % cfg.eval_every == 0 and done != steps:
            metrics = run_eval(cfg, rt, stepper, built)
            mlog.write("eval", {"step": done, **metrics})
        if cfg.save_every and done % cfg.save_every == 0 and done != steps:
            save_checkpoint(cfg, rt, stepper, built, done, metrics)
    elapsed = time.perf_counter() - t_start
    if steps > start:
        metrics = run_eval(cfg, rt, stepper, built)
        if metrics:
            mlog.write("eval", {"step": steps, **metrics})
            log.info("eval at step %d: %s", steps, {k: round(v, 4) for k, v in metrics.items()})
        save_checkpoint(cfg, rt, stepper, built, steps, metrics)
    mlog.close()
    return {"steps": steps, "start_step": start, "losses": [history[k] for k in sorted(history)],
            "samples_per_s": (steps - start) * global_batch / max(elapsed, 1e-9), "skipped": skipped,
            "metrics": metrics, "logit_scale": stepper.logit_scale(), "world_size": rt.world_size}
