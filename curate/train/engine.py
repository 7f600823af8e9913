"""One optimizer step of contrastive training (forward, loss, backward, clip, update), distributed-aware."""
from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

from curate.train import losses, optim


@dataclass
class Runtime:
    rank: int
    world_size: int
    local_rank: int
    device: torch.device
    precision: str                        # fp32 | bf16 | fp16 (resolved)

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def autocast(self):
        if self.precision == "fp32":
            return contextlib.nullcontext()
        dtype = torch.bfloat16 if self.precision == "bf16" else torch.float16
        return torch.autocast(self.device.type, dtype=dtype)


def setup_runtime(device: str = "auto", precision: str = "auto") -> Runtime:
    """Joins the process group torchrun / Ray Train describe (NCCL on GPU, gloo on CPU) and picks the device."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    use_cuda = device == "cuda" or (device == "auto" and torch.cuda.is_available())
    if use_cuda and not torch.cuda.is_available():
        raise RuntimeError("device: cuda requested but CUDA is not available")
    dev = torch.device("cuda", local_rank % max(1, torch.cuda.device_count())) if use_cuda else torch.device("cpu")
    if use_cuda:
        torch.cuda.set_device(dev)
    if world > 1 and not dist.is_initialized():
        dist.init_process_group(backend="nccl" if use_cuda else "gloo")
    rank, world = (dist.get_rank(), dist.get_world_size()) if dist.is_initialized() else (0, 1)
    if precision == "auto":
        precision = "bf16" if use_cuda else "fp32"
    return Runtime(rank, world, local_rank, dev, precision)


class Stepper:
    """Holds model, optimizer, schedule and scaler; `step(micro_batches)` does one optimizer step."""

    def __init__(self, model, opt, sched: optim.WarmupCosine, rt: Runtime, loss: str, grad_clip: float,
                 distill_weight: float = 1.0, distill_temperature: float = 0.0):
        self.model, self.opt, self.sched, self.rt = model, opt, sched, rt
        self.loss_name, self.grad_clip = loss, grad_clip
        self.loss_fn = losses.Objective(loss, distill_weight, distill_temperature)
        self.scaler = torch.amp.GradScaler(rt.device.type, enabled=rt.precision == "fp16")
        self.inner = model.module if hasattr(model, "module") else model
        self.inner = getattr(self.inner, "_orig_mod", self.inner)

    def _micro(self, batch: dict, scale: float) -> torch.Tensor:
        images = batch["images"].to(self.rt.device, non_blocking=True)
        texts = batch["texts"].to(self.rt.device, non_blocking=True)
        teachers = _to_device(batch.get("teachers"), self.rt.device)
        with self.rt.autocast():
            out = self.model(images, texts)
            loss = self.loss_fn(out, teachers)
        self.scaler.scale(loss * scale).backward()
        return loss.detach()

    def step(self, micro_batches: list[dict]) -> torch.Tensor:
        """One optimizer step over the micro-batches (gradients averaged); returns this rank's mean loss."""
        lr = self.sched.apply()
        total = torch.zeros((), device=self.rt.device)
        n = len(micro_batches)
        for i, batch in enumerate(micro_batches):
            sync = i == n - 1 or not hasattr(self.model, "no_sync")
            ctx = contextlib.nullcontext() if sync else self.model.no_sync()  # one all-reduce per step
            with ctx:
                total += self._micro(batch, 1.0 / n)
        if self.grad_clip > 0:
            self.scaler.unscale_(self.opt)
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.grad_clip)
        self.scaler.step(self.opt)
        self.scaler.update()
        self.opt.zero_grad(set_to_none=True)
        losses.clamp_logit_scale(self.inner, self.loss_name)
        self.sched.advance()
        self.last_lr = lr
        return total / n

    def logit_scale(self) -> float:
        return self.inner.logit_scale.exp().item()

    def state_dict(self) -> dict:
        return {"optimizer": self.opt.state_dict(), "scheduler": self.sched.state_dict(),
                "scaler": self.scaler.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.opt.load_state_dict(state["optimizer"])
        self.sched.load_state_dict(state["scheduler"])
        if state.get("scaler"):
            self.scaler.load_state_dict(state["scaler"])


def _to_device(teachers: dict | None, device: torch.device) -> dict | None:
    """A batch's teacher embeddings ({'image': [...], 'text': [...], 'scale'}) on `device`."""
    if teachers is None:
        return None
    return {"image": [t.to(device, non_blocking=True) for t in teachers["image"]],
            "text": [t.to(device, non_blocking=True) for t in teachers["text"]], "scale": teachers["scale"].to(device)}


def reduce_mean(values: torch.Tensor) -> torch.Tensor:
    """Mean over ranks (identity on one process)."""
    if dist.is_initialized() and dist.get_world_size() > 1:
        values = values.clone()
        dist.all_reduce(values)
        values /= dist.get_world_size()
    return values
