"""Simulated PA wrist radiographs with exact bone label maps: a hand phantom seen by the cone-beam DRR projector.

One seed = one phantom ("patient", :func:`MedSegAILib.simulate.hand_phantom.simulate_hand`); each view draws
its own source distance, detector pixel size (field of view), in-plane rotation, tilts, exposure, scatter,
noise, blur and display curve (:func:`MedSegAILib.simulate.drr.random_geometry` and
:func:`MedSegAILib.simulate.drr.radiograph`). The label of a pixel is the bone with the longest path along its
ray (:func:`MedSegAILib.simulate.drr.resolve_overlaps`); metacarpals are present in the image but background in
the labels (the network's ten targets are the carpals, the distal radius and the distal ulna).

Used by the training recipe (:mod:`MedSegAILib.train.carpal`), the benchmark and the tests, so every one of them
sees the same kind of image.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional

import numpy as np

from MedSegAILib.core.volume import Volume

#: detector pixel size range (mm): a 256-pixel detector then covers 90-155 mm, wrist to mid-metacarpals
PIXEL_MM = (0.35, 0.6)


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
        geom = drr.random_geometry(rng, view["isocentre"], view=view["view_dir"], up=view["up"], pixel_size_mm=px,
                                   shape=(size, size))
        line = drr.project(mu, geom, step_mm=step)
        image = drr.radiograph(line, rng, pixel_size=px)
        paths = drr.project_labels(ph.labels, geom, n_labels=n_labels, step_mm=step)
        label = drr.resolve_overlaps(paths, min_path_mm=min_path_mm, ignore=ignore)
        img_vol = geom.image_volume(image.astype(np.float32))
        img_vol.meta.update({"modality": "DX", "spacing_known": True, "name": f"wrist-{seed}"})
        lab_vol = img_vol.with_array(label.astype(np.uint8)[np.newaxis], is_labelmap=True)
        out.append(WristView(img_vol, lab_vol, {"seed": seed, "pixel_mm": px, "side": ph.info.get("side"),
                                                "geometry": geom.to_dict()}))
    return out


def simulated_radiograph(seed: int, size: int = 256) -> tuple[Volume, Volume]:
    """One simulated wrist radiograph and its label map (Slicer self-test, demos)."""
    v = simulate_wrist_views(seed, 1, size=size)[0]
    return v.image, v.label
