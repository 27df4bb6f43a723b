"""Run the nodule detector (``nets/nodule_detector.py``) over a CT, slice by slice, and link its boxes into 3-D tracks.

Slices are the CT's **k axis**, which must be (close to) the patient's z axis: a volume whose k axis is more than
:data:`MAX_TILT_DEG` away from S/I (sagittal/coronal acquisition or strongly oblique) is **refused** with an
``InputError`` (resample it to an axial grid first). Flipped or swapped i/j axes and small gantry tilts are fine:
boxes live in the CT's own index space and centres go through ``Volume.index_to_lps``.

Per slice with lung (cropped to the lung bounding box + ``margin_mm``): the working intensity
``x = (clip(HU, -1000, 500) + 1000) / 1000`` is resampled bilinearly to ``spacing_mm`` (1 mm) pixels in-plane; the
three channels are the slice at z - 2.5 mm, z, z + 2.5 mm (linear interpolation between slices when the slice
spacing is not 2.5 mm; clamped at the first/last slice).

Box convention of :class:`Detection2D`: ``(i0, j0, i1, j1)`` in **continuous index coordinates** of the CT (voxel
``i`` covers ``[i - 0.5, i + 0.5]``), so the box centre ``((i0 + i1) / 2, (j0 + j1) / 2, k)`` maps to LPS with
``ct.index_to_lps``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Callable, Optional, Sequence

import numpy as np

from MedSegAILib.core.volume import Volume, bounding_slices
from MedSegAILib.errors import InputError

#: z offset of the two context channels (mm)
CONTEXT_MM = 2.5
#: largest angle (degrees) between the CT's k axis and the patient S/I axis that is still treated as axial
MAX_TILT_DEG = 20.0


@dataclass
class Detection2D:
    """One detector box on one axial slice ``k`` of the CT grid (see the module docstring for the box convention)."""

    k: int
    box: tuple[float, float, float, float]  #: (i0, j0, i1, j1), continuous CT index coordinates
    score: float
    center_lps: tuple[float, float, float]
    size_mm: tuple[float, float] = (0.0, 0.0)  #: box extent along i and j (mm)


@dataclass
class Track3D:
    """Boxes on consecutive slices linked into one 3-D candidate."""

    detections: list[Detection2D] = field(default_factory=list)

    @property
    def score(self) -> float:
        """Maximum box score of the track."""
        return max(d.score for d in self.detections)

    @property
    def n_slices(self) -> int:
        return len(self.detections)

    @property
    def k_range(self) -> tuple[int, int]:
        return self.detections[0].k, self.detections[-1].k

    @property
    def center_lps(self) -> np.ndarray:
        """Score-weighted mean of the box centres (LPS mm)."""
        w = np.array([d.score for d in self.detections]) + 1e-6
        c = np.array([d.center_lps for d in self.detections])
        return (w[:, None] * c).sum(0) / w.sum()

    @property
    def best(self) -> Detection2D:
        return max(self.detections, key=lambda d: d.score)


def to_working_scale(hu: np.ndarray) -> np.ndarray:
    """``(clip(HU, -1000, 500) + 1000) / 1000`` as float32 (air 0, water 1, 500 HU -> 1.5)."""
    return ((np.clip(hu.astype(np.float32, copy=False), -1000.0, 500.0) + 1000.0) / 1000.0).astype(np.float32)


def check_axial(ct: Volume) -> None:
    """Raise ``InputError`` unless the CT's k axis is within :data:`MAX_TILT_DEG` of the patient S/I axis."""
    kz = abs(float(np.asarray(ct.direction)[2, 2]))
    if kz < math.cos(math.radians(MAX_TILT_DEG)):
        raise InputError(
            "The nodule detector works on axial slices, but this CT's slice axis (k) is not along the patient's "
            f"head-feet axis (angle {math.degrees(math.acos(min(kz, 1.0))):.0f} degrees). Resample the CT onto an "
            "axial grid first (e.g. Slicer's 'Resample Scalar/Vector/DWI Volume' or 'Orient Scalar Volume' to axial).")


def context_stack(work: np.ndarray, k: int, spacing_k: float, offset_mm: float = CONTEXT_MM) -> np.ndarray:
    """(3, J, I) stack: slices at ``k - offset/spacing_k``, ``k``, ``k + offset/spacing_k`` of ``work`` (K, J, I),
    linearly interpolated in k, clamped to the volume."""
    nk = work.shape[0]
    out = []
    for z in (k - offset_mm / spacing_k, float(k), k + offset_mm / spacing_k):
        z = min(max(z, 0.0), nk - 1.0)
        k0 = int(math.floor(z))
        k1 = min(k0 + 1, nk - 1)
        f = z - k0
        out.append(work[k0] if f < 1e-6 else (1 - f) * work[k0] + f * work[k1])
    return np.stack(out).astype(np.float32, copy=False)


def _resize_stack(stack: np.ndarray, out_hw: tuple[int, int]) -> np.ndarray:
    """Bilinear (align_corners=False) in-plane resize of a (K, H, W) float array with torch."""
    import torch
    import torch.nn.functional as F

    if tuple(stack.shape[-2:]) == tuple(out_hw):
        return np.ascontiguousarray(stack, dtype=np.float32)
    t = torch.from_numpy(np.ascontiguousarray(stack, dtype=np.float32))[:, None]
    return F.interpolate(t, size=out_hw, mode="bilinear", align_corners=False)[:, 0].numpy()


@dataclass
class SliceFrame:
    """Where the detector's images sit on the CT grid: in-plane crop ``[j0:j1, i0:i1]`` resampled to ``out_hw``
    pixels of about ``spacing_mm``; ``ks`` = slices with lung; ``k_lo:k_hi`` = slices loaded (lung slices plus
    the reach of the context channels)."""

    ks: np.ndarray
    k_lo: int
    k_hi: int
    j0: int
    j1: int
    i0: int
    i1: int
    out_hw: tuple[int, int]

    @property
    def fj(self) -> float:
        """CT rows per output pixel."""
        return (self.j1 - self.j0) / self.out_hw[0]

    @property
    def fi(self) -> float:
        """CT columns per output pixel."""
        return (self.i1 - self.i0) / self.out_hw[1]

    def out_to_index(self, box: Sequence[float]) -> tuple[float, float, float, float]:
        """Output-pixel box (x0, y0, x1, y1; pixel u covers [u, u+1)) -> continuous CT index box (i0, j0, i1, j1)."""
        x0, y0, x1, y1 = (float(v) for v in box)
        return (x0 * self.fi - 0.5 + self.i0, y0 * self.fj - 0.5 + self.j0,
                x1 * self.fi - 0.5 + self.i0, y1 * self.fj - 0.5 + self.j0)

    def index_to_out(self, box: Sequence[float]) -> tuple[float, float, float, float]:
        """Inverse of :meth:`out_to_index`."""
        a0, b0, a1, b1 = (float(v) for v in box)
        return ((a0 + 0.5 - self.i0) / self.fi, (b0 + 0.5 - self.j0) / self.fj,
                (a1 + 0.5 - self.i0) / self.fi, (b1 + 0.5 - self.j0) / self.fj)


def slice_frame(ct: Volume, lung_mask: np.ndarray, spacing_mm: float = 1.0, margin_mm: float = 10.0) -> SliceFrame:
    """The :class:`SliceFrame` of ``ct`` for a lung mask (array on the CT grid, not empty)."""
    si, sj, sk = ct.spacing
    lm = np.asarray(lung_mask) > 0
    bs = bounding_slices(lm)
    pj, pi = int(math.ceil(margin_mm / sj)), int(math.ceil(margin_mm / si))
    j0, j1 = max(bs[1].start - pj, 0), min(bs[1].stop + pj, ct.shape[1])
    i0, i1 = max(bs[2].start - pi, 0), min(bs[2].stop + pi, ct.shape[2])
    ks = np.flatnonzero(lm.any(axis=(1, 2)))
    reach = int(math.ceil(CONTEXT_MM / sk)) + 1
    k_lo, k_hi = max(int(ks[0]) - reach, 0), min(int(ks[-1]) + reach + 1, ct.shape[0])
    out_hw = (max(int(round((j1 - j0) * sj / spacing_mm)), 8), max(int(round((i1 - i0) * si / spacing_mm)), 8))
    return SliceFrame(ks, k_lo, k_hi, j0, j1, i0, i1, out_hw)


def working_slab(ct: Volume, frame: SliceFrame) -> np.ndarray:
    """Slices ``k_lo:k_hi`` of the CT, cropped to the frame, on the working scale and resampled in-plane to the
    frame's ``out_hw`` (float32, (K, H, W)). Channel stacks for slice k: ``context_stack(slab, k - k_lo, sk)``."""
    work = to_working_scale(np.asarray(ct.array[frame.k_lo:frame.k_hi, frame.j0:frame.j1, frame.i0:frame.i1]))
    return _resize_stack(work, frame.out_hw)


def detect_nodules(model: Any, ct: Volume, lung: Volume, *, spacing_mm: float = 1.0, score_min: float = 0.05,
                   margin_mm: float = 10.0, batch_size: int = 8,
                   progress: Optional[Callable[[float, str], Any]] = None,
                   cancel: Optional[Any] = None) -> list[Detection2D]:
    """Detector boxes on every axial slice of ``ct`` (HU) that contains lung (``lung``: mask on the CT grid).

    ``progress(fraction, message)`` (e.g. an ``engine.progress.Progress``) is called per batch if given; ``cancel``
    (an ``engine.progress.CancelToken``) is checked per batch and raises ``errors.Cancelled``. Returns
    detections with ``score >= score_min``, sorted by slice then decreasing score."""
    import torch

    check_axial(ct)
    if lung.shape != ct.shape:
        raise InputError(f"The lung mask ({lung.shape}) is not on the CT grid ({ct.shape}).")
    lmask = np.asarray(lung.array) > 0
    if not lmask.any():
        return []
    si, sj, sk = ct.spacing
    frame = slice_frame(ct, lmask, spacing_mm, margin_mm)
    slab = working_slab(ct, frame)
    ks = frame.ks
    was_training = model.training
    model.eval()
    dets: list[Detection2D] = []
    try:
        for b0 in range(0, len(ks), batch_size):
            if cancel is not None:
                cancel.check()
            kb = ks[b0:b0 + batch_size]
            with torch.no_grad():
                outs = model([torch.from_numpy(context_stack(slab, int(k) - frame.k_lo, sk)) for k in kb])
            for k, o in zip(kb, outs):
                sc = o["scores"].numpy()
                keep = sc >= score_min
                for bo, s in zip(o["boxes"].numpy()[keep], sc[keep]):
                    b = frame.out_to_index(bo)
                    c = ct.index_to_lps([[(b[0] + b[2]) / 2, (b[1] + b[3]) / 2, float(k)]])[0]
                    dets.append(Detection2D(int(k), tuple(float(v) for v in b), float(s),
                                            tuple(float(v) for v in c), ((b[2] - b[0]) * si, (b[3] - b[1]) * sj)))
            if progress is not None:
                progress(min(1.0, (b0 + len(kb)) / len(ks)), f"nodule detector: slice {b0 + len(kb)}/{len(ks)}")
    finally:
        model.train(was_training)
    dets.sort(key=lambda d: (d.k, -d.score))
    return dets


def box_iou(a: Sequence[float], b: Sequence[float]) -> float:
    """IoU of two (x0, y0, x1, y1) boxes."""
    iw = min(a[2], b[2]) - max(a[0], b[0])
    ih = min(a[3], b[3]) - max(a[1], b[1])
    if iw <= 0 or ih <= 0:
        return 0.0
    inter = iw * ih
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return float(inter / union) if union > 0 else 0.0


def group_detections_3d(dets: Sequence[Detection2D], *, iou_min: float = 0.3, max_gap: int = 1,
                        min_score: float = 0.0) -> list[Track3D]:
    """Link boxes on consecutive slices into 3-D tracks.

    Slices are visited in increasing k; each box (highest score first) joins the open track whose last box lies
    1..``max_gap`` slices below and overlaps it in-plane with IoU > ``iou_min`` (best IoU wins; a track takes at
    most one box per slice), otherwise it starts a new track. Track score = max box score. Returns tracks sorted by
    decreasing score."""
    by_k: dict[int, list[Detection2D]] = {}
    for d in dets:
        if d.score >= min_score:
            by_k.setdefault(d.k, []).append(d)
    tracks: list[Track3D] = []
    for k in sorted(by_k):
        open_tracks = [t for t in tracks if 1 <= k - t.detections[-1].k <= max_gap]
        taken: set[int] = set()
        for d in sorted(by_k[k], key=lambda d: -d.score):
            best, best_iou = None, iou_min
            for ti, t in enumerate(open_tracks):
                if ti in taken:
                    continue
                iou = box_iou(t.detections[-1].box, d.box)
                if iou > best_iou:
                    best, best_iou = ti, iou
            if best is None:
                tracks.append(Track3D([d]))
            else:
                taken.add(best)
                open_tracks[best].detections.append(d)
    tracks.sort(key=lambda t: -t.score)
    return tracks
