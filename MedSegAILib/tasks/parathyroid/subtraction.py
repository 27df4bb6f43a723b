"""Classical dual-tracer subtraction: thyroid mask, robust scale factor, difference and Poisson significance.

All functions take 2-D arrays ``[row j, column i]`` (or ``(1, H, W)`` planar arrays) on the sestamibi grid and
return 2-D arrays; ``spacing`` is ``(si, sj)`` in mm (column size, row size) as in :class:`Volume.spacing`.
Images must be in **counts** (not count rates): the noise model is Poisson.

Model. On the thyroid bed the sestamibi counts are ``Tc = k I + B + A + noise``: ``k I`` the thyroid seen by
both tracers (123I sees nothing else but a faint background), ``B`` the residual soft-tissue background
(sestamibi's muscle/soft-tissue uptake is several times iodide's, relative to the thyroid, so ``B`` is large:
typically 10-30 % of the thyroid peak) and ``A >= 0`` the adenomas, which add sestamibi counts only.

Scale factor (:func:`estimate_scale`). ``k`` is fitted on the thyroid and a ring of its bed (a quarter of the
thyroid's size wide), with the model ``Tc ~ k I + b0 + b1 u + b2 v + b3 u^2`` (``u`` lateral, ``v`` vertical,
in units of the thyroid's size: a background that falls off towards the sides of the neck - a plane leaves
``k`` biased by +4 % on the simulator), by iteratively reweighted least squares with Poisson weights and an
*asymmetric* Tukey biweight: positive residuals (sestamibi excess = adenoma) are cut at 2.5 robust standard
deviations, negative ones at the usual 4.685. So an adenoma overlapping the thyroid does not pull ``k`` up
(plain least squares does: it explains the adenoma's extra counts by a larger ``k``). Images are lightly
smoothed first (Gaussian, sigma 1 pixel), and the two resolutions are matched (the sharper image gets the
extra blur that minimises the robust residual scale; see :func:`estimate_scale`). The 95 % interval combines
a spatial block bootstrap of the final weighted fit (blocks of a quarter of the thyroid's size) with a
systematic part, the largest change of ``k`` under the other background models and the neighbouring
matching blurs, in quadrature.

Difference and significance (:func:`classical_subtraction`)::

    D   = Tc' - k I'                                 (counts per sestamibi pixel, negative values kept;
                                                      Tc', I' = the images after resolution matching)
    D_s = (g * D) / (g * 1)                          (g = Gaussian kernel, FWHM smooth_fwhm_mm, zero outside
                                                      the image: a normalised convolution at the borders)
    Var = (g^2 * Tc) / (g * 1)^2 + k^2 (g^2 * I) / (g * 1)^2
                                                     (Poisson: Var(sum g_n X_n) = sum g_n^2 E[X_n]; g^2 = the
                                                      element-wise squared kernel - combined with the matching
                                                      blur where there is one - applied to the observed counts
                                                      as estimates of their means)
    Z   = (D_s - B) / (c sqrt(Var))                  inside the patient's outline; 0 outside it

``B`` is the residual background of ``D_s``, in two passes: a robust 48 mm median (on ~6 mm blocks, only
blocks inside the outline, :func:`residual_background`), then a local linear fit (24 mm FWHM weights) over the
pixels that are neither outside the outline nor part of a hot structure of the first pass
(:func:`refine_background`), which follows the steep background fall at the neck edges and shoulders and the
image borders. Without ``B``, ``Z`` would be large all over the neck; adenomas (<= ~25 mm) are masked or too
small to move it. ``B`` is estimated from the same noisy data and absorbs part of the noise of ``D_s``;
``c`` (0.8-0.9 typically) is the share of the noise kept, measured by passing a smoothed white-noise field
through the same background estimate, so that ``Z`` is N(0, 1) where there is nothing (checked on pure
Poisson images). The uncertainty of ``k`` is neglected in ``Var``. When the 123I image was resampled from a
different grid, ``(g^2) * I`` is the variance of Poisson counts on the sestamibi grid - an approximation
(interpolation correlates neighbouring pixels), accurate when the smoothing kernel spans several pixels.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Optional, Sequence

import numpy as np
from scipy import ndimage

from MedSegAILib.core.filters import sigma_px
from MedSegAILib.core.validate import plane_array
from MedSegAILib.errors import InputError

#: Tukey biweight tuning constants for negative / positive standardised residuals.
_C_NEG, _C_POS = 4.685, 2.5
#: A relative half-width of the 95 % interval of k above this is flagged.
MAX_REL_HALF_WIDTH = 0.15
#: background terms of the scale fit (see ``estimate_scale``): "plane", "lateral curvature" or "quadratic"
BACKGROUND_MODEL = "lateral curvature"


_sigmas_px = sigma_px  # (rows, columns) sigma in pixels for a FWHM in mm


# ---------------------------------------------------------------------------------------------- thyroid mask
def thyroid_mask_from_iodine(
    iodine_on_tc: np.ndarray,
    spacing: Sequence[float],
    *,
    fraction: float = 0.3,
    smooth_fwhm_mm: float = 6.0,
    max_distance_mm: float = 60.0,
) -> np.ndarray:
    """The thyroid on the (registered) 123I image: bool ``(H, W)``.

    The thyroid is the hot structure of a 123I neck image. Steps: Gaussian smoothing (``smooth_fwhm_mm``);
    background level = median of the smoothed image; robust maximum = its 99.9th percentile; threshold =
    background + ``fraction`` x (maximum - background); connected components (8-connectivity) ranked by their
    excess counts above the threshold; the strongest is kept with every component carrying >= 10 % of its excess
    whose centroid lies within ``max_distance_mm`` of it (the other lobe when the isthmus is thin); holes are
    filled (a cold nodule is still thyroid). Empty when the image has no structure.
    """
    img = plane_array(iodine_on_tc, "123I image")
    sm = ndimage.gaussian_filter(img, _sigmas_px(spacing, smooth_fwhm_mm), mode="nearest")
    bg = float(np.median(sm))
    top = float(np.percentile(sm, 99.9))
    if not np.isfinite(top) or top <= bg:
        return np.zeros(img.shape, bool)
    thr = bg + fraction * (top - bg)
    above = sm > thr
    lab, n = ndimage.label(above, structure=np.ones((3, 3), bool))
    if n == 0:
        return np.zeros(img.shape, bool)
    idx = np.arange(1, n + 1)
    excess = ndimage.sum_labels(sm - thr, lab, idx)
    best = int(np.argmax(excess))
    cents = np.array(ndimage.center_of_mass(above, lab, idx)).reshape(n, 2)
    si, sj = float(spacing[0]), float(spacing[1])
    dist = np.hypot((cents[:, 0] - cents[best, 0]) * sj, (cents[:, 1] - cents[best, 1]) * si)
    keep = idx[(excess >= 0.1 * excess[best]) & (dist <= max_distance_mm)]
    mask = np.isin(lab, keep)
    return ndimage.binary_fill_holes(mask)


# ---------------------------------------------------------------------------------------------- scale factor
@dataclass
class ScaleEstimate:
    """The subtraction scale factor ``k`` (sestamibi counts per 123I count on the thyroid) and its quality."""

    k: float
    k_low: float  #: 2.5th percentile of the block bootstrap
    k_high: float  #: 97.5th percentile
    method: str
    n_pixels: int  #: pixels in the fit (thyroid + bed ring)
    flags: list[str] = field(default_factory=list)
    offset: float = 0.0  #: fitted background level b0 at the thyroid centroid (counts per pixel)
    downweighted_fraction: float = 0.0  #: share of thyroid pixels with (almost) zero weight (e.g. an adenoma)
    #: extra Gaussian blur (sigma, pixels) that matched the resolutions: > 0 sestamibi blurred, < 0 123I blurred
    match_sigma_px: float = 0.0
    residual_scale: float = float("nan")  #: robust sd of the standardised residuals (1 = Poisson noise only)


def _biweight(u: np.ndarray, c: float) -> np.ndarray:
    t = np.clip(1.0 - (u / c) ** 2, 0.0, None)
    return t * t


def _blur_px(img: np.ndarray, sigma_px: float) -> np.ndarray:
    return ndimage.gaussian_filter(img, sigma_px, mode="nearest") if sigma_px > 0 else img


@dataclass
class _Fit:
    beta: np.ndarray
    w_robust: np.ndarray
    sd: np.ndarray
    scale: float  #: robust scale of the standardised residuals


def _fit(X: np.ndarray, yy: np.ndarray, y_counts: np.ndarray, x_counts: np.ndarray, var_y: float, var_x: float,
         robust: bool, max_iterations: int) -> _Fit:
    """(Robust) weighted fit of yy ~ X beta; Poisson sd from the raw counts and the smoothing variance gains."""

    def solve(w: np.ndarray) -> np.ndarray:
        A = X.T @ (X * w[:, None])
        return np.linalg.solve(A + 1e-12 * np.trace(A) * np.eye(X.shape[1]), X.T @ (w * yy))

    beta = solve(1.0 / np.maximum(yy, 1.0))
    w_rob = np.ones_like(yy)
    sd = np.ones_like(yy)
    s = 1.0
    for _ in range(max_iterations if robust else 2):
        k_cur = max(float(beta[0]), 0.0)
        sd = np.sqrt(var_y * y_counts + k_cur ** 2 * var_x * x_counts)
        resid = (yy - X @ beta) / sd
        s = max(1.4826 * float(np.median(np.abs(resid - np.median(resid)))), 1e-6)
        if robust:
            u = resid / s
            w_rob = np.where(u > 0, _biweight(u, _C_POS), _biweight(u, _C_NEG))
        new = solve(w_rob / sd ** 2)
        done = float(np.abs(new - beta).max()) <= 1e-6 * (float(np.abs(beta).max()) + 1e-12)
        beta = new
        if done:
            break
    return _Fit(beta, w_rob, sd, s)


#: Extra Gaussian blur (sigma, pixels) tried to match the two images' resolutions: > 0 blurs the sestamibi image,
#: < 0 the 123I image.
_MATCH_SIGMAS_PX = (-1.0, -0.5, 0.0, 0.5, 0.75, 1.0, 1.25, 1.5, 2.0)


def estimate_scale(
    tc: np.ndarray,
    iodine_on_tc: np.ndarray,
    thyroid_mask: np.ndarray,
    *,
    robust: bool = True,
    match_resolution: bool = True,
    n_bootstrap: int = 200,
    max_iterations: int = 40,
) -> ScaleEstimate:
    """Robust estimate of ``k`` in ``Tc ~ k I + background`` on the thyroid (see the module docstring).

    ``robust=False`` gives the plain (Poisson-weighted) least-squares fit of the same model, for comparison.
    ``match_resolution``: the two cameras/energies do not blur alike (123I is usually a little blurrier); a
    sharper sestamibi thyroid has a higher peak-to-edge ratio, which a pixelwise fit turns into a too large
    ``k`` (5-10 % on the simulator). The fit is repeated with an extra Gaussian blur of one image (sigma in
    ``_MATCH_SIGMAS_PX``) and the blur giving the smallest robust residual scale is kept (``match_sigma_px``;
    :func:`classical_subtraction` applies the same blur when given the :class:`ScaleEstimate`).
    Flags: thyroid too faint (< 20 123I counts per pixel on average), 95 % interval wider than +-15 %, ``k``
    not positive/finite or implausible (outside 0.005-200). Fewer than 30 thyroid pixels: InputError.
    """
    y_raw = plane_array(tc, "sestamibi image")
    x_raw = plane_array(iodine_on_tc, "registered 123I image")
    mask = np.asarray(thyroid_mask, bool)
    if mask.ndim == 3:
        mask = mask[0]
    if y_raw.shape != x_raw.shape or mask.shape != y_raw.shape:
        raise InputError(f"estimate_scale: the images and the mask differ in shape ({y_raw.shape}, {x_raw.shape}, "
                         f"{mask.shape}); register the 123I image onto the sestamibi grid first.")
    n_thy = int(mask.sum())
    flags: list[str] = []
    if n_thy < 30:
        raise InputError(
            f"The thyroid found on the 123I image covers only {n_thy} pixels; the scale factor cannot be estimated. "
            "Check that the second image is the 123I thyroid image and that it is registered.")
    # region: thyroid + a bed ring about a quarter of the thyroid's size wide (pins the background plane)
    size_px = math.sqrt(n_thy)
    ring = max(2, int(round(0.25 * size_px)))
    region = ndimage.binary_dilation(mask, iterations=ring)
    rows, cols = np.nonzero(region)
    in_thy = mask[rows, cols]
    r0, c0 = rows[in_thy].mean(), cols[in_thy].mean()
    scale_px = max(size_px, 1.0)
    # the fit works on a crop around the region (smoothing the crop is exact up to the border margin)
    m = 8
    r_lo, r_hi = max(rows.min() - m, 0), min(rows.max() + m + 1, y_raw.shape[0])
    c_lo, c_hi = max(cols.min() - m, 0), min(cols.max() + m + 1, y_raw.shape[1])
    yc, xc = y_raw[r_lo:r_hi, c_lo:c_hi], x_raw[r_lo:r_hi, c_lo:c_hi]
    rr, cc = rows - r_lo, cols - c_lo
    y_counts = np.maximum(yc[rr, cc], 1.0)
    x_counts = np.maximum(xc[rr, cc], 0.0)
    base = 1.0  # light smoothing, pixels
    uu, vv = (cols - c0) / scale_px, (rows - r0) / scale_px
    models = {"plane": [uu, vv], "lateral curvature": [uu, vv, uu * uu],
              "quadratic": [uu, vv, uu * uu, vv * vv, uu * vv]}

    def attempt(extra: float, model: str = BACKGROUND_MODEL) -> tuple[_Fit, np.ndarray, np.ndarray]:
        sy = math.hypot(base, extra) if extra > 0 else base
        sx = math.hypot(base, extra) if extra < 0 else base
        yy = _blur_px(yc, sy)[rr, cc]
        X = np.column_stack([_blur_px(xc, sx)[rr, cc], np.ones(rows.size), *models[model]])
        # variance gain of a Gaussian of sigma s (pixels) on Poisson counts: sum of squared kernel = 1/(4 pi s^2)
        fit = _fit(X, yy, y_counts, x_counts, 1.0 / (4 * math.pi * sy * sy), 1.0 / (4 * math.pi * sx * sx),
                   robust, max_iterations)
        return fit, X, yy

    candidates = list(_MATCH_SIGMAS_PX) if match_resolution else [0.0]
    results = [attempt(extra) for extra in candidates]
    scales = np.array([r[0].scale for r in results])
    best = int(np.argmin(scales))
    match_sigma = candidates[best]
    if 0 < best < len(candidates) - 1:
        # parabola through the best grid point and its neighbours: refine the matching blur
        xs, ys = np.array(candidates[best - 1:best + 2]), scales[best - 1:best + 2]
        den = (xs[0] - xs[1]) * (xs[0] - xs[2]) * (xs[1] - xs[2])
        a = (xs[2] * (ys[1] - ys[0]) + xs[1] * (ys[0] - ys[2]) + xs[0] * (ys[2] - ys[1])) / den
        b = (xs[2] ** 2 * (ys[0] - ys[1]) + xs[1] ** 2 * (ys[2] - ys[0]) + xs[0] ** 2 * (ys[1] - ys[2])) / den
        if a > 0:
            vertex = float(np.clip(-b / (2 * a), xs[0], xs[2]))
            if abs(vertex - match_sigma) > 0.05:
                refined = attempt(vertex)
                if refined[0].scale <= scales[best] + 1e-9:
                    match_sigma, results[best] = vertex, refined
    fit, X, yy = results[best]
    npar = X.shape[1]
    beta = fit.beta
    k = float(beta[0])
    w_final = fit.w_robust / fit.sd ** 2
    # systematic part of the uncertainty: the other background models and the neighbouring matching blurs
    k_alt = [attempt(match_sigma, m)[0].beta[0] for m in models if m != BACKGROUND_MODEL]
    if match_resolution:
        k_alt += [results[j][0].beta[0] for j in (best - 1, best + 1) if 0 <= j < len(results)]
    k_sys = float(np.max(np.abs(np.asarray(k_alt) - k))) if k_alt else 0.0

    # block bootstrap of the final weighted fit (sufficient statistics per block)
    block = max(2, int(round(0.25 * size_px)))
    bid = (rows // block) * (y_raw.shape[1] // block + 1) + cols // block
    uniq, inv = np.unique(bid, return_inverse=True)
    nb = uniq.size
    XtWX = np.zeros((nb, npar, npar))
    XtWy = np.zeros((nb, npar))
    np.add.at(XtWX, inv, X[:, :, None] * X[:, None, :] * w_final[:, None, None])
    np.add.at(XtWy, inv, X * (w_final * yy)[:, None])
    rng = np.random.default_rng(12345)
    counts = rng.multinomial(nb, np.full(nb, 1.0 / nb), size=n_bootstrap).astype(np.float64)
    A = np.einsum("bn,nij->bij", counts, XtWX)
    c = counts @ XtWy
    A += 1e-12 * np.trace(A, axis1=1, axis2=2)[:, None, None] * np.eye(npar)
    try:
        boot = np.linalg.solve(A, c[:, :, None])[:, 0, 0]
        b_low, b_high = (float(v) for v in np.percentile(boot, [2.5, 97.5]))
        # combine the statistical (bootstrap) and systematic half-widths in quadrature, on each side
        k_low = k - math.hypot(k - b_low, k_sys)
        k_high = k + math.hypot(b_high - k, k_sys)
    except np.linalg.LinAlgError:
        k_low, k_high = float("nan"), float("nan")

    mean_i = float(x_raw[mask].mean())
    if mean_i < 20.0:
        flags.append(f"the thyroid is faint on the 123I image ({mean_i:.0f} counts per pixel on average): the scale "
                     "factor is uncertain")
    if not np.isfinite(k) or k <= 0:
        flags.append(f"the scale factor is not positive ({k:.3g}): the thyroid is not hotter on the sestamibi image "
                     "where it is hot on the 123I image - check the registration and the inputs")
    elif not 0.005 <= k <= 200:
        flags.append(f"implausible scale factor {k:.3g} (sestamibi counts per 123I count): check the inputs")
    if np.isfinite(k) and k > 0 and np.isfinite(k_low) and (k_high - k_low) / 2.0 > MAX_REL_HALF_WIDTH * k:
        flags.append(f"the scale factor is uncertain: 95 % interval {k_low:.3g}-{k_high:.3g} (more than +-15 %)")
    down = float(np.mean(fit.w_robust[in_thy] < 0.05)) if robust else 0.0
    method = ("robust line (asymmetric Tukey biweight IRLS, Poisson weights) " if robust else "least squares ") + \
        f"of sestamibi on 123I with a background ({BACKGROUND_MODEL}), on the thyroid and its bed"
    if match_resolution:
        method += f"; resolution matched (extra blur sigma {match_sigma:+.2f} px)"
    return ScaleEstimate(k=k, k_low=k_low, k_high=k_high, method=method, n_pixels=int(rows.size), flags=flags,
                         offset=float(beta[1]), downweighted_fraction=down, match_sigma_px=float(match_sigma),
                         residual_scale=float(fit.scale))


# ---------------------------------------------------------------------------------------------- subtraction
def gaussian_kernel_1d(sigma_px: float, truncate: float = 3.5) -> np.ndarray:
    """Normalised sampled Gaussian (sum 1); a delta for sigma <= 0."""
    if sigma_px <= 0:
        return np.ones(1)
    r = max(1, int(math.ceil(truncate * sigma_px)))
    x = np.arange(-r, r + 1, dtype=np.float64)
    g = np.exp(-0.5 * (x / sigma_px) ** 2)
    return g / g.sum()


def _separable(img: np.ndarray, k_rows: np.ndarray, k_cols: np.ndarray) -> np.ndarray:
    """Separable correlation with zeros beyond the image (combine with :func:`_coverage` to normalise)."""
    out = ndimage.correlate1d(img, k_rows, axis=0, mode="constant")
    return ndimage.correlate1d(out, k_cols, axis=1, mode="constant")


def _coverage(shape: tuple[int, int], k_rows: np.ndarray, k_cols: np.ndarray) -> np.ndarray:
    """Share of the kernel inside the image at each pixel (1 away from the borders)."""
    r = ndimage.correlate1d(np.ones(shape[0]), k_rows, mode="constant")
    c = ndimage.correlate1d(np.ones(shape[1]), k_cols, mode="constant")
    return r[:, None] * c[None, :]


def body_mask(tc: np.ndarray, spacing: Sequence[float], *, fraction: float = 0.3,
              smooth_fwhm_mm: float = 12.0) -> np.ndarray:
    """The patient's outline on the sestamibi image (its soft-tissue background is visible everywhere).

    Smoothed image > ``fraction`` x the typical body level, the level being the median of the smoothed image
    over the pixels above 10 % of its 99th percentile (so neither the empty corners nor the hot organs set it).
    """
    sm = ndimage.gaussian_filter(plane_array(tc, "sestamibi image"), _sigmas_px(spacing, smooth_fwhm_mm), mode="nearest")
    hi = float(np.percentile(sm, 99.0))
    if hi <= 0:
        return np.ones(sm.shape, bool)
    level = float(np.median(sm[sm > 0.1 * hi]))
    return sm > fraction * level


def residual_background(d_smooth: np.ndarray, spacing: Sequence[float], *, window_mm: float = 48.0,
                        block_mm: float = 6.0, support: Optional[np.ndarray] = None) -> np.ndarray:
    """Robust large-scale level of a (smoothed) difference image: a ``window_mm`` median on ``block_mm`` blocks.

    Block means (about ``block_mm`` per side) are median-filtered over ``window_mm`` and interpolated back
    (linear) to every pixel: fast and insensitive to structures much smaller than the window. With ``support``
    (the body outline, :func:`body_mask`) only blocks mostly inside it enter the medians of inside blocks
    (blocks outside keep the plain median), so that the empty surroundings do not drag the level down along
    the patient's outline (which would turn the outline into a row of false foci).
    """
    d = np.asarray(d_smooth, np.float64)
    h, w = d.shape
    si, sj = float(spacing[0]), float(spacing[1])
    bj, bi = max(1, int(round(block_mm / sj))), max(1, int(round(block_mm / si)))
    nj, ni = -(-h // bj), -(-w // bi)
    pad_width = ((0, nj * bj - h), (0, ni * bi - w))
    small = np.pad(d, pad_width, mode="edge").reshape(nj, bj, ni, bi).mean(axis=(1, 3))
    wj = max(3, int(round(window_mm / (bj * sj))) | 1)
    wi = max(3, int(round(window_mm / (bi * si))) | 1)
    if support is None:
        med = ndimage.median_filter(small, size=(wj, wi), mode="nearest")
    else:
        inside = np.pad(np.asarray(support, bool), pad_width, mode="edge").reshape(nj, bj, ni, bi).mean(axis=(1, 3))
        valid = inside >= 0.5
        if not valid.any():
            valid[:] = True
        vals = np.where(valid, small, np.nan)
        padded = np.pad(vals, ((wj // 2, wj // 2), (wi // 2, wi // 2)), mode="edge")
        win = np.sort(np.lib.stride_tricks.sliding_window_view(padded, (wj, wi)).reshape(nj, ni, -1), axis=-1)
        n_ok = np.isfinite(win).sum(axis=-1)  # NaNs sort last: the median of the first n_ok values
        lo = np.take_along_axis(win, np.maximum((n_ok - 1) // 2, 0)[..., None], axis=-1)[..., 0]
        hi = np.take_along_axis(win, np.maximum(n_ok // 2, 0)[..., None], axis=-1)[..., 0]
        med = np.where(n_ok > 0, 0.5 * (lo + hi), np.nan)
        # blocks outside the outline (and windows with no inside block) keep the plain median
        plain = ndimage.median_filter(small, size=(wj, wi), mode="nearest")
        med = np.where(valid & np.isfinite(med), med, plain)
    # block centres are at (b + 0.5) * block - 0.5 in pixel units
    rr = (np.arange(h) + 0.5) / bj - 0.5
    cc = (np.arange(w) + 0.5) / bi - 0.5
    coords = np.meshgrid(rr, cc, indexing="ij")
    return ndimage.map_coordinates(med, coords, order=1, mode="nearest")


#: FWHM (mm) of the weights of the second, local-linear background pass (see ``refine_background``)
REFINE_BACKGROUND_MM = 24.0


def refine_background(d_smooth: np.ndarray, z_first: np.ndarray, bg_first: np.ndarray, support: np.ndarray,
                      spacing: Sequence[float], *, fwhm_mm: float = 20.0, z_mask: float = 3.0,
                      mask_margin_mm: float = 6.0) -> np.ndarray:
    """Second, finer background pass that follows the patient's outline and the image borders.

    The 48 mm median lags behind the steep fall of the soft-tissue background at the outline (neck edges,
    shoulders) and behind the rising chest background at the lower image border, which leaves rows of
    positive z there. Here the background at each pixel is a *local linear fit* (Gaussian weights of
    ``fwhm_mm``: ``d(q) ~ a + b (q_row - p_row) + c (q_col - p_col)``, background = ``a``) of the smoothed
    difference over the pixels inside the outline that are not part of a hot structure (first-pass z >
    ``z_mask``, grown by ``mask_margin_mm``). A linear fit, unlike a mean, is unbiased on a ramp even when the
    neighbourhood is one-sided (outline, image border). Where too few such pixels are near (inside large hot
    structures, outside the body) it falls back to the first pass.
    """
    si, sj = float(spacing[0]), float(spacing[1])
    hot = z_first > z_mask
    if hot.any():
        grow = max(1, int(round(mask_margin_mm / min(si, sj))))
        hot = ndimage.binary_dilation(hot, iterations=grow)
    w = (np.asarray(support, bool) & ~hot).astype(np.float64)
    s_r, s_c = _sigmas_px(spacing, fwhm_mm)
    g_r, g_c = gaussian_kernel_1d(s_r, 3.0), gaussian_kernel_1d(s_c, 3.0)
    x_r = (np.arange(g_r.size) - g_r.size // 2) / max(s_r, 1e-6)  # offsets in sigmas (keeps the system scaled)
    x_c = (np.arange(g_c.size) - g_c.size // 2) / max(s_c, 1e-6)
    kr = [g_r, g_r * x_r, g_r * x_r ** 2]
    kc = [g_c, g_c * x_c, g_c * x_c ** 2]

    def mom(img: np.ndarray, pr: int, pc: int) -> np.ndarray:
        return _separable(img, kr[pr], kc[pc])

    wd = w * d_smooth
    s00, s10, s01 = mom(w, 0, 0), mom(w, 1, 0), mom(w, 0, 1)
    s20, s02, s11 = mom(w, 2, 0), mom(w, 0, 2), mom(w, 1, 1)
    t0, t10, t01 = mom(wd, 0, 0), mom(wd, 1, 0), mom(wd, 0, 1)
    ridge = 1e-3 * s00
    A = np.stack([np.stack([s00, s10, s01], -1), np.stack([s10, s20 + ridge, s11], -1),
                  np.stack([s01, s11, s02 + ridge], -1)], -2)
    b = np.stack([t0, t10, t01], -1)
    ok = s00 > 1e-3
    local = np.zeros_like(d_smooth)
    if ok.any():
        local[ok] = np.linalg.solve(A[ok], b[ok][:, :, None])[:, 0, 0]
    alpha = np.clip(s00 / 0.3, 0.0, 1.0)
    return alpha * local + (1.0 - alpha) * bg_first


def classical_subtraction(
    tc: np.ndarray,
    iodine_on_tc: np.ndarray,
    k: "float | ScaleEstimate",
    *,
    spacing: Sequence[float] = (1.0, 1.0),
    smooth_fwhm_mm: float = 8.0,
    background_window_mm: float = 48.0,
    match_sigma_px: Optional[float] = None,
    return_background: bool = False,
):
    """``(difference, significance)`` 2-D float32 arrays (see the module docstring for the formulas).

    ``k`` is the scale factor or the :class:`ScaleEstimate` (then its resolution-matching blur is applied too,
    unless ``match_sigma_px`` is given: > 0 blurs the sestamibi image, < 0 the 123I image, by that Gaussian sigma
    in pixels, before the difference; the Poisson variance then uses the combined kernels).
    ``difference = Tc - k I`` is not smoothed otherwise (counts, negative values kept; clip only for display).
    ``significance`` is the background-corrected, smoothed difference in units of its Poisson standard
    deviation. ``return_background=True`` also returns the residual background ``B`` (counts).
    """
    if isinstance(k, ScaleEstimate):
        if match_sigma_px is None:
            match_sigma_px = k.match_sigma_px
        k = k.k
    match_sigma_px = float(match_sigma_px or 0.0)
    k = float(k)
    t = plane_array(tc, "sestamibi image")
    i = plane_array(iodine_on_tc, "registered 123I image")
    if t.shape != i.shape:
        raise InputError(f"The sestamibi image {t.shape} and the registered 123I image {i.shape} differ in shape; "
                         "resample the 123I image onto the sestamibi grid first.")
    if not np.isfinite(k):
        raise InputError(f"The scale factor is not finite ({k}); the subtraction cannot be computed.")
    t = np.clip(t, 0, None)
    i = np.clip(i, 0, None)
    g_m = gaussian_kernel_1d(abs(match_sigma_px))
    s_rows, s_cols = _sigmas_px(spacing, smooth_fwhm_mm)
    g_r, g_c = gaussian_kernel_1d(s_rows), gaussian_kernel_1d(s_cols)
    # kernels per image: the matching blur (if any) convolved with nothing (difference) or with g (smoothing)
    # Normalised convolution at the borders: a smoothed value is the kernel-weighted mean of the pixels inside
    # the image, sum(g_n X_n) / sum(g_n), so its Poisson variance is sum(g_n^2 X_n) / sum(g_n)^2 (mirroring the
    # image instead would count border pixels twice and underestimate the variance there).
    def smooth(img: np.ndarray, kr: np.ndarray, kc: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        cov = _coverage(img.shape, kr, kc)
        return _separable(img, kr, kc) / cov, _separable(img, kr ** 2, kc ** 2) / cov ** 2

    if match_sigma_px > 0:
        t_m, i_m = smooth(t, g_m, g_m)[0], i
        kt_r, kt_c, ki_r, ki_c = np.convolve(g_r, g_m), np.convolve(g_c, g_m), g_r, g_c
    elif match_sigma_px < 0:
        t_m, i_m = t, smooth(i, g_m, g_m)[0]
        kt_r, kt_c, ki_r, ki_c = g_r, g_c, np.convolve(g_r, g_m), np.convolve(g_c, g_m)
    else:
        t_m, i_m = t, i
        kt_r, kt_c, ki_r, ki_c = g_r, g_c, g_r, g_c
    d = t_m - k * i_m
    t_s, t_var = smooth(t, kt_r, kt_c)
    i_s, i_var = smooth(i, ki_r, ki_c)
    d_s = t_s - k * i_s
    var = t_var + k * k * i_var
    # floor: the variance of a single expected count under the kernel (avoids division by ~0 in empty corners)
    var = np.maximum(var, float((kt_r ** 2).sum() * (kt_c ** 2).sum()))
    sd = np.sqrt(var)
    body = body_mask(t, spacing)

    def background(img: np.ndarray, z_first: Optional[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        first = residual_background(img, spacing, window_mm=background_window_mm, support=body)
        if z_first is None:
            z_first = (img - first) / sd
        return refine_background(img, z_first, first, body, spacing, fwhm_mm=REFINE_BACKGROUND_MM), z_first

    bg, z_first = background(d_s, None)
    # The background is estimated from the same noisy difference, so it absorbs part of the noise of D_s and
    # (D_s - B) / sd would be narrower than N(0, 1). The share kept is measured by passing a white-noise field,
    # smoothed alike, through the same background estimate (same hot-structure mask) - a deterministic
    # per-image calibration of the denominator.
    noise = _separable(np.random.default_rng(20240115).standard_normal(t.shape), kt_r, kt_c)
    noise /= _coverage(t.shape, kt_r, kt_c)
    noise_bg, _ = background(noise, z_first)
    inner = ndimage.binary_erosion(body, iterations=3) if body.sum() > 100 else np.ones(body.shape, bool)
    kept = float(np.std((noise - noise_bg)[inner]) / max(np.std(noise[inner]), 1e-12))
    kept = min(max(kept, 0.5), 1.0)
    z = (d_s - bg) / (sd * kept)
    # outside the patient's outline there is nothing to find, and the tiny variance there turns any small
    # background error into a huge z: the significance is 0 there by definition
    z = np.where(body, z, 0.0)
    if return_background:
        return d.astype(np.float32), z.astype(np.float32), bg.astype(np.float32)
    return d.astype(np.float32), z.astype(np.float32)
