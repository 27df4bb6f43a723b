"""Pre-processing of the parotid task, shared by the task and its training recipe (one definition of every constant).

**Canonical grid.** Both networks work on grids whose axes are the patient axes (identity direction in LPS: ``i``
runs towards the patient's left, ``j`` posterior, ``k`` superior). Whatever the input's direction matrix -- a
flipped, transposed or oblique volume -- it is resampled onto such a grid first, so channel 1 of the network is
always the gland at the patient's right and channel 2 the one at the left: the side comes from the geometry,
never from how the array happens to be stored.

**Intensities.** HU clipped to the paper's window ``[-200, 300]`` and mapped linearly to ``[0, 1]``; outside the
scanned field of view the value is that of air (-1024 HU, i.e. 0).

**Two stages.**

1. *Localiser*: the whole field of view on a 4 mm canonical grid (Gaussian anti-aliasing first), through a small
   3-D U-Net -> coarse probabilities of the right and left gland; the largest component per side gives a box.
2. *Segmenter*: the union of the boxes plus a margin, on the 1 mm canonical grid, sliding windows of 128 x 128 x 64
   voxels (``patch`` is in ``[k, j, i]`` order: 64 slices of 128 x 128) with Gaussian blending.

The softmax probabilities (not labels) are then resampled onto the input grid, and the arg-max is taken there.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Mapping, Optional, Sequence

import numpy as np

from MedSegAILib.core.volume import Geometry, Volume

AIR_HU = -1024.0
RIGHT, LEFT = 1, 2
SIDE_NAMES = {RIGHT: "right", LEFT: "left"}


@dataclass(frozen=True)
class ParotidConfig:
    """Every pre-processing constant; stored in the model manifest's ``input`` dict so a model carries its own."""

    spacing_mm: float = 1.0
    window_hu: tuple[float, float] = (-200.0, 300.0)
    patch: tuple[int, int, int] = (64, 128, 128)  #: segmenter window, [k, j, i] voxels
    overlap: float = 0.25
    localizer_spacing_mm: float = 4.0  #: the field of view is resampled at this spacing, then block-averaged
    localizer_pool: int = 2  #: ... by this factor per axis: the localiser sees 8 mm voxels
    localizer_patch: tuple[int, int, int] = (24, 32, 32)  #: training crops of the localiser, [k, j, i] pooled voxels
    localizer_divisor: int = 16  #: the 4 mm grid is padded to a multiple of this (pool x the net's 3 poolings)
    localizer_threshold: float = 0.5
    min_gland_ml: float = 2.0  #: a coarse component smaller than this is not taken for a gland
    roi_margin_mm: float = 16.0

    @classmethod
    def from_mapping(cls, m: Optional[Mapping[str, Any]]) -> "ParotidConfig":
        m = dict(m or {})
        known = {f for f in cls.__dataclass_fields__}
        kw = {k: (tuple(v) if isinstance(v, list) else v) for k, v in m.items() if k in known}
        return cls(**kw)

    def to_mapping(self) -> dict[str, Any]:
        return {k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(self).items()}

    @property
    def patch_mm(self) -> np.ndarray:
        """Physical size of a segmenter window along x, y, z (mm)."""
        return np.asarray(self.patch[::-1], float) * self.spacing_mm


def window(hu: np.ndarray, cfg: ParotidConfig) -> np.ndarray:
    """HU -> ``[0, 1]`` over the window (float32)."""
    lo, hi = cfg.window_hu
    return np.clip((np.asarray(hu, np.float32) - np.float32(lo)) / np.float32(hi - lo), 0.0, 1.0)


# ---------------------------------------------------------------------------------------------- grids
def corners_lps(geom: Geometry | Volume) -> np.ndarray:
    """The eight outer corners (LPS, mm) of a grid: voxel centres +- half a voxel."""
    shape = geom.shape
    d = np.asarray(geom.direction, float)
    sp = np.asarray(geom.spacing, float)
    ijk = np.array([[a, b, c] for a in (-0.5, shape[2] - 0.5) for b in (-0.5, shape[1] - 0.5)
                    for c in (-0.5, shape[0] - 0.5)])
    return (ijk * sp) @ d.T + np.asarray(geom.origin, float)


def box_of(geom: Geometry | Volume) -> tuple[np.ndarray, np.ndarray]:
    """Axis-aligned LPS bounding box ``(lo, hi)`` of a grid's physical extent."""
    c = corners_lps(geom)
    return c.min(axis=0), c.max(axis=0)


def canonical_grid(lo: np.ndarray, hi: np.ndarray, spacing: float, multiple: int = 1) -> Geometry:
    """Identity-direction grid of isotropic ``spacing`` covering the LPS box ``[lo, hi]`` (centred on it), each
    size rounded up to a multiple of ``multiple``."""
    lo, hi = np.asarray(lo, float), np.asarray(hi, float)
    n = np.maximum(np.ceil((hi - lo) / spacing - 1e-6).astype(int), 1)
    n = (np.ceil(n / multiple) * multiple).astype(int)
    centre = (lo + hi) / 2.0
    origin = centre - (n - 1) / 2.0 * spacing
    return Geometry(tuple(int(v) for v in n[::-1]), (float(spacing),) * 3, tuple(origin.tolist()), np.eye(3))


def centred_box(centre: np.ndarray, size_mm: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    c, h = np.asarray(centre, float), np.asarray(size_mm, float) / 2.0
    return c - h, c + h


def to_grid(vol: Volume, grid: Geometry, *, interpolation: str = "linear", default: float = AIR_HU,
            antialias: bool = True) -> np.ndarray:
    """``vol`` resampled onto ``grid`` (any direction), float32 array.

    With ``antialias``, a Gaussian of sigma ``0.4 x`` the target spacing (per physical axis, only where the
    target is coarser than the source) is applied first, so a 4 mm localiser grid does not alias 1 mm detail.
    """
    import SimpleITK as sitk

    from MedSegAILib.core.io import to_sitk

    img = to_sitk(vol)
    if img.GetPixelID() != sitk.sitkFloat32:
        img = sitk.Cast(img, sitk.sitkFloat32)
    if antialias and interpolation != "nearest":
        src_sp = np.asarray(vol.spacing, float)
        tgt = float(np.max(grid.spacing))
        sig = np.where(tgt > 1.5 * src_sp, 0.4 * tgt, 0.0)
        if sig.max() > 0:
            img = sitk.SmoothingRecursiveGaussian(img, [float(max(s, 1e-3)) for s in sig])
    f = sitk.ResampleImageFilter()
    f.SetSize(tuple(int(v) for v in grid.shape[::-1]))
    f.SetOutputSpacing(tuple(float(v) for v in grid.spacing))
    f.SetOutputOrigin(tuple(float(v) for v in grid.origin))
    f.SetOutputDirection(tuple(float(v) for v in np.asarray(grid.direction).ravel()))
    f.SetInterpolator(sitk.sitkNearestNeighbor if interpolation == "nearest" else sitk.sitkLinear)
    f.SetDefaultPixelValue(float(default))
    return sitk.GetArrayFromImage(f.Execute(img)).astype(np.float32, copy=False)


def localizer_hu(vol: Volume, cfg: ParotidConfig) -> tuple[np.ndarray, Geometry]:
    """The whole field of view on the canonical 4 mm grid (HU, anti-aliased) and that grid."""
    lo, hi = box_of(vol)
    grid = canonical_grid(lo, hi, cfg.localizer_spacing_mm, cfg.localizer_divisor)
    return to_grid(vol, grid), grid


def block_mean(arr: np.ndarray, f: int) -> np.ndarray:
    """Mean over non-overlapping ``f x f x f`` blocks (sizes must be multiples of ``f``)."""
    if f == 1:
        return np.asarray(arr, np.float32)
    k, j, i = arr.shape
    return np.asarray(arr, np.float32).reshape(k // f, f, j // f, f, i // f, f).mean(axis=(1, 3, 5))


def pooled_grid(grid: Geometry, f: int) -> Geometry:
    """The grid of :func:`block_mean`: voxel centres at the centres of the blocks."""
    d = np.asarray(grid.direction, float)
    sp = np.asarray(grid.spacing, float)
    origin = np.asarray(grid.origin, float) + d @ ((f - 1) / 2.0 * sp)
    return Geometry(tuple(n // f for n in grid.shape), tuple(float(v) for v in sp * f), tuple(origin.tolist()),
                    d.copy())


def pooled_labels(lab: np.ndarray, f: int) -> np.ndarray:
    """Labels of the pooled grid: a block is a gland when at least 3 of its 8 (f = 2) sub-voxels are (the larger
    count wins when both are), so the thin parts of a gland are not lost to the background at 8 mm."""
    if f == 1:
        return lab.astype(np.uint8)
    k, j, i = lab.shape
    blocks = lab.reshape(k // f, f, j // f, f, i // f, f)
    n = f ** 3
    counts = [(blocks == s).sum(axis=(1, 3, 5)) for s in (RIGHT, LEFT)]
    out = np.zeros(counts[0].shape, np.uint8)
    need = max(1, int(round(3 * n / 8)))
    out[(counts[0] >= need) & (counts[0] >= counts[1])] = RIGHT
    out[(counts[1] >= need) & (counts[1] > counts[0])] = LEFT
    return out


def localizer_input(vol: Volume, cfg: ParotidConfig) -> tuple[np.ndarray, Geometry]:
    """``(x, grid)``: the whole field of view at 4 mm block-averaged to 8 mm, windowed, ``(1, D, H, W)``.

    The recipe caches the 4 mm HU volume and applies the same :func:`block_mean`, so training and use agree."""
    hu, grid = localizer_hu(vol, cfg)
    return window(block_mean(hu, cfg.localizer_pool), cfg)[None], pooled_grid(grid, cfg.localizer_pool)


def segmenter_input(vol: Volume, lo: np.ndarray, hi: np.ndarray, cfg: ParotidConfig) -> tuple[np.ndarray, Geometry]:
    """``(x, grid)``: the LPS box ``[lo, hi]`` (grown to at least one window) at 1 mm, windowed, ``(1, D, H, W)``."""
    lo, hi = np.asarray(lo, float), np.asarray(hi, float)
    size = np.maximum(hi - lo, cfg.patch_mm)
    lo, hi = centred_box((lo + hi) / 2.0, size)
    grid = canonical_grid(lo, hi, cfg.spacing_mm)
    return window(to_grid(vol, grid, antialias=False), cfg)[None], grid


def probabilities_to_input(probs: np.ndarray, src: Geometry, dst: Geometry) -> np.ndarray:
    """Class probabilities ``(K, ...)`` on ``src`` resampled (linear) onto ``dst`` (any direction).

    Only the part of ``dst`` inside ``src``'s box is interpolated; everything else is pure background. Linear
    interpolation of probabilities followed by an arg-max on ``dst`` is the standard way to bring a soft
    segmentation to another grid without the staircase of resampled labels.
    """
    import SimpleITK as sitk

    k = probs.shape[0]
    out = np.zeros((k,) + tuple(dst.shape), np.float32)
    out[0] = 1.0
    box = sub_box(src, dst)
    if box is None:
        return out
    sl, sub = box
    for c in range(k):
        img = sitk.GetImageFromArray(np.ascontiguousarray(probs[c], np.float32))
        img.SetSpacing(tuple(float(v) for v in src.spacing))
        img.SetOrigin(tuple(float(v) for v in src.origin))
        img.SetDirection(tuple(float(v) for v in np.asarray(src.direction).ravel()))
        f = sitk.ResampleImageFilter()
        f.SetSize(tuple(int(v) for v in sub.shape[::-1]))
        f.SetOutputSpacing(tuple(float(v) for v in sub.spacing))
        f.SetOutputOrigin(tuple(float(v) for v in sub.origin))
        f.SetOutputDirection(tuple(float(v) for v in np.asarray(sub.direction).ravel()))
        f.SetInterpolator(sitk.sitkLinear)
        f.SetDefaultPixelValue(1.0 if c == 0 else 0.0)
        out[(c,) + sl] = sitk.GetArrayFromImage(f.Execute(img))
    return out


def sub_box(src: Geometry, dst: Geometry) -> Optional[tuple[tuple[slice, slice, slice], Geometry]]:
    """The index box of ``dst`` (``[k, j, i]`` slices) that covers ``src``'s physical extent, and its grid;
    ``None`` when they do not overlap."""
    d = np.asarray(dst.direction, float)
    m = d @ np.diag(np.asarray(dst.spacing, float))
    ijk = (corners_lps(src) - np.asarray(dst.origin, float)) @ np.linalg.inv(m).T
    size = np.asarray(dst.shape[::-1])
    lo = np.clip(np.floor(ijk.min(axis=0)).astype(int) - 1, 0, size)
    hi = np.clip(np.ceil(ijk.max(axis=0)).astype(int) + 2, 0, size)
    if np.any(hi <= lo):
        return None
    origin = np.asarray(dst.origin, float) + m @ lo
    sub = Geometry(tuple(int(v) for v in (hi - lo)[::-1]), tuple(dst.spacing), tuple(origin.tolist()), d.copy())
    return (slice(lo[2], hi[2]), slice(lo[1], hi[1]), slice(lo[0], hi[0])), sub


# ---------------------------------------------------------------------------------------------- localisation
@dataclass
class GlandBox:
    side: int
    centre_lps: np.ndarray
    lo_lps: np.ndarray
    hi_lps: np.ndarray
    volume_ml: float
    mean_probability: float


@dataclass
class Localisation:
    glands: dict[int, GlandBox] = field(default_factory=dict)
    candidates_rejected: int = 0

    def box(self, margin_mm: float) -> Optional[tuple[np.ndarray, np.ndarray]]:
        if not self.glands:
            return None
        lo = np.min([g.lo_lps for g in self.glands.values()], axis=0) - margin_mm
        hi = np.max([g.hi_lps for g in self.glands.values()], axis=0) + margin_mm
        return lo, hi


def localise(probs: np.ndarray, grid: Geometry, cfg: ParotidConfig, image: Optional[np.ndarray] = None) -> Localisation:
    """The (up to) two largest parotid regions of the localiser output, each with its side.

    A voxel is parotid where the arg-max is a gland class and the summed gland probability is at least
    ``localizer_threshold``; regions below ``min_gland_ml`` are rejected. The **side comes from the geometry**,
    not from the localiser's two channels (on a patient-aligned grid, +x is the patient's left): with two regions
    the one at larger x is the left gland; with one, its x is compared with the body's centre in ``image`` (the
    windowed localiser input) on the same slices.
    """
    from scipy import ndimage

    p_gland = probs[1] + probs[2]
    mask = (np.argmax(probs, axis=0) != 0) & (p_gland >= cfg.localizer_threshold)
    vox_ml = float(np.prod(grid.spacing)) / 1000.0
    vol = Volume(np.zeros((1, 1, 1), np.uint8), grid.spacing, grid.origin, np.asarray(grid.direction))  # geometry only
    out = Localisation()
    if not mask.any():
        return out
    comp, n = ndimage.label(mask, structure=np.ones((3, 3, 3), bool))
    sizes = np.bincount(comp.ravel())[1:]
    order = [int(k) + 1 for k in np.argsort(sizes)[::-1] if sizes[k] * vox_ml >= cfg.min_gland_ml][:2]
    out.candidates_rejected = int(n) - len(order)
    boxes = []
    half = np.asarray(grid.spacing) / 2.0
    for lab in order:
        idx = np.argwhere(comp == lab)  # [k, j, i]
        p = p_gland[comp == lab]
        centre = (idx * p[:, None]).sum(0) / p.sum()
        pts = vol.index_to_lps(np.stack([idx.min(0), idx.max(0)])[:, ::-1].astype(float))
        boxes.append((vol.index_to_lps(centre[::-1][None])[0], pts.min(0) - half, pts.max(0) + half,
                      float(len(idx) * vox_ml), float(p.mean()), idx))
    if not boxes:
        return out
    if len(boxes) == 2 and abs(boxes[0][0][0] - boxes[1][0][0]) > 30.0:
        boxes.sort(key=lambda b: b[0][0])
        sides = [RIGHT, LEFT]
    else:
        boxes = boxes[:1]
        ks = np.unique(boxes[0][5][:, 0])
        body_x = _body_x(image, ks, vol) if image is not None else None
        sides = [LEFT if boxes[0][0][0] > (body_x if body_x is not None else 0.0) else RIGHT]
    for side, (c, lo, hi, ml, mp, _idx) in zip(sides, boxes):
        out.glands[side] = GlandBox(side=side, centre_lps=c, lo_lps=lo, hi_lps=hi, volume_ml=ml, mean_probability=mp)
    return out


def _body_x(image: np.ndarray, ks: np.ndarray, geom: Volume) -> Optional[float]:
    """LPS x of the body's centre (windowed voxels above 0.05, i.e. denser than fat) on slices ``ks``."""
    body = np.argwhere(np.asarray(image)[ks] > 0.05)
    if not len(body):
        return None
    return float(geom.index_to_lps(np.array([[body[:, 2].mean(), 0.0, 0.0]]))[0][0])


def body_centre_x(image: np.ndarray, grid: Geometry, gland: GlandBox) -> Optional[float]:
    """The body's centre x (LPS) on the localiser slices that hold ``gland``'s box."""
    vol = Volume(np.zeros((1, 1, 1), np.uint8), grid.spacing, grid.origin, np.asarray(grid.direction))
    k_lo = vol.lps_to_index(gland.lo_lps[None])[0][2]
    k_hi = vol.lps_to_index(gland.hi_lps[None])[0][2]
    ks = np.arange(max(0, int(np.floor(min(k_lo, k_hi)))), min(grid.shape[0], int(np.ceil(max(k_lo, k_hi))) + 1))
    return _body_x(image, ks, vol) if len(ks) else None
