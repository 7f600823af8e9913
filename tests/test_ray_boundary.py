"""Ray stays in pipelines/: no module of the library imports Ray except the one Ray-glue module."""
from __future__ import annotations

import ast
from pathlib import Path

CURATE = Path(__file__).resolve().parent.parent / "curate"
GLUE = {"parallel.py"}  # curate/parallel.py: parallel_map, Ray tasks when Ray is up, else in this process


def _ray_imports(path: Path) -> list[str]:
    """'line: statement' of every import of ray (or ray.*) in a file, at any depth (function bodies too)."""
    hits = []
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0:
            names = [node.module or ""]
        else:
            continue
        if any(n == "ray" or n.startswith("ray.") for n in names):
            hits.append(f"{node.lineno}: {ast.unparse(node)}")
    return hits


def test_only_the_glue_module_imports_ray():
    found = {str(p.relative_to(CURATE.parent)): hits for p in sorted(CURATE.rglob("*.py"))
             if (hits := _ray_imports(p))}
    assert set(found) == {f"curate/{g}" for g in GLUE}, (
        f"Ray imported in the library outside {', '.join(sorted(GLUE))}: {found}; Ray wiring belongs in pipelines/")


def test_the_scan_sees_nested_and_dotted_imports(tmp_path):
    src = tmp_path / "m.py"
    src.write_text("import os\n\ndef f():\n    import ray.train\n    from ray.data import Dataset\n"
                   "    from .ray import x\n    import rayon\n")
    assert _ray_imports(src) == ["4: import ray.train", "5: from ray.data import Dataset"]


def test_train_ray_flag_says_when_pipelines_is_missing(monkeypatch, capsys):
    """`python -m curate.train --ray` reaches Ray Train through pipelines/train_ray.py; without that package
    it stops with a message that says so (exit 2), not a traceback."""
    import sys

    from curate.train.__main__ import main

    monkeypatch.setitem(sys.modules, "pipelines", None)  # None in sys.modules: the import fails as if absent
    monkeypatch.setitem(sys.modules, "pipelines.train_ray", None)
    assert main(["--data", "x", "--ray"]) == 2
    assert "pipelines/train_ray.py, which is not importable" in capsys.readouterr().err
