"""The geometry-aware volume type used everywhere in MedSegAILib.

Conventions (the only place they are defined):

* ``Volume.array`` is indexed ``[k, j, i]`` (slice, row, column), the order of
  ``SimpleITK.GetArrayFromImage`` and of Slicer's ``slicer.util.arrayFromVolume``.
  A 2-D image is stored as a volume with a single slice (``shape == (1, rows, columns)``)
  and ``is_2d`` is True.
* ``spacing`` is ``(si, sj, sk)`` in millimetres: the size of a voxel along the i, j and k index axes.
* ``origin`` is the physical position of voxel ``(i, j, k) = (0, 0, 0)`` in **LPS** millimetres
  (the DICOM/ITK patient coordinate system: +x to the patient's Left, +y Posterior, +z Superior).
* ``direction`` is a 3x3 matrix whose **columns** are the unit vectors of the i, j and k axes in LPS.

Physical position of a voxel: ``p_LPS = origin + direction @ (spacing * (i, j, k))``.

Slicer works in RAS. The conversion between the two happens in exactly one place,
:data:`LPS_TO_RAS` and the helpers :func:`lps_to_ras_matrix` / :meth:`Volume.ijk_to_ras`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping

import numpy as np

from MedSegAILib.errors import InputError

#: Diagonal flip between LPS and RAS (its own inverse).
LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0])


def lps_to_ras_matrix(matrix4: np.ndarray) -> np.ndarray:
    """Convert a 4x4 homogeneous transform whose *output* is LPS into one whose output is RAS."""
    flip = np.diag([-1.0, -1.0, 1.0, 1.0])
    return flip @ np.asarray(matrix4, dtype=float)


def lps_to_ras_points(points: np.ndarray) -> np.ndarray:
    """Convert (N, 3) points from LPS to RAS (or back: the flip is its own inverse)."""
    pts = np.asarray(points, dtype=float)
    return pts * np.array([-1.0, -1.0, 1.0])


ras_to_lps_points = lps_to_ras_points


def random_rotation(rng: np.random.Generator) -> np.ndarray:
    """A uniformly random proper rotation matrix (det +1), for simulators and geometry tests."""
    q, r = np.linalg.qr(rng.normal(size=(3, 3)))
    q = q @ np.diag(np.sign(np.diag(r)))
    if np.linalg.det(q) < 0:
        q[:, 0] = -q[:, 0]
    return q


def bounding_slices(mask: np.ndarray, pad: int = 0) -> tuple[slice, ...]:
    """Slices of the smallest box holding every True voxel of ``mask``, grown by ``pad`` voxels per side and
    clipped to the array (work on a structure inside its box instead of the whole volume). ``mask`` must not be
    empty."""
    out = []
    for axis in range(mask.ndim):
        idx = np.flatnonzero(np.any(mask, axis=tuple(a for a in range(mask.ndim) if a != axis)))
        out.append(slice(max(int(idx[0]) - pad, 0), min(int(idx[-1]) + pad + 1, mask.shape[axis])))
    return tuple(out)


@dataclass(eq=False)
class Volume:
    """A 3-D (or single-slice 2-D) image with its exact physical geometry. See the module docstring."""

    array: np.ndarray
    spacing: tuple[float, float, float] = (1.0, 1.0, 1.0)
    origin: tuple[float, float, float] = (0.0, 0.0, 0.0)
    direction: np.ndarray = field(default_factory=lambda: np.eye(3))
    #: Free-form metadata (modality, units, source file, DICOM tags...). Never used for geometry.
    meta: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        arr = np.asarray(self.array)
        if arr.ndim == 2:
            arr = arr[np.newaxis]
        if arr.ndim != 3:
            raise InputError(
                f"A volume must be 2-D or 3-D with one value per voxel; got an array of shape {arr.shape}. "
                "4-D (time series) and vector (RGB, multi-component) images are not supported: "
                "extract a single frame or component first."
            )
        self.array = arr
        self.spacing = tuple(float(s) for s in self.spacing)  # type: ignore[assignment]
        self.origin = tuple(float(o) for o in self.origin)  # type: ignore[assignment]
        direction = np.asarray(self.direction, dtype=float).reshape(3, 3)
        if len(self.spacing) != 3 or len(self.origin) != 3:
            raise InputError("Spacing and origin must each have three values (i, j, k / x, y, z).")
        if not all(np.isfinite(self.spacing)) or min(self.spacing) <= 0:
            raise InputError(f"Voxel spacing must be positive and finite; got {self.spacing}.")
        if not np.all(np.isfinite(self.origin)):
            raise InputError(f"The volume origin is not finite: {self.origin}.")
        if not np.allclose(direction.T @ direction, np.eye(3), atol=1e-4):
            raise InputError(
                "The volume's direction matrix is not orthonormal (sheared or scaled axes); "
                "resample it onto a regular grid first."
            )
        self.direction = direction

    # ------------------------------------------------------------------ basic properties
    @property
    def shape(self) -> tuple[int, int, int]:
        """Array shape ``(nk, nj, ni)``."""
        return tuple(int(n) for n in self.array.shape)  # type: ignore[return-value]

    @property
    def size_ijk(self) -> tuple[int, int, int]:
        """Number of voxels along i, j, k (the reverse of :attr:`shape`)."""
        return tuple(int(n) for n in self.array.shape[::-1])  # type: ignore[return-value]

    @property
    def is_2d(self) -> bool:
        return self.array.shape[0] == 1

    @property
    def is_oblique(self) -> bool:
        """True when the axes are not aligned with the patient axes (up to permutation and sign)."""
        d = np.abs(self.direction)
        return not np.allclose(np.sort(d, axis=0)[-1], 1.0, atol=1e-6)

    @property
    def voxel_volume_mm3(self) -> float:
        return float(np.prod(self.spacing))

    # ------------------------------------------------------------------ geometry
    def ijk_to_lps(self) -> np.ndarray:
        """4x4 homogeneous matrix mapping (i, j, k, 1) to LPS millimetres."""
        m = np.eye(4)
        m[:3, :3] = self.direction @ np.diag(self.spacing)
        m[:3, 3] = self.origin
        return m

    def ijk_to_ras(self) -> np.ndarray:
        """4x4 homogeneous matrix mapping (i, j, k, 1) to RAS millimetres (Slicer's IJKToRAS)."""
        return lps_to_ras_matrix(self.ijk_to_lps())

    def index_to_lps(self, ijk: np.ndarray) -> np.ndarray:
        """Continuous (N, 3) indices in (i, j, k) order to (N, 3) LPS points."""
        ijk = np.atleast_2d(np.asarray(ijk, dtype=float))
        return ijk @ (self.direction @ np.diag(self.spacing)).T + np.asarray(self.origin)

    def lps_to_index(self, points: np.ndarray) -> np.ndarray:
        """(N, 3) LPS points to continuous (N, 3) indices in (i, j, k) order."""
        pts = np.atleast_2d(np.asarray(points, dtype=float)) - np.asarray(self.origin)
        inv = np.linalg.inv(self.direction @ np.diag(self.spacing))
        return pts @ inv.T

    def center_lps(self) -> np.ndarray:
        """Physical centre of the voxel grid."""
        return self.index_to_lps((np.asarray(self.size_ijk) - 1) / 2.0)[0]

    def same_geometry(self, other: "Volume", atol: float = 1e-4) -> bool:
        """True when both volumes sample the same physical grid."""
        return (
            self.shape == other.shape
            and np.allclose(self.spacing, other.spacing, atol=atol)
            and np.allclose(self.origin, other.origin, atol=atol)
            and np.allclose(self.direction, other.direction, atol=atol)
        )

    # ------------------------------------------------------------------ copies
    def with_array(self, array: np.ndarray, **meta: Any) -> "Volume":
        """A new volume on the same grid holding ``array`` (same shape required)."""
        array = np.asarray(array)
        if array.ndim == 2:
            array = array[np.newaxis]
        if array.shape != self.array.shape:
            raise ValueError(f"with_array: shape {array.shape} differs from the grid {self.array.shape}")
        return Volume(array, self.spacing, self.origin, self.direction.copy(), {**self.meta, **meta})

    def geometry(self) -> "Geometry":
        return Geometry(self.shape, self.spacing, self.origin, self.direction.copy())

    def copy(self) -> "Volume":
        return Volume(self.array.copy(), self.spacing, self.origin, self.direction.copy(), dict(self.meta))

    def __repr__(self) -> str:  # keep reprs short: arrays can be huge
        return (
            f"Volume(shape={self.shape}, dtype={self.array.dtype}, spacing={tuple(round(s, 4) for s in self.spacing)}, "
            f"origin={tuple(round(o, 3) for o in self.origin)}, oblique={self.is_oblique})"
        )


@dataclass(frozen=True, eq=False)
class Geometry:
    """A voxel grid without voxel values (shape in ``[k, j, i]`` order, geometry as in :class:`Volume`)."""

    shape: tuple[int, int, int]
    spacing: tuple[float, float, float]
    origin: tuple[float, float, float]
    direction: np.ndarray

    def empty(self, dtype: Any = np.float32, fill: float = 0) -> Volume:
        return Volume(np.full(self.shape, fill, dtype=dtype), self.spacing, self.origin, self.direction.copy())

    @classmethod
    def from_mapping(cls, m: Mapping[str, Any]) -> "Geometry":
        return cls(tuple(m["shape"]), tuple(m["spacing"]), tuple(m["origin"]), np.asarray(m["direction"], float))

    def to_mapping(self) -> dict[str, Any]:
        return {
            "shape": list(self.shape),
            "spacing": list(self.spacing),
            "origin": list(self.origin),
            "direction": np.asarray(self.direction).tolist(),
        }
