"""Tar I/O in one place: byte-stable USTAR archives (stage and shard tars), the header index, reads by range."""
from __future__ import annotations

import contextlib
import hashlib
import io
import mmap
import os
import tarfile
from typing import Iterable, Iterator, NamedTuple

import pyarrow.fs as pafs

from curate import fsutil

COALESCE_GAP = 1 << 20  # bytes: neighbouring reads closer than this become one read (one S3 GET)
READ_ERRORS = (OSError, tarfile.TarError, EOFError)  # what a streamed read of a broken archive raises
_RECORD = 20 * 512  # tar pads the archive to a multiple of this record size
_ZERO_BLOCK = bytes(512)


class TarFormatError(ValueError):
    """A tar that cannot be read (truncated, corrupt header); the message names the file."""


class Member(NamedTuple):
    """One regular file of an archive: its name and where its bytes lie in the archive."""
    name: str
    offset: int  # bytes from the start of the archive to the member's data
    size: int    # bytes


# ---------------------------------------------------------------- writing
def tar_bytes(members: Iterable[tuple[str, bytes]]) -> bytes:
    """A USTAR archive (in memory) of (name, bytes) members: write_tar into a buffer."""
    buf = io.BytesIO()
    write_tar(buf, members)
    return buf.getvalue()


def write_tar(f, members: Iterable[tuple[str, bytes]]) -> tuple[int, str]:
    """Streams a USTAR archive of (name, bytes-like) members to the binary file `f`, one member at a time
    (no copy of the archive in memory); returns its (bytes, sha256 hex). mtime 0, mode 0644, no owner, so
    the same members give the same bytes. The headers are built directly (tarfile spends ~100 us per member
    on header objects, which dominated shard writing); a name over 100 bytes gets tarfile's header (which
    splits it into USTAR's prefix field, or raises). Both give tarfile's bytes (tests/test_tario.py)."""
    digest, total = hashlib.sha256(), 0

    def put(data) -> None:
        nonlocal total
        f.write(data)
        digest.update(data)
        total += len(data)

    for name, data in members:
        raw, n = name.encode("utf-8"), len(data)
        put(_header(raw, n) if len(raw) <= 100 else _long_header(name, n))
        put(data)
        if n % 512:
            put(bytes(512 - n % 512))
    put(bytes(1024 + (-(total + 1024) % _RECORD)))  # two zero blocks end the archive, then the record pad
    return total, digest.hexdigest()


def _header(raw: bytes, n: int) -> bytes:
    """The USTAR header of a regular file whose UTF-8 name fits the 100-byte name field."""
    header = bytearray(_HEADER_TEMPLATE)
    size = b"%011o\0" % n
    header[:len(raw)] = raw
    header[124:136] = size
    header[148:155] = b"%06o\0" % (_TEMPLATE_SUM + sum(raw) + sum(size))  # checksum field counted as spaces
    return bytes(header)


def _long_header(name: str, n: int) -> bytes:
    """tarfile's USTAR header for a longer name (prefix field; ValueError when it cannot be split)."""
    info = tarfile.TarInfo(name)
    info.size, info.mtime, info.mode = n, 0, 0o644
    info.uname = info.gname = ""
    return info.tobuf(tarfile.USTAR_FORMAT, "utf-8", "surrogateescape")


def _header_template() -> bytes:
    h = bytearray(512)
    h[100:108] = b"0000644\0"        # mode
    h[108:116] = b"0000000\0"        # uid
    h[116:124] = b"0000000\0"        # gid
    h[136:148] = b"00000000000\0"    # mtime 0: byte-stable archives
    h[148:156] = b" " * 8            # checksum placeholder
    h[156:157] = b"0"                # regular file
    h[257:265] = b"ustar\x0000"      # POSIX magic + version
    return bytes(h)


_HEADER_TEMPLATE = _header_template()
_TEMPLATE_SUM = sum(_HEADER_TEMPLATE)  # name and size fields are NUL in the template


# ---------------------------------------------------------------- index (headers only)
def scan_ustar(buf) -> list[tuple[str, int, int]] | None:
    """(name, data offset, size) of each regular file in a USTAR archive held in `buf`; None when a
    member needs tarfile (pax/GNU headers, links, a name prefix, a field that does not parse). ~8 us a
    member, tarfile's member objects ~60 us. Header checksums are not verified (that would double the
    time): a stage tar is checked against its completion record (size; sha256 on local disk) before use."""
    out, pos, n = [], 0, len(buf)
    while pos + 512 <= n:
        header = bytes(buf[pos:pos + 512])
        if header == _ZERO_BLOCK:
            break
        kind = header[156:157]
        if kind not in (b"0", b"\0") or header[345:500].strip(b"\0"):  # not a plain file, or a name prefix
            return None
        try:
            size = int(header[124:136].split(b"\0")[0].strip() or b"0", 8)
            name = header[:100].split(b"\0")[0].decode("utf-8")
        except ValueError:  # not octal, not UTF-8: tarfile says what is wrong
            return None
        out.append((name, pos + 512, size))
        pos += 512 + -(-size // 512) * 512
    return out


def index_buffer(buf, path: str) -> list[Member]:
    """The regular files of the archive held in `buf` (uncompressed): the fast USTAR scan, tarfile for
    other headers. Raises TarFormatError naming `path` when the archive is corrupt or a member's data
    runs past its end (a truncated file)."""
    if len(buf) == 0:  # a tar holds at least its end blocks: this is an interrupted write
        raise TarFormatError(f"{path}: empty file, not a tar")
    entries = scan_ustar(buf)
    if entries is None:
        try:
            with tarfile.open(fileobj=io.BytesIO(bytes(buf)), mode="r:") as tar:
                entries = [(m.name, m.offset_data, m.size) for m in tar if m.isfile()]
        except (tarfile.TarError, EOFError, UnicodeDecodeError) as e:
            raise TarFormatError(f"{path}: unreadable tar ({type(e).__name__}: {e})") from e
    for name, offset, size in entries:
        if offset + size > len(buf):
            raise TarFormatError(f"{path}: truncated tar: member {name!r} needs {offset + size} bytes, "
                                 f"the file has {len(buf)}")
    return [Member(*e) for e in entries]


def index_file(fs: pafs.FileSystem, path: str) -> list[Member]:
    """index_buffer of one archive file: a local file is memory-mapped (only header pages are touched),
    a remote one is fetched once."""
    with _open_tar_source(fs, path) as buf:
        return index_buffer(buf, path)


@contextlib.contextmanager
def _open_tar_source(fs: pafs.FileSystem, path: str):
    """The tar's bytes as a buffer: mmap for a local file, one GET for object storage."""
    if not fsutil.is_local(fs):
        yield memoryview(fsutil.read_bytes(fs, path))
        return
    with open(path, "rb") as f:
        if os.fstat(f.fileno()).st_size == 0:
            yield memoryview(b"")
            return
        with mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as mm:
            yield mm


# ---------------------------------------------------------------- reading
def read_members(data: bytes, path: str) -> list[tuple[str, bytes]]:
    """(name, bytes) of every regular file of an archive held in memory, in archive order; raises
    TarFormatError naming `path` (index_buffer)."""
    return [(m.name, data[m.offset:m.offset + m.size]) for m in index_buffer(memoryview(data), path)]


def read_ranges(fs: pafs.FileSystem, path: str, offset: list[int], size: list[int]) -> list[bytes]:
    """The bytes at (offset, size) pairs of one file (index_file's members), in the given order. The
    file is opened once and read in offset order, neighbouring ranges coalesced into one read (one GET
    on object storage)."""
    order = sorted(range(len(offset)), key=lambda i: offset[i])
    result: list[bytes | None] = [None] * len(offset)
    with fs.open_input_file(path) as f:
        for group in coalesce([offset[i] for i in order], [size[i] for i in order]):
            idx = [order[g] for g in group]
            lo = offset[idx[0]]
            hi = max(offset[i] + size[i] for i in idx)
            buf = f.read_at(hi - lo, lo)
            for i in idx:
                result[i] = buf[offset[i] - lo:offset[i] - lo + size[i]]
    return result


def coalesce(offset: list[int], size: list[int]) -> list[list[int]]:
    """Groups of positions (offset-sorted input) whose gaps are below COALESCE_GAP."""
    groups: list[list[int]] = []
    end = -1
    for i, (o, s) in enumerate(zip(offset, size)):
        if groups and o - end <= COALESCE_GAP:
            groups[-1].append(i)
        else:
            groups.append([i])
        end = max(end, o + s)
    return groups


def iter_stream(stream) -> Iterator[tuple[str, bytes]]:
    """(name, bytes) of each regular file of an archive read front to back from a file object
    (compression detected): shards streamed from object storage. A broken archive raises one of
    READ_ERRORS after yielding the members before the break."""
    with tarfile.open(fileobj=stream, mode="r|*") as tar:
        for member in tar:
            if member.isfile():
                yield member.name, tar.extractfile(member).read()
