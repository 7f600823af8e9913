"""curate.train end to end on CPU: CLI and strict config, logs, exact --resume latest, checkpoints that plain
open_clip loads (by name + safetensors file, and as a local-dir), corrupt samples counted."""
from __future__ import annotations

import csv
import logging
import json
import shutil

import open_clip
import pytest
import torch
from safetensors.torch import load_file

from curate import synth
from curate.config import ConfigError
from curate.train import checkpoint
from curate.train.__main__ import main, parse_args
from curate.train.config import load_train_config
from tests.test_train_data import write_shards, write_synth_shards, write_tiny_model

torch.set_num_threads(2)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("train")
    samples = synth.make_captioned_set(96, seed=7, size=40)
    write_shards(root / "run", samples, per_shard=24, corrupt={5})
    write_synth_shards(root / "val", 48, seed=8, size=40, per_shard=48)
    (root / "classes.txt").write_text("\n".join(synth.class_names()))
    return root, write_tiny_model(root)


def _args(root, model, out, *extra) -> list[str]:
    return ["--data", str(root / "run"), "--model", str(model), "--output", str(out), "--batch-size", "8",
            "--workers", "1", "--threads", "2", "--warmup", "2", "--lr", "1e-3", "--log-every", "1",
            "--shuffle-buffer", "16", *extra]


def test_config_is_strict_and_cli_overrides():
    with pytest.raises(ConfigError, match="unknown key 'batchsize'"):
        load_train_config(overrides={"data": "x", "batchsize": 3})
    with pytest.raises(ConfigError, match="loss"):
        load_train_config(overrides={"data": "x", "loss": "triplet"})
    path, over = parse_args(["--data", "s/{00000..00003}.tar", "--batch-size", "8", "--compile", "-s", "lr=0.1"])
    cfg = load_train_config(path, over)
    assert (cfg.data, cfg.batch_size, cfg.compile, cfg.lr) == ("s/{00000..00003}.tar", 8, True, 0.1)
    assert main(["--data", "x", "--set", "nope=1"]) == 2


def test_resume_latest_continues_exactly_and_checkpoint_loads_in_open_clip(data, tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="curate.train")
    root, model = data
    full = tmp_path / "full"
    assert main(_args(root, model, full, "--steps", "6", "--save-every", "3", "--keep-checkpoints", "0",
                      "--val-data", str(root / "val"), "--zeroshot-data", str(root / "val"),
                      "--zeroshot-classes", str(root / "classes.txt"))) == 0
    rows = list(csv.DictReader((full / "metrics.csv").open()))
    assert [int(r["step"]) for r in rows] == [1, 2, 3, 4, 5, 6]
    assert int(rows[-1]["skipped"]) >= 1  # the truncated JPEG, counted, not fatal
    assert "samples/s | loss" in caplog.text and "temperature" in caplog.text
    ev = list(csv.DictReader((full / "eval.csv").open()))[-1]
    assert 0 <= float(ev["zeroshot_top1"]) <= 1 and float(ev["retrieval_image_to_text_R@10"]) > 0
    assert (full / "config.yaml").is_file()

    # an "interrupted" run: only the step-3 checkpoint exists, then --resume latest
    part = tmp_path / "part"
    shutil.copytree(checkpoint.step_dir(full, 3), checkpoint.step_dir(part, 3))
    from curate.train.trainer import train
    cfg_full = load_train_config(None, parse_args(_args(root, model, part, "--steps", "6"))[1])
    resumed = train(load_train_config(None, {**parse_args(_args(root, model, part, "--steps", "6"))[1],
                                             "resume": "latest"}))
    assert resumed["start_step"] == 3 and cfg_full.steps == 6
    expected = [float(r["loss"]) for r in rows[3:]]
    got = [float(r["loss"]) for r in list(csv.DictReader((part / "metrics.csv").open()))]
    assert got == expected  # bit-identical losses (CSV round trip of the same floats)

    # the final checkpoint: plain open_clip, by name + weights file, and as a local dir
    final = checkpoint.step_dir(full, 6)
    state = checkpoint.load_state(final)  # weights_only=True
    assert state["step"] == 6 and "optimizer" in state
    meta = json.loads((final / "train_meta.json").read_text())
    assert meta["model"] == "curate-tiny" and "zeroshot_top1" in meta["metrics"]
    open_clip.add_model_config(model)
    plain = open_clip.create_model("curate-tiny", pretrained=str(final / "open_clip_model.safetensors"))
    weights = load_file(str(final / "open_clip_model.safetensors"))
    assert all(torch.equal(v, weights[k]) for k, v in plain.state_dict().items())
    net, preprocess, tok = checkpoint.load_model(final)
    assert torch.equal(net.logit_scale, weights["logit_scale"])
    assert tok(["a red circle"]).shape == (1, 16)


def test_siglip_checkpoint_has_bias_and_loads_as_local_dir(data, tmp_path):
    root, model = data
    out = tmp_path / "sig"
    assert main(_args(root, model, out, "--steps", "2", "--loss", "siglip", "--workers", "0")) == 0
    final = checkpoint.list_checkpoints(out)[-1]
    cfg = json.loads((final / "open_clip_config.json").read_text())
    assert cfg["model_cfg"]["init_logit_bias"] == -10.0 and cfg["preprocess_cfg"]["size"] in ([32, 32], 32)
    net = open_clip.create_model(f"local-dir:{final}")
    assert -11 < net.logit_bias.item() < -9  # SigLIP init (-10), moved a little by two steps
