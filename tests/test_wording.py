"""edge_retina.wording: counts for people, from a leaf module every layer can import."""
from __future__ import annotations

import ast
from pathlib import Path

import edge_retina.wording
from edge_retina.wording import plural

OUR_PACKAGES = {"edge_retina", "devices", "firmware_bridge", "calibration", "converters"}


def test_plural_counts_in_the_singular_only_for_one():
    assert plural(1, "image") == "1 image"
    assert plural(0, "image") == "0 images" and plural(3, "image") == "3 images"
    assert plural(1, "entry", "entries") == "1 entry" and plural(2, "entry", "entries") == "2 entries"


def test_wording_imports_nothing_of_ours():
    """So the backends, adaptation and the console layer (which imports the screener, which imports
    them) can all use it without an import cycle."""
    tree = ast.parse(Path(edge_retina.wording.__file__).read_text())
    imported = {alias.name for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names}
    imported |= {"." * node.level + (node.module or "") for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)}
    assert imported <= {"__future__"}, imported
    assert not {name.split(".")[0] for name in imported} & OUR_PACKAGES
