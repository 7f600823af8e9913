"""Resolves input paths (files, folders searched recursively, globs; local or s3://) to input files and formats."""
from __future__ import annotations

import fnmatch
import glob
import os

import pyarrow.fs as pafs

from curate import fsutil
from curate.inputs import InputError

FORMATS = {".parquet": "parquet", ".csv": "csv", ".tsv": "tsv", ".jsonl": "jsonl", ".json": "jsonl", ".txt": "txt"}
_GLOB_CHARS = "*?["


def format_of(path: str, forced: str = "auto") -> tuple[str | None, bool]:
    """(format or None when unknown, gzipped) of a file, by extension unless forced."""
    gz = path.lower().endswith(".gz")
    stem = path[:-3] if gz else path
    if forced != "auto":
        return forced, gz
    return FORMATS.get(os.path.splitext(stem)[1].lower()), gz


def _hidden(rel: str) -> bool:
    """Names starting with '.' or '_' (.crc, _SUCCESS, our own _input/) are not input files."""
    return any(part.startswith((".", "_")) for part in rel.split("/") if part)


def _list_dir(fs: pafs.FileSystem, path: str, forced: str) -> list[str]:
    infos = fs.get_file_info(pafs.FileSelector(path, recursive=True))
    return sorted(i.path for i in infos if i.type == pafs.FileType.File
                  and not _hidden(i.path[len(path):]) and format_of(i.path, forced)[0])


def _glob(fs: pafs.FileSystem, path: str) -> list[str]:
    if fsutil.is_local(fs):
        return sorted(glob.glob(path, recursive=True))
    cut = min(path.find(c) for c in _GLOB_CHARS if c in path)
    base = path[:cut].rsplit("/", 1)[0]
    infos = fs.get_file_info(pafs.FileSelector(base, recursive=True, allow_not_found=True))
    return sorted(i.path for i in infos if fnmatch.fnmatchcase(i.path, path))


def _expand(pattern: str, forced: str) -> list[str]:
    """Files named by one path: itself, the supported files under a folder, or those a glob matches."""
    fs, path = fsutil.get_fs(pattern)
    info = fs.get_file_info(path)
    if info.type == pafs.FileType.File:
        if not format_of(path, forced)[0]:
            raise InputError(f"{pattern}: cannot tell the format from the extension (supported: "
                             f"{', '.join(FORMATS)}, each optionally .gz); set input.file_format")
        found = [path]
    elif info.type == pafs.FileType.Directory:
        found = _list_dir(fs, path, forced)
    elif any(c in pattern for c in _GLOB_CHARS):
        found = []
        for m in _glob(fs, path):
            kind = fs.get_file_info(m).type
            found += _list_dir(fs, m, forced) if kind == pafs.FileType.Directory else (
                [m] if format_of(m, forced)[0] else [])
    else:
        raise InputError(f"input not found: {pattern!r}")
    return [p if fsutil.is_local(fs) else f"s3://{p}" for p in found]


def resolve_inputs(paths, file_format: str = "auto") -> list[str]:
    """Sorted, de-duplicated input files of files, folders (searched recursively) and globs.

    Local files come back as absolute paths, so a plan resumes from any working directory.
    """
    files: set[str] = set()
    for pattern in ([paths] if isinstance(paths, str) else paths):
        found = _expand(pattern, file_format)
        if not found:
            raise InputError(f"no input files match {pattern!r} (supported: {', '.join(FORMATS)}, "
                             "each optionally .gz)")
        files.update(found)
    if not files:
        raise InputError("no input given")
    return sorted(files)


def _root_of(pattern: str) -> str:
    """The folder one input path points into: a folder itself, a file's folder, a glob's fixed part."""
    fs, path = fsutil.get_fs(pattern)
    kind = fs.get_file_info(path).type
    if kind == pafs.FileType.Directory:
        root = path
    elif kind != pafs.FileType.File and any(c in path for c in _GLOB_CHARS):
        root = path[:min(path.find(c) for c in _GLOB_CHARS if c in path)].rsplit("/", 1)[0]
    else:
        root = path.rsplit("/", 1)[0]
    return root if fsutil.is_local(fs) else f"s3://{root}"


def input_root(paths) -> str:
    """The input root: the deepest folder that holds the folder of every input path ("" if none does)."""
    parts = [_root_of(p).split("/") for p in ([paths] if isinstance(paths, str) else paths)]
    common = []
    for level in zip(*parts):
        if len(set(level)) != 1:
            break
        common.append(level[0])
    return "/".join(common)


def relative_name(path: str, root: str) -> str:
    """An input file's name relative to the input root (its full path when outside it): what rows carry as
    source_file, so KEY.json and the ledger do not reveal local paths and a moved input keeps its uids."""
    prefix = root.rstrip("/") + "/"
    return path[len(prefix):] if root and path.startswith(prefix) else path

