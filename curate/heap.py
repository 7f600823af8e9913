"""Gives a process's freed heap back to the OS (glibc's malloc_trim; a no-op elsewhere)."""
from __future__ import annotations

import ctypes
import sys


def trim_heap() -> None:
    """glibc keeps freed blocks per arena (each decode thread has its own) and below live ones, and does not
    return them by itself: after a stage that frees much, or a large parse, RSS would stay up for the run."""
    if not sys.platform.startswith("linux"):
        return
    try:
        trim = getattr(ctypes.CDLL(None), "malloc_trim", None)  # absent on musl
    except OSError:
        return
    if trim is not None:
        trim(0)
