"""Every name the tree takes from the library exists: `from foundry_trace.x import Y`, `import
foundry_trace.x`, and attributes read through a module alias (`ft.Y` after `import foundry_trace
as ft`). Code that only runs on a GPU (tests/gpu, the benches' children) is otherwise checked
only there; a public name removed from an `__all__` broke it once without a CPU test noticing."""

from __future__ import annotations

import ast
import importlib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
OURS = ("foundry_trace", "foundry_alloc", "tests")
SKIPPED = {".git", "build", ".before", ".whl", "out"}


def _resolves(module: str, name: str | None = None) -> bool:
    try:
        loaded = importlib.import_module(module)
    except ImportError:
        return False
    if name is None or hasattr(loaded, name):
        return True
    try:
        importlib.import_module(f"{module}.{name}")
    except ImportError:
        return False
    return True


def unresolved_names(path: Path) -> list[str]:
    """Each `line: name` of `path` that names something of ours that does not exist."""
    tree = ast.parse(path.read_text(), filename=str(path))
    missing: list[str] = []
    aliases: dict[str, str] = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module and node.module.split(".")[0] in OURS:
            for alias in node.names:
                if alias.name != "*" and not _resolves(node.module, alias.name):
                    missing.append(f"{node.lineno}: {node.module}.{alias.name}")
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] not in OURS:
                    continue
                if not _resolves(alias.name):
                    missing.append(f"{node.lineno}: {alias.name}")
                elif alias.asname:
                    aliases[alias.asname] = alias.name
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id in aliases:
            module = aliases[node.value.id]
            if not _resolves(module, node.attr):
                missing.append(f"{node.lineno}: {module}.{node.attr}")
    return missing


def _sources() -> list[Path]:
    return sorted(p for p in ROOT.rglob("*.py") if not SKIPPED.intersection(p.relative_to(ROOT).parts))


def test_every_name_taken_from_the_library_exists() -> None:
    missing = {str(p.relative_to(ROOT)): names for p in _sources() if (names := unresolved_names(p))}
    assert not missing, f"names that do not exist (renamed or made private?): {missing}"


@pytest.mark.parametrize(
    "source",
    [
        "import foundry_trace as ft\nft.Archive('a')\n",
        "from foundry_trace import Archive\n",
        "from foundry_trace.restore import pipeline\n",
        "import foundry_trace.native\n",
    ],
)
def test_a_name_that_does_not_exist_is_caught(tmp_path: Path, source: str) -> None:
    planted = tmp_path / "planted.py"
    planted.write_text(source)
    assert unresolved_names(planted)


def test_names_that_exist_pass(tmp_path: Path) -> None:
    planted = tmp_path / "fine.py"
    planted.write_text("import foundry_trace as ft\nfrom foundry_trace.archive import Archive\nft.load\nimport foundry_trace.restore\n")
    assert unresolved_names(planted) == []
