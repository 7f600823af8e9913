"""CLIP scoring: loading (names, config JSON, weights, checkpoint dirs, clear errors), parity, Ray pass.

Parity is with open_clip's own encoders."""
from __future__ import annotations

import io
import itertools
import json
import logging
import time

import numpy as np
import open_clip
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import ray
import torch
from PIL import Image
from safetensors.torch import save_file

from curate import stage_io
from curate.clip.model import ClipLoadError, hub_reachable, load_clip
from curate.clip.encode import _text_fast, _vit_fast, encode_image, length_buckets
from curate.clip.scorer import IMAGE_EMB, TEXT_EMB, ClipPreprocess, ClipScorer, score_table
from curate.config import ClipConfig
from curate.schema import COL, Status
from pipelines.scoring import PassModels, read_scores, run_pass

CTX = 16  # a short context so "longer than the context length" captions are cheap
TINY = {"embed_dim": 16,
        "vision_cfg": {"image_size": 32, "layers": 1, "width": 32, "patch_size": 8, "head_width": 16},
        "text_cfg": {"context_length": CTX, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 2}}
LONG = "a very long caption about " + "many red and blue birds " * 20  # far beyond CTX tokens


def _cfg_dir(tmp, name, model_cfg):
    d = tmp / name
    d.mkdir()
    (d / f"{name}.json").write_text(json.dumps(model_cfg))
    return d / f"{name}.json"


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """(config JSON path, safetensors weights path, reference model, reference preprocess, tokenizer)."""
    tmp = tmp_path_factory.mktemp("clip")
    path = _cfg_dir(tmp, "tiny-ref", TINY)
    open_clip.add_model_config(path)  # the reference goes through open_clip alone, under its own name
    torch.manual_seed(1)
    model, _, pre = open_clip.create_model_and_transforms("tiny-ref")
    weights = tmp / "tiny.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(weights))
    return path, weights, model.eval(), pre, open_clip.get_tokenizer("tiny-ref")


def _jpeg(w, h, seed, mode="RGB", fmt="JPEG"):
    rng = np.random.default_rng(seed)
    arr = (rng.random((h, w, 3)) * 255).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(arr).convert(mode).save(buf, fmt)
    return buf.getvalue()


IMAGES = [_jpeg(48, 40, 0), _jpeg(40, 60, 1, "L"), _jpeg(50, 50, 2, "RGBA", "PNG"), _jpeg(33, 90, 3)]
CAPTIONS = ["a cat on a mat", LONG, "", "two dogs!"]


def _reference(tiny, images, captions) -> np.ndarray:
    """CLIP cosine the way a user computes it with open_clip directly."""
    _, _, model, pre, tok = tiny
    with torch.no_grad():
        im = model.encode_image(torch.stack([pre(Image.open(io.BytesIO(b))) for b in images]), normalize=True)
        tx = model.encode_text(tok(captions), normalize=True)
    return (im * tx).sum(-1).numpy()


def _table(images, captions):
    return pa.table({COL.UID: [f"u{i}" for i in range(len(images))], COL.IMAGE: pa.array(images, pa.binary()),
                     COL.CAPTION_CLEAN: pa.array(captions, pa.string())})


def test_score_table_equals_open_clip(tiny):
    cfg = ClipConfig(model=str(tiny[0]), pretrained=str(tiny[1]), device="cpu", batch_size=3,
                     save_embeddings=True)
    out = score_table(_table(IMAGES + [b"not an image", None], CAPTIONS + ["x", None]), cfg)
    scores = out[COL.CLIP_SCORE].to_pylist()
    np.testing.assert_allclose(scores[:4], _reference(tiny, IMAGES, CAPTIONS), atol=1e-4)
    assert scores[4:] == [None, None]  # undecodable / missing image: null score, row kept
    assert out[COL.CLIP_MODEL].to_pylist() == [str(tiny[0])] * 6
    assert out[COL.CLIP_PRETRAINED].to_pylist() == [str(tiny[1])] * 6
    assert out.schema.field(IMAGE_EMB).type == pa.list_(pa.float16(), 16)
    emb = np.array(out[IMAGE_EMB].to_pylist()[:4], np.float32) * np.array(out[TEXT_EMB].to_pylist()[:4])
    np.testing.assert_allclose(emb.sum(-1), scores[:4], atol=3e-3)  # float16 embeddings reproduce the score


def test_preprocess_ships_uint8_and_empty_batches(tiny):
    cfg = ClipConfig(model=str(tiny[0]), pretrained=str(tiny[1]), device="cpu")
    pre = ClipPreprocess(cfg)
    out = pre(_table(IMAGES, CAPTIONS))
    assert out.schema.field("clip_pixels").type == pa.list_(pa.uint8(), 32 * 32 * 3)
    assert out.schema.field("clip_tokens").type == pa.list_(pa.int32(), CTX)
    assert COL.IMAGE not in out.column_names
    empty = ClipScorer(cfg)(pre(_table([], [])))
    assert empty.num_rows == 0 and empty.schema.field(COL.CLIP_SCORE).type == pa.float32()


def test_draft_decode_only_changes_large_jpegs(tiny):
    big = _jpeg(256, 200, 7)
    base = dict(model=str(tiny[0]), pretrained=str(tiny[1]), device="cpu")
    fast = score_table(_table([big, IMAGES[0]], ["a", "b"]), ClipConfig(**base))[COL.CLIP_SCORE].to_numpy()
    exact = _reference(tiny, [big, IMAGES[0]], ["a", "b"])
    assert fast[1] == pytest.approx(exact[1], abs=1e-4)  # below 2x the model size: identical decode
    assert fast[0] == pytest.approx(exact[0], abs=0.05)  # DCT downscale: close, not identical
    slow = score_table(_table([big], ["a"]), ClipConfig(**base, draft_decode=False))[COL.CLIP_SCORE].to_numpy()
    assert slow[0] == pytest.approx(exact[0], abs=1e-4)


def _token_rows(tok):
    """Captions of every length from empty to beyond the context, shuffled so buckets reorder rows."""
    caps = [" ".join(["bird"] * k) for k in (0, 1, 2, 3, 5, 8, 13, 30)] + [LONG, "a cat", "two dogs!"]
    return tok([caps[i] for i in np.random.default_rng(0).permutation(len(caps))])


def _scorer_for(model, cfg_path):
    scorer = ClipScorer(ClipConfig(model=str(cfg_path), device="cpu"))
    scorer.model = model  # the model under test, with the scorer's text bucketing and image path
    return scorer


def _check_towers(model, tok, scorer, fast: bool):
    """The stage's image and text embeddings equal open_clip's encode_image / encode_text."""
    assert _vit_fast(model.visual) is fast and _text_fast(model) is fast
    pixels = torch.randn(5, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    text = _token_rows(tok)
    with torch.inference_mode():
        np.testing.assert_allclose(encode_image(model, pixels), model.encode_image(pixels), atol=1e-5)
        for overhead in (0, 4, float("inf")):  # one bucket per length ... one bucket for all
            scorer.text_overhead = overhead
            np.testing.assert_allclose(scorer._encode_text(text.numpy().astype(np.int32)),
                                       model.encode_text(text), atol=1e-5)


def test_fast_towers_equal_open_clip(tiny):
    _check_towers(tiny[2], tiny[4], _scorer_for(tiny[2], tiny[0]), fast=True)


def test_eos_pooled_text_is_exact(tmp_path):
    cfg = json.loads(json.dumps(TINY))
    cfg["text_cfg"].update(pool_type="eos", eos_id=49407)  # open_clip's end-of-text token
    path = _cfg_dir(tmp_path, "tiny-eos", cfg)
    model, _, tok = load_clip(str(path))
    assert model.text_pool_type == "eos"
    _check_towers(model, tok, _scorer_for(model, path), fast=True)


def test_non_standard_towers_fall_back_to_open_clip(tmp_path):
    cfg = json.loads(json.dumps(TINY))
    cfg["vision_cfg"]["pool_type"] = "avg"  # pooled output reads every token: no class-token shortcut
    cfg["text_cfg"]["qk_norm"] = True       # custom attention blocks: open_clip's own forward
    path = _cfg_dir(tmp_path, "tiny-odd", cfg)
    model, pre, tok = load_clip(str(path))
    _check_towers(model, tok, _scorer_for(model, path), fast=False)
    got = score_table(_table(IMAGES, CAPTIONS), ClipConfig(model=str(path), device="cpu"))[COL.CLIP_SCORE]
    np.testing.assert_allclose(got.to_numpy(), _reference((None, None, model, pre, tok), IMAGES, CAPTIONS), atol=1e-4)


def test_length_buckets_cover_rows_and_minimise_padding():
    lengths = np.array([5, 77, 3, 3, 9, 5, 12, 3, 40, 9])
    for overhead in (0, 8, 64, float("inf")):
        groups = length_buckets(lengths, overhead)
        assert sorted(np.concatenate(groups).tolist()) == list(range(len(lengths)))  # every row exactly once
    assert len(length_buckets(lengths, float("inf"))) == 1
    assert [sorted(set(lengths[g])) for g in length_buckets(lengths, 0)] == [[3], [5], [9], [12], [40], [77]]
    cost = sum(len(g) * lengths[g].max() + 8 for g in length_buckets(lengths, 8))
    sorted_lengths = np.sort(lengths)  # brute force over every split of the sorted rows
    best = min(sum(len(c) * c.max() + 8 for c in np.split(sorted_lengths, list(cuts)))
               for k in range(len(lengths)) for cuts in itertools.combinations(range(1, len(lengths)), k))
    assert cost == best
    assert length_buckets(np.array([], np.int64), 8) == []


def test_random_init_is_reproducible(tiny):
    a, _, _ = load_clip(str(tiny[0]), "")
    b, _, _ = load_clip(str(tiny[0]), "")
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))


def test_checkpoint_dir_loads_by_path(tiny, tmp_path):
    ckpt = tmp_path / "ckpt"
    ckpt.mkdir()
    (ckpt / "open_clip_config.json").write_text(json.dumps(
        {"model_cfg": TINY, "preprocess_cfg": tiny[2].visual.preprocess_cfg}))
    save_file({k: v.contiguous() for k, v in tiny[2].state_dict().items()},
              str(ckpt / "open_clip_model.safetensors"))
    model, _, tok = load_clip("ViT-B-32", str(ckpt))  # the directory defines the architecture
    assert torch.equal(model.visual.proj, tiny[2].visual.proj)
    assert tok.context_length == CTX
    cfg = ClipConfig(model="ViT-B-32", pretrained=str(ckpt), device="cpu")
    got = score_table(_table(IMAGES, CAPTIONS), cfg)[COL.CLIP_SCORE].to_numpy()
    np.testing.assert_allclose(got, _reference(tiny, IMAGES, CAPTIONS), atol=1e-4)


def test_transforms_of_a_checkpoint_do_not_claim_random_weights(tiny, tmp_path, caplog):
    """The CPU preprocessing tasks build the model on the meta device without weights; open_clip's "initialized
    randomly" line is not logged for that, but still is for a model that really has no weights."""
    from curate.clip.model import load_transforms
    ckpt = tmp_path / "ckpt"
    ckpt.mkdir()
    (ckpt / "open_clip_config.json").write_text(json.dumps({"model_cfg": TINY}))
    save_file({k: v.contiguous() for k, v in tiny[2].state_dict().items()}, str(ckpt / "open_clip_model.safetensors"))
    with caplog.at_level(logging.INFO):
        load_transforms("ViT-B-32", str(ckpt))
        load_clip("ViT-B-32", str(ckpt))
    assert not [r for r in caplog.records if "initialized randomly" in r.getMessage()]
    with caplog.at_level(logging.INFO):
        load_clip(str(tiny[0]), "")
    assert [r for r in caplog.records if "initialized randomly" in r.getMessage()]


def test_clear_errors(tiny, tmp_path):
    with pytest.raises(ClipLoadError, match="no such file or directory: /nope/w.safetensors"):
        load_clip(str(tiny[0]), "/nope/w.safetensors")
    with pytest.raises(ClipLoadError, match="model config file not found"):
        load_clip(str(tmp_path / "missing.json"))
    with pytest.raises(ClipLoadError, match=r"unknown open_clip model 'ViT-B-33'.*close names: .*ViT-B-32"):
        load_clip("ViT-B-33")
    with pytest.raises(ClipLoadError, match="neither a file nor a known tag"):
        load_clip(str(tiny[0]), "laion2b")
    wider = json.loads(json.dumps(TINY))
    wider["vision_cfg"]["width"] = 48
    with pytest.raises(ClipLoadError, match=r"do not fit.*shape \(file vs model\): visual\.\S+ \(\d+"):
        load_clip(str(_cfg_dir(tmp_path, "wider", wider)), str(tiny[1]))
    (tmp_path / "empty").mkdir()
    with pytest.raises(ClipLoadError, match="without open_clip_config.json"):
        load_clip("ViT-B-32", str(tmp_path / "empty"))


def test_pretrained_tag_offline_fails_fast(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HOME", str(tmp_path))  # no ~/.cache/clip copy
    t0 = time.time()
    with pytest.raises(ClipLoadError) as e:
        load_clip("ViT-B-32", "laion2b_s34b_b79k")
    assert time.time() - t0 < 10
    msg = str(e.value)
    assert "'ViT-B-32'" in msg and "'laion2b_s34b_b79k'" in msg and "local file" in msg


def test_hub_probe_is_bounded():
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # bound, not listening: refused
    t0 = time.time()
    assert hub_reachable("127.0.0.1", port, timeout=1.0) is False
    assert time.time() - t0 < 3


def _ledger(unit_id, statuses, captions):
    n = len(statuses)
    return pa.table({COL.UID: [f"{unit_id}-{i}" for i in range(n)], COL.UNIT_ID: pa.array([unit_id] * n, pa.int32()),
                     COL.SOURCE_FILE: ["in.parquet"] * n, COL.ROW_INDEX: pa.array(range(n), pa.int64()),
                     COL.CAPTION_CLEAN: pa.array(captions, pa.string()), COL.STATUS: statuses,
                     COL.REASON: [None if s == Status.OK else "download_error:timeout" for s in statuses]})


@pytest.fixture(scope="module")
def ray_local():
    ray.init(num_cpus=2, include_dashboard=False, ignore_reinit_error=True, log_to_driver=False)
    yield
    ray.shutdown()


def test_score_units_through_ray(tiny, tmp_path, ray_local):
    out = str(tmp_path / "run")
    err = Status.DOWNLOAD_ERROR
    # unit 0: four ok rows (one caption beyond the context) and a failed download between them
    led0 = _ledger(0, [Status.OK, err, Status.OK, Status.OK, Status.OK], [CAPTIONS[0], "lost"] + CAPTIONS[1:])
    ok_uids = [u for u, s in zip(led0[COL.UID].to_pylist(), led0[COL.STATUS].to_pylist()) if s == Status.OK]
    stage_io.write_unit(out, 0, led0, [(f"{u}.jpg", b) for u, b in zip(ok_uids, IMAGES)], {})
    stage_io.write_unit(out, 1, _ledger(1, [err, err], ["a", "b"]), [], {})  # every download failed
    stage_io.write_unit(out, 2, _ledger(2, [], []), [], {})  # empty unit
    cfg = ClipConfig(model=str(tiny[0]), pretrained=str(tiny[1]), device="cpu", batch_size=2,
                     save_embeddings=True)
    res = run_pass(out, [0, 1, 2, 3], PassModels(cfg))  # unit 3 is not complete: left alone
    assert res["units_scored"] == 3 and res["rows"] == 4 and res["empty_units"] == 2
    s0 = read_scores(out, 0)
    assert s0[COL.UID].to_pylist() == ok_uids  # ledger order
    np.testing.assert_allclose(s0[COL.CLIP_SCORE].to_numpy(), _reference(tiny, IMAGES, CAPTIONS), atol=1e-4)
    assert s0.schema.field(COL.CLIP_SCORE).type == pa.float32()
    assert set(s0[COL.CLIP_PRETRAINED].to_pylist()) == {str(tiny[1])}
    for u in (1, 2):
        assert read_scores(out, u).num_rows == 0
    emb = pq.read_table(stage_io.unit_paths(out, 0)["embeddings"])
    assert emb.num_rows == 4 and emb.schema.field(TEXT_EMB).type == pa.list_(pa.float16(), 16)
    again = run_pass(out, [0, 1, 2], PassModels(cfg))  # resume: nothing left to do
    assert again["units_scored"] == 0 and again["units_skipped"] == 3


def test_cpu_actor_fallback_says_so(ray_local, capsys):
    from pipelines.scoring import actor_options
    assert actor_options(ClipConfig()) == {"concurrency": 2, "num_cpus": 1}  # 2 CPUs, no GPU: one actor a core
    assert "no GPU in the Ray cluster" in capsys.readouterr().err
    with pytest.raises(RuntimeError, match="clip.device is cuda but the Ray cluster has no GPU"):
        actor_options(ClipConfig(device="cuda"))


def test_the_driver_and_phase_a_imports_stay_torch_free():
    """The driver (build_shards, the scoring pass's driver side, selection and writing) and the phase-A unit
    code import neither torch/open_clip (~0.75 GB RSS: the CLIP check runs in a child process) nor numba."""
    import subprocess
    import sys
    from pathlib import Path

    code = ("import sys, pipelines.build_shards, pipelines.scoring, pipelines.select_write, curate.unit, "
            "curate.writer, curate.clip, curate.dedup\nfrom curate.clip.identity import scorer_identity\n"
            "print(sorted(m for m in ('torch', 'open_clip', 'numba') if m in sys.modules))")
    root = Path(__file__).resolve().parents[1]
    r = subprocess.run([sys.executable, "-c", code], cwd=root, capture_output=True, text=True, check=True)
    assert r.stdout.strip() == "[]"
