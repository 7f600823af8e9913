"""Reinforced samples: seeded views inside the image, byte-stable KEY.npz, a real tiny open_clip teacher's embeddings
equal to encoding each view directly, and the unit's reinforce file with its completion record (no Ray)."""
from __future__ import annotations

import io
import json
import os

import numpy as np
import pyarrow as pa
import pytest
import torch
from PIL import Image

from curate import stage_io
from curate.clip.model import load_clip
from curate.config import ConfigError, ReinforceConfig, load_config
from curate.reinforce import apply_view, read_npz, view_params, write_npz
from curate.reinforce.store import NPZ, VIEWS
from curate.reinforce.identity import reinforcer_identity
from curate.reinforce.teachers import ReinforceStage, reinforce_table
from curate.schema import COL, Status
from curate.stage import StageStats
from tests.pipeline.helpers import tiny_clip_config

UIDS = [f"{i:032x}" for i in (1, 2**100 + 7, 2**127 + 99)]


def _png(w: int, h: int, seed: int) -> bytes:
    arr = np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    return buf.getvalue()


def test_views_are_reproducible_inside_the_image_and_differ():
    seen_flips, crops = set(), set()
    for k in range(200):
        uid = f"{k * 7919:032x}"
        w, h = 40 + k % 150, 30 + (k * 13) % 170
        params = view_params(uid, 3, 4, w, h, 0.35)
        assert params == view_params(uid, 3, 4, w, h, 0.35)  # a pure function of (uid, seed, size)
        assert len(params) == 4 and params != view_params(uid, 4, 4, w, h, 0.35)
        for p in params:
            assert set(p) == {"top", "left", "height", "width", "flip"}
            assert 0 <= p["top"] and p["top"] + p["height"] <= h and 0 <= p["left"] and p["left"] + p["width"] <= w
            assert p["height"] * p["width"] >= 0.3 * w * h or p["height"] == h or p["width"] == w
            seen_flips.add(p["flip"])
            crops.add((p["top"], p["left"], p["height"], p["width"]))
    assert seen_flips == {True, False} and len(crops) > 600
    # view i of a sample does not depend on how many views are drawn
    assert view_params(UIDS[1], 0, 2, 64, 48, 0.5) == view_params(UIDS[1], 0, 5, 64, 48, 0.5)[:2]


def test_apply_view_crops_then_flips():
    img = Image.fromarray(np.arange(20 * 30 * 3, dtype=np.uint8).reshape(20, 30, 3))
    arr = np.asarray(img)
    p = {"top": 2, "left": 5, "height": 10, "width": 12, "flip": False}
    assert np.array_equal(np.asarray(apply_view(img, p)), arr[2:12, 5:17])
    assert np.array_equal(np.asarray(apply_view(img, {**p, "flip": True})), arr[2:12, 5:17][:, ::-1])
    with pytest.raises(ValueError, match="does not fit a 30x20 image"):
        apply_view(img, {**p, "left": 25})


def test_npz_round_trip_is_byte_stable_and_numpy_readable():
    arrays = {"image_emb_0": np.ones((2, 4), np.float16), "text_emb_0": np.zeros((1, 4), np.float16)}
    data = write_npz(arrays)
    assert data == write_npz(arrays)  # fixed member times: reruns give the same shard bytes
    got = read_npz(data)
    assert set(got) == set(arrays) and all(np.array_equal(got[k], arrays[k]) for k in arrays)
    with np.load(io.BytesIO(data)) as z:
        assert z["image_emb_0"].dtype == np.float16
    from webdataset.autodecode import npz_loads  # what webdataset's default decoders call for .npz
    assert np.array_equal(npz_loads(data)["text_emb_0"], arrays["text_emb_0"])


@pytest.fixture(scope="module")
def teacher(tmp_path_factory):
    path = str(tiny_clip_config(tmp_path_factory.mktemp("teacher")))
    return path, load_clip(path, "", "cpu")


def _rows(n: int = 3) -> pa.Table:
    return pa.table({COL.UID: UIDS[:n], COL.STATUS: [Status.OK] * n,
                     COL.IMAGE: [_png(40 + 9 * i, 64 - 5 * i, i) for i in range(n)],
                     COL.CAPTION_CLEAN: ["a red square", "two dogs on a beach", None][:n]})


def test_teacher_embeddings_equal_encoding_each_view(teacher):
    path, (model, pre, tok) = teacher
    cfg = ReinforceConfig(enabled=True, teachers=(f"{path}|", f"{path}|"), views=3, batch_size=2)
    rows = _rows()
    out = reinforce_table(rows, cfg, seed=5)
    assert out[COL.UID].to_pylist() == UIDS
    for r, (uid, data) in enumerate(zip(UIDS, rows[COL.IMAGE].to_pylist())):
        arrays = read_npz(out[NPZ][r].as_py())
        assert set(arrays) == {"image_emb_0", "text_emb_0", "image_emb_1", "text_emb_1"}
        img = Image.open(io.BytesIO(data))
        params = json.loads(out[VIEWS][r].as_py())
        assert params == view_params(uid, 5, 3, img.width, img.height, cfg.min_scale)
        with torch.inference_mode():
            x = torch.stack([pre(apply_view(img, p)) for p in params])
            want_img = torch.nn.functional.normalize(model.encode_image(x), dim=-1).numpy()
            caption = rows[COL.CAPTION_CLEAN][r].as_py() or ""
            want_txt = torch.nn.functional.normalize(model.encode_text(tok([caption])), dim=-1).numpy()
        for t in (0, 1):
            got_img, got_txt = arrays[f"image_emb_{t}"], arrays[f"text_emb_{t}"]
            assert got_img.dtype == np.float16 and got_img.shape == (3, 16) and got_txt.shape == (1, 16)
            np.testing.assert_allclose(np.linalg.norm(got_img.astype(np.float32), axis=1), 1, atol=2e-3)
            np.testing.assert_allclose(got_img.astype(np.float32), want_img, atol=2e-3)
            np.testing.assert_allclose(got_txt.astype(np.float32), want_txt, atol=2e-3)


def test_stage_writes_the_unit_file_with_its_record(teacher, tmp_path):
    path, _ = teacher
    cfg = ReinforceConfig(enabled=True, teachers=(f"{path}|",), views=2)
    out = str(tmp_path / "run")
    rows = _rows()
    rows = rows.set_column(1, COL.STATUS, pa.array([Status.OK, Status.DOWNLOAD_ERROR, Status.OK]))
    ident = reinforcer_identity(cfg, 0)
    assert ReinforceStage(cfg, 0, out, 7)(rows) is rows  # the table passes unchanged
    assert stage_io.reinforce_done(out, 7, made_by=ident)
    got = stage_io.read_reinforce(out, 7)
    assert got[COL.UID].to_pylist() == [UIDS[0], UIDS[2]]  # rows still ok only
    assert not stage_io.reinforce_done(out, 7, made_by=reinforcer_identity(cfg, 1))  # another seed: redo
    paths = stage_io.unit_paths(out, 7)
    with open(paths["reinforce"], "ab") as f:  # a torn or altered file is never trusted
        f.write(b"x")
    assert not stage_io.reinforce_done(out, 7, made_by=ident)
    stage_io.invalidate_reinforce(out, 7)
    assert not any(os.path.exists(paths[k]) for k in ("reinforce", "reinforce_done"))
    counted = StageStats()  # a unit whose rows all failed before the download: an empty file, still done
    ReinforceStage(cfg, 0, out, 8)(rows.drop_columns([COL.IMAGE]), counted)
    assert stage_io.reinforce_done(out, 8, made_by=ident) and stage_io.read_reinforce(out, 8).num_rows == 0
    assert counted.as_dict()["reinforce_rows"] == 0


def test_config_checks_name_the_key():
    base = {"reinforce.enabled": True, "reinforce.teachers": ["ViT-B-32|openai"]}
    assert load_config(None, base).reinforce.views == 2
    for over, msg in (({"reinforce.teachers": []}, "reinforce.teachers"),
                      ({"reinforce.teachers": ["ViT-B-32"]}, "<model>|<pretrained>"),
                      ({"reinforce.views": 0}, "reinforce.views"),
                      ({"reinforce.min_scale": 1.5}, "reinforce.min_scale"),
                      ({"seed": -1}, "seed")):
        with pytest.raises(ConfigError, match=msg):
            load_config(None, {**base, **over})
