"""The code's own map stays true: every module says its job in its first line, and each ledger status names
the stage and module that set it (schemas/reasons.json "set_by")."""
from __future__ import annotations

import ast
import json
import re
from pathlib import Path

import pytest

from curate.schema import STATUSES

ROOT = Path(__file__).resolve().parents[1]
MODULES = sorted(p for d in ("curate", "pipelines", "tests/bench") for p in (ROOT / d).rglob("*.py"))
SET_BY = json.loads((ROOT / "schemas" / "reasons.json").read_text())["set_by"]
# modules that issue #16 adds (opt-out signals); drop an entry here once its module exists
PENDING = {"curate/optout/stage.py"}
# phases B and C are steps of pipelines/select_write.py, not Stage objects; 'read' is the unit's first rows
STEPS = {"read", "dedup", "select"}


def _entries():
    return [(status, e) for status, entries in SET_BY.items() for e in entries]


def _stage_names() -> set[str]:
    """Every Stage.name declared in curate/ (`name: ClassVar[str] = "..."`)."""
    found = set()
    for path in (ROOT / "curate").rglob("*.py"):
        found |= set(re.findall(r'name: ClassVar\[str\] = "(\w+)"', path.read_text()))
    return found


@pytest.mark.parametrize("path", MODULES, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_module_opens_with_a_line_that_says_its_job(path):
    doc = ast.get_docstring(ast.parse(path.read_text(), str(path)))
    assert doc and doc.splitlines()[0].strip(), f"{path.relative_to(ROOT)}: no module docstring"


def test_every_status_names_where_it_is_set():
    assert sorted(SET_BY) == sorted(STATUSES), "schemas/reasons.json: set_by must list exactly the statuses"
    for status, entries in SET_BY.items():
        assert entries, f"reasons.json set_by.{status}: empty"


@pytest.mark.parametrize("status,entry", _entries(), ids=lambda v: v if isinstance(v, str) else v["module"])
def test_the_named_module_sets_the_status(status, entry):
    module = ROOT / entry["module"]
    if entry["module"] in PENDING and not module.exists():
        pytest.skip(f"{entry['module']}: not written yet (issue #16)")
    where = f"reasons.json set_by.{status} -> {entry['module']}"
    assert module.is_file(), f"{where}: no such module"
    text = module.read_text()
    assert f"Status.{status.upper()}" in text or f'"{status}"' in text, f"{where}: the module never names {status}"
    assert entry["phase"] in ("A", "B"), f"{where}: phase {entry['phase']!r}"
    if entry["module"] not in PENDING:
        assert entry["stage"] in _stage_names() | STEPS, f"{where}: no stage named {entry['stage']!r}"
    for other in entry.get("see", []):
        assert (ROOT / other).is_file(), f"{where}: see {other}: no such module"
