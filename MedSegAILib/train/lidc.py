"""LIDC-IDRI nodule crops (``lidc-nodule-vois``): case list, metadata, patient split, working-grid cache, groups.

Data layout: ``image/LIDC-IDRI-NNNN_R_K.nii.gz`` (CT crop around one nodule, int16 HU, axial, ~0.5-1 mm in-plane,
1-3 mm slices) and ``nodule_mask/<same name>`` (the consensus mask, 0/1). ``metadata.xlsx`` has one row per
nodule; a row maps to a file by ``f"{patient_id}_R_{nodule_id}.nii.gz"`` (``patient_id`` = ``LIDC-IDRI-NNNN``,
``nodule_id`` = the index ``K``; checked: every image has exactly one row, the sheet has ~200 more rows than there
are crops). The row's ``coordX/Y/Z`` are the nodule centre in the crop's LPS frame (equal to the mask centroid to
within ~1 mm); ``diameter_mm``, ``bbox*`` and the readers' ratings (``*_value``) come with it.

Texture: ``Texture_value`` is ONE consolidated integer rating per nodule (not per reader): 1 "Non-Solid/GGO",
2 "Non-Solid/Mixed", 3 "Part Solid/Mixed", 4 "Solid/Mixed", 5 "Solid". Groups (:func:`texture_group`):
``ggo`` = rating <= 2, ``part-solid`` = 3, ``solid`` = rating >= 4. Size groups (:func:`size_group`) use the
equivalent diameter of the consensus mask on the original grid, ``d = (6 V / pi)^(1/3)``: ``<6``, ``6-10``,
``10-20``, ``>=20`` mm.

The generator works on a fixed grid (:data:`WORK_SPACING` = x, y, z 0.75, 0.75, 1.0 mm) with the crop's own
orientation: CT linear (outside the crop: -1000 HU), mask linear then ``>= 0.5``. :func:`build_cache` stores all
resampled crops in one ``.npz`` (int16 HU + uint8 mask + geometry + metadata as JSON) so runs load in seconds.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
import xml.etree.ElementTree as ET
import zipfile
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

import numpy as np

from MedSegAILib.core.volume import Geometry, Volume

#: working grid spacing (si, sj, sk) = (x, y, z) in mm
WORK_SPACING = (0.75, 0.75, 1.0)
#: fractions (train, val); the rest is test
SPLIT_FRACTIONS = (0.70, 0.15)
SIZE_GROUPS = ("<6", "6-10", "10-20", ">=20")
TEXTURE_GROUPS = ("ggo", "part-solid", "solid")
_NS = "{http://schemas.openxmlformats.org/spreadsheetml/2006/main}"
_NAME = re.compile(r"^(LIDC-IDRI-\d{4})_R_(\d+)\.nii(\.gz)?$")


# ---------------------------------------------------------------------------------------------- metadata
def read_xlsx(path: str | os.PathLike) -> list[dict[str, Any]]:
    """The first sheet of an .xlsx as a list of ``{header: value}`` dicts (no openpyxl: zip + XML). Numbers are
    returned as float when they parse, else str; empty cells are missing keys."""
    with zipfile.ZipFile(path) as z:
        names = z.namelist()
        shared: list[str] = []
        if "xl/sharedStrings.xml" in names:
            root = ET.fromstring(z.read("xl/sharedStrings.xml"))
            shared = ["".join(t.text or "" for t in si.iter(_NS + "t")) for si in root.findall(_NS + "si")]
        sheet = ET.fromstring(z.read("xl/worksheets/sheet1.xml"))
    rows: list[dict[str, Any]] = []
    for r in sheet.iter(_NS + "row"):
        d: dict[str, Any] = {}
        for c in r.findall(_NS + "c"):
            col = re.match(r"[A-Z]+", c.get("r", "")).group(0)  # type: ignore[union-attr]
            v, t = c.find(_NS + "v"), c.get("t")
            if v is None:
                inl = c.find(_NS + "is")
                if inl is not None:
                    d[col] = "".join(x.text or "" for x in inl.iter(_NS + "t"))
                continue
            d[col] = shared[int(v.text)] if t == "s" else v.text
        rows.append(d)
    if not rows:
        return []
    header = rows[0]
    out = []
    for r in rows[1:]:
        rec: dict[str, Any] = {}
        for col, val in r.items():
            if col not in header:
                continue
            try:
                rec[header[col]] = float(val)
            except (TypeError, ValueError):
                rec[header[col]] = val
        out.append(rec)
    return out


def case_name(patient_id: str, nodule_id: Any) -> str:
    """File stem of a metadata row: ``LIDC-IDRI-0003`` + nodule 2 -> ``LIDC-IDRI-0003_R_2``."""
    return f"{patient_id}_R_{int(float(nodule_id))}"


def texture_group(rating: Optional[float]) -> Optional[str]:
    """``ggo`` (<= 2), ``part-solid`` (3), ``solid`` (>= 4); None when unrated."""
    if rating is None or not np.isfinite(rating):
        return None
    if rating <= 2.0:
        return "ggo"
    if rating < 4.0:
        return "part-solid"
    return "solid"


def size_group(d_mm: float) -> str:
    """``<6``, ``6-10``, ``10-20``, ``>=20`` by an equivalent diameter in mm."""
    if d_mm < 6:
        return "<6"
    if d_mm < 10:
        return "6-10"
    if d_mm < 20:
        return "10-20"
    return ">=20"


def equivalent_diameter_mm(mask: Volume) -> float:
    """``(6 V / pi)^(1/3)`` with ``V`` = voxels > 0 times the voxel volume (mm^3)."""
    v = float(np.count_nonzero(mask.array)) * mask.voxel_volume_mm3
    return (6.0 * v / math.pi) ** (1.0 / 3.0)


def list_cases(root: str | os.PathLike) -> list[dict[str, Any]]:
    """Every crop with a mask: ``{"name", "patient", "nodule", "image", "mask", "meta"}`` (meta = the xlsx row
    or ``{}``), plus ``"texture"`` (rating) and ``"texture_group"``, sorted by name."""
    root = Path(root)
    meta = {}
    if (root / "metadata.xlsx").is_file():
        for rec in read_xlsx(root / "metadata.xlsx"):
            if "patient_id" in rec and "nodule_id" in rec:
                meta[case_name(rec["patient_id"], rec["nodule_id"])] = rec
    cases = []
    for f in sorted((root / "image").iterdir()):
        m = _NAME.match(f.name)
        mask = root / "nodule_mask" / f.name
        if not m or not mask.is_file():
            continue
        name = f"{m.group(1)}_R_{m.group(2)}"
        rec = meta.get(name, {})
        tex = rec.get("Texture_value")
        tex = float(tex) if isinstance(tex, float) else None
        cases.append({"name": name, "patient": m.group(1), "nodule": int(m.group(2)), "image": str(f),
                      "mask": str(mask), "meta": rec, "texture": tex, "texture_group": texture_group(tex)})
    return cases


def split_by_patient(cases: Sequence[dict[str, Any]], fractions: Sequence[float] = SPLIT_FRACTIONS
                     ) -> dict[str, list[dict[str, Any]]]:
    """Deterministic patient split: ``u = int(sha1(patient)[:8], 16) / 2**32``; ``u < 0.70`` train,
    ``< 0.85`` val, else test. A patient's crops are always on one side."""
    out: dict[str, list[dict[str, Any]]] = {"train": [], "val": [], "test": []}
    for c in cases:
        u = int(hashlib.sha1(str(c["patient"]).encode()).hexdigest()[:8], 16) / 2.0**32
        side = "train" if u < fractions[0] else ("val" if u < fractions[0] + fractions[1] else "test")
        out[side].append(c)
    return out


# ---------------------------------------------------------------------------------------------- grid
def to_working_grid(ct: Volume, mask: Optional[Volume] = None, spacing: Sequence[float] = WORK_SPACING
                    ) -> tuple[Volume, Optional[Volume]]:
    """Resample a crop onto ``spacing`` (same extent and orientation, :func:`grid_for_spacing`): CT linear with
    -1000 HU outside, rounded to int16; mask linear then ``>= 0.5`` as uint8 (on the CT's new grid)."""
    from MedSegAILib.core.resample import grid_for_spacing, resample_volume

    grid = grid_for_spacing(ct, spacing)
    hu = resample_volume(ct, reference=grid, interpolation="linear", default_value=-1000.0)
    hu.array = np.clip(np.rint(hu.array), -32768, 32767).astype(np.int16)
    if mask is None:
        return hu, None
    m = mask.with_array((np.asarray(mask.array) > 0).astype(np.float32))
    mw = resample_volume(m, reference=grid, interpolation="linear", default_value=0.0)
    mw.array = (mw.array >= 0.5).astype(np.uint8)
    return hu, mw


def load_case(case: dict[str, Any]) -> tuple[Volume, Volume]:
    """The crop's CT (HU) and mask on their original grid."""
    from MedSegAILib.core.io import read_volume

    return read_volume(case["image"]), read_volume(case["mask"])


def _geom_of(v: Volume) -> list[float]:
    return [*v.spacing, *v.origin, *np.asarray(v.direction).ravel()]


def _vol_from(arr: np.ndarray, g: np.ndarray) -> Volume:
    return Volume(arr, tuple(g[:3]), tuple(g[3:6]), np.asarray(g[6:15]).reshape(3, 3))


def build_cache(cases: Sequence[dict[str, Any]], path: str | os.PathLike,
                log: Callable[[str], None] = print) -> Path:
    """Resample every case to the working grid and write one ``.npz``: ``hu`` (int16, all crops flattened and
    concatenated), ``mask`` (uint8, same layout), ``shapes`` (n, 3), ``geom`` (n, 15: spacing, origin,
    direction row-major), ``meta`` (JSON: per case name, patient, texture, equivalent diameter on the original
    grid ``d_eq_mm`` and the xlsx row)."""
    hus, masks, shapes, geoms, metas = [], [], [], [], []
    for n, c in enumerate(cases):
        ct, m = load_case(c)
        hu, mw = to_working_grid(ct, m)
        hus.append(hu.array.ravel())
        masks.append(mw.array.ravel())
        shapes.append(hu.shape)
        geoms.append(_geom_of(hu))
        metas.append({k: c[k] for k in ("name", "patient", "nodule", "texture", "texture_group", "meta")}
                     | {"d_eq_mm": equivalent_diameter_mm(m), "orig_spacing": list(ct.spacing),
                        "orig_shape": list(ct.shape)})
        if (n + 1) % 100 == 0:
            log(f"cache: {n + 1}/{len(cases)} crops resampled")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp.npz")
    np.savez(tmp, hu=np.concatenate(hus), mask=np.concatenate(masks), shapes=np.asarray(shapes, np.int64),
             geom=np.asarray(geoms, np.float64), meta=np.asarray(json.dumps(metas)))
    os.replace(tmp, path)
    return path


def load_cache(path: str | os.PathLike) -> list[dict[str, Any]]:
    """The cached crops: dicts of the case fields (``name``, ``patient``, ``texture_group``, ``d_eq_mm``,
    ``size_group``, ``meta``...) plus ``hu`` (int16 Volume) and ``mask`` (uint8 Volume) on the working grid."""
    z = np.load(path, allow_pickle=False)
    hu, mask, shapes, geom = z["hu"], z["mask"], z["shapes"], z["geom"]
    metas = json.loads(str(z["meta"]))
    out, off = [], 0
    for s, g, m in zip(shapes, geom, metas):
        n = int(np.prod(s))
        rec = dict(m)
        rec["hu"] = _vol_from(hu[off:off + n].reshape(s), g)
        rec["mask"] = _vol_from(mask[off:off + n].reshape(s), g)
        rec["size_group"] = size_group(rec["d_eq_mm"])
        out.append(rec)
        off += n
    return out


def cached_or_build(root: str | os.PathLike, cache: str | os.PathLike,
                    log: Callable[[str], None] = print) -> list[dict[str, Any]]:
    """:func:`load_cache` when ``cache`` exists, else :func:`build_cache` over :func:`list_cases` first."""
    if not Path(cache).is_file():
        cases = list_cases(root)
        log(f"building the working-grid cache of {len(cases)} crops -> {cache}")
        build_cache(cases, cache, log)
    return load_cache(cache)


def geometry_of(v: Volume) -> Geometry:
    return v.geometry()
