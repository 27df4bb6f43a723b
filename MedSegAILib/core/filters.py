"""Gaussian smoothing specified in millimetres (FWHM), the one conversion used everywhere.

A Gaussian of full width at half maximum ``FWHM`` has ``sigma = FWHM / (2 sqrt(2 ln 2)) ~ FWHM / 2.3548``; in
pixels along an axis of spacing ``s`` mm, ``sigma_px = sigma / s``.
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np

FWHM_TO_SIGMA = 1.0 / (2.0 * math.sqrt(2.0 * math.log(2.0)))


def sigma_px(spacing_ij: Sequence[float], fwhm_mm: float) -> tuple[float, float]:
    """Per-axis sigma in pixels for a 2-D ``[row j, column i]`` array with ``spacing_ij = (si, sj)`` mm."""
    si, sj = float(spacing_ij[0]), float(spacing_ij[1])
    return fwhm_mm * FWHM_TO_SIGMA / sj, fwhm_mm * FWHM_TO_SIGMA / si


def smooth_mm(img: np.ndarray, spacing_ij: Sequence[float], fwhm_mm: float, *, mode: str = "nearest",
              truncate: float = 4.0) -> np.ndarray:
    """Gaussian smoothing of a 2-D ``[row, column]`` image by ``fwhm_mm`` (returned as is when ``fwhm_mm <= 0``)."""
    from scipy import ndimage

    if fwhm_mm <= 0:
        return img
    return ndimage.gaussian_filter(img, sigma_px(spacing_ij, fwhm_mm), mode=mode, truncate=truncate)
