"""Simulated PA wrist radiographs with exact bone label maps: a hand phantom seen by the cone-beam DRR projector.

One seed = one phantom ("patient", :func:`MedSegAILib.simulate.hand_phantom.simulate_hand`); each view draws
its own source distance, detector pixel size (field of view), in-plane rotation, tilts, exposure, scatter,
noise, blur and display curve (:func:`MedSegAILib.simulate.drr.random_geometry` and
:func:`MedSegAILib.simulate.drr.radiograph`). The label of a pixel is the bone with the longest path along its
ray (:func:`MedSegAILib.simulate.drr.resolve_overlaps`); metacarpals are present in the image but background in
the labels (the network's ten targets are the carpals, the distal radius and the distal ulna). The pisiform, which
lies over the triquetrum in a PA view, is drawn whole (``ON_TOP``), as a reader outlines it.

Used by the training recipe (:mod:`MedSegAILib.train.carpal`), the benchmark and the tests, so every one of them
sees the same kind of image.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional

import numpy as np

from MedSegAILib.core.volume import Volume

#: detector pixel size range (mm): a 256-pixel detector then covers 85-123 mm, distal forearm to metacarpals
PIXEL_MM = (0.33, 0.48)
#: bones drawn whole over the bone under them (the pisiform lies palmar to the triquetrum; with the longest-path
#: rule alone it would keep only the crescent that sticks out)
ON_TOP = (4,)
#: in-plane rotation of the field (degrees): hands are placed roughly upright on the cassette
IN_PLANE_DEG = (-12.0, 12.0)


@dataclass
class WristView:
    image: Volume  #: (1, H, W) float32 radiograph in [0, 1] (bone bright), on the detector grid
    label: Volume  #: (1, H, W) uint8, 0 background, 1..10 bones (MedSegAILib.tasks.carpal.BONES order)
    info: dict[str, Any] = field(default_factory=dict)


def simulate_wrist_views(seed: int, n_views: int = 1, *, size: int = 256,
                         pixel_mm: Optional[float] = None, min_path_mm: float = 1.0) -> list[WristView]:
    """``n_views`` simulated PA radiographs of phantom ``seed`` (deterministic in ``seed``)."""
    from MedSegAILib.simulate import drr
    from MedSegAILib.simulate.hand_phantom import CARPAL_LABELS, pa_view, simulate_hand

    ph = simulate_hand(seed)
    view = pa_view(ph)
    mu = ph.ct.with_array(drr.hu_to_mu(ph.ct.array))
    n_labels = int(ph.labels.array.max())
    ignore = tuple(v for v in range(1, n_labels + 1) if v not in CARPAL_LABELS)
    rng = np.random.default_rng([seed, 17])
    step = float(min(ph.ct.spacing))  # one sample per voxel: trilinear sampling needs no finer step here
    out = []
    for _ in range(n_views):
        px = float(pixel_mm if pixel_mm is not None else rng.uniform(*PIXEL_MM))
        geom = drr.random_geometry(rng, _centre(ph.ct, view, px * size / 2), view=view["view_dir"], up=view["up"],
                                   pixel_size_mm=px, in_plane_range_deg=IN_PLANE_DEG,
                                   shape=(size, size))
        line = drr.project(mu, geom, step_mm=step)
        image = drr.radiograph(line, rng, pixel_size=px)
        paths = drr.project_labels(ph.labels, geom, n_labels=n_labels, step_mm=step)
        label = drr.resolve_overlaps(paths, min_path_mm=min_path_mm, ignore=ignore, on_top=ON_TOP)
        img_vol = geom.image_volume(image.astype(np.float32))
        img_vol.meta.update({"modality": "DX", "spacing_known": True, "name": f"wrist-{seed}"})
        lab_vol = img_vol.with_array(label.astype(np.uint8)[np.newaxis], is_labelmap=True)
        out.append(WristView(img_vol, lab_vol, {"seed": seed, "pixel_mm": px, "side": ph.info.get("side"),
                                                "geometry": geom.to_dict()}))
    return out


def _centre(ct: Volume, view: dict[str, Any], half_fov_mm: float, reach: float = 1.25) -> np.ndarray:
    """The carpus centre, moved along the forearm axis so that the field of view (its half-height times
    ``reach``, for an in-plane rotated field) stays inside the phantom's extent where it can: a real forearm
    does not end inside a wrist radiograph, and the phantom has no fingers. When the field is longer than the
    phantom, both ends are shown equally. The carpus always stays in the field."""
    iso = np.asarray(view["isocentre"], float)
    up = np.asarray(view["up"], float)
    k, j, i = ct.array.shape
    corners = np.array([[a, b, c] for a in (0, i - 1) for b in (0, j - 1) for c in (0, k - 1)], float)
    along = ct.index_to_lps(corners) @ up
    lo_c = float(along.min()) + 3.0 + reach * half_fov_mm
    hi_c = float(along.max()) - 3.0 - reach * half_fov_mm
    c0 = float(iso @ up)
    c = float(np.clip(c0, lo_c, hi_c)) if lo_c <= hi_c else 0.5 * (lo_c + hi_c)
    margin = max(half_fov_mm - 25.0, 0.0)
    return iso + float(np.clip(c - c0, -margin, margin)) * up


def simulated_radiograph(seed: int, size: int = 256) -> tuple[Volume, Volume]:
    """One simulated wrist radiograph and its label map (Slicer self-test, demos)."""
    v = simulate_wrist_views(seed, 1, size=size)[0]
    return v.image, v.label
