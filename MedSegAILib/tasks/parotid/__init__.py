"""Left and right parotid glands in head-and-neck CT (Tyagi et al.: residual LayerNorm 3-D U-Net or CBAM attention
3-D U-Net, hybrid Dice + focal loss), with the gaps of the published description filled and documented.

Pipeline of :meth:`ParotidTask.run` (constants from the model manifest's ``input`` dict, see :mod:`.preprocess`):

1. check the input: a 3-D CT in HU (:func:`MedSegAILib.core.validate.check_ct_hu`), large enough for one network
   window (128 x 128 x 64 mm);
2. **localise** both glands on a 4 mm patient-aligned grid (small 3-D U-Net); no gland-sized region -> the CT does
   not show the parotid region (an error that says so);
3. **segment** the box around the glands on the 1 mm patient-aligned grid with the selected network (residual
   U-Net or CBAM U-Net), sliding 128 x 128 x 64 windows, optionally averaged with the mirrored volume (left and
   right channels swapped back);
4. probabilities -> the input grid (linear), arg-max there; labels are never interpolated;
5. post-process (:mod:`.postprocess`): no gland crosses the midline, one component per side, holes filled;
6. a table of the glands' volumes, centres, extents, mean HU and network confidence (the front ends draw the
   overlay picture).

The patient's left and right come from the volume's geometry (the canonical grid of :mod:`.preprocess`), never
from array order, so a flipped or oblique volume gets the same, correct labels.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Mapping, Optional

import numpy as np

from MedSegAILib.core.volume import Volume, lps_to_ras_points
from MedSegAILib.errors import InputError
from MedSegAILib.tasks.base import (
    ANATOMICAL_STRUCTURE,
    LEFT,
    RIGHT,
    CodedTerm,
    Column,
    InputSpec,
    LabelInfo,
    RunContext,
    Table,
    Task,
    TaskResult,
    param,
)
from MedSegAILib.tasks.parotid import preprocess as pp

if TYPE_CHECKING:
    from MedSegAILib.zoo.registry import LoadedModel

#: SNOMED CT "Parotid gland structure" (SRT T-61100, a paired structure); laterality as the type modifier.
PAROTID = CodedTerm("SCT", "45289007", "Parotid gland")

RIGHT_PAROTID = LabelInfo(value=pp.RIGHT, name="Right parotid gland", color=(0.95, 0.60, 0.25),
                          category=ANATOMICAL_STRUCTURE, type=PAROTID, type_modifier=RIGHT)
LEFT_PAROTID = LabelInfo(value=pp.LEFT, name="Left parotid gland", color=(0.30, 0.65, 0.95),
                         category=ANATOMICAL_STRUCTURE, type=PAROTID, type_modifier=LEFT)

#: a segmented gland below this volume is reported as implausibly small (adult parotids are ~10-50 mL)
SMALL_GLAND_ML = 5.0
#: the mean probability of parotid tissue (either side) inside a gland, below which the user is told to check it
LOW_CONFIDENCE = 0.75


@dataclass
class ParotidParameters:
    mirror_averaging: bool = param(
        True, "Average the network's output with that of the left-right mirrored CT (left and right channels "
              "swapped back): steadier borders, twice the network time."
    )
    postprocess: bool = param(
        True, "Post-process: remove anything across the midline, keep one component per gland, fill holes."
    )


class ParotidTask(Task):
    id = "parotid"
    title = "Parotid glands (CT)"
    description = (
        "Segments the left and right parotid glands in a head-and-neck CT (the patient's left and right, whatever "
        "the volume's orientation) and measures their volumes."
    )
    inputs = (
        InputSpec(role="image", title="head-and-neck CT", modality="CT", dims=3,
                  description="CT in Hounsfield units covering the parotid region (skull base to below the "
                              "mandibular angle), any orientation, contrast or not."),
    )
    Parameters = ParotidParameters
    labels = (RIGHT_PAROTID, LEFT_PAROTID)
    default_model = "parotid-resunet3d"

    # ------------------------------------------------------------------------------------------ checks
    def validate_inputs(self, inputs: Mapping[str, Volume]) -> None:
        from MedSegAILib.core.validate import check_ct_hu

        super().validate_inputs(inputs)
        vol = inputs["image"]
        check_ct_hu(vol, "head-and-neck CT")
        if max(vol.spacing) > 6.0:
            raise InputError(
                f"The CT has {max(vol.spacing):.1f} mm voxels; parotid segmentation needs slices of at most 6 mm "
                "(typical head-and-neck CT: 0.5-1.2 mm pixels, 1-3 mm slices)."
            )
        lo, hi = pp.box_of(vol)
        extent = hi - lo
        need = pp.ParotidConfig().patch_mm
        if np.any(extent < need - 1e-6):
            raise InputError(
                f"The CT covers only {extent[0]:.0f} x {extent[1]:.0f} x {extent[2]:.0f} mm (x, y, z); the network "
                f"needs at least one {need[0]:.0f} x {need[1]:.0f} x {need[2]:.0f} mm window, and the parotid "
                "region (skull base to below the mandible) is taller than that. Load the full head-and-neck CT, "
                "not a crop."
            )

    # ------------------------------------------------------------------------------------------ training
    def training_adapter(self, spec: Any) -> Any:
        """Fine-tuning of the model's ``segmenter`` on corrected gland masks
        (:class:`MedSegAILib.tasks.parotid.finetuning.ParotidAdapter`)."""
        from MedSegAILib.tasks.parotid.finetuning import ParotidAdapter

        return ParotidAdapter(spec)

    # ------------------------------------------------------------------------------------------ run
    def run(self, inputs: Mapping[str, Volume], params: Any, model: Optional["LoadedModel"],
            ctx: RunContext) -> TaskResult:
        from MedSegAILib.engine.inference import sliding_window_inference
        from MedSegAILib.tasks.parotid.postprocess import clean_glands

        params = params if params is not None else ParotidParameters()
        t_start = time.perf_counter()
        prog = ctx.progress
        self.validate_inputs(inputs)
        self.check_model(model, ("localizer", "segmenter"))
        assert model is not None
        vol = inputs["image"]
        cfg = pp.ParotidConfig.from_mapping(model.spec.input)
        messages: list[str] = []
        timings: dict[str, float] = {}

        # ---- 1. localisation
        prog(0.0, "Locating the parotid glands")
        t0 = time.perf_counter()
        x_loc, loc_grid = pp.localizer_input(vol, cfg)
        ctx.cancel.check()
        p_loc = sliding_window_inference(
            model.networks["localizer"], x_loc, loc_grid.shape, ctx=ctx, overlap=0.0, batch_size=1,
            activation="softmax", progress=prog.sub(0.02, 0.1),
            patch_multiple=max(1, cfg.localizer_divisor // cfg.localizer_pool),
        )
        loc = pp.localise(p_loc, loc_grid, cfg, x_loc[0])
        timings["localisation_s"] = time.perf_counter() - t0
        if not loc.glands:
            raise InputError(
                "No parotid gland was found in this CT. The task needs a head-and-neck CT that covers the parotid "
                "region (from the skull base to below the angle of the mandible); check that the right volume is "
                "selected and that it is a CT of the head and neck."
            )
        ctx.cancel.check()

        # ---- 2. segmentation of the box around the glands, 1 mm, patient-aligned
        prog(0.1, "Segmenting the parotid glands")
        t0 = time.perf_counter()
        lo, hi = loc.box(cfg.roi_margin_mm)  # type: ignore[misc]
        if len(loc.glands) == 1:  # also look where the other gland would be: the box mirrored about the body centre
            mx = pp.body_centre_x(x_loc[0], loc_grid, next(iter(loc.glands.values())))
            if mx is not None:
                lo, hi = np.minimum(lo, [2 * mx - hi[0], lo[1], lo[2]]), np.maximum(hi, [2 * mx - lo[0], hi[1], hi[2]])
        x, grid = pp.segmenter_input(vol, lo, hi, cfg)
        ctx.cancel.check()
        net = model.networks["segmenter"]
        n_pass = 2 if params.mirror_averaging else 1
        probs = sliding_window_inference(net, x, cfg.patch, ctx=ctx, overlap=cfg.overlap, batch_size=1,
                                         activation="softmax", progress=prog.sub(0.1, 0.1 + 0.6 / n_pass))
        if params.mirror_averaging:
            ctx.cancel.check()
            pm = sliding_window_inference(net, np.ascontiguousarray(x[..., ::-1]), cfg.patch, ctx=ctx,
                                          overlap=cfg.overlap, batch_size=1, activation="softmax",
                                          progress=prog.sub(0.4, 0.7))
            pm = pm[..., ::-1][[0, pp.LEFT, pp.RIGHT]]  # mirror back: the mirrored "right" gland is the left one
            probs = 0.5 * (probs + pm)
            del pm
        timings["segmentation_s"] = time.perf_counter() - t0
        ctx.cancel.check()

        # ---- 3. back to the input grid
        prog(0.72, "Mapping to the input grid")
        t0 = time.perf_counter()
        p_in = pp.probabilities_to_input(probs, grid, vol.geometry())
        labels = np.argmax(p_in, axis=0).astype(np.uint8)
        p_gland = 1.0 - p_in[0]  # parotid tissue, either side: the side comes from the geometry (post-processing)
        del p_in, probs
        timings["resample_back_s"] = time.perf_counter() - t0
        ctx.cancel.check()

        # ---- 4. post-processing
        post: dict = {}
        if params.postprocess:
            prog(0.85, "Post-processing")
            t0 = time.perf_counter()
            labels, post = clean_glands(labels, vol)
            timings["postprocess_s"] = time.perf_counter() - t0
        ctx.cancel.check()

        # ---- 5. measurements
        prog(0.92, "Measuring")
        confidence = {side: float(p_gland[labels == side].mean()) if (labels == side).any() else float("nan")
                      for side in (pp.RIGHT, pp.LEFT)}
        del p_gland
        label_vol = Volume(labels, vol.spacing, vol.origin, vol.direction.copy(),
                           {"is_labelmap": True, "modality": "SEG"})
        table = self._volume_table(label_vol, vol, confidence)
        for side, lab in ((pp.RIGHT, RIGHT_PAROTID), (pp.LEFT, LEFT_PAROTID)):
            ml = float((labels == side).sum() * vol.voxel_volume_mm3 / 1000.0)
            if ml == 0:
                messages.append(f"No {lab.name.lower()} was found: it may be absent (resected), outside the field "
                                "of view or replaced by tumour. Check the result.")
            elif 0 < ml < SMALL_GLAND_ML:
                messages.append(f"The {lab.name.lower()} is only {ml:.1f} mL (adult glands are about 10-50 mL); "
                                "check it (resection, atrophy or a partial field of view).")
            if np.isfinite(confidence[side]) and confidence[side] < LOW_CONFIDENCE:
                messages.append(f"The network is unsure about the {lab.name.lower()} (mean probability "
                                f"{confidence[side]:.2f}); review its border.")
        prog(1.0, "Done")
        timings["total_run_s"] = time.perf_counter() - t_start
        for k, v in timings.items():
            ctx.add_time(k, v)
        provenance = {
            "method": "3-D U-Net localiser (8 mm) + 3-D segmenter (1 mm, 128x128x64 windows) on a patient-aligned "
                      "grid; probabilities mapped back to the input grid",
            "preprocessing": cfg.to_mapping(),
            "localisation": {pp.SIDE_NAMES[s]: {"centre_lps": [float(v) for v in g.centre_lps],
                                                "coarse_volume_ml": g.volume_ml,
                                                "mean_probability": g.mean_probability}
                             for s, g in loc.glands.items()},
            "segmented_box_lps": {"lo": [float(v) for v in grid.origin],
                                  "shape_kji": list(grid.shape)},
            "postprocess": post,
            "parameters": {"mirror_averaging": bool(params.mirror_averaging),
                           "postprocess": bool(params.postprocess)},
            "timings_s": {k: round(float(v), 4) for k, v in timings.items()},
        }
        return TaskResult(task_id=self.id, labelmap=label_vol, labels=list(self.labels), reference_role="image",
                          tables=[table], provenance=provenance, messages=messages)

    # ------------------------------------------------------------------------------------------ table
    @staticmethod
    def _volume_table(labels: Volume, image: Volume, confidence: Mapping[int, float]) -> Table:
        cols = [Column("Structure"), Column("Volume", "mL"), Column("Centre R", "mm"), Column("Centre A", "mm"),
                Column("Centre S", "mm"), Column("Cranio-caudal extent", "mm"), Column("Mean CT number", "HU"),
                Column("Mean parotid probability")]
        rows = []
        arr = labels.array
        for lab in (RIGHT_PAROTID, LEFT_PAROTID):
            idx = np.argwhere(arr == lab.value)
            if idx.size == 0:
                rows.append([lab.name, 0.0, float("nan"), float("nan"), float("nan"), 0.0, float("nan"),
                             float("nan")])
                continue
            ml = len(idx) * image.voxel_volume_mm3 / 1000.0
            c_ras = lps_to_ras_points(labels.index_to_lps(idx.mean(0)[::-1][None]))[0]
            s = labels.index_to_lps(idx[:, ::-1].astype(float))[:, 2]
            hu = float(np.asarray(image.array)[arr == lab.value].mean())
            rows.append([lab.name, float(ml), float(c_ras[0]), float(c_ras[1]), float(c_ras[2]),
                         float(s.max() - s.min() + np.abs(labels.direction[2]) @ np.asarray(labels.spacing)), hu, float(confidence[lab.value])])
        return Table("Parotid volumes", cols, rows,
                     description="Per gland: volume, centre (RAS), cranio-caudal extent, mean CT number, and the "
                                 "mean softmax probability of parotid tissue (either gland) inside it.")

