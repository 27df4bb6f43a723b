"""Synthetic non-contrast head-and-neck CT built around real organ masks (training data for the parotid task).

Why: no real head-and-neck CT images exist in this project, but real anatomy does: per-scan organ masks (21 OARs
on the planning-CT grid). The parotid networks are trained on CT volumes synthesised here, so the realism of
this generator decides what the networks learn. The guiding rule is *no shortcut*: the parotid must be
recognisable only by where it is and what shape it has, as on a real scan, never by a unique intensity, a
voxel-exact edge or a missing neighbour.

How a case is built (all in millimetres, in a canonical LPS-aligned frame, see :class:`_Orient`):

1. **Landmarks** from the masks that exist (the foramen magnum from the top of the spinal canal or, failing
   that, from any other organ via typical offsets measured on the shared data; midline; canal centre line;
   levels of the mandible, occlusal plane, palate, hyoid, larynx, lung apex). Everything that is not in the
   masks is placed relative to these, scaled by the neck length.
2. **Deep anatomy** as analytic primitives (elliptic tubes whose parameters vary along z, ellipsoids, cones)
   and mask-derived shells: vertebrae (bodies, discs, arches, spinous/transverse processes, atlas and dens),
   skull (tables and diploe from a banded signed distance to the brain), skull base (clivus, petrous
   pyramids with otic capsule, mastoids with air cells, condyles, styloids, zygomatic arches), face (maxilla
   with sinuses, nasal cavity with septum and turbinates, palate, orbits with fat, walls and rectus
   muscles), teeth on the real alveolar crest, muscles (posterior neck mass with fat planes, trapezius,
   sternocleidomastoids, levator scapulae, scalenes, prevertebral muscles, masseters, medial/lateral
   pterygoids, temporalis, digastric, tongue, floor of mouth, platysma), airway (naso/oro/hypopharynx,
   larynx with epiglottis and piriform sinuses, trachea), cartilages (thyroid, cricoid, partly calcified),
   hyoid, thyroid gland, carotid sheath vessels, retromandibular vein, lymph nodes, thorax (lungs with
   vessels, ribs, clavicles, sternum, scapulae, shoulders, mediastinal fat).
3. **Body outline** per slice, in polar form ``r(theta, z)`` around a smooth centre line: the union of every
   deep structure plus its soft-tissue margin (subcutaneous fat thickness of the drawn habitus), a closing
   and Gaussian smoothing in angle and z, and a hard floor of ``organ + 3 mm`` so that every mask lies inside
   the skin. Skin and the subcutaneous fat layer are painted from the radial depth under the outline.
4. **Organs from the masks** are painted through a boundary jitter: the painted region is
   ``{sdf(mask) < delta(x)}`` where ``sdf`` is the signed distance to the mask surface and ``delta`` a
   smooth random field (s.d. ``jitter_mm`` = 0.5-1.5 mm, correlation ``jitter_corr_mm``): a small smooth
   normal displacement of the surface, so the image edge is never voxel-identical to the label.
5. **Scanner**: Gaussian PSF (in-plane FWHM 0.6-1.2 mm, slice profile ~ slice spacing), spatially correlated
   in-plane noise (band-passed white noise, s.d. 6-25 HU, growing with the patient's cross-section as on a
   real scanner with incomplete tube-current modulation), cupping, optional dental metal with streaks from
   an analytic filtered back-projection of a beam-hardening / photon-starvation sinogram error, then
   clipping to [-1024, 3071] and ``int16``.

Every random choice is a field of :class:`SynthParams` (drawn by :meth:`SynthParams.draw`, JSON-able);
textures come from ``SynthParams.texture_seed``. The same params give the same volume.

Performance: work happens in a crop around the body (the air outside is a tiled correlated-noise field),
distances are per-slice 2-D EDTs with a banded z pass, analytic shapes are evaluated in their own bounding
boxes. The masks are never copied whole.
"""

from __future__ import annotations

import math
import re
import time
from dataclasses import asdict, dataclass, fields
from typing import Any, Callable, Mapping, Optional

import numpy as np
from scipy import ndimage as ndi

from MedSegAILib.core.volume import Volume
from MedSegAILib.errors import InputError

# ============================================================================================ organ names
#: Canonical organ names (file names in the data use ``-`` or ``_``: ``Parotid_Lt`` == ``Parotid-Lt``).
ORGANS: tuple[str, ...] = (
    "Parotid-Lt", "Parotid-Rt", "Submandibular-Lt", "Submandibular-Rt", "Mandible",
    "Brainstem", "Brain", "Orbit-Lt", "Orbit-Rt", "Lens-Lt", "Lens-Rt", "Optic-Nerve-Lt", "Optic-Nerve-Rt",
    "Lacrimal-Lt", "Lacrimal-Rt", "Cochlea-Lt", "Cochlea-Rt", "Lung-Lt", "Lung-Rt", "Spinal-Cord", "Spinal-Canal",
)


def _key(text: str) -> str:
    return re.sub(r"[^a-z0-9]", "", text.lower())


_CANON = {_key(n): n for n in ORGANS}


def canonical_organ_name(name: str) -> str | None:
    """The canonical organ name for a file stem / segment name, or None when it is not one of :data:`ORGANS`.

    Case, ``-``/``_``/space separators and the side spelling (``Lt``/``L``/``Left``, ``Rt``/``R``/``Right``)
    are ignored: ``"Parotid_Lt"``, ``"parotid-left"`` and ``"Parotid L"`` all give ``"Parotid-Lt"``.
    """
    if not isinstance(name, str):
        return None
    k = _key(name)
    if k in _CANON:
        return _CANON[k]
    for long, short in (("left", "lt"), ("right", "rt")):
        if k.endswith(long) and (k[: -len(long)] + short) in _CANON:
            return _CANON[k[: -len(long)] + short]
    m = re.fullmatch(r"(.*?)[\s_\-]+([lr])", name.strip(), flags=re.IGNORECASE)
    if m:
        cand = _key(m.group(1)) + ("lt" if m.group(2).lower() == "l" else "rt")
        return _CANON.get(cand)
    return None


def _canonical_masks(masks: Mapping[str, Volume]) -> dict[str, Volume]:
    """Map keys to canonical names, drop unknown ones and check that all masks share one grid."""
    if not isinstance(masks, Mapping) or not masks:
        raise InputError("No organ masks given: pass a dict {organ name: mask Volume} (see read_organ_masks).")
    out: dict[str, Volume] = {}
    ref_key = None
    for key, vol in masks.items():
        name = canonical_organ_name(key)
        if name is None:
            continue
        if not isinstance(vol, Volume):
            raise InputError(f"The mask '{key}' is not a Volume; read masks with read_organ_masks().")
        if name in out:
            raise InputError(f"Two masks ('{key}' and another) both mean {name}; keep only one of them.")
        if ref_key is None:
            ref_key = key
        elif not vol.same_geometry(out[canonical_organ_name(ref_key)]):  # type: ignore[index]
            raise InputError(
                f"The masks do not share one voxel grid: '{key}' has shape {vol.shape}, spacing "
                f"{tuple(round(s, 4) for s in vol.spacing)}, origin {tuple(round(o, 2) for o in vol.origin)} but "
                f"'{ref_key}' has {masks[ref_key].shape}, {tuple(round(s, 4) for s in masks[ref_key].spacing)}, "
                f"{tuple(round(o, 2) for o in masks[ref_key].origin)}. Resample them onto one grid first."
            )
        out[name] = vol
    if not out:
        raise InputError(
            "None of the masks is a known organ (expected names such as " + ", ".join(ORGANS[:5]) + " ...); "
            f"got {sorted(masks)[:8]}."
        )
    return out


def read_organ_masks(folder: Any) -> dict[str, Volume]:
    """Read a ``segmentations`` folder into ``{canonical organ name: mask Volume}`` (nonzero = inside).

    Files whose names are not organs of :data:`ORGANS` are ignored; all masks must share one grid
    (:class:`InputError` otherwise, also when two files mean the same organ).
    """
    from MedSegAILib.core.io import read_mask_folder

    return _canonical_masks(read_mask_folder(folder))


def parotid_labelmap(masks: Mapping[str, Volume]) -> Volume:
    """The training label map: uint8, 0 background, 1 RIGHT parotid (``Parotid-Rt``), 2 LEFT (``Parotid-Lt``).

    Same grid as the masks. A voxel claimed by both glands (an annotation error; the glands are ~80 mm apart)
    goes to the gland whose centroid is nearer in physical space: an overlap voxel lies on its own side.
    Keys may use any spelling accepted by :func:`canonical_organ_name`.
    """
    canon = _canonical_masks(masks)
    lt, rt = canon.get("Parotid-Lt"), canon.get("Parotid-Rt")
    if lt is None and rt is None:
        raise InputError("Neither Parotid-Lt nor Parotid-Rt is among the masks; cannot build the parotid labels.")
    ref = lt if lt is not None else rt
    assert ref is not None
    lab = np.zeros(ref.shape, np.uint8)
    if rt is not None:
        lab[rt.array != 0] = 1
    if lt is not None:
        mlt = lt.array != 0
        if rt is not None:
            both = mlt & (lab == 1)
            if both.any():
                c_lt = ref.index_to_lps(np.argwhere(mlt)[:, ::-1].mean(0))[0]
                c_rt = ref.index_to_lps(np.argwhere(rt.array != 0)[:, ::-1].mean(0))[0]
                pts = ref.index_to_lps(np.argwhere(both)[:, ::-1])
                to_lt = np.linalg.norm(pts - c_lt, axis=1) < np.linalg.norm(pts - c_rt, axis=1)
                idx = np.argwhere(both)
                lab[tuple(idx[to_lt].T)] = 2
                mlt = mlt & ~both
        lab[mlt] = 2
    return Volume(lab, ref.spacing, ref.origin, ref.direction.copy(),
                  {"modality": "SEG", "labels": {"1": "Parotid-Rt", "2": "Parotid-Lt"}})


# ============================================================================================ parameters
def _u(rng: np.random.Generator, lo: float, hi: float) -> float:
    return float(rng.uniform(lo, hi))


@dataclass
class SynthParams:
    """Every random choice of one synthetic case (HU in Hounsfield units, lengths in mm).

    Defaults are a typical patient; :meth:`draw` samples the population. ``texture_seed`` seeds all texture
    and noise fields, so ``synth_ct(masks, rng, params)`` does not depend on ``rng`` once params are given.
    """

    texture_seed: int = 0
    # --- tissue attenuation (non-contrast)
    hu_air: float = -1000.0
    hu_fat: float = -100.0             # subcutaneous fat, -120..-70
    deep_fat_offset: float = 12.0      # intermuscular / deep fat is a little denser (septa, small vessels)
    hu_skin: float = 40.0
    hu_muscle: float = 50.0            # 35..65
    muscle_fat: float = 0.1            # fatty marbling of muscles (0 young .. 0.35 elderly)
    hu_gland: float = 38.0             # parotid parenchyma without fat
    parotid_fat_fraction: float = 0.3  # fatty involution: mean parotid HU = gland - f (gland - fat)
    hu_parotid: float = 0.0            # derived mean (kept for the record; recomputed by draw/normalise)
    parotid_lobule_mm: float = 2.5
    hu_submandibular: float = 45.0     # 25..60, denser than the parotid
    hu_blood: float = 45.0
    hu_lymph: float = 35.0
    hu_mucosa: float = 45.0
    hu_thyroid: float = 95.0           # iodine: brighter than muscle without contrast
    hu_gm: float = 38.0
    hu_wm: float = 30.0
    hu_csf: float = 6.0
    hu_cord: float = 35.0
    hu_globe: float = 10.0
    hu_lens: float = 95.0
    hu_lacrimal: float = 55.0
    hu_cortical: float = 1300.0
    hu_cancellous: float = 330.0
    hu_teeth: float = 2750.0
    hu_disc: float = 80.0
    hu_cartilage: float = 100.0
    calcification: float = 0.3         # fraction of laryngeal cartilage that is ossified
    hu_lung: float = -850.0
    # --- habitus / anatomy
    fat_mm: float = 10.0               # subcutaneous fat lateral neck
    muscle_scale: float = 1.0
    neck_depth_mm: float = 55.0        # posterior muscle mass behind the canal
    airway_scale: float = 1.0
    prevertebral_mm: float = 5.0
    skull_mm: float = 7.0
    scalp_mm: float = 5.0
    csf_gap_mm: float = 2.0
    atrophy: float = 0.3
    shoulder_halfwidth_mm: float = 190.0
    chest_wall_mm: float = 25.0
    vertebra_scale: float = 1.0
    parotid_margin_mm: float = 14.0    # skin lateral to the parotid = fat + platysma/SMAS
    mastoid_air: float = 0.8           # pneumatisation of the mastoids (0 sclerotic)
    # --- boundary jitter
    jitter_mm: float = 1.0
    jitter_corr_mm: float = 10.0
    # --- options
    teeth: bool = True
    missing_teeth: float = 0.1
    metal: bool = False
    metal_teeth: int = 0
    metal_strength: float = 1.0
    mouth_air: bool = False
    n_nodes: int = 2
    node_mm: float = 7.0
    intraparotid_nodes: int = 1
    rmv_mm: float = 5.0
    couch: bool = True
    # --- scanner
    noise_sigma: float = 12.0
    noise_grain_mm: float = 0.9
    noise_size_exponent: float = 0.8
    psf_fwhm_mm: float = 0.9
    slice_profile: float = 1.0         # slice-sensitivity FWHM / slice spacing
    cupping_hu: float = 8.0

    def __post_init__(self) -> None:
        self.hu_parotid = float(self.hu_gland - self.parotid_fat_fraction * (self.hu_gland - self.hu_fat))

    @classmethod
    def draw(cls, rng: np.random.Generator) -> "SynthParams":
        """Sample one patient + scanner from the population (ranges in the module docstring / field comments)."""
        u = lambda lo, hi: _u(rng, lo, hi)  # noqa: E731
        p: dict[str, Any] = {"texture_seed": int(rng.integers(0, 2**31 - 1))}
        p["hu_air"] = u(-1008, -992)
        p["hu_fat"] = u(-120, -70)
        p["deep_fat_offset"] = u(0, 25)
        p["hu_skin"] = u(20, 60)
        p["hu_muscle"] = u(35, 65)
        p["muscle_fat"] = u(0.0, 0.35)
        p["hu_gland"] = u(28, 45)
        # parotid mean: mostly -40..+25, tails to -80 / +40, always below muscle and well above fat
        target = float(np.clip(rng.normal(-8, 28), -80, 40))
        target = min(target, p["hu_muscle"] - 8.0, p["hu_gland"] - 1.0)
        target = max(target, p["hu_fat"] + 25.0)
        p["parotid_fat_fraction"] = float(np.clip((p["hu_gland"] - target) / (p["hu_gland"] - p["hu_fat"]), 0, 0.9))
        par = p["hu_gland"] - p["parotid_fat_fraction"] * (p["hu_gland"] - p["hu_fat"])
        p["parotid_lobule_mm"] = u(1.6, 3.8)
        lo_s = max(25.0, par + 6.0)
        p["hu_submandibular"] = u(lo_s, max(lo_s + 4.0, min(60.0, p["hu_muscle"] + 8.0)))
        p["hu_blood"] = u(35, 55)
        p["hu_lymph"] = u(25, 45)
        p["hu_mucosa"] = u(30, 55)
        p["hu_thyroid"] = u(70, 120)
        p["hu_gm"] = u(33, 42)
        p["hu_wm"] = p["hu_gm"] - u(5, 10)
        p["hu_csf"] = u(0, 12)
        p["hu_cord"] = u(30, 40)
        p["hu_globe"] = u(5, 15)
        p["hu_lens"] = u(80, 110)
        p["hu_lacrimal"] = u(40, 70)
        p["hu_cortical"] = u(800, 1800)
        p["hu_cancellous"] = u(200, 500)
        p["hu_teeth"] = u(2500, 3000)
        p["hu_disc"] = u(60, 100)
        p["hu_cartilage"] = u(70, 130)
        p["calcification"] = u(0.0, 0.8)
        p["hu_lung"] = u(-880, -820)
        p["fat_mm"] = float(np.exp(rng.uniform(np.log(3.0), np.log(22.0))))
        p["muscle_scale"] = u(0.8, 1.25)
        p["neck_depth_mm"] = u(42, 68) * (0.85 + 0.15 * p["muscle_scale"])
        p["airway_scale"] = u(0.6, 1.35)
        p["prevertebral_mm"] = u(3, 7)
        p["skull_mm"] = u(5, 9)
        p["scalp_mm"] = u(3.5, 7)
        p["atrophy"] = u(0, 1)
        p["csf_gap_mm"] = 1.0 + 3.0 * p["atrophy"] * u(0.5, 1.0)
        p["shoulder_halfwidth_mm"] = u(165, 225)
        p["chest_wall_mm"] = u(15, 40)
        p["vertebra_scale"] = u(0.9, 1.12)
        p["parotid_margin_mm"] = u(9, 22)
        p["mastoid_air"] = u(0.0, 1.0) if rng.random() < 0.85 else 0.0
        p["jitter_mm"] = u(0.5, 1.5)
        p["jitter_corr_mm"] = u(6, 16)
        p["teeth"] = bool(rng.random() < 0.9)
        p["missing_teeth"] = u(0.0, 0.4)
        p["metal"] = bool(p["teeth"] and rng.random() < 0.25)
        p["metal_teeth"] = int(rng.integers(1, 7)) if p["metal"] else 0
        p["metal_strength"] = u(0.5, 1.5)
        p["mouth_air"] = bool(rng.random() < 0.35)
        p["n_nodes"] = int(rng.integers(0, 6))
        p["node_mm"] = u(4, 12)
        p["intraparotid_nodes"] = int(rng.integers(0, 3))
        p["rmv_mm"] = u(3.5, 7.0)
        p["couch"] = bool(rng.random() < 0.85)
        p["noise_sigma"] = float(np.exp(rng.uniform(np.log(6.0), np.log(25.0))))
        p["noise_grain_mm"] = u(0.6, 1.4)
        p["noise_size_exponent"] = u(0.3, 1.2)
        p["psf_fwhm_mm"] = u(0.6, 1.2)
        p["slice_profile"] = u(0.8, 1.3)
        p["cupping_hu"] = u(0, 20)
        return cls(**p)

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON types only (floats, ints, bools)."""
        out: dict[str, Any] = {}
        for k, v in asdict(self).items():
            if isinstance(v, (bool, np.bool_)):
                out[k] = bool(v)
            elif isinstance(v, (int, np.integer)):
                out[k] = int(v)
            else:
                out[k] = float(v)
        return out

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "SynthParams":
        names = {f.name for f in fields(cls)}
        unknown = set(d) - names
        if unknown:
            raise InputError(f"Unknown SynthParams fields: {sorted(unknown)}.")
        return cls(**{k: v for k, v in d.items() if k != "hu_parotid"})


# ============================================================================================ geometry helpers
@dataclass(frozen=True)
class _Orient:
    """Map between the masks' array order and the canonical order [z (S up), y (P), x (L)]."""

    axes: tuple[int, int, int]
    flips: tuple[bool, bool, bool]
    spacing: tuple[float, float, float]  # (sz, sy, sx)

    def canon(self, a: np.ndarray) -> np.ndarray:
        b = np.transpose(a, self.axes)
        return b[tuple(slice(None, None, -1) if f else slice(None) for f in self.flips)]

    def uncanon(self, b: np.ndarray) -> np.ndarray:
        b = b[tuple(slice(None, None, -1) if f else slice(None) for f in self.flips)]
        return np.transpose(b, np.argsort(self.axes))


def _orientation(vol: Volume) -> _Orient:
    """Nearest axis permutation/flip of the grid. Mild obliquity (gantry tilt) is absorbed: every synthetic
    structure is placed relative to the masks in the same array, so the result stays self-consistent."""
    d = np.asarray(vol.direction, float)
    axes = [-1, -1, -1]
    flips = [False, False, False]
    sp = [0.0, 0.0, 0.0]
    for arr_ax in range(3):
        idx = 2 - arr_ax
        col = d[:, idx]
        p = int(np.argmax(np.abs(col)))
        c = 2 - p
        if axes[c] != -1 or abs(col[p]) < 0.75:
            raise InputError(
                "The mask grid is strongly oblique (more than ~40 degrees from the patient axes); resample the "
                "masks onto an axial grid first."
            )
        axes[c] = arr_ax
        flips[c] = bool(col[p] < 0)
        sp[c] = float(vol.spacing[idx])
    return _Orient(tuple(axes), tuple(flips), tuple(sp))  # type: ignore[arg-type]


def _bbox(a: np.ndarray) -> Optional[tuple[int, int, int, int, int, int]]:
    """Bounding box (z0, z1, y0, y1, x0, x1), exclusive ends, of the nonzero voxels of a 3-D array (fast)."""
    nz = a.shape[0]
    if a.flags["C_CONTIGUOUS"] and a.dtype.itemsize == 1 and (a.shape[1] * a.shape[2]) % 8 == 0:
        zany = a.reshape(nz, -1).view(np.uint64).any(axis=1)
    else:
        zany = a.reshape(nz, -1).any(axis=1) if a.flags["C_CONTIGUOUS"] else a.any(axis=(1, 2))
    zi = np.flatnonzero(zany)
    if zi.size == 0:
        return None
    z0, z1 = int(zi[0]), int(zi[-1]) + 1
    sub = a[z0:z1]
    yi = np.flatnonzero(sub.any(axis=(0, 2)))
    xi = np.flatnonzero(sub.any(axis=(0, 1)))
    return z0, z1, int(yi[0]), int(yi[-1]) + 1, int(xi[0]), int(xi[-1]) + 1


class _Org:
    """One organ mask cropped to its bounding box in the canonical frame, with a cleaned copy for landmarks."""

    def __init__(self, name: str, crop: np.ndarray, off: tuple[int, int, int], full: tuple[int, int, int],
                 sp: tuple[float, float, float]):
        self.name = name
        self.raw = crop
        self.off = off
        self.full = full
        self.sp = sp
        self.clean, self.coff = self._clean(crop, off)
        self._stats: Optional[dict[str, np.ndarray]] = None

    @staticmethod
    def _clean(crop: np.ndarray, off: tuple[int, int, int]) -> tuple[np.ndarray, tuple[int, int, int]]:
        """Keep the connected components holding >= 5 % of the largest (drops stray annotation voxels)."""
        lab, n = ndi.label(crop, structure=np.ones((3, 3, 3), bool))
        if n <= 1:
            return crop, off
        sizes = np.bincount(lab.ravel())[1:]
        keep = np.flatnonzero(sizes >= max(0.05 * sizes.max(), 1)) + 1
        m = np.isin(lab, keep)
        bb = _bbox(m.view(np.uint8))
        assert bb is not None
        z0, z1, y0, y1, x0, x1 = bb
        return m[z0:z1, y0:y1, x0:x1], (off[0] + z0, off[1] + y0, off[2] + x0)

    @property
    def count(self) -> int:
        return int(self.clean.sum())

    @property
    def krange(self) -> tuple[int, int]:
        return self.coff[0], self.coff[0] + self.clean.shape[0]

    def touches(self, axis: int, hi: bool) -> bool:
        """Whether the (raw) mask touches the grid boundary on that side (so its extent there is unknown)."""
        if hi:
            return self.off[axis] + self.raw.shape[axis] >= self.full[axis]
        return self.off[axis] <= 0

    def centroid(self) -> np.ndarray:
        """(x, y, z) mm of the cleaned mask."""
        idx = np.argwhere(self.clean).mean(0) + np.asarray(self.coff)
        return np.array([idx[2] * self.sp[2], idx[1] * self.sp[1], idx[0] * self.sp[0]])

    def stats(self) -> dict[str, np.ndarray]:
        """Per-slice (full nz) area (mm2), centroid and extents (mm); NaN where the organ is absent."""
        if self._stats is None:
            sz, sy, sx = self.sp
            c = self.clean
            nz = self.full[0]
            k0 = self.coff[0]
            ys = (self.coff[1] + np.arange(c.shape[1])) * sy
            xs = (self.coff[2] + np.arange(c.shape[2])) * sx
            py = c.sum(axis=2).astype(np.float64)  # (k, y)
            px = c.sum(axis=1).astype(np.float64)  # (k, x)
            n = py.sum(axis=1)
            out = {key: np.full(nz, np.nan) for key in ("area", "cx", "cy", "x0", "x1", "y0", "y1")}
            ok = n > 0
            sl = slice(k0, k0 + c.shape[0])
            with np.errstate(invalid="ignore", divide="ignore"):
                out["area"][sl] = np.where(ok, n * sx * sy, np.nan)
                out["cy"][sl] = np.where(ok, (py @ ys) / n, np.nan)
                out["cx"][sl] = np.where(ok, (px @ xs) / n, np.nan)
            anyy = py > 0
            anyx = px > 0
            fy = np.where(ok, np.argmax(anyy, axis=1), 0)
            ly = np.where(ok, anyy.shape[1] - 1 - np.argmax(anyy[:, ::-1], axis=1), 0)
            fx = np.where(ok, np.argmax(anyx, axis=1), 0)
            lx = np.where(ok, anyx.shape[1] - 1 - np.argmax(anyx[:, ::-1], axis=1), 0)
            out["y0"][sl] = np.where(ok, ys[fy] - sy / 2, np.nan)
            out["y1"][sl] = np.where(ok, ys[ly] + sy / 2, np.nan)
            out["x0"][sl] = np.where(ok, xs[fx] - sx / 2, np.nan)
            out["x1"][sl] = np.where(ok, xs[lx] + sx / 2, np.nan)
            self._stats = out
        return self._stats

    def points(self, step: int = 1) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(k index, y mm, x mm) of the cleaned voxels (subsampled in-plane by ``step``)."""
        c = self.clean[:, ::step, ::step]
        k, j, i = np.nonzero(c)
        return (k + self.coff[0], (j * step + self.coff[1]) * self.sp[1], (i * step + self.coff[2]) * self.sp[2])


def _interp_nan(z: np.ndarray, v: np.ndarray, extrapolate: str = "const") -> np.ndarray:
    """Fill NaNs of v(z) by linear interpolation; outside the data: constant or linear (last 10 samples)."""
    ok = np.isfinite(v)
    if ok.sum() == 0:
        return v.copy()
    if ok.sum() == 1:
        return np.full_like(v, v[ok][0])
    out = np.interp(z, z[ok], v[ok])
    if extrapolate == "linear":
        zi, vi = z[ok], v[ok]
        for side in (0, 1):
            sel = slice(0, min(10, zi.size)) if side == 0 else slice(max(0, zi.size - 10), None)
            if zi[sel].size >= 3:
                a, b = np.polyfit(zi[sel], vi[sel], 1)
                m = z < zi[0] if side == 0 else z > zi[-1]
                out[m] = a * z[m] + b
    return out


def _smooth1d(v: np.ndarray, sigma_vox: float) -> np.ndarray:
    if sigma_vox <= 0 or v.size < 2:
        return v
    return ndi.gaussian_filter1d(v, sigma_vox, mode="nearest")


def _ramp(z: np.ndarray, pts: list[tuple[float, float]]) -> np.ndarray:
    """Piecewise-linear function of z through anchor points (constant beyond the ends)."""
    pts = sorted(pts)
    return np.interp(z, [p[0] for p in pts], [p[1] for p in pts])


def _smoothstep(x: np.ndarray) -> np.ndarray:
    x = np.clip(x, 0.0, 1.0)
    return x * x * (3 - 2 * x)


def _unit_noise(shape: tuple[int, ...], sigma: Any, rng: np.random.Generator) -> np.ndarray:
    """Smooth Gaussian random field with unit standard deviation (sigma in voxels, per axis)."""
    if min(shape) <= 0:
        return np.zeros(shape, np.float32)
    f = ndi.gaussian_filter(rng.standard_normal(shape, dtype=np.float32), sigma, mode="wrap", truncate=3.0)
    s = float(f.std())
    return f / s if s > 0 else f


def _interp_matrix(n_out: int, n_in: int) -> np.ndarray:
    """(n_out, n_in) linear-interpolation weights mapping n_in samples spanning the same extent to n_out."""
    x = np.linspace(0.0, n_in - 1.0, n_out)
    i0 = np.clip(np.floor(x).astype(int), 0, max(n_in - 2, 0))
    w = x - i0
    W = np.zeros((n_out, n_in), np.float32)
    W[np.arange(n_out), i0] = 1.0 - w
    if n_in > 1:
        W[np.arange(n_out), np.minimum(i0 + 1, n_in - 1)] += w
    return W


def _lowres_noise(shape: tuple[int, int, int], sp: tuple[float, float, float], corr_mm: float,
                  rng: np.random.Generator) -> np.ndarray:
    """Unit-s.d. smooth field of correlation length ``corr_mm`` over ``shape``, drawn on a coarse grid and
    upsampled by separable linear interpolation (three small matrix products: cheap for any box)."""
    step = max(corr_mm / 2.5, 1.0)
    cs = tuple(max(2, int(math.ceil(n * s / step)) + 2) for n, s in zip(shape, sp))
    sig = tuple(corr_mm / 2.0 / step for _ in range(3))
    c = _unit_noise(cs, sig, rng)
    Wz, Wy, Wx = (_interp_matrix(n, m) for n, m in zip(shape, cs))
    t = c @ Wx.T                                   # (cz, cy, nx)
    t = np.einsum("yj,zjx->zyx", Wy, t, optimize=True)  # (cz, ny, nx)
    out = np.tensordot(Wz, t, axes=(1, 0)).astype(np.float32)  # (nz, ny, nx)
    sd = float(out.std())
    return out / sd if sd > 0 else out


def _banded_dist(mask: np.ndarray, sp: tuple[float, float, float], band_mm: float,
                 inplane: Optional[list] = None) -> np.ndarray:
    """Distance (mm) from each voxel to the nearest voxel of ``mask`` (0 inside), exact up to ``band_mm``.

    Per-slice 2-D EDTs followed by the z pass of the separable EDT restricted to |dz| <= band:
    ``D^2(z) = min_dz d2(z + dz)^2 + (dz sz)^2``. Cheaper than a full 3-D EDT on anisotropic CT grids.
    """
    nz = mask.shape[0]
    big = np.float32(band_mm * band_mm * 4 + 1e6)
    d2 = np.full(mask.shape, big, np.float32)
    anyk = mask.reshape(nz, -1).any(axis=1)
    for k in np.flatnonzero(anyk):
        if mask[k].all():
            d2[k] = 0.0
        else:
            d2[k] = ndi.distance_transform_edt(~mask[k], sampling=(sp[1], sp[2])).astype(np.float32) ** 2
    if inplane is not None:
        inplane.append(np.sqrt(d2))
    out = d2.copy()
    nb = int(math.ceil(band_mm / sp[0]))
    for dz in range(1, nb + 1):
        add = np.float32((dz * sp[0]) ** 2)
        np.minimum(out[dz:], d2[:-dz] + add, out=out[dz:])
        np.minimum(out[:-dz], d2[dz:] + add, out=out[:-dz])
    np.sqrt(out, out=out)
    return out


def _sdf(mask: np.ndarray, sp: tuple[float, float, float], band_mm: float,
         band_in: Optional[float] = None, inplane: Optional[list] = None) -> np.ndarray:
    """Signed distance (mm, negative inside) to the surface of ``mask``, accurate within +band_mm outside and
    -band_in inside (default: the same band)."""
    out = _banded_dist(mask, sp, band_mm, inplane)
    inside = _banded_dist(~mask, sp, band_mm if band_in is None else band_in)
    out -= inside
    return out


# ============================================================================================ canvas
class _Canvas:
    """The float32 HU array of the work crop plus millimetre coordinates and painting primitives."""

    def __init__(self, nz: int, y0: int, y1: int, x0: int, x1: int, sp: tuple[float, float, float], fill: float):
        self.nz = nz
        self.y0, self.y1, self.x0, self.x1 = y0, y1, x0, x1
        self.sp = sp
        self.hu = np.full((nz, y1 - y0, x1 - x0), fill, np.float32)
        self.zs = np.arange(nz) * sp[0]
        self.ys = (y0 + np.arange(y1 - y0)) * sp[1]
        self.xs = (x0 + np.arange(x1 - x0)) * sp[2]
        self.soft = float(0.5 * (sp[1] + sp[2]))  # width of the anti-aliasing ramp

    # -------------------------------------------------------------- boxes
    def box(self, k0: float, k1: float, ylo: float, yhi: float, xlo: float, xhi: float
            ) -> Optional[tuple[tuple[slice, slice, slice], np.ndarray, np.ndarray, np.ndarray]]:
        """Slices of the canvas covering z-index [k0, k1) and the mm ranges, with broadcastable coordinates."""
        k0 = max(int(math.floor(k0)), 0)
        k1 = min(int(math.ceil(k1)), self.nz)
        if not (np.isfinite(ylo) and np.isfinite(yhi) and np.isfinite(xlo) and np.isfinite(xhi)):
            return None
        j0 = max(int(math.floor(ylo / self.sp[1])) - self.y0, 0)
        j1 = min(int(math.ceil(yhi / self.sp[1])) + 1 - self.y0, self.hu.shape[1])
        i0 = max(int(math.floor(xlo / self.sp[2])) - self.x0, 0)
        i1 = min(int(math.ceil(xhi / self.sp[2])) + 1 - self.x0, self.hu.shape[2])
        if k1 <= k0 or j1 <= j0 or i1 <= i0:
            return None
        sl = (slice(k0, k1), slice(j0, j1), slice(i0, i1))
        return sl, self.zs[k0:k1, None, None], self.ys[None, j0:j1, None], self.xs[None, None, i0:i1]

    def alpha(self, sd: np.ndarray, offset: Any = 0.0) -> np.ndarray:
        """Anti-aliased occupancy from a signed distance (mm): 1 inside, 0 outside, a one-voxel ramp between."""
        return np.clip(0.5 - (sd - offset) / self.soft, 0.0, 1.0).astype(np.float32, copy=False)

    def blend(self, sl: tuple[slice, slice, slice], a: np.ndarray, value: Any) -> None:
        h = self.hu[sl]
        h += a * (value - h)

    # -------------------------------------------------------------- analytic shapes
    def tubes(self, k0: int, k1: int, *args: Any, block: int = 12, **kw: Any) -> list:
        """:meth:`tube` evaluated in blocks of slices, each in its own bounding box (long tubes whose centre
        moves, e.g. the posterior neck muscles from the thorax to the occiput, would otherwise span a huge
        box). Returns the list of non-empty pieces."""
        out = []
        for b0 in range(max(int(k0), 0), min(int(k1), self.nz), block):
            r = self.tube(b0, min(b0 + block, int(k1)), *args, **kw)
            if r is not None:
                out.append(r)
        return out

    def tube(self, k0: int, k1: int, cx: np.ndarray, cy: np.ndarray, a: np.ndarray, b: np.ndarray,
             ang: Any = 0.0, pad: float = 2.0, local: bool = False):
        """Elliptic tube: per slice k in [k0, k1) an ellipse centred (cx[k], cy[k]) with semi-axes a[k] (along
        the direction ``ang``) and b[k]. Returns (slices, signed distance mm) or None.

        Signed distance of a point to an ellipse is approximated by ``(q - 1) / |grad q|`` with
        ``q = sqrt((u/a)^2 + (v/b)^2)`` (first order; exact on the boundary, good within a few mm).
        """
        k0, k1 = max(int(k0), 0), min(int(k1), self.nz)
        if k1 <= k0:
            return None
        ks = slice(k0, k1)
        cx, cy, a, b = (np.asarray(t, float)[ks] if np.ndim(t) else np.full(k1 - k0, float(t))
                        for t in (cx, cy, a, b))
        ang = np.asarray(ang, float)[ks] if np.ndim(ang) else np.full(k1 - k0, float(ang))
        ok = np.isfinite(cx) & np.isfinite(cy) & (a > 0.05) & (b > 0.05)
        if not ok.any():
            return None
        r = np.maximum(a, b)[ok] + pad
        bx = self.box(k0, k1, np.min(cy[ok] - r), np.max(cy[ok] + r), np.min(cx[ok] - r), np.max(cx[ok] + r))
        if bx is None:
            return None
        sl, Z, Y, X = bx
        o = slice(sl[0].start - k0, sl[0].stop - k0)
        c, s = np.cos(ang[o]), np.sin(ang[o])
        aa = np.where(ok[o], a[o], 1e-3)[:, None, None].astype(np.float32)
        bb = np.where(ok[o], b[o], 1e-3)[:, None, None].astype(np.float32)
        dx = (X - np.nan_to_num(cx[o], nan=-1e4)[:, None, None]).astype(np.float32)
        dy = (Y - np.nan_to_num(cy[o], nan=-1e4)[:, None, None]).astype(np.float32)
        u = dx * c[:, None, None].astype(np.float32) + dy * s[:, None, None].astype(np.float32)
        v = -dx * s[:, None, None].astype(np.float32) + dy * c[:, None, None].astype(np.float32)
        if local:
            return sl, _ell_sd(u, v, aa, bb), u, v, aa, bb
        return sl, _ell_sd(u, v, aa, bb)

    def vplate(self, k0: int, k1: int, x0: Any, y0: Any, x1: Any, y1: Any, r: Any, pad: float = 2.0):
        """Per-slice 2-D capsule (segment (x0, y0)-(x1, y1) thickened by r; all may vary per slice) over
        slices [k0, k1). Returns (slices, signed distance mm) or None."""
        k0, k1 = max(int(k0), 0), min(int(k1), self.nz)
        if k1 <= k0:
            return None
        ks = slice(k0, k1)
        arr = lambda t: (np.asarray(t, float)[ks] if np.ndim(t) else np.full(k1 - k0, float(t)))  # noqa: E731
        x0, y0, x1, y1, r = arr(x0), arr(y0), arr(x1), arr(y1), arr(r)
        rm = float(np.nanmax(r)) + pad
        bx = self.box(k0, k1, np.nanmin(np.minimum(y0, y1)) - rm, np.nanmax(np.maximum(y0, y1)) + rm,
                      np.nanmin(np.minimum(x0, x1)) - rm, np.nanmax(np.maximum(x0, x1)) + rm)
        if bx is None:
            return None
        sl, Z, Y, X = bx
        o = slice(sl[0].start - k0, sl[0].stop - k0)
        e = lambda t: t[o][:, None, None].astype(np.float32)  # noqa: E731
        ax, ay, bx_, by = e(x0), e(y0), e(x1), e(y1)
        dx, by_ = bx_ - ax, by - ay
        L2 = np.maximum(dx * dx + by_ * by_, 1e-6)
        px, py = X.astype(np.float32) - ax, Y.astype(np.float32) - ay
        t = np.clip((px * dx + py * by_) / L2, 0.0, 1.0)
        ex, ey = px - t * dx, py - t * by_
        return sl, (np.sqrt(ex * ex + ey * ey) - e(r)).astype(np.float32)

    def ellipsoid(self, c: Any, radii: Any, rot: Optional[np.ndarray] = None, pad: float = 2.0):
        """Ellipsoid centre c (x, y, z mm), semi-axes along the columns of ``rot`` (default the x, y, z axes).
        Returns (slices, signed distance mm) or None."""
        c = np.asarray(c, float)
        radii = np.asarray(radii, float)
        R = np.eye(3) if rot is None else np.asarray(rot, float)
        ext = np.sqrt((R ** 2) @ (radii ** 2)) + pad  # half-extent along x, y, z
        bx = self.box((c[2] - ext[2]) / self.sp[0], (c[2] + ext[2]) / self.sp[0] + 1,
                      c[1] - ext[1], c[1] + ext[1], c[0] - ext[0], c[0] + ext[0])
        if bx is None:
            return None
        sl, Z, Y, X = bx
        d = [(X - c[0]).astype(np.float32), (Y - c[1]).astype(np.float32), (Z - c[2]).astype(np.float32)]
        comps = [d[0] * np.float32(R[0, i]) + d[1] * np.float32(R[1, i]) + d[2] * np.float32(R[2, i]) for i in range(3)]
        q2 = sum((comps[i] / np.float32(radii[i])) ** 2 for i in range(3))
        g2 = sum((comps[i] / np.float32(radii[i] ** 2)) ** 2 for i in range(3))
        q = np.sqrt(q2)
        sd = (q - 1.0) * q / np.sqrt(np.maximum(g2, 1e-12))
        sd = np.where(q < 1e-6, -float(radii.min()), sd)
        return sl, sd.astype(np.float32)

    def segment(self, p0: Any, p1: Any, r0: float, r1: float, pad: float = 2.0):
        """Capsule from p0 to p1 (x, y, z mm) with radius varying r0 -> r1. Returns (slices, signed distance)."""
        p0 = np.asarray(p0, float)
        p1 = np.asarray(p1, float)
        rmax = max(r0, r1) + pad
        lo = np.minimum(p0, p1) - rmax
        hi = np.maximum(p0, p1) + rmax
        bx = self.box(lo[2] / self.sp[0], hi[2] / self.sp[0] + 1, lo[1], hi[1], lo[0], hi[0])
        if bx is None:
            return None
        sl, Z, Y, X = bx
        d = p1 - p0
        L2 = max(float(d @ d), 1e-9)
        dx, dy, dz = (X - p0[0]).astype(np.float32), (Y - p0[1]).astype(np.float32), (Z - p0[2]).astype(np.float32)
        t = np.clip((dx * d[0] + dy * d[1] + dz * d[2]) / L2, 0.0, 1.0)
        ex, ey, ez = dx - t * d[0], dy - t * d[1], dz - t * d[2]
        sd = np.sqrt(ex * ex + ey * ey + ez * ez) - (r0 + (r1 - r0) * t)
        return sl, sd.astype(np.float32)


def _ell_sd(u: np.ndarray, v: np.ndarray, a: Any, b: Any) -> np.ndarray:
    """Approximate signed distance to the ellipse (u/a)^2 + (v/b)^2 = 1: ``(q - 1) q / |grad(q^2)/2|`` with
    ``q^2 = u^2/a^2 + v^2/b^2``; the tiny regulariser makes the centre read ``-min(a, b)``."""
    ia2 = 1.0 / np.maximum(a, 1e-3) ** 2
    ib2 = 1.0 / np.maximum(b, 1e-3) ** 2
    uu = u * u
    vv = v * v
    q2 = uu * ia2 + vv * ib2
    q = np.sqrt(q2)
    eps = 1e-6 * np.sqrt(np.maximum(ia2, ib2))
    g = np.sqrt(uu * ia2 * ia2 + vv * ib2 * ib2 + eps * eps)
    return ((q2 - q) / g).astype(np.float32, copy=False)


def _ray_ellipse(cx0: np.ndarray, cy0: np.ndarray, th: np.ndarray, ex: np.ndarray, ey: np.ndarray,
                 a: np.ndarray, b: np.ndarray, ang: np.ndarray) -> np.ndarray:
    """Far intersection distance of rays from (cx0, cy0)[k] at angles th with ellipses (per k); -inf if none.
    Shapes: per-slice arrays (nk,), th (nt,) -> (nk, nt)."""
    ux, uy = np.cos(th)[None, :], np.sin(th)[None, :]
    c, s = np.cos(ang)[:, None], np.sin(ang)[:, None]
    dx, dy = (cx0 - ex)[:, None], (cy0 - ey)[:, None]
    du, dv = dx * c + dy * s, -dx * s + dy * c
    uu, uv = ux * c + uy * s, -ux * s + uy * c
    A = (uu / a[:, None]) ** 2 + (uv / b[:, None]) ** 2
    B = 2 * (du * uu / a[:, None] ** 2 + dv * uv / b[:, None] ** 2)
    C = (du / a[:, None]) ** 2 + (dv / b[:, None]) ** 2 - 1
    disc = B * B - 4 * A * C
    t = (-B + np.sqrt(np.maximum(disc, 0))) / (2 * A)
    return np.where((disc >= 0) & (t > 0), t, -np.inf)


# ============================================================================================ landmarks
#: Median offsets (y, z) mm of organ centroids from the foramen magnum (top of the spinal canal) on the shared
#: head-and-neck masks (x is taken from the left/right pair midpoint). Used only when the canal is missing.
_FM_OFFSETS: dict[str, tuple[float, float]] = {
    "Cochlea": (-14.0, 37.0),
    "Parotid": (-29.0, 4.0),
    "Mandible": (-72.0, -14.0),
    "Orbit": (-85.0, 67.0),
    "Submandibular": (-50.0, -40.0),
}
_NTH = 256  # angular bins of the polar body outline


def _level_table(z_fm: float, z_bottom: float, s: float, vs: float) -> list[dict[str, Any]]:
    """Vertebral levels from the atlas down to ``z_bottom``: dicts with name, kind, top/bottom (mm, along the
    spine), body width ``bw`` and depth ``bap`` (mm) and spinous-process length ``ls``. Heights follow adult
    means (C3-C7 ~14 mm bodies + 4.5 mm discs, thoracic 17-24 + 5-6, lumbar 27 + 9), scaled by the neck
    length ratio ``s``; sizes by ``vs``."""
    lev: list[dict[str, Any]] = [
        dict(name="C1", kind="C1", top=z_fm - 3.0, bot=z_fm - 15.0 * s, bw=0.0, bap=0.0, ls=8.0 * vs, disc_below=0.0),
        dict(name="C2", kind="C2", top=z_fm - 15.0 * s, bot=z_fm - 40.0 * s, bw=17.0 * vs, bap=15.0 * vs, ls=19.0 * vs,
             disc_below=4.5 * s),
    ]
    z = z_fm - 40.0 * s - 4.5 * s
    names = [f"C{i}" for i in range(3, 8)] + [f"T{i}" for i in range(1, 13)] + [f"L{i}" for i in range(1, 6)]
    for i, nm in enumerate(names):
        if z < z_bottom - 40:
            break
        if nm.startswith("C"):
            h, d, bw, bap, ls = 14.0, 4.5, 17.0 + 1.6 * i, 15.5 + 0.4 * i, (27.0 if nm == "C7" else 11.0 + 0.8 * i)
        elif nm.startswith("T"):
            t = int(nm[1:])
            h, d, bw, bap, ls = 16.5 + 0.65 * t, 4.5 + 0.15 * t, 24.0 + 1.3 * t, 16.5 + 1.1 * t, 30.0
        else:
            h, d, bw, bap, ls = 27.0, 9.0, 45.0, 32.0, 28.0
        lev.append(dict(name=nm, kind=nm[0], top=z, bot=z - h * s, bw=bw * vs, bap=bap * vs, ls=ls * vs,
                        disc_below=d * s))
        z = z - h * s - d * s
    return lev


class _Anatomy:
    """Plans (landmarks, primitives, outline) and paints one synthetic case. See the module docstring."""

    def __init__(self, masks: dict[str, Volume], P: SynthParams):
        t0 = time.perf_counter()
        self.P = P
        self.rng = np.random.default_rng(P.texture_seed)
        self.timing: dict[str, float] = {}
        ref = next(iter(masks.values()))
        self.ref = ref
        self.orient = _orientation(ref)
        self.sp = self.orient.spacing
        shape_c = tuple(ref.shape[a] for a in self.orient.axes)
        self.nz, self.ny, self.nx = shape_c
        self.zmm = np.arange(self.nz) * self.sp[0]
        self.orgs: dict[str, _Org] = {}
        for name, vol in masks.items():
            view = self.orient.canon(vol.array)
            bb = _bbox(view)
            if bb is None:
                continue
            z0, z1, y0, y1, x0, x1 = bb
            crop = np.ascontiguousarray(view[z0:z1, y0:y1, x0:x1] != 0)
            self.orgs[name] = _Org(name, crop, (z0, y0, x0), shape_c, self.sp)  # type: ignore[arg-type]
        self.timing["read"] = time.perf_counter() - t0

    # ------------------------------------------------------------------ helpers
    def k_of(self, z: float) -> float:
        return z / self.sp[0]

    def kr(self, zlo: float, zhi: float) -> tuple[int, int]:
        """Slice index range [k0, k1) covering z in [zlo, zhi] mm."""
        return max(int(math.floor(zlo / self.sp[0])), 0), min(int(math.ceil(zhi / self.sp[0])) + 1, self.nz)

    def pair(self, base: str) -> list[_Org]:
        return [o for o in (self.orgs.get(base + "-Lt"), self.orgs.get(base + "-Rt")) if o is not None]

    def ztrunc(self, o: _Org) -> bool:
        return o.touches(0, False) or o.touches(0, True)

    # ------------------------------------------------------------------ landmarks
    def landmarks(self) -> None:
        sz = self.sp[0]
        O = self.orgs
        fm = None
        self.fm_source = ""
        can = O.get("Spinal-Canal")
        if can is not None and not can.touches(0, True):
            st = can.stats()
            k1 = can.krange[1]
            ks = np.arange(max(k1 - 3, can.krange[0]), k1)
            fm = np.array([np.nanmean(st["cx"][ks]), np.nanmean(st["cy"][ks]), (k1 - 0.5) * sz])
            self.fm_source = "Spinal-Canal"
        bs = O.get("Brainstem")
        if fm is None and bs is not None and not bs.touches(0, False):
            st = bs.stats()
            k0 = bs.krange[0]
            ks = np.arange(k0, min(k0 + 3, bs.krange[1]))
            fm = np.array([np.nanmean(st["cx"][ks]), np.nanmean(st["cy"][ks]) + 2.0, (k0 - 0.5) * sz - 4.0])
            self.fm_source = "Brainstem"
        if fm is None:
            for base, (dy, dz) in _FM_OFFSETS.items():
                if base == "Mandible":
                    m = O.get("Mandible")
                    cs = [m.centroid()] if m is not None and not self.ztrunc(m) else []
                else:
                    cs = [o.centroid() for o in self.pair(base) if not self.ztrunc(o)]
                if cs:
                    c = np.mean(cs, axis=0)
                    fm = c - np.array([0.0, dy, dz])
                    self.fm_source = base
                    break
        if fm is None:
            lungs = [o for o in self.pair("Lung") if not o.touches(0, True)]
            if lungs:
                top = max(o.krange[1] for o in lungs)
                c = np.mean([o.centroid() for o in lungs], axis=0)
                fm = np.array([c[0], c[1] - 10.0, (top - 0.5) * sz + 122.0])
                self.fm_source = "Lung"
        if fm is None:
            br = O.get("Brain")
            if br is not None and not br.touches(0, False):
                c = br.centroid()
                fm = np.array([c[0], c[1] - 5.0, (br.krange[0] - 0.5) * sz - 5.0])
                self.fm_source = "Brain"
        if fm is None:
            raise InputError(
                "Cannot place the synthetic anatomy: the masks hold none of Spinal-Canal, Brainstem, Cochlea, "
                "Parotid, Mandible, Orbit, Submandibular, Lung or Brain with a usable extent."
            )
        self.fm = fm
        z = self.zmm
        # ---- midline x(z): weighted kernel average of symmetric evidence
        zs, xs, ws = [fm[2]], [fm[0]], [0.05]
        for name, w in (("Spinal-Canal", 3.0), ("Brainstem", 2.0), ("Spinal-Cord", 2.0)):
            o = O.get(name)
            if o is not None:
                st = o.stats()
                ok = np.isfinite(st["cx"])
                zs += list(z[ok]); xs += list(st["cx"][ok]); ws += [w] * int(ok.sum())
        for name in ("Mandible", "Brain"):
            o = O.get(name)
            if o is not None:
                st = o.stats()
                ok = np.isfinite(st["x0"]) & ((st["x1"] - st["x0"]) > 60)
                zs += list(z[ok]); xs += list(0.5 * (st["x0"][ok] + st["x1"][ok])); ws += [0.7] * int(ok.sum())
        for base in ("Parotid", "Orbit", "Cochlea", "Submandibular", "Lens"):
            ps = self.pair(base)
            if len(ps) == 2:
                c = 0.5 * (ps[0].centroid() + ps[1].centroid())
                zs.append(c[2]); xs.append(c[0]); ws.append(8.0)
        zs_a, xs_a, ws_a = np.asarray(zs), np.asarray(xs), np.asarray(ws)
        K = np.exp(-0.5 * ((z[:, None] - zs_a[None, :]) / 25.0) ** 2) * ws_a[None, :] + 1e-9
        self.xm = (K @ xs_a) / K.sum(axis=1)
        # ---- spine centre line
        sz_vox = 3.0 / sz
        self.z_fm = float(fm[2])
        k_fm = int(np.clip(np.floor(self.z_fm / sz), -1, self.nz - 1))
        if can is not None:
            st = can.stats()
            ok = np.isfinite(st["cx"])
            k_lo = int(np.flatnonzero(ok)[0])
            cx = _interp_nan(z, st["cx"], "linear")
            cy = _interp_nan(z, st["cy"], "linear")
            wc = _interp_nan(z, 0.5 * (st["x1"] - st["x0"]), "const")
            hc = _interp_nan(z, 0.5 * (st["y1"] - st["y0"]), "const")
            self.xc, self.yc = _smooth1d(cx, sz_vox), _smooth1d(cy, sz_vox)
            self.wc = np.clip(_smooth1d(wc, sz_vox), 6.0, 17.0)
            self.hc = np.clip(_smooth1d(hc, sz_vox), 4.5, 11.0)
            self.spine_lo = 0 if can.touches(0, False) else k_lo
        else:
            self.xc = self.xm.copy()
            self.yc = fm[1] + 0.12 * np.maximum(self.z_fm - z, 0.0)
            self.wc = np.full(self.nz, 12.0)
            self.hc = np.full(self.nz, 8.0)
            self.spine_lo = 0
        self.spine_hi = k_fm + 1  # exclusive
        # ---- levels
        M = O.get("Mandible")
        lungs = self.pair("Lung")
        if lungs and not any(o.touches(0, True) for o in lungs):
            self.z_lung = (max(o.krange[1] for o in lungs) - 0.5) * sz
            self.s = float(np.clip((self.z_fm - self.z_lung) / 122.0, 0.8, 1.25))
        else:
            self.s = 1.0
            self.z_lung = self.z_fm - 122.0
        s = self.s
        if lungs and not any(o.touches(0, False) for o in lungs):
            self.z_lung_bot = (min(o.krange[0] for o in lungs) + 0.5) * sz
        else:
            self.z_lung_bot = -1e9
        self.z_mand_lo = self.z_fm - 47.0 * s
        self.z_mand_hi = self.z_fm + 42.0
        self.y_chin = fm[1] - 110.0
        self.z_crest = self.z_fm - 25.0
        if M is not None:
            kk, yy, xx = M.points(step=1)
            zz = kk * sz
            if not M.touches(0, False):
                self.z_mand_lo = float(zz.min()) - sz / 2
            if not M.touches(0, True):
                self.z_mand_hi = float(zz.max()) + sz / 2
            ant = np.abs(xx - self.xm[kk]) < 10.0
            if ant.sum() > 5:
                self.y_chin = float(yy[ant].min())
                front = ant & (yy < self.y_chin + 25.0)
                self.z_crest = float(zz[front].max()) if front.any() else self.z_fm - 25.0
        self.z_occl = self.z_crest + 8.5
        self.z_palate = self.z_occl + 16.0
        orbs = self.pair("Orbit")
        if orbs:
            cs = np.array([o.centroid() for o in orbs])
            self.z_orbit = float(cs[:, 2].mean())
            self.y_globe = float(cs[:, 1].mean())
        else:
            self.z_orbit = self.z_fm + 67.0
            self.y_globe = fm[1] - 85.0
        lens = self.pair("Lens")
        if lens:
            self.y_face = float(min(np.nanmin(o.stats()["y0"]) for o in lens)) - 4.5
        elif orbs:
            self.y_face = float(min(np.nanmin(o.stats()["y0"]) for o in orbs)) - 5.5
        else:
            self.y_face = self.y_globe - 17.0
        self.globes = {}
        for side, sg in (("Lt", 1.0), ("Rt", -1.0)):
            o = O.get("Orbit-" + side)
            if o is not None:
                self.globes[side] = o.centroid()
            else:
                self.globes[side] = np.array([fm[0] + sg * 32.0, self.y_globe, self.z_orbit])
        self.coch = {}
        for side, sg in (("Lt", 1.0), ("Rt", -1.0)):
            o = O.get("Cochlea-" + side)
            self.coch[side] = o.centroid() if o is not None else np.array([fm[0] + sg * 34.0, fm[1] - 14.0,
                                                                          self.z_fm + 37.0])
        self.z_hyoid = 0.5 * (self.z_mand_lo - 12.0) + 0.5 * (self.z_fm - 60.0 * s)
        self.z_glottis = self.z_hyoid - 27.0 * s
        self.z_cricoid = self.z_hyoid - 42.0 * s
        self.z_clav = self.z_lung - 18.0
        # ---- vertebral levels and per-slice vertebral body geometry
        self.levels = _level_table(self.z_fm, float(z[0]) - 50.0, s, self.P.vertebra_scale)
        bw = np.full(self.nz, 18.0)
        bap = np.full(self.nz, 15.5)
        for L in self.levels[1:]:
            m = (z <= L["top"] + L["disc_below"]) & (z > L["bot"] - L["disc_below"])
            bw[m] = L["bw"]
            bap[m] = L["bap"]
        c2 = self.levels[1]
        bw[z > c2["top"]] = c2["bw"]
        bap[z > c2["top"]] = c2["bap"]
        self.bw = _smooth1d(bw, 4.0 / sz)
        self.bap = _smooth1d(bap, 4.0 / sz)
        self.y_vbf = self.yc - self.hc - 1.5 - self.bap  # anterior surface of the vertebral bodies
        # slope of the canal (dy/dz) for tilted endplates
        self.gy = np.gradient(_smooth1d(self.yc, 8.0 / sz), z) if self.nz > 1 else np.zeros(self.nz)
        self.gy = np.clip(self.gy, -0.8, 0.8)

    # ------------------------------------------------------------------ per-slice neck geometry
    def neck_geometry(self) -> None:
        """Per-slice arrays for the airway, larynx, prevertebral stripe and body centre line (mm)."""
        P, z, s = self.P, self.zmm, self.s
        sz = self.sp[0]
        k_fm = int(np.clip(self.spine_hi - 1, 0, self.nz - 1))
        yf = self.y_vbf.copy()
        above = z > self.z_fm
        yf[above] = self.y_vbf[k_fm] - 0.45 * (z[above] - self.z_fm)
        self.yfront = _smooth1d(yf, 2.0 / sz)
        aws = P.airway_scale
        zf, zp, zh, zg, zc = self.z_fm, self.z_palate, self.z_hyoid, self.z_glottis, self.z_cricoid
        A = [zf + 14, zp, zf - 25, zh + 4, zg + 5, zg, zc, zc - 15]
        self.aw_top, self.aw_bot = zf + 14.0, -1e9
        self.aw_a = _ramp(z, list(zip(A, [8, 12, 12, 12, 8, 2.5, 7.5, 8.5]))) * aws
        self.aw_b = _ramp(z, list(zip(A, [5.5, 7, 6, 6, 8.5, 8, 7, 7.5]))) * (0.5 + 0.5 * aws)
        pv = P.prevertebral_mm
        self.aw_post = _ramp(z, list(zip(A, [15, 12, pv, pv, 9, 12, 14, 17])))
        self.aw_x = self.xm.copy()
        self.aw_y = self.yfront - self.aw_post - self.aw_b
        # body centre line for the polar outline
        yc_c = self.yc.copy()
        self.ycen = _ramp(z, [(self.z_lung - 10, 0.0), (self.z_lung + 30, 1.0)]) * (yc_c - 22.0) + \
            (1 - _ramp(z, [(self.z_lung - 10, 0.0), (self.z_lung + 30, 1.0)])) * (yc_c - 45.0)
        w_head = _ramp(z, [(self.z_fm + 5, 0.0), (self.z_fm + 35, 1.0)])
        self.ycen = (1 - w_head) * self.ycen + w_head * (self.fm[1] - 12.0)
        self.ycen = _smooth1d(self.ycen, 6.0 / sz)
        self.xcen = self.xm.copy()

    # ------------------------------------------------------------------ mandible rami
    def rami(self) -> None:
        """Per slice and side, the ramus of the mandible (points lateral and posterior to the dental arch):
        lateral/medial x, anterior/posterior y (mm; NaN where absent)."""
        self.ramus: dict[str, dict[str, np.ndarray]] = {}
        M = self.orgs.get("Mandible")
        for side, sg in (("Lt", 1.0), ("Rt", -1.0)):
            d = {k: np.full(self.nz, np.nan) for k in ("xl", "xm", "y0", "y1", "cx", "cy")}
            if M is not None:
                kk, yy, xx = M.points(step=1)
                u = (xx - self.xm[kk]) * sg
                sel = (u > 18.0) & (yy > self.y_chin + 38.0)
                kk, yy, xx, u = kk[sel], yy[sel], xx[sel], u[sel]
                if kk.size:
                    n = np.bincount(kk, minlength=self.nz).astype(float)
                    ok = n > 3
                    def red(v, f):
                        out = np.full(self.nz, np.nan)
                        order = np.argsort(kk, kind="stable")
                        ks, vs = kk[order], v[order]
                        starts = np.searchsorted(ks, np.arange(self.nz))
                        ends = np.searchsorted(ks, np.arange(self.nz), side="right")
                        for k in np.flatnonzero(ok):
                            out[k] = f(vs[starts[k]:ends[k]])
                        return out
                    d["xl"] = red(u, np.max) * sg + self.xm  # lateral surface
                    d["xm"] = red(u, np.min) * sg + self.xm  # medial surface
                    d["y0"] = red(yy, np.min)
                    d["y1"] = red(yy, np.max)
                    d["cx"] = red(xx, np.mean)
                    d["cy"] = red(yy, np.mean)
            self.ramus[side] = d

    # ------------------------------------------------------------------ deep structures (tubes)
    def _tube(self, name: str, zlo: float, zhi: float, cx: Any, cy: Any, a: Any, b: Any, ang: Any = 0.0,
              out: Optional[float] = None) -> None:
        """Register an elliptic tube over z in [zlo, zhi]; ``out`` = margin factor on the subcutaneous fat
        thickness for the body outline (None: the structure does not shape the outline)."""
        k0, k1 = self.kr(zlo, zhi)
        if k1 <= k0:
            return
        full = lambda v: np.broadcast_to(np.asarray(v, float), (self.nz,)).copy()  # noqa: E731
        self.T[name] = dict(k0=k0, k1=k1, cx=full(cx), cy=full(cy), a=np.maximum(full(a), 0.1),
                            b=np.maximum(full(b), 0.1), ang=full(ang), out=out)

    @staticmethod
    def _path(z: np.ndarray, pts: list[tuple[float, float, float]], smooth_mm: float, sz: float
              ) -> tuple[np.ndarray, np.ndarray]:
        """x(z), y(z) through control points (z, x, y), piecewise linear then Gaussian-smoothed."""
        pts = sorted(pts)
        zs = [p[0] for p in pts]
        x = np.interp(z, zs, [p[1] for p in pts])
        y = np.interp(z, zs, [p[2] for p in pts])
        return _smooth1d(x, smooth_mm / sz), _smooth1d(y, smooth_mm / sz)

    def plan(self) -> None:
        P, z, s = self.P, self.zmm, self.s
        sz = self.sp[0]
        ms = P.muscle_scale
        self.T: dict[str, dict[str, Any]] = {}
        zf, zl, zh = self.z_fm, self.z_lung, self.z_hyoid
        xm, xc, yc, wc, hc = self.xm, self.xc, self.yc, self.wc, self.hc
        bw = self.bw
        # mastoid (centre), from the cochlea: postero-inferolateral
        self.mastoid = {}
        for side, sg in (("Lt", 1.0), ("Rt", -1.0)):
            c = self.coch[side]
            self.mastoid[side] = c + np.array([sg * 13.0, 13.0, -20.0])
        # posterior muscle mass
        ND = P.neck_depth_mm
        W = _ramp(z, [(zl - 40, P.shoulder_halfwidth_mm * 0.42), (zl + 10, 72), (zl + 45, 54), (zf - 20, 50),
                      (zf + 5, 48), (zf + 25, 42), (zf + 42, 20)]) * (0.85 + 0.15 * ms)
        D = _ramp(z, [(zl, ND + 12), (zf - 12, ND), (zf + 12, ND * 0.75), (zf + 30, ND * 0.45), (zf + 42, 8.0)])
        ant = yc - hc - 4.0
        post = yc + hc + D
        self._tube("pm", -1e9, zf + 42, xm, 0.5 * (ant + post), W, 0.5 * (post - ant), out=1.25)
        # sternocleidomastoids, levator scapulae, scalenes
        for side, sg in (("Lt", 1.0), ("Rt", -1.0)):
            mst = self.mastoid[side]
            kz = lambda zz: int(np.clip(round(zz / sz), 0, self.nz - 1))  # noqa: E731
            zm = zh - 12.0
            zb = self.z_clav + 6.0
            cx_, cy_ = self._path(z, [(mst[2] - 4, mst[0] + sg * 3.0, mst[1] + 3.0),
                                      (zm, xc[kz(zm)] + sg * (bw[kz(zm)] / 2 + 30.0), self.yfront[kz(zm)] + 5.0),
                                      (zb, xm[kz(zb)] + sg * 20.0, self.yfront[kz(zb)] - 30.0)], 12.0, sz)
            a = _ramp(z, [(zb, 9.0), (zm, 12.0), (mst[2], 13.0)]) * ms
            b = _ramp(z, [(zb, 4.5), (zm, 5.5), (mst[2], 7.0)]) * ms
            ang = np.arctan2(cy_ - self.ycen, cx_ - xm) + np.pi / 2
            self._tube("scm_" + side, zb - 4, mst[2] + 2, cx_, cy_, a, b, ang, out=1.0)
            lx, ly = self._path(z, [(zf - 6, xc[kz(zf - 6)] + sg * (wc[kz(zf - 6)] + 24.0), yc[kz(zf - 6)] + 4.0),
                                    (zl - 15, xm[kz(zl - 15)] + sg * 60.0, yc[kz(zl - 15)] + 32.0)], 10.0, sz)
            self._tube("lev_" + side, zl - 15, zf - 6, lx, ly, 8.0 * ms, 6.5 * ms,
                       np.arctan2(ly - yc, lx - xc) + np.pi / 2, out=1.0)
            sx_, sy_ = self._path(z, [(zh, xc[kz(zh)] + sg * (bw[kz(zh)] / 2 + 14.0), yc[kz(zh)] - hc[kz(zh)] - 2.0),
                                      (zl - 5, xm[kz(zl - 5)] + sg * 44.0, yc[kz(zl - 5)] - 24.0)], 10.0, sz)
            self._tube("scal_" + side, zl - 5, zh, sx_, sy_, 8.5 * ms, 6.0 * ms,
                       np.arctan2(sy_ - yc, sx_ - xc), out=1.0)
            # prevertebral muscles (longus colli / capitis)
            t_lc = np.clip(self.aw_post - 2.0, 2.5, 13.0)
            self._tube("lc_" + side, zl - 40, zf + 10, xc + sg * (bw * 0.27 + 1.5), self.yfront - t_lc / 2 - 0.2,
                       bw * 0.26 + 1.0, t_lc / 2 + 0.3)
        # larynx block and trachea / thyroid / strap block
        sl = 0.85 + 0.15 * P.airway_scale
        self.lx_post = self.yfront - self.aw_post + 6.0
        self._tube("larynx", self.z_cricoid - 6, zh + 2, xm, self.lx_post - 19.0 * sl, 21.0 * sl, 19.0 * sl, out=0.8)
        self.r_tr = 8.0 * P.airway_scale ** 0.5
        self.y_tr = self.yfront - 13.0 - self.r_tr
        self._tube("neckfront", zl - 35, self.z_cricoid + 2, xm, self.y_tr + 1.0, self.r_tr + 23.0, self.r_tr + 10.0,
                   out=1.0)
        # floor of mouth / submental, masticator muscles
        kh = int(np.clip(round(zh / sz), 0, self.nz - 1))
        self.y_hyoid = float(self.yfront[kh] - 36.0 * s)
        fy = _ramp(z, [(zh, 0.5 * (self.y_chin + 28.0) + 0.5 * self.y_hyoid), (self.z_mand_lo + 12, self.y_chin + 28.0)])
        self._tube("floor", zh - 3, self.z_mand_lo + 16, xm, fy, 27.0, 23.0, out=1.15)
        self.y_ptery = 0.5 * (self.y_face + 55.0) + 0.5 * (self.fm[1] - 45.0)
        for side, sg in (("Lt", 1.0), ("Rt", -1.0)):
            R = self.ramus[side]
            ok = np.isfinite(R["xl"])
            if ok.sum() < 2:
                continue
            kk = np.flatnonzero(ok)
            k_lo, k_hi = kk[0], kk[-1]
            xl = _smooth1d(_interp_nan(z, R["xl"]), 1.0)
            xmed = _smooth1d(_interp_nan(z, R["xm"]), 1.0)
            y0 = _smooth1d(_interp_nan(z, R["y0"]), 1.0)
            y1 = _smooth1d(_interp_nan(z, R["y1"]), 1.0)
            zr_lo = k_lo * sz
            zr_top = min(self.z_mand_hi - 9.0, k_hi * sz)
            self._tube("mass_" + side, zr_lo + 2.0, zr_top, xl + sg * 6.5 * ms, 0.5 * (y0 + y1) + 1.0,
                       6.5 * ms, np.maximum(0.5 * (y1 - y0) + 1.5, 8.0), out=0.8)
            wtop = _ramp(z, [(zr_lo + 15, 0.0), (self.z_palate + 10, 1.0)])
            mx = (1 - wtop) * (xmed - sg * 5.5 * ms) + wtop * (xm + sg * 20.0)
            my = (1 - wtop) * (0.5 * (y0 + y1) + 3.0) + wtop * self.y_ptery
            self._tube("mpt_" + side, zr_lo + 4.0, self.z_palate + 10, mx, my, 11.0, 5.0 * ms,
                       np.pi / 2 - sg * 0.4)
            # lateral pterygoid: condyle neck -> lateral pterygoid plate
            kc = int(np.clip(round((self.z_mand_hi - 14) / sz), 0, self.nz - 1))
            cxp, cyp = xl[kc] - sg * 6.0, y1[kc] - 5.0
            pxp, pyp = xm[kc] + sg * 19.0, self.y_ptery
            self._tube("lpt_" + side, self.z_mand_hi - 24, self.z_mand_hi - 8, 0.5 * (cxp + pxp), 0.5 * (cyp + pyp),
                       0.5 * math.hypot(pxp - cxp, pyp - cyp) + 2.0, 6.0 * ms, math.atan2(pyp - cyp, pxp - cxp))
        # face: maxilla / cheeks, lips
        zo = self.z_orbit
        fw = _ramp(z, [(self.z_occl - 4, 38.0), (self.z_palate, 44.0), (zo - 14, 50.0), (zo - 6, 52.0)])
        self._tube("face", self.z_occl - 6, zo - 4, xm, self.y_face + 12.0 + 27.0, fw, 27.0, out=0.55)
        D_ = max(self.y_ptery - self.y_face - 12.0, 28.0)
        self._tube("cheeks", self.z_occl - 4, zo - 10, xm, self.y_face + 12.0 + D_ / 2, fw + 7.0, D_ / 2 + 6.0, out=0.6)
        y_inc = self.y_chin - 1.0
        self._tube("lips", self.z_crest - 8, self.z_palate + 2, xm, y_inc + 7.0, 24.0, 9.0, out=0.2)
        # trunk: shoulders
        SW = P.shoulder_halfwidth_mm
        sw = _ramp(z, [(zl - 120, SW - 40.0), (zl - 30, SW - 20.0), (zl - 5, SW - 28.0), (zl + 20, 95.0), (zl + 42, 55.0)])
        sb = _ramp(z, [(zl - 60, 85.0), (zl, 62.0), (zl + 25, 50.0), (zl + 42, 42.0)])
        self._tube("trunk", -1e9, zl + 42, xm, yc - 12.0, sw, sb, out=1.0)
        # temporalis (outline only here; painted from the skull distance)
        br = self.orgs.get("Brain")
        if br is not None:
            st = br.stats()
            for side, sg in (("Lt", 1.0), ("Rt", -1.0)):
                edge = st["x1"] if sg > 0 else st["x0"]
                edge = _interp_nan(z, edge)
                tt = _ramp(z, [(self.z_mand_hi - 10, 12.0), (self.z_mand_hi + 25, 8.0), (self.z_mand_hi + 50, 2.0)]) * ms
                cxx = edge + sg * (P.csf_gap_mm + P.skull_mm + tt / 2)
                self._tube("temporalis_" + side, self.z_mand_hi - 8, self.z_mand_hi + 50, cxx,
                           self.coch[side][1] - 22.0, tt / 2 + 0.5, 26.0, out=0.3)

    # ------------------------------------------------------------------ body outline (polar)
    def _polar_organ(self, kk: np.ndarray, yy: np.ndarray, xx: np.ndarray) -> np.ndarray:
        """Max radius per (slice, angle bin) of points around the body centre line; -inf where none."""
        r0 = np.full((self.nz, _NTH), -np.inf)
        if kk.size == 0:
            return r0
        dx = xx - self.xcen[kk]
        dy = yy - self.ycen[kk]
        rho = np.hypot(dx, dy) + 0.5 * max(self.sp[1], self.sp[2])
        b = (np.floor((np.arctan2(dy, dx) + np.pi) / (2 * np.pi) * _NTH).astype(np.int64)) % _NTH
        np.maximum.at(r0.ravel(), kk.astype(np.int64) * _NTH + b, rho)
        return r0

    def _spread(self, r0: np.ndarray, m: float, zdil: bool = True) -> np.ndarray:
        """Polar radius of the union of discs of radius ``m`` around the points of ``r0`` (and, with ``zdil``,
        of balls: slices within m above/below contribute with the chord radius)."""
        rows = np.flatnonzero(np.isfinite(r0).any(axis=1))
        out = np.full_like(r0, -np.inf)
        if rows.size == 0 or m <= 0:
            return np.where(np.isfinite(r0), r0 + max(m, 0), -np.inf)
        k0, k1 = rows[0], rows[-1] + 1
        sub = r0[k0:k1]
        dth = 2 * np.pi / _NTH
        rmin = np.nanmin(np.where(np.isfinite(sub), sub, np.nan))
        S = int(min(_NTH // 4, math.ceil(math.asin(min(1.0, m / max(rmin, 1.0))) / dth)))
        with np.errstate(invalid="ignore", over="ignore"):
            acc = np.where(np.isfinite(sub), sub + m, -np.inf)
            for s_ in range(1, S + 1):
                D = s_ * dth
                c, sn = math.cos(D), math.sin(D)
                for sh in (s_, -s_):
                    rr = np.roll(sub, sh, axis=1)
                    ps = rr * sn
                    val = np.where(np.isfinite(rr) & (ps <= m), rr * c + np.sqrt(np.maximum(m * m - ps * ps, 0.0)),
                                   -np.inf)
                    np.maximum(acc, val, out=acc)
        out[k0:k1] = acc
        if zdil:
            base = out.copy()
            nb = int(math.floor(m / self.sp[0]))
            for dz in range(1, nb + 1):
                shrink = m - math.sqrt(max(m * m - (dz * self.sp[0]) ** 2, 0.0))
                np.maximum(out[dz:], base[:-dz] - shrink, out=out[dz:])
                np.maximum(out[:-dz], base[dz:] - shrink, out=out[:-dz])
        return out

    def _brain_source(self) -> Optional[tuple[np.ndarray, tuple[int, int, int]]]:
        """Brain (+ brainstem, + top of the canal) mask crop for the skull, or a synthetic brain when the Brain
        mask is absent but the grid reaches the head."""
        O = self.orgs
        parts = [O[n] for n in ("Brain", "Brainstem") if n in O]
        if "Brain" not in O:
            z_top = (self.nz - 1) * self.sp[0]
            if z_top < self.z_fm + 12:
                return None if not parts else self._union_crop(parts)
            syn = self._synthetic_brain()
            if syn is None:
                return None if not parts else self._union_crop(parts)
            return self._union_crop(parts, extra=[syn])
        return self._union_crop(parts)

    def _union_crop(self, orgs: list[_Org], extra: Optional[list[tuple[np.ndarray, tuple[int, int, int]]]] = None
                    ) -> tuple[np.ndarray, tuple[int, int, int]]:
        items = [(o.raw, o.off) for o in orgs] + list(extra or [])
        lo = np.min([off for _, off in items], axis=0)
        hi = np.max([np.asarray(off) + np.asarray(c.shape) for c, off in items], axis=0)
        out = np.zeros(tuple(hi - lo), bool)
        for c, off in items:
            o = np.asarray(off) - lo
            out[o[0]:o[0] + c.shape[0], o[1]:o[1] + c.shape[1], o[2]:o[2] + c.shape[2]] |= c
        return out, tuple(int(v) for v in lo)  # type: ignore[return-value]

    def _synthetic_brain(self) -> Optional[tuple[np.ndarray, tuple[int, int, int]]]:
        """Cerebrum + cerebellum ellipsoids placed from the foramen magnum (used only without a Brain mask)."""
        sz, sy, sx = self.sp
        fm = self.fm
        parts = [((fm[0], fm[1] + 8.0, self.z_fm + 78.0), (63.0, 82.0, 60.0)),
                 ((fm[0], fm[1] + 38.0, self.z_fm + 28.0), (50.0, 33.0, 21.0))]
        lo = np.array([self.z_fm + 5.0, fm[1] - 76.0, fm[0] - 66.0])
        hi = np.array([self.z_fm + 140.0, fm[1] + 92.0, fm[0] + 66.0])
        k0, k1 = max(int(lo[0] / sz), 0), min(int(hi[0] / sz) + 1, self.nz)
        j0, j1 = max(int(lo[1] / sy), 0), min(int(hi[1] / sy) + 1, self.ny)
        i0, i1 = max(int(lo[2] / sx), 0), min(int(hi[2] / sx) + 1, self.nx)
        if k1 <= k0 or j1 <= j0 or i1 <= i0:
            return None
        Z = (np.arange(k0, k1) * sz)[:, None, None]
        Y = (np.arange(j0, j1) * sy)[None, :, None]
        X = (np.arange(i0, i1) * sx)[None, None, :]
        m = np.zeros((k1 - k0, j1 - j0, i1 - i0), bool)
        for c, r in parts:
            m |= ((X - c[0]) / r[0]) ** 2 + ((Y - c[1]) / r[1]) ** 2 + ((Z - c[2]) / r[2]) ** 2 < 1
        m &= ~((Z < self.z_fm + 45.0) & (Y < fm[1] - 10.0) & (np.abs(X - fm[0]) < 30.0))
        return m, (k0, j0, i0)

    def outline(self) -> None:
        P, z = self.P, self.zmm
        sz = self.sp[0]
        NT = _NTH
        th = -np.pi + (np.arange(NT) + 0.5) * 2 * np.pi / NT
        self.th = th
        reg = _ramp(z, [(self.z_lung - 20, 1.2), (self.z_lung + 10, 1.0), (self.z_fm - 15, 1.0), (self.z_fm + 5, 0.6),
                        (self.z_orbit + 5, 0.5), (self.z_orbit + 25, 0.25)])
        angf = 1.0 + 0.3 * np.maximum(np.sin(th), 0) + 0.1 * np.maximum(-np.sin(th), 0)
        tf = P.fat_mm * reg[:, None] * angf[None, :]
        tf = tf * (1.0 + 0.2 * _unit_noise((self.nz, NT), (12.0 / sz, 6.0), self.rng))
        self.tfat = np.maximum(tf, 1.0)
        R = np.full((self.nz, NT), -np.inf)
        Rmin = np.full((self.nz, NT), -np.inf)
        for name, T in self.T.items():
            if T["out"] is None:
                continue
            ks = slice(T["k0"], T["k1"])
            r = _ray_ellipse(self.xcen[ks], self.ycen[ks], th, T["cx"][ks], T["cy"][ks], T["a"][ks], T["b"][ks],
                             T["ang"][ks])
            R[ks] = np.maximum(R[ks], r + T["out"] * self.tfat[ks])
            Rmin[ks] = np.maximum(Rmin[ks], r + 1.0)
        marg = {"Parotid": P.parotid_margin_mm, "Submandibular": 0.8 * P.fat_mm + 5.0,
                "Mandible": 0.45 * P.fat_mm + 7.0, "Orbit": 5.5, "Lens": 4.0, "Lacrimal": 6.0,
                "Lung": P.chest_wall_mm + 1.1 * P.fat_mm, "Spinal-Canal": 20.0, "Spinal-Cord": 20.0,
                "Brainstem": 20.0, "Cochlea": 20.0, "Optic-Nerve": 12.0}
        for name, o in self.orgs.items():
            if name == "Brain":
                continue
            base = name[:-3] if name.endswith(("-Lt", "-Rt")) else name
            m = marg.get(base, 10.0)
            kk, yy, xx = o.points(step=2 if o.count > 20000 else 1)
            r0 = self._polar_organ(kk, yy, xx)
            R = np.maximum(R, self._spread(r0, m))
            Rmin = np.maximum(Rmin, self._spread(r0, 3.0, zdil=False))
        self.brain_src = self._brain_source()
        if self.brain_src is not None:
            crop, off = self.brain_src
            k, j, i = np.nonzero(crop[:, ::2, ::2])
            r0 = self._polar_organ(k + off[0], (j * 2 + off[1]) * self.sp[1], (i * 2 + off[2]) * self.sp[2])
            mh = P.csf_gap_mm + P.skull_mm + P.scalp_mm + 1.0
            R = np.maximum(R, self._spread(r0, mh))
        r = np.where(np.isfinite(R), R, 0.0)
        r = ndi.maximum_filter1d(r, 9, axis=1, mode="wrap")
        r = ndi.minimum_filter1d(r, 9, axis=1, mode="wrap")
        r = ndi.gaussian_filter1d(r, 2.0, axis=1, mode="wrap")
        r = ndi.gaussian_filter1d(r, 3.0 / sz, axis=0, mode="nearest")
        r = np.maximum(r, np.where(np.isfinite(Rmin), Rmin, 0.0))
        # nose (after smoothing: it is a sharp feature)
        zp, zo = self.z_palate, self.z_orbit
        if zo - zp > 20:
            ns = float(self.rng.uniform(0.85, 1.15))
            Pn = _ramp(z, [(zp + 1, 9.0), (zp + 7, 15.0), (zp + 12, 17.0), (zo - 22, 11.0), (zo - 5, 5.0)]) * ns
            Wn = _ramp(z, [(zp + 1, 15.0), (zp + 5, 17.5), (zp + 14, 13.0), (zo - 18, 10.0), (zo - 5, 8.5)])
            k0, k1 = self.kr(zp + 1, zo - 5)
            ks = slice(k0, k1)
            cyn = self.y_face + 6.0 - Pn / 2
            rn = _ray_ellipse(self.xcen[ks], self.ycen[ks], th, self.xm[ks], cyn[ks] + 3.0, Wn[ks], Pn[ks] / 2 + 9.0,
                              np.zeros(k1 - k0))
            r[ks] = np.maximum(r[ks], np.where(np.isfinite(rn), rn, 0.0))
            self.nose = (k0, k1, Pn, Wn)
        else:
            self.nose = None
        self.rbody = r.astype(np.float32)
        self.rfat = np.maximum(r - self.tfat, 0.0).astype(np.float32)

    def crop_box(self) -> tuple[int, int, int, int]:
        """In-plane work crop (j0, j1, i0, i1) around the body (+ couch) with a margin for the PSF."""
        has = self.rbody.max(axis=1) > 0
        if not has.any():
            raise InputError("The synthetic body is empty: the masks hold no usable anatomy.")
        c, s = np.cos(self.th)[None, :], np.sin(self.th)[None, :]
        xs = self.xcen[has, None] + self.rbody[has] * c
        ys = self.ycen[has, None] + self.rbody[has] * s
        m = 8.0
        y_hi = ys.max() + m + (45.0 if self.P.couch else 0.0)
        j0 = max(int((ys.min() - m) / self.sp[1]), 0)
        j1 = min(int(y_hi / self.sp[1]) + 1, self.ny)
        i0 = max(int((xs.min() - m) / self.sp[2]), 0)
        i1 = min(int((xs.max() + m) / self.sp[2]) + 1, self.nx)
        return j0, j1, i0, i1

    # ------------------------------------------------------------------ canvas + body
    def make_canvas(self) -> None:
        """Allocate the work crop, rasterise the polar outline (depth under the skin) chunk-wise in per-chunk
        boxes at half in-plane resolution (the depth is smooth: linear upsampling is exact to ~0.1 mm), and
        build the periodic texture tiles."""
        j0, j1, i0, i1 = self.crop_box()
        self.cv = _Canvas(self.nz, j0, j1, i0, i1, self.sp, self.P.hu_air)
        cv = self.cv
        shape = cv.hu.shape
        self.depth = np.full(shape, -1000.0, np.float32)
        self.dfat = np.full(shape, -1000.0, np.float32)
        c, s_ = np.cos(self.th)[None, :], np.sin(self.th)[None, :]
        xs = self.xcen[:, None] + self.rbody * c
        ys = self.ycen[:, None] + self.rbody * s_
        has = self.rbody.max(axis=1) > 0
        m = 10.0
        ear = np.where((self.zmm > self.coch["Lt"][2] - 40) & (self.zmm < self.coch["Lt"][2] + 30), 30.0, 0.0)
        self.chunks: list[tuple[int, int, int, int, int, int]] = []
        CH = 12
        for k0 in range(0, self.nz, CH):
            k1 = min(k0 + CH, self.nz)
            hk = has[k0:k1]
            if not hk.any():
                continue
            e = ear[k0:k1].max()
            ylo, yhi = ys[k0:k1][hk].min() - m, ys[k0:k1][hk].max() + m
            xlo, xhi = xs[k0:k1][hk].min() - m - e, xs[k0:k1][hk].max() + m + e
            bj0 = int(np.clip(math.floor(ylo / self.sp[1]) - cv.y0, 0, shape[1]))
            bj1 = int(np.clip(math.ceil(yhi / self.sp[1]) + 1 - cv.y0, 0, shape[1]))
            bi0 = int(np.clip(math.floor(xlo / self.sp[2]) - cv.x0, 0, shape[2]))
            bi1 = int(np.clip(math.ceil(xhi / self.sp[2]) + 1 - cv.x0, 0, shape[2]))
            if bj1 <= bj0 or bi1 <= bi0:
                continue
            self.chunks.append((k0, k1, bj0, bj1, bi0, bi1))
            nyb, nxb = bj1 - bj0, bi1 - bi0
            cy_n, cx_n = nyb // 2 + 1, nxb // 2 + 1
            Y = ((cv.y0 + bj0 + 2 * np.arange(cy_n)) * self.sp[1]).astype(np.float32)[None, :, None]
            X = ((cv.x0 + bi0 + 2 * np.arange(cx_n)) * self.sp[2]).astype(np.float32)[None, None, :]
            ks = np.arange(k0, k1)
            dx = X - self.xcen[ks, None, None].astype(np.float32)
            dy = Y - self.ycen[ks, None, None].astype(np.float32)
            rho = np.sqrt(dx * dx + dy * dy)
            f = (np.arctan2(dy, dx) + np.float32(np.pi)) * np.float32(_NTH / (2 * np.pi)) - np.float32(0.5)
            fi = np.floor(f)
            w = f - fi
            ia = fi.astype(np.int64) % _NTH
            ib = (ia + 1) % _NTH
            base = (ks * _NTH)[:, None, None]
            rb = self.rbody.ravel()
            rf = self.rfat.ravel()
            d_c = rb[base + ia] * (1 - w) + rb[base + ib] * w - rho
            f_c = rf[base + ia] * (1 - w) + rf[base + ib] * w - rho
            self.depth[k0:k1, bj0:bj1, bi0:bi1] = _up2(d_c, nyb, nxb)
            self.dfat[k0:k1, bj0:bj1, bi0:bi1] = _up2(f_c, nyb, nxb)
        # periodic texture tiles (fine ~0.7 mm, coarse ~2.5 mm correlation), indexed modulo their size
        sz, sy, sx = self.sp
        tshape = (64, 192, 192)
        self.tile_f = np.tile(_unit_noise(tshape, (0.35, 0.7 / sy, 0.7 / sx), self.rng), (2, 2, 2))
        self.tile_c = np.tile(_unit_noise(tshape, (2.5 / sz, 2.5 / sy, 2.5 / sx), self.rng), (2, 2, 2))
        self.tile_l = np.tile(_unit_noise(tshape, (4.0 / sz, 5.0 / sy, 5.0 / sx), self.rng), (2, 2, 2))
        self.tshape = tshape

    def tx(self, sl: tuple[slice, ...], coarse: Any = False) -> np.ndarray:
        """Texture (unit s.d.) over a canvas box, from the periodic tiles (coarse: False = ~0.7 mm, True =
        ~2.5 mm, "low" = ~5 mm correlation)."""
        t = self.tile_l if coarse == "low" else (self.tile_c if coarse else self.tile_f)
        T = self.tshape
        starts = (sl[0].start % T[0], (sl[1].start + self.cv.y0) % T[1], (sl[2].start + self.cv.x0) % T[2])
        sizes = tuple(q.stop - q.start for q in sl)
        if all(n <= m for n, m in zip(sizes, T)):
            return t[tuple(slice(a, a + n) for a, n in zip(starts, sizes))]  # a view of the doubled tile
        idx = [(a + np.arange(n)) % m for a, n, m in zip(starts, sizes, T)]
        return t[np.ix_(*idx)]

    def paint_body(self) -> None:
        P, cv = self.P, self.cv
        for k0, k1, j0, j1, i0, i1 in self.chunks:
            sl = (slice(k0, k1), slice(j0, j1), slice(i0, i1))
            dep, dft = self.depth[sl], self.dfat[sl]
            tc = self.tx(sl, True)
            inside = np.clip(0.5 + dep / cv.soft, 0.0, 1.0)
            a_sub = np.clip(0.5 - dft / cv.soft, 0.0, 1.0)
            a_skin = np.clip(0.5 - (dep - 1.6 - 0.5 * (tc > 0)) / cv.soft, 0.0, 1.0)
            deep = (P.hu_fat + P.deep_fat_offset) + 6.0 * tc
            v = deep + a_sub * (P.hu_fat - P.deep_fat_offset - 2.0 * tc - deep + P.deep_fat_offset)
            v += a_skin * (P.hu_skin + 6.0 * self.tx(sl) - v)
            h = cv.hu[sl]
            h += inside * (v - h)


    # ------------------------------------------------------------------ tissue values and painting helpers
    def muscle(self, sl: tuple[slice, ...], extra_fat: float = 0.0) -> np.ndarray:
        """Muscle HU with fine texture and fatty marbling; the marbling is mean-compensated so that the
        regional mean stays ``hu_muscle`` (E[max(N - 0.8, 0)] = 0.12 for a unit normal N)."""
        P = self.P
        mf = min(P.muscle_fat + extra_fat, 0.8)
        return (P.hu_muscle + 4.0 * self.tx(sl)
                - mf * 60.0 * np.clip(self.tx(sl, True) - 0.8, 0.0, None) + mf * 7.2)

    def under_fat(self, sl: tuple[slice, ...]) -> np.ndarray:
        """1 below the subcutaneous fat layer, 0 inside it (muscles never reach the skin)."""
        return np.clip(0.5 + (self.dfat[sl] - 0.6) / self.cv.soft, 0.0, 1.0)

    def paint_T(self, name: str, value: Any, clip: bool = True, grow: float = 0.0, wobble: float = 1.5):
        """Paint a registered tube; ``wobble`` (mm) perturbs its surface with the ~5 mm texture so that muscles
        are not perfect ellipses."""
        T = self.T.get(name)
        if T is None:
            return None
        for sl, sd in self.cv.tubes(T["k0"], T["k1"], T["cx"], T["cy"], T["a"] + grow, T["b"] + grow, T["ang"]):
            if wobble:
                sd = sd + wobble * self.tx(sl, "low")
            a = self.cv.alpha(sd)
            if clip:
                a *= self.under_fat(sl)
            self.cv.blend(sl, a, value(sl) if callable(value) else value)

    def paint_sd(self, r: Any, value: Any, clip: bool = False, offset: Any = 0.0, weight: Any = 1.0):
        """Paint ``value`` where a signed distance (from a shape primitive) is < offset."""
        if r is None:
            return None
        if isinstance(r, list):
            for piece in r:
                self.paint_sd(piece, value, clip, offset, weight)
            return None
        sl, sd = r[0], r[1]
        a = self.cv.alpha(sd, offset)
        if clip:
            a *= self.under_fat(sl)
        if not np.isscalar(weight) or weight != 1.0:
            a = a * weight
        self.cv.blend(sl, a, value(sl) if callable(value) else value)
        return sl, a

    def bone(self, r: Any, cortex_mm: float = 1.2, hu_c: Optional[float] = None, hu_m: Optional[float] = None,
             weight: Any = 1.0) -> None:
        """Bone from a signed distance: cortical shell of ``cortex_mm`` around a textured cancellous core."""
        if r is None:
            return
        if isinstance(r, list):
            for piece in r:
                self.bone(piece, cortex_mm, hu_c, hu_m, weight)
            return
        P, cv = self.P, self.cv
        sl, sd = r[0], r[1]
        hc_ = P.hu_cortical if hu_c is None else hu_c
        hm = P.hu_cancellous if hu_m is None else hu_m
        a_out = cv.alpha(sd)
        if not np.isscalar(weight) or weight != 1.0:
            a_out = a_out * weight
        if not a_out.any():
            return
        cv.blend(sl, a_out, hc_ * (1.0 + 0.06 * self.tx(sl, True)))
        a_in = cv.alpha(sd, -cortex_mm)
        if not np.isscalar(weight) or weight != 1.0:
            a_in = a_in * weight
        cv.blend(sl, a_in, hm * (1.0 + 0.35 * self.tx(sl) + 0.15 * self.tx(sl, True)))

    # ------------------------------------------------------------------ muscles
    def paint_muscles(self) -> None:
        P, cv, z = self.P, self.cv, self.zmm
        T = self.T.get("pm")
        if T is not None:
            for r in cv.tubes(T["k0"], T["k1"], T["cx"], T["cy"], T["a"], T["b"], T["ang"], local=True):
                sl, sd, u, v, aa, bb = r
                a = cv.alpha(sd) * self.under_fat(sl)
                q = np.sqrt((u / aa) ** 2 + (v / bb) ** 2)
                tc = self.tx(sl, True)
                val = self.muscle(sl)
                planes = np.zeros_like(q)
                for qi, w, amp in ((0.55, 0.9, 0.6), (0.8, 1.2, 1.0)):
                    d = np.abs(q - qi - 0.015 * tc) * bb
                    planes = np.maximum(planes, amp * np.clip(1.0 - d / w, 0.0, 1.0))
                planes *= (v > -0.15 * bb)
                planes = np.maximum(planes, np.clip(1.0 - np.abs(u) / 1.2, 0.0, 1.0) * (v > 0.1 * bb))
                val += planes * (P.hu_fat + P.deep_fat_offset - val)
                cv.blend(sl, a, val)
        for side in ("Lt", "Rt"):
            for nm, extra in (("lev_", 0.0), ("scal_", 0.05), ("lc_", 0.0), ("scm_", 0.0), ("mass_", 0.0),
                              ("mpt_", 0.0), ("lpt_", 0.05)):
                self.paint_T(nm + side, lambda sl, e=extra: self.muscle(sl, e))
        self.paint_T("floor", lambda sl: self.muscle(sl, 0.3))
        # posterior belly of the digastric: mastoid notch -> hyoid, medial to the parotid tail
        kh = int(np.clip(round(self.z_hyoid / self.sp[0]), 0, self.nz - 1))
        for side, sg in (("Lt", 1.0), ("Rt", -1.0)):
            m = self.mastoid[side]
            p0 = m + np.array([-sg * 8.0, -3.0, -10.0])
            p1 = np.array([self.xm[kh] + sg * 16.0, self.y_hyoid + 14.0, self.z_hyoid + 4.0])
            r = cv.segment(p0, p1, 4.2 * P.muscle_scale, 3.2 * P.muscle_scale)
            if r is not None:
                sl, sd = r
                cv.blend(sl, cv.alpha(sd + 0.8 * self.tx(sl, "low")) * self.under_fat(sl), self.muscle(sl))
        self.paint_T("lips", lambda sl: self.muscle(sl, 0.1), clip=False)
        # tongue: intrinsic muscle with fatty septa and the midline lingual septum
        zt0, zt1 = self.z_mand_lo + 8.0, self.z_palate - 1.5
        if zt1 - zt0 > 8:
            kz = int(np.clip(round(0.5 * (zt0 + zt1) / self.sp[0]), 0, self.nz - 1))
            y_front = self.y_chin + 9.0
            y_back = float(self.aw_y[kz] - self.aw_b[kz]) - 1.0
            if y_back - y_front > 20:
                c = (self.xm[kz], 0.5 * (y_front + y_back), 0.5 * (zt0 + zt1))
                r = cv.ellipsoid(c, (27.0, 0.5 * (y_back - y_front) + 2.0, 0.5 * (zt1 - zt0)))
                if r is not None:
                    sl, sd = r
                    X = cv.xs[None, None, sl[2]]
                    sept = np.clip(1.0 - np.abs(X - c[0]) / 1.0, 0.0, 1.0)
                    val = self.muscle(sl, 0.15)
                    val += 0.6 * sept * (P.hu_fat + 30.0 - val)
                    cv.blend(sl, cv.alpha(sd), val)
        # platysma: a thin sheet just deep to the subcutaneous fat of the anterolateral neck
        k0, k1 = self.kr(self.z_clav, self.z_mand_lo + 8)
        for c0, c1, j0, j1, i0, i1 in self.chunks:
            kk0, kk1 = max(c0, k0), min(c1, k1)
            if kk1 <= kk0:
                continue
            sl = (slice(kk0, kk1), slice(j0, j1), slice(i0, i1))
            d = self.dfat[sl]
            band = np.clip(1.0 - np.abs(d - 0.9) / 0.8, 0.0, 1.0)
            Y = cv.ys[None, j0:j1, None]
            ant = (Y < (self.yc[kk0:kk1] - 10.0)[:, None, None]).astype(np.float32)
            cv.blend(sl, 0.7 * band * ant, P.hu_muscle)

    # ------------------------------------------------------------------ pharynx, larynx, trachea, thyroid
    def paint_aerodigestive(self) -> None:
        P, cv, z, s = self.P, self.cv, self.zmm, self.s
        sl_ = 0.85 + 0.15 * P.airway_scale
        zc, zg, zh = self.z_cricoid, self.z_glottis, self.z_hyoid
        w_tr = _ramp(z, [(zc - 8, 1.0), (zc, 0.0)])
        ay = (1 - w_tr) * self.aw_y + w_tr * self.y_tr
        ax = self.xm
        k0, k1 = self.kr(-1e9, self.aw_top)
        k_lo_aw = self.kr(self.z_lung - 75.0, 0)[0]
        k0 = max(k0, k_lo_aw)
        # oesophagus / hypopharynx behind the trachea and larynx
        ke0, ke1 = self.kr(self.z_lung - 75.0, zc + 3)
        r = cv.tubes(ke0, ke1, self.xm + 3.0, self.yfront - 5.5, 8.5, 5.0)
        self.paint_sd(r, lambda sl: self.muscle(sl))
        # laryngeal soft tissue (inside the thyroid cartilage), pre-epiglottic / paraglottic fat
        self.paint_T("larynx", lambda sl: P.hu_mucosa + 4.0 * self.tx(sl), clip=True, grow=-1.5)
        kf0, kf1 = self.kr(zg + 4, zh + 2)
        lxf = self.lx_post - 38.0 * sl_
        r = cv.tube(kf0, kf1, self.xm, lxf + 13.0 * sl_, 12.0 * sl_, 9.0 * sl_)
        self.paint_sd(r, P.hu_fat + P.deep_fat_offset + 10.0)
        # pharyngeal wall then lumen
        grow = 3.0
        r = cv.tubes(k0, k1, ax, ay, self.aw_a + grow, self.aw_b + grow)
        self.paint_sd(r, P.hu_mucosa)
        coll = np.clip(1.0 + 0.25 * _smooth1d(self.rng.standard_normal(self.nz), 6.0 / self.sp[0]) * 2.0, 0.45, 1.25)
        coll = np.where(z < zc, 1.0, coll)
        r = cv.tubes(k0, k1, ax, ay, self.aw_a * coll, self.aw_b * coll)
        self.paint_sd(r, lambda sl: P.hu_air + 3.0 * self.tx(sl))
        # soft palate and uvula (in front of the airway below the hard palate), palatine tonsils
        zp = self.z_palate
        kq0, kq1 = self.kr(zp - 12, zp + 0.5)
        self.paint_sd(cv.tube(kq0, kq1, ax, ay - 0.55 * self.aw_b, 14.0 * sl_, 4.5), P.hu_mucosa)
        kq0, kq1 = self.kr(zp - 24, zp - 11)
        self.paint_sd(cv.tube(kq0, kq1, ax, ay - 0.35 * self.aw_b, 4.0, 4.0), P.hu_mucosa)
        kt = int(np.clip(round((zp - 20) / self.sp[0]), 0, self.nz - 1))
        for sg in (1.0, -1.0):
            self.paint_sd(cv.ellipsoid((ax[kt] + sg * (self.aw_a[kt] + 1.0), ay[kt], zp - 20.0),
                                       (5.0, 7.0, 9.0) * np.array([1.0, 1.0, 1.0]) * float(self.rng.uniform(0.6, 1.2))),
                          lambda sl: P.hu_mucosa - 5.0 + 4.0 * self.tx(sl))
        # piriform sinuses
        kp0, kp1 = self.kr(zg + 2, zh - 3)
        for sg in (1.0, -1.0):
            cf = 0.4 + 0.6 * self.rng.random()
            r = cv.tube(kp0, kp1, self.xm + sg * 12.0 * sl_, self.lx_post - 8.0, 3.2 * cf * P.airway_scale ** 0.5,
                        6.0 * cf)
            self.paint_sd(r, P.hu_air)
        # epiglottis: a curved leaf at the front of the airway, vallecula in front of it
        ke0, ke1 = self.kr(zh - 2, zh + 15)
        r = cv.tube(ke0, ke1, ax, ay - 0.2 * self.aw_b, 10.0 * sl_, 0.9 * self.aw_b + 1.0, local=True)
        if r is not None:
            sl, sd, u, v, aa, bb = r
            leaf = np.clip(1.0 - np.abs(sd + 1.0) / 1.3, 0.0, 1.0) * (v < 0.2 * bb)
            cv.blend(sl, leaf, P.hu_mucosa)
        # thyroid cartilage laminae, cricoid ring, arytenoids
        cart = lambda sl: self._cartilage(sl)  # noqa: E731
        kt0, kt1 = self.kr(zg - 8, zh - 3)
        for sg in (1.0, -1.0):
            r = cv.vplate(kt0, kt1, self.xm, lxf + 1.0, self.xm + sg * 19.0 * sl_, lxf + 22.0 * sl_, 1.3)
            self.paint_sd(r, cart)
        kc0, kc1 = self.kr(zc - 3, zg + 4)
        rr = cv.tube(kc0, kc1, ax, ay, self.aw_a * 0 + 8.5 * sl_ + 2.8, self.aw_b * 0 + 8.0 * sl_ + 2.8, local=True)
        if rr is not None:
            sl, sd, u, v, aa, bb = rr
            Z = cv.zs[sl[0]][:, None, None]
            ring = np.clip(0.5 - sd / cv.soft, 0, 1) * np.clip(0.5 + (sd + 2.6) / cv.soft, 0, 1)
            ring *= ((Z < zc + 6.0) | (v > 0.3 * bb)).astype(np.float32)
            cv.blend(sl, ring, cart(sl))
        ka0, ka1 = self.kr(zg - 2, zg + 6)
        for sg in (1.0, -1.0):
            r = cv.tube(ka0, ka1, self.xm + sg * 5.0, self.lx_post - 4.0, 2.6, 3.2)
            self.paint_sd(r, cart)
        # trachea: cartilage horseshoe, lumen already painted as airway
        kt0, kt1 = self.kr(self.z_lung - 75.0, zc - 2)
        for rr in cv.tubes(kt0, kt1, ax, self.y_tr, self.r_tr + 1.8, self.r_tr + 1.6, local=True):
            sl, sd, u, v, aa, bb = rr
            ring = np.clip(0.5 - sd / cv.soft, 0, 1) * np.clip(0.5 + (sd + 1.6) / cv.soft, 0, 1) * (v < 0.55 * bb)
            Z = cv.zs[sl[0]][:, None, None]
            ring *= 0.6 + 0.4 * (np.cos(2 * np.pi * Z / 4.0) > 0)
            cv.blend(sl, ring, cart(sl))
        # hyoid bone
        yh = self.y_hyoid
        kh = int(np.clip(round(zh / self.sp[0]), 0, self.nz - 1))
        xh = self.xm[kh]
        self.bone(cv.segment((xh - 9, yh, zh), (xh + 9, yh, zh), 3.6, 3.6), cortex_mm=1.0)
        for sg in (1.0, -1.0):
            self.bone(cv.segment((xh + sg * 9, yh + 1, zh), (xh + sg * 21, yh + 21 * s, zh + 4), 2.6, 1.8),
                      cortex_mm=0.9)
        # thyroid gland (iodine-rich: brighter than muscle) and strap muscles
        zt = zc - 16.0 * s
        for sg in (1.0, -1.0):
            kk = int(np.clip(round(zt / self.sp[0]), 0, self.nz - 1))
            c = (self.xm[kk] + sg * (self.r_tr + 8.0), self.y_tr[kk] + 2.0, zt)
            r = cv.ellipsoid(c, (6.5, 9.0, 21.0 * s))
            self.paint_sd(r, lambda sl: P.hu_thyroid + 6.0 * self.tx(sl))
        ki0, ki1 = self.kr(zt - 10, zt + 2)
        r = cv.tube(ki0, ki1, self.xm, self.y_tr - self.r_tr - 3.5, 13.0, 3.0)
        self.paint_sd(r, lambda sl: P.hu_thyroid + 6.0 * self.tx(sl))
        ks0, ks1 = self.kr(self.z_lung - 20, zh - 2)
        front = np.minimum(self.y_tr - self.r_tr - 7.0, np.where(z > zc - 4, lxf - 2.0, np.inf))
        for sg in (1.0, -1.0):
            r = cv.vplate(ks0, ks1, self.xm + sg * 3.0, front, self.xm + sg * 21.0, front + 7.0, 2.2)
            self.paint_sd(r, lambda sl: self.muscle(sl), clip=True)

    def _cartilage(self, sl: tuple[slice, ...]) -> np.ndarray:
        """Laryngeal cartilage: hyaline (~100 HU) with patchy ossification (marrow + thin cortex)."""
        P = self.P
        tc = self.tx(sl, True)
        from scipy.special import ndtri

        thr = float(ndtri(1.0 - P.calcification)) if P.calcification > 0.01 else 9.0
        w = np.clip((tc - thr) / 0.4 + 0.5, 0.0, 1.0)
        return P.hu_cartilage + 5.0 * self.tx(sl) + w * (0.45 * P.hu_cortical - P.hu_cartilage)

    # ------------------------------------------------------------------ vessels and lymph nodes
    def paint_vessels_nodes(self) -> None:
        P, cv, z, s = self.P, self.cv, self.zmm, self.s
        sz = self.sp[0]
        kz = lambda zz: int(np.clip(round(zz / sz), 0, self.nz - 1))  # noqa: E731
        z_bif = self.z_hyoid - 6.0
        self.ijv: dict[str, tuple[np.ndarray, np.ndarray]] = {}
        for side, sg in (("Lt", 1.0), ("Rt", -1.0)):
            vs = float(np.clip(1.0 + 0.25 * self.rng.standard_normal() + (0.1 if side == "Rt" else -0.05), 0.6, 1.5))
            cca_x = self.xc + sg * (self.bw / 2 + 14.0)
            cca_y = self.yfront - 2.0
            kb = kz(z_bif)
            # internal carotid to the carotid canal, internal jugular to the jugular foramen
            tgt_ica = (self.fm[0] + sg * 24.0, self.fm[1] - 18.0)
            tgt_ijv = (self.fm[0] + sg * 29.0, self.fm[1] - 5.0)
            ix, iy = self._path(z, [(z_bif, cca_x[kb], cca_y[kb]), (self.z_fm + 10, *tgt_ica)], 8.0, sz)
            w = _ramp(z, [(z_bif - 4, 0.0), (z_bif + 4, 1.0)])
            cx = (1 - w) * cca_x + w * ix
            cy = (1 - w) * cca_y + w * iy
            k0, k1 = self.kr(self.z_lung - 40, self.z_fm + 10)
            self.paint_sd(cv.tubes(k0, k1, cx, cy, 3.6, 3.6), lambda sl: P.hu_blood + 3.0 * self.tx(sl))
            jx0 = cca_x + sg * 9.5
            jy0 = cca_y + 1.5
            kj = kz(self.z_hyoid + 10)
            jx, jy = self._path(z, [(self.z_hyoid + 10, jx0[kj], jy0[kj]), (self.z_fm + 6, *tgt_ijv)], 8.0, sz)
            w = _ramp(z, [(self.z_hyoid, 0.0), (self.z_hyoid + 10, 1.0)])
            jx = (1 - w) * jx0 + w * jx
            jy = (1 - w) * jy0 + w * jy
            self.ijv[side] = (jx, jy)
            k0, k1 = self.kr(self.z_lung - 40, self.z_fm + 6)
            self.paint_sd(cv.tubes(k0, k1, jx, jy, 6.5 * vs, 4.5 * vs), lambda sl: P.hu_blood + 3.0 * self.tx(sl))
        # lymph nodes (level II below the parotid tail, III, V, IB); intraparotid ones come with the gland
        par = self.pair("Parotid")
        z_par_lo = min((o.krange[0] * sz for o in par), default=self.z_fm - 20.0)
        for i in range(P.n_nodes):
            side, sg = (("Lt", 1.0), ("Rt", -1.0))[int(self.rng.integers(0, 2))]
            lvl = self.rng.choice(["II", "II", "III", "V", "IB"])
            jx, jy = self.ijv[side]
            if lvl == "II":
                zz = z_par_lo - self.rng.uniform(2, 22)
                k = kz(zz)
                c = (jx[k] + sg * 6.0, jy[k] - 6.0, zz)
            elif lvl == "III":
                zz = self.z_hyoid - self.rng.uniform(5, 30)
                k = kz(zz)
                c = (jx[k] + sg * 5.0, jy[k] - 7.0, zz)
            elif lvl == "V":
                zz = self.z_hyoid - self.rng.uniform(-10, 35)
                k = kz(zz)
                c = (self.xm[k] + sg * 48.0, self.yc[k] + 8.0, zz)
            else:
                zz = self.z_mand_lo + self.rng.uniform(-5, 8)
                k = kz(zz)
                c = (self.xm[k] + sg * 30.0, self.y_chin + 30.0, zz)
            d = P.node_mm * self.rng.uniform(0.6, 1.2)
            rad = np.array([d / 2, d / 2 * self.rng.uniform(0.6, 1.0), d / 2 * self.rng.uniform(1.0, 1.6)])
            r = cv.ellipsoid(c, rad)
            self.paint_sd(r, lambda sl: P.hu_lymph + 4.0 * self.tx(sl))
            if self.rng.random() < 0.5 and d > 6:
                self.paint_sd(cv.ellipsoid(c, rad * 0.35), P.hu_fat + 20.0)


    # ------------------------------------------------------------------ spine
    def paint_spine(self) -> None:
        """Vertebrae from the atlas down: bodies (cortex + textured cancellous core, endplates), discs, arches
        (pedicles in the upper half of each body, laminae, articular pillars/facets), transverse processes
        (with foramina in the cervical spine), spinous processes; the atlas ring and the dens. Levels use the
        along-spine coordinate ``z + (dy_canal/dz) (y - y_canal)`` so endplates tilt with the lordosis."""
        P, cv = self.P, self.cv
        k0, k1 = self.spine_lo, self.spine_hi
        if k1 <= k0 or not self.levels:
            return
        ks_all = np.arange(k0, k1)
        xc, yc, wc, hc = self.xc, self.yc, self.wc, self.hc
        ylo = float(np.min(yc[ks_all] - hc[ks_all] - 1.5 - self.bap[ks_all] - 6.0))
        yhi = float(np.max(yc[ks_all] + hc[ks_all] + 42.0))
        bx = cv.box(k0, k1, ylo, yhi, float(np.min(xc[ks_all]) - 48.0), float(np.max(xc[ks_all]) + 48.0))
        if bx is None:
            return
        sl, Z, Y, X = bx
        ks = np.arange(sl[0].start, sl[0].stop)
        e = lambda a: a[ks][:, None, None].astype(np.float32)  # noqa: E731
        u = (X - e(xc)).astype(np.float32)
        v = (Y - e(yc)).astype(np.float32)
        W, H = e(wc), e(hc)
        s_eff = (Z + e(self.gy) * v).astype(np.float32)
        # level look-up table along the spine axis
        step = 0.25
        s_lo = float(s_eff.min()) - 1.0
        s_hi = float(max(s_eff.max(), self.z_fm)) + 1.0
        grid = s_lo + step * np.arange(int((s_hi - s_lo) / step) + 2)
        lev_id = np.full(grid.size, -1, np.int32)
        frac = np.zeros(grid.size, np.float32)
        disc = np.zeros(grid.size, bool)
        endp = np.full(grid.size, 99.0, np.float32)
        for i, L in enumerate(self.levels):
            m = (grid <= L["top"]) & (grid > L["bot"])
            lev_id[m] = i
            frac[m] = (L["top"] - grid[m]) / max(L["top"] - L["bot"], 1e-3)
            if i >= 1:
                endp[m] = np.minimum(grid[m] - L["bot"], L["top"] - grid[m])
            md = (grid <= L["bot"]) & (grid > L["bot"] - L["disc_below"])
            lev_id[md] = i
            frac[md] = 1.0
            disc[md] = i >= 1
        idx = np.clip(((s_eff - s_lo) / step).astype(np.int64), 0, grid.size - 1)
        lid = lev_id[idx]
        fr = frac[idx]
        dsc = disc[idx]
        ep = endp[idx]
        kind = np.array([{"C1": 0, "C2": 1, "C": 2, "T": 3, "L": 4}[L["kind"]] for L in self.levels] + [9])
        BW = np.array([L["bw"] for L in self.levels] + [20.0], np.float32)
        BAP = np.array([L["bap"] for L in self.levels] + [16.0], np.float32)
        LS = np.array([L["ls"] for L in self.levels] + [0.0], np.float32)
        kd = kind[lid]
        valid = lid >= 0
        bw, bap, ls = BW[lid], BAP[lid], LS[lid]
        vb = -(H + 1.5 + bap / 2)
        big = np.float32(99.0)
        sd_body = np.where(valid & (kd >= 1), _ell_sd(u, v - vb, bw / 2, bap / 2), big)
        # discs
        a_disc = cv.alpha(np.where(dsc, sd_body, big))
        cv.blend(sl, a_disc, P.hu_disc + 6.0 * self.tx(sl))
        sd_bone = np.where(dsc, big, sd_body)
        # posterior arch (ring around the canal): full ring in the pedicle phase, laminae otherwise
        tl = np.where(kd >= 3, 5.0, 3.6).astype(np.float32)
        ring = np.maximum(_ell_sd(u, v, W + 0.8 + tl, H + 0.8 + tl), -_ell_sd(u, v, W + 0.8, H + 0.8))
        ped = (fr < 0.55) & ~dsc
        ring = np.maximum(ring, np.where(ped, -(v + H + 1.0), 0.25 * H - v))
        ring = np.where(valid & (kd >= 1), ring, big)
        sd_bone = np.minimum(sd_bone, ring)
        au = np.abs(u)
        # articular pillars (cervical) / facets (thoracic, lumbar)
        pil_c = _ell_sd(au - (W + 4.5), v - 1.5, 5.5, 7.5)
        pil_t = _ell_sd(au - (W + 2.5), v - (0.5 * H + 3.0), 4.0, 5.5)
        sd_bone = np.minimum(sd_bone, np.where(valid & ((kd == 1) | (kd == 2)), pil_c,
                                               np.where(valid & (kd >= 3), pil_t, big)))
        # transverse processes
        tp_c = np.maximum(_ell_sd(au - (W + 9.0), v - (vb + 0.15 * bap), 7.0, 4.2),
                          -_ell_sd(au - (W + 6.5), v - (vb + 0.2 * bap), 2.6, 2.6))
        tp_c = np.where((fr > 0.15) & (fr < 0.85) & ~dsc, tp_c, big)
        ca, sa = math.cos(0.45), math.sin(0.45)
        uu, vv = au - (W + 13.0), v - (0.6 * H + 3.0)
        tp_t = np.where((fr > 0.05) & (fr < 0.6) & ~dsc, _ell_sd(uu * ca + vv * sa, -uu * sa + vv * ca, 10.0, 4.5), big)
        tp_l = np.where((fr > 0.3) & (fr < 0.7) & ~dsc, _ell_sd(au - (W + 24.0), v + 2.0, 17.0, 4.5), big)
        sd_bone = np.minimum(sd_bone, np.where(valid & ((kd == 1) | (kd == 2)), tp_c,
                                               np.where(kd == 3, tp_t, np.where(kd == 4, tp_l, big))))
        # spinous processes
        ws = np.where(kd >= 3, 3.5, 2.6).astype(np.float32)
        sp_sd = _ell_sd(u, v - (H + 0.8 + 0.5 * tl + ls / 2), ws, np.maximum(ls / 2, 0.5))
        sp_ok = valid & (kd >= 1) & ((kd >= 3) | (fr > 0.2))
        sd_bone = np.minimum(sd_bone, np.where(sp_ok, sp_sd, big))
        # atlas (C1): anterior arch, lateral masses, posterior arch, long transverse processes; dens of C2
        vd = -(H + 1.5 + 5.5)
        c1 = np.minimum(_ell_sd(u, v - (vd - 10.0), 9.0, 3.5), _ell_sd(au - (W - 0.5), v + 0.35 * H, 6.5, 9.5))
        c1 = np.minimum(c1, np.maximum(np.maximum(_ell_sd(u, v, W + 5.3, H + 5.3), -_ell_sd(u, v, W + 0.8, H + 0.8)),
                                       0.2 * H - v))
        c1 = np.minimum(c1, _ell_sd(au - (W + 15.0), v + 0.5 * H, 8.5, 5.0))
        sd_bone = np.minimum(sd_bone, np.where(valid & (kd == 0), c1, big))
        c2top = self.levels[1]["top"] if len(self.levels) > 1 else self.z_fm - 15.0
        dens = (s_eff > c2top - 1.0) & (s_eff < self.z_fm - 5.0)
        sd_bone = np.minimum(sd_bone, np.where(dens, _ell_sd(u, v - vd, 5.3, 5.3), big))
        # composition: cortex, textured cancellous core, dense endplates
        cort = np.where(kd >= 3, 1.3, 1.0).astype(np.float32)
        a_out = cv.alpha(sd_bone)
        tf = self.tx(sl)
        cv.blend(sl, a_out, P.hu_cortical * (1.0 + 0.05 * tf))
        a_in = cv.alpha(sd_bone, -cort) * np.clip((ep - 0.4) / 1.0, 0.0, 1.0)
        cv.blend(sl, a_in, P.hu_cancellous * (1.0 + 0.35 * tf + 0.15 * self.tx(sl, True)))
        self.spine_box = sl


    # ------------------------------------------------------------------ skull base, ear, face bones
    def paint_skull_base(self) -> None:
        P, cv = self.P, self.cv
        fm, zf = self.fm, self.z_fm
        if (self.nz - 1) * self.sp[0] < zf - 5:
            return
        kf = int(np.clip(round(zf / self.sp[0]), 0, self.nz - 1))
        wct, hct = float(self.wc[kf]), float(self.hc[kf])
        dip = 0.45 * P.hu_cortical + 0.3 * P.hu_cancellous
        # clivus (basion -> dorsum sellae), sphenoid body with its sinus
        for dx in (-6.0, 6.0):
            self.bone(cv.segment((fm[0] + dx, fm[1] - hct - 4.0, zf + 1.0), (fm[0] + dx, fm[1] - 24.0, zf + 36.0),
                                 6.0, 6.5), cortex_mm=1.5, hu_m=dip)
        sph = (fm[0], fm[1] - 40.0, zf + 33.0)
        self.bone(cv.ellipsoid(sph, (16.0, 14.0, 13.0)), cortex_mm=1.5, hu_m=dip)
        # occipital condyles
        for sg in (1.0, -1.0):
            self.bone(cv.ellipsoid((fm[0] + sg * (wct + 5.0), fm[1] - 4.0, zf + 1.0), (6.0, 11.0, 6.0)), cortex_mm=1.5)
        for side, sg in (("Lt", 1.0), ("Rt", -1.0)):
            c = self.coch[side]
            # petrous pyramid (postero-lateral -> antero-medial, ~40 deg to the sagittal plane)
            d = np.array([sg * math.cos(math.radians(40)), math.sin(math.radians(40)), -0.12])
            d /= np.linalg.norm(d)
            up = np.array([0.0, 0.0, 1.0])
            n = np.cross(up, d)
            n /= np.linalg.norm(n)
            up = np.cross(d, n)
            rot = np.stack([d, n, up], axis=1)
            self.bone(cv.ellipsoid(c + 5.0 * d, (24.0, 8.0, 9.5), rot), cortex_mm=2.0, hu_m=0.8 * P.hu_cortical)
            # mastoid with air cells
            mc = self.mastoid[side]
            r = cv.ellipsoid(mc, (10.5, 13.0, 18.0))
            self.bone(r, cortex_mm=1.5, hu_m=dip)
            if r is not None and P.mastoid_air > 0:
                sl, sd = r
                thr = 1.0 - 1.6 * P.mastoid_air
                cells = np.clip((self.tx(sl) - thr) / 0.5, 0.0, 1.0) * cv.alpha(sd, -2.0)
                cv.blend(sl, cells, P.hu_air)
            # styloid process
            self.bone(cv.segment(mc + np.array([-sg * 9.0, -12.0, 10.0]), mc + np.array([-sg * 15.0, -27.0, -16.0]),
                                 2.0, 1.1), cortex_mm=3.0)
            # external auditory canal: bony ring then air; middle ear; internal auditory canal; otic capsule
            p0 = c + np.array([sg * 9.0, -1.0, -3.0])
            p1 = c + np.array([sg * 50.0, 3.0, -6.0])
            self.bone(cv.segment(p0, c + np.array([sg * 22.0, 1.0, -4.0]), 5.5, 5.5), cortex_mm=2.0, hu_m=dip)
            self.paint_sd(cv.segment(p0, p1, 3.6, 4.0), P.hu_air)
            self.paint_sd(cv.ellipsoid(c + np.array([sg * 5.5, 1.5, 1.0]), (2.5, 4.5, 6.0)), P.hu_air)
            self.bone(cv.ellipsoid(c, (5.5, 5.5, 5.5)), cortex_mm=9.0, hu_c=min(1.25 * P.hu_cortical, 2200.0))
            self.paint_sd(cv.segment(c + np.array([-sg * 2.5, 2.0, 1.0]), c + np.array([-sg * 13.0, 3.0, 2.0]), 2.2, 2.2),
                          P.hu_csf)
            self.paint_sd(cv.ellipsoid(c + np.array([sg * 3.5, 5.5, 1.0]), (2.0, 2.0, 2.2)), P.hu_csf + 15.0)
            # glenoid fossa roof over the condyle, zygomatic arch, zygoma (malar) and lateral orbital rim
            R = self.ramus[side]
            kc = int(np.clip(round((self.z_mand_hi - 6.0) / self.sp[0]), 0, self.nz - 1))
            xcond = R["cx"][kc] if np.isfinite(R["cx"][kc]) else c[0] + sg * 18.0
            ycond = R["y1"][kc] - 6.0 if np.isfinite(R["y1"][kc]) else c[1] - 14.0
            self.bone(cv.ellipsoid((xcond, ycond, self.z_mand_hi + 4.0), (11.0, 12.0, 4.0)), cortex_mm=1.2, hu_m=dip)
            g = self.globes[side]
            zyg = np.array([g[0] + sg * 13.0, self.y_face + 14.0, self.z_orbit - 17.0])
            self.bone(cv.segment((xcond + sg * 4.0, ycond - 6.0, self.z_mand_hi - 3.0), zyg + np.array([sg * 3.0, 6.0, 0.0]),
                                 3.2, 3.6), cortex_mm=1.2, hu_m=dip)
            self.bone(cv.ellipsoid(zyg, (8.0, 11.0, 11.0)), cortex_mm=1.5, hu_m=dip)
            self.bone(cv.segment(zyg, np.array([g[0] + sg * 17.0, g[1] + 4.0, self.z_orbit + 14.0]), 3.5, 3.0),
                      cortex_mm=1.2, hu_m=dip)
        self.paint_sd(cv.ellipsoid(sph, (12.5, 10.5, 9.5)), P.hu_air)  # sphenoid sinus

    def paint_face(self) -> None:
        """Maxilla: solid alveolar ridge and hard palate, thin anterior/lateral wall above the palate, maxillary
        sinuses (air in a thin bony shell), nasal cavity (air) with septum (bone + mucosa) and mucosa-covered
        turbinates, nostrils, nasal bones, ethmoid cells, pterygoid plates, optional oral air."""
        P, cv, z = self.P, self.cv, self.zmm
        zo, zp, zoc = self.z_orbit, self.z_palate, self.z_occl
        if zo - zp < 20:
            return
        yf, ypt = self.y_face, self.y_ptery
        D = max(ypt - yf - 12.0, 28.0)
        ymc = yf + 12.0 + D / 2
        Wb = _ramp(z, [(zoc + 4, 30.0), (zp, 38.0), (zo - 16, 44.0), (zo - 8, 38.0)])
        dip = 0.4 * P.hu_cortical + 0.4 * P.hu_cancellous
        thin = 0.75 * P.hu_cortical
        # hard palate: a solid plate
        k0, k1 = self.kr(zp - 3.5, zp + 1.0)
        self.bone(cv.tube(k0, k1, self.xm, ymc, Wb - 2.0, D / 2 - 1.0), cortex_mm=1.5, hu_m=dip)
        # alveolar ridge (below the palate): a horseshoe following the front of the block
        k0, k1 = self.kr(zoc + 5, zp - 3.5)
        rr = cv.tube(k0, k1, self.xm, ymc, Wb, D / 2, local=True)
        if rr is not None:
            sl, sd, u, v, aa, bb = rr
            sdr = np.maximum(np.maximum(sd, -(sd + 9.0)), v - 0.55 * bb)
            self.bone((sl, sdr), cortex_mm=1.2, hu_m=dip)
        # anterior / lateral maxillary wall above the palate (thin shell of the front of the block)
        k0, k1 = self.kr(zp + 1.0, zo - 8)
        rr = cv.tube(k0, k1, self.xm, ymc, Wb, D / 2, local=True)
        if rr is not None:
            sl, sd, u, v, aa, bb = rr
            shell = np.maximum(np.maximum(sd, -(sd + 1.2)), v - 0.35 * bb)
            cv.blend(sl, cv.alpha(shell), thin)
        # maxillary sinuses: bony shell then air
        zs0, zs1 = zp - 3.0, zo - 12.0
        for sg in (1.0, -1.0):
            cx = 0.5 * (self.globes["Lt" if sg > 0 else "Rt"][0] - sg * 6.0) + 0.5 * (self.fm[0] + sg * 25.0)
            c = (cx, yf + 14.0 + (D - 3.0) / 2, 0.5 * (zs0 + zs1))
            rad = np.array([13.0, (D - 4.0) / 2, 0.5 * (zs1 - zs0)])
            self.paint_sd(cv.ellipsoid(c, rad + 0.9), thin)
            self.paint_sd(cv.ellipsoid(c, rad), lambda sl: P.hu_air + 2.0 * self.tx(sl))
        # nasal cavity (air), turbinates (mucosa over a thin bony core), septum (mucosa over bone/cartilage)
        k0, k1 = self.kr(zp + 2.0, zo + 6)
        wn = _ramp(z, [(zp, 14.0), (zp + 14, 15.0), (zo - 10, 9.0), (zo + 6, 4.5)])
        yn0, yn1 = yf - 3.0, ypt - 1.0
        rn = cv.tube(k0, k1, self.xm, 0.5 * (yn0 + yn1), wn + 0.8, 0.5 * (yn1 - yn0) + 0.8)
        self.paint_sd(rn, thin)
        self.paint_sd(cv.tube(k0, k1, self.xm, 0.5 * (yn0 + yn1), wn, 0.5 * (yn1 - yn0)),
                      lambda sl: P.hu_air + 2.0 * self.tx(sl))
        for zlo, zhi, off, r_, ln in ((zp + 1, zp + 15, 9.5, 5.5, 21.0), (zp + 16, zo - 6, 7.0, 3.6, 15.0)):
            kk0, kk1 = self.kr(zlo, zhi)
            for sg in (1.0, -1.0):
                r = cv.tube(kk0, kk1, self.xm + sg * off, 0.5 * (yn0 + yn1) + 5.0, r_, ln)
                self.paint_sd(r, lambda sl: P.hu_mucosa + 4.0 * self.tx(sl))
                self.paint_sd(r, 0.4 * P.hu_cortical, offset=-r_ + 1.0)
        self.paint_sd(cv.vplate(k0, k1, self.xm, yn0 + 2.0, self.xm, yn1 - 2.0, 2.0),
                      lambda sl: P.hu_mucosa + 4.0 * self.tx(sl))
        self.paint_sd(cv.vplate(k0, k1, self.xm, yn0 + 14.0, self.xm, yn1 - 2.0, 0.6), 0.5 * P.hu_cortical)
        # ethmoid cells between the orbits
        k0, k1 = self.kr(zo - 9, zo + 12)
        for sg in (1.0, -1.0):
            r = cv.tube(k0, k1, self.xm + sg * 8.5, self.y_globe + 6.0, 5.0, 14.0)
            if r is not None:
                sl, sd = r
                cells = cv.alpha(sd)
                cv.blend(sl, cells, np.where(self.tx(sl) > -0.8, P.hu_air, 0.3 * P.hu_cortical))
        # nostrils and nasal bones
        if self.nose is not None:
            kn0, kn1, Pn, Wn = self.nose
            kk0, kk1 = self.kr(zp + 1, zp + 9)
            for sg in (1.0, -1.0):
                self.paint_sd(cv.tube(kk0, kk1, self.xm + sg * 5.5, yf - Pn * 0.45, 3.2, Pn * 0.35), P.hu_air)
            kk0, kk1 = self.kr(zo - 20, zo - 3)
            for sg in (1.0, -1.0):
                r = cv.vplate(kk0, kk1, self.xm, yf + 3.0 - Pn, self.xm + sg * 8.0, yf + 5.0, 1.2)
                self.bone(r, cortex_mm=2.0)
        # pterygoid plates
        k0, k1 = self.kr(zp - 4, zp + 24)
        for sg in (1.0, -1.0):
            r = cv.vplate(k0, k1, self.xm + sg * 13.0, ypt - 3.0, self.xm + sg * 24.0, ypt + 7.0, 1.3)
            self.bone(r, cortex_mm=3.0)
        # oral air (between tongue and palate) in some patients
        if P.mouth_air:
            k = int(np.clip(round(zp / self.sp[0]), 0, self.nz - 1))
            self.paint_sd(cv.ellipsoid((self.xm[k], ymc + 2.0, zp - 5.0), (17.0, D / 2 - 2.0, 2.2)), P.hu_air)

    def paint_orbits(self) -> None:
        """Bony orbital cones (apex ~40 mm behind the globe), orbital fat, the four rectus muscles."""
        P, cv = self.P, self.cv
        for side, sg in (("Lt", 1.0), ("Rt", -1.0)):
            G = self.globes[side]
            o = self.orgs.get("Orbit-" + side)
            rg = (3.0 * o.count * float(np.prod(self.sp)) / (4 * np.pi)) ** (1 / 3) if o is not None else 11.5
            A = G + np.array([-sg * 14.0, 40.0, -2.0])
            F = G + np.array([sg * 1.0, -0.3 * rg, 0.0])
            ax = F - A
            L = float(np.linalg.norm(ax))
            ax = ax / L
            bx = cv.box((G[2] - 24) / self.sp[0], (G[2] + 24) / self.sp[0] + 1, min(A[1], F[1]) - 25, max(A[1], F[1]) + 8,
                        min(A[0], F[0]) - 26, max(A[0], F[0]) + 26)
            if bx is None:
                continue
            sl, Z, Y, X = bx
            dx, dy, dz = (X - A[0]).astype(np.float32), (Y - A[1]).astype(np.float32), (Z - A[2]).astype(np.float32)
            t = (dx * ax[0] + dy * ax[1] + dz * ax[2]) / L
            px, py, pz = dx - t * L * ax[0], dy - t * L * ax[1], dz - t * L * ax[2]
            rho = np.sqrt(px * px + py * py + pz * pz)
            Rt = 3.0 + 15.5 * np.clip(t, 0, 1.2) ** 0.8
            sd_cone = np.maximum(rho - Rt, np.maximum(-t * L, (t - 1.08) * L))
            wall = np.maximum(np.maximum(rho - Rt - 1.6 - 1.5 * (px * sg > 0), Rt - rho), np.maximum(-t * L, (t - 1.0) * L))
            self.bone((sl, wall), cortex_mm=3.0, hu_c=0.8 * P.hu_cortical)
            cv.blend(sl, cv.alpha(sd_cone), P.hu_fat + 10.0 + 4.0 * self.tx(sl))
            # rectus muscles: bands along the cone wall in four sectors
            ang = np.arctan2(pz, px * sg)
            band = (rho > Rt - 4.2) & (rho < Rt - 0.6) & (t > 0.05) & (t < 0.85)
            sect = np.zeros_like(rho, bool)
            for a0 in (0.0, np.pi / 2, np.pi, -np.pi / 2):
                sect |= np.abs(np.angle(np.exp(1j * (ang - a0)))) < 0.38
            cv.blend(sl, (band & sect).astype(np.float32) * cv.alpha(sd_cone), P.hu_muscle)

    # ------------------------------------------------------------------ skull and brain
    def paint_head(self) -> None:
        """Skull tables and diploe from a banded signed distance to the brain (+ brainstem, + top of the
        canal so that the foramen magnum stays open), CSF spaces, cortex / white matter, sulci, deep grey
        nuclei, ventricles, falx; temporalis on the temporal squama."""
        if self.brain_src is None:
            return
        P, cv = self.P, self.cv
        crop, off = self.brain_src
        can = self.orgs.get("Spinal-Canal")
        parts = [(crop, off)]
        if can is not None:
            kt = self.kr(self.z_fm - 15.0, 1e9)[0]
            c0 = max(kt - can.off[0], 0)
            if c0 < can.raw.shape[0]:
                parts.append((can.raw[c0:], (can.off[0] + c0, can.off[1], can.off[2])))
        band = P.csf_gap_mm + 1.3 * P.skull_mm + 14.0 * P.muscle_scale + 2.0
        lo = np.min([o for _, o in parts], axis=0) - np.array([math.ceil(band / self.sp[0]), math.ceil(band / self.sp[1]),
                                                               math.ceil(band / self.sp[2])])
        hi = np.max([np.asarray(o) + c.shape for c, o in parts], axis=0) + np.array(
            [math.ceil(band / self.sp[0]), math.ceil(band / self.sp[1]), math.ceil(band / self.sp[2])])
        lo = np.maximum(lo, [0, cv.y0, cv.x0])
        hi = np.minimum(hi, [self.nz, cv.y1, cv.x1])
        if np.any(hi <= lo):
            return
        M = np.zeros(tuple(hi - lo), bool)
        for c, o in parts:
            a = np.maximum(np.asarray(o), lo)
            b = np.minimum(np.asarray(o) + c.shape, hi)
            if np.any(b <= a):
                continue
            M[a[0] - lo[0]:b[0] - lo[0], a[1] - lo[1]:b[1] - lo[1], a[2] - lo[2]:b[2] - lo[2]] |= \
                c[a[0] - o[0]:b[0] - o[0], a[1] - o[1]:b[1] - o[1], a[2] - o[2]:b[2] - o[2]]
        dxy: list = []
        d = _sdf(M, self.sp, band, band_in=10.0, inplane=dxy)
        # narrow gaps between brain parts (cisterns, between brainstem, temporal lobes and cerebellum) are CSF,
        # not skull: close the mask by rc (dilate = d < rc, erode = distance to the outside of that > rc)
        rc = 5.0
        dil = d < rc
        enclosed = (_banded_dist(~dil, self.sp, rc + 1.0) > rc - P.csf_gap_mm + 0.5) & ~M
        sl = (slice(lo[0], hi[0]), slice(lo[1] - cv.y0, hi[1] - cv.y0), slice(lo[2] - cv.x0, hi[2] - cv.x0))
        Z = cv.zs[sl[0]][:, None, None]
        Y = cv.ys[sl[1]][None, :, None]
        X = cv.xs[sl[2]][None, None, :]
        gap = P.csf_gap_mm
        tc = self.tx(sl, True)
        # skull thickness: thicker at the base and occiput, thin temporal squama, lumpy
        zrel = Z - self.z_fm
        base = np.clip(1.0 - (zrel - 10.0) / 30.0, 0.0, 1.0)
        lat = np.clip((np.abs(X - self.fm[0]) - 45.0) / 20.0, 0.0, 1.0) * np.clip((zrel - 30.0) / 15.0, 0, 1) * \
            np.clip(1.0 - (zrel - 85.0) / 20.0, 0, 1)
        # cranial-fossa floors (occipital squama under the cerebellum, greater wings under the temporal lobes,
        # orbital roofs) are thin: where the nearest brain lies above (in-plane distance >> 3-D distance, lower
        # half of the head) the shell is thinned, else the masks' flat bottom slices make thick plates
        zc_brain = float(self.orgs["Brain"].centroid()[2]) if "Brain" in self.orgs else self.z_fm + 70.0
        floor = ((dxy[0] > d + 1.5) & (Z < zc_brain)).astype(np.float32)
        Tk = P.skull_mm * (1.0 + 0.04 * tc) * (1.0 - 0.45 * lat) * (1.0 + 0.2 * base * (1 - floor)) * (1.0 - 0.55 * floor)
        ok = (Z > self.z_fm - 1.0).astype(np.float32)
        # temporalis: outside the squama
        ttemp = 12.0 * P.muscle_scale * np.clip(1.0 - (Z - self.z_mand_hi) / 55.0, 0.0, 1.0) * \
            np.clip((Z - self.z_mand_hi + 12.0) / 8.0, 0.0, 1.0)
        yt = (self.coch["Lt"][1] + self.coch["Rt"][1]) / 2
        tsec = np.clip((np.abs(X - self.fm[0]) - 35.0) / 10.0, 0.0, 1.0) * (Y < yt + 5.0) * (Y > self.y_globe + 8.0)
        tmask = np.clip(0.5 - (d - gap - Tk - ttemp) / cv.soft, 0, 1) * tsec * (ttemp > 0.5) * (d > gap)
        cv.blend(sl, tmask.astype(np.float32) * self.under_fat(sl), self.muscle(sl))
        # skull shell: tables + diploe
        sd_shell = np.maximum(gap - d, d - gap - Tk)
        ok = ok * (~enclosed)
        a_out = cv.alpha(sd_shell) * ok
        tf = self.tx(sl)
        cv.blend(sl, a_out, P.hu_cortical * (1.0 + 0.05 * tf))
        a_in = cv.alpha(sd_shell, -1.6) * ok
        cv.blend(sl, a_in, (0.45 * P.hu_cortical + 0.3 * P.hu_cancellous) * (1.0 + 0.3 * tf))
        # CSF between brain and skull, then brain
        csf = np.maximum(cv.alpha(d, gap), enclosed.astype(np.float32)) * ((d > -2.0) | (Z < self.z_fm + 2))
        cv.blend(sl, csf.astype(np.float32), P.hu_csf + 3.0 * tf)
        a_br = cv.alpha(d)
        din = -d
        t2 = self.tx(tuple(slice(s_.start + 7, s_.stop + 7) for s_ in sl), True)
        cortex = 2.4 + 0.9 * tc
        wgm = np.clip((cortex - din) / 1.2 + 0.5, 0.0, 1.0)
        val = P.hu_wm + wgm * (P.hu_gm - P.hu_wm) + 2.0 * tf
        sulc = np.clip(1.0 - np.abs(t2) / (0.07 + 0.10 * P.atrophy), 0.0, 1.0) * np.clip((9.0 - din) / 3.0, 0.0, 1.0)
        val += sulc * (P.hu_csf - val)
        cv.blend(sl, a_br, val)
        self.brain_box = sl
        self._deep_brain()

    def _deep_brain(self) -> None:
        P, cv = self.P, self.cv
        br = self.orgs.get("Brain")
        if br is None:
            return
        c = br.centroid()
        zf = self.z_fm
        if c[2] < zf + 45:
            return
        bx = c[0]
        by = c[1]
        vf = 0.8 + 0.9 * P.atrophy
        zc = zf + 72.0
        for sg in (1.0, -1.0):
            self.paint_sd(cv.ellipsoid((bx + sg * 10.0, by + 8.0, zc - 2.0), (9.0, 13.0, 10.0)), P.hu_gm - 2.0)
            self.paint_sd(cv.ellipsoid((bx + sg * 21.0, by - 6.0, zc), (6.5, 14.0, 10.0)), P.hu_gm - 1.0)
            rot = np.eye(3)
            self.paint_sd(cv.ellipsoid((bx + sg * 8.0 * vf, by + 2.0, zc + 12.0), (4.0 * vf, 27.0, 7.0 * vf), rot),
                          P.hu_csf)
            self.paint_sd(cv.ellipsoid((bx + sg * 10.0 * vf, by - 22.0, zc + 8.0), (3.5 * vf, 8.0, 6.0 * vf)), P.hu_csf)
            self.paint_sd(cv.ellipsoid((bx + sg * 14.0 * vf, by + 30.0, zc + 4.0), (3.5 * vf, 9.0, 5.0 * vf)), P.hu_csf)
        self.paint_sd(cv.ellipsoid((bx, by + 6.0, zc - 3.0), (1.0 * vf, 11.0, 8.0)), P.hu_csf)
        bs = self.orgs.get("Brainstem")
        if bs is not None:
            b = bs.centroid()
            self.paint_sd(cv.ellipsoid((b[0], b[1] + 15.0, zf + 30.0), (4.5 * vf, 2.5 * vf, 6.0)), P.hu_csf)
        # interhemispheric fissure with the falx
        k0, k1 = self.kr(zf + 62.0, 1e9)
        r = cv.tube(k0, k1, bx, by, 1.0 + 1.2 * P.atrophy, 90.0)
        if r is not None:
            sl, sd = r
            Y = cv.ys[sl[1]][None, :, None]
            keep = ((Y < by - 20.0) | (Y > by + 25.0)).astype(np.float32)
            cv.blend(sl, cv.alpha(sd) * keep * (self._brain_inside(sl) > 0.5), P.hu_csf)
            r2 = cv.tube(k0, k1, bx, by, 0.4, 90.0)
            if r2 is not None:
                sl2, sd2 = r2
                Y2 = cv.ys[sl2[1]][None, :, None]
                keep2 = ((Y2 < by - 20.0) | (Y2 > by + 25.0)).astype(np.float32)
                cv.blend(sl2, 0.7 * cv.alpha(sd2) * keep2 * (self._brain_inside(sl2) > 0.5), 70.0)

    def _brain_inside(self, sl: tuple[slice, ...]) -> np.ndarray:
        br = self.orgs.get("Brain")
        out = np.zeros(tuple(s_.stop - s_.start for s_ in sl), np.float32)
        if br is None:
            return out
        g0 = np.array([sl[0].start, sl[1].start + self.cv.y0, sl[2].start + self.cv.x0])
        g1 = np.array([sl[0].stop, sl[1].stop + self.cv.y0, sl[2].stop + self.cv.x0])
        o0 = np.asarray(br.off)
        o1 = o0 + br.raw.shape
        a, b = np.maximum(g0, o0), np.minimum(g1, o1)
        if np.any(b <= a):
            return out
        out[a[0] - g0[0]:b[0] - g0[0], a[1] - g0[1]:b[1] - g0[1], a[2] - g0[2]:b[2] - g0[2]] = \
            br.raw[a[0] - o0[0]:b[0] - o0[0], a[1] - o0[1]:b[1] - o0[1], a[2] - o0[2]:b[2] - o0[2]]
        return out


    # ------------------------------------------------------------------ organs from the masks (boundary jitter)
    def organ_region(self, name: str, jitter_scale: float = 1.0, band: float = 4.0):
        """(canvas slices, alpha, signed distance) of the jittered organ: painted region = {sdf < delta},
        delta a smooth random field (s.d. jitter_mm x scale, correlation jitter_corr_mm) plus a small global
        bias (contours are systematically tight or loose by a fraction of a millimetre)."""
        o = self.orgs.get(name)
        if o is None:
            return None
        cv = self.cv
        pad = np.array([math.ceil(band / self.sp[0]) + 1, math.ceil(band / self.sp[1]) + 1, math.ceil(band / self.sp[2]) + 1])
        lo = np.maximum(np.asarray(o.off) - pad, [0, cv.y0, cv.x0])
        hi = np.minimum(np.asarray(o.off) + o.raw.shape + pad, [self.nz, cv.y1, cv.x1])
        if np.any(hi <= lo):
            return None
        M = np.zeros(tuple(hi - lo), bool)
        a = np.maximum(np.asarray(o.off), lo)
        b = np.minimum(np.asarray(o.off) + o.raw.shape, hi)
        oo = np.asarray(o.off)
        M[a[0] - lo[0]:b[0] - lo[0], a[1] - lo[1]:b[1] - lo[1], a[2] - lo[2]:b[2] - lo[2]] = \
            o.raw[a[0] - oo[0]:b[0] - oo[0], a[1] - oo[1]:b[1] - oo[1], a[2] - oo[2]:b[2] - oo[2]]
        if M.size > 1_500_000:
            # large organs (lungs): distances on a 2x coarser in-plane grid, linearly upsampled (~1 mm error)
            sp2 = (self.sp[0], 2 * self.sp[1], 2 * self.sp[2])
            Mc = M[:, ::2, ::2]
            dc = _sdf(Mc, sp2, band)
            d = _up2(dc, M.shape[1], M.shape[2]) if Mc.shape[1] * 2 - 1 >= M.shape[1] and Mc.shape[2] * 2 - 1 >= M.shape[2] \
                else _up2(np.pad(dc, ((0, 0), (0, 1), (0, 1)), mode="edge"), M.shape[1], M.shape[2])
        elif M.size > 3_000_000:
            d = _sdf(M, self.sp, band)
        else:
            d = (ndi.distance_transform_edt(~M, sampling=self.sp) - ndi.distance_transform_edt(M, sampling=self.sp)
                 ).astype(np.float32)
        amp = self.P.jitter_mm * jitter_scale
        field = _lowres_noise(M.shape, self.sp, self.P.jitter_corr_mm, self.rng) * amp
        field += amp * 0.3 * float(self.rng.uniform(-1, 1))
        sl = (slice(lo[0], hi[0]), slice(lo[1] - cv.y0, hi[1] - cv.y0), slice(lo[2] - cv.x0, hi[2] - cv.x0))
        alpha = cv.alpha(d, field)
        self.painted[name] = (sl, alpha > 0.5, M)
        return sl, alpha, d - field

    def paint_organs(self) -> None:
        P, cv = self.P, self.cv
        simple = [("Submandibular-Lt", 1.0, lambda sl: P.hu_submandibular + 4.0 * self.tx(sl)),
                  ("Submandibular-Rt", 1.0, lambda sl: P.hu_submandibular + 4.0 * self.tx(sl)),
                  ("Lacrimal-Lt", 0.6, lambda sl: P.hu_lacrimal + 4.0 * self.tx(sl)),
                  ("Lacrimal-Rt", 0.6, lambda sl: P.hu_lacrimal + 4.0 * self.tx(sl)),
                  ("Optic-Nerve-Lt", 0.4, lambda sl: P.hu_cord - 2.0 + 2.0 * self.tx(sl)),
                  ("Optic-Nerve-Rt", 0.4, lambda sl: P.hu_cord - 2.0 + 2.0 * self.tx(sl)),
                  ("Brainstem", 1.0, lambda sl: P.hu_wm + 3.0 + 2.0 * self.tx(sl)),
                  ("Spinal-Canal", 0.8, lambda sl: P.hu_csf + 3.0 * self.tx(sl)),
                  ("Spinal-Cord", 0.6, lambda sl: P.hu_cord + 2.0 * self.tx(sl)),
                  ("Cochlea-Lt", 0.25, P.hu_csf + 10.0),
                  ("Cochlea-Rt", 0.25, P.hu_csf + 10.0)]
        for side in ("Lt", "Rt"):
            r = self.organ_region("Orbit-" + side, 0.6)
            if r is not None:
                sl, a, d = r
                val = P.hu_globe + 2.0 * self.tx(sl) + np.clip((d + 1.2) / 1.0, 0.0, 1.0) * 35.0
                cv.blend(sl, a, val)
            r = self.organ_region("Lens-" + side, 0.35)
            if r is not None:
                cv.blend(r[0], r[1], P.hu_lens + 2.0 * self.tx(r[0]))
        for name, js, val in simple:
            r = self.organ_region(name, js)
            if r is not None:
                sl, a, d = r
                cv.blend(sl, a, val(sl) if callable(val) else val)
        self.paint_mandible()
        self.paint_parotids()

    def paint_mandible(self) -> None:
        P, cv = self.P, self.cv
        r = self.organ_region("Mandible", 1.0)
        if r is None:
            return
        sl, a, d = r
        Z = cv.zs[sl[0]][:, None, None]
        cort = 1.8 + 1.4 * np.clip(1.0 - (Z - self.z_mand_lo) / 12.0, 0.0, 1.0)
        cv.blend(sl, a, P.hu_cortical * (1.0 + 0.05 * self.tx(sl)))
        a_in = cv.alpha(d, -cort)
        cv.blend(sl, a_in, P.hu_cancellous * (1.0 + 0.35 * self.tx(sl) + 0.15 * self.tx(sl, True)))
        self.paint_teeth()

    def paint_teeth(self) -> None:
        """Teeth along the real alveolar crest of the mandible mask: the crest line is the highest column top
        per angular bin of the dental arch; crowns (enamel shell, dentin, pulp), roots in the alveolar bone;
        the upper arch is the lower one widened 5 % with 1.5 mm overjet, occluding ~9 mm above the crest.
        Some teeth are missing; some carry metal (fillings or crowns) that later causes streaks."""
        P, cv = self.P, self.cv
        self.metal_objs: list[tuple[float, float, float, float, float]] = []
        M = self.orgs.get("Mandible")
        if not P.teeth or M is None:
            return
        c = M.clean
        sz, sy, sx = self.sp
        anyz = c.any(axis=0)
        top = c.shape[0] - 1 - np.argmax(c[::-1], axis=0)
        jj, ii = np.nonzero(anyz)
        zt = (top[jj, ii] + M.coff[0] + 0.5) * sz
        yy = (jj + M.coff[1]) * sy
        xx = (ii + M.coff[2]) * sx
        kz = int(np.clip(round(self.z_crest / sz), 0, self.nz - 1))
        c0 = np.array([self.xm[kz], self.y_chin + 42.0])
        keep = (yy < self.y_chin + 58.0) & (zt < self.z_crest + 9.0)
        if keep.sum() < 30:
            return
        ang = np.arctan2(yy[keep] - c0[1], xx[keep] - c0[0])
        zk, yk, xk = zt[keep], yy[keep], xx[keep]
        edges = np.linspace(-np.pi, 0.0, 37)
        pts = []
        for b0, b1 in zip(edges[:-1], edges[1:]):
            m = (ang >= b0) & (ang < b1)
            if m.sum() < 3:
                continue
            zmax = zk[m].max()
            mm = m & (zk >= zmax - 1.01 * sz)
            pts.append((0.5 * (b0 + b1), xk[mm].mean(), yk[mm].mean(), zmax))
        if len(pts) < 10:
            return
        pts_a = np.array(pts)
        # smooth the crest line, arc length
        px = ndi.gaussian_filter1d(pts_a[:, 1], 1.0, mode="nearest")
        py = ndi.gaussian_filter1d(pts_a[:, 2], 1.0, mode="nearest")
        pz = ndi.gaussian_filter1d(pts_a[:, 3], 1.0, mode="nearest")
        seg = np.hypot(np.diff(px), np.diff(py))
        sarc = np.concatenate([[0.0], np.cumsum(seg)])
        s_mid = float(np.interp(-np.pi / 2, pts_a[:, 0], sarc))
        lower_w = [5.3, 5.9, 6.9, 7.0, 7.2, 11.0, 10.5, 10.0]
        upper_w = [8.6, 6.6, 7.6, 7.0, 6.6, 10.2, 9.2, 8.5]
        depth = [3.0, 3.0, 3.8, 4.0, 4.2, 5.0, 5.0, 4.8]
        has_m3 = self.rng.random() < 0.5
        present = []
        for jaw in ("lower", "upper"):
            for sg in (1.0, -1.0):
                for t in range(8):
                    if t == 7 and not has_m3:
                        continue
                    pm = P.missing_teeth * (1.5 if t >= 5 else 0.6)
                    if self.rng.random() < pm:
                        continue
                    present.append((jaw, sg, t))
        n_metal = min(P.metal_teeth if P.metal else 0, len(present))
        wts = np.array([1.0 + 2.0 * (t >= 3) for _, _, t in present], float)
        metal_idx = set(self.rng.choice(len(present), size=n_metal, replace=False, p=wts / wts.sum()).tolist()) \
            if n_metal else set()
        for n, (jaw, sg, t) in enumerate(present):
            widths = lower_w if jaw == "lower" else upper_w
            s_c = s_mid + sg * (sum(widths[:t]) + widths[t] / 2)
            if s_c < sarc[0] or s_c > sarc[-1]:
                continue
            x = float(np.interp(s_c, sarc, px))
            y = float(np.interp(s_c, sarc, py))
            zc = float(np.interp(s_c, sarc, pz))
            ds = 1.0
            tx_ = float(np.interp(s_c + ds, sarc, px) - np.interp(s_c - ds, sarc, px))
            ty_ = float(np.interp(s_c + ds, sarc, py) - np.interp(s_c - ds, sarc, py))
            tn = math.hypot(tx_, ty_) or 1.0
            tvec = np.array([tx_ / tn, ty_ / tn, 0.0])
            nvec = np.array([-tvec[1], tvec[0], 0.0])
            rot = np.stack([tvec, nvec, np.array([0.0, 0.0, 1.0])], axis=1)
            if jaw == "upper":
                x, y = c0[0] + 1.05 * (x - c0[0]), c0[1] + 1.05 * (y - c0[1]) - 1.5
                zb = zc + 9.0
                crown_c, root_a, root_b = zb + 4.3, zb + 7.0, zb + 20.0
            else:
                zb = zc
                crown_c, root_a, root_b = zb + 4.3, zb + 1.0, zb - 13.0
            semi = (widths[t] / 2 - 0.35, depth[t], 4.6)
            rr = max(0.3 * widths[t], 2.0)
            self.paint_sd(cv.segment((x, y, root_a), (x, y, root_b), rr, rr * 0.6), 0.65 * P.hu_teeth)
            r = cv.ellipsoid((x, y, crown_c), semi, rot)
            if r is None:
                continue
            sl, sd = r
            cv.blend(sl, cv.alpha(sd), P.hu_teeth)
            cv.blend(sl, cv.alpha(sd, -1.3), 0.62 * P.hu_teeth)
            if t >= 3:
                self.paint_sd(cv.ellipsoid((x, y, crown_c - (1.5 if jaw == "lower" else -1.5)), (1.4, 1.4, 2.0)), 40.0)
            if n in metal_idx:
                full = self.rng.random() < 0.4
                msemi = semi if full else (semi[0] * 0.55, semi[1] * 0.55, 2.2)
                mz = crown_c if full else crown_c + (2.2 if jaw == "lower" else -2.2)
                self.paint_sd(cv.ellipsoid((x, y, mz), msemi, rot), 9000.0)
                self.metal_objs.append((x, y, mz - msemi[2], mz + msemi[2], 0.5 * (msemi[0] + msemi[1])))

    def paint_parotids(self) -> None:
        """Parotid: parenchyma with fatty lobules (fat fraction f drawn per patient: mean HU = gland - f (gland -
        fat)), the retromandibular vein (denser tube behind the ramus) and the external carotid medial to it,
        intraparotid lymph nodes."""
        from scipy.special import ndtri

        P, cv = self.P, self.cv
        f = float(P.parotid_fat_fraction)
        for side, sg in (("Lt", 1.0), ("Rt", -1.0)):
            r = self.organ_region("Parotid-" + side, 1.0)
            if r is None:
                continue
            sl, a, d = r
            shape = a.shape
            sig = P.parotid_lobule_mm / 2.355
            lob = _unit_noise(shape, (sig / self.sp[0] * 0.8, sig / self.sp[1], sig / self.sp[2]), self.rng)
            if f > 0.005:
                thr = float(ndtri(1.0 - min(f, 0.99)))
                w = np.clip((lob - thr) / 0.5 + 0.5, 0.0, 1.0)
                inner = a > 0.5
                mw = float(w[inner].mean()) if inner.any() else f
                if mw > 1e-3:
                    w = np.clip(w * (f / mw), 0.0, 1.0)
            else:
                w = np.zeros(shape, np.float32)
            val = P.hu_gland + w * (P.hu_fat + 10.0 - P.hu_gland) + 3.0 * self.tx(sl)
            cv.blend(sl, a, val)
            # retromandibular vein and external carotid artery
            o = self.orgs["Parotid-" + side]
            st = o.stats()
            R = self.ramus[side]
            z = self.zmm
            kk = np.arange(self.nz)
            okp = np.isfinite(st["cx"])
            if okp.sum() >= 2:
                if np.isfinite(R["y1"]).sum() >= 2:
                    yr = _interp_nan(z, R["y1"])
                    xr = 0.5 * (_interp_nan(z, R["xl"]) + _interp_nan(z, R["xm"]))
                    vx, vy = xr + sg * 2.0, yr + 2.5 + P.rmv_mm / 2
                else:
                    vx = st["cx"] + sg * 0.2 * (st["x1"] - st["x0"])
                    vy = st["cy"] - 0.2 * (st["y1"] - st["y0"])
                    vx, vy = _interp_nan(z, vx), _interp_nan(z, vy)
                vx, vy = _smooth1d(vx, 1.0), _smooth1d(vy, 1.0)
                k0 = int(np.flatnonzero(okp)[0])
                k1 = min(int(np.flatnonzero(okp)[-1]) + 1, int((self.z_mand_hi - 6.0) / self.sp[0]))
                for (cx, cy, rad) in ((vx, vy, P.rmv_mm / 2), (vx - sg * 4.0, vy + 2.5, 1.6)):
                    rr = cv.tube(k0, k1, cx, cy, rad, rad)
                    if rr is None:
                        continue
                    sl2, sd2 = rr
                    w2 = self._sub(a, sl, sl2)
                    cv.blend(sl2, cv.alpha(sd2) * w2, P.hu_blood + 3.0 * self.tx(sl2))
            # intraparotid lymph nodes
            if P.intraparotid_nodes:
                inner = ndi.binary_erosion(o.raw, iterations=2)
                idx = np.argwhere(inner)
                for _ in range(min(P.intraparotid_nodes, len(idx))):
                    p = idx[int(self.rng.integers(0, len(idx)))] + np.asarray(o.off)
                    c = (p[2] * self.sp[2], p[1] * self.sp[1], p[0] * self.sp[0])
                    rn = self.rng.uniform(1.5, 3.2)
                    rr = cv.ellipsoid(c, (rn, rn * 0.8, rn * 1.3))
                    if rr is None:
                        continue
                    sl2, sd2 = rr
                    cv.blend(sl2, cv.alpha(sd2) * self._sub(a, sl, sl2), P.hu_lymph)

    @staticmethod
    def _sub(arr: np.ndarray, sl: tuple[slice, ...], sl2: tuple[slice, ...]) -> np.ndarray:
        """The part of ``arr`` (defined on canvas box ``sl``) that lies in box ``sl2`` (0 elsewhere)."""
        out = np.zeros(tuple(s_.stop - s_.start for s_ in sl2), np.float32)
        a = [max(s1.start, s2.start) for s1, s2 in zip(sl, sl2)]
        b = [min(s1.stop, s2.stop) for s1, s2 in zip(sl, sl2)]
        if any(bb <= aa for aa, bb in zip(a, b)):
            return out
        out[tuple(slice(aa - s2.start, bb - s2.start) for aa, bb, s2 in zip(a, b, sl2))] = \
            arr[tuple(slice(aa - s1.start, bb - s1.start) for aa, bb, s1 in zip(a, b, sl))]
        return out


    # ------------------------------------------------------------------ thorax and shoulders
    def paint_thorax(self) -> None:
        P, cv, z = self.P, self.cv, self.zmm
        zl = self.z_lung
        if zl - 30 < 0 and self.z_lung_bot < -1e8 and not self.pair("Lung"):
            if self.zmm[0] > zl + 10:
                return
        SW = P.shoulder_halfwidth_mm
        kz = lambda zz: int(np.clip(round(zz / self.sp[0]), 0, self.nz - 1))  # noqa: E731
        k = kz(zl - 20)
        xm, yc = self.xm[k], self.yc[k]
        lungs = self.pair("Lung")
        ba = int(((-np.pi / 2 + np.pi) / (2 * np.pi) * _NTH)) % _NTH
        y_ant_z = self.ycen - self.rbody[:, ba] + self.tfat[:, ba] + 4.0
        y_ant_z = np.where(self.rbody[:, ba] > 0, y_ant_z, self.yc - 90.0)
        y_ant = float(y_ant_z[kz(zl - 22)])
        # pectoral muscles, deltoids, humeral heads, scapulae, clavicles, manubrium
        k0, k1 = self.kr(zl - 140, zl - 8)
        for sg in (1.0, -1.0):
            r = cv.tubes(k0, k1, self.xm + sg * 62.0, y_ant_z + 12.0, 50.0, 9.0 * P.muscle_scale, -sg * 0.3)
            self.paint_sd(r, lambda sl: self.muscle(sl), clip=True)
            hh = np.array([xm + sg * (SW - 48.0), yc - 6.0, zl - 24.0])
            self.paint_sd(cv.ellipsoid(hh, (40.0, 44.0, 48.0)), lambda sl: self.muscle(sl), clip=True)
            kb0, kb1 = self.kr(zl - 110, zl - 8)
            r = cv.vplate(kb0, kb1, self.xm + sg * 48.0, self.yc + 40.0, self.xm + sg * (SW - 72.0), self.yc + 12.0,
                          np.full(self.nz, 2.6))
            self.paint_sd(r, lambda sl: self.muscle(sl), offset=9.0, clip=True)
            self.bone(r, cortex_mm=1.2)
            self.bone(cv.segment((xm + sg * 55.0, yc + 44.0, zl - 14.0), (xm + sg * (SW - 40.0), yc + 2.0, zl - 6.0),
                                 4.5, 5.0), cortex_mm=1.5)
            self.bone(cv.ellipsoid(hh, (23.0, 23.0, 26.0)), cortex_mm=1.6)
            kq = kz(zl - 20)
            f0 = float(self.tfat[kq].mean())
            p0 = (xm + sg * 20.0, self.skin_y(kq, xm + sg * 20.0) + f0 + 6.0, zl - 24.0)
            p1 = (xm + sg * 70.0, self.skin_y(kq, xm + sg * 70.0) + f0 + 7.0, zl - 15.0)
            p2 = (xm + sg * (SW - 45.0), yc - 4.0, zl - 7.0)
            self.bone(cv.segment(p0, p1, 5.5, 5.0), cortex_mm=2.0)
            self.bone(cv.segment(p1, p2, 5.0, 6.0), cortex_mm=2.0)
        k0, k1 = self.kr(-1e9, zl - 26)
        self.bone(cv.tubes(k0, k1, self.xm, y_ant_z + 3.0, 19.0, 6.0), cortex_mm=1.3)
        # lungs: parenchyma with vessel-like texture and a dependent density gradient; chest wall and ribs
        for side, sg in (("Lt", 1.0), ("Rt", -1.0)):
            r = self.organ_region("Lung-" + side, 0.8, band=P.chest_wall_mm + 10.0)
            if r is None:
                continue
            sl, a, d = r
            Y = cv.ys[sl[1]][None, :, None]
            X = cv.xs[sl[2]][None, None, :]
            ks = np.arange(sl[0].start, sl[0].stop)
            xm_ = self.xm[ks][:, None, None]
            yc_ = self.yc[ks][:, None, None]
            Z = cv.zs[sl[0]][:, None, None]
            wall = ((X - xm_) * sg > 12.0) | (Y < y_ant_z[ks][:, None, None] + 14.0)
            a_w = np.clip(0.5 + d / cv.soft, 0, 1) * np.clip(0.5 - (d - P.chest_wall_mm * 0.75) / cv.soft, 0, 1) * wall
            cv.blend(sl, a_w * self.under_fat(sl), self.muscle(sl, 0.1))
            per = 23.0 * self.s
            phase = ((Z + 0.45 * (yc_ - Y)) / per + 0.3 * sg) % 1.0
            dp = (np.abs(phase - 0.2) * per) * 0.9
            sd_rib = _ell_sd(d - 5.5, dp, 3.8, 5.5) - 0.0
            sd_rib = np.where(wall, sd_rib, 99.0).astype(np.float32)
            cart = (np.abs(X - xm_) < 45.0) & (Y < y_ant_z[ks][:, None, None] + 30.0)
            cv.blend(sl, cv.alpha(sd_rib), np.where(cart, P.hu_cartilage, P.hu_cortical))
            cv.blend(sl, cv.alpha(sd_rib, -1.3) * (~cart), P.hu_cancellous * (1.0 + 0.3 * self.tx(sl)))
            ta = self.tx(sl, True)
            tb = self.tx(tuple(slice(q.start + 11, q.stop + 11) for q in sl), True)
            eps = 0.10 + 0.16 * np.clip(1.0 - np.abs(X - xm_) / 90.0, 0.0, 1.0)
            ves = np.clip(1.0 - np.maximum(np.abs(ta), np.abs(tb)) / eps, 0.0, 1.0)
            val = P.hu_lung + 35.0 * np.clip((Y - yc_ + 60.0) / 120.0, 0, 1) + ves * (P.hu_blood - P.hu_lung)
            cv.blend(sl, a, val)
        # below the lungs (long scans): abdominal soft tissue instead of a fat blob
        if self.z_lung_bot > -1e8:
            kb = int(np.clip(round((self.z_lung_bot - 10.0) / self.sp[0]), 0, self.nz))
            for c0, c1, j0, j1, i0, i1 in self.chunks:
                if c0 >= kb:
                    continue
                sl = (slice(c0, min(c1, kb)), slice(j0, j1), slice(i0, i1))
                w = np.clip((self.dfat[sl] - 4.0) / 3.0, 0, 1)
                cv.blend(sl, w, 40.0 + 10.0 * self.tx(sl, True))

    def skin_y(self, k: int, x: float) -> float:
        """Anterior skin y (mm) of slice k at lateral position x, from the polar outline."""
        th = self.th[(self.th > -np.pi + 0.05) & (self.th < -0.05)]
        idx = ((th + np.pi) / (2 * np.pi) * _NTH).astype(int) % _NTH
        r = self.rbody[k, idx]
        xs = self.xcen[k] + r * np.cos(th)
        ys = self.ycen[k] + r * np.sin(th)
        order = np.argsort(xs)
        return float(np.interp(x, xs[order], ys[order]))

    # ------------------------------------------------------------------ ears
    def paint_ears(self) -> None:
        """Auricles: curved soft-tissue plates attached at the ear canal, flaring postero-laterally (outside
        the star-shaped body outline), with a thicker lobule at the level of the upper parotid."""
        P, cv, z = self.P, self.cv, self.zmm
        for side, sg in (("Lt", 1.0), ("Rt", -1.0)):
            c = self.coch[side]
            z0, z1 = c[2] - 34.0, c[2] + 26.0
            k0, k1 = self.kr(z0, z1)
            if k1 <= k0:
                continue
            ks = np.arange(k0, k1)
            th = np.arctan2((c[1] + 4.0) - self.ycen[ks], sg * 70.0)
            b = ((th + np.pi) / (2 * np.pi) * _NTH - 0.5).astype(int) % _NTH
            r = self.rbody[ks, b]
            ax = np.full(self.nz, np.nan)
            ay = np.full(self.nz, np.nan)
            ax[ks] = self.xcen[ks] + r * np.cos(th) - sg * 2.0
            ay[ks] = self.ycen[ks] + r * np.sin(th)
            t = np.clip((z - z0) / (z1 - z0), 0, 1)
            prof = np.sin(np.pi * np.clip(t * 1.05, 0, 1)) ** 0.6
            lob = t < 0.22
            L1 = np.where(lob, 7.0, 6.0 + 10.0 * prof)
            L2 = np.where(lob, 1.0, 4.0 + 9.0 * prof)
            bx_ = ax + sg * 0.57 * L1
            by_ = ay + 0.82 * L1
            cx_ = bx_ + sg * 0.15 * L2
            cy_ = by_ + 0.99 * L2
            th_ = np.where(lob, 3.4, 1.9)
            for (pa, pb) in (((ax, ay - 3.0), (bx_, by_)), ((bx_, by_), (cx_, cy_))):
                rr = cv.vplate(k0, k1, pa[0], pa[1], pb[0], pb[1], th_)
                if rr is None:
                    continue
                sl, sd = rr
                cv.blend(sl, cv.alpha(sd), P.hu_skin - 5.0 + 5.0 * self.tx(sl))

    # ------------------------------------------------------------------ scanner
    def scanner(self) -> np.ndarray:
        """PSF blur, cupping, metal streaks, correlated noise, clipping; returns the canonical int16 array."""
        P, cv = self.P, self.cv
        sz, sy, sx = self.sp
        nrng = np.random.default_rng(self.rng.integers(0, 2**31 - 1))
        out = np.empty((self.nz, self.ny, self.nx), np.int16)
        g = P.noise_grain_mm / 2.355
        sig1 = (0.0, g / sy, g / sx)
        sig2 = (0.0, 2.2 * g / sy, 2.2 * g / sx)

        def band_noise(shape: tuple[int, int, int], rng_: np.random.Generator) -> np.ndarray:
            w = rng_.standard_normal(shape, dtype=np.float32)
            return ndi.gaussian_filter(w, sig1, truncate=3.0) - 0.55 * ndi.gaussian_filter(w, sig2, truncate=3.0)

        ref = band_noise((4, 96, 96), np.random.default_rng(1))
        nstd = float(ref[:, 12:-12, 12:-12].std())
        # air background: a large correlated-noise image sampled at a random offset per slice
        air_sig = 0.7 * P.noise_sigma
        big = band_noise((1, self.ny + 160, self.nx + 160), nrng)[0] * (air_sig / nstd) + P.hu_air
        offs = nrng.integers(0, 160, size=(self.nz, 2))
        for k in range(self.nz):
            oy, ox = offs[k]
            out[k] = np.clip(big[oy:oy + self.ny, ox:ox + self.nx], -1024, 3071)
        # noise level follows the patient cross-section (incomplete tube-current modulation)
        area = 0.5 * (self.rbody.astype(np.float64) ** 2).sum(axis=1) * (2 * np.pi / _NTH)
        deq = 2.0 * np.sqrt(area / np.pi)
        neck = (self.zmm > self.z_lung + 20) & (self.zmm < self.z_fm) & (deq > 0)
        dref = float(np.median(deq[neck])) if neck.any() else float(np.median(deq[deq > 0]))
        fac = np.clip((np.maximum(deq, 1.0) / dref) ** P.noise_size_exponent, 0.75, 2.5)
        s_xy = P.psf_fwhm_mm / 2.355
        sigma = (P.slice_profile * sz / 2.355 / sz, s_xy / sy, s_xy / sx)
        pad = 2
        for k0, k1, j0, j1, i0, i1 in self.chunks:
            kk0, kk1 = max(k0 - pad, 0), min(k1 + pad, self.nz)
            blk = ndi.gaussian_filter(cv.hu[kk0:kk1, j0:j1, i0:i1], sigma, mode="nearest", truncate=3.0)
            blk = blk[k0 - kk0:k0 - kk0 + (k1 - k0)]
            blk -= P.cupping_hu * np.clip(self.depth[k0:k1, j0:j1, i0:i1] / 60.0, 0.0, 1.0)
            if self.metal_objs:
                for k in range(k0, k1):
                    st = self._streaks(k, j0, j1, i0, i1, nrng)
                    if st is not None:
                        blk[k - k0] += st
            blk += band_noise(blk.shape, nrng) * (P.noise_sigma / nstd) * fac[k0:k1, None, None].astype(np.float32)
            np.clip(blk, -1024, 3071, out=blk)
            out[k0:k1, cv.y0 + j0:cv.y0 + j1, cv.x0 + i0:cv.x0 + i1] = blk.astype(np.int16)
        if P.couch:
            self._couch(out, nrng)
        return out

    def _streaks(self, k: int, j0: int, j1: int, i0: int, i1: int, rng: np.random.Generator) -> Optional[np.ndarray]:
        """Metal streaks in slice k: the sinogram error of the metal (beam hardening ~ -p^2, which couples
        pairs of objects into dark bands, plus photon-starvation noise growing with the metal path p) is
        ramp-filtered and back-projected over the chunk box on a 2 mm grid, then upsampled."""
        zk = k * self.sp[0]
        objs = [(x, y, r) for x, y, z0, z1, r in self.metal_objs if z0 - self.sp[0] / 2 <= zk <= z1 + self.sp[0] / 2]
        if not objs:
            return None
        cv = self.cv
        ys = (cv.y0 + j0 + 2 * np.arange((j1 - j0) // 2 + 1)) * self.sp[1]
        xs = (cv.x0 + i0 + 2 * np.arange((i1 - i0) // 2 + 1)) * self.sp[2]
        cx = float(np.mean([o[0] for o in objs]))
        cy = float(np.mean([o[1] for o in objs]))
        Xr = (xs - cx)[None, :]
        Yr = (ys - cy)[:, None]
        smax = float(np.hypot(np.abs(Xr).max(), np.abs(Yr).max())) + 5.0
        ds = 0.8
        sgrid = np.arange(-smax, smax + ds, ds)
        th = np.linspace(0.0, np.pi, 360, endpoint=False)
        p = np.zeros((th.size, sgrid.size))
        for x, y, r in objs:
            si = (x - cx) * np.cos(th) + (y - cy) * np.sin(th)
            p += 2.0 * np.sqrt(np.clip(r * r - (sgrid[None, :] - si[:, None]) ** 2, 0.0, None))
        err = -(p ** 2) + rng.standard_normal(p.shape) * 0.4 * p * np.exp(0.12 * p)
        n = 2 * sgrid.size
        freq = np.fft.rfftfreq(n, d=ds)
        filt = np.abs(freq) * 0.5 * (1.0 + np.cos(np.pi * freq / freq.max()))
        q = np.fft.irfft(np.fft.rfft(err, n=n, axis=1) * filt[None, :], n=n, axis=1)[:, :sgrid.size]
        img = np.zeros((ys.size, xs.size))
        for a, t_ in enumerate(th):
            tt = Xr * math.cos(t_) + Yr * math.sin(t_)
            img += np.interp(tt, sgrid, q[a])
        rr = np.hypot(Xr, Yr)
        ann = (rr > 15.0) & (rr < 60.0)
        sd = float(img[ann].std()) if ann.any() else 0.0
        if sd <= 0:
            return None
        img *= (40.0 * self.P.metal_strength / sd)
        img = np.clip(img, -1500, 1500).astype(np.float32)
        return _up2(img[None], j1 - j0, i1 - i0)[0]

    def _couch(self, out: np.ndarray, rng: np.random.Generator) -> None:
        """CT table under the patient: carbon-fibre skins over a foam core, constant along z (full width)."""
        c, s_ = np.cos(self.th)[None, :], np.sin(self.th)[None, :]
        ys = self.ycen[:, None] + self.rbody * s_
        y_top = float(ys[self.rbody > 0].max()) + 3.0
        prof = np.full(self.ny, np.nan, np.float32)
        yy = np.arange(self.ny) * self.sp[1]
        for y_a, y_b, hu in ((y_top, y_top + 2.0, 250.0), (y_top + 2.0, y_top + 30.0, -880.0),
                             (y_top + 30.0, y_top + 32.0, 250.0)):
            prof[(yy >= y_a) & (yy < y_b)] = hu
        rows = np.flatnonzero(np.isfinite(prof))
        if rows.size == 0:
            return
        noise = rng.normal(0.0, 0.7 * self.P.noise_sigma, size=(self.nz, rows.size, self.nx)).astype(np.float32)
        out[:, rows, :] = np.clip(prof[rows][None, :, None] + noise, -1024, 3071).astype(np.int16)

    # ------------------------------------------------------------------ the whole case
    def run(self) -> np.ndarray:
        t = time.perf_counter()

        def lap(name: str) -> None:
            nonlocal t
            now = time.perf_counter()
            self.timing[name] = round(now - t, 3)
            t = now

        self.painted: dict[str, Any] = {}
        self.metal_objs = []
        self.landmarks()
        self.neck_geometry()
        self.rami()
        self.plan()
        self.outline()
        lap("plan")
        self.make_canvas()
        self.paint_body()
        lap("body")
        self.paint_thorax()
        self.paint_muscles()
        self.paint_aerodigestive()
        self.paint_vessels_nodes()
        lap("soft_tissue")
        self.paint_face()
        self.paint_orbits()
        self.paint_skull_base()
        self.paint_head()
        lap("head")
        self.paint_spine()
        self.paint_organs()
        self.paint_ears()
        lap("bones_organs")
        out = self.scanner()
        lap("scanner")
        return out


def _up2(c: np.ndarray, ny: int, nx: int) -> np.ndarray:
    """Linear 2x upsampling in the last two axes of samples taken at even indices (0, 2, 4, ...)."""
    k = c.shape[0]
    t = np.empty((k, 2 * c.shape[1] - 1, c.shape[2]), np.float32)
    t[:, 0::2] = c
    t[:, 1::2] = 0.5 * (c[:, :-1] + c[:, 1:])
    u = np.empty((k, t.shape[1], 2 * c.shape[2] - 1), np.float32)
    u[:, :, 0::2] = t
    u[:, :, 1::2] = 0.5 * (t[:, :, :-1] + t[:, :, 1:])
    return u[:, :ny, :nx]


# ============================================================================================ public entry point
def synth_ct(masks: Mapping[str, Volume], rng: np.random.Generator, params: Optional[SynthParams] = None
             ) -> tuple[Volume, dict]:
    """One synthetic non-contrast head-and-neck CT around the given organ masks.

    ``masks``: ``{organ name: mask Volume}`` (any spelling accepted by :func:`canonical_organ_name`; unknown
    names are ignored), all on one grid (:class:`InputError` otherwise). Any subset of organs and any
    sub-volume of the grid works; structures that are not in the masks are placed from the ones that are.
    ``params``: drawn with ``SynthParams.draw(rng)`` when omitted (then ``rng`` decides everything).

    Returns the CT (int16 HU clipped to [-1024, 3071], same shape/spacing/origin/direction as the masks, meta
    ``{"modality": "CT"}``) and an info dict: ``params`` (JSON-able), ``hu`` (the drawn mean HU of the main
    tissues), ``body_fraction`` (share of voxels inside the skin), ``jitter_dice`` (Dice of each painted organ
    region against its mask), ``landmarks_mm`` (canonical-frame z levels), ``timing_s``.
    """
    t0 = time.perf_counter()
    canon = _canonical_masks(masks)
    if params is None:
        if not isinstance(rng, np.random.Generator):
            raise InputError("rng must be a numpy.random.Generator (np.random.default_rng(seed)).")
        params = SynthParams.draw(rng)
    if not isinstance(params, SynthParams):
        raise InputError("params must be a SynthParams (or None to draw one).")
    A = _Anatomy(canon, params)
    if not A.orgs:
        raise InputError("Every organ mask is empty; there is no anatomy to build a CT around.")
    out = A.run()
    ref = A.ref
    arr = np.ascontiguousarray(A.orient.uncanon(out))
    ct = Volume(arr, ref.spacing, ref.origin, ref.direction.copy(), {"modality": "CT"})
    body_vox = 0
    for k0, k1, j0, j1, i0, i1 in A.chunks:
        body_vox += int((A.depth[k0:k1, j0:j1, i0:i1] > 0).sum())
    from MedSegAILib.metrics import dice

    jd = {}
    for name, (sl, painted, M) in A.painted.items():
        jd[name] = round(float(dice(painted, M)), 4)
    P = params
    info: dict[str, Any] = {
        "params": P.to_dict(),
        "hu": {"parotid": P.hu_parotid, "parotid_parenchyma": P.hu_gland, "submandibular": P.hu_submandibular,
               "muscle": P.hu_muscle, "fat": P.hu_fat, "brainstem": P.hu_wm + 3.0, "spinal_cord": P.hu_cord,
               "csf": P.hu_csf, "globe": P.hu_globe, "lens": P.hu_lens, "lung": P.hu_lung,
               "cortical_bone": P.hu_cortical, "cancellous_bone": P.hu_cancellous, "teeth": P.hu_teeth},
        "body_fraction": body_vox / float(np.prod(arr.shape)),
        "jitter_dice": jd,
        "fm_source": A.fm_source,
        "landmarks_mm": {k: round(float(getattr(A, k)), 1) for k in
                         ("z_fm", "z_mand_lo", "z_mand_hi", "z_occl", "z_palate", "z_orbit", "z_hyoid", "z_glottis",
                          "z_cricoid", "z_lung")},
        "metal_objects": len(A.metal_objs),
        "timing_s": {**A.timing, "total": round(time.perf_counter() - t0, 3)},
    }
    return ct, info
