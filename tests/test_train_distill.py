"""curate.train distillation (--loss clip+distill / siglip+distill): the KL loss on small tensors, the loader
reapplying each sample's stored view with its teachers' embeddings, clear errors, and a short real run that learns."""
from __future__ import annotations

import io
import random

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from curate import synth
from curate.config import ConfigError
from curate.reinforce import apply_view, view_params, write_npz
from curate.train import TrainConfig, load_train_config
from curate.train.data import StreamSpec, ShardStream, resolve_shards
from curate.train.losses import Objective, clip_loss, distill_loss, init_kwargs, siglip_loss
from curate.train.reinforced import NotReinforcedError
from tests.shards import write_webdataset
from tests.test_train_data import jpeg, write_tiny_model
from tests.torchrun import finish_rank, run_two_ranks

torch.set_num_threads(2)


def _unit(n: int, d: int, seed: int) -> torch.Tensor:
    return F.normalize(torch.randn(n, d, generator=torch.Generator().manual_seed(seed)), dim=-1)


def _teachers(images: list[torch.Tensor], texts: list[torch.Tensor], scale: float = 100.0) -> dict:
    return {"image": images, "text": texts, "scale": torch.full((len(images),), scale)}


def reinforced_sample(uid: str, data: bytes, caption: str, meta: dict, embed, *, seed: int = 0, views: int = 2,
                      min_scale: float = 0.35, teachers=("teacher-a",)) -> tuple:
    """(JPEG bytes, caption, KEY.json metadata, {'npz': bytes}) as a reinforced run writes a sample: views drawn by
    curate.reinforce.view_params on the stored image; embed(view images, caption) -> {name: array} (float16 here)."""
    img = Image.open(io.BytesIO(data)).convert("RGB")
    params = view_params(uid, seed, views, img.width, img.height, min_scale)
    arrays = embed([apply_view(img, p) for p in params], caption)
    meta = {**meta, "uid": uid, "reinforce": {"teachers": list(teachers), "views": params}}
    return data, caption, meta, {"npz": write_npz({k: np.asarray(v, np.float16) for k, v in arrays.items()})}


# ---------------------------------------------------------------- the loss

def test_kl_is_zero_when_the_student_is_the_teacher_and_matches_its_formula():
    img, txt = _unit(6, 8, 0), _unit(6, 8, 1)
    scale = torch.tensor(100.0)
    assert distill_loss(img, txt, scale, _teachers([img], [txt])).item() == pytest.approx(0, abs=1e-5)
    # an ensemble of two copies of one teacher is that teacher
    assert distill_loss(img, txt, scale, _teachers([img, img], [txt, txt])).item() == pytest.approx(0, abs=1e-5)
    s_img, s_txt = _unit(6, 5, 2), _unit(6, 5, 3)  # a student of another width: only logits are compared
    got = distill_loss(s_img, s_txt, torch.tensor(20.0), _teachers([img], [txt]))
    p_i, p_t = (100 * img @ txt.T).log_softmax(1), (100 * txt @ img.T).log_softmax(1)
    q_i, q_t = (20 * s_img @ s_txt.T).log_softmax(1), (20 * s_txt @ s_img.T).log_softmax(1)
    kl = lambda p, q: (p.exp() * (p - q)).sum(1).mean()  # noqa: E731  (log-probabilities in)
    assert got.item() == pytest.approx(((kl(p_i, q_i) + kl(p_t, q_t)) / 2).item(), rel=1e-4)
    assert got.item() > 0.01


def test_ensemble_averages_distributions_and_gradient_reaches_the_student():
    a_img, a_txt, b_img, b_txt = _unit(5, 8, 4), _unit(5, 8, 5), _unit(5, 4, 6), _unit(5, 4, 7)
    student_img = _unit(5, 6, 8).requires_grad_(True)
    student_txt = _unit(5, 6, 9).requires_grad_(True)
    scale = torch.tensor(10.0, requires_grad=True)
    loss = distill_loss(student_img, student_txt, scale, _teachers([a_img, b_img], [a_txt, b_txt]))
    loss.backward()
    for g in (student_img.grad, student_txt.grad, scale.grad):
        assert g is not None and g.abs().sum() > 0
    # the target is the mean of the two teachers' softmax distributions (MobileCLIP averages after softmax)
    t_i2t = ((100 * a_img @ a_txt.T).softmax(1) + (100 * b_img @ b_txt.T).softmax(1)) / 2
    t_t2i = ((100 * a_txt @ a_img.T).softmax(1) + (100 * b_txt @ b_img.T).softmax(1)) / 2
    with torch.no_grad():
        s_i2t, s_t2i = 10 * student_img @ student_txt.T, 10 * student_txt @ student_img.T
        expected = (F.kl_div(s_i2t.log_softmax(1), t_i2t, reduction="batchmean")
                    + F.kl_div(s_t2i.log_softmax(1), t_t2i, reduction="batchmean")) / 2
    assert loss.item() == pytest.approx(expected.item(), rel=1e-4)


def test_objective_adds_weighted_kl_to_the_contrastive_loss():
    img, txt, t_img, t_txt = _unit(6, 8, 10), _unit(6, 8, 11), _unit(6, 8, 12), _unit(6, 8, 13)
    scale, bias = torch.tensor(12.0), torch.tensor(-3.0)
    out = {"image_features": img, "text_features": txt, "logit_scale": scale}
    teachers = _teachers([t_img], [t_txt])
    kl = distill_loss(img, txt, scale, teachers)
    assert Objective("clip")(out).item() == pytest.approx(clip_loss(img, txt, scale).item())
    assert Objective("clip+distill", 0.5)(out, teachers).item() == pytest.approx(
        (clip_loss(img, txt, scale) + 0.5 * kl).item(), rel=1e-5)
    sig = {**out, "logit_bias": bias}
    assert Objective("siglip+distill")(sig, teachers).item() == pytest.approx(
        (siglip_loss(img, txt, scale, bias) + kl).item(), rel=1e-5)
    # temperature 0.01 = scale 100 whatever scale the batch carries
    assert Objective("clip+distill", 1.0, 0.01)(out, _teachers([t_img], [t_txt], 3.0)).item() == pytest.approx(
        Objective("clip+distill")(out, teachers).item(), rel=1e-5)
    with pytest.raises(ValueError, match="no teacher embeddings"):
        Objective("clip+distill")(out)
    assert init_kwargs("siglip+distill") == init_kwargs("siglip")
    assert init_kwargs("clip+distill") == init_kwargs("clip")


def test_config_accepts_distill_losses_and_checks_the_weight():
    cfg = load_train_config(overrides={"data": "x", "loss": "siglip+distill", "distill_weight": "0.7"})
    assert (cfg.loss, cfg.distill_weight, cfg.distill_temperature) == ("siglip+distill", 0.7, 0.0)
    with pytest.raises(ConfigError, match="distill_weight"):
        load_train_config(overrides={"data": "x", "loss": "clip+distill", "distill_weight": -1})
    with pytest.raises(ConfigError, match="loss"):
        load_train_config(overrides={"data": "x", "loss": "distill"})


# ---------------------------------------------------------------- the loader

def _view_tag(views: list[Image.Image], caption: str) -> dict:
    """A teacher whose view-v image embedding is the unit vector e_v: the batch says which view it carries."""
    return {"image_emb_0": np.eye(4)[: len(views)], "text_emb_0": np.eye(4)[3:4]}


def _tf(img: Image.Image) -> torch.Tensor:
    return torch.from_numpy(np.asarray(img.resize((8, 8), Image.BILINEAR), np.float32))


@pytest.fixture(scope="module")
def view_shards(tmp_path_factory):
    rng = random.Random(3)
    samples = []
    for i in range(6):
        img = synth.draw_sample(synth.SHAPES[i], "red", rng, 48).resize((48 + 8 * i, 40))
        samples.append(reinforced_sample(f"{i:032x}", jpeg(img), f"caption {i}", {}, _view_tag, views=3))
    return write_webdataset(tmp_path_factory.mktemp("views"), samples, per_shard=3), samples


def test_loader_reapplies_the_stored_view_with_its_teacher_embeddings(view_shards):
    folder, samples = view_shards
    urls, _ = resolve_shards(str(folder))
    spec = StreamSpec(urls=urls, transform=_tf, tokenizer=list, batch_size=3, distill=True)
    by_caption = {cap: (Image.open(io.BytesIO(data)).convert("RGB"), meta) for data, cap, meta, _ in samples}
    picked: dict[str, set] = {}
    for _, batch in zip(range(12), iter(ShardStream(spec))):  # six passes over the six samples
        t_img = batch["teachers"]["image"][0]
        assert batch["teachers"]["text"][0].tolist() == [[0, 0, 0, 1]] * 3
        assert batch["teachers"]["scale"].tolist() == [100.0]
        for row, caption in enumerate(batch["texts"]):
            view = int(t_img[row].argmax())
            img, meta = by_caption[caption]
            expected = _tf(apply_view(img, meta["reinforce"]["views"][view]))
            assert torch.equal(batch["images"][row], expected), (caption, view)
            picked.setdefault(caption, set()).add(view)
    assert len(picked) == 6 and any(len(v) > 1 for v in picked.values())  # a new pick on each pass
    assert set().union(*picked.values()) == {0, 1, 2}


def test_loader_names_the_shard_of_a_sample_without_npz(tmp_path, view_shards):
    _, samples = view_shards
    plain = [s[:3] for s in samples[:2]]
    write_webdataset(tmp_path / "plain", plain, per_shard=2)
    urls, _ = resolve_shards(str(tmp_path / "plain"))
    spec = StreamSpec(urls=urls, transform=_tf, tokenizer=list, batch_size=2, distill=True)
    with pytest.raises(NotReinforcedError, match=r"plain/shards/00000\.tar.*KEY\.npz.*reinforce"):
        next(iter(ShardStream(spec)))
    other = [samples[0], reinforced_sample("f" * 32, samples[1][0], "x", {}, _view_tag, teachers=("b",))]
    write_webdataset(tmp_path / "mixed", other, per_shard=2)
    urls, _ = resolve_shards(str(tmp_path / "mixed"))
    spec = StreamSpec(urls=urls, transform=_tf, tokenizer=list, batch_size=2, distill=True)
    with pytest.raises(NotReinforcedError, match="teachers"):
        next(iter(ShardStream(spec)))


# ---------------------------------------------------------------- a short real run

def _class_teacher(dim: int = 64, seed: int = 0):
    """A synthetic teacher that knows the 48 shape x colour classes: one random unit prototype per class."""
    protos = F.normalize(torch.randn(48, dim, generator=torch.Generator().manual_seed(seed)), dim=-1).numpy()
    names = synth.class_names()

    def embed(label: int):
        def fn(views, caption):
            text_label = next((i for i, n in enumerate(names) if n in caption), label)
            noise = np.random.default_rng(label).normal(0, 0.05, (len(views), dim))
            img = protos[label] + noise
            return {"image_emb_0": img / np.linalg.norm(img, axis=1, keepdims=True),
                    "text_emb_0": protos[text_label][None]}
        return fn
    return embed


def test_short_distillation_run_learns(tmp_path):
    from curate.train.trainer import train

    embed = _class_teacher()
    samples = [reinforced_sample(f"{i:032x}", jpeg(img), cap, {"label": label}, embed(label))
               for i, (img, cap, label) in enumerate(synth.make_captioned_set(384, seed=5, size=40))]
    write_webdataset(tmp_path / "run", samples, per_shard=128)
    cfg = TrainConfig(data=str(tmp_path / "run"), model=str(write_tiny_model(tmp_path)), loss="clip+distill",
                      output=str(tmp_path / "out"), batch_size=32, steps=30, lr=2e-3, warmup=3, weight_decay=0.1,
                      workers=1, threads=2, log_every=5, shuffle_buffer=128)
    summary = train(cfg)
    losses = summary["losses"]
    assert len(losses) == 30 and all(np.isfinite(losses))
    assert np.mean(losses[-5:]) < np.mean(losses[:5]) - 1.0, losses  # 7.0 -> 3.3 on the dev machine


# ---------------------------------------------------------------- two ranks

def _dist_worker(out_path: str) -> None:
    """Under torchrun: this rank's slice of a fixed global batch; rank 0 writes the ranks' mean loss and its
    own rows' gradient."""
    import json
    from pathlib import Path

    from curate.train.engine import reduce_mean, setup_runtime
    torch.set_num_threads(1)  # as test_train_dist: no intra-op pool threads alive at teardown
    rt = setup_runtime("cpu", "fp32")
    img, txt, t_img, t_txt, t2_img, t2_txt = (_unit(8, 6, s) for s in range(6))
    n = 8 // rt.world_size
    mine = slice(rt.rank * n, (rt.rank + 1) * n)
    student = img[mine].clone().requires_grad_(True)
    loss = distill_loss(student, txt[mine], torch.tensor(20.0),
                        _teachers([t_img[mine], t2_img[mine]], [t_txt[mine], t2_txt[mine]]))
    loss.backward()
    mean = reduce_mean(loss.detach()).item()
    if rt.rank == 0:
        Path(out_path).write_text(json.dumps({"loss": mean, "grad": student.grad.tolist()}))
    finish_rank()


def test_two_gloo_ranks_equal_one_process(tmp_path):
    two = run_two_ranks(__file__, tmp_path / "two.json")
    img, txt, t_img, t_txt, t2_img, t2_txt = (_unit(8, 6, s) for s in range(6))
    student = img.clone().requires_grad_(True)
    one = distill_loss(student, txt, torch.tensor(20.0), _teachers([t_img, t2_img], [t_txt, t2_txt]))
    one.backward()
    assert two["loss"] == pytest.approx(one.item(), rel=1e-5)  # the ranks' mean loss is the global loss
    # rank 0's rows get the gradient of both ranks' losses (the gather sends it back); DDP then halves it
    assert torch.allclose(torch.tensor(two["grad"]) / 2, student.grad[:4], atol=1e-6)


if __name__ == "__main__":
    import sys
    sys.path.insert(0, str(__import__("pathlib").Path(__file__).resolve().parents[1]))
    _dist_worker(sys.argv[1])
