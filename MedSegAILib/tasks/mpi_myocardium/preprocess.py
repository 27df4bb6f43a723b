"""Pre-processing shared by training and inference of the mpi-myocardium task, in physical units.

All network grids keep the **direction matrix of the input volume** and only change spacing, origin and
size. Grids that share a direction are related axis by axis, so every resampling here is separable: one
small matrix per axis (:func:`axis_operator`). That gives

* exact geometry for any input orientation (oblique included), and
* proper anti-aliasing: a destination voxel receives the *average* of the linearly interpolated source over
  its own extent, so down-sampling (fine input -> 6 mm localizer grid, 3 mm network grid -> 6 mm input
  grid) area-averages instead of point-sampling, and up-sampling is plain linear interpolation.

Labels are never interpolated: class *probabilities* are resampled and the argmax is taken on the target grid
(:func:`probabilities_to_grid`).

The constants (spacings, network box size, normalisation percentile...) come from the ``input`` dict of the
model's manifest entry (:class:`PreprocessConfig.from_mapping`), so training and inference share them.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Mapping, Optional, Sequence

import numpy as np
from scipy import ndimage

from MedSegAILib.core.volume import Geometry, Volume

#: Default constants; the manifest entry's ``input`` dict overrides them.
DEFAULTS: dict[str, Any] = {
    "modality": "NM",
    "localizer_spacing_mm": 8.0,
    "localizer_divisor": 8,
    "localizer_max_size": 64,
    "segmenter_spacing_mm": 3.0,
    "segmenter_shape": [48, 48, 48],
    "normalise_percentile": 99.5,
    "normalise_clip": 4.0,
    "localizer_threshold": 0.5,
}


@dataclass(frozen=True)
class PreprocessConfig:
    modality: str = "NM"
    localizer_spacing_mm: float = 8.0  #: isotropic voxel size of the localizer grid
    localizer_divisor: int = 8  #: localizer grid sizes are padded to multiples of this (2**levels)
    localizer_max_size: int = 64  #: larger fields of view are cropped (centred) to this many voxels (512 mm)
    segmenter_spacing_mm: float = 3.0  #: isotropic voxel size of the segmenter box
    segmenter_shape: tuple[int, int, int] = (48, 48, 48)  #: segmenter box in voxels ([k, j, i])
    normalise_percentile: float = 99.5  #: intensities are divided by this percentile of the in-field voxels
    normalise_clip: float = 4.0  #: ...and clipped to [0, normalise_clip]
    localizer_threshold: float = 0.5  #: LV probability threshold of the localizer

    @classmethod
    def from_mapping(cls, m: Optional[Mapping[str, Any]]) -> "PreprocessConfig":
        d = dict(DEFAULTS)
        if m:
            d.update({k: v for k, v in m.items() if k in DEFAULTS})
        d["segmenter_shape"] = tuple(int(v) for v in d["segmenter_shape"])
        return cls(**d)

    def to_mapping(self) -> dict[str, Any]:
        d = asdict(self)
        d["segmenter_shape"] = list(self.segmenter_shape)
        return d

    @property
    def segmenter_box_mm(self) -> float:
        return float(self.segmenter_spacing_mm * self.segmenter_shape[0])


# ---------------------------------------------------------------------------------------------- resampling
# (the aligned-grid resampler lives in the core, shared with other tasks; re-exported here for the recipe/tests)
from MedSegAILib.core.aligned import aligned_operators, axis_operator, inside_fraction, resample_aligned  # noqa: E402,F401


# ---------------------------------------------------------------------------------------------- grids
def centred_grid(reference: Geometry | Volume, center_lps: np.ndarray, spacing: float, shape: Sequence[int]) -> Geometry:
    """A grid with ``reference``'s direction, isotropic ``spacing``, ``shape`` ([k, j, i]) centred on a point."""
    d = np.asarray(reference.direction, float)
    n_ijk = np.asarray(shape[::-1], float)
    origin = np.asarray(center_lps, float) - d @ ((n_ijk - 1) / 2.0 * spacing)
    return Geometry(tuple(int(s) for s in shape), (float(spacing),) * 3, tuple(origin.tolist()), d.copy())


def localizer_grid(vol: Volume, cfg: PreprocessConfig) -> Geometry:
    """Grid covering the input field of view at the localizer spacing, sizes a multiple of the divisor."""
    s = cfg.localizer_spacing_mm
    extent = np.asarray(vol.size_ijk, float) * np.asarray(vol.spacing, float)
    n = np.ceil(extent / s / cfg.localizer_divisor).astype(int) * cfg.localizer_divisor
    cap = (cfg.localizer_max_size // cfg.localizer_divisor) * cfg.localizer_divisor
    n = np.clip(n, cfg.localizer_divisor, cap)
    return centred_grid(vol, vol.center_lps(), s, tuple(int(v) for v in n[::-1]))


def normalise(array: np.ndarray, cfg: PreprocessConfig, mask: Optional[np.ndarray] = None) -> np.ndarray:
    """Divide by the ``normalise_percentile`` of the (in-field) voxels and clip to [0, normalise_clip]."""
    vals = array[mask] if mask is not None and mask.any() else array.ravel()
    ref = float(np.percentile(vals, cfg.normalise_percentile)) if vals.size else 0.0
    if not np.isfinite(ref) or ref <= 0:
        ref = float(np.max(vals)) if vals.size and np.max(vals) > 0 else 1.0
    return np.clip(array / np.float32(ref), 0.0, cfg.normalise_clip).astype(np.float32)


def prepare_localizer_input(vol: Volume, cfg: PreprocessConfig) -> tuple[np.ndarray, Geometry]:
    """``(x, grid)``: the whole field of view on the localizer grid, normalised, shaped ``(1, D, H, W)``."""
    grid = localizer_grid(vol, cfg)
    src = vol.geometry()
    arr = resample_aligned(vol.array, src, grid, 0.0)
    inside = inside_fraction(src, grid) > 0.5
    return normalise(arr, cfg, inside)[None], grid


def prepare_segmenter_input(vol: Volume, center_lps: np.ndarray, cfg: PreprocessConfig,
                            shape: Optional[Sequence[int]] = None) -> tuple[np.ndarray, Geometry]:
    """``(x, grid)``: the network box around ``center_lps`` at the segmenter spacing, ``(1, D, H, W)``.

    ``shape`` overrides the box size (training uses a slightly larger box for random crops).
    """
    grid = centred_grid(vol, center_lps, cfg.segmenter_spacing_mm, shape or cfg.segmenter_shape)
    src = vol.geometry()
    arr = resample_aligned(vol.array, src, grid, 0.0)
    inside = inside_fraction(src, grid) > 0.5
    return normalise(arr, cfg, inside)[None], grid


def probabilities_to_grid(probs: np.ndarray, src: Geometry, dst: Geometry, background: int = 0) -> np.ndarray:
    """Map class probabilities ``(K, ...)`` on ``src`` to ``dst`` (same direction); outside ``src`` is background.

    Only the part of ``dst`` overlapping ``src`` is computed; the rest is filled with pure background.
    """
    k = probs.shape[0]
    out_val = np.zeros(k, np.float32)
    out_val[background] = 1.0
    full = np.zeros((k,) + tuple(dst.shape), np.float32)
    full[background] = 1.0
    # overlap box of dst indices
    d = np.asarray(src.direction, float)
    corners_src = np.array([[a, b, c] for a in (-0.5, src.shape[2] - 0.5) for b in (-0.5, src.shape[1] - 0.5)
                            for c in (-0.5, src.shape[0] - 0.5)])
    pts = corners_src * np.asarray(src.spacing) @ d.T + np.asarray(src.origin)
    ijk = (pts - np.asarray(dst.origin)) @ np.linalg.inv(d @ np.diag(dst.spacing)).T
    lo = np.clip(np.floor(ijk.min(axis=0)).astype(int) - 1, 0, np.asarray(dst.shape[::-1]))
    hi = np.clip(np.ceil(ijk.max(axis=0)).astype(int) + 2, 0, np.asarray(dst.shape[::-1]))
    if np.any(hi <= lo):
        return full
    sub_origin = np.asarray(dst.origin) + d @ (lo * np.asarray(dst.spacing))
    sub = Geometry(tuple(int(v) for v in (hi - lo)[::-1]), dst.spacing, tuple(sub_origin.tolist()), d.copy())
    full[:, lo[2]:hi[2], lo[1]:hi[1], lo[0]:hi[0]] = resample_aligned(probs, src, sub, out_val)
    return full


# ---------------------------------------------------------------------------------------------- localisation
@dataclass
class Localisation:
    center_lps: np.ndarray
    volume_ml: float  #: volume of the kept LV component on the localizer grid
    mean_probability: float  #: mean LV probability inside it (a confidence)
    n_components: int  #: number of substantial candidate components (>= 20 % of the kept one's probability mass)
    fallback: bool  #: True when nothing passed the threshold and the probability peak was used


def localise_lv(prob_lv: np.ndarray, grid: Geometry, cfg: PreprocessConfig) -> Localisation:
    """Centre of the largest LV component (probability-weighted centroid) on the localizer grid."""
    mask = prob_lv >= cfg.localizer_threshold
    lab, n = ndimage.label(mask)
    voxel_ml = float(np.prod(grid.spacing)) / 1000.0
    if n == 0:
        # nothing confident: take the probability-weighted centroid around the maximum
        peak = np.unravel_index(int(np.argmax(prob_lv)), prob_lv.shape)
        sl = tuple(slice(max(0, p - 4), p + 5) for p in peak)
        w = prob_lv[sl].astype(np.float64)
        idx = np.indices(w.shape).reshape(3, -1).T + np.array([s.start for s in sl])
        c_kji = (idx * w.reshape(-1, 1)).sum(0) / max(w.sum(), 1e-12)
        center = Volume(np.zeros((1, 1, 1)), grid.spacing, grid.origin, grid.direction).index_to_lps(c_kji[::-1])[0]
        return Localisation(center, 0.0, float(prob_lv.max()), 0, True)
    sizes = ndimage.sum_labels(prob_lv, lab, index=np.arange(1, n + 1))
    best = int(np.argmax(sizes)) + 1
    comp = lab == best
    w = np.where(comp, prob_lv, 0.0).astype(np.float64)
    idx = np.argwhere(comp)
    c_kji = (idx * w[comp].reshape(-1, 1)).sum(0) / w[comp].sum()
    center = Volume(np.zeros((1, 1, 1)), grid.spacing, grid.origin, grid.direction).index_to_lps(c_kji[::-1])[0]
    n_substantial = int((sizes >= 0.2 * sizes[best - 1]).sum())
    return Localisation(center, float(comp.sum() * voxel_ml), float(prob_lv[comp].mean()), n_substantial, False)
