"""DESIGN.md and README.md name files and functions; these tests keep those names true as code moves.

The "where do I find X" table is the newcomer's map: each `path: Name` or `path: Class.method` in it
must be a file of the repository that defines that name. Every other repository path the two pages
name (in backticks, or as an entry of DESIGN.md's layout block) must exist.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DESIGN = (ROOT / "DESIGN.md").read_text(encoding="utf-8")
README = (ROOT / "README.md").read_text(encoding="utf-8")
TOP_DIRS = ("harness", "objectives", "suites", "bench", "examples", "tests")
# `harness/suite.py: SuiteRunner.compute_cell`: a file, then a dotted name defined in it
FILE_NAME = re.compile(r"`((?:%s)/[\w./-]+\.py): ([A-Za-z_][\w.]*)`" % "|".join(TOP_DIRS))
REPO_PATH = re.compile(r"`((?:%s)/[\w./-]*)`" % "|".join(TOP_DIRS))


def _where_table() -> str:
    start = DESIGN.index("## Where do I find X")
    end = DESIGN.index("\n## ", start + 1)
    return DESIGN[start:end]


def _defines(path: Path, dotted: str) -> bool:
    """`dotted` (`func`, `Class`, `Class.method`) is defined (def, class or assignment) in the module."""
    scope: list[ast.stmt] = ast.parse(path.read_text(encoding="utf-8")).body
    for part in dotted.split("."):
        found = None
        for node in scope:
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)) and node.name == part:
                found = node
            elif isinstance(node, (ast.Assign, ast.AnnAssign)):
                targets = node.targets if isinstance(node, ast.Assign) else [node.target]
                if any(isinstance(t, ast.Name) and t.id == part for t in targets):
                    found = node
        if found is None:
            return False
        scope = getattr(found, "body", [])
    return True


def test_where_table_names_functions_that_exist():
    pairs = FILE_NAME.findall(_where_table())
    assert len(pairs) >= 8, f"the table's `file: function` entries were not found (parsed {pairs})"
    missing = [f"{file}: {name}" for file, name in pairs
               if not (ROOT / file).is_file() or not _defines(ROOT / file, name)]
    assert not missing, "DESIGN.md's 'where do I find X' table names what is not there: " + ", ".join(missing)


@pytest.mark.parametrize("page,text", [("DESIGN.md", DESIGN), ("README.md", README)])
def test_named_repository_paths_exist(page, text):
    paths = {p.rstrip("/.") for p in REPO_PATH.findall(text)} | {f for f, _ in FILE_NAME.findall(text)}
    assert paths, f"no repository path found in {page}"
    missing = sorted(p for p in paths if not (ROOT / p).exists())
    assert not missing, f"{page} names paths that do not exist: {missing}"


def test_design_layout_entries_exist():
    block = DESIGN[DESIGN.index("## Layout"):]
    block = block[block.index("```") + 3:]
    block = block[:block.index("```")]
    root, checked, missing = None, 0, []
    for line in block.splitlines():
        top = re.match(r"^(\w[\w.-]*/)\s", line)
        entry = re.match(r"^  ([\w./-]+\.\w+|[\w-]+/)\s", line)
        if top:
            root = top.group(1)
            checked += 1
            if not (ROOT / root).is_dir():
                missing.append(root)
        elif entry and root:
            checked += 1
            if not (ROOT / root / entry.group(1)).exists():
                missing.append(root + entry.group(1))
    assert checked >= 20, f"DESIGN.md's layout block was not parsed ({checked} entries)"
    assert not missing, f"DESIGN.md's layout names files that do not exist: {missing}"
