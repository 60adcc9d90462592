"""The house's rule: imports run downward only. The library never imports the harness; SAVE and
LOAD never import each other; the archive and the binary readers never reach the driver, through
any chain of imports; the allocator never imports foundry_trace; every module has its place, and
library modules form no cycle. Read from the source (every import: top-level, function-level,
dynamic, and the lines of `.pth` start-up hooks); the rules are in house.py, and each kind of
violation is planted into a copy of the tree to show it is caught."""

from __future__ import annotations

import ast
import shutil
from pathlib import Path

import pytest

from .house import PACKAGES, violations

ROOT = Path(__file__).resolve().parents[1]


def test_the_tree_keeps_the_house_rules() -> None:
    assert violations(ROOT) == []


def test_relative_imports_are_not_used_across_parts() -> None:
    """Absolute imports name the part they come from, so a reader sees the layer at a glance."""
    offenders = [str(p.relative_to(ROOT)) for p in (ROOT / "foundry_trace").rglob("*.py") if any(
        isinstance(node, ast.ImportFrom) and node.level > 0 for node in ast.walk(ast.parse(p.read_text())))]
    assert offenders == []


@pytest.fixture
def copy(tmp_path: Path) -> Path:
    """The sources and start-up hooks of the tree, copied: a violation is planted there."""
    for package in PACKAGES:
        shutil.copytree(ROOT / package, tmp_path / package, ignore=shutil.ignore_patterns("csrc", "__pycache__", "*.so"))
    for hook in ROOT.glob("*.pth"):
        shutil.copy(hook, tmp_path / hook.name)
    assert violations(tmp_path) == []
    return tmp_path


def plant(root: Path, relative: str, code: str) -> None:
    path = root / relative
    path.write_text((path.read_text() if path.exists() else "") + "\n\n" + code + "\n")


def test_a_dynamic_import_of_the_harness_from_restore_is_caught(copy: Path) -> None:
    plant(copy, "foundry_trace/restore/load.py", "def _planted():\n    import importlib\n    return importlib.import_module('foundry_trace.bench.verify')")
    assert violations(copy) == [
        "foundry_trace.restore.load (foundry_trace.restore) imports foundry_trace.bench.verify (foundry_trace.bench), which is not below it"
    ]


def test_a_dunder_import_of_restore_from_save_is_caught(copy: Path) -> None:
    plant(copy, "foundry_trace/save/recording.py", "def _planted():\n    return __import__('foundry_trace.restore', fromlist=['load'])")
    assert violations(copy) == [
        "foundry_trace.save.recording (foundry_trace.save) imports foundry_trace.restore (foundry_trace.restore), which is not below it"
    ]


def test_a_dynamic_import_whose_module_cannot_be_read_is_caught(copy: Path) -> None:
    plant(copy, "foundry_trace/restore/load.py", "def _planted(name):\n    import importlib\n    return importlib.import_module(name)")
    [found] = violations(copy)
    assert found.startswith("foundry_trace.restore.load: a dynamic import whose module is not written out")


def test_driver_use_below_the_line_is_caught_however_many_imports_away(copy: Path) -> None:
    """summary.py imports the allocator's install module, which imports torch in a function:
    two imports away, and each of them allowed on its own."""
    plant(copy, "foundry_trace/archive/summary.py", "def _planted():\n    from foundry_alloc.install import installed\n    return installed()")
    found = violations(copy)
    assert "foundry_trace.archive.summary reaches the driver through its imports: torch" in found
    assert not any("which is not below it" in v for v in found)


def test_a_dynamic_import_of_the_driver_below_the_line_is_caught(copy: Path) -> None:
    plant(copy, "foundry_trace/binary/variables.py", "def _planted():\n    import importlib\n    return importlib.import_module('cuda.bindings.driver')")
    assert violations(copy) == ["foundry_trace.binary.variables reaches the driver through its imports: cuda.bindings.driver"]


def test_a_new_module_falls_into_no_default_layer(copy: Path) -> None:
    plant(copy, "foundry_trace/helpers.py", "VALUE = 1")
    plant(copy, "foundry_trace/extras.py", "VALUE = 2")
    assert violations(copy) == [
        "foundry_trace.extras belongs to no layer of the house: add it to LAYERS",
        "foundry_trace.helpers belongs to no layer of the house: add it to LAYERS",
    ]


def test_a_pth_hook_is_read_like_a_module(copy: Path) -> None:
    plant(copy, "foundry_alloc.pth", "import os; os.environ.get('X') and __import__('foundry_trace.bench.verify')")
    plant(copy, "other.pth", "import foundry_alloc")
    assert violations(copy) == [
        "foundry_alloc.pth (foundry_alloc.pth) imports foundry_trace.bench.verify (foundry_trace.bench), which is not below it",
        "other.pth belongs to no layer of the house: add it to LAYERS",
    ]


def test_an_import_cycle_in_the_library_is_caught(copy: Path) -> None:
    plant(copy, "foundry_trace/archive/records.py", "def _planted():\n    from foundry_trace.archive.format import Archive\n    return Archive")
    found = violations(copy)
    assert "foundry_trace.archive.format and foundry_trace.archive.records import each other (a cycle)" in found
    assert all(v.endswith("import each other (a cycle)") for v in found)
