"""Cone-beam digitally reconstructed radiographs (DRRs): a spacing-aware, oblique-safe PyTorch projector.

Physics and geometry, all in millimetres and LPS (see :mod:`MedSegAILib.core.volume`):

* **Geometry** (:class:`ConeBeamGeometry`): a point source and a flat detector. The detector has ``shape
  (H, W)`` pixels of size ``(du, dv)`` mm; ``u`` is the direction of increasing column (left -> right on the
  displayed image) and ``v`` the direction of increasing row (row 0 is the **top** of the displayed image).
  The detector normal is ``n = u x v`` and points from the source towards the detector, so the image is
  seen *from the source side* (as a viewer standing at the tube looking along the beam). For a hand laid
  palm-down on the cassette and a beam from above (PA), that is the usual "looking at the back of the hand"
  display. Pixel ``(r, c)`` lies at ``detector_center + (c - (W-1)/2) du u + (r - (H-1)/2) dv v``.
* **Line integrals** (:func:`project`): ``P(pixel) = integral of f along the segment source -> pixel``, in
  value x mm. ``f`` is sampled with trilinear interpolation (zero outside the grid, voxel values at voxel
  centres), only inside the grid's bounding box (ray/box intersection by the slab method, in continuous
  index space, so any spacing and any direction matrix - oblique included - is exact). Each clipped segment
  of length ``L`` is cut into ``N = ceil(L / step)`` equal pieces and integrated with the midpoint rule.
* **Attenuation** (:func:`hu_to_mu`): ``mu = mu_water (1 + HU/1000)``, clipped at 0 (density scaling at one
  effective energy; ``mu_water = 0.0206 /mm`` is water at about 60 keV, the mean energy of a ~55-60 kVp
  extremity beam after filtration). ``bone_slope > 1`` steepens the scaling above 0 HU, a cheap stand-in
  for the extra photoelectric absorption of calcium at low energies (a bilinear HU->mu model).
* **Radiograph** (:func:`radiograph`): Beer-Lambert ``I = I0 exp(-P)``, additive low-frequency scatter,
  Poisson quantum noise, Gaussian detector blur, then the log transform ``q = -ln(I / I0)`` and a random but
  monotone display mapping (percentile window + gamma), so that bone is bright and air is dark as on a
  processed DR image.

**Label images** (:func:`project_labels`, :func:`resolve_overlaps`): labels are never interpolated. Each
ray's path length (mm) through each label is measured with nearest-neighbour lookup at the same samples.
A pixel then gets the label with the **longest path** along its ray - the bone that contributes most
attenuation at that pixel - provided that path is at least ``min_path_mm``; otherwise background. This is a
deliberate change from the public MATLAB code (METHODS.md 5.4/5.7), which took the *front-most* label met
along the ray: that target depends on the viewing side and labels a pixel with a bone that may be a thin
sliver in front of a thick one. Labels listed in ``ignore`` (e.g. metacarpals, background for the network)
are removed before the choice: they become background and never hide the bones behind them. Ties go to
the lower label id. Labels listed in ``on_top`` are the exception: a small bone that lies over a larger one
in the view (the pisiform over the triquetrum in a PA wrist view) would otherwise keep only the crescent that
sticks out, a shape no reader draws and no network can learn from the image; such a bone is drawn whole
(wherever its own path is at least ``min_path_mm``), as radiologists outline it, and the bone under it gets
the rest.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Mapping, Optional, Sequence, Union

import numpy as np
from scipy import ndimage

from MedSegAILib.core.volume import Volume
from MedSegAILib.engine.progress import CancelToken, Progress
from MedSegAILib.errors import InputError, OutputError

Vec3 = tuple[float, float, float]
RangeOrValue = Union[float, Sequence[float]]

#: Linear attenuation coefficient of water (1/mm) at ~60 keV (0.206 /cm).
MU_WATER_60KEV = 0.0206

OVERLAP_RULE = ("longest path: each pixel gets the label with the longest path (mm) along its ray, background "
                "where that path is below min_path_mm; ignored labels are background and hide nothing; "
                "ties go to the lower label id; labels listed as on_top (e.g. the pisiform) are drawn whole over "
                "the others")


def _unit(v: Sequence[float], name: str) -> np.ndarray:
    a = np.asarray(v, dtype=float).reshape(3)
    n = float(np.linalg.norm(a))
    if not np.isfinite(n) or n < 1e-9:
        raise InputError(f"The {name} vector {tuple(a)} has zero length; give a direction such as (0, 1, 0).")
    return a / n


def _rotate(vec: np.ndarray, axis: np.ndarray, angle_rad: float) -> np.ndarray:
    """Rodrigues rotation of ``vec`` about the unit ``axis`` by ``angle_rad`` (right-hand rule)."""
    c, s = math.cos(angle_rad), math.sin(angle_rad)
    return vec * c + np.cross(axis, vec) * s + axis * float(np.dot(axis, vec)) * (1.0 - c)


# ----------------------------------------------------------------------------------------------- geometry
@dataclass(frozen=True)
class ConeBeamGeometry:
    """A point source and a flat detector (see the module docstring for the conventions)."""

    source: Vec3
    detector_center: Vec3
    u: Vec3
    v: Vec3
    pixel_size: tuple[float, float]
    shape: tuple[int, int]

    def __post_init__(self) -> None:
        u, v = _unit(self.u, "detector u"), _unit(self.v, "detector v")
        if abs(float(np.dot(u, v))) > 1e-3:
            raise InputError("The detector axes u and v must be orthogonal.")
        v = _unit(v - u * float(np.dot(u, v)), "detector v")  # remove rounding noise (float32 inputs)
        object.__setattr__(self, "u", tuple(float(x) for x in u))
        object.__setattr__(self, "v", tuple(float(x) for x in v))
        object.__setattr__(self, "source", tuple(float(x) for x in np.asarray(self.source, float).reshape(3)))
        object.__setattr__(self, "detector_center",
                           tuple(float(x) for x in np.asarray(self.detector_center, float).reshape(3)))
        ps = tuple(float(x) for x in self.pixel_size)
        shp = tuple(int(x) for x in self.shape)
        if len(ps) != 2 or min(ps) <= 0 or not all(np.isfinite(ps)):
            raise InputError(f"The detector pixel size must be two positive numbers (du, dv) in mm; got {ps}.")
        if len(shp) != 2 or min(shp) < 1:
            raise InputError(f"The detector shape must be two positive integers (H, W); got {shp}.")
        object.__setattr__(self, "pixel_size", ps)
        object.__setattr__(self, "shape", shp)
        if self.sdd <= 0:
            raise InputError("The source must lie in front of the detector (on the side opposite to u x v).")

    @property
    def normal(self) -> np.ndarray:
        """Unit detector normal ``u x v``, pointing from the source towards the detector."""
        return np.cross(np.asarray(self.u), np.asarray(self.v))

    @property
    def sdd(self) -> float:
        """Source-to-detector-plane distance (mm) along the normal."""
        return float(np.dot(np.asarray(self.detector_center) - np.asarray(self.source), self.normal))

    def magnification(self, point: Sequence[float]) -> float:
        """Perspective magnification of an object at ``point``: SDD / (source-to-point distance along n)."""
        d = float(np.dot(np.asarray(point, float) - np.asarray(self.source), self.normal))
        if d <= 0:
            raise InputError("The point lies behind the source; it has no shadow on the detector.")
        return self.sdd / d

    def pixel_centers_lps(self) -> np.ndarray:
        """(H, W, 3) LPS positions of the detector pixel centres."""
        h, w = self.shape
        du, dv = self.pixel_size
        c = (np.arange(w) - (w - 1) / 2.0) * du
        r = (np.arange(h) - (h - 1) / 2.0) * dv
        return (np.asarray(self.detector_center)[None, None, :] + c[None, :, None] * np.asarray(self.u)
                + r[:, None, None] * np.asarray(self.v))

    def image_volume(self, array2d: np.ndarray, **meta: Any) -> Volume:
        """The (H, W) image as it lies on the detector: a (1, H, W) Volume with the detector's geometry."""
        arr = np.asarray(array2d)
        if arr.ndim == 3 and arr.shape[0] == 1:
            arr = arr[0]
        if arr.shape != self.shape:
            raise InputError(f"Image shape {arr.shape} differs from the detector shape {self.shape}.")
        origin = self.pixel_centers_lps()[0, 0]
        direction = np.stack([np.asarray(self.u), np.asarray(self.v), self.normal], axis=1)
        return Volume(arr[None], (self.pixel_size[0], self.pixel_size[1], 1.0), tuple(origin), direction,
                      dict(meta))

    def to_dict(self) -> dict[str, Any]:
        return {"source": list(self.source), "detector_center": list(self.detector_center), "u": list(self.u),
                "v": list(self.v), "pixel_size": list(self.pixel_size), "shape": list(self.shape),
                "sdd": self.sdd, "normal": self.normal.tolist()}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "ConeBeamGeometry":
        return cls(tuple(d["source"]), tuple(d["detector_center"]), tuple(d["u"]), tuple(d["v"]),
                   tuple(d["pixel_size"]), tuple(d["shape"]))


def pose_geometry(
    center_lps: Sequence[float],
    *,
    view: Sequence[float] = (0.0, 1.0, 0.0),
    up: Sequence[float] = (0.0, 0.0, 1.0),
    sdd_mm: float = 1000.0,
    sod_mm: float = 960.0,
    pixel_size_mm: Union[float, Sequence[float]] = 0.5,
    shape: tuple[int, int] = (256, 256),
    in_plane_deg: float = 0.0,
    tilt_deg: tuple[float, float] = (0.0, 0.0),
) -> ConeBeamGeometry:
    """A geometry looking at ``center_lps`` (the isocentre, on the central ray through the detector centre).

    ``view`` is the beam direction (source -> detector; default +y = anterior -> posterior, an AP view).
    ``up`` is the LPS direction shown towards the top of the image (row 0) before rotations; it is projected
    onto the detector plane. The source lies ``sod_mm`` before the isocentre and the detector plane
    ``sdd_mm`` from the source. Then the detector is rotated by ``in_plane_deg`` about the central ray
    (positive turns u towards v, i.e. clockwise on the displayed image), and the whole source-detector pair
    is tilted about the isocentre by ``tilt_deg[0]`` about the (rotated) u axis and ``tilt_deg[1]`` about v.
    """
    if not (0 < sod_mm < sdd_mm):
        raise InputError(f"Need 0 < source-object distance ({sod_mm}) < source-detector distance ({sdd_mm}).")
    n = _unit(view, "view")
    up_v = _unit(up, "up")
    up_perp = up_v - n * float(np.dot(up_v, n))
    if np.linalg.norm(up_perp) < 1e-6:
        raise InputError("The 'up' direction is parallel to the view direction; choose another 'up'.")
    v = -up_perp / np.linalg.norm(up_perp)  # rows grow downwards, away from 'up'
    u = np.cross(v, n)  # so that u x v = n
    a = math.radians(in_plane_deg)
    u, v = math.cos(a) * u + math.sin(a) * v, -math.sin(a) * u + math.cos(a) * v
    for axis_vec, ang in ((u.copy(), tilt_deg[0]), (v.copy(), tilt_deg[1])):
        r = math.radians(ang)
        u, v, n = (_rotate(x, axis_vec, r) for x in (u, v, n))
    c = np.asarray(center_lps, float).reshape(3)
    ps = (float(pixel_size_mm),) * 2 if np.isscalar(pixel_size_mm) else tuple(pixel_size_mm)
    return ConeBeamGeometry(tuple(c - sod_mm * n), tuple(c + (sdd_mm - sod_mm) * n), tuple(u), tuple(v),
                            ps, tuple(shape))


def _draw(rng: np.random.Generator, value: RangeOrValue) -> float:
    """A uniform draw from a (low, high) range, or the value itself. Always consumes one draw (determinism)."""
    x = rng.uniform()
    if np.isscalar(value):
        return float(value)
    lo, hi = (float(t) for t in value)
    return lo + (hi - lo) * x


def random_geometry(
    rng: np.random.Generator,
    center_lps: Sequence[float],
    *,
    view: Sequence[float] = (0.0, 1.0, 0.0),
    up: Sequence[float] = (0.0, 0.0, 1.0),
    sdd_range_mm: RangeOrValue = (900.0, 1200.0),
    odd_range_mm: RangeOrValue = (20.0, 60.0),
    in_plane_range_deg: RangeOrValue = (-20.0, 20.0),
    tilt_range_deg: RangeOrValue = (-10.0, 10.0),
    offset_mm: float = 5.0,
    pixel_size_mm: Union[float, Sequence[float]] = 0.5,
    shape: tuple[int, int] = (256, 256),
) -> ConeBeamGeometry:
    """A random radiographic pose around ``center_lps`` (see :func:`pose_geometry` for the conventions).

    SDD is drawn in ``sdd_range_mm``; the object (isocentre) to detector distance in ``odd_range_mm`` (hand
    on the cassette: 20-60 mm); in-plane rotation and the two tilts uniformly; the isocentre is shifted by up
    to ``offset_mm`` along each LPS axis. The same generator state gives the same geometry.
    """
    sdd = _draw(rng, sdd_range_mm)
    odd = _draw(rng, odd_range_mm)
    rot = _draw(rng, in_plane_range_deg)
    tilt = (_draw(rng, tilt_range_deg), _draw(rng, tilt_range_deg))
    offset = rng.uniform(-offset_mm, offset_mm, size=3)
    return pose_geometry(np.asarray(center_lps, float) + offset, view=view, up=up, sdd_mm=sdd, sod_mm=sdd - odd,
                         pixel_size_mm=pixel_size_mm, shape=shape, in_plane_deg=rot, tilt_deg=tilt)


# ----------------------------------------------------------------------------------------------- attenuation
def hu_to_mu(hu: np.ndarray, mu_water: float = MU_WATER_60KEV, *, bone_slope: float = 1.0) -> np.ndarray:
    """Linear attenuation (1/mm) from Hounsfield units: ``mu_water (1 + HU/1000)`` clipped at 0.

    Above 0 HU the slope is multiplied by ``bone_slope`` (1 = pure density scaling; ~1.2-1.5 mimics the
    higher photoelectric absorption of bone mineral at a ~60 keV effective energy relative to the ~70 keV
    of the CT that measured the HU). Returns float32.
    """
    hu = np.asarray(hu, dtype=np.float32)
    x = hu / 1000.0
    if bone_slope != 1.0:
        x = np.where(x > 0, x * np.float32(bone_slope), x)
    return np.clip(np.float32(mu_water) * (1.0 + x), 0.0, None).astype(np.float32)


# ----------------------------------------------------------------------------------------------- ray marching
def _volume_check(volume: Volume) -> None:
    if not isinstance(volume, Volume):
        raise InputError("project expects a MedSegAILib Volume (values on a voxel grid with its geometry).")


def _ray_chunks(volume: Volume, geometry: ConeBeamGeometry, step_mm: float, budget: int, device: Any
                ) -> Iterator[tuple[Any, Any, Any, Any, float]]:
    """Yield ``(ray_ids, idx (R,S,3) continuous i,j,k, dt (R,), valid (R,S), done_fraction)`` per chunk.

    Rays are clipped to the box [-0.5, n-0.5] of every index axis (the grid's physical extent) by the slab
    method, and to the source->pixel segment. Rays are sorted by their number of samples so that padding is
    small, and grouped so that each chunk holds at most ``budget`` samples (bounded memory).
    """
    import torch

    m = volume.direction @ np.diag(volume.spacing)  # index -> LPS (without origin)
    minv = np.linalg.inv(m)
    src_idx = minv @ (np.asarray(geometry.source) - np.asarray(volume.origin))
    pix = geometry.pixel_centers_lps().reshape(-1, 3)
    seg = pix - np.asarray(geometry.source)
    length = np.linalg.norm(seg, axis=1)
    d_lps = seg / length[:, None]
    d_idx = d_lps @ minv.T  # index units per mm
    size = np.asarray(volume.size_ijk, float)
    lo, hi = -0.5, size - 0.5
    with np.errstate(divide="ignore", invalid="ignore"):
        t1 = (lo - src_idx[None, :]) / d_idx
        t2 = (hi[None, :] - src_idx[None, :]) / d_idx
    tmin, tmax = np.minimum(t1, t2), np.maximum(t1, t2)
    parallel = np.abs(d_idx) < 1e-12
    inside = (src_idx >= lo) & (src_idx <= hi)
    tmin = np.where(parallel, np.where(inside[None, :], -np.inf, np.inf), tmin)
    tmax = np.where(parallel, np.where(inside[None, :], np.inf, -np.inf), tmax)
    t_near = np.maximum(tmin.max(axis=1), 0.0)
    t_far = np.minimum(tmax.min(axis=1), length)
    seg_len = np.clip(t_far - t_near, 0.0, None)
    nsamp = np.ceil(seg_len / step_mm - 1e-9).astype(np.int64)
    nsamp[seg_len <= 1e-9] = 0
    order = np.argsort(-(nsamp // 16), kind="stable")  # coarse buckets keep raster order (cache)
    order = order[nsamp[order] > 0]
    total = max(int(nsamp.sum()), 1)
    done = 0
    pos = 0
    while pos < len(order):
        count = max(1, budget // int((nsamp[order[pos]] // 16 + 1) * 16))
        ids = order[pos:pos + count]
        smax = int(nsamp[ids].max())
        pos += len(ids)
        n_r = nsamp[ids]
        dt = seg_len[ids] / n_r
        dev = device
        t_ = torch.arange(smax, dtype=torch.float32, device=dev)[None, :] + 0.5  # (1,S)
        dt_t = torch.as_tensor(dt, dtype=torch.float32, device=dev)
        tn_t = torch.as_tensor(t_near[ids], dtype=torch.float32, device=dev)
        tt = tn_t[:, None] + t_ * dt_t[:, None]  # (R,S) mm from the source
        valid = t_ < torch.as_tensor(n_r, dtype=torch.float32, device=dev)[:, None]
        s0 = torch.as_tensor(src_idx, dtype=torch.float32, device=dev)
        di = torch.as_tensor(d_idx[ids], dtype=torch.float32, device=dev)  # (R,3)
        idx = s0[None, None, :] + tt[:, :, None] * di[:, None, :]  # (R,S,3) in (i,j,k)
        done += int(n_r.sum())
        yield torch.as_tensor(ids, device=dev), idx, dt_t, valid, done / total


def _default_step(volume: Volume, step_mm: Optional[float]) -> float:
    step = 0.5 * min(volume.spacing) if step_mm is None else float(step_mm)
    if not (step > 0 and np.isfinite(step)):
        raise InputError(f"The ray step must be a positive length in mm; got {step_mm}.")
    return step


def project(
    volume: Volume,
    geometry: ConeBeamGeometry,
    *,
    step_mm: Optional[float] = None,
    device: Any = "cpu",
    chunk_samples: int = 1_000_000,
    progress: Optional[Progress] = None,
    cancel: Optional[CancelToken] = None,
) -> np.ndarray:
    """Line integrals ``integral f dl`` (value x mm) along each source->pixel ray; returns float32 (H, W).

    ``f`` is the volume (e.g. mu in 1/mm from :func:`hu_to_mu`, giving a dimensionless ``-ln(I/I0)``),
    trilinearly interpolated with zero outside; ``step_mm`` defaults to half the smallest voxel spacing.
    At most ``chunk_samples`` samples are held at once (~40 bytes each).
    """
    import torch
    import torch.nn.functional as F

    _volume_check(volume)
    step = _default_step(volume, step_mm)
    arr = np.asarray(volume.array, dtype=np.float32)
    if not np.all(np.isfinite(arr)):
        raise InputError("The volume contains NaN or infinite values; fix or mask them before projecting.")
    vol_t = torch.from_numpy(np.ascontiguousarray(arr)).to(device)[None, None]  # (1,1,K,J,I)
    size = torch.tensor(volume.size_ijk, dtype=torch.float32, device=device)
    out = torch.zeros(int(np.prod(geometry.shape)), dtype=torch.float32, device=device)
    with torch.no_grad():
        for ids, idx, dt, valid, frac in _ray_chunks(volume, geometry, step, chunk_samples, device):
            if cancel is not None:
                cancel.check()
            grid = (2.0 * idx + 1.0) / size - 1.0  # align_corners=False: voxel centres at (2i+1)/n - 1
            grid = torch.where(valid[..., None], grid, torch.full_like(grid, 4.0))  # padding -> zero
            val = F.grid_sample(vol_t, grid[None, None], mode="bilinear", padding_mode="zeros",
                                align_corners=False)[0, 0, 0]  # (R,S)
            out[ids] = val.sum(dim=1) * dt
            if progress is not None:
                progress(frac, "projecting")
    return out.reshape(geometry.shape).cpu().numpy()


def project_labels(
    labels: Volume,
    geometry: ConeBeamGeometry,
    n_labels: int,
    *,
    step_mm: Optional[float] = None,
    device: Any = "cpu",
    chunk_samples: int = 1_000_000,
    progress: Optional[Progress] = None,
    cancel: Optional[CancelToken] = None,
) -> np.ndarray:
    """Path length (mm) of each ray through each label 0..n_labels: float32 (n_labels + 1, H, W).

    Labels are looked up nearest-neighbour (never interpolated). Index 0 is the path through background
    voxels inside the grid.
    """
    import torch

    _volume_check(labels)
    arr = np.asarray(labels.array)
    if not np.issubdtype(arr.dtype, np.integer):
        if np.issubdtype(arr.dtype, np.floating) and np.all(np.isfinite(arr)) and np.all(arr == np.round(arr)):
            arr = arr.astype(np.int64)
        else:
            raise InputError("The label volume must hold integer label ids (it has non-integer values).")
    if arr.size and (arr.min() < 0 or arr.max() > n_labels):
        raise InputError(f"Label ids must lie in 0..{n_labels}; the volume holds {int(arr.min())}..{int(arr.max())}.")
    step = _default_step(labels, step_mm)
    nk, nj, ni = labels.shape
    lab_t = torch.from_numpy(np.ascontiguousarray(arr.astype(np.int64 if n_labels > 255 else np.uint8))).to(device)
    lab_t = lab_t.reshape(-1)
    hi = torch.tensor([ni - 1, nj - 1, nk - 1], device=device)
    out = torch.zeros((int(np.prod(geometry.shape)), n_labels + 1), dtype=torch.float32, device=device)
    with torch.no_grad():
        for ids, idx, dt, valid, frac in _ray_chunks(labels, geometry, step, chunk_samples, device):
            if cancel is not None:
                cancel.check()
            ijk = torch.minimum(torch.clamp(torch.round(idx), min=0).long(), hi)
            flat = (ijk[..., 2] * nj + ijk[..., 1]) * ni + ijk[..., 0]
            lab = lab_t[flat].long()
            w = valid.float() * dt[:, None]
            acc = torch.zeros((len(ids), n_labels + 1), dtype=torch.float32, device=device)
            acc.scatter_add_(1, lab, w)
            out[ids] = acc
            if progress is not None:
                progress(frac, "projecting labels")
    return out.T.reshape((n_labels + 1,) + tuple(geometry.shape)).cpu().numpy()


def resolve_overlaps(path_lengths: np.ndarray, *, min_path_mm: float = 1.0, ignore: Sequence[int] = (),
                     on_top: Sequence[int] = ()) -> np.ndarray:
    """(H, W) uint8 label image from (n+1, H, W) path lengths: the label with the longest path wins.

    Background (0) where the longest non-ignored label path is below ``min_path_mm``. Ignored labels are
    zeroed before the choice, so they are background and do not hide anything. Ties -> lower id. Labels in
    ``on_top`` (in that order of precedence) take every pixel where their own path is at least
    ``min_path_mm``, whatever lies under them (see the module docstring).
    """
    p = np.asarray(path_lengths, dtype=np.float32)
    if p.ndim != 3 or p.shape[0] < 1:
        raise InputError("resolve_overlaps expects path lengths of shape (n_labels + 1, H, W).")
    if p.shape[0] - 1 > 255:
        raise InputError("At most 255 labels fit in a uint8 label image.")
    bones = p[1:].copy()
    for lab in ignore:
        if 1 <= int(lab) <= bones.shape[0]:
            bones[int(lab) - 1] = 0.0
    if bones.shape[0] == 0:
        return np.zeros(p.shape[1:], np.uint8)
    best = np.argmax(bones, axis=0)
    longest = np.take_along_axis(bones, best[None], axis=0)[0]
    out = np.where(longest >= min_path_mm, best + 1, 0).astype(np.uint8)
    for lab in reversed([int(v) for v in on_top if 1 <= int(v) <= bones.shape[0] and int(v) not in ignore]):
        out[bones[lab - 1] >= min_path_mm] = lab  # the first listed is applied last: it wins
    return out


# ----------------------------------------------------------------------------------------------- radiograph
def radiograph(
    line_integral_mu: np.ndarray,
    rng: np.random.Generator,
    *,
    i0: RangeOrValue = (5e3, 5e4),
    scatter_fraction: RangeOrValue = (0.05, 0.3),
    noise: bool = True,
    blur_mm: RangeOrValue = (0.1, 0.35),
    pixel_size: float = 0.5,
    gamma: RangeOrValue = (0.7, 1.4),
    low_percentile: RangeOrValue = (0.0, 2.0),
    high_percentile: RangeOrValue = (99.0, 100.0),
    return_params: bool = False,
) -> Any:
    """A processed-DR-like image in [0, 1] (float32, bone bright, air dark) from line integrals of mu.

    1. Primary photons ``I0 exp(-P)`` (``I0`` per pixel, log-uniform in its range).
    2. Scatter: ``s`` x a heavily blurred primary (sigma = 1/8 of the image) x a smooth random modulation
       (scatter-to-primary ratio ``s`` in ``scatter_fraction``), added to the expectation.
    3. Poisson quantum noise on the total (skipped when ``noise`` is False).
    4. Detector blur: Gaussian with sigma ``blur_mm / pixel_size`` pixels (scintillator light spread).
    5. ``q = -ln(I / I0)`` (the processed log image), then the window [q at ``low_percentile``, q at
       ``high_percentile``] mapped to [0, 1] and raised to ``gamma``: random but monotone in ``q``.

    Every random number comes from ``rng`` in a fixed order: the same seed gives the same image. With
    ``return_params`` the drawn parameters are returned too, as ``(image, dict)``.
    """
    p = np.asarray(line_integral_mu, dtype=np.float64)
    if p.ndim != 2:
        raise InputError(f"radiograph expects a 2-D (H, W) array of line integrals; got shape {p.shape}.")
    if not np.all(np.isfinite(p)):
        raise InputError("The line integrals contain NaN or infinite values.")
    p = np.clip(p, 0.0, None)
    h, w = p.shape
    if np.isscalar(i0):
        i0_v = float(i0)
        rng.uniform()
    else:
        lo, hi = (math.log(float(t)) for t in i0)
        i0_v = math.exp(lo + (hi - lo) * rng.uniform())
    sf = _draw(rng, scatter_fraction)
    blur = _draw(rng, blur_mm)
    g = _draw(rng, gamma)
    plo = _draw(rng, low_percentile)
    phi = _draw(rng, high_percentile)
    coarse = rng.normal(size=(4, 4))
    primary = i0_v * np.exp(-p)
    modulation = 1.0 + 0.2 * ndimage.zoom(coarse, (h / 4.0, w / 4.0), order=3, mode="nearest",
                                          grid_mode=True)[:h, :w]
    scatter = sf * ndimage.gaussian_filter(primary, sigma=max(h, w) / 8.0, mode="nearest") * np.clip(modulation, 0.2, None)
    expected = primary + scatter
    counts = rng.poisson(expected).astype(np.float64) if noise else expected
    sigma_px = blur / float(pixel_size)
    if sigma_px > 0:
        counts = ndimage.gaussian_filter(counts, sigma=sigma_px, mode="nearest")
    q = -np.log(np.maximum(counts, 0.5) / i0_v)
    qlo, qhi = np.percentile(q, [plo, phi])
    if qhi - qlo < 1e-9:
        qhi = qlo + 1e-9
    img = np.clip((q - qlo) / (qhi - qlo), 0.0, 1.0) ** g
    img = img.astype(np.float32)
    if return_params:
        return img, {"i0": i0_v, "scatter_fraction": sf, "blur_mm": blur, "gamma": g,
                     "window_percentiles": [plo, phi], "noise": bool(noise)}
    return img


def to_uint8(image01: np.ndarray) -> np.ndarray:
    """[0, 1] float image to uint8 display values (rounded, clipped first: no overflow)."""
    return np.round(np.clip(np.asarray(image01, dtype=np.float64), 0.0, 1.0) * 255.0).astype(np.uint8)


# ----------------------------------------------------------------------------------------------- training pairs
def _png_bytes(image_u8: np.ndarray) -> bytes:
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(image_u8, dtype=np.uint8), mode="L").save(buf, format="PNG")
    return buf.getvalue()


def _matching_labels(ct: Volume, labels: Volume) -> tuple[Volume, str]:
    """The label volume on the CT grid (nearest-neighbour resampling when the grids differ)."""
    from MedSegAILib.core.resample import resample_volume

    if labels.same_geometry(ct):
        return labels, "same grid as the CT"
    corners = np.array([[a, b, c] for a in (0, 1) for b in (0, 1) for c in (0, 1)], float)
    lab_box = labels.index_to_lps(corners * (np.asarray(labels.size_ijk) - 1))
    in_ct = ct.lps_to_index(lab_box)
    lo, hi = in_ct.min(axis=0), in_ct.max(axis=0)
    if np.any(hi < -0.5) or np.any(lo > np.asarray(ct.size_ijk) - 0.5):
        raise InputError("The label volume does not overlap the CT in space (their geometries are unrelated); "
                         "give the label map that was drawn on this CT.")
    res = resample_volume(labels, reference=ct.geometry(), interpolation="nearest", default_value=0)
    return res, "resampled onto the CT grid with nearest-neighbour interpolation (the grids differed)"


def make_drr_pairs(
    ct: Volume,
    labels: Volume,
    out_dir: Union[str, Path],
    *,
    n: int = 6,
    rng: Union[int, np.random.Generator, None] = 0,
    size: int = 256,
    pixel_mm: float = 0.5,
    sdd_range_mm: RangeOrValue = (900.0, 1200.0),
    odd_range_mm: RangeOrValue = (20.0, 60.0),
    view: Sequence[float] = (0.0, 1.0, 0.0),
    up: Sequence[float] = (0.0, 0.0, 1.0),
    min_path_mm: float = 1.0,
    ignore: Sequence[int] = (),
    on_top: Sequence[int] = (),
    label_names: Optional[Mapping[int, str]] = None,
    bone_slope: float = 1.0,
    step_mm: Optional[float] = None,
    overwrite: bool = False,
    device: Any = "cpu",
    progress: Optional[Progress] = None,
    cancel: Optional[CancelToken] = None,
) -> list[dict[str, Any]]:
    """Write ``n`` random DRR / label-image pairs of a CT (HU) and its bone label volume to ``out_dir``.

    Per projection ``i``: ``drr_{i:03d}.nrrd`` (float radiograph in [0, 1] on the detector geometry),
    ``drr_{i:03d}.png`` (8-bit), ``label_{i:03d}.nrrd`` and ``label_{i:03d}.png`` (uint8 label ids, raw
    values - not scaled for display). ``drr.json`` records the geometry of every projection, the radiograph
    parameters, the label names, the overlap rule and the seed. The isocentre is the centre of the labelled
    bones' bounding box. Returns the per-projection records written to ``drr.json``.
    """
    out = Path(out_dir)
    if ct.is_2d or labels.is_2d:
        raise InputError("The CT and the label volume must be 3-D; a single slice or a radiograph cannot be "
                         "projected.")
    if n < 1 or size < 2 or not pixel_mm > 0:
        raise InputError("Need n >= 1 projections, a detector of at least 2 pixels and a positive pixel size.")
    if out.exists() and any(out.iterdir()) and not overwrite:
        raise OutputError(f"The output folder {out} exists and is not empty; choose another folder or pass "
                          "--overwrite.")
    seed = rng if isinstance(rng, (int, np.integer)) or rng is None else None
    gen = rng if isinstance(rng, np.random.Generator) else np.random.default_rng(rng)
    progress = progress or Progress(None)
    lab_vol, lab_note = _matching_labels(ct, labels)
    lab_arr = np.asarray(lab_vol.array)
    if not np.issubdtype(lab_arr.dtype, np.integer):
        if np.all(np.isfinite(lab_arr)) and np.all(lab_arr == np.round(lab_arr)):
            lab_arr = lab_arr.astype(np.int64)
        else:
            raise InputError("The label volume holds non-integer values; give a label map (integer ids).")
    if lab_arr.min() < 0:
        raise InputError("The label volume holds negative ids; label ids must be 0 (background) or positive.")
    kept = [v for v in np.unique(lab_arr) if v > 0 and v not in set(int(x) for x in ignore)]
    if not kept:
        raise InputError("The label volume is empty (no labelled voxels other than ignored labels); nothing to "
                         "project.")
    n_labels = int(lab_arr.max())
    if n_labels > 255:
        raise InputError(f"At most 255 labels are supported; the volume holds ids up to {n_labels}.")
    lab_vol = lab_vol.with_array(lab_arr.astype(np.uint8))
    mu = ct.with_array(hu_to_mu(ct.array, bone_slope=bone_slope))
    fg = np.argwhere(lab_arr > 0)  # (k, j, i)
    center = ct.index_to_lps(((fg.min(axis=0) + fg.max(axis=0)) / 2.0)[::-1])[0]
    out.mkdir(parents=True, exist_ok=True)
    from MedSegAILib.core.io import atomic_write_bytes, write_volume

    records: list[dict[str, Any]] = []
    for i in range(n):
        if cancel is not None:
            cancel.check()
        sub = progress.sub(i / n, (i + 1) / n)
        g = random_geometry(gen, center, view=view, up=up, sdd_range_mm=sdd_range_mm, odd_range_mm=odd_range_mm,
                            pixel_size_mm=pixel_mm, shape=(size, size))
        p = project(mu, g, step_mm=step_mm, device=device, progress=sub.sub(0.0, 0.6), cancel=cancel)
        paths = project_labels(lab_vol, g, n_labels, step_mm=step_mm, device=device, progress=sub.sub(0.6, 0.95),
                               cancel=cancel)
        seg = resolve_overlaps(paths, min_path_mm=min_path_mm, ignore=ignore, on_top=on_top)
        img, params = radiograph(p, gen, pixel_size=pixel_mm, return_params=True)
        stem = f"{i:03d}"
        write_volume(g.image_volume(img, modality="DX"), out / f"drr_{stem}.nrrd")
        atomic_write_bytes(out / f"drr_{stem}.png", _png_bytes(to_uint8(img)))
        write_volume(g.image_volume(seg), out / f"label_{stem}.nrrd")
        atomic_write_bytes(out / f"label_{stem}.png", _png_bytes(seg))
        records.append({"index": i, "image": f"drr_{stem}.nrrd", "image_png": f"drr_{stem}.png",
                        "label": f"label_{stem}.nrrd", "label_png": f"label_{stem}.png",
                        "geometry": g.to_dict(), "radiograph": params,
                        "labels_present": [int(x) for x in np.unique(seg) if x > 0]})
        sub(1.0, f"projection {i + 1}/{n}")
    meta = {
        "format": "medsegai-drr", "version": 1, "seed": None if seed is None else int(seed),
        "n": n, "detector": {"shape": [size, size], "pixel_mm": pixel_mm},
        "overlap_rule": OVERLAP_RULE, "min_path_mm": min_path_mm, "ignore_labels": [int(x) for x in ignore],
        "on_top_labels": [int(x) for x in on_top],
        "label_names": {str(k): v for k, v in (label_names or {}).items()},
        "attenuation": {"model": "mu = mu_water (1 + HU/1000), clipped at 0", "mu_water_per_mm": MU_WATER_60KEV,
                        "bone_slope": bone_slope},
        "labels_grid": lab_note, "isocentre_lps": center.tolist(),
        "conventions": "LPS mm; image row 0 = top, u = column axis, v = row axis, normal = u x v from source to "
                       "detector (image seen from the source side); label PNGs hold raw label ids",
        "projections": records,
    }
    atomic_write_bytes(out / "drr.json", json.dumps(meta, indent=1).encode())
    progress(1.0, "done")
    return records
