"""Static checks of the Slicer extension layer (``MedSegAI/`` and the top-level CMakeLists.txt).

They run with plain pytest, without 3D Slicer: Python files compile, ``.ui`` files are Qt Designer XML,
every ``self.ui.<name>`` the code uses exists in its ``.ui`` file, every ``SlicerParameterName`` is a field
of a parameter-node wrapper (and a widget that can show its type), every module defines its Module,
Widget, Logic and Test classes, the CMake lists and the files on disk agree, icons exist, the
requirements never touch Slicer's own packages, and the widget layer stays thin.

Each check is a function ``check_*(root) -> list of problems``; the ``test_*_can_fail`` tests break a
temporary copy of the extension and assert that the check notices.
"""

from __future__ import annotations

import ast
import os
import py_compile
import re
import shutil
import struct
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
RAW_URL_PREFIX = "https://raw.githubusercontent.com/medsegai/SlicerMedSegAI/main/"
#: packages Slicer ships (or torch, which only PyTorchUtils may install): never in requirements.txt
PROTECTED = {"numpy", "simpleitk", "vtk", "scipy", "pydicom", "requests", "torch", "torchvision", "packaging"}
#: image-processing libraries the thin widget layer must not import (that work belongs in MedSegAILib)
HEAVY_IMPORTS = {"numpy", "scipy", "SimpleITK", "skimage", "torch", "nibabel"}


# ============================================================================================ helpers
def ext_dir(root: Path) -> Path:
    return root / "MedSegAI"


def py_files(root: Path) -> list[Path]:
    return sorted(p for p in ext_dir(root).rglob("*.py") if "__pycache__" not in p.parts)


def ui_files(root: Path) -> list[Path]:
    return sorted((ext_dir(root) / "Resources" / "UI").glob("*.ui"))


def cmake_list(text: str, variable: str) -> list[str]:
    m = re.search(rf"set\(\s*{variable}\s+(.*?)\)", text, re.S)
    return [] if m is None else [w for w in re.split(r"\s+", re.sub(r"#.*", "", m.group(1)).strip()) if w]


def listed_modules(root: Path) -> list[str]:
    return cmake_list((ext_dir(root) / "CMakeLists.txt").read_text(), "MEDSEGAI_MODULES")


def macro_arguments(text: str, macro: str) -> list[list[str]]:
    """Whitespace-split arguments of every call of ``macro`` (no nested parentheses in our files)."""
    calls = []
    for m in re.finditer(rf"{macro}\s*\((.*?)\)", text, re.S):
        body = re.sub(r"#.*", "", m.group(1))
        calls.append([w.strip('"') for w in re.split(r"\s+", body.strip()) if w])
    return calls


def keyword_values(args: list[str], keyword: str, keywords: set[str]) -> list[str]:
    out, on = [], False
    for a in args:
        if a in keywords:
            on = a == keyword
        elif on:
            out.append(a)
    return out


def ui_object_names(path: Path) -> set[str]:
    tree = ET.parse(path)
    names = {w.get("name") for w in tree.iter("widget")}
    names |= {w.get("name") for w in tree.iter("layout")}
    return {n for n in names if n}


def ui_parameter_bindings(path: Path) -> dict[str, str]:
    """``{parameter name: widget class}`` from the SlicerParameterName dynamic properties."""
    out = {}
    for w in ET.parse(path).iter("widget"):
        for prop in w.findall("property"):
            if prop.get("name") == "SlicerParameterName":
                s = prop.find("string")
                out[(s.text or "").strip() if s is not None else ""] = w.get("class")
    return out


def wrapper_fields(root: Path) -> dict[str, str]:
    """``{field: annotation source}`` of every ``@parameterNodeWrapper`` class under MedSegAI/."""
    fields = {}
    for path in py_files(root):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            if isinstance(node, ast.ClassDef) and any(
                (isinstance(d, ast.Name) and d.id == "parameterNodeWrapper")
                or (isinstance(d, ast.Call) and getattr(d.func, "id", "") == "parameterNodeWrapper")
                for d in node.decorator_list
            ):
                for stmt in node.body:
                    if isinstance(stmt, ast.AnnAssign) and isinstance(stmt.target, ast.Name):
                        fields[stmt.target.id] = ast.unparse(stmt.annotation)
    return fields


def ui_attribute_uses(tree: ast.AST) -> dict[str, int]:
    """Names used as ``self.ui.<name>`` or ``ui.<name>``, with their first line."""
    uses = {}
    for node in ast.walk(tree):
        if not isinstance(node, ast.Attribute):
            continue
        v = node.value
        if (isinstance(v, ast.Attribute) and v.attr == "ui" and isinstance(v.value, ast.Name) and v.value.id == "self") \
                or (isinstance(v, ast.Name) and v.id == "ui"):
            uses.setdefault(node.attr, node.lineno)
    return uses


def ui_files_for(root: Path, path: Path, tree: ast.AST) -> list[Path]:
    """The .ui files a Python file's ``self.ui`` comes from: .ui names in its string literals, its own
    ``Resources/UI/<stem>.ui``, and the shared base .ui for widgets deriving from MedSegAIWidgetBase."""
    ui_dir = ext_dir(root) / "Resources" / "UI"
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and node.value.endswith(".ui"):
            found.append(ui_dir / Path(node.value).name)
        if isinstance(node, ast.ClassDef) and any(getattr(b, "id", "") == "MedSegAIWidgetBase" for b in node.bases):
            found.append(ui_dir / "MedSegAIBase.ui")
    found.append(ui_dir / f"{path.stem}.ui")
    return sorted({p for p in found if p.is_file()})


def png_size(path: Path) -> tuple[int, int] | None:
    data = path.read_bytes()[:24]
    if len(data) < 24 or data[:8] != b"\x89PNG\r\n\x1a\n" or data[12:16] != b"IHDR":
        return None
    return struct.unpack(">II", data[16:24])


# ============================================================================================ checks
def check_python_compiles(root: Path, tmp: Path) -> list[str]:
    problems = []
    for i, path in enumerate(py_files(root)):
        try:
            py_compile.compile(str(path), cfile=str(tmp / f"c{i}.pyc"), doraise=True)
        except py_compile.PyCompileError as exc:
            problems.append(f"{path.relative_to(root)} does not compile: {exc.msg.strip()}")
    return problems


def check_ui_files(root: Path) -> list[str]:
    problems = []
    qt_builtin = re.compile(r"^(Q[A-Z]\w*|Line|Spacer)$")
    for path in ui_files(root):
        rel = path.relative_to(root)
        try:
            tree = ET.parse(path)
        except ET.ParseError as exc:
            problems.append(f"{rel} is not well-formed XML: {exc}")
            continue
        top = tree.getroot()
        if top.tag != "ui" or top.get("version") != "4.0":
            problems.append(f"{rel}: root element is <{top.tag} version={top.get('version')!r}>, not <ui version='4.0'>")
            continue
        main = top.find("widget")
        cls = top.find("class")
        if main is None or cls is None or (cls.text or "").strip() != main.get("name"):
            problems.append(f"{rel}: needs <class> naming its top-level <widget>")
        if main is not None and main.get("class") != "qMRMLWidget":
            problems.append(f"{rel}: the top-level widget must be a qMRMLWidget (it passes the scene to MRML widgets)")
        declared = {(c.findtext("class") or "").strip() for c in top.iter("customwidget")}
        names = []
        for w in top.iter("widget"):
            if not w.get("name") or not w.get("class"):
                problems.append(f"{rel}: a <widget> lacks class or name")
                continue
            names.append(w.get("name"))
            if not qt_builtin.match(w.get("class")) and w.get("class") not in declared:
                problems.append(f"{rel}: custom widget class {w.get('class')} is not declared in <customwidgets>")
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            problems.append(f"{rel}: duplicate object names {duplicates}")
        for conn in top.iter("connection"):
            for role in ("sender", "receiver"):
                if (conn.findtext(role) or "").strip() not in names:
                    problems.append(f"{rel}: connection {role} {conn.findtext(role)!r} is not a widget")
    return problems


def check_ui_names_used_in_code(root: Path) -> list[str]:
    problems = []
    for path in py_files(root):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        uses = ui_attribute_uses(tree)
        if not uses:
            continue
        sources = ui_files_for(root, path, tree)
        if not sources:
            problems.append(f"{path.relative_to(root)} uses self.ui but no .ui file could be associated with it")
            continue
        known = set().union(*(ui_object_names(p) for p in sources))
        for name, line in sorted(uses.items()):
            if name not in known:
                problems.append(f"{path.relative_to(root)}:{line}: self.ui.{name} is not an object in "
                                f"{', '.join(p.name for p in sources)}")
    return problems


_WIDGETS_FOR_TYPE = {
    "node": {"qMRMLNodeComboBox", "qMRMLSubjectHierarchyTreeView"},
    "choice": {"QComboBox"},
    "str": {"QLineEdit", "QTextEdit", "QComboBox"},
    "float": {"QDoubleSpinBox", "ctkSliderWidget"},
    "int": {"QSpinBox", "QSlider"},
    "bool": {"QCheckBox", "QPushButton"},
    "Path": {"ctkPathLineEdit", "ctkDirectoryButton"},
}


def _type_kind(annotation: str) -> str | None:
    if "Choice(" in annotation:
        return "choice"
    if re.search(r"\bvtkMRML\w*Node\b", annotation):
        return "node"
    for kind in ("float", "int", "bool", "str", "Path"):
        if re.search(rf"\b{kind}\b", annotation):
            return kind
    return None


def check_parameter_bindings(root: Path) -> list[str]:
    problems = []
    fields = wrapper_fields(root)
    if not fields:
        problems.append("no @parameterNodeWrapper class found under MedSegAI/")
    for path in ui_files(root):
        for name, widget_class in ui_parameter_bindings(path).items():
            top = name.split(".")[0]
            if top not in fields:
                problems.append(f"{path.name}: SlicerParameterName {name!r} is not a field of a parameter-node "
                                f"wrapper (fields: {sorted(fields)})")
                continue
            kind = _type_kind(fields[top])
            if kind and widget_class not in _WIDGETS_FOR_TYPE[kind]:
                problems.append(f"{path.name}: {widget_class} cannot show parameter {name!r} ({fields[top]})")
    return problems


def check_module_classes(root: Path) -> list[str]:
    problems = []
    for module in listed_modules(root):
        path = ext_dir(root) / f"{module}.py"
        if not path.is_file():
            continue  # reported by check_cmake_consistency
        tree = ast.parse(path.read_text(encoding="utf-8"))
        classes = {n.name: n for n in tree.body if isinstance(n, ast.ClassDef)}
        for suffix, base_hint in (("", "Module"), ("Widget", "Widget"), ("Logic", "Logic"), ("Test", "Test")):
            cls = classes.get(module + suffix)
            if cls is None:
                problems.append(f"{path.name}: class {module + suffix} is missing")
            elif not any(base_hint in ast.unparse(b) for b in cls.bases):
                problems.append(f"{path.name}: {module + suffix} should derive from a {base_hint} base class")
        widget = classes.get(module + "Widget")
        if widget is not None and "LOGIC_CLASS" not in ast.unparse(widget) and "ScriptedLoadableModuleWidget" not in \
                ast.unparse(widget):
            problems.append(f"{path.name}: {module}Widget does not name its LOGIC_CLASS")
        logic = classes.get(module + "Logic")
        if logic is not None and "TASK_ID" not in ast.unparse(logic):
            problems.append(f"{path.name}: {module}Logic does not set TASK_ID")
    return problems


def check_cmake_consistency(root: Path) -> list[str]:
    problems = []
    cmake_path = ext_dir(root) / "CMakeLists.txt"
    text = cmake_path.read_text()
    modules = listed_modules(root)
    if not modules:
        problems.append("MedSegAI/CMakeLists.txt: set(MEDSEGAI_MODULES ...) is empty or missing")
    on_disk = {p.stem for p in ext_dir(root).glob("*.py")}
    for m in modules:
        if m not in on_disk:
            problems.append(f"module {m} is listed in MedSegAI/CMakeLists.txt but MedSegAI/{m}.py does not exist")
    for m in sorted(on_disk - set(modules)):
        problems.append(f"MedSegAI/{m}.py is not listed in MEDSEGAI_MODULES of MedSegAI/CMakeLists.txt")
    keywords = {"NAME", "SCRIPTS", "RESOURCES", "WITH_GENERIC_TESTS", "WITH_SUBDIR", "VERBOSE"}
    listed_scripts = set()
    for args in macro_arguments(text, "slicerMacroBuildScriptedModule"):
        for kw in ("SCRIPTS", "RESOURCES"):
            for value in keyword_values(args, kw, keywords):
                if "${" in value:
                    continue
                if not (ext_dir(root) / value).is_file():
                    problems.append(f"MedSegAI/CMakeLists.txt lists {kw} {value}, which does not exist")
                if kw == "SCRIPTS":
                    listed_scripts.add(value)
    for path in py_files(root):
        rel = path.relative_to(ext_dir(root)).as_posix()
        if "/" in rel and not rel.startswith("Testing/") and rel not in listed_scripts:
            problems.append(f"MedSegAI/{rel} is not in any SCRIPTS list of MedSegAI/CMakeLists.txt (not installed)")
    if "slicer_add_python_unittest" not in (ext_dir(root) / "Testing" / "Python" / "CMakeLists.txt").read_text():
        problems.append("MedSegAI/Testing/Python/CMakeLists.txt does not register the self-tests")
    top = (root / "CMakeLists.txt").read_text()
    for needed in ("project(MedSegAI)", "EXTENSION_HOMEPAGE", 'EXTENSION_CATEGORY "Segmentation"',
                   "EXTENSION_CONTRIBUTORS", "EXTENSION_DESCRIPTION", "EXTENSION_ICONURL", "EXTENSION_SCREENSHOTURLS",
                   'EXTENSION_DEPENDS "PyTorch"', "find_package(Slicer REQUIRED)", "include(${Slicer_USE_FILE})",
                   "add_subdirectory(MedSegAI)", "include(${Slicer_EXTENSION_GENERATE_CONFIG})",
                   "include(${Slicer_EXTENSION_CPACK})"):
        if needed not in top:
            problems.append(f"CMakeLists.txt lacks {needed}")
    return problems


def check_icons(root: Path) -> list[str]:
    problems = []
    icons = [ext_dir(root) / "Resources" / "Icons" / f"{m}.png" for m in listed_modules(root)]
    top = (root / "CMakeLists.txt").read_text()
    m = re.search(r'set\(EXTENSION_ICONURL\s+"([^"]+)"', top)
    if m is None or not m.group(1).startswith(RAW_URL_PREFIX):
        problems.append(f"EXTENSION_ICONURL must be a raw URL under {RAW_URL_PREFIX}")
    else:
        icons.append(root / m.group(1)[len(RAW_URL_PREFIX):])
    for path in py_files(root):  # icons named in code, e.g. "Icons/X.png"
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Constant) and isinstance(node.value, str) and re.search(r"Icons/\w+\.png$", node.value):
                icons.append(ext_dir(root) / "Resources" / "Icons" / Path(node.value).name)
    for icon in icons:
        if not icon.is_file():
            problems.append(f"icon {icon.relative_to(root)} does not exist")
            continue
        size = png_size(icon)
        if size is None:
            problems.append(f"icon {icon.relative_to(root)} is not a PNG")
        elif size != (128, 128):
            problems.append(f"icon {icon.relative_to(root)} is {size[0]}x{size[1]}, not 128x128")
    return problems


def check_requirements(root: Path) -> list[str]:
    problems = []
    path = ext_dir(root) / "Resources" / "requirements.txt"
    if not path.is_file():
        return ["MedSegAI/Resources/requirements.txt is missing"]
    for line in path.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        name = re.split(r"[<>=!~;\[ ]", line, maxsplit=1)[0].strip().lower()
        if name in PROTECTED:
            problems.append(f"requirements.txt must not list {name}: Slicer ships it (torch: PyTorchUtils only)")
    return problems


def check_thin_layer(root: Path) -> list[str]:
    """No image-processing library imported at module level in the widget layer."""
    problems = []
    for path in py_files(root):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in tree.body:
            names = []
            if isinstance(node, ast.Import):
                names = [a.name.split(".")[0] for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module.split(".")[0]]
            for n in names:
                if n in HEAVY_IMPORTS:
                    problems.append(f"{path.relative_to(root)}:{node.lineno}: imports {n}; image processing belongs "
                                    f"in MedSegAILib, not in the Slicer widget layer")
    return problems


#: the Fine-tune section shared by every module: its panel, its .ui, and the widgets the panel must bind (class)
FINETUNE_PANEL = "MedSegAICommon/finetunePanel.py"
FINETUNE_UI = "Resources/UI/MedSegAIFinetune.ui"
FINETUNE_WIDGETS = {
    "finetuneCollapsibleButton": "ctkCollapsibleButton", "pairsTableWidget": "QTableWidget",
    "addPairButton": "QPushButton", "removePairButton": "QPushButton", "findPairsButton": "QPushButton",
    "epochsSpinBox": "QSpinBox", "minutesSpinBox": "QDoubleSpinBox", "learningRateSpinBox": "QDoubleSpinBox",
    "validationShareSpinBox": "QSpinBox", "augmentCheckBox": "QCheckBox", "modelNameLineEdit": "QLineEdit",
    "finetuneButton": "QPushButton", "stopButton": "QPushButton", "finetuneStatusLabel": "QLabel",
    "summaryLabel": "QLabel", "exportModelButton": "QPushButton", "importModelButton": "QPushButton",
    "deleteModelButton": "QPushButton", "uncertaintyCheckBox": "QCheckBox", "uncertaintyRunsSpinBox": "QSpinBox",
}


def _calls(tree: ast.AST, name: str) -> bool:
    return any(isinstance(n, ast.Call) and getattr(n.func, "id", getattr(n.func, "attr", "")) == name
               for n in ast.walk(tree))


def check_finetune_panel(root: Path) -> list[str]:
    """The Fine-tune section: the panel binds only names of its own .ui, the .ui has the widgets the issue asks
    for, the panel imports no image-processing library even inside functions (it only binds; the work is in
    MedSegAILib), the shared widget creates it (so every module has it), and CMake installs both files."""
    problems = []
    panel, ui = ext_dir(root) / FINETUNE_PANEL, ext_dir(root) / FINETUNE_UI
    for path in (panel, ui):
        if not path.is_file():
            return [f"MedSegAI/{path.relative_to(ext_dir(root)).as_posix()} is missing"]
    tree = ast.parse(panel.read_text(encoding="utf-8"))
    sources = ui_files_for(root, panel, tree)
    if sources != [ui]:
        problems.append(f"{FINETUNE_PANEL} must take its self.ui from {ui.name} only; found {[p.name for p in sources]}")
    try:
        widgets = {w.get("name"): w.get("class") for w in ET.parse(ui).iter("widget")}
    except ET.ParseError as exc:
        return problems + [f"{ui.name} is not well-formed XML: {exc}"]
    uses = ui_attribute_uses(tree)
    problems += [f"{FINETUNE_PANEL}:{line}: self.ui.{name} is not an object in {ui.name}"
                 for name, line in sorted(uses.items()) if name not in widgets]
    for name, cls in FINETUNE_WIDGETS.items():
        if widgets.get(name) != cls:
            problems.append(f"{ui.name}: needs a {cls} named {name!r} (found {widgets.get(name)})")
        elif name not in uses and cls != "ctkCollapsibleButton":  # the section itself needs no binding
            problems.append(f"{FINETUNE_PANEL} never binds self.ui.{name}")
    for node in ast.walk(tree):
        names = []
        if isinstance(node, ast.Import):
            names = [a.name.split(".")[0] for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module:
            names = [node.module.split(".")[0]]
        problems += [f"{FINETUNE_PANEL}:{node.lineno}: imports {n}; the panel only binds widgets (the work belongs "
                     "in MedSegAILib)" for n in names if n in HEAVY_IMPORTS]
    base = ext_dir(root) / "MedSegAICommon" / "widgetBase.py"
    if not _calls(ast.parse(base.read_text(encoding="utf-8")), "FinetunePanel"):
        problems.append("MedSegAICommon/widgetBase.py does not create the FinetunePanel: modules would lack the "
                        "Fine-tune section")
    text = (ext_dir(root) / "CMakeLists.txt").read_text()
    keywords = {"NAME", "SCRIPTS", "RESOURCES", "WITH_GENERIC_TESTS", "WITH_SUBDIR", "VERBOSE"}
    resources = {v for args in macro_arguments(text, "slicerMacroBuildScriptedModule")
                 for v in keyword_values(args, "RESOURCES", keywords)}
    if FINETUNE_UI not in resources:
        problems.append(f"MedSegAI/CMakeLists.txt does not install {FINETUNE_UI} (RESOURCES)")
    return problems


_CMAKE_STUBS = r"""
cmake_minimum_required(VERSION 3.16)
project(MedSegAIStubBuild NONE)
# Stand-ins for Slicer's macros with the same path logic (CTK's ctkMacroCompilePythonScript copies
# <SOURCE_DIR>/<file> to <DESTINATION_DIR>/<file>; slicerMacroBuildScriptedModule passes no SOURCE_DIR).
set(Slicer_QTSCRIPTEDMODULES_LIB_DIR lib/Slicer-5.12/qt-scripted-modules)
set(Slicer_INSTALL_QTSCRIPTEDMODULES_LIB_DIR ${Slicer_QTSCRIPTEDMODULES_LIB_DIR})
set(BUILD_TESTING ON)
set(MANIFEST ${CMAKE_BINARY_DIR}/manifest.txt)
file(WRITE ${MANIFEST} "")
macro(ctkMacroCompilePythonScript)
  cmake_parse_arguments(MY "NO_INSTALL_SUBDIR;GLOBAL_TARGET" "TARGET_NAME;SOURCE_DIR;DESTINATION_DIR;INSTALL_DIR"
    "SCRIPTS;RESOURCES" ${ARGN})
  if(NOT MY_SOURCE_DIR)
    set(MY_SOURCE_DIR ${CMAKE_CURRENT_SOURCE_DIR})
  endif()
  foreach(f ${MY_SCRIPTS} ${MY_RESOURCES})
    file(APPEND ${MANIFEST} "copy|${MY_SOURCE_DIR}/${f}|${MY_DESTINATION_DIR}/${f}\n")
  endforeach()
endmacro()
macro(slicerMacroBuildScriptedModule)
  cmake_parse_arguments(MY_SLICER "WITH_GENERIC_TESTS;WITH_SUBDIR;VERBOSE" "NAME" "SCRIPTS;RESOURCES" ${ARGN})
  if(MY_SLICER_UNPARSED_ARGUMENTS)
    message(FATAL_ERROR "Unknown keywords given to slicerMacroBuildScriptedModule(): ${MY_SLICER_UNPARSED_ARGUMENTS}")
  endif()
  foreach(f ${MY_SLICER_SCRIPTS} ${MY_SLICER_RESOURCES})
    if(NOT EXISTS ${CMAKE_CURRENT_SOURCE_DIR}/${f})
      message(FATAL_ERROR "slicerMacroBuildScriptedModule given nonexistent file '${f}'")
    endif()
  endforeach()
  ctkMacroCompilePythonScript(TARGET_NAME ${MY_SLICER_NAME} SCRIPTS "${MY_SLICER_SCRIPTS}"
    RESOURCES "${MY_SLICER_RESOURCES}" DESTINATION_DIR ${CMAKE_BINARY_DIR}/${Slicer_QTSCRIPTEDMODULES_LIB_DIR}
    INSTALL_DIR ${Slicer_INSTALL_QTSCRIPTEDMODULES_LIB_DIR} NO_INSTALL_SUBDIR)
  file(APPEND ${MANIFEST} "module|${MY_SLICER_NAME}|${MY_SLICER_WITH_GENERIC_TESTS}\n")
endmacro()
macro(slicer_add_python_unittest)
  cmake_parse_arguments(MY "" "SCRIPT;TESTNAME_PREFIX" "SLICER_ARGS" ${ARGN})
  file(APPEND ${MANIFEST} "unittest|${MY_SCRIPT}|\n")
endmacro()
add_subdirectory(@EXT@ MedSegAI)
"""


def cmake_layout(root: Path, work: Path) -> tuple[dict[str, Path], set[str], list[str]]:
    """Configure ``root/MedSegAI/CMakeLists.txt`` with stand-in Slicer macros: ``({installed path relative to
    qt-scripted-modules: source}, built module names, unit-test scripts)``."""
    import subprocess

    src = work / "stub"
    src.mkdir(parents=True)
    (src / "CMakeLists.txt").write_text(_CMAKE_STUBS.replace("@EXT@", ext_dir(root).as_posix()))
    build = work / "build"
    r = subprocess.run(["cmake", "-S", str(src), "-B", str(build)], capture_output=True, text=True, timeout=120)
    if r.returncode != 0:
        raise AssertionError(f"cmake configure failed:\n{r.stdout}\n{r.stderr}")
    dest = (build / "lib/Slicer-5.12/qt-scripted-modules").resolve()
    copies, modules, tests = {}, set(), []
    for line in (build / "manifest.txt").read_text().splitlines():
        kind, a, b = line.split("|")
        if kind == "copy":
            target = Path(os.path.normpath(b))
            rel = target.relative_to(dest) if target.is_relative_to(dest) else Path("..") / target.name
            copies[rel.as_posix()] = Path(a)
        elif kind == "module":
            modules.add(a)
        else:
            tests.append(a)
    return copies, modules, tests


# ============================================================================================ tests on the tree
def test_python_files_compile(tmp_path):
    assert py_files(ROOT), "no Python files under MedSegAI/"
    assert check_python_compiles(ROOT, tmp_path) == []


def test_ui_files_are_qt_designer_files():
    assert ui_files(ROOT), "no .ui files under MedSegAI/Resources/UI"
    assert check_ui_files(ROOT) == []


def test_ui_names_used_in_code_exist():
    assert check_ui_names_used_in_code(ROOT) == []


def test_parameter_names_match_the_wrapper():
    assert check_parameter_bindings(ROOT) == []


def test_modules_define_module_widget_logic_test():
    assert check_module_classes(ROOT) == []


def test_cmake_lists_match_the_files():
    assert check_cmake_consistency(ROOT) == []


def test_icons_exist():
    assert check_icons(ROOT) == []


def test_requirements_do_not_replace_slicer_packages():
    assert check_requirements(ROOT) == []


def test_widget_layer_is_thin():
    assert check_thin_layer(ROOT) == []


def test_finetune_panel_binds_its_ui_and_stays_thin():
    assert check_finetune_panel(ROOT) == []


# ============================================================================================ the checks can fail
@pytest.fixture
def broken(tmp_path):
    """A copy of the extension layer (MedSegAI/ and CMakeLists.txt) to break."""
    copy = tmp_path / "ext"
    copy.mkdir()
    shutil.copytree(ext_dir(ROOT), copy / "MedSegAI", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "CMakeLists.txt", copy / "CMakeLists.txt")
    (copy / "Resources" / "Icons").mkdir(parents=True)
    shutil.copy(ROOT / "Resources" / "Icons" / "MedSegAI.png", copy / "Resources" / "Icons" / "MedSegAI.png")
    assert check_cmake_consistency(copy) == [], "the pristine copy must pass"
    return copy


def _edit(path: Path, old: str, new: str) -> None:
    text = path.read_text(encoding="utf-8")
    assert old in text, f"{old!r} not in {path}"
    path.write_text(text.replace(old, new, 1), encoding="utf-8")


def first_module(root: Path) -> str:
    return listed_modules(root)[0]


def test_compile_check_can_fail(broken, tmp_path):
    (broken / "MedSegAI" / "MedSegAICommon" / "oops.py").write_text("def f(:\n    pass\n")
    assert any("oops.py does not compile" in p for p in check_python_compiles(broken, tmp_path))


def test_ui_check_can_fail(broken):
    base = broken / "MedSegAI" / "Resources" / "UI" / "MedSegAIBase.ui"
    _edit(base, "</ui>", "")
    assert any("not well-formed" in p for p in check_ui_files(broken))
    shutil.copy(ROOT / "MedSegAI" / "Resources" / "UI" / "MedSegAIBase.ui", base)
    _edit(base, '<widget class="QPushButton" name="cancelButton">', '<widget class="QPushButton" name="segmentButton">')
    assert any("duplicate object names ['segmentButton']" in p for p in check_ui_files(broken))


def test_ui_name_check_can_fail(broken):
    _edit(broken / "MedSegAI" / "Resources" / "UI" / "MedSegAIBase.ui", 'name="cancelButton"', 'name="stopButton"')
    problems = check_ui_names_used_in_code(broken)
    assert any("self.ui.cancelButton is not an object" in p for p in problems), problems
    module = broken / "MedSegAI" / f"{first_module(broken)}.py"
    module.write_text(module.read_text() + "\n\ndef _f(self):\n    return self.ui.noSuchWidget\n")
    assert any("self.ui.noSuchWidget" in p for p in check_ui_names_used_in_code(broken))


def test_parameter_binding_check_can_fail(broken):
    base = broken / "MedSegAI" / "Resources" / "UI" / "MedSegAIBase.ui"
    _edit(base, "<string>device</string>", "<string>computeDevice</string>")
    assert any("'computeDevice' is not a field" in p for p in check_parameter_bindings(broken))
    shutil.copy(ROOT / "MedSegAI" / "Resources" / "UI" / "MedSegAIBase.ui", base)
    _edit(base, '<widget class="QComboBox" name="deviceComboBox">', '<widget class="QCheckBox" name="deviceComboBox">')
    assert any("QCheckBox cannot show parameter 'device'" in p for p in check_parameter_bindings(broken))


def test_module_class_check_can_fail(broken):
    m = first_module(broken)
    _edit(broken / "MedSegAI" / f"{m}.py", f"class {m}Test(", f"class {m}Tests(")
    assert any(f"class {m}Test is missing" in p for p in check_module_classes(broken))


def test_cmake_check_can_fail(broken):
    (broken / "MedSegAI" / "Stray.py").write_text("x = 1\n")
    assert any("Stray.py is not listed" in p for p in check_cmake_consistency(broken))
    (broken / "MedSegAI" / "Stray.py").unlink()
    _edit(broken / "MedSegAI" / "CMakeLists.txt", "set(MEDSEGAI_MODULES\n", "set(MEDSEGAI_MODULES\n  Ghost\n")
    assert any("module Ghost is listed" in p for p in check_cmake_consistency(broken))
    (broken / "MedSegAI" / "MedSegAICommon" / "extra.py").write_text("x = 1\n")
    assert any("MedSegAICommon/extra.py is not in any SCRIPTS" in p for p in check_cmake_consistency(broken))


def test_icon_check_can_fail(broken):
    (broken / "MedSegAI" / "Resources" / "Icons" / f"{first_module(broken)}.png").unlink()
    assert any("does not exist" in p for p in check_icons(broken))
    (broken / "Resources" / "Icons" / "MedSegAI.png").write_bytes(b"not a png")
    assert any("MedSegAI.png is not a PNG" in p for p in check_icons(broken))


def test_requirements_check_can_fail(broken):
    req = broken / "MedSegAI" / "Resources" / "requirements.txt"
    req.write_text(req.read_text() + "numpy>=2\nSimpleITK\n")
    assert {"numpy", "simpleitk"} <= {p.split("list ")[1].split(":")[0] for p in check_requirements(broken)}


def test_finetune_panel_check_can_fail(broken):
    ui = broken / "MedSegAI" / FINETUNE_UI
    panel = broken / "MedSegAI" / FINETUNE_PANEL
    _edit(ui, 'name="stopButton"', 'name="haltButton"')
    problems = check_finetune_panel(broken)
    assert any("self.ui.stopButton is not an object" in p for p in problems), problems
    assert any("QPushButton named 'stopButton'" in p for p in problems), problems
    shutil.copy(ROOT / "MedSegAI" / FINETUNE_UI, ui)
    _edit(panel, "    def _options(self):\n", "    def _options(self):\n        import torch  # noqa\n")
    assert any("imports torch" in p for p in check_finetune_panel(broken))
    shutil.copy(ROOT / "MedSegAI" / FINETUNE_PANEL, panel)
    _edit(broken / "MedSegAI" / "MedSegAICommon" / "widgetBase.py", "FinetunePanel(self)", "None")
    assert any("does not create the FinetunePanel" in p for p in check_finetune_panel(broken))
    _edit(broken / "MedSegAI" / "CMakeLists.txt", f"    {FINETUNE_UI}\n", "")
    assert any(f"does not install {FINETUNE_UI}" in p for p in check_finetune_panel(broken))


def test_thin_layer_check_can_fail(broken):
    m = first_module(broken)
    _edit(broken / "MedSegAI" / f"{m}.py", "import slicer\n", "import numpy as np\nimport slicer\n")
    assert any("imports numpy" in p for p in check_thin_layer(broken))


# ============================================================================================ pure-Python helpers
@pytest.fixture
def common():
    sys.path.insert(0, str(ext_dir(ROOT)))
    sys.path.insert(0, str(ROOT))
    try:
        import MedSegAICommon.taskform as taskform
        import MedSegAICommon.worker as worker

        yield taskform, worker
    finally:
        sys.path.remove(str(ext_dir(ROOT)))
        sys.path.remove(str(ROOT))


def test_task_parameters_become_widgets(common):
    from dataclasses import dataclass

    from MedSegAILib.tasks.base import param

    taskform, _ = common

    @dataclass
    class Parameters:
        threshold: float = param(0.5, "cut-off", min=0.0, max=1.0)
        smoothing_mm: float = param(2.0, "kernel", min=0.0)
        keep_largest: bool = param(True, "largest component only")
        mode: str = param("fast", "speed", choices=("fast", "accurate"))
        iterations: int = param(3, "passes", min=1, max=10)
        note: str = param("", "free text")

    fields = {f.name: f for f in taskform.describeParameters(Parameters)}
    assert [f.widget for f in fields.values()] == [
        "ctkSliderWidget", "QDoubleSpinBox", "QCheckBox", "QComboBox", "QSpinBox", "QLineEdit"]
    assert fields["threshold"].key == "param_threshold" and fields["threshold"].help == "cut-off"
    assert (fields["threshold"].minimum, fields["threshold"].maximum) == (0.0, 1.0)
    assert fields["threshold"].singleStep == pytest.approx(0.01) and fields["threshold"].decimals == 2
    assert fields["mode"].choices == ("fast", "accurate")
    built = taskform.buildParameters(Parameters, {"param_threshold": 0.25, "param_mode": "accurate"})
    assert built == Parameters(threshold=0.25, mode="accurate")
    assert taskform.inputKey("image") == "input_image"


def test_real_task_parameters_are_representable(common):
    taskform, _ = common
    try:
        from MedSegAILib.tasks.registry import get_task, task_ids
    except ImportError as exc:
        pytest.skip(f"task registry not importable: {exc}")
    ids = task_ids()
    if not ids:
        pytest.skip("no task plug-in yet")
    for task_id in ids:
        task = get_task(task_id)
        assert task.inputs, task_id
        described = {f.name for f in taskform.describeParameters(task.Parameters)}
        import dataclasses

        editable = {f.name for f in dataclasses.fields(task.Parameters) if f.default is not dataclasses.MISSING}
        assert described == editable, f"{task_id}: parameters the GUI cannot show: {editable - described}"


def test_background_run_reports_progress_result_and_errors(common):
    import threading

    _, worker = common
    gate = threading.Event()

    def job(progress, cancel):
        progress(0.25, "a quarter")
        gate.wait(5)
        progress(0.5, "half")
        return 42

    run = worker.BackgroundRun(job).start()
    for _ in range(500):
        if run.takeProgress() is not None or run.done:
            break
        threading.Event().wait(0.01)
    assert not run.done
    gate.set()
    assert run.wait(5)
    assert run.result == 42 and run.error is None
    assert run.takeProgress() == (0.5, "half")
    assert run.takeProgress() is None  # nothing new since the last poll

    failing = worker.BackgroundRun(lambda progress, cancel: 1 / 0).start()
    assert failing.wait(5)
    assert isinstance(failing.error, ZeroDivisionError) and "ZeroDivisionError" in failing.errorTraceback


def test_background_run_cancel(common):
    import threading

    from MedSegAILib.errors import Cancelled

    _, worker = common

    def job(progress, cancel):
        for i in range(1000):
            cancel.check()
            progress(i / 1000, "working")
            threading.Event().wait(0.005)
        return "finished"

    run = worker.BackgroundRun(job).start()
    run.cancel()
    assert run.wait(5)
    assert run.cancelRequested and isinstance(run.error, Cancelled)


# ============================================================================================ CMake layout
def check_cmake_layout(root: Path, work: Path) -> list[str]:
    """What the build copies (and installs) into qt-scripted-modules, from a stub configure."""
    try:
        copies, modules, tests = cmake_layout(root, work)
    except AssertionError as exc:
        return [" ".join(str(exc).split())]
    problems = [f"copied outside qt-scripted-modules: {k}" for k in sorted(copies) if k.startswith("..")]
    problems += [f"source of {k} does not exist: {v}" for k, v in sorted(copies.items()) if not v.is_file()]
    for module in listed_modules(root):
        for needed in (f"{module}.py", f"Resources/Icons/{module}.png"):
            if needed not in copies:
                problems.append(f"{needed} is not installed")
        if module not in modules:
            problems.append(f"no slicerMacroBuildScriptedModule for {module}")
        if not any(Path(t).name == f"{module}.py" and Path(t).is_absolute() and Path(t).is_file() for t in tests):
            problems.append(f"no slicer_add_python_unittest(SCRIPT <absolute path of {module}.py>)")
    for needed in ("MedSegAICommon/__init__.py", "MedSegAICommon/widgetBase.py", "Resources/UI/MedSegAIBase.ui",
                   "MedSegAICommon/finetunePanel.py", FINETUNE_UI,
                   "Resources/requirements.txt", "Scripts/MedSegAIBatch.py", "MedSegAILib/__init__.py",
                   "MedSegAILib/pipeline.py", "MedSegAILib/zoo/manifest.json"):
        if needed not in copies:
            problems.append(f"{needed} is not installed")
    lib = root / "MedSegAILib"
    wanted = {p.relative_to(root).as_posix() for p in lib.rglob("*.py") if "__pycache__" not in p.parts}
    wanted |= {p.relative_to(root).as_posix() for p in (lib / "weights").rglob("*")
               if p.is_file() and p.name != ".gitkeep" and "__pycache__" not in p.parts and p.suffix not in (".py", ".pyc")}
    problems += [f"library file not installed: {k}" for k in sorted(wanted - set(copies))]
    top_level_py = sorted(k for k in copies if "/" not in k and k.endswith(".py"))
    if top_level_py != sorted(f"{m}.py" for m in listed_modules(root)):
        problems.append(f"only module files may sit at the top of qt-scripted-modules (Slicer loads each as a "
                        f"module); found {top_level_py}")
    return problems


needs_cmake = pytest.mark.skipif(shutil.which("cmake") is None, reason="cmake is not installed")


@needs_cmake
def test_cmake_installs_modules_common_code_and_library_side_by_side(tmp_path):
    assert check_cmake_layout(ROOT, tmp_path) == []


@needs_cmake
def test_cmake_layout_check_can_fail(broken, tmp_path):
    # the library must be found relative to the repository root, not to MedSegAI/
    (broken / "MedSegAILib").symlink_to(ROOT / "MedSegAILib")
    assert check_cmake_layout(broken, tmp_path / "a") == []
    cmake = broken / "MedSegAI" / "CMakeLists.txt"
    _edit(cmake, '  SOURCE_DIR "${MEDSEGAI_REPOSITORY_ROOT}"\n', "")
    assert any(p.startswith("source of MedSegAILib/") for p in check_cmake_layout(broken, tmp_path / "b"))
    _edit(cmake, "    MedSegAICommon/worker.py\n", "    MedSegAICommon/worker.py\n    MedSegAICommon/missing.py\n")
    assert any("nonexistent file 'MedSegAICommon/missing.py'" in p for p in check_cmake_layout(broken, tmp_path / "c"))
