"""Reads text inputs in bounded memory: lines, JSON lines and CSV/TSV rows whose long values are cut at a byte cap."""
from __future__ import annotations

import re
from typing import Iterator

CHUNK = 1 << 20  # bytes read per call; with the cap, bounds what one oversized line or row holds in memory


class TooMuchStructure(ValueError):
    """An oversized JSON line that stays large once its long strings are cut (e.g. a huge list of numbers)."""


def utf8_cut(data: bytes, n: int) -> bytes:
    """The longest prefix of at most n bytes that does not end inside a UTF-8 character."""
    return data if len(data) <= n else _trim(data[:n])


def _trim(data: bytes) -> bytes:
    """`data` without a trailing incomplete UTF-8 character (what a byte cut leaves behind)."""
    i = len(data) - 1
    while i > 0 and data[i] & 0xC0 == 0x80:  # back to the lead byte of the last character
        i -= 1
    if i < 0:
        return data
    lead = data[i]
    need = 1 if lead < 0xC0 else 2 if lead < 0xE0 else 3 if lead < 0xF0 else 4
    return data if len(data) - i >= need else data[:i]


class _Stream:
    """A binary stream read in chunks; the unread bytes are buf[pos:]."""

    def __init__(self, raw):
        self.raw, self.buf, self.pos, self.eof = raw, b"", 0, False

    def more(self) -> bool:
        """Appends the next chunk to the unread bytes; False at the end of the stream."""
        if self.eof:
            return False
        data = self.raw.read(CHUNK)
        if not data:
            self.eof = True
            return False
        self.buf, self.pos = self.buf[self.pos:] + data, 0
        return True

    def ensure(self, n: int) -> bool:
        """True when at least n unread bytes are buffered (reads more as needed)."""
        while len(self.buf) - self.pos < n:
            if not self.more():
                return False
        return True


class _Field:
    """The first `keep` bytes of a value that arrives in pieces; the rest is counted, not stored."""

    def __init__(self, keep: int):
        self.keep, self.parts, self.size, self.cut = keep, [], 0, False

    def add(self, piece: bytes) -> None:
        room = self.keep - self.size
        if len(piece) > room:
            self.cut, piece = True, piece[:max(room, 0)]
        if piece:
            self.parts.append(piece)
            self.size += len(piece)

    def value(self) -> bytes:
        data = b"".join(self.parts)
        return _trim(data) if self.cut else data


def lines(raw, limit: int) -> Iterator[tuple[int, bytes | None, _Stream]]:
    """(1-based line number, line without its newline, stream) for every line of a binary stream.

    A line longer than `limit` bytes comes as (n, None, stream) with the stream at the line's start: the
    caller must consume it through its newline (head_of_line, capped_json_line). Memory: limit + CHUNK bytes.
    """
    s, n = _Stream(raw), 0
    while True:
        nl = s.buf.find(b"\n", s.pos)
        if nl >= 0:
            n += 1
            line, s.pos = s.buf[s.pos:nl], nl + 1
            yield n, line, s
        elif len(s.buf) - s.pos > limit:
            n += 1
            start = s.pos
            yield n, None, s
            if s.pos == start:
                raise RuntimeError("lines(): the caller did not consume an oversized line")
        elif not s.more():
            if s.pos < len(s.buf):
                line, s.pos = s.buf[s.pos:], len(s.buf)
                yield n + 1, line, s
            return


def head_of_line(s: _Stream, keep: int) -> bytes:
    """The first `keep` bytes (whole characters) of the line at the stream's position; skips the rest of it."""
    field = _Field(keep + 4)
    while True:
        nl = s.buf.find(b"\n", s.pos)
        end = nl if nl >= 0 else len(s.buf)
        field.add(s.buf[s.pos:end])
        s.pos = end + (nl >= 0)
        if nl >= 0 or not s.more():
            return utf8_cut(field.value(), keep)


_JSON_OUT = re.compile(rb'["\n]')
_JSON_IN = re.compile(rb'["\\\n]')


def capped_json_line(s: _Stream, keep: int, bound: int) -> bytes:
    """The JSON line at the stream's position with every string literal cut to about `keep` bytes once
    decoded (at least keep - 3, whole characters and escapes); reads through the newline.

    Raises TooMuchStructure when the cut line is still over `bound` bytes.
    """
    out = bytearray()
    while True:
        if s.pos >= len(s.buf) and not s.more():
            return bytes(out)
        m = _JSON_OUT.search(s.buf, s.pos)
        end = m.start() if m else len(s.buf)
        out += s.buf[s.pos:end]
        s.pos = end
        if len(out) > bound:
            raise TooMuchStructure(f"more than {bound} bytes outside long strings")
        if m is None:
            continue
        s.pos += 1
        if m.group() == b"\n":
            return bytes(out)
        out += b'"' + _json_string(s, keep)


def _json_string(s: _Stream, keep: int) -> bytes:
    """The rest of a JSON string literal after its opening quote, through the closing quote, cut to `keep`
    decoded bytes. A raw newline ends the line: it is left unread (the string stays unterminated)."""
    kept, budget, cut = [], keep, False
    while True:
        if s.pos >= len(s.buf) and not s.more():
            return b"".join(kept)
        m = _JSON_IN.search(s.buf, s.pos)
        end = m.start() if m else len(s.buf)
        seg = s.buf[s.pos:end]
        if not cut:
            piece = utf8_cut(seg, budget)
            kept.append(piece)
            budget -= len(piece)
            cut = len(piece) < len(seg)
        s.pos = end
        if m is None:
            continue
        c = m.group()
        if c == b"\n":
            return b"".join(kept)
        if c == b'"':
            s.pos += 1
            return b"".join(kept) + b'"'
        width = 6 if s.ensure(2) and s.buf[s.pos + 1:s.pos + 2] == b"u" else 2
        s.ensure(width)
        esc = s.buf[s.pos:s.pos + width]
        if not cut and budget >= 1:  # an escape decodes to at least one byte: count it as one
            kept.append(esc)
            budget -= 1
        else:
            cut = True
        s.pos += len(esc)


def csv_rows(raw, delimiter: str, quoted: bool, keep: int) -> Iterator[list[bytes]]:
    """Rows of a CSV (quoted) or TSV (one line per row) stream as lists of raw field bytes, each field cut to
    `keep` bytes (whole characters). Rows end at \\n, \\r or \\r\\n outside quotes; empty lines are skipped,
    as pyarrow's CSV reader does. Memory: about CHUNK + fields x keep bytes."""
    s = _Stream(raw)
    stop = re.compile(b"[" + re.escape(delimiter.encode()) + b"\r\n]")
    row, field, start = [], _Field(keep), True
    while True:
        if s.pos >= len(s.buf) and not s.more():
            if row or field.size or not start:
                yield row + [field.value()]
            return
        if start and quoted and s.buf[s.pos] == 0x22:
            s.pos += 1
            _quoted(s, field)
            start = False
            continue
        start = False
        m = stop.search(s.buf, s.pos)
        end = m.start() if m else len(s.buf)
        field.add(s.buf[s.pos:end])
        s.pos = end + (m is not None)
        if m is None:
            continue
        row.append(field.value())
        field, start = _Field(keep), True
        if m.group() in b"\r\n":
            if m.group() == b"\r" and s.ensure(1) and s.buf[s.pos] == 0x0A:
                s.pos += 1
            if row != [b""]:
                yield row
            row = []


def _quoted(s: _Stream, field: _Field) -> None:
    """Adds a quoted field's text (a doubled quote is one quote) to `field`; reads through the closing quote."""
    while True:
        i = s.buf.find(b'"', s.pos)
        if i < 0:
            field.add(s.buf[s.pos:])
            s.pos = len(s.buf)
            if not s.more():
                return
            continue
        field.add(s.buf[s.pos:i])
        s.pos = i + 1
        if not (s.ensure(1) and s.buf[s.pos] == 0x22):
            return
        field.add(b'"')
        s.pos += 1
