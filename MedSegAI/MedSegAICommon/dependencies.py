"""Install what MedSegAI needs into Slicer's Python on first use, without replacing Slicer's own packages.

* torch: only through the PyTorch extension's PyTorchUtils (it picks the wheel matching the GPU driver).
* the rest (``Resources/requirements.txt``): ``slicer.packaging.pip_ensure`` (Slicer >= 5.12), else
  ``slicer.util.pip_install``; both with a constraints file pinning the versions of numpy, SimpleITK,
  scipy... that Slicer ships, so that pip may add packages but never swap Slicer's.
"""

from __future__ import annotations

import importlib.metadata
import logging
import os
import tempfile

import slicer
from slicer.i18n import tr as _

TORCH_REQUIREMENT = ">=2.1"
#: packages Slicer ships: pinned to the installed version during any install
PROTECTED_DISTRIBUTIONS = ("numpy", "SimpleITK", "scipy", "vtk", "pydicom", "requests", "packaging", "Pillow")


class DependencyError(RuntimeError):
    """A dependency is missing and could not (or may not) be installed."""


def _testing() -> bool:
    app = getattr(slicer, "app", None)
    return bool(app is not None and app.testingEnabled())


def ensureTorch(askConfirmation: bool = True):
    """Import torch, installing it through PyTorchUtils when missing; returns the module."""
    try:
        import torch

        return torch
    except ImportError:
        pass
    try:
        import PyTorchUtils
    except ImportError:
        raise DependencyError(_(
            "MedSegAI needs PyTorch. Install the 'PyTorch' extension from the Extensions Manager, restart"
            " Slicer, and try again."
        )) from None
    torch = PyTorchUtils.PyTorchUtilsLogic().installTorch(
        askConfirmation=askConfirmation and not _testing(), torchVersionRequirement=TORCH_REQUIREMENT)
    if torch is None:
        raise DependencyError(_("PyTorch was not installed, so MedSegAI cannot segment. Click Segment again to"
                                " install it."))
    return torch


def writeConstraintsFile() -> str:
    """A pip constraints file pinning the installed version of every protected distribution."""
    lines = []
    for name in PROTECTED_DISTRIBUTIONS:
        try:
            lines.append(f"{name}=={importlib.metadata.version(name)}")
        except importlib.metadata.PackageNotFoundError:
            continue
    fd, path = tempfile.mkstemp(prefix="MedSegAI-constraints-", suffix=".txt")
    with os.fdopen(fd, "w") as fh:
        fh.write("\n".join(lines) + "\n")
    return path


def missingRequirements(requirementsPath: str) -> list:
    """Requirement strings of ``requirementsPath`` that the current Python does not satisfy."""
    from packaging.requirements import Requirement

    missing = []
    with open(requirementsPath, encoding="utf-8") as fh:
        for line in fh:
            line = line.split("#", 1)[0].strip()
            if not line or line.startswith("-"):
                continue
            req = Requirement(line)
            if req.marker is not None and not req.marker.evaluate():
                continue
            try:
                installed = importlib.metadata.version(req.name)
            except importlib.metadata.PackageNotFoundError:
                missing.append(str(req))
                continue
            if req.specifier and installed not in req.specifier:
                missing.append(str(req))
    return missing


def ensurePackages(requirementsPath: str, askConfirmation: bool = True) -> None:
    """Install the missing requirements of ``requirementsPath`` (see the module docstring)."""
    constraints = writeConstraintsFile()
    try:
        packaging = getattr(slicer, "packaging", None)
        if packaging is not None and hasattr(packaging, "pip_ensure"):  # Slicer >= 5.12
            packaging.pip_ensure(packaging.load_requirements(requirementsPath), constraints=constraints,
                                 requester="MedSegAI", prompt_install=askConfirmation)
            return
        missing = missingRequirements(requirementsPath)
        if not missing:
            return
        if _testing():
            logging.warning(f"MedSegAI: packages missing in testing mode, not installing: {missing}")
            return
        if askConfirmation and not slicer.util.confirmOkCancelDisplay(
                _("MedSegAI needs these Python packages, which will be downloaded and installed now:\n\n{packages}")
                .format(packages="\n".join(missing)), windowTitle="MedSegAI"):
            raise DependencyError(_("Required Python packages were not installed: {packages}.")
                                  .format(packages=", ".join(missing)))
        import qt

        qt.QApplication.setOverrideCursor(qt.Qt.WaitCursor)
        try:
            slicer.util.pip_install(missing + ["-c", constraints])
        finally:
            qt.QApplication.restoreOverrideCursor()
    finally:
        try:
            os.remove(constraints)
        except OSError:
            pass


def ensureDependencies(requirementsPath: str, askConfirmation: bool = True):
    """torch first (PyTorchUtils), then the other packages; returns the torch module."""
    torch = ensureTorch(askConfirmation)
    ensurePackages(requirementsPath, askConfirmation)
    return torch
