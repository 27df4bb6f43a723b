"""Small VTK/MRML helpers shared by the bridge modules (private)."""

from __future__ import annotations

from typing import Any, Optional

import numpy as np
import vtk
from vtk.util import numpy_support

from MedSegAILib.errors import InputError


def matrix_to_array(m: "vtk.vtkMatrix4x4") -> np.ndarray:
    return np.array([[m.GetElement(r, c) for c in range(4)] for r in range(4)], dtype=float)


def array_to_matrix(a: np.ndarray) -> "vtk.vtkMatrix4x4":
    m = vtk.vtkMatrix4x4()
    a = np.asarray(a, dtype=float)
    for r in range(4):
        for c in range(4):
            m.SetElement(r, c, float(a[r, c]))
    return m


def translation(offset) -> np.ndarray:
    m = np.eye(4)
    m[:3, 3] = np.asarray(offset, dtype=float)
    return m


def node_ijk_to_ras(node: Any) -> np.ndarray:
    """The node's own (local, before parent transforms) IJKToRAS as a 4x4 array."""
    m = vtk.vtkMatrix4x4()
    node.GetIJKToRASMatrix(m)
    return matrix_to_array(m)


def set_node_ijk_to_ras(node: Any, ijk_to_ras: np.ndarray) -> None:
    node.SetIJKToRASMatrix(array_to_matrix(ijk_to_ras))


def transform_to_world(node: Any, what: str = "volume") -> np.ndarray:
    """4x4 local->world matrix of ``node``'s parent transforms (identity when none).

    Raises :class:`InputError` when the chain is non-linear (warping): no exact voxel grid exists then.
    """
    parent = node.GetParentTransformNode()
    if parent is None:
        return np.eye(4)
    if not parent.IsTransformToWorldLinear():
        raise InputError(
            f"The {what} {node.GetName()!r} is under a non-linear (warping) transform "
            f"({parent.GetName()!r}). Harden the transform on it first (Transforms module, "
            "'Harden transform', which resamples the image), or remove the transform."
        )
    m = vtk.vtkMatrix4x4()
    parent.GetMatrixTransformToWorld(m)
    return matrix_to_array(m)


def get_tag(segment: Any, name: str) -> Optional[str]:
    """A vtkSegment tag value, or None when the segment has no such tag."""
    if not segment.HasTag(name):
        return None
    ref = vtk.reference("")
    segment.GetTag(name, ref)
    return str(ref.get())


def numpy_to_vtk_scalars(array: np.ndarray, name: str = "ImageScalars") -> "vtk.vtkDataArray":
    flat = np.ascontiguousarray(array).ravel()
    out = numpy_support.numpy_to_vtk(flat, deep=True)
    out.SetName(name)
    return out


def all_nodes(scene: Any) -> list:
    return [scene.GetNthNode(i) for i in range(scene.GetNumberOfNodes())]


def find_node_by_id(scene: Any, node_id: Optional[str]) -> Any:
    return scene.GetNodeByID(node_id) if node_id else None
