"""Checks that run after every pipeline test: the dedup distance rule on each finished run it left."""
from __future__ import annotations

import pytest

from tests.pipeline.helpers import check_new_runs


@pytest.fixture(autouse=True)
def _finished_runs_keep_the_duplicate_rule(tmp_path_factory):
    """After the test: every duplicate_of row of every new finished run is within k of its kept
    representative (tests/pipeline/helpers.py: assert_duplicate_rule)."""
    yield
    check_new_runs(tmp_path_factory.getbasetemp())
