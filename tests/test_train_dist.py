"""curate.train losses: equal to open_clip's, and on 2 gloo ranks (torchrun) equal to one process on the same
global batch, step after step (so the gathered-with-gradient features also give equal updates)."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch

from tests.torchrun import REPO, finish_rank, run_two_ranks

GLOBAL_BATCH, STEPS = 8, 3


def test_losses_match_open_clip_on_one_process():
    from open_clip.loss import ClipLoss, SigLipLoss

    from curate.train.losses import clip_loss, siglip_loss
    g = torch.Generator().manual_seed(0)
    img = torch.nn.functional.normalize(torch.randn(6, 8, generator=g), dim=-1)
    txt = torch.nn.functional.normalize(torch.randn(6, 8, generator=g), dim=-1)
    scale, bias = torch.tensor(12.0), torch.tensor(-3.0)
    assert torch.allclose(clip_loss(img, txt, scale), ClipLoss()(img, txt, scale))
    assert torch.allclose(siglip_loss(img, txt, scale, bias), SigLipLoss()(img, txt, scale, bias))
    # a matched batch must score better than a shuffled one
    assert clip_loss(img, img, scale) < clip_loss(img, img.flip(0), scale)


def _losses(loss: str, tmp: Path) -> list[float]:
    """STEPS optimizer steps on this rank's slice of a fixed global batch; the ranks' mean loss per step."""
    from curate.train import engine, model as model_lib, optim
    from tests.test_train_data import write_tiny_model

    rt = engine.setup_runtime("cpu", "fp32")
    torch.manual_seed(0)  # same initial weights on every rank
    built = model_lib.build(str(write_tiny_model(tmp / f"cfg{rt.rank}")), loss)
    net = built.model
    if rt.world_size > 1:
        net = torch.nn.parallel.DistributedDataParallel(net)
    opt = optim.make_optimizer(built.model, 1e-3, 0.2, (0.9, 0.98), 1e-6)
    stepper = engine.Stepper(net, opt, optim.WarmupCosine(opt, 1e-3, 1, STEPS), rt, loss, grad_clip=1.0)
    g = torch.Generator().manual_seed(1)
    images = torch.randn(STEPS, GLOBAL_BATCH, 3, 32, 32, generator=g)
    texts = torch.randint(1, 49000, (STEPS, GLOBAL_BATCH, 16), generator=g)
    n = GLOBAL_BATCH // rt.world_size
    mine = slice(rt.rank * n, (rt.rank + 1) * n)
    return [engine.reduce_mean(stepper.step([{"images": images[s, mine], "texts": texts[s, mine]}])).item()
            for s in range(STEPS)]


def _worker(out_path: str) -> None:
    """Run under torchrun: both losses; rank 0 writes {loss: [per-step loss]}."""
    sys.path.insert(0, str(REPO))
    torch.set_num_threads(1)
    found = {loss: _losses(loss, Path(out_path).parent) for loss in ("clip", "siglip")}
    if torch.distributed.get_rank() == 0:
        Path(out_path).write_text(json.dumps(found))
    finish_rank()


def test_two_gloo_ranks_equal_one_process(tmp_path):
    two = run_two_ranks(__file__, tmp_path / "two.json")
    for loss in ("clip", "siglip"):
        one = _losses(loss, tmp_path)  # this process: world size 1, the whole global batch
        assert len(set(one)) == STEPS  # every step sees new data and updated weights
        assert two[loss] == pytest.approx(one, rel=1e-5, abs=1e-6), loss


if __name__ == "__main__":
    _worker(sys.argv[1])
