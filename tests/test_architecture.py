"""The package's structure: no import cycles (scripts/import_graph.py draws the graph in docs/design.md)."""

import sys

from helpers import ROOT

sys.path.insert(0, str(ROOT / "scripts"))
from import_graph import find_cycles, mermaid, module_graph  # noqa: E402

sys.path.remove(str(ROOT / "scripts"))


def test_no_import_cycles():
    assert find_cycles(module_graph()) == []


def test_cycle_finder_finds_a_cycle():
    assert find_cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": set()}) == [["a", "b", "c", "a"]]


def test_the_design_document_shows_the_current_graph():
    assert mermaid(module_graph()) in (ROOT / "docs" / "design.md").read_text()
