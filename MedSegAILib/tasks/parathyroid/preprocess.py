"""Pre-processing of the learned (NM-USNet) subtraction, shared by the training recipe and the task.

The seed method has no pre-processing code although its figure shows a "global normalisation" step; this
module defines it, in physical units:

* **Network grid.** The Tc image's grid with the same direction and centre, an isotropic in-plane pixel of
  ``pixel_mm`` and ``max(size, ceil(FOV / pixel_mm) rounded up to a multiple of 32)`` pixels per side (so it
  covers the whole field of view, is at least one tile, and suits U-Nets of up to 5 levels). Outside the
  field of view the network sees zeros.
* **Resampling in count-density units.** :func:`MedSegAILib.core.aligned.resample_aligned`
  (separable; a coarser destination pixel receives the *mean* of the linear interpolant over its extent, a
  finer one the linear interpolant). No area rescaling: values stay "counts per native Tc pixel", so the
  network output times the Tc normaliser is directly comparable with the truth ``parathyroid`` image and with
  the Tc image itself.
* **Global normalisation.** For an image ``I`` on its native grid::

      N(I) = percentile_p( G_sigma * I )      p = norm_percentile,  sigma = smooth_fwhm_mm / (2 sqrt(2 ln 2)) per axis in pixels

  i.e. a high percentile of the Gaussian-smoothed image (a single hot pixel or Poisson spike cannot set the
  scale; with a 128 x 128 neck image the 99.5th percentile sits in the thyroid). Smoothing uses
  ``mode="constant"`` (zeros beyond the field of view). When it is not positive and finite (an empty image)
  the maximum is used, and when that is also 0 the normaliser is 1. Channel 0 = Tc / N(Tc), channel 1 =
  iodine / N(iodine): the iodine image is normalised by **its own** normaliser, so the network has to learn
  the thyroid Tc/I scale itself (that is what the subtraction needs to estimate).
* **Targets** (training only) go through the same resampling and the Tc normaliser:
  :func:`target_to_network` = truth on the network grid / N(Tc).

The constants live in the model manifest's ``input`` dict (:meth:`PreprocessConfig.from_mapping`).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Mapping, Optional

import numpy as np

from MedSegAILib.core.filters import smooth_mm
from MedSegAILib.core.volume import Geometry, Volume
from MedSegAILib.errors import InputError
from MedSegAILib.core.aligned import resample_aligned

#: network grid sides are rounded up to a multiple of this (supports U-Nets with up to 5 levels)
GRID_MULTIPLE = 32


@dataclass(frozen=True)
class PreprocessConfig:
    """Constants of the learned subtraction (the manifest ``input`` dict)."""

    pixel_mm: float = 2.0  #: network grid pixel size (isotropic in-plane)
    size: int = 128  #: network tile; a multiple of 2**levels. Larger images are run window by window
    norm_percentile: float = 99.5  #: percentile of the smoothed image used as the global normaliser
    smooth_fwhm_mm: float = 6.0  #: FWHM of the Gaussian applied before taking that percentile

    @classmethod
    def from_mapping(cls, m: Optional[Mapping[str, Any]]) -> "PreprocessConfig":
        """Build from a manifest ``input`` dict (unknown keys such as ``modality`` are ignored)."""
        d = asdict(cls())
        if m:
            d.update({k: v for k, v in m.items() if k in d})
        return cls(pixel_mm=float(d["pixel_mm"]), size=int(d["size"]), norm_percentile=float(d["norm_percentile"]),
                   smooth_fwhm_mm=float(d["smooth_fwhm_mm"]))

    def to_mapping(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class NetGrid:
    """How to go from the network grid back to the Tc grid, and the two global normalisers."""

    geometry: Geometry  #: the network grid (same direction and centre as the Tc image)
    source: Geometry  #: the Tc image's grid
    tc_normaliser: float  #: N(Tc), in counts per native Tc pixel
    iodine_normaliser: float  #: N(iodine), in counts per native Tc pixel
    inside: np.ndarray  #: (H, W) share of each network pixel inside the Tc field of view

    @property
    def shape(self) -> tuple[int, int]:
        return int(self.geometry.shape[1]), int(self.geometry.shape[2])


# ---------------------------------------------------------------------------------------------- helpers
def global_normaliser(image: np.ndarray, spacing_ij: tuple[float, float], cfg: PreprocessConfig) -> float:
    """``N(I)``: the ``norm_percentile`` of the Gaussian-smoothed (FWHM ``smooth_fwhm_mm``) 2-D image."""
    img = np.asarray(image, dtype=np.float64)
    smooth = smooth_mm(img, spacing_ij, cfg.smooth_fwhm_mm, mode="constant")
    ref = float(np.percentile(smooth, cfg.norm_percentile))
    if not np.isfinite(ref) or ref <= 0:
        peak = float(np.max(img)) if img.size else 0.0
        ref = peak if np.isfinite(peak) and peak > 0 else 1.0
    return ref


def network_geometry(tc: Volume, cfg: PreprocessConfig) -> Geometry:
    """The network grid of a planar Tc image (see the module docstring)."""
    p = float(cfg.pixel_mm)
    fov = np.array([tc.size_ijk[0] * tc.spacing[0], tc.size_ijk[1] * tc.spacing[1]], float)
    need = np.ceil(fov / p - 1e-6).astype(int)
    n = np.maximum(int(cfg.size), np.ceil(need / GRID_MULTIPLE).astype(int) * GRID_MULTIPLE)
    spacing = (p, p, float(tc.spacing[2]))
    d = np.asarray(tc.direction, float)
    half = np.array([(n[0] - 1) / 2.0 * p, (n[1] - 1) / 2.0 * p, 0.0])
    origin = tc.center_lps() - d @ half
    return Geometry((1, int(n[1]), int(n[0])), spacing, tuple(float(v) for v in origin), d.copy())


def _check_planar(vol: Volume, name: str) -> np.ndarray:
    if not isinstance(vol, Volume):
        raise InputError(f"The {name} image must be a Volume; got {type(vol).__name__}.")
    if not vol.is_2d:
        raise InputError(f"The {name} image must be planar (one slice); got array shape {vol.shape}. "
                         "Load a single anterior frame.")
    arr = np.asarray(vol.array, dtype=np.float32)
    if not np.all(np.isfinite(arr)):
        raise InputError(f"The {name} image contains NaN or infinite values; it cannot be normalised.")
    return arr


# ---------------------------------------------------------------------------------------------- public API
def to_network(tc: Volume, iodine_on_tc: Volume, cfg: PreprocessConfig) -> tuple[np.ndarray, NetGrid]:
    """Both images on the network grid, globally normalised: ``x`` float32 ``(2, H, W)`` (0 = Tc, 1 = iodine).

    ``iodine_on_tc`` must already be registered and resampled onto the Tc grid. Negative values (interpolation
    undershoot of a registered image) are clipped to 0 before normalising.
    """
    tc_arr = _check_planar(tc, "99mTc")
    io_arr = _check_planar(iodine_on_tc, "123I")
    if not tc.same_geometry(iodine_on_tc):
        raise InputError("The iodine image must be registered and resampled onto the Tc image's grid before the "
                         "learned subtraction (same size, spacing, origin and direction).")
    tc_arr = np.clip(tc_arr, 0.0, None)
    io_arr = np.clip(io_arr, 0.0, None)
    ij = (float(tc.spacing[0]), float(tc.spacing[1]))
    n_tc = global_normaliser(tc_arr[0], ij, cfg)
    n_io = global_normaliser(io_arr[0], ij, cfg)
    geo = network_geometry(tc, cfg)
    src = tc.geometry()
    both = resample_aligned(np.stack([tc_arr, io_arr]), src, geo, 0.0)  # (2, 1, H, W)
    x = np.stack([both[0, 0] / np.float32(n_tc), both[1, 0] / np.float32(n_io)]).astype(np.float32)
    inside = resample_aligned(np.ones_like(tc_arr), src, geo, 0.0)[0]
    return x, NetGrid(geo, src, float(n_tc), float(n_io), np.ascontiguousarray(inside, dtype=np.float32))


def target_to_network(truth: Volume | np.ndarray, grid: NetGrid) -> np.ndarray:
    """Training target: the truth image (Tc counts, on the Tc grid) on the network grid / N(Tc); ``(H, W)``."""
    arr = np.asarray(truth.array if isinstance(truth, Volume) else truth, dtype=np.float32).reshape(grid.source.shape)
    return (resample_aligned(arr, grid.source, grid.geometry, 0.0)[0] / np.float32(grid.tc_normaliser)).astype(
        np.float32)


def from_network(y: np.ndarray, grid: NetGrid, tc: Volume) -> np.ndarray:
    """Network output ``(H, W)`` on the network grid -> ``(1, H', W')`` float32 on ``tc``'s grid in Tc counts
    (count-density resampling, multiplied back by the Tc normaliser)."""
    y = np.asarray(y, dtype=np.float32)
    if y.shape != grid.shape:
        raise ValueError(f"from_network: output shape {y.shape} differs from the network grid {grid.shape}")
    back = resample_aligned(y[None], grid.geometry, tc.geometry(), 0.0)
    return (back * np.float32(grid.tc_normaliser)).astype(np.float32)
