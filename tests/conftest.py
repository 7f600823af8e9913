"""Shared pytest fixtures: a real 127.0.0.1 image/fault HTTP server per test or per session."""
from __future__ import annotations

import pytest

from tests.fault_server import ImageServer


@pytest.fixture
def image_server():
    """A fresh ImageServer for one test (its own hit counters and routes)."""
    with ImageServer() as srv:
        yield srv


@pytest.fixture(scope="session")
def shared_image_server():
    """One ImageServer for the whole session; do not rely on its hit counters."""
    with ImageServer() as srv:
        yield srv
