"""Left-ventricular myocardium (and cavity) segmentation in myocardial-perfusion SPECT.

Pipeline of :meth:`MyocardiumSPECTTask.run` (all constants from the model's manifest ``input`` dict, the same
functions as the training recipe, see :mod:`.preprocess`):

1. validate the input (3-D NM volume, finite, not constant);
2. **localise** the LV: the whole field of view at ``localizer_spacing_mm`` (anti-aliased resampling, input
   direction kept), normalised by a high percentile, through the ``localizer`` network -> P(LV); the
   probability-weighted centroid of the largest component above threshold is the box centre;
3. **segment**: a fixed physical box (``segmenter_shape`` x ``segmenter_spacing_mm``) around that centre
   through the ``segmenter`` network -> softmax probabilities of background / myocardium / cavity; if the
   predicted LV is off-centre by more than a few mm the box is re-centred once and the network run again;
4. map the **probabilities** back to the original input grid (area-averaged where the input voxels are
   coarser, linear where finer), then argmax -- labels are never interpolated;
5. post-process (:func:`.postprocess.postprocess_lv`: main myocardium component + its cavity, tiny pockets;
   the cavity is never filled into the myocardium);
6. quantify (:func:`.quantify.quantify_lv`) and draw the 17-segment polar map (:func:`.polar_map.polar_map`).

The label map is returned on the input grid with identical geometry.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Mapping, Optional

import numpy as np

from MedSegAILib.core.volume import Volume
from MedSegAILib.errors import InputError
from MedSegAILib.tasks.base import (
    ANATOMICAL_STRUCTURE,
    CodedTerm,
    InputSpec,
    LabelInfo,
    RunContext,
    Task,
    TaskResult,
    param,
)
from MedSegAILib.tasks.mpi_myocardium import preprocess as pp

if TYPE_CHECKING:
    from MedSegAILib.finetune.adapter import TrainingAdapter
    from MedSegAILib.zoo.registry import LoadedModel, ModelSpec

#: Standard terminology of the two labels (SNOMED CT codes), in one place.
TERMS: dict[str, CodedTerm] = {
    "category": ANATOMICAL_STRUCTURE,  # SCT 123037004
    "myocardium": CodedTerm("SCT", "74281007", "Myocardium"),
    "left_ventricle": CodedTerm("SCT", "87878005", "Left ventricle"),
}

MYOCARDIUM_LABEL = LabelInfo(
    value=1,
    name="Left ventricle myocardium",
    color=(0.93, 0.36, 0.16),
    category=TERMS["category"],
    type=TERMS["myocardium"],
    region=TERMS["left_ventricle"],
)
CAVITY_LABEL = LabelInfo(
    value=2,
    name="Left ventricle cavity",
    color=(0.20, 0.50, 0.92),
    category=TERMS["category"],
    type=TERMS["left_ventricle"],
)

#: The box is re-centred (second segmenter pass) when the predicted LV centre is further than this from it.
RECENTRE_MM = 6.0
#: Below this mean LV probability the localisation is reported as uncertain.
LOW_CONFIDENCE = 0.7


@dataclass
class MyocardiumParameters:
    keep_largest_component: bool = param(
        True, "Post-process: keep the main myocardium component and the cavity it encloses, fill tiny pockets "
              "in the wall (the cavity is never filled)."
    )
    myocardium_density_g_per_ml: float = param(1.05, "Myocardial density used for the mass (g/mL).", min=0.8, max=1.3)
    polar_map: bool = param(True, "Compute the 17-segment relative-perfusion polar map.")


class MyocardiumSPECTTask(Task):
    id = "mpi-myocardium"
    title = "Myocardium (SPECT)"
    description = (
        "Segments the left-ventricular myocardium and cavity in a myocardial-perfusion SPECT volume, measures "
        "myocardial volume/mass, cavity volume and wall thickness, and draws a 17-segment polar map."
    )
    inputs = (
        InputSpec(role="image", title="SPECT volume", modality="NM", dims=3,
                  description="Reconstructed myocardial-perfusion SPECT (any orientation, 2-7 mm voxels)."),
    )
    Parameters = MyocardiumParameters
    labels = (MYOCARDIUM_LABEL, CAVITY_LABEL)
    default_model = "mpi-myocardium-unet3d"

    def training_adapter(self, spec: "ModelSpec") -> "TrainingAdapter":
        from MedSegAILib.tasks.mpi_myocardium.finetuning import MyocardiumAdapter

        return MyocardiumAdapter(spec)

    # ------------------------------------------------------------------------------------------ run
    def run(
        self,
        inputs: Mapping[str, Volume],
        params: Any,
        model: Optional["LoadedModel"],
        ctx: RunContext,
    ) -> TaskResult:
        from MedSegAILib.engine.inference import sliding_window_inference

        params = params if params is not None else MyocardiumParameters()
        t_start = time.perf_counter()
        prog = ctx.progress
        self.validate_inputs(inputs)
        vol = inputs["image"]
        self.check_model(model, ("localizer", "segmenter"))
        assert model is not None
        cfg = pp.PreprocessConfig.from_mapping(model.spec.input)
        messages: list[str] = []
        timings: dict[str, float] = {}
        ctx.cancel.check()

        # ---- 1. localisation
        prog(0.0, "Locating the left ventricle")
        t0 = time.perf_counter()
        x_loc, loc_grid = pp.prepare_localizer_input(vol, cfg)
        ctx.cancel.check()
        p_loc = sliding_window_inference(
            model.networks["localizer"], x_loc, loc_grid.shape, ctx=ctx, overlap=0.0, batch_size=1,
            activation="softmax", progress=prog.sub(0.02, 0.15),
        )
        loc = pp.localise_lv(p_loc[1], loc_grid, cfg)
        timings["localisation_s"] = time.perf_counter() - t0
        if loc.fallback:
            messages.append(
                "The left ventricle could not be located with confidence (no region above the localizer threshold); "
                "the most LV-like spot was used. Check the result, or crop the volume around the heart."
            )
        elif loc.mean_probability < LOW_CONFIDENCE:
            messages.append(
                f"Left-ventricle localisation confidence is low (mean probability {loc.mean_probability:.2f}); "
                "check that the segmentation is on the heart."
            )
        if loc.n_components > 1:
            messages.append(
                f"{loc.n_components} LV-like regions were found; the largest was segmented."
            )
        ctx.cancel.check()

        # ---- 2. segmentation (with one re-centring pass if needed)
        prog(0.15, "Segmenting the myocardium")
        t0 = time.perf_counter()
        center = np.asarray(loc.center_lps, float)
        recentred = False
        probs, seg_grid = self._segment(model, vol, center, cfg, ctx, prog.sub(0.15, 0.45))
        shift = self._lv_centre(probs, seg_grid)
        if shift is not None and np.linalg.norm(shift - center) > RECENTRE_MM:
            ctx.cancel.check()
            center = shift
            recentred = True
            probs, seg_grid = self._segment(model, vol, center, cfg, ctx, prog.sub(0.45, 0.6))
        timings["segmentation_s"] = time.perf_counter() - t0
        ctx.cancel.check()
        if self._touches_box_border(probs):
            messages.append(
                "The segmented left ventricle reaches the border of the network's "
                f"{cfg.segmenter_box_mm:.0f} mm box; a very large heart or a wrong localisation may have cut it."
            )

        # ---- 3. back to the input grid
        prog(0.6, "Mapping to the input grid")
        t0 = time.perf_counter()
        p_in = pp.probabilities_to_grid(probs, seg_grid, vol.geometry())
        labels = np.argmax(p_in, axis=0).astype(np.uint8)
        timings["resample_back_s"] = time.perf_counter() - t0
        ctx.cancel.check()

        # ---- 4. post-processing
        if params.keep_largest_component:
            prog(0.7, "Post-processing")
            t0 = time.perf_counter()
            from MedSegAILib.tasks.mpi_myocardium.postprocess import postprocess_lv

            labels = postprocess_lv(labels, vol.spacing)
            timings["postprocess_s"] = time.perf_counter() - t0
        ctx.cancel.check()
        if not (labels == 1).any():
            messages.append("No myocardium was found in this volume.")
        label_vol = Volume(labels, vol.spacing, vol.origin, vol.direction.copy(),
                           {"is_labelmap": True, "modality": "SEG"})

        # ---- 5. quantification + polar map
        tables, pictures = [], []
        prog(0.8, "Quantifying")
        t0 = time.perf_counter()
        try:
            from MedSegAILib.tasks.mpi_myocardium.quantify import quantify_lv

            tables.append(quantify_lv(label_vol, vol, density_g_per_ml=params.myocardium_density_g_per_ml))
        except Exception as exc:  # noqa: BLE001 - a failed measurement must not lose the segmentation
            messages.append(f"The LV measurements could not be computed: {exc}")
        ctx.cancel.check()
        if params.polar_map and (labels == 1).any():
            try:
                from MedSegAILib.tasks.mpi_myocardium.polar_map import polar_map

                table, picture = polar_map(vol, label_vol)
                tables.append(table)
                pictures.append(picture)
            except Exception as exc:  # noqa: BLE001
                messages.append(f"The polar map could not be drawn: {exc}")
        timings["quantify_s"] = time.perf_counter() - t0
        ctx.cancel.check()
        prog(1.0, "Done")
        timings["total_run_s"] = time.perf_counter() - t_start
        for k, v in timings.items():
            ctx.add_time(k, v)

        voxel_ml = vol.voxel_volume_mm3 / 1000.0
        provenance = {
            "method": "3-D U-Net localizer + 3-D U-Net segmenter on a fixed physical box; probabilities mapped "
                      "back to the input grid",
            "preprocessing": cfg.to_mapping(),
            "localizer_center_lps": [float(v) for v in loc.center_lps],
            "localizer_mean_probability": float(loc.mean_probability),
            "localizer_lv_volume_ml": float(loc.volume_ml),
            "segmenter_box_center_lps": [float(v) for v in center],
            "recentred": bool(recentred),
            "myocardium_ml": float((labels == 1).sum() * voxel_ml),
            "cavity_ml": float((labels == 2).sum() * voxel_ml),
            "parameters": {
                "keep_largest_component": bool(params.keep_largest_component),
                "myocardium_density_g_per_ml": float(params.myocardium_density_g_per_ml),
                "polar_map": bool(params.polar_map),
            },
            "timings_s": {k: round(float(v), 4) for k, v in timings.items()},
        }
        return TaskResult(
            task_id=self.id,
            labelmap=label_vol,
            labels=list(self.labels),
            reference_role="image",
            tables=tables,
            pictures=pictures,
            provenance=provenance,
            messages=messages,
        )

    # ------------------------------------------------------------------------------------------ helpers
    def validate_inputs(self, inputs: Mapping[str, Volume]) -> None:
        super().validate_inputs(inputs)
        vol = inputs["image"]
        if max(vol.spacing) > 12.0:
            raise InputError(
                f"The SPECT volume has {max(vol.spacing):.1f} mm voxels; this task needs voxels of at most 12 mm "
                "(typical SPECT reconstructions are 2-7 mm). Check the voxel spacing in the file header."
            )
        if min(vol.spacing) < 0.5:
            raise InputError(
                f"The SPECT volume has {min(vol.spacing):.2f} mm voxels, implausibly small for SPECT; check the "
                "voxel spacing in the file header (it may be in cm or missing)."
            )
        extent = np.asarray(vol.size_ijk) * np.asarray(vol.spacing)
        if extent.min() < 60.0:
            raise InputError(
                f"The SPECT field of view is only {extent.min():.0f} mm along one axis; the whole left ventricle "
                "(about 10 cm) must be inside the volume."
            )
        if float(np.asarray(vol.array).min()) < -0.5 * float(np.asarray(vol.array).max()):
            raise InputError(
                "The SPECT volume has large negative values; it does not look like a reconstructed count image."
            )

    @staticmethod
    def _segment(model, vol, center, cfg, ctx, progress):
        from MedSegAILib.engine.inference import sliding_window_inference

        x, grid = pp.prepare_segmenter_input(vol, center, cfg)
        ctx.cancel.check()
        probs = sliding_window_inference(
            model.networks["segmenter"], x, cfg.segmenter_shape, ctx=ctx, overlap=0.0, batch_size=1,
            activation="softmax", progress=progress,
        )
        return probs, grid

    @staticmethod
    def _lv_centre(probs: np.ndarray, grid) -> Optional[np.ndarray]:
        """Probability-weighted centroid (LPS) of the predicted LV (myocardium + cavity) in the box."""
        w = (1.0 - probs[0]).astype(np.float64)
        w[w < 0.5] = 0.0
        total = w.sum()
        if total <= 0:
            return None
        idx = np.indices(w.shape).reshape(3, -1)
        c_kji = (idx * w.reshape(1, -1)).sum(axis=1) / total
        return Volume(np.zeros((1, 1, 1)), grid.spacing, grid.origin, grid.direction).index_to_lps(c_kji[::-1])[0]

    @staticmethod
    def _touches_box_border(probs: np.ndarray) -> bool:
        fg = probs[0] < 0.5
        faces = [fg[0], fg[-1], fg[:, 0], fg[:, -1], fg[:, :, 0], fg[:, :, -1]]
        return any(f.sum() > 3 for f in faces)
