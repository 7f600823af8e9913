"""Local Ray's unit tasks: capped malloc arenas (ray_start) and a node's shared scorer (scoring), torch-free."""
from __future__ import annotations

import io
import os

import numpy as np
import pyarrow as pa
from PIL import Image

from curate.schema import COL
from tests.pipeline.helpers import run_config, tiny_clip_config


def _table(n: int) -> pa.Table:
    rng = np.random.default_rng(0)
    images = []
    for _ in range(n):
        buf = io.BytesIO()
        Image.fromarray(rng.integers(0, 255, (40, 56, 3), np.uint8)).save(buf, "JPEG")
        images.append(buf.getvalue())
    return pa.table({COL.UID: [f"{i:04d}" for i in range(n)], COL.IMAGE: pa.array(images, pa.binary()),
                     COL.CAPTION_CLEAN: [f"a photo of thing {i}" for i in range(n)]})


def _score_in_a_task(scorers, table):
    """A unit task's view: the Scorer's output, whether its worker imported torch, its malloc arena cap and
    Arrow memory pool."""
    import sys

    from pipelines.scoring import unit_scorer
    return (unit_scorer(scorers, 0)(table), "torch" in sys.modules, os.environ.get("MALLOC_ARENA_MAX"),
            pa.default_memory_pool().backend_name)


def test_unit_tasks_score_through_their_nodes_actor_without_torch_and_with_capped_allocators(tmp_path):
    import ray

    from curate.clip.scorer import score_table
    from pipelines.ray_start import local_session
    from pipelines.scoring import start_unit_scorers, stop_unit_scorers

    clip = run_config(tmp_path / "in.parquet", tmp_path / "out", clip_model=tiny_clip_config(tmp_path),
                      **{"clip.device": "cpu"}).clip
    table = _table(12)
    with local_session(2):
        scorers = start_unit_scorers(clip)
        try:
            got, torch_in_task, arenas, pool = ray.get(ray.remote(num_cpus=1)(_score_in_a_task).remote(scorers, table))
        finally:
            stop_unit_scorers(scorers)
    assert [len(h) for h in scorers.values()] == [1]  # one node of 2 CPUs: one shared scorer
    assert not torch_in_task
    assert arenas == os.environ.get("MALLOC_ARENA_MAX", "2")
    assert pool == os.environ.get("ARROW_DEFAULT_MEMORY_POOL", "system")  # freed columns go back to the OS
    want = score_table(table, clip)
    assert got[COL.UID].to_pylist() == want[COL.UID].to_pylist()
    np.testing.assert_allclose(got[COL.CLIP_SCORE].to_numpy(), want[COL.CLIP_SCORE].to_numpy(), atol=1e-6)
