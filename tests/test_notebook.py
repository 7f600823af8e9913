"""Executes notebooks/explore_metadata.ipynb (nbclient, this venv's Python as kernel) against synthetic runs."""
from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import nbformat
import pytest
from jupyter_client.kernelspec import KernelSpecManager
from jupyter_client.manager import KernelManager
from nbclient import NotebookClient

from tests.run_fixture import make_run

NOTEBOOK = Path(__file__).resolve().parent.parent / "notebooks" / "explore_metadata.ipynb"
KERNEL = "curate-test"


def _kernel_manager(root: Path) -> KernelManager:
    """A kernel running sys.executable: the venv's Python whatever kernels the user has installed."""
    spec_dir = root / "kernels" / KERNEL
    spec_dir.mkdir(parents=True)
    spec = {"argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
            "display_name": "curate (test)", "language": "python"}
    (spec_dir / "kernel.json").write_text(json.dumps(spec))
    return KernelManager(kernel_name=KERNEL, kernel_spec_manager=KernelSpecManager(kernel_dirs=[str(root / "kernels")]))


def _execute(output: str, root: Path, monkeypatch) -> nbformat.NotebookNode:
    monkeypatch.setenv("CURATE_OUTPUT", output)  # the kernel inherits this process's environment
    nb = nbformat.read(NOTEBOOK, as_version=4)
    client = NotebookClient(nb, km=_kernel_manager(root), timeout=120, allow_errors=False,
                            resources={"metadata": {"path": str(root)}})
    client.execute()
    return nb


def _text(nb: nbformat.NotebookNode, tag: str) -> str:
    """Printed text and plain-text results of the cell tagged `tag`."""
    cells = [c for c in nb.cells if tag in c.get("metadata", {}).get("tags", [])]
    assert len(cells) == 1, f"one cell tagged {tag!r} expected"
    parts = []
    for out in cells[0].outputs:
        parts.append(out.get("text", "") if out.output_type == "stream" else out.get("data", {}).get("text/plain", ""))
    return "".join(parts)


def _images(nb: nbformat.NotebookNode, tag: str) -> int:
    cell = next(c for c in nb.cells if tag in c.get("metadata", {}).get("tags", []))
    return sum("image/png" in out.get("data", {}) for out in cell.outputs)


@pytest.fixture(scope="module")
def executed(tmp_path_factory):
    root = tmp_path_factory.mktemp("nb")
    run = make_run(root / "run")
    with pytest.MonkeyPatch.context() as mp:
        return run, _execute(run.output, root, mp)


def test_parameter_cell_reads_curate_output():
    nb = nbformat.read(NOTEBOOK, as_version=4)
    params = next(c for c in nb.cells if "parameters" in c.metadata.get("tags", []))
    assert 'OUTPUT = os.environ.get("CURATE_OUTPUT", "demo_output")' in params.source
    assert all(not c.get("outputs") for c in nb.cells if c.cell_type == "code"), "commit the notebook without outputs"


def test_funnel_matches_the_manifest(executed):
    run, nb = executed
    text = _text(nb, "funnel")
    assert re.search(r"input rows\s+34\b", text)
    for status, n in run.manifest["counts"].items():
        if status != "kept":
            assert re.search(rf"- {status}\s+{n}\s", text), status
    assert re.search(r"written samples\s+8\s+23\.5%", text)
    assert "ledger matches manifest: True" in text
    assert re.search(r"download_error:timeout\s*│\s+2\s", _text(nb, "reasons"))


def test_score_histogram_and_languages(executed):
    _, nb = executed
    assert "scored rows: 18, threshold: 0.25" in _text(nb, "clip")
    assert _images(nb, "clip") == 1 and _images(nb, "languages") == 1
    assert re.search(r"│ de\s+│\s+6 │\s+3 │\s+50\.0 │", _text(nb, "languages"))


def test_example_queries(executed):
    run, nb = executed
    assert "http://b.example/img/9.jpg: download_error:timeout (http None, read timed out (10.0 s))" \
        in _text(nb, "why_dropped")
    assert "German captions: 3 of 6 kept (50.0%)" in _text(nb, "german")
    assert re.search(r"│ b\.example\s+│ download_error:timeout\s+│\s+2 │", _text(nb, "domains"))
    shard = _text(nb, "shard")
    assert f"shard 0: 4 samples (manifest: {run.manifest['shards'][0]['count']})" in shard
    assert shard.count("a photo of a") == 4


def test_runs_on_a_run_that_kept_nothing(tmp_path, monkeypatch):
    run = make_run(tmp_path / "run", kept=False, clip_scores=False)
    nb = _execute(run.output, tmp_path, monkeypatch)
    assert "German captions: 0 of 6 kept (0.0%)" in _text(nb, "german")
    assert "no samples: this run kept nothing" in _text(nb, "shard")
    assert "scored rows: 0" in _text(nb, "clip") and _images(nb, "clip") == 0
