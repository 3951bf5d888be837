"""The layer map of docs/DESIGN.md holds: every ``temarec`` import in src/ goes to its own part or to a lower layer.

A part is a top-level module or package of ``temarec`` (``data``, ``models``, ``runs``, ...). Parts on one layer do
not import each other (``models`` and ``evaluation`` are siblings: evaluation scores any object with
``score_domain`` and never imports a model). Imports inside functions count as much as those at the top.
"""

from __future__ import annotations

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src" / "temarec"

# Keep in step with the map at the top of docs/DESIGN.md.
LAYERS = [
    {"__init__", "fileio", "extras", "cache", "config", "significance"},
    {"data"},
    {"embeddings", "tracking"},
    {"tags", "features"},
    {"models", "evaluation"},
    {"checkpoint"},
    {"train"},
    {"runs"},
    {"grid", "serve"},
    {"ablations", "quickstart"},
    {"cli"},
    {"__main__"},
]
# config validates model names and model.<name> sections through the registry, a leaf that imports no model itself
ALLOWED = {("config", "models.registry")}


def layer_of(part: str) -> int:
    for i, parts in enumerate(LAYERS):
        if part in parts:
            return i
    raise AssertionError(f"temarec.{part} is on no layer: add it to LAYERS here and to the map in docs/DESIGN.md")


def imports(path: Path) -> list[tuple[int, str]]:
    """(line, "part.rest") of every temarec import in a file."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module] if node.module != "temarec" else [f"temarec.{a.name}" for a in node.names]
        elif isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        else:
            continue
        found += [(node.lineno, n[len("temarec."):]) for n in names if n.startswith("temarec.")]
    return found


def test_every_import_goes_down_the_layer_map():
    wrong = []
    for path in sorted(SRC.rglob("*.py")):
        rel = path.relative_to(SRC).with_suffix("")
        part = rel.parts[0]
        for line, target in imports(path):
            other = target.split(".")[0]
            if not (SRC / other).is_dir() and not (SRC / f"{other}.py").is_file():
                other = "__init__"  # a name of the package itself (from temarec import __version__)
            if other == part or (part, target) in ALLOWED:
                continue
            if layer_of(other) >= layer_of(part):
                wrong.append(f"{rel}.py:{line} imports temarec.{target} ({part} is layer {layer_of(part)}, "
                             f"{other} layer {layer_of(other)})")
    assert not wrong, "imports against docs/DESIGN.md's layer map:\n" + "\n".join(wrong)


def test_the_check_sees_imports_inside_functions(tmp_path):
    probe = tmp_path / "probe.py"
    probe.write_text("def f():\n    from temarec.train import fit\n")
    assert imports(probe) == [(2, "train")]
