"""The run's output: --overwrite deletes only what curate wrote, one run at a time (the output lock), resume
never trusts a partial or corrupt unit, and a bad output fails with one clear line instead of a traceback."""
from __future__ import annotations

import io
import json
import os
import signal
import socket
import subprocess
import sys
import tarfile
import time
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path

import pytest
from PIL import Image

from pipelines.build_shards import RunError, main, prepare_output, run
from tests.fault_server import ImageServer
from tests.pipeline.helpers import run_config, served_corpus, tree_digest

REPO = Path(__file__).resolve().parents[2]


def _args(inp, out, *extra: str) -> list[str]:
    """CLI flags of a small run that needs no model (no CLIP, no language filter)."""
    return ["--input", str(inp), "--output", str(out), "--no-clip", "--set", "language.enabled=false",
            "--allow-private-networks", "--no-progress", "--num-cpus", "1", *extra]


def _url_list(folder: Path, urls=("http://127.0.0.1:9/a.jpg",)) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "urls.jsonl"
    path.write_text("".join(json.dumps({"url": u, "caption": f"a red square {i}"}) + "\n"
                            for i, u in enumerate(urls)))
    return path


def _error_line(err: str) -> str:
    """The run's single `error: ...` line; fails on a traceback or on more than one line."""
    assert "Traceback" not in err, err
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    return lines[0]


# ---------------------------------------------------------------- --overwrite deletes only curate's files
def test_overwrite_onto_the_input_folder_keeps_the_input_and_other_files(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    _url_list(tmp_path / "data")
    (tmp_path / "data" / "notes.txt").write_text("not curate's")
    assert main(_args("data/urls.jsonl", "data", "--overwrite")) == 2
    line = _error_line(capsys.readouterr().err)
    assert "output data contains the input data/urls.jsonl" in line
    assert (tmp_path / "data" / "urls.jsonl").exists()
    assert (tmp_path / "data" / "notes.txt").read_text() == "not curate's"


def test_a_folder_holding_other_files_is_refused_with_or_without_overwrite(tmp_path, capsys):
    inp = _url_list(tmp_path / "in")
    out = tmp_path / "mixed"
    out.mkdir()
    (out / "config.yaml").write_text("input: {}\noutput: x\n")  # looks like a curate output...
    (out / "thesis.pdf").write_bytes(b"%PDF")                    # ...but holds someone's file
    (out / "photos").mkdir()
    for extra in (("--overwrite",), ()):
        assert main(_args(inp, out, *extra)) == 2
        line = _error_line(capsys.readouterr().err)
        assert "photos, thesis.pdf" in line and str(out) in line
    assert sorted(p.name for p in out.iterdir()) == ["config.yaml", "photos", "thesis.pdf"]


def test_overwrite_never_empties_a_bucket_root(moto_s3, tmp_path, capsys):
    inp = _url_list(tmp_path / "in")
    moto_s3.put_object(Bucket="bkt", Key="other-project/model.bin", Body=b"weights")
    moto_s3.put_object(Bucket="bkt", Key="readme.txt", Body=b"hello")
    for out in ("s3://bkt", "s3://bkt/"):
        assert main(_args(inp, out, "--overwrite")) == 2
        assert "bucket root" in _error_line(capsys.readouterr().err)
    keys = sorted(o["Key"] for o in moto_s3.list_objects_v2(Bucket="bkt").get("Contents", []))
    assert keys == ["other-project/model.bin", "readme.txt"]
    # a prefix holding another project's files is refused too, and they stay
    moto_s3.put_object(Bucket="bkt", Key="shared/their.parquet", Body=b"PAR1")
    assert main(_args(inp, "s3://bkt/shared", "--overwrite")) == 2
    assert "their.parquet" in _error_line(capsys.readouterr().err)
    assert moto_s3.get_object(Bucket="bkt", Key="shared/their.parquet")["Body"].read() == b"PAR1"


# ---------------------------------------------------------------- clear errors
def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_s3_without_credentials_is_one_clear_line(tmp_path, monkeypatch, capsys):
    for k in [k for k in os.environ if k.startswith("AWS_")]:
        monkeypatch.delenv(k)
    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{_closed_port()}")
    for k, v in {"AWS_EC2_METADATA_DISABLED": "true", "AWS_SHARED_CREDENTIALS_FILE": str(tmp_path / "none"),
                 "AWS_CONFIG_FILE": str(tmp_path / "none")}.items():
        monkeypatch.setenv(k, v)  # no instance-metadata wait, no ~/.aws: fails in seconds
    assert main(_args(_url_list(tmp_path / "in"), "s3://bkt/out")) == 2
    line = _error_line(capsys.readouterr().err)
    assert "s3://bkt/out" in line and "AWS_ACCESS_KEY_ID" in line and "AWS_ENDPOINT_URL" in line


@pytest.mark.parametrize("case", ["output_is_a_file", "parent_is_a_file"])
def test_an_output_in_the_way_of_a_file_is_one_clear_line(tmp_path, capsys, case):
    (tmp_path / "afile").write_text("x")
    out = tmp_path / "afile" if case == "output_is_a_file" else tmp_path / "afile" / "out"
    assert main(_args(_url_list(tmp_path / "in"), out)) == 2
    line = _error_line(capsys.readouterr().err)
    assert str(out) in line and ("is a file" in line if case == "output_is_a_file" else "parent" in line)
    assert (tmp_path / "afile").read_text() == "x"


@contextmanager
def _read_only(folder: Path):
    """`folder` unwritable for this process. Root writes through mode bits, so as root the folder is made
    immutable (chattr +i: no new entries, even for root)."""
    if os.geteuid() != 0:
        os.chmod(folder, 0o555)
        yield
        os.chmod(folder, 0o755)
        return
    if subprocess.run(["chattr", "+i", str(folder)], capture_output=True).returncode != 0:
        pytest.skip("running as root on a filesystem without chattr +i: no way to make a read-only folder")
    try:
        yield
    finally:
        subprocess.run(["chattr", "-i", str(folder)], check=True)


def test_a_read_only_output_is_one_clear_line(tmp_path, capsys):
    out = tmp_path / "ro"
    out.mkdir()
    with _read_only(out):
        assert main(_args(_url_list(tmp_path / "in"), out)) == 2
    line = _error_line(capsys.readouterr().err)
    assert str(out) in line and "not writable" in line
    assert list(out.iterdir()) == []


def test_an_output_spelled_differently_resumes(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    inp = _url_list(tmp_path / "in")
    prepare_output(run_config(inp, "out/x"))
    prepare_output(run_config(inp, "./out/x/"))  # raised "differs in: output" before
    from pipelines.build_shards import normalised
    assert normalised(run_config(inp, "./out/x/")).output == "out/x"  # what run() saves and compares


def test_phase_b_dedup_settings_may_change_on_resume_and_an_older_config_resumes(tmp_path):
    # the clustering rule runs again in phase B on every run: changing it (or an output saved before a rule
    # setting existed) must not refuse the resume; a phase-A hashing setting still does
    import yaml

    inp = _url_list(tmp_path / "in")
    out = tmp_path / "out"
    prepare_output(run_config(inp, out))
    prepare_output(run_config(inp, out, **{"dedup.colour_check": False, "dedup.low_detail_k": 6}))
    saved = yaml.safe_load((out / "config.yaml").read_text())
    for key in ("colour_check", "colour_chroma"):
        del saved["dedup"][key]
    (out / "config.yaml").write_text(yaml.safe_dump(saved))
    prepare_output(run_config(inp, out))
    with pytest.raises(RunError, match="differs in: dedup.fast_hash"):
        prepare_output(run_config(inp, out, **{"dedup.fast_hash": False}))


# ---------------------------------------------------------------- one run at a time
def _env() -> dict:
    return {**os.environ, "PYTHONPATH": str(REPO), "RAY_USAGE_STATS_ENABLED": "0"}


def test_a_second_run_into_a_busy_output_is_refused(tmp_path, capsys):
    from curate.output_guard import OutputLock

    with ImageServer() as srv:  # /delay/<ms>/...: every URL keeps the first run busy for 60 s
        inp = _url_list(tmp_path / "in", [srv.url(f"/delay/60000/{i}.jpg") for i in range(3)])
        out = tmp_path / "busy"
        args = _args(inp, out, "--set", "download.timeout=120")
        with open(tmp_path / "first.log", "wb") as log:
            first = subprocess.Popen([sys.executable, "-m", "pipelines.build_shards", *args], env=_env(),
                                     cwd=REPO, start_new_session=True, stdout=log, stderr=log)
        try:
            deadline = time.time() + 240
            while not (out / "config.yaml").exists():  # written once the first run holds the output
                assert first.poll() is None and time.time() < deadline, (tmp_path / "first.log").read_text()
                time.sleep(0.2)
            assert main(args) == 2
            line = _error_line(capsys.readouterr().err)
            assert "in use by another run" in line and f"pid {first.pid}" in line
            assert socket.gethostname() in line
        finally:
            os.killpg(first.pid, signal.SIGKILL)  # the driver and its Ray processes
            first.wait()
    with OutputLock(str(out)):  # kill -9 released the lock: a resume can start
        pass


def test_s3_lock_refuses_a_live_run_and_takes_over_a_stale_one(moto_s3, tmp_path, capsys):
    from curate.output_guard import OutputError, OutputLock

    inp = _url_list(tmp_path / "in")
    held = {"run_id": "other", "host": "otherhost", "pid": 4242, "since": "2026-01-01T00:00:00Z"}
    moto_s3.put_object(Bucket="bkt", Key="run/.curate.lock", Body=json.dumps({**held, "heartbeat": time.time()}))
    assert main(_args(inp, "s3://bkt/run")) == 2
    line = _error_line(capsys.readouterr().err)
    assert "in use by another run" in line and "otherhost" in line and "pid 4242" in line

    moto_s3.put_object(Bucket="bkt", Key="run/.curate.lock",
                       Body=json.dumps({**held, "heartbeat": time.time() - 3600}))
    with OutputLock("s3://bkt/run") as lock:
        assert "taking over the lock" in capsys.readouterr().err
        now = json.loads(moto_s3.get_object(Bucket="bkt", Key="run/.curate.lock")["Body"].read())
        assert now["run_id"] == lock.info["run_id"]
        with pytest.raises(OutputError, match=f"pid {os.getpid()}"):
            OutputLock("s3://bkt/run").acquire()
    keys = [o["Key"] for o in moto_s3.list_objects_v2(Bucket="bkt", Prefix="run/").get("Contents", [])]
    assert "run/.curate.lock" not in keys  # released


# ---------------------------------------------------------------- resume never trusts a damaged unit
@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("safety")
    with served_corpus(tmp, n=45, seed=2) as (srv, path, rows):
        cfg = run_config(path, tmp / "run", **{"input.unit_size": 15, "language.enabled": False})
        run(cfg)
        yield {"out": tmp / "run", "cfg": cfg, "digest": tree_digest(tmp / "run"), "srv": srv}


def _truncate_in_last_member(path: Path) -> None:
    with tarfile.open(path) as tar:
        members = tar.getmembers()
    assert members, f"{path} holds no image to damage"
    os.truncate(path, members[-1].offset_data + members[-1].size // 2)


def test_damaged_stage_units_are_redone_and_the_shards_match(finished, capfd):
    out = finished["out"]
    stage = out / "stage"
    tars = sorted(stage.glob("*.tar"), key=lambda p: -p.stat().st_size)
    _truncate_in_last_member(tars[0])     # a crash inside the last member of the fullest unit
    tars[1].write_bytes(b"")              # a 0-byte tar
    ledger = stage / (tars[2].stem + ".parquet")
    ledger.write_bytes(b"")               # a 0-byte ledger
    capfd.readouterr()
    run(finished["cfg"])
    err = capfd.readouterr().err
    for path in (tars[0], tars[1], ledger):
        assert f"unit {path.stem}: stage/{path.name} has" in err, err[-3000:]
    assert tree_digest(out) == finished["digest"]
    for shard in sorted((out / "shards").glob("*.tar")):
        with tarfile.open(shard) as tar:
            for m in tar.getmembers():
                if m.name.endswith(".jpg"):
                    Image.open(io.BytesIO(tar.extractfile(m).read())).load()  # raises on a cut JPEG


def test_overwrite_of_a_previous_output_rewrites_only_it(finished, capfd):
    out = finished["out"]
    (out / "manifest.json.tmp-0123abcd").write_bytes(b"{")  # left by a killed run
    hits = finished["srv"].hits
    run(replace(finished["cfg"], overwrite=True))
    assert "--overwrite: deleted" in capfd.readouterr().err
    assert finished["srv"].hits > hits  # really redone, not resumed
    assert not (out / "manifest.json.tmp-0123abcd").exists()
    assert tree_digest(out) == finished["digest"]
