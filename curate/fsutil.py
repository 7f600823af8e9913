"""Filesystem access for local paths and object storage (s3://...) through pyarrow.fs, with atomic writes."""
from __future__ import annotations

import contextlib
import io
import os
import uuid
from urllib.parse import urlparse

import pyarrow.fs as pafs


TMP_MARK = ".tmp-"  # atomic_write's temporary names: "<final name>.tmp-<8 hex>"


def get_fs(path: str) -> tuple[pafs.FileSystem, str]:
    """(pyarrow filesystem, path inside it) for a local path or an s3://bucket/prefix URL.

    S3 credentials come from the usual AWS variables; AWS_ENDPOINT_URL selects a non-AWS
    endpoint (MinIO, moto's server).
    """
    if path.startswith("s3://"):
        endpoint = os.environ.get("AWS_ENDPOINT_URL")
        opts = {}
        if endpoint:
            u = urlparse(endpoint)
            opts = {"endpoint_override": u.netloc, "scheme": u.scheme or "http"}
        region = os.environ.get("AWS_DEFAULT_REGION") or os.environ.get("AWS_REGION") or "us-east-1"
        return pafs.S3FileSystem(region=region, **opts), path[len("s3://"):].rstrip("/")
    return pafs.LocalFileSystem(), os.path.abspath(path.removeprefix("file://"))


def normalise(path: str) -> str:
    """One spelling per location, so a resume with `./out/x/` matches an output made with `out/x`:
    local paths are normpath'd (still relative when given relative), s3:// URLs lose trailing slashes
    (keys are otherwise left alone: `a//b` is a valid key of its own)."""
    if path.startswith("s3://"):
        return path.rstrip("/") if len(path.rstrip("/")) > len("s3:/") else path
    if path.startswith("file://"):
        return "file://" + os.path.normpath(path[len("file://"):])
    return os.path.normpath(path) if path else path


def join(base: str, *parts: str) -> str:
    return "/".join([base.rstrip("/"), *[p.strip("/") for p in parts]])


def is_local(fs: pafs.FileSystem) -> bool:
    return isinstance(fs, pafs.LocalFileSystem)


def atomic_write(fs: pafs.FileSystem, path: str, data: bytes) -> None:
    """Writes `data` under a temporary name beside `path`, then renames: readers see all or nothing."""
    if not is_local(fs):
        # an object store publishes an object whole at its final key; no rename needed
        fs.create_dir(path.rsplit("/", 1)[0], recursive=True)
        with fs.open_output_stream(path) as f:
            f.write(data)
        return
    with atomic_stream(fs, path) as f:
        f.write(data)


@contextlib.contextmanager
def atomic_stream(fs: pafs.FileSystem, path: str):
    """A binary file to write `path` through, piece by piece (a shard tar is never whole in memory): a local
    file goes under a temporary name beside `path` and is renamed when the block ends; for object storage
    the pieces are buffered and published whole by atomic_write. A block that raises publishes nothing."""
    if not is_local(fs):
        buf = io.BytesIO()
        yield buf
        atomic_write(fs, path, buf.getvalue())
        return
    fs.create_dir(path.rsplit("/", 1)[0], recursive=True)
    tmp = f"{path}{TMP_MARK}{uuid.uuid4().hex[:8]}"
    # fsync the data before the rename and the folder after it: without both, a power loss or kernel
    # crash can leave the new name pointing at a short or empty file, which a resume would then trust
    try:
        with open(tmp, "wb") as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)  # atomic on POSIX
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)  # a full disk must not leave half-written temporaries behind
        raise
    fsync_dir(os.path.dirname(path))


def fsync_dir(path: str) -> None:
    """Makes the renames and unlinks inside a local folder durable."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def read_bytes(fs: pafs.FileSystem, path: str) -> bytes:
    with fs.open_input_stream(path) as f:
        return f.read()


def exists(fs: pafs.FileSystem, path: str) -> bool:
    return fs.get_file_info(path).type != pafs.FileType.NotFound


def makedirs(fs: pafs.FileSystem, path: str) -> None:
    fs.create_dir(path, recursive=True)
