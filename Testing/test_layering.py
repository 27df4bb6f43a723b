"""The three layers stay separate: the core never imports slicer/qt/vtk/ctk, and the MRML bridge never
reaches for the application (slicer.app, slicer.mrmlScene, slicer.modules).

Static checks on the source (``ast`` for imports, ``tokenize`` for attribute use), so docstrings and
comments that *mention* the rules do not count, while an import hidden inside a function does.
"""

from __future__ import annotations

import ast
import io
import tokenize
from pathlib import Path

LIB = Path(__file__).resolve().parents[1] / "MedSegAILib"
FORBIDDEN_IN_CORE = {"slicer", "qt", "vtk", "ctk", "vtkmodules"}
FORBIDDEN_IN_MRML = {"app", "mrmlScene", "modules"}


def _sources(folder: Path):
    return sorted(p for p in folder.rglob("*.py") if "__pycache__" not in p.parts)


def forbidden_imports(source: str) -> list[str]:
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [node.module]
        else:
            continue
        found += [f"line {node.lineno}: {n}" for n in names if n.split(".")[0] in FORBIDDEN_IN_CORE]
    return found


def application_uses(source: str) -> list[str]:
    toks = [
        t
        for t in tokenize.generate_tokens(io.StringIO(source).readline)
        if t.type not in (tokenize.COMMENT, tokenize.NL, tokenize.NEWLINE, tokenize.INDENT, tokenize.DEDENT)
    ]
    found = []
    for a, b, c in zip(toks, toks[1:], toks[2:]):
        if a.type == tokenize.NAME and a.string == "slicer" and b.string == "." and c.string in FORBIDDEN_IN_MRML:
            found.append(f"line {a.start[0]}: slicer.{c.string}")
    return found


def test_core_never_imports_slicer_qt_vtk_ctk():
    offenders = []
    for path in _sources(LIB):
        if "mrml" in path.relative_to(LIB).parts:
            continue
        offenders += [f"{path.relative_to(LIB.parent)} {hit}" for hit in forbidden_imports(path.read_text("utf-8"))]
    assert not offenders, "the core must not import slicer/qt/vtk/ctk:\n" + "\n".join(offenders)


def test_mrml_bridge_never_uses_the_application():
    offenders = []
    for path in _sources(LIB / "mrml"):
        offenders += [f"{path.relative_to(LIB.parent)} {hit}" for hit in application_uses(path.read_text("utf-8"))]
    assert not offenders, "the MRML bridge takes the scene as an argument:\n" + "\n".join(offenders)


def test_the_checks_catch_offenders():
    assert forbidden_imports("import slicer\n") and forbidden_imports("from vtk.util import numpy_support\n")
    assert forbidden_imports("def f():\n    import qt\n") and forbidden_imports("import ctk as c\n")
    assert not forbidden_imports("import vtkish\nfrom . import slicer_like\n'''import slicer'''\n")
    assert application_uses("scene = slicer.mrmlScene\n") and application_uses("slicer.modules.x.logic()\n")
    assert application_uses("w = slicer . app\n")
    assert not application_uses("s = slicer.vtkMRMLScene()  # not slicer.app\n'''slicer.mrmlScene'''\n")
