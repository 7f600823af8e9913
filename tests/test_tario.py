"""Tar I/O: tarfile's exact bytes, round trips through tario, tarfile and webdataset, index offsets, clear errors."""
from __future__ import annotations

import io
import random
import tarfile

import pyarrow.fs as pafs
import pytest
import webdataset as wds

from curate import tario


def _members(n: int = 12, seed: int = 0) -> list[tuple[str, bytes]]:
    """Samples as the shard writer lays them out, with sizes around the 512-byte block edges."""
    rng = random.Random(seed)
    sizes = [0, 1, 511, 512, 513, 1024, 3000]
    out = []
    for i in range(n):
        key = f"{i:07d}"
        out += [(f"{key}.jpg", rng.randbytes(sizes[i % len(sizes)] + rng.randrange(3))),
                (f"{key}.json", b'{"key": "%s"}' % key.encode()), (f"{key}.txt", f"caption {i} é".encode())]
    return out


def _reference(members: list[tuple[str, bytes]]) -> bytes:
    """What tarfile writes for the same members and header fields: the format both tar writers had."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size, info.mtime, info.mode, info.uname, info.gname = len(data), 0, 0o644, "", ""
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


@pytest.mark.parametrize("members", [
    _members(),
    [],
    [("x" * 100, b"a"), ("é" * 50, b"b" * 700)],                 # exactly 100 bytes of name: no prefix
    [("dir/" * 30 + "k.jpg", b"c" * 10), ("k.txt", b"")],       # over 100 bytes: tarfile's prefix split
    [(f"{i:05d}.{e}", bytes([i % 256]) * (i * 37)) for i in range(300) for e in ("png", "txt")],
], ids=["samples", "empty", "name_100_bytes", "long_name", "many"])
def test_tar_bytes_are_tarfiles_bytes(members):
    assert tario.tar_bytes(members) == _reference(members)


def test_round_trip_and_index_offsets_point_at_member_bytes():
    members = _members()
    data = tario.tar_bytes(members)
    index = tario.index_buffer(memoryview(data), "mem.tar")
    assert [m.name for m in index] == [n for n, _ in members]
    assert [data[m.offset:m.offset + m.size] for m in index] == [d for _, d in members]
    assert all(m.offset % 512 == 0 for m in index)
    assert tario.read_members(data, "mem.tar") == members
    assert list(tario.iter_stream(io.BytesIO(data))) == members


def test_python_tarfile_reads_what_tario_writes():
    members = _members()
    with tarfile.open(fileobj=io.BytesIO(tario.tar_bytes(members))) as tar:
        infos = tar.getmembers()
        got = [(m.name, tar.extractfile(m).read()) for m in infos]
    assert got == members
    assert {(m.mtime, m.mode, m.uname, m.gname, m.uid) for m in infos} == {(0, 0o644, "", "", 0)}


def test_webdataset_reads_what_tario_writes(tmp_path):
    members = _members()
    path = tmp_path / "00000.tar"
    path.write_bytes(tario.tar_bytes(members))
    samples = list(wds.WebDataset(str(path), shardshuffle=False))
    assert [s["__key__"] for s in samples] == [f"{i:07d}" for i in range(12)]
    by_name = dict(members)
    for s in samples:
        assert {e: s[e] for e in ("jpg", "json", "txt")} == {e: by_name[f"{s['__key__']}.{e}"]
                                                           for e in ("jpg", "json", "txt")}


def test_index_file_and_read_ranges_on_disk(tmp_path):
    members = _members(40)
    path = tmp_path / "000001.tar"
    path.write_bytes(tario.tar_bytes(members))
    fs = pafs.LocalFileSystem()
    index = tario.index_file(fs, str(path))
    order = list(range(len(index)))[::-3]  # any order: read_ranges answers in the order asked
    got = tario.read_ranges(fs, str(path), [index[i].offset for i in order], [index[i].size for i in order])
    assert got == [members[i][1] for i in order]


def test_coalesce_groups_neighbouring_ranges():
    gap = tario.COALESCE_GAP
    assert tario.coalesce([0, 100, 100 + 50 + gap + 1, 100 + 50 + gap + 10], [100, 50, 9, 5]) == [[0, 1], [2, 3]]
    assert tario.coalesce([], []) == []


def test_archives_with_other_headers_are_indexed_through_tarfile():
    """pax headers (a long name) and a directory member: the fast scan steps aside, offsets stay right."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        tar.addfile(_dir("folder"))
        for name, data in [("x" * 150 + ".jpg", b"long" * 300), ("short.txt", b"hi")]:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    data = buf.getvalue()
    assert tario.scan_ustar(memoryview(data)) is None
    assert tario.read_members(data, "pax.tar") == [("x" * 150 + ".jpg", b"long" * 300), ("short.txt", b"hi")]


def _dir(name: str) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = tarfile.DIRTYPE
    return info


def test_a_truncated_tar_raises_an_error_naming_the_file(tmp_path):
    members = _members()
    data = tario.tar_bytes(members)
    last = tario.index_buffer(memoryview(data), "x")[-3]  # a 1 KiB image: cut in the middle of it
    path = tmp_path / "000007.tar"
    path.write_bytes(data[:last.offset + last.size // 2])
    fs = pafs.LocalFileSystem()
    with pytest.raises(tario.TarFormatError, match=r"000007\.tar: truncated tar: member '0000011\.jpg'"):
        tario.index_file(fs, str(path))
    with pytest.raises(tario.TarFormatError, match=r"000007\.tar"):
        tario.read_members(path.read_bytes(), str(path))
    path.write_bytes(b"")
    with pytest.raises(tario.TarFormatError, match=r"000007\.tar: empty file"):
        tario.index_file(fs, str(path))
    path.write_bytes(b"\x01" * 2048)  # not a tar at all
    with pytest.raises(tario.TarFormatError, match=r"000007\.tar: unreadable tar"):
        tario.index_file(fs, str(path))


def test_a_corrupt_header_is_left_to_tarfile_and_named():
    data = bytearray(tario.tar_bytes(_members(2)))
    data[124:136] = b"not octal!!\0"  # the first member's size field
    assert tario.scan_ustar(memoryview(bytes(data))) is None
    with pytest.raises(tario.TarFormatError, match="bad.tar: unreadable tar"):
        tario.index_buffer(memoryview(bytes(data)), "bad.tar")


def test_a_streamed_read_of_a_truncated_tar_yields_the_members_before_the_break():
    members = _members()
    data = tario.tar_bytes(members)
    cut = tario.index_buffer(memoryview(data), "x")[-3]
    got = []
    with pytest.raises(tario.READ_ERRORS):
        for item in tario.iter_stream(io.BytesIO(data[:cut.offset + cut.size // 2])):
            got.append(item)
    assert got == members[:len(got)] and len(got) >= len(members) - 3


def test_the_pipelines_own_tars_take_the_fast_scan():
    """Plain USTAR (what tar_bytes writes) never needs tarfile's member objects (~100 us each)."""
    data = tario.tar_bytes(_members(200))
    assert tario.scan_ustar(memoryview(data)) == [tuple(m) for m in tario.index_buffer(memoryview(data), "x")]


@pytest.mark.parametrize("members", [_members(), [], [("dir/" * 30 + "k.jpg", b"c" * 10), ("k.txt", b"")]],
                         ids=["samples", "empty", "long_name"])
def test_write_tar_streams_tarfiles_bytes_with_size_and_digest(tmp_path, members):
    """The shard writer streams to a file through fsutil.atomic_stream: same bytes, size and sha256 computed
    on the way; pyarrow buffers (zero-copy views of an image column) are members like bytes."""
    import hashlib

    import pyarrow as pa

    from curate import fsutil

    path = str(tmp_path / "s.tar")
    with fsutil.atomic_stream(pafs.LocalFileSystem(), path) as f:
        n, sha = tario.write_tar(f, ((name, pa.py_buffer(data)) for name, data in members))
    data = (tmp_path / "s.tar").read_bytes()
    assert data == _reference(members)
    assert (n, sha) == (len(data), hashlib.sha256(data).hexdigest())


def test_atomic_stream_publishes_nothing_when_the_writer_fails(tmp_path):
    from curate import fsutil

    path = str(tmp_path / "sub" / "s.tar")
    # a name USTAR cannot split fails mid-archive
    with pytest.raises(ValueError, match="too long"), fsutil.atomic_stream(pafs.LocalFileSystem(), path) as f:
        tario.write_tar(f, [("a.txt", b"x" * 600), ("x" * 200, b"y")])
    assert list((tmp_path / "sub").iterdir()) == []
