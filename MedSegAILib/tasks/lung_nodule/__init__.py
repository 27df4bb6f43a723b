"""Lung nodules in chest CT (LNHG): WGAN-GP generator segmentation, Faster R-CNN (GIoU) false-positive reduction,
and intra-nodular heterogeneity maps — METHODS.md section 2, with the public code's bugs fixed.

Whole-scan mode (:meth:`LungNoduleTask.run` without a point):

1. check the input: a 3-D CT in HU (:func:`MedSegAILib.core.validate.check_ct_hu`), slices of at most 5 mm;
2. **lung field** (:mod:`.lungs`): no lungs in the field of view -> an error that says so;
3. **detector** (:mod:`.detection`, Faster R-CNN on axial slices with their neighbours at +-2.5 mm): boxes with a
   low score floor, linked across slices into 3-D tracks; every track is a place where the generator looks;
4. **generator** (:mod:`.segmentation`, the WGAN-GP generator, a 3-D residual fully-convolutional network) on a
   window around each track: its *nodule image* (the CT density inside the nodule, exactly 0 elsewhere) is
   thresholded into **candidates** (connected components touching the track);
5. **fusion**: a candidate is kept when the detector supports it (largest score of a track on it) at or above the
   threshold chosen on validation scans (model manifest ``fusion_threshold``), its equivalent diameter is at least
   ``min_diameter_mm`` and it lies in the lung field; the **masks come from the generator**;
6. measurements, a heterogeneity map and its picture (:mod:`.measure`).

The seed paper ran the generator on the whole lung and removed candidates outside the detector's boxes; on two CPU
cores a full-resolution 3-D generator over a whole lung takes minutes, so here the detector (cheap, 2-D) decides
*where* the generator looks, with a low score floor, and the fusion threshold decides *what is kept*. The result is
the same rule -- generator masks, kept where the detector supports them -- at a fraction of the cost.

Single-nodule mode (parameter ``point_ras``): the generator runs on one window around the point, and the nodule
under (or within 5 mm of) the point is returned; the detector does not run (its score is reported as NaN). A point
outside the volume or outside the lungs is refused with a clear message.

No nodule found is a valid result (an empty segmentation, a message), not an error.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Mapping, Optional

import numpy as np

from MedSegAILib.core.volume import Volume
from MedSegAILib.errors import InputError
from MedSegAILib.tasks.base import (
    MORPHOLOGICALLY_ALTERED_STRUCTURE,
    CodedTerm,
    InputSpec,
    LabelInfo,
    PointList,
    RunContext,
    Task,
    TaskResult,
    param,
)

if TYPE_CHECKING:
    from MedSegAILib.zoo.registry import LoadedModel

#: SNOMED CT "Nodule (morphologic abnormality)" in the lung (SNOMED CT 39607008 "Lung structure")
NODULE = CodedTerm("SCT", "27925004", "Nodule")
LUNG = CodedTerm("SCT", "39607008", "Lung")

#: colours of nodules 1, 2, ... (repeating)
_COLOURS = [(0.95, 0.35, 0.25), (0.25, 0.75, 0.95), (0.55, 0.90, 0.30), (0.95, 0.80, 0.20), (0.80, 0.40, 0.95),
            (0.20, 0.90, 0.75), (0.95, 0.55, 0.75), (0.60, 0.60, 1.00)]


def nodule_label(n: int) -> LabelInfo:
    """Label ``n`` (1-based): "Lung nodule n" with standard terminology."""
    return LabelInfo(value=n, name=f"Lung nodule {n}", color=_COLOURS[(n - 1) % len(_COLOURS)],
                     category=MORPHOLOGICALLY_ALTERED_STRUCTURE, type=NODULE, region=LUNG)


@dataclass
class LungNoduleConfig:
    """Constants of a model (manifest ``input``); the defaults are those of the shipped model."""

    nodule_threshold: float = 0.1  #: generator nodule image -> mask (relative density)
    fusion_threshold: float = 0.5  #: detector support needed to keep a candidate (chosen on validation scans)
    proposal_score_min: float = 0.05  #: detector score floor for the places the generator looks at
    window_margin_mm: float = 8.0  #: margin around a detector track for the generator's window
    #: the generator's window (x, y, z mm): the training box, larger only for large nodules (its group norm's
    #: statistics depend on the window's content, so windows stay close to the training size)
    window_mm: tuple[float, float, float] = (36.0, 36.0, 32.0)
    max_window_mm: float = 96.0
    max_proposals: int = 30
    point_search_mm: float = 5.0  #: single-nodule mode: nearest nodule voxel within this distance of the point
    min_lung_fraction: float = 0.3  #: share of a candidate inside the lung field (juxtapleural ones included)
    #: a candidate larger than this equivalent diameter is not a nodule (a nodule is <= 30 mm by definition; larger
    #: pieces are chest wall, mediastinum or consolidation the generator outlined around a proposal)
    max_diameter_mm: float = 35.0

    @classmethod
    def from_mapping(cls, m: Optional[Mapping[str, Any]]) -> "LungNoduleConfig":
        names = set(cls.__dataclass_fields__)
        return cls(**{k: v for k, v in dict(m or {}).items() if k in names})


@dataclass
class LungNoduleParameters:
    point_ras: str = param(
        "", "Single-nodule mode: a point R,A,S (mm) on one nodule; only that nodule is segmented (seconds). Empty: "
            "search the whole scan.", label="Nodule point (R,A,S)"
    )
    score_threshold: float = param(
        -1.0, "Detector support needed to keep a nodule (0-1); -1 uses the model's threshold chosen on validation "
              "scans. Lower finds more nodules and more false positives.", min=-1.0, max=1.0
    )
    min_diameter_mm: float = param(3.0, "Smallest equivalent diameter reported (mm).", min=0.0, max=30.0)


@dataclass
class _Candidate:
    mask: np.ndarray  #: boolean, on the CT grid, restricted to ``box``
    box: tuple[slice, ...]
    score: float
    tracks: list[int] = field(default_factory=list)


def parse_point_ras(text: str) -> np.ndarray:
    """``"R,A,S"`` -> LPS point (mm); an :class:`InputError` for anything else."""
    parts = [p for p in text.replace(";", ",").replace(" ", ",").split(",") if p.strip()]
    try:
        vals = [float(p) for p in parts]
    except ValueError:
        vals = []
    if len(vals) != 3 or not np.all(np.isfinite(vals)):
        raise InputError(f"The nodule point must be three numbers R,A,S in millimetres (e.g. -85.2,40.1,-120); "
                         f"got {text!r}.")
    r, a, s = vals
    return np.array([-r, -a, s], dtype=float)


class LungNoduleTask(Task):
    id = "lung-nodule"
    title = "Lung nodules (CT)"
    description = (
        "Finds and segments lung nodules in a chest CT (WGAN-GP generator masks kept where a Faster R-CNN detector "
        "supports them), maps intra-nodular heterogeneity, and measures each nodule; or segments the one nodule "
        "under a point."
    )
    inputs = (
        InputSpec(role="image", title="chest CT", modality="CT", dims=3,
                  description="Chest CT in Hounsfield units (any orientation, slices of at most 5 mm)."),
    )
    Parameters = LungNoduleParameters
    labels = ()  # one label per nodule found: "Lung nodule 1", "Lung nodule 2", ...
    default_model = "lung-nodule-lnhg"

    def training_adapter(self, spec: Any) -> Any:
        """Fine-tuning of the LNHG generator on nodule masks (any non-zero label = nodule):
        :class:`MedSegAILib.tasks.lung_nodule.finetuning.LungGeneratorAdapter`."""
        from MedSegAILib.tasks.lung_nodule.finetuning import LungGeneratorAdapter

        return LungGeneratorAdapter(spec)

    # ------------------------------------------------------------------------------------------ checks
    def validate_inputs(self, inputs: Mapping[str, Volume]) -> None:
        from MedSegAILib.core.validate import check_ct_hu

        super().validate_inputs(inputs)
        vol = inputs["image"]
        check_ct_hu(vol, "chest CT")
        sp = sorted(vol.spacing)
        if sp[-1] > 5.0 or sp[1] > 1.5:
            raise InputError(
                f"The CT has {vol.spacing[0]:.2f} x {vol.spacing[1]:.2f} x {vol.spacing[2]:.2f} mm voxels; lung "
                "nodule detection needs pixels of at most 1.5 mm and slices of at most 5 mm (a diagnostic chest CT: "
                "0.5-1 mm pixels, 0.6-2.5 mm slices)."
            )

    # ------------------------------------------------------------------------------------------ run
    def run(self, inputs: Mapping[str, Volume], params: Any, model: Optional["LoadedModel"],
            ctx: RunContext) -> TaskResult:
        params = params if params is not None else LungNoduleParameters()
        t_start = time.perf_counter()
        self.validate_inputs(inputs)
        point_mode = bool(str(params.point_ras).strip())
        self.check_model(model, ("generator",) if point_mode else ("generator", "detector"))
        assert model is not None
        ct = inputs["image"]
        cfg = LungNoduleConfig.from_mapping(model.spec.input)
        threshold = cfg.fusion_threshold if params.score_threshold < 0 else float(params.score_threshold)
        timings: dict[str, float] = {}
        messages: list[str] = []
        prog = ctx.progress

        if point_mode:
            point = parse_point_ras(params.point_ras)
            labels, nodule_image, scores, lung_ml = self._run_point(ct, point, model, cfg, params, ctx, timings,
                                                                     messages)
        else:
            labels, nodule_image, scores, lung_ml = self._run_scan(ct, model, cfg, params, threshold, ctx, timings,
                                                                    messages)
        ctx.cancel.check()

        # ---- measurements, map, picture
        prog(0.93, "Measuring the nodules")
        from MedSegAILib.tasks.lung_nodule import measure

        t0 = time.perf_counter()
        infos = [nodule_label(n + 1) for n in range(len(scores))]
        names = [i.name for i in infos]
        meas = [measure.measure_nodule(labels == (n + 1), ct, nodule_image, scores[n]) for n in range(len(scores))]
        table = measure.nodule_table(names, meas)
        hmap = measure.heterogeneity_map(ct, labels, nodule_image)
        picture = measure.heterogeneity_picture(ct, labels, hmap.volume.array, names)
        points = PointList("Lung nodule centroids", np.array([m.centroid_lps for m in meas]).reshape(-1, 3), names,
                           [f"{m.equivalent_diameter_mm:.1f} mm, score {m.score:.2f}" for m in meas])
        timings["measure_s"] = time.perf_counter() - t0
        if not scores:
            messages.append(
                "No lung nodule was found at the point." if point_mode else
                f"No lung nodule was found (detector support threshold {threshold:.2f}, smallest diameter "
                f"{params.min_diameter_mm:.0f} mm). Lower the score threshold to see weaker candidates."
            )
        label_vol = Volume(labels.astype(np.uint16 if len(scores) > 255 else np.uint8), ct.spacing, ct.origin,
                           ct.direction.copy(), {"is_labelmap": True, "modality": "SEG"})
        prog(1.0, "Done")
        timings["total_run_s"] = time.perf_counter() - t_start
        counts = {k: int(timings.pop(k)) for k in list(timings) if not k.endswith("_s")}
        for k, v in timings.items():
            ctx.add_time(k, v)
        provenance = {
            "method": ("WGAN-GP generator (3-D residual FCN) on one window around the given point" if point_mode else
                       "Faster R-CNN (GIoU on decoded boxes) proposals -> WGAN-GP generator nodule images -> "
                       "candidates kept where the detector's support >= threshold"),
            "mode": "single nodule" if point_mode else "whole scan",
            "config": cfg.__dict__.copy(),
            "fusion_threshold": float(threshold),
            "lung_volume_ml": float(lung_ml),
            "heterogeneity_map": measure.MAP_UNITS + f", colour map {measure.MAP_COLORMAP} {measure.MAP_WINDOW}",
            "timings_s": {k: round(float(v), 4) for k, v in timings.items()},
            "counts": counts,
        }
        if point_mode:
            provenance["point_ras"] = str(params.point_ras)
        return TaskResult(task_id=self.id, labelmap=label_vol, labels=infos, reference_role="image",
                          maps=[hmap], tables=[table], points=[points] if scores else [],
                          pictures=[picture] if picture is not None else [], provenance=provenance,
                          messages=messages)

    # ------------------------------------------------------------------------------------------ modes
    @staticmethod
    def _lungs(ct: Volume, ctx: RunContext, timings: dict[str, float], fast: bool) -> tuple[Volume, float]:
        from MedSegAILib.tasks.lung_nodule import lungs

        t0 = time.perf_counter()
        lung = lungs.lung_mask(ct, cancel=ctx.cancel, **({"grid_mm": 4.0} if fast else {}))
        ml = float(lungs.require_lungs(lung)["volume_ml"])
        timings["lung_mask_s"] = time.perf_counter() - t0
        ctx.cancel.check()
        return lung, ml

    def _run_point(self, ct: Volume, point_lps: np.ndarray, model: "LoadedModel", cfg: LungNoduleConfig,
                   params: LungNoduleParameters, ctx: RunContext, timings: dict[str, float],
                   messages: list[str]) -> tuple[np.ndarray, np.ndarray, list[float], float]:
        from MedSegAILib.tasks.lung_nodule import lungs
        from MedSegAILib.tasks.lung_nodule.segmentation import segment_region

        ijk = ct.lps_to_index(point_lps[None])[0]
        if np.any(ijk < -0.5) or np.any(ijk > np.asarray(ct.size_ijk) - 0.5):
            raise InputError("The nodule point lies outside the CT volume; place it on a nodule inside the image.")
        ctx.progress(0.0, "Checking the point")
        lung, lung_ml = self._lungs(ct, ctx, timings, fast=True)
        if not lungs.point_in_lung(lung, point_lps, tolerance_mm=5.0):
            raise InputError("The nodule point is not in a lung: place it on a lung nodule (a juxtapleural nodule "
                             "counts as inside the lung).")
        ctx.progress(0.3, "Segmenting the nodule at the point")
        t0 = time.perf_counter()
        labels = np.zeros(ct.array.shape, np.uint8)
        nodule_image = np.zeros(ct.array.shape, np.float32)
        size = np.asarray(cfg.window_mm, dtype=float)
        comp = None
        while True:
            img = segment_region(model.networks["generator"], ct, point_lps, tuple(size), device=ctx.device)
            comp = self._component_near(img, point_lps, cfg)
            if comp is None or not _touches_border(comp) or size.max() >= cfg.max_window_mm:
                break
            size = np.minimum(size * 1.5, cfg.max_window_mm)  # a large nodule: look again with a bigger window
        timings["generator_s"] = time.perf_counter() - t0
        if comp is None:
            return labels, nodule_image, [], lung_ml
        box = _box_in(ct, img)
        d = _equivalent_diameter(comp, ct)
        if d < params.min_diameter_mm:
            messages.append(f"The structure at the point is {d:.1f} mm across, below the smallest diameter "
                            f"reported ({params.min_diameter_mm:.0f} mm).")
            return labels, nodule_image, [], lung_ml
        if d > 30.0:
            messages.append(f"The structure at the point is {d:.0f} mm across (equivalent diameter): larger than a "
                            "nodule (<= 30 mm). Check that it is not chest wall, vessel or consolidation.")
        labels[box][comp] = 1
        nodule_image[box] = np.where(comp, img.array, 0.0)
        messages.append("Single-nodule mode: the detector did not run, so the nodule has no detector score.")
        return labels, nodule_image, [float("nan")], lung_ml

    def _run_scan(self, ct: Volume, model: "LoadedModel", cfg: LungNoduleConfig, params: LungNoduleParameters,
                  threshold: float, ctx: RunContext, timings: dict[str, float],
                  messages: list[str]) -> tuple[np.ndarray, np.ndarray, list[float], float]:
        from scipy import ndimage

        from MedSegAILib.tasks.lung_nodule.detection import detect_nodules, group_detections_3d
        from MedSegAILib.tasks.lung_nodule.segmentation import segment_region

        prog = ctx.progress
        prog(0.0, "Finding the lungs")
        lung, lung_ml = self._lungs(ct, ctx, timings, fast=False)

        prog(0.08, "Detecting nodule candidates (Faster R-CNN)")
        t0 = time.perf_counter()
        dets = detect_nodules(model.networks["detector"], ct, lung, score_min=cfg.proposal_score_min,
                              progress=prog.sub(0.08, 0.6), cancel=ctx.cancel)
        tracks = group_detections_3d(dets)  # strongest first
        timings["detector_s"] = time.perf_counter() - t0
        if len(tracks) > cfg.max_proposals:
            messages.append(f"{len(tracks)} detector proposals; the {cfg.max_proposals} strongest were examined.")
            tracks = tracks[: cfg.max_proposals]

        prog(0.6, "Segmenting the candidates (WGAN-GP generator)")
        t0 = time.perf_counter()
        nodule_image = np.zeros(ct.array.shape, np.float32)
        support = np.zeros(ct.array.shape, np.float32)  # the best track score that produced each voxel's candidate
        n_generator = 0
        for n, tr in enumerate(tracks):
            ctx.cancel.check()
            prog.sub(0.6, 0.9)(n / max(len(tracks), 1), f"candidate {n + 1}/{len(tracks)}")
            centre = np.asarray(tr.center_lps, dtype=float)
            ext = _track_extent_mm(tr, ct)
            # a weaker track on a candidate the generator has already outlined (tracks are strongest first): the
            # candidate's support is already at least this track's score, no need to run the generator again
            c_idx = np.rint(ct.lps_to_index(centre[None])[0][::-1]).astype(int)
            if np.all(c_idx >= 0) and np.all(c_idx < ct.array.shape) and \
                    nodule_image[tuple(c_idx)] > cfg.nodule_threshold:
                continue
            n_generator += 1
            size = np.clip(ext + 2 * cfg.window_margin_mm, cfg.window_mm, cfg.max_window_mm)
            img = segment_region(model.networks["generator"], ct, centre, tuple(size), device=ctx.device)
            comp = self._component_near(img, centre, cfg, radius_mm=max(cfg.point_search_mm, 0.5 * float(ext.min())))
            if comp is None:
                continue
            box = _box_in(ct, img)
            nodule_image[box] = np.maximum(nodule_image[box], np.where(comp, img.array, 0.0))
            support[box] = np.maximum(support[box], np.where(comp, np.float32(tr.score), 0.0))
        timings["generator_s"] = time.perf_counter() - t0
        timings["generator_windows"] = float(n_generator)

        # ---- fusion: components of the generator's candidates, kept where the detector supports them
        prog(0.9, "Fusing the branches")
        cand = nodule_image > cfg.nodule_threshold
        comp_lab, n_comp = ndimage.label(cand, structure=np.ones((3, 3, 3), bool))
        labels = np.zeros(ct.array.shape, np.uint8 if n_comp < 255 else np.uint16)
        kept: list[tuple[float, int]] = []
        lung_arr = np.asarray(lung.array) > 0
        objs = ndimage.find_objects(comp_lab)
        for c, sl in enumerate(objs, start=1):
            if sl is None:
                continue
            m = comp_lab[sl] == c
            score = float(support[sl][m].max())
            if score < threshold:
                continue
            d_eq = _equivalent_diameter(m, ct)
            if d_eq < params.min_diameter_mm or d_eq > cfg.max_diameter_mm:
                continue
            if float(lung_arr[sl][m].mean()) < cfg.min_lung_fraction:
                continue
            kept.append((score, c))
        kept.sort(key=lambda t: -t[0])
        out_image = np.zeros(ct.array.shape, np.float32)
        scores = []
        for n, (score, c) in enumerate(kept, start=1):
            sl = objs[c - 1]
            m = comp_lab[sl] == c
            labels[sl][m] = n
            out_image[sl][m] = nodule_image[sl][m]
            scores.append(score)
        return labels, out_image, scores, lung_ml

    # ------------------------------------------------------------------------------------------ helpers
    @staticmethod
    def _component_near(img: Volume, point_lps: np.ndarray, cfg: LungNoduleConfig,
                        radius_mm: Optional[float] = None) -> Optional[np.ndarray]:
        """The connected component of ``img > threshold`` at ``point_lps``, or the one nearest to it within
        ``radius_mm`` (default ``cfg.point_search_mm``); None when there is none."""
        from scipy import ndimage

        mask = np.asarray(img.array) > cfg.nodule_threshold
        if not mask.any():
            return None
        lab, n = ndimage.label(mask, structure=np.ones((3, 3, 3), bool))
        idx = np.argwhere(mask)
        xyz = img.index_to_lps(idx[:, ::-1].astype(float))
        dist = np.linalg.norm(xyz - point_lps[None], axis=1)
        best = int(np.argmin(dist))
        r = cfg.point_search_mm if radius_mm is None else radius_mm
        if dist[best] > r:
            return None
        k, j, i = idx[best]
        return lab == lab[k, j, i]


def _box_in(ct: Volume, sub: Volume) -> tuple[slice, ...]:
    """Index box of the sub-volume ``sub`` (same spacing/direction, cut from ``ct``) in ``ct``'s array."""
    lo = sub.meta.get("index_lo")
    ijk = np.asarray(lo, dtype=float) if lo is not None else ct.lps_to_index(np.asarray(sub.origin)[None])[0]
    start = np.rint(ijk).astype(int)[::-1]
    return tuple(slice(int(s), int(s) + n) for s, n in zip(start, sub.array.shape))


def _track_extent_mm(track: Any, ct: Volume) -> np.ndarray:
    """(x, y, z) extent of a detector track in mm: the largest box in-plane, the slices it spans (plus one)."""
    size = np.array([d.size_mm for d in track.detections], dtype=float).reshape(-1, 2)
    k0, k1 = track.k_range
    return np.array([size[:, 0].max(), size[:, 1].max(), (abs(k1 - k0) + 1) * ct.spacing[2]])


def _touches_border(mask: np.ndarray) -> bool:
    return bool(mask[0].any() or mask[-1].any() or mask[:, 0].any() or mask[:, -1].any() or mask[:, :, 0].any()
                or mask[:, :, -1].any())


def _equivalent_diameter(mask: np.ndarray, ct: Volume) -> float:
    return float((6.0 * mask.sum() * ct.voxel_volume_mm3 / np.pi) ** (1.0 / 3.0))


__all__ = ["LungNoduleTask", "LungNoduleParameters", "LungNoduleConfig", "nodule_label", "parse_point_ras"]
