"""Guards a run's output: recognises a curate output, refuses any other folder, locks the output for one
run at a time, and --overwrite deletes only the entries curate writes."""
from __future__ import annotations

import contextlib
import datetime as _dt
import errno
import json
import os
import shutil
import socket
import sys
import threading
import time
import uuid

import pyarrow.fs as pafs

from curate import fsutil
from curate.layout import NAMES, RunLayout

LOCK_NAME = NAMES.lock
LOCK_STALE_S = 300    # seconds without a heartbeat after which an S3 lock belongs to a dead run
HEARTBEAT_S = 30      # seconds between an S3 lock's heartbeats (well inside LOCK_STALE_S)
_GLOB_CHARS = "*?["


class OutputError(RuntimeError):
    """The output cannot be used by this run; the message names it and says what to do."""


def known_entries() -> frozenset[str]:
    """Top-level names a curate output holds (schemas/layout.json: outputs, stage, planned input, lock)."""
    return NAMES.top_level()


def _is_ours(name: str, known: frozenset[str]) -> bool:
    return name.split(fsutil.TMP_MARK)[0] in known  # atomic_write's temporaries of a killed run too


def _listing(fs: pafs.FileSystem, out: str) -> dict[str, pafs.FileInfo]:
    return {i.base_name: i for i in fs.get_file_info(pafs.FileSelector(out, allow_not_found=True))}


def _is_curate_config(fs: pafs.FileSystem, path: str) -> bool:
    import yaml
    try:
        cfg = yaml.safe_load(fsutil.read_bytes(fs, path))
    except (OSError, yaml.YAMLError):
        return False
    return isinstance(cfg, dict) and {"input", "output"} <= set(cfg)


def _names(names: list[str]) -> str:
    shown = ", ".join(sorted(names)[:5])
    return shown + (f" and {len(names) - 5} more" if len(names) > 5 else "")


def check_output(output: str, inputs: tuple[str, ...] | list[str], overwrite: bool) -> None:
    """Raises OutputError unless `output` is a new or empty folder or a previous curate output (config.yaml
    and only curate's entries), holds none of the inputs, lies in no input folder, and is not a bucket
    root that --overwrite would empty."""
    fs, out = fsutil.get_fs(output)
    if not fsutil.is_local(fs) and overwrite and "/" not in out.strip("/"):
        raise OutputError(f"output {output} is a bucket root: --overwrite never empties a bucket; "
                          f"use a prefix (s3://{out.strip('/')}/NAME)")
    _check_inputs(output, inputs)
    info = fs.get_file_info(out)
    if info.type == pafs.FileType.File:
        raise OutputError(f"output {output} is a file, not a folder: pass a new folder or a previous "
                          "curate output as --output")
    if info.type == pafs.FileType.NotFound and fsutil.is_local(fs):
        return
    entries = _listing(fs, out)  # on S3 a prefix "exists" only through its objects
    known = known_entries()
    foreign = [n for n in entries if not _is_ours(n, known)]
    if foreign:
        raise OutputError(f"output {output} holds files curate did not write ({_names(foreign)}): curate "
                          "writes only into a new or empty folder or its own previous output, and "
                          "--overwrite deletes nothing else; pick another --output")
    bare = {n for n in entries if n != LOCK_NAME and fsutil.TMP_MARK not in n}
    if bare and not (NAMES.config in entries and _is_curate_config(fs, RunLayout(out).config)):
        raise OutputError(f"output {output} holds {_names(sorted(bare))} but no curate {NAMES.config}: it is "
                          "not a curate output (or not one this version can read); pick another --output")


def _within(path: str, folder: str) -> bool:
    return path == folder or path.startswith(folder.rstrip("/") + "/")


def _resolved(path: str) -> str:
    """A comparable spelling: local paths absolute with links resolved, s3 URLs normalised."""
    if path.startswith("s3://"):
        return fsutil.normalise(path)
    return os.path.realpath(path.removeprefix("file://"))


def _literal_prefix(pattern: str) -> str:
    """The part of an input path before its first glob character (all of it when it has none)."""
    cut = min((pattern.find(c) for c in _GLOB_CHARS if c in pattern), default=len(pattern))
    return pattern[:cut] or "."


def _is_dir(path: str) -> bool:
    fs, inner = fsutil.get_fs(path)
    return fs.get_file_info(inner).type == pafs.FileType.Directory


def _check_inputs(output: str, inputs) -> None:
    """The output must not hold an input (overwrite would delete it) nor lie inside an input folder
    (the run's parquet files would be read as input on the next plan), unless under a hidden name
    (`_x`, `.x`) that the reader skips."""
    out = _resolved(output)
    for pattern in inputs:
        base = _resolved(_literal_prefix(pattern))
        if _within(base, out):
            raise OutputError(f"output {output} contains the input {pattern}: curate would write over its "
                              "own input; put the output in a folder of its own")
        if base == _resolved(pattern) and _within(out, base) and _is_dir(pattern):
            if not any(part.startswith((".", "_")) for part in out[len(base):].strip("/").split("/")):
                raise OutputError(f"output {output} lies inside the input folder {pattern}: its files would "
                                  "be read as input on a resume; put it elsewhere (or name it _NAME)")


def clear_output(output: str) -> list[str]:
    """Deletes, entry by entry, what a curate output holds (never the folder, a bucket or anything
    else; the caller has run check_output and holds the lock, which stays). Returns the names deleted."""
    fs, out = fsutil.get_fs(output)
    known = known_entries()
    gone = []
    for name, info in sorted(_listing(fs, out).items()):
        if name == LOCK_NAME or not _is_ours(name, known):
            continue
        if info.type == pafs.FileType.Directory:
            shutil.rmtree(info.path) if fsutil.is_local(fs) else fs.delete_dir(info.path)
        else:
            fs.delete_file(info.path)
        gone.append(name)
    return gone


# ---------------------------------------------------------------- the lock
def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds").replace("+00:00", "Z")


def _holder(info: dict) -> str:
    return (f"host {info.get('host', '?')}, pid {info.get('pid', '?')}, since {info.get('since', '?')}"
            if info else "holder unknown")


class OutputLock:
    """An exclusive lock on one output for the driver's whole run.

    Local: fcntl.flock on <output>/.curate.lock; the kernel releases it when the process dies (kill -9
    included), so a resume never waits for a dead run. S3: a lock object with the run id and a heartbeat
    every HEARTBEAT_S; one without a heartbeat for LOCK_STALE_S is taken over, with a log line. S3 has no
    atomic create through pyarrow, so two runs starting within the same second could both write the
    object: the read-back after writing catches all but that race.
    """

    def __init__(self, output: str):
        self.output = output
        self.fs, out = fsutil.get_fs(output)
        self.path = RunLayout(out).lock
        self.info = {"run_id": uuid.uuid4().hex, "host": socket.gethostname(), "pid": os.getpid(),
                     "since": _now()}
        self._fd: int | None = None
        self._stop = threading.Event()
        self._beat: threading.Thread | None = None

    def __enter__(self) -> "OutputLock":
        self.acquire()
        return self

    def __exit__(self, *exc) -> None:
        self.release()

    def _refuse(self, holder: dict) -> OutputError:
        return OutputError(f"output {self.output} is in use by another run ({_holder(holder)}); wait for "
                           "it to finish or pick another --output")

    def acquire(self) -> None:
        if fsutil.is_local(self.fs):
            self._acquire_local()
        else:
            self._acquire_s3()

    def _acquire_local(self) -> None:
        os.makedirs(os.path.dirname(self.path), exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)  # not inherited by child processes (PEP 446)
        try:
            import fcntl
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            holder = _read_json(lambda: os.pread(fd, 4096, 0))
            os.close(fd)
            if e.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise self._refuse(holder) from None
            raise
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(self.info).encode(), 0)
        self._fd = fd

    def _acquire_s3(self) -> None:
        old = self._read_s3()
        if old and old.get("run_id") != self.info["run_id"]:
            age = time.time() - float(old.get("heartbeat", 0))
            if age < LOCK_STALE_S:
                raise self._refuse(old)
            print(f"output {self.output}: taking over the lock of a run with no heartbeat for {age:.0f} s "
                  f"({_holder(old)})", file=sys.stderr)
        self._write_s3()
        if (self._read_s3() or {}).get("run_id") != self.info["run_id"]:  # another run wrote after us
            raise self._refuse(self._read_s3() or {})
        self._beat = threading.Thread(target=self._heartbeat, name="curate-lock-heartbeat", daemon=True)
        self._beat.start()

    def _read_s3(self) -> dict:
        if not fsutil.exists(self.fs, self.path):
            return {}
        return _read_json(lambda: fsutil.read_bytes(self.fs, self.path))

    def _write_s3(self) -> None:
        fsutil.atomic_write(self.fs, self.path, json.dumps({**self.info, "heartbeat": time.time()}).encode())

    def _heartbeat(self) -> None:
        while not self._stop.wait(HEARTBEAT_S):
            with contextlib.suppress(OSError):  # a missed beat is retried; LOCK_STALE_S allows many
                if self._read_s3().get("run_id") not in (None, self.info["run_id"]):
                    print(f"output {self.output}: another run took over the lock; this run's output "
                          "may be mixed with it", file=sys.stderr)
                    return
                self._write_s3()

    def release(self) -> None:
        """Drops the lock. The local lock file stays (deleting it would let a waiting run lock a file
        nobody else sees); an S3 lock object is deleted if it is still ours."""
        if self._fd is not None:
            os.close(self._fd)  # closing the descriptor releases the flock
            self._fd = None
        if self._beat is not None:
            self._stop.set()
            self._beat.join(timeout=10)
            self._beat = None
            with contextlib.suppress(OSError):
                if self._read_s3().get("run_id") == self.info["run_id"]:
                    self.fs.delete_file(self.path)


def _read_json(read) -> dict:
    try:
        data = json.loads(read() or b"{}")
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


# ---------------------------------------------------------------- errors as one line
def describe_os_error(output: str, e: OSError) -> str:
    """One line for an OSError met while opening an output: what failed and what to do."""
    if output.startswith("s3://"):
        detail = " ".join(str(e).split())[:240]
        return (f"cannot use output {output}: {detail}; check the AWS credentials (AWS_ACCESS_KEY_ID and "
                "AWS_SECRET_ACCESS_KEY, or AWS_PROFILE), AWS_ENDPOINT_URL and that the bucket exists")
    what = e.strerror or str(e)
    where = f" ({e.filename})" if e.filename and e.filename.rstrip("/") != output.rstrip("/") else ""
    if isinstance(e, (NotADirectoryError, FileExistsError)):
        todo = "a parent of that path is a file; pick another --output"
    elif isinstance(e, PermissionError) or e.errno == errno.EROFS:
        todo = "the location is not writable for this user; pick a writable --output"
    else:
        todo = "pick another --output"
    return f"cannot use output {output}: {what}{where}; {todo}"
