"""Pre-processing of hand/wrist radiographs for the carpal network: normalisation, letterbox, gradient maps.

One function, :func:`prepare_input`, turns any 2-D radiograph (real, or a DRR for training) into the network
input. Training and inference both call it, so a model trained with a gradient ``mode`` always sees the same
pre-processing at inference (the method's pairing rule: origin <-> none, global <-> global, local <-> local).

Order of operations (and why)::

    raw image --LetterBox.resize--> (nh, nw) --normalise--> 0..255 --LetterBox.pad--> (size, size)
              --gradient(mode)--> [0, 1]

* The image is first shrunk (anti-aliased) to its place in the network grid, *then* normalised. CLAHE tiles
  are a fixed fraction of the image, and the robust window is a percentile, so this is the same operation
  as normalising at full size, but it costs the same for a 3000x2500 CR as for a 256x256 DRR, and the
  padding never enters the percentiles or the CLAHE histograms.
* Everything after :func:`normalise` works on a 0..255 float image and ends in [0, 1]. The public code ran the
  gradients sometimes on 0..255 and sometimes on 0..1 data (the latter collapses an uint8 Sobel map to 0/1),
  and cast a Sobel magnitude of up to 255*sqrt(2) to uint8 (wrap-around). Here nothing is ever cast to an
  integer type: the magnitude of a full 0->255 step is 255, the diagonal maximum 360.6.

Gradient definitions (METHODS.md 5.4, re-derived, not copied):

* ``none``:   I / 255.
* ``global``: G = sqrt(Gx^2 + Gy^2) with central differences Gx = I[:, x+1] - I[:, x-1] (OpenCV's Sobel with
  ksize=1, no smoothing, no 1/2 factor; borders mirrored without repeating the edge pixel, OpenCV's
  BORDER_REFLECT_101). t = median of the *distinct integer levels* of floor(G). G := min(G, t). CLAHE with
  clip 8 / 6x6 tiles if max(G) > 70, else clip 4 / 4x4 tiles (OpenCV units, translated below). Min-max.
* ``local``:  I shrunk by 0.5 (anti-aliased), G as above, tau = std(G)/5; for every pixel with 9x9 window W:
  0 if std(W) < tau else (G - min W) / (max W - min W). Bicubic back to full size, clipped to [0, 1], min-max.

**The distinct-value median.** The method thresholds at the median of ``np.unique(G)`` of a uint8 map, i.e.
the median of the *occupied grey levels*, not of the pixels. On integer levels that is roughly the middle of
the occupied range (about half of the strongest edges), independent of how many pixels are flat. On a float
map every pixel is its own distinct value and the statistic degenerates into the plain pixel median (near 0
on a radiograph: mostly flat background), and on a 0.01 grid it would drift with image size and noise. So
the levels are the integer parts of G (what the uint8 cast did for values below 256), computed without the
wrap-around: a 300 stays 300.

**OpenCV CLAHE -> skimage.** OpenCV clips each of its 256 histogram bins at ``clipLimit * tile_pixels / 256``
counts; skimage clips each of its ``nbins`` bins at ``clip_limit * tile_pixels``. With ``nbins=256`` the
same absolute limit is ``clip_limit = clipLimit / 256``: 8.0 -> 0.03125, 4.0 -> 0.015625. OpenCV's n x n
tile grid on an H x W image has tiles of ceil(H/n) x ceil(W/n) pixels, which is the ``kernel_size`` given to
skimage. (skimage stretches the input to its own min..max before binning, OpenCV bins absolute 0..255
levels; both put every integer level of the clipped map in its own bin, and the final min-max removes the
output scale, so the remaining difference is only in how the clipped excess is spread.)

**Local-map borders.** The method skipped pixels within 4 of the border (left at 0). Here every pixel gets a
value, the 9x9 window being mirrored at the border (``scipy.ndimage`` mode ``reflect``): a 0 frame would be a
fake 8-pixel dark edge around every image after the 2x up-sampling, which the network would have to learn.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Iterator, Sequence

import numpy as np
from scipy import ndimage

from MedSegAILib.core.validate import plane_array
from MedSegAILib.errors import InputError

#: The three pre-processing modes (the method's origin / global / local models).
MODES = ("none", "global", "local")

#: Robust window of :func:`normalise` (percentiles mapped to 0 and 255).
WINDOW_PERCENTILES = (0.5, 99.5)
#: CLAHE of :func:`normalise`: MATLAB ``adapthisteq`` defaults (8x8 tiles, normalised clip 0.01, 256 bins).
NORMALISE_TILES = 8
NORMALISE_CLIP = 0.01
#: Half-size of the local-gradient window (9x9) and the shrink factor of the local map.
LOCAL_WINDOW = 9
LOCAL_SCALE = 0.5


def _minmax01(x: np.ndarray) -> np.ndarray:
    """Min-max to [0, 1] (float32); a constant map gives zeros instead of 0/0."""
    lo, hi = float(x.min()), float(x.max())
    if not hi > lo:
        return np.zeros(x.shape, np.float32)
    return ((x - lo) / (hi - lo)).astype(np.float32)


def _clahe01(x01: np.ndarray, tiles: tuple[int, int], clip: float, nbins: int = 256) -> np.ndarray:
    """skimage CLAHE of a [0, 1] image with ``tiles`` = (tile rows, tile columns) in pixels; returns [0, 1]."""
    from skimage.exposure import equalize_adapthist

    kernel = (max(int(tiles[0]), 1), max(int(tiles[1]), 1))
    return equalize_adapthist(np.clip(x01, 0.0, 1.0), kernel_size=kernel, clip_limit=clip, nbins=nbins)


# ---------------------------------------------------------------------------------------------- normalise
def normalise(img2d: np.ndarray) -> np.ndarray:
    """Robust window then CLAHE, on a 0..255 float32 scale. Deterministic and invariant to affine rescaling.

    ``(I - p0.5) / (p99.5 - p0.5)`` clipped to [0, 1] (so uint8 0..255, 16-bit raw and float 0..1 versions of
    the same picture give the same result), then CLAHE with tiles of 1/8 of the image and normalised clip
    0.01 (MATLAB ``adapthisteq`` defaults, which the method applied to its DRRs), times 255. When the
    percentiles coincide (a nearly constant image with a few outliers) the full min..max range is used; a
    constant image gives zeros (:func:`~MedSegAILib.tasks.carpal.radiograph.check_radiograph` refuses those).
    """
    img = plane_array(img2d)
    lo, hi = np.percentile(img, WINDOW_PERCENTILES)
    if not hi > lo:
        lo, hi = float(img.min()), float(img.max())
    if not hi > lo:
        return np.zeros(img.shape, np.float32)
    x = np.clip((img - lo) / (hi - lo), 0.0, 1.0)
    h, w = x.shape
    out = _clahe01(x, (math.ceil(h / NORMALISE_TILES), math.ceil(w / NORMALISE_TILES)), NORMALISE_CLIP)
    return (out * 255.0).astype(np.float32)


# ---------------------------------------------------------------------------------------------- gradients
def central_difference_magnitude(img: np.ndarray) -> np.ndarray:
    """sqrt(Gx^2 + Gy^2) with Gx = I[:, x+1] - I[:, x-1], Gy = I[y+1] - I[y-1], in float64 (never wraps).

    Borders are mirrored without repeating the edge pixel (OpenCV BORDER_REFLECT_101 = scipy ``mirror``), so
    the derivative across the first and last column/row is 0. A 0->255 step gives 255 on both sides of it.
    """
    x = plane_array(img)
    kernel = np.array([-1.0, 0.0, 1.0])
    # correlate1d: out[i] = sum_k w[k] x[i + k - 1] = x[i+1] - x[i-1]
    gx = ndimage.correlate1d(x, kernel, axis=1, mode="mirror")
    gy = ndimage.correlate1d(x, kernel, axis=0, mode="mirror")
    return np.hypot(gx, gy)


def distinct_level_median(g: np.ndarray) -> float:
    """Median of the distinct integer levels floor(g) (see the module docstring for why integer levels)."""
    levels = np.unique(np.floor(np.asarray(g, np.float64)))
    return float(np.median(levels))


def global_gradient(img255: np.ndarray) -> np.ndarray:
    """Global gradient map in [0, 1] (float32) of a 0..255 image (module docstring, METHODS 5.4)."""
    g = central_difference_magnitude(img255)
    t = distinct_level_median(g)
    g = np.minimum(g, t)
    gmax = float(g.max())
    if not gmax > 0:
        return np.zeros(g.shape, np.float32)
    # OpenCV rule of the method: clip 8 with 6x6 tiles if max > 70, else clip 4 with 4x4 tiles (OpenCV units).
    clip_cv, grid = (8.0, 6) if gmax > 70 else (4.0, 4)
    h, w = g.shape
    eq = _clahe01(g / gmax, (math.ceil(h / grid), math.ceil(w / grid)), clip_cv / 256.0)
    return _minmax01(eq)


def local_gradient(img255: np.ndarray) -> np.ndarray:
    """Local (windowed min-max) gradient map in [0, 1] (float32) of a 0..255 image (METHODS 5.4).

    Vectorised: the window std is sqrt(E[G^2] - E[G]^2) from two box filters, min/max from rank filters.
    Windows whose spread is 0 (flat) give 0 whatever tau is, so no division by zero can occur.
    """
    from skimage.transform import rescale, resize

    img = plane_array(img255)
    small = rescale(img, LOCAL_SCALE, order=1, anti_aliasing=True, mode="reflect", preserve_range=True)
    g = central_difference_magnitude(small)
    tau = float(g.std()) / 5.0
    k = LOCAL_WINDOW
    mean = ndimage.uniform_filter(g, k, mode="reflect")
    mean_sq = ndimage.uniform_filter(g * g, k, mode="reflect")
    std = np.sqrt(np.maximum(mean_sq - mean * mean, 0.0))
    wmin = ndimage.minimum_filter(g, k, mode="reflect")
    wmax = ndimage.maximum_filter(g, k, mode="reflect")
    spread = wmax - wmin
    # spread <= 1e-9 * max: flat to rounding (the box-filter variance can be a tiny positive number there).
    ok = (std >= tau) & (spread > 1e-9 * max(float(g.max()), 1e-12)) & (tau > 0)
    local = np.zeros_like(g)
    np.divide(g - wmin, spread, out=local, where=ok)
    big = resize(local, img.shape, order=3, mode="reflect", anti_aliasing=False)
    return _minmax01(np.clip(big, 0.0, 1.0))


def gradient(img255: np.ndarray, mode: str) -> np.ndarray:
    """The network input map of a 0..255 image for ``mode`` in :data:`MODES`; float32 in [0, 1]."""
    if mode == "none":
        return (np.clip(plane_array(img255), 0.0, 255.0) / 255.0).astype(np.float32)
    if mode == "global":
        return global_gradient(img255)
    if mode == "local":
        return local_gradient(img255)
    raise InputError(f"Unknown pre-processing mode {mode!r}; choose one of {', '.join(MODES)}.")


# ---------------------------------------------------------------------------------------------- letterbox
def _resample_bands(stack: np.ndarray, shape: Sequence[int], max_values: int = 8_000_000) -> Iterator[tuple[int, int, np.ndarray]]:
    """(C, h, w) -> bands ``(r0, r1, (C, r1 - r0, W))`` of the (C, H, W) linear interpolation on pixel centres
    (``align_corners=False``), anti-aliased when shrinking. Torch's kernels: a 3000 x 2400 radiograph takes tens
    of milliseconds (scikit-image's Gaussian pre-filter took half a second). Enlarging is separable: columns once
    at the source height, then rows band by band, so 11 probability maps at full radiograph size are never all in
    memory at once."""
    import torch
    import torch.nn.functional as F

    x = torch.from_numpy(np.ascontiguousarray(stack, dtype=np.float32))[None]
    c, sh, sw = x.shape[1:]
    h, w = int(shape[0]), int(shape[1])
    if h < sh or w < sw or c * h * w <= max_values:
        yield 0, h, F.interpolate(x, size=(h, w), mode="bilinear", align_corners=False,
                                  antialias=h < sh or w < sw)[0].numpy()
        return
    rows = F.interpolate(x, size=(sh, w), mode="bilinear", align_corners=False)[0]  # (C, sh, W)
    band = max(1, max_values // (c * w))
    for r0 in range(0, h, band):
        r1 = min(h, r0 + band)
        ys = np.maximum((np.arange(r0, r1) + 0.5) * sh / h - 0.5, 0.0)  # torch clamps negative coordinates to 0
        y0 = np.minimum(np.floor(ys).astype(int), sh - 1)
        y1 = np.minimum(y0 + 1, sh - 1)
        fy = torch.from_numpy((ys - y0).astype(np.float32).clip(0, 1))[None, :, None]
        yield r0, r1, (rows[:, y0] * (1 - fy) + rows[:, y1] * fy).numpy()


def _resample(stack: np.ndarray, shape: Sequence[int]) -> np.ndarray:
    """(C, h, w) -> (C, H, W) float32, see :func:`_resample_bands`."""
    out = np.empty((stack.shape[0], int(shape[0]), int(shape[1])), np.float32)
    for r0, r1, band in _resample_bands(stack, shape):
        out[:, r0:r1] = band
    return out


@dataclass(frozen=True)
class LetterBox:
    """Maps an (H, W) image onto a square ``size`` x ``size`` network grid, keeping the aspect ratio.

    The image is scaled by ``size / max(H, W)`` to (nh, nw) and centred; the short side is padded
    symmetrically (``top``, ``left`` = offsets of the image in the grid) with 0, the background of a
    normalised radiograph. Continuous pixel-centre coordinates map as
    ``grid_row = (row + 0.5) * nh / H - 0.5 + top`` (same for columns), the convention of
    ``skimage.transform.resize``, so forward and inverse are consistent to sub-pixel accuracy.
    """

    shape: tuple[int, int]
    size: int = 256
    #: physical height / width of one pixel (row spacing / column spacing): 1 for square pixels. The image is
    #: placed by its physical extent, so non-square pixels do not squash the anatomy on the (isotropic) grid.
    aspect: float = 1.0

    @classmethod
    def for_image(cls, img: np.ndarray, size: int = 256) -> "LetterBox":
        arr = np.asarray(img)
        return cls(tuple(int(n) for n in arr.shape[-2:]), int(size))  # type: ignore[arg-type]

    @property
    def scale(self) -> float:
        """Grid pixels per image column (per image row: ``scale * aspect``), up to the rounding of nh, nw."""
        h, w = self.shape
        return self.size / max(h * self.aspect, w)

    @property
    def inner_shape(self) -> tuple[int, int]:
        """(nh, nw): the size of the image inside the grid."""
        h, w = self.shape
        return max(1, round(h * self.aspect * self.scale)), max(1, round(w * self.scale))

    @property
    def offsets(self) -> tuple[int, int]:
        """(top, left) of the image in the grid."""
        nh, nw = self.inner_shape
        return (self.size - nh) // 2, (self.size - nw) // 2

    # -------------------------------------------------------------- images
    def resize(self, img: np.ndarray) -> np.ndarray:
        """(H, W) image -> (nh, nw) float32, anti-aliased linear resampling (:func:`_resample`)."""
        x = plane_array(img)
        if x.shape != tuple(self.shape):
            raise ValueError(f"LetterBox for {self.shape} got an image of shape {x.shape}")
        if tuple(self.inner_shape) == x.shape:
            return x.astype(np.float32)
        return _resample(x[np.newaxis], self.inner_shape)[0]

    def pad(self, inner: np.ndarray, value: float = 0.0) -> np.ndarray:
        """(nh, nw) -> (size, size), the image centred, the rest ``value``."""
        inner = np.asarray(inner, np.float32)
        if inner.shape != self.inner_shape:
            raise ValueError(f"LetterBox.pad expects {self.inner_shape}, got {inner.shape}")
        top, left = self.offsets
        out = np.full((self.size, self.size), value, np.float32)
        out[top: top + inner.shape[0], left: left + inner.shape[1]] = inner
        return out

    def forward(self, img: np.ndarray, value: float = 0.0) -> np.ndarray:
        """(H, W) image -> (size, size) float32 grid (anti-aliased down-sampling, symmetric padding)."""
        return self.pad(self.resize(img), value)

    def forward_labels(self, labels: np.ndarray) -> np.ndarray:
        """(H, W) integer label map -> (size, size) with nearest-neighbour sampling (never interpolated), 0 pad."""
        lab = np.asarray(labels)
        if lab.shape != tuple(self.shape):
            raise ValueError(f"LetterBox for {self.shape} got labels of shape {lab.shape}")
        nh, nw = self.inner_shape
        h, w = self.shape
        # nearest pixel centre: source index of grid pixel c is floor((c + 0.5) * H / nh)
        rows = np.minimum(((np.arange(nh) + 0.5) * h / nh).astype(int), h - 1)
        cols = np.minimum(((np.arange(nw) + 0.5) * w / nw).astype(int), w - 1)
        top, left = self.offsets
        out = np.zeros((self.size, self.size), lab.dtype)
        out[top: top + nh, left: left + nw] = lab[np.ix_(rows, cols)]
        return out

    def inverse(self, prob: np.ndarray) -> np.ndarray:
        """(C, size, size) probabilities -> (C, H, W): crop the padding, bilinear per channel.

        For probabilities only (a convex combination keeps them in [0, 1] and summing to 1); labels are
        obtained afterwards by argmax at the original size, never by interpolating a label map.
        """
        p = np.asarray(prob, np.float32)
        squeeze = p.ndim == 2
        if squeeze:
            p = p[np.newaxis]
        if p.shape[-2:] != (self.size, self.size):
            raise ValueError(f"LetterBox.inverse expects (C, {self.size}, {self.size}), got {p.shape}")
        top, left = self.offsets
        nh, nw = self.inner_shape
        out = _resample(p[:, top: top + nh, left: left + nw], self.shape)
        return out[0] if squeeze else out

    def inverse_argmax(self, prob: np.ndarray, max_side: int = 1024) -> tuple[np.ndarray, np.ndarray]:
        """(C, size, size) probabilities -> the arg-max label map (H, W) uint8 and the winning probability (H, W)
        float32 of their bilinear interpolation at the image's pixel centres (as :meth:`inverse` then arg-max).

        Images larger than ``max_side`` are evaluated at the centres of ``f x f`` pixel blocks,
        ``f = ceil(max(H, W) / max_side)``, and each block takes its centre's label (nearest neighbour on the
        label map): a boundary moves by at most ``f / 2`` pixels, a small fraction of one network pixel
        (``max(H, W) / size`` pixels), and a 3000 x 2400 radiograph needs 11 maps of 1000 x 800, not 11 of
        3000 x 2400 (0.3 GB, a second of interpolation)."""
        import torch
        import torch.nn.functional as F

        p = np.asarray(prob, np.float32)
        if p.ndim != 3 or p.shape[-2:] != (self.size, self.size):
            raise ValueError(f"LetterBox.inverse_argmax expects (C, {self.size}, {self.size}), got {p.shape}")
        top, left = self.offsets
        nh, nw = self.inner_shape
        h, w = self.shape
        f = max(1, math.ceil(max(h, w) / max_side))

        def centres(n: int, n_src: int) -> np.ndarray:
            starts = np.arange(0, n, f)
            mid = (starts + np.minimum(starts + f, n) - 1) / 2.0  # centre of each (possibly partial) block
            src = (mid + 0.5) * n_src / n - 0.5  # source pixel coordinate, pixel centres aligned
            return ((src + 0.5) / n_src * 2 - 1).astype(np.float32)  # grid_sample's normalised coordinate

        gy, gx = centres(h, nh), centres(w, nw)
        grid = torch.from_numpy(np.stack(np.broadcast_arrays(gx[None, :], gy[:, None]), -1)[None].copy())
        crop = torch.from_numpy(np.ascontiguousarray(p[:, top: top + nh, left: left + nw]))[None]
        q = F.grid_sample(crop, grid, mode="bilinear", padding_mode="border", align_corners=False)[0]
        conf_small, lab_small = q.max(0)
        lab = lab_small.numpy().astype(np.uint8)
        conf = conf_small.numpy().astype(np.float32)
        if f > 1:
            lab = np.repeat(np.repeat(lab, f, 0), f, 1)[:h, :w]
            conf = np.repeat(np.repeat(conf, f, 0), f, 1)[:h, :w]
        return np.ascontiguousarray(lab), np.ascontiguousarray(conf)

    # -------------------------------------------------------------- geometry
    def pixel_size_mm(self, spacing: Sequence[float]) -> tuple[float, float]:
        """(column, row) size in mm of one network pixel, from the image's (column, row[, k]) ``spacing``."""
        h, w = self.shape
        nh, nw = self.inner_shape
        return float(spacing[0]) * w / nw, float(spacing[1]) * h / nh

    def image_to_grid(self, rc: np.ndarray) -> np.ndarray:
        """(N, 2) continuous (row, col) image coordinates -> grid coordinates."""
        rc = np.atleast_2d(np.asarray(rc, float))
        f = np.array(self.inner_shape, float) / np.array(self.shape, float)
        return (rc + 0.5) * f - 0.5 + np.array(self.offsets, float)

    def grid_to_image(self, rc: np.ndarray) -> np.ndarray:
        """(N, 2) grid (row, col) coordinates -> continuous image coordinates (inverse of image_to_grid)."""
        rc = np.atleast_2d(np.asarray(rc, float))
        f = np.array(self.inner_shape, float) / np.array(self.shape, float)
        return (rc - np.array(self.offsets, float) + 0.5) / f - 0.5


# ---------------------------------------------------------------------------------------------- entry point
def prepare_input(img2d: np.ndarray, mode: str, size: int = 256,
                  spacing: Sequence[float] | None = None) -> tuple[np.ndarray, LetterBox]:
    """Network input ``(1, size, size)`` float32 in [0, 1] and the :class:`LetterBox` to map outputs back.

    ``spacing``: (column, row) pixel size; only their ratio is used (non-square pixels), square when None.

    resize into the grid -> :func:`normalise` (0..255) -> pad with 0 -> :func:`gradient` (``mode``).
    Used by both training (on DRRs) and inference (on radiographs): one definition of the input.
    """
    if mode not in MODES:
        raise InputError(f"Unknown pre-processing mode {mode!r}; choose one of {', '.join(MODES)}.")
    img = plane_array(img2d)
    if not np.all(np.isfinite(img)):
        raise InputError("The image contains NaN or infinite pixels; fix or replace them before segmenting.")
    aspect = float(spacing[1]) / float(spacing[0]) if spacing is not None else 1.0
    if not (np.isfinite(aspect) and 0.1 <= aspect <= 10):
        raise InputError(f"The pixel spacing {tuple(spacing)[:2]} is implausible (row/column ratio {aspect:g}).")
    box = LetterBox(img.shape, int(size), aspect)  # type: ignore[arg-type]
    grid = box.pad(normalise(box.resize(img)), 0.0)
    return gradient(grid, mode)[np.newaxis], box
