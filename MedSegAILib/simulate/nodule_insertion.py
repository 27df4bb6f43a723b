"""Insert real lung nodules (LIDC crops) into a real CT's lung parenchyma, with exact ground truth.

For each (crop image, crop mask) pair (:func:`insert_nodules`):

1. **Pose.** A random rotation ``theta`` about the patient z axis and random flips of the patient x and y axes:
   ``M = Rz(theta) @ diag(fx, fy, 1)`` (orthogonal, so physical size is kept). A CT point ``p`` near the chosen
   centre ``c`` takes the crop's values at ``q = c_src + M^T (p - c)``, ``c_src`` = the crop mask's centroid
   (LPS mm). Sampling is trilinear in the crop's own geometry (:meth:`Volume.lps_to_index`), only inside a local
   box of the CT grid around ``c``: both grids' direction matrices are honoured.
2. **Position.** A random lung voxel. Interior nodule (probability ``1 - juxtapleural_fraction``): every label
   voxel inside the lung mask. Juxtapleural: walk from a random lung voxel in a random direction to the lung
   border and step back inwards by 0.3-0.8 nodule radii; accepted when the centre is in the lung and 50-97 % of
   the label is in the lung (the rest lies in the chest wall / mediastinum against the pleura). In both cases
   the bounding sphere stays ``min_separation_mm`` (surface to surface) away from earlier nodules. A nodule
   with no valid position after ``max_tries`` is skipped (logged; it has no entry in the returned list).
3. **Blend.** ``m`` = the trilinearly resampled crop mask (0..1); label = ``m >= 0.5``;
   ``alpha = clip(G_sigma * m, 0, 1)`` with a Gaussian of ``sigma = 0.7 mm`` (per axis, in voxels
   ``0.7 / spacing``); ``out = (1 - alpha) * ct + alpha * max(nodule_HU, ct)``: the nodule replaces the
   parenchyma, but anything brighter than the nodule (a vessel, the chest wall, bone) stays as it was.

The input CT and lung mask are never modified; voxels outside the local boxes are copied unchanged (the
output is int16 HU on the same grid).
"""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np

from MedSegAILib.core.volume import Volume
from MedSegAILib.errors import InputError

log = logging.getLogger(__name__)

BLEND_SIGMA_MM = 0.7
_AIR_HU = -1000.0


def list_crops(data_dir: str | Path) -> list[tuple[Path, Path]]:
    """Sorted ``(image, nodule_mask)`` path pairs of a LIDC crop folder (``data_dir/{image,nodule_mask}/*.nii.gz``;
    only names present in both)."""
    d = Path(data_dir)
    img_dir, msk_dir = d / "image", d / "nodule_mask"
    if not img_dir.is_dir() or not msk_dir.is_dir():
        raise InputError(f"{d} must hold the folders image/ and nodule_mask/ (LIDC nodule crops).")
    names = sorted(p.name for p in img_dir.glob("*.nii.gz") if (msk_dir / p.name).is_file())
    return [(img_dir / n, msk_dir / n) for n in names]


def _pose(rng: np.random.Generator) -> tuple[np.ndarray, float, tuple[int, int]]:
    theta = float(rng.uniform(0.0, 2.0 * math.pi))
    fx, fy = (int(v) for v in rng.choice([-1, 1], size=2))
    c, s = math.cos(theta), math.sin(theta)
    rz = np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])
    return rz @ np.diag([fx, fy, 1.0]), math.degrees(theta), (fx, fy)


def _crop_geometry(mask: Volume) -> tuple[np.ndarray, float]:
    """Centroid (LPS) of the crop mask and the radius (mm) of its bounding sphere (voxel half-diagonal added)."""
    kk, jj, ii = np.nonzero(np.asarray(mask.array) > 0)
    if kk.size == 0:
        raise InputError(f"The nodule mask {mask.meta.get('name', '')} is empty.")
    pts = mask.index_to_lps(np.stack([ii, jj, kk], 1).astype(float))
    c = pts.mean(axis=0)
    r = float(np.sqrt(((pts - c) ** 2).sum(1)).max()) + 0.5 * float(np.linalg.norm(mask.spacing))
    return c, r


class _Placed:
    """A nodule rendered in a local box of the CT grid (index-space slices, label, alpha and HU arrays)."""

    def __init__(self, box, label, alpha, hu):
        self.box, self.label, self.alpha, self.hu = box, label, alpha, hu


def _render(ct: Volume, img: Volume, msk: Volume, c_src: np.ndarray, radius: float, centre: np.ndarray,
            m: np.ndarray) -> Optional[_Placed]:
    """Resample the crop (pose ``m``, crop centroid -> ``centre``) into a box of the CT grid."""
    from scipy import ndimage

    margin = radius + 4.0 * BLEND_SIGMA_MM + 1.0
    ijk = ct.lps_to_index(centre[None])[0]
    half = np.ceil(margin / np.asarray(ct.spacing)).astype(int)
    lo = np.maximum(np.floor(ijk).astype(int) - half, 0)
    hi = np.minimum(np.ceil(ijk).astype(int) + half + 1, np.asarray(ct.size_ijk))
    if np.any(hi <= lo):
        return None
    box = (slice(lo[2], hi[2]), slice(lo[1], hi[1]), slice(lo[0], hi[0]))
    kk, jj, ii = np.meshgrid(np.arange(lo[2], hi[2]), np.arange(lo[1], hi[1]), np.arange(lo[0], hi[0]),
                             indexing="ij")
    p = ct.index_to_lps(np.stack([ii.ravel(), jj.ravel(), kk.ravel()], 1).astype(float))
    q = c_src + (p - centre) @ m  # row-vector form of M^T (p - c)
    src = img.lps_to_index(q)[:, ::-1].T  # (k, j, i) coordinates for map_coordinates
    shape = kk.shape
    mval = ndimage.map_coordinates(np.asarray(msk.array, np.float32), src, order=1, cval=0.0).reshape(shape)
    if not (mval >= 0.5).any():
        return None
    hu = ndimage.map_coordinates(np.asarray(img.array, np.float32), src, order=1, cval=_AIR_HU).reshape(shape)
    sig = [BLEND_SIGMA_MM / s for s in (ct.spacing[2], ct.spacing[1], ct.spacing[0])]
    alpha = np.clip(ndimage.gaussian_filter(mval, sig, mode="constant"), 0.0, 1.0)
    return _Placed(box, mval >= 0.5, alpha, hu)


def _march_to_border(lung: np.ndarray, ct: Volume, start: np.ndarray, u: np.ndarray, step_mm: float = 1.0,
                     max_mm: float = 250.0) -> Optional[np.ndarray]:
    """Last point inside the lung on the ray ``start + t u`` (LPS), or None when the ray leaves the scan first."""
    t = np.arange(0.0, max_mm, step_mm)
    pts = start + t[:, None] * u
    idx = np.rint(ct.lps_to_index(pts)).astype(int)
    size = np.asarray(ct.size_ijk)
    ok = np.all((idx >= 0) & (idx < size), axis=1)
    first_out = np.flatnonzero(~ok)
    n = first_out[0] if first_out.size else len(t)
    vals = lung[idx[:n, 2], idx[:n, 1], idx[:n, 0]] > 0
    outside = np.flatnonzero(~vals)
    if outside.size == 0:
        return None
    if outside[0] == 0:
        return None
    return pts[outside[0] - 1]


def insert_nodules(ct: Volume, lung: Volume, nodules: Sequence[tuple[Volume, Volume]], rng: np.random.Generator, *,
                   min_separation_mm: float = 20.0, juxtapleural_fraction: float = 0.2,
                   max_tries: int = 200) -> tuple[Volume, Volume, list[dict[str, Any]]]:
    """Insert the ``nodules`` ((crop image HU, crop mask 0/1) pairs) into the lung parenchyma of ``ct``.

    ``lung``: the lung mask on the CT grid (e.g. :func:`MedSegAILib.tasks.lung_nodule.lungs.lung_mask`).
    Returns ``(new_ct, label, infos)``: ``new_ct`` int16 HU on the CT grid, ``label`` uint8 (uint16 above 255
    nodules) with value k for the k-th inserted nodule (= resampled mask >= 0.5), and one dict per inserted
    nodule: ``label`` (k), ``source`` (crop file name), ``centre_lps`` (label centroid, mm), ``volume_mm3``
    (label voxels x voxel volume), ``equivalent_diameter_mm`` (``(6 V / pi)^(1/3)``), ``source_volume_mm3``
    (the crop mask's volume), ``juxtapleural`` (bool), ``lung_fraction`` (fraction of the label inside the
    lung mask), ``rotation_deg``, ``flips`` (fx, fy), ``mean_hu`` (inserted CT inside the label).
    See the module docstring for the method. The inputs are never modified.
    """
    if not lung.same_geometry(ct):
        raise InputError("The lung mask must be on the CT's grid (same shape, spacing, origin and direction).")
    lung_arr = np.asarray(lung.array) > 0
    lung_idx = np.flatnonzero(lung_arr.ravel())
    if lung_idx.size == 0:
        raise InputError("The lung mask is empty: there is no lung parenchyma to insert nodules into.")
    out = np.array(ct.array, copy=True)
    if out.dtype != np.int16:
        out = np.clip(np.rint(out), -32768, 32767).astype(np.int16)
    label = np.zeros(ct.shape, np.uint8 if len(nodules) < 256 else np.uint16)
    placed_spheres: list[tuple[np.ndarray, float]] = []
    infos: list[dict[str, Any]] = []
    shape = ct.shape
    for img, msk in nodules:
        if not img.same_geometry(msk):
            raise InputError(f"Crop image and mask {img.meta.get('name', '')} are not on the same grid.")
        c_src, radius = _crop_geometry(msk)
        juxta = bool(rng.random() < juxtapleural_fraction)
        done = None
        for _ in range(max_tries):
            m, theta, flips = _pose(rng)
            flat = int(lung_idx[rng.integers(lung_idx.size)])
            k, j, i = np.unravel_index(flat, shape)
            start = ct.index_to_lps(np.array([[i, j, k]], float))[0]
            if juxta:
                u = rng.normal(size=3)
                u /= np.linalg.norm(u)
                border = _march_to_border(lung_arr, ct, start, u)
                if border is None:
                    continue
                centre = border - u * radius * rng.uniform(0.3, 0.8)
                ci = np.rint(ct.lps_to_index(centre[None])[0]).astype(int)
                if np.any(ci < 0) or np.any(ci >= np.asarray(ct.size_ijk)) or not lung_arr[ci[2], ci[1], ci[0]]:
                    continue
            else:
                centre = start
            if any(np.linalg.norm(centre - c) < radius + r + min_separation_mm for c, r in placed_spheres):
                continue
            pl = _render(ct, img, msk, c_src, radius, centre, m)
            if pl is None:
                continue
            n_lab = int(pl.label.sum())
            frac = float(lung_arr[pl.box][pl.label].sum()) / n_lab
            if juxta and not 0.5 <= frac <= 0.97:
                continue
            if not juxta and frac < 1.0:
                continue
            if (label[pl.box][pl.label] > 0).any():
                continue
            done = (pl, theta, flips, frac, n_lab)
            break
        if done is None:
            log.warning("No position found for nodule %s after %d tries; skipped.", img.meta.get("name", "?"),
                        max_tries)
            continue
        pl, theta, flips, frac, n_lab = done
        value = len(infos) + 1
        sub = out[pl.box].astype(np.float32)
        blended = (1.0 - pl.alpha) * sub + pl.alpha * np.maximum(pl.hu, sub)
        out[pl.box] = np.clip(np.rint(blended), -32768, 32767).astype(np.int16)
        lab_box = label[pl.box]
        lab_box[pl.label] = value
        placed_spheres.append((centre, radius))
        kk, jj, ii = np.nonzero(pl.label)
        off = np.array([pl.box[2].start, pl.box[1].start, pl.box[0].start])
        cen = ct.index_to_lps((np.stack([ii, jj, kk], 1) + off).mean(0, keepdims=True))[0]
        vol = n_lab * ct.voxel_volume_mm3
        infos.append({
            "label": value,
            "source": Path(str(img.meta.get("source", img.meta.get("name", "")))).name,
            "centre_lps": [float(v) for v in cen],
            "volume_mm3": float(vol),
            "equivalent_diameter_mm": float((6.0 * vol / math.pi) ** (1.0 / 3.0)),
            "source_volume_mm3": float((np.asarray(msk.array) > 0).sum() * msk.voxel_volume_mm3),
            "juxtapleural": juxta,
            "lung_fraction": frac,
            "rotation_deg": theta,
            "flips": list(flips),
            "mean_hu": float(out[pl.box][pl.label].mean()),
        })
    meta = {k: v for k, v in ct.meta.items() if k not in ("is_labelmap",)}
    new_ct = Volume(out, ct.spacing, ct.origin, ct.direction.copy(), {**meta, "inserted_nodules": len(infos)})
    lab_vol = Volume(label, ct.spacing, ct.origin, ct.direction.copy(), {"is_labelmap": True, "name": "nodules"})
    return new_ct, lab_vol, infos


def make_scan(ct: Volume, lung: Volume, crop_list: Sequence[tuple[str | Path, str | Path]], n: int, seed: int,
              **kwargs: Any) -> tuple[Volume, Volume, list[dict[str, Any]]]:
    """Pick ``n`` crops at random (without replacement, seeded) from ``crop_list`` (path pairs, see
    :func:`list_crops`), read them and :func:`insert_nodules` them into ``ct``. Deterministic for a seed."""
    from MedSegAILib.core.io import read_volume

    rng = np.random.default_rng(seed)
    if not crop_list:
        raise InputError("No nodule crops given.")
    pick = rng.choice(len(crop_list), size=min(n, len(crop_list)), replace=False)
    nodules = [(read_volume(crop_list[t][0]), read_volume(crop_list[t][1])) for t in sorted(int(p) for p in pick)]
    return insert_nodules(ct, lung, nodules, rng, **kwargs)
