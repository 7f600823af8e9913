"""Stage units on disk: a unit is complete only when its completion record matches its files (no Ray)."""
from __future__ import annotations

import io
import json
import os
import tarfile

import numpy as np
import pyarrow as pa
import pytest
from PIL import Image

from curate import fsutil, stage_io
from curate.schema import COL, Status


def _jpeg(i: int) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(i).integers(0, 255, (24, 24, 3), dtype=np.uint8)).save(buf, "JPEG")
    return buf.getvalue()


def _write(out: str, unit_id: int = 0, n: int = 3) -> dict[str, str]:
    uids = [f"{unit_id}-{i}" for i in range(n)]
    ledger = pa.table({COL.UID: uids, COL.UNIT_ID: pa.array([unit_id] * n, pa.int32()),
                       COL.SOURCE_FILE: ["in.parquet"] * n, COL.ROW_INDEX: pa.array(range(n), pa.int64()),
                       COL.STATUS: [Status.OK] * n})
    stage_io.write_unit(out, unit_id, ledger, [(f"{u}.jpg", _jpeg(i)) for i, u in enumerate(uids)], {"rows": n})
    return stage_io.unit_paths(out, unit_id)


def _truncate_in_last_member(path: str) -> None:
    """Cuts the tar in the middle of its last member's data, as a crash during the write would."""
    with tarfile.open(path) as tar:
        last = tar.getmembers()[-1]
    os.truncate(path, last.offset_data + last.size // 2)


def test_a_written_unit_is_done_and_its_record_names_every_file(tmp_path):
    paths = _write(str(tmp_path))
    assert stage_io.unit_done(str(tmp_path), 0)
    record = json.loads(open(paths["done"]).read())["files"]
    assert set(record) == {"000000.tar", "000000.parquet", "000000_stats.json"}
    assert record["000000.tar"]["bytes"] == os.path.getsize(paths["tar"])
    assert not [p for p in os.listdir(tmp_path / "stage") if fsutil.TMP_MARK in p]


@pytest.mark.parametrize("damage", ["truncated_tar", "empty_tar", "empty_ledger", "same_size_tar"])
def test_a_damaged_unit_is_not_done_and_says_which_file(tmp_path, capsys, damage):
    paths = _write(str(tmp_path))
    if damage == "truncated_tar":
        _truncate_in_last_member(paths["tar"])
    elif damage == "same_size_tar":  # bytes flipped in place: only the digest sees it
        data = bytearray(open(paths["tar"], "rb").read())
        data[600] ^= 0xFF
        open(paths["tar"], "wb").write(bytes(data))
    else:
        open(paths["tar" if damage == "empty_tar" else "ledger"], "wb").close()
    assert not stage_io.unit_done(str(tmp_path), 0)
    name = "000000.parquet" if damage == "empty_ledger" else "000000.tar"
    err = capsys.readouterr().err
    assert f"unit 000000: stage/{name}" in err and "redoing" in err, err
    assert len(err.strip().splitlines()) == 1


def test_a_unit_interrupted_before_its_record_is_redone_but_one_never_started_is_silent(tmp_path, capsys):
    paths = _write(str(tmp_path))
    os.unlink(paths["done"])  # killed after the ledger, before the record (or written by an old version)
    assert not stage_io.unit_done(str(tmp_path), 0)
    assert "unit 000000: stage/000000.parquet has no completion record" in capsys.readouterr().err
    assert not stage_io.unit_done(str(tmp_path), 1)
    assert capsys.readouterr().err == ""


def test_rewriting_a_unit_drops_its_old_record_first(tmp_path):
    paths = _write(str(tmp_path), n=3)
    first = open(paths["done"]).read()
    _write(str(tmp_path), n=2)
    assert open(paths["done"]).read() != first and stage_io.unit_done(str(tmp_path), 0)


def test_done_units_checks_many_units(tmp_path):
    for u in range(4):
        _write(str(tmp_path), u)
    open(stage_io.unit_paths(str(tmp_path), 2)["ledger"], "wb").close()
    assert stage_io.done_units(str(tmp_path), [0, 1, 2, 3, 4]) == {0, 1, 3}


def test_scores_have_their_own_record(tmp_path, capsys):
    out = str(tmp_path)
    _write(out)
    stage_io.write_scores(out, 0, pa.table({COL.UID: ["0-0", "0-1", "0-2"],
                                            COL.CLIP_SCORE: pa.array([0.1, 0.2, 0.3], pa.float32())}))
    assert stage_io.scores_done(out, 0)
    open(stage_io.unit_paths(out, 0)["scores"], "wb").close()
    assert not stage_io.scores_done(out, 0)
    assert "unit 000000: stage/000000.scores.parquet has 0 bytes" in capsys.readouterr().err
    stage_io.invalidate_scores(out, 0)
    assert not any(os.path.exists(stage_io.unit_paths(out, 0)[k]) for k in ("scores", "scores_done"))


def test_the_scoring_pass_redoes_a_unit_whose_scores_file_is_damaged(tmp_path):
    from pipelines.scoring import pending_units  # imports Ray, starts nothing

    from curate.clip.model import scorer_identity
    from curate.config import ClipConfig

    out, clip = str(tmp_path), ClipConfig()
    for u in (0, 1):
        _write(out, u)
        stage_io.write_scores(out, u, pa.table({COL.UID: [f"{u}-0", f"{u}-1", f"{u}-2"]}),
                              scorer_identity(clip.model, clip.pretrained))
    assert pending_units(out, [0, 1], clip) == []
    open(stage_io.unit_paths(out, 1)["scores"], "wb").close()  # a crash while it was being written
    assert pending_units(out, [0, 1], clip) == [1]


def test_scores_made_by_another_scorer_are_redone(tmp_path, capsys):
    from pipelines.scoring import pending_units
    from curate.clip.model import scorer_identity
    from curate.config import ClipConfig

    out = str(tmp_path)
    ckpt = tmp_path / "ckpt"
    ckpt.mkdir()
    (ckpt / "open_clip_model.safetensors").write_bytes(b"weights v1")
    first = ClipConfig(model="RN50", pretrained=str(ckpt))
    _write(out, 0)
    stage_io.write_scores(out, 0, pa.table({COL.UID: ["0-0"]}), scorer_identity(first.model, first.pretrained))
    assert pending_units(out, [0], first) == []
    assert pending_units(out, [0], ClipConfig(model="RN50", pretrained="openai")) == [0]
    assert "was made by RN50 / " in capsys.readouterr().err
    (ckpt / "open_clip_model.safetensors").write_bytes(b"weights v2")  # retrained into the same folder
    scorer_identity.cache_clear()
    assert pending_units(out, [0], first) == [0]


def test_unreadable_stage_files_name_the_file(tmp_path):
    paths = _write(str(tmp_path))
    open(paths["ledger"], "wb").close()
    with pytest.raises(ValueError, match="000000.parquet"):
        stage_io.read_unit_ledger(str(tmp_path), 0)
    _truncate_in_last_member(paths["tar"])
    with open(paths["tar"], "r+b") as f:  # a header block of garbage where the last member was
        f.seek(0, 2)
        f.write(b"\x01" * 512)
    with pytest.raises(ValueError, match="000000.tar"):
        stage_io.read_unit_images(str(tmp_path), 0)


@pytest.mark.parametrize("given,want", [("./out/x/", "out/x"), ("out/x", "out/x"), ("s3://b/p/", "s3://b/p"),
                                        ("s3://b/", "s3://b"), ("/a/b/../c/", "/a/c")])
def test_normalise_gives_one_spelling_per_location(given, want):
    assert fsutil.normalise(given) == want
