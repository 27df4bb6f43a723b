"""Parathyroid adenoma detection by dual-tracer 99mTc-sestamibi - 123I planar subtraction (NM-USNet, done right).

Pipeline of :meth:`ParathyroidTask.run` (the sestamibi image is the reference: every output is on its grid):

1. validate: two planar NM images (a third, late sestamibi image optional), not the same tracer when the
   headers say which, fields of view of comparable size;
2. count-rate and decay corrections from the headers (:mod:`.acquisition`), so that the scale factor below is a
   physical uptake ratio and the late image's retention is meaningful;
3. register the 123I image to the sestamibi image (:mod:`.registration`: SimpleITK, mutual information,
   translation or rigid) and report its quality;
4. classical subtraction (:mod:`.subtraction`): the thyroid is found on the 123I image, the scale factor k is
   estimated robustly on the thyroid itself (adenomas overlapping the thyroid do not inflate it), then
   ``D = Tc - k I`` and a Poisson significance map ``Z``. It needs no weights and is the reference;
5. learned subtraction (NM-USNet, :mod:`.preprocess` + the ``generator`` network): both images globally
   normalised, a U-Net with skip connections predicts the parathyroid-only image, mapped back to the sestamibi
   grid in sestamibi counts;
6. candidate foci (:mod:`.foci`) on the learned image (or the classical one), ranked, each labelled thyroid bed
   or ectopic, measured; salivary glands and the heart (sestamibi-avid, no iodine) are ranked last;
7. with a late sestamibi image: its registration to the early one and each focus' retention.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Mapping, Optional

import numpy as np

from MedSegAILib.core.volume import Volume, lps_to_ras_points
from MedSegAILib.errors import InputError, ModelError
from MedSegAILib.tasks.base import (
    MORPHOLOGICALLY_ALTERED_STRUCTURE,
    Column,
    CodedTerm,
    InputSpec,
    LabelInfo,
    Picture,
    PointList,
    RunContext,
    ScalarMap,
    Table,
    Task,
    TaskResult,
    param,
)

if TYPE_CHECKING:
    from MedSegAILib.zoo.registry import LoadedModel

#: Standard terminology (SNOMED CT) of a candidate focus: a lesion of the parathyroid.
TERMS: dict[str, CodedTerm] = {
    "category": MORPHOLOGICALLY_ALTERED_STRUCTURE,  # SCT 49755003
    "lesion": CodedTerm("SCT", "52988006", "Lesion"),
    "parathyroid": CodedTerm("SCT", "111002", "Parathyroid structure"),
}

#: Colours of ranked foci (1 = most likely): warm to cool.
FOCUS_COLORS = [
    (1.00, 0.65, 0.00), (1.00, 0.35, 0.35), (0.95, 0.90, 0.25), (0.55, 0.85, 0.35), (0.35, 0.75, 0.95),
    (0.70, 0.50, 0.95), (0.95, 0.55, 0.80), (0.60, 0.60, 0.60), (0.45, 0.80, 0.75), (0.85, 0.70, 0.50),
]

#: The 123I thyroid must be at least this many times the median counts of the image (noise-only images fail).
MIN_THYROID_CONTRAST = 3.0

#: Two planar images whose physical fields of view differ by more than this factor (per axis) are refused.
MAX_FOV_RATIO = 2.0


def focus_label(rank: int) -> LabelInfo:
    return LabelInfo(
        value=rank,
        name=f"Parathyroid focus {rank}",
        color=FOCUS_COLORS[(rank - 1) % len(FOCUS_COLORS)],
        category=TERMS["category"],
        type=TERMS["lesion"],
        region=TERMS["parathyroid"],
    )


@dataclass
class ParathyroidParameters:
    method: str = param(
        "learned", "Which subtraction finds the foci: 'learned' (NM-USNet, needs the model) or 'classical' "
                   "(scaled 123I subtraction with a significance map, no weights). Both images are always made.",
        choices=("learned", "classical"),
    )
    registration: str = param(
        "rigid", "How the 123I image is aligned to the sestamibi image: 'rigid' (shift + rotation), 'translation', "
                 "or 'none' (the images are already registered).",
        choices=("rigid", "translation", "none"),
    )
    detection_threshold: float = param(
        0.0, "Minimum focus strength; 0 = the threshold validated with the model (learned) or the default z "
             "(classical).", min=0.0, max=100.0,
    )
    max_foci: int = param(5, "At most this many candidate foci are reported.", min=1, max=10)


class ParathyroidTask(Task):
    id = "parathyroid"
    title = "Parathyroid subtraction"
    description = (
        "Dual-tracer planar parathyroid scintigraphy: registers the 123I image to the 99mTc-sestamibi image, "
        "subtracts it (classical robust scaling on the thyroid, and the NM-USNet network), and ranks candidate "
        "parathyroid foci (thyroid bed or ectopic) with their size, contrast and score."
    )
    inputs = (
        InputSpec(role="sestamibi", title="99mTc-sestamibi image", modality="NM", dims=2,
                  description="Planar anterior neck image, 99mTc-sestamibi (early phase)."),
        InputSpec(role="iodine", title="123I image", modality="NM", dims=2,
                  description="Planar anterior neck image, 123I (thyroid only)."),
        InputSpec(role="sestamibi_late", title="Late sestamibi image", modality="NM", dims=2, required=False,
                  description="Optional delayed (about 2 h) 99mTc-sestamibi image, for focus retention."),
    )
    Parameters = ParathyroidParameters
    labels = ()  # one label per focus, made at run time (focus_label)
    default_model = "parathyroid-nmusnet"
    reference_role = "sestamibi"

    # ------------------------------------------------------------------------------------------ checks
    def validate_inputs(self, inputs: Mapping[str, Volume]) -> None:
        if "sestamibi" in inputs and "iodine" not in inputs:
            raise InputError(
                "The parathyroid subtraction needs two images: the 99mTc-sestamibi image AND the 123I image. Only "
                "the sestamibi image was given; select the 123I image as the second input."
            )
        super().validate_inputs(inputs)
        from MedSegAILib.tasks.parathyroid.acquisition import tracer_kind

        tc = inputs["sestamibi"]
        kinds = {role: tracer_kind(v) for role, v in inputs.items()}
        if kinds["sestamibi"] == "iodine" and kinds["iodine"] == "sestamibi":
            raise InputError(
                "The two images appear to be swapped: the header of the 'sestamibi' input says 123I and the header "
                "of the '123I' input says 99mTc. Exchange the two selections."
            )
        if kinds["sestamibi"] is not None and kinds["sestamibi"] == kinds["iodine"]:
            which = "99mTc-sestamibi" if kinds["sestamibi"] == "sestamibi" else "123I"
            raise InputError(
                f"Both images are {which} according to their headers; the subtraction needs one 99mTc-sestamibi "
                "image and one 123I image."
            )
        if kinds["sestamibi"] == "iodine":
            raise InputError("The 'sestamibi' input is a 123I image according to its header; select the "
                             "99mTc-sestamibi image there.")
        if kinds["iodine"] == "sestamibi":
            raise InputError("The '123I' input is a 99mTc image according to its header; select the 123I image there.")
        late = inputs.get("sestamibi_late")
        if late is not None and kinds.get("sestamibi_late") == "iodine":
            raise InputError("The late image is a 123I image according to its header; it must be 99mTc-sestamibi.")
        for role, vol in inputs.items():
            if float(np.asarray(vol.array).min()) < -0.05 * float(np.asarray(vol.array).max()):
                raise InputError(f"The {self.input_spec(role).title} has large negative values; it is not a count "
                                 "image (was it already processed or subtracted?).")
        for role in [r for r in ("iodine", "sestamibi_late") if r in inputs]:
            ratio = _fov(inputs[role]) / _fov(tc)
            if np.any(ratio > MAX_FOV_RATIO) or np.any(ratio < 1.0 / MAX_FOV_RATIO):
                a, b = _fov(tc), _fov(inputs[role])
                raise InputError(
                    f"The fields of view are very different: sestamibi {a[0]:.0f} x {a[1]:.0f} mm, "
                    f"{self.input_spec(role).title} {b[0]:.0f} x {b[1]:.0f} mm. Use images of the same neck view "
                    "(same camera set-up), or check the pixel spacing in the headers."
                )

    def needs_model(self, params: Any) -> bool:
        return getattr(params, "method", "learned") == "learned"

    def _check_model(self, model: Optional["LoadedModel"]) -> None:
        if model is None:
            raise ModelError(f"The learned method needs a model (default {self.default_model!r}); none was loaded. "
                             "Choose the 'classical' method to run without one.")
        if "generator" not in model.networks:
            raise ModelError(f"Model {model.spec.id!r} has no 'generator' network; it is not a parathyroid "
                             "subtraction model.")

    # ------------------------------------------------------------------------------------------ training
    def training_adapter(self, spec: Any) -> Any:
        """Fine-tuning of the model's NM-USNet ``generator`` on corrected focus masks
        (:class:`MedSegAILib.tasks.parathyroid.finetuning.ParathyroidAdapter`: the masks constrain the
        generator's output where the task's focus detection reads it)."""
        from MedSegAILib.tasks.parathyroid.finetuning import ParathyroidAdapter

        return ParathyroidAdapter(spec)

    # ------------------------------------------------------------------------------------------ run
    def run(
        self,
        inputs: Mapping[str, Volume],
        params: Any,
        model: Optional["LoadedModel"],
        ctx: RunContext,
    ) -> TaskResult:
        from MedSegAILib.tasks.parathyroid import acquisition, foci, registration, subtraction

        params = params if params is not None else ParathyroidParameters()
        prog = ctx.progress
        self.validate_inputs(inputs)
        if params.method == "learned":
            self._check_model(model)
        tc, iod = inputs["sestamibi"], inputs["iodine"]
        late_in = inputs.get("sestamibi_late")
        messages: list[str] = []
        timings: dict[str, float] = {}

        def lap(key: str, t0: float) -> None:
            timings[key] = time.perf_counter() - t0
            ctx.cancel.check()

        # ---- 1. count-rate and decay corrections
        t0 = time.perf_counter()
        prog(0.0, "Reading acquisition parameters")
        info_tc, info_i = acquisition.acquisition_info(tc), acquisition.acquisition_info(iod)
        # the images stay in counts (the Poisson noise model of the significance map needs counts); the
        # factors turn k into a ratio of count rates and make late-image retention meaningful
        corr = acquisition.count_rate_correction(info_tc, info_i, names=("sestamibi image", "123I image"))
        messages += list(corr.notes)
        lap("corrections_s", t0)

        # ---- 2. registration
        t0 = time.perf_counter()
        prog(0.05, "Registering the 123I image to the sestamibi image")
        reg = registration.register_iodine(tc, iod, mode=params.registration, cancel=ctx.cancel)
        iod_on_tc = reg.iodine_on_tc
        if not reg.ok or reg.flags:
            messages += [f"Registration: {f}" for f in reg.flags]
        lap("registration_s", t0)

        # ---- 3. classical subtraction
        t0 = time.perf_counter()
        prog(0.25, "Classical subtraction")
        tc_arr, i_arr = np.asarray(tc.array[0], np.float64), np.asarray(iod_on_tc.array[0], np.float64)
        thyroid = subtraction.thyroid_mask_from_iodine(i_arr, tc.spacing[:2])
        if not thyroid.any():
            raise InputError(
                "No thyroid was found on the 123I image (it should be the hottest structure). Check that the second "
                "input is the 123I neck image and that it is not empty."
            )
        body = i_arr[i_arr > 0]
        contrast = float(i_arr[thyroid].mean() / max(np.median(body) if body.size else 0.0, 1e-9))
        if contrast < MIN_THYROID_CONTRAST:
            raise InputError(
                f"No thyroid stands out on the 123I image (its hottest region is only {contrast:.1f}x the median "
                f"counts; a thyroid is typically more than 10x). Check that the second input is the 123I neck image "
                "and that it is not a background or flood image."
            )
        scale = subtraction.estimate_scale(tc_arr, i_arr, thyroid)
        messages += [f"Scale factor: {f}" for f in scale.flags]
        difference, significance = subtraction.classical_subtraction(tc_arr, i_arr, scale, spacing=tc.spacing[:2])
        lap("classical_s", t0)

        # ---- 4. learned subtraction
        learned = None
        if model is not None and "generator" in model.networks:
            t0 = time.perf_counter()
            prog(0.4, "NM-USNet subtraction")
            learned, normaliser = self._learned(model, tc, iod_on_tc, ctx)
            lap("network_s", t0)

        # ---- 5. foci
        t0 = time.perf_counter()
        prog(0.75, "Detecting candidate foci")
        if params.method == "learned":
            assert learned is not None
            evidence = learned[0] / normaliser
            threshold = params.detection_threshold or float(model.spec.input.get("detection_threshold", 0.05))
            method_text = "NM-USNet (learned) parathyroid image"
        else:
            evidence = significance
            threshold = params.detection_threshold or foci.CLASSICAL_Z_THRESHOLD
            method_text = "classical significance map (z)"
        found = foci.detect_foci(
            evidence, tc.spacing[:2], thyroid_mask=thyroid, tc_image=tc_arr, threshold=threshold,
            max_foci=params.max_foci, classical=(params.method == "classical"), significance=significance,
            reference=tc,
        )
        # sestamibi-avid structures without iodine (salivary glands, heart) are not parathyroid candidates: the
        # classical map still shows them, so they are taken out of the list (and said so); the learned image is
        # trained to remove them, so there they are only flagged (an undescended adenoma may lie near the jaw)
        nuisance = [f for f in found if f.is_nuisance] if params.method == "classical" else []
        if nuisance:
            kinds = sorted({f.kind for f in nuisance})
            messages.append(f"{len(nuisance)} sestamibi-avid structure(s) without iodine uptake ({', '.join(kinds)}) "
                            "were not reported as parathyroid candidates; see the subtraction images.")
            found = [f for f in found if not f.is_nuisance]
            for rank, f in enumerate(found, start=1):
                f.rank = rank
        labels_arr = foci.focus_masks(found, tc_arr.shape)[np.newaxis]
        lap("foci_s", t0)

        # ---- 6. late image: retention
        retention = None
        if late_in is not None:
            t0 = time.perf_counter()
            prog(0.85, "Late image: retention")
            retention, late_notes = self._retention(tc, late_in, found, thyroid, ctx)
            messages += late_notes
            lap("late_s", t0)

        # ---- 7. result
        prog(0.9, "Writing results")
        t0 = time.perf_counter()
        if not found:
            messages.append(f"No candidate parathyroid focus was found above the threshold ({threshold:g}) with the "
                            f"{params.method} method.")
        result_labels = [focus_label(f.rank) for f in found]
        label_vol = tc.with_array(labels_arr.astype(np.uint8), is_labelmap=True, modality="SEG")
        maps = [
            ScalarMap("Subtraction (classical)", tc.with_array(difference[np.newaxis].astype(np.float32)),
                      colormap="Inferno", window=_display_window(difference), units="counts",
                      description=f"Sestamibi - {scale.k:.4g} x registered 123I (counts per sestamibi pixel)."),
            ScalarMap("Significance (z)", tc.with_array(significance[np.newaxis].astype(np.float32)),
                      colormap="Inferno", window=(0.0, max(6.0, float(np.nanmax(significance)))), units="z",
                      description="Classical difference / its Poisson standard deviation."),
        ]
        if learned is not None:
            maps.insert(0, ScalarMap("Parathyroid image (NM-USNet)", tc.with_array(learned.astype(np.float32)),
                                     colormap="Inferno", window=_display_window(learned[0]), units="counts",
                                     description="Predicted parathyroid-only sestamibi image (counts per pixel)."))
        tables = [self._foci_table(found, tc, retention), self._quality_table(reg, scale, corr, info_tc, info_i,
                                                                                 method_text, threshold)]
        points = []
        if found:
            pts = np.array([f.centroid_lps(tc) for f in found]).reshape(-1, 3)
            points.append(PointList(
                "Parathyroid foci", pts,
                [f"F{f.rank} {f.score:.2g} {'bed' if f.location == 'thyroid bed' else f.location}" for f in found],
                [f"score {f.score:.3g}, {f.location}" + (f", {', '.join(f.flags)}" if f.flags else "") for f in found],
            ))
        pictures = [Picture("Subtraction", self._picture(tc_arr, i_arr, difference, learned, found, tc),
                            "Sestamibi, registered 123I, classical and learned subtraction with the ranked foci.")]
        lap("result_s", t0)
        for k, v in timings.items():
            ctx.add_time(k, v)
        prog(1.0, "Done")
        provenance = {
            "method": params.method,
            "scale_factor": float(scale.k),
            "scale_factor_95ci": [float(scale.k_low), float(scale.k_high)],
            "registration": {"translation_mm": [float(v) for v in reg.translation_mm],
                             "rotation_deg": float(reg.rotation_deg), "ok": bool(reg.ok)},
            "detection_threshold": float(threshold),
            "n_foci": len(found),
        }
        return TaskResult(
            task_id=self.id, labelmap=label_vol, labels=result_labels, reference_role="sestamibi", maps=maps,
            tables=tables, points=points, pictures=pictures, provenance=provenance, messages=messages,
        )

    # ------------------------------------------------------------------------------------------ helpers
    @staticmethod
    def _learned(model: "LoadedModel", tc: Volume, iod_on_tc: Volume, ctx: RunContext) -> tuple[np.ndarray, float]:
        from MedSegAILib.engine.inference import sliding_window_inference
        from MedSegAILib.tasks.parathyroid import preprocess as pp

        cfg = pp.PreprocessConfig.from_mapping(model.spec.input)
        x, grid = pp.to_network(tc, iod_on_tc, cfg)
        ctx.cancel.check()
        net = model.networks["generator"]
        size = (1, int(cfg.size), int(cfg.size))
        y = sliding_window_inference(
            _Planar(net), x[:, np.newaxis], size, ctx=ctx, overlap=0.25, batch_size=4, activation=None,
            progress=ctx.progress.sub(0.4, 0.7), patch_multiple=2 ** int(getattr(net, "levels", 4)),
        )
        return pp.from_network(np.asarray(y[0, 0]), grid, tc), float(grid.tc_normaliser)

    @staticmethod
    def _retention(tc: Volume, late_in: Volume, found: list, thyroid: np.ndarray,
                   ctx: RunContext) -> tuple[dict[int, float], list[str]]:
        """Late/early count ratio in each focus and in the thyroid (decay- and frame-time corrected)."""
        from MedSegAILib.tasks.parathyroid import acquisition, registration

        notes: list[str] = []
        info_e, info_l = acquisition.acquisition_info(tc), acquisition.acquisition_info(late_in)
        corr = acquisition.count_rate_correction(info_e, info_l, names=("early sestamibi image",
                                                                        "late sestamibi image"))
        notes += corr.notes
        reg = registration.register_iodine(tc, late_in, mode="rigid", cancel=ctx.cancel)
        notes += [f"Late image registration: {f}" for f in reg.flags]
        decay = acquisition.late_decay_factor(info_e, info_l)
        if decay is None:
            notes.append("The late image's acquisition time relative to the early image is unknown: retention is "
                         "not decay-corrected (99mTc loses about 21 % in 2 h).")
            decay = 1.0
        # count rates at each frame start, the late one decay-corrected back to the early frame start
        early_arr = np.asarray(tc.array[0], np.float64) * corr.tc_factor
        late_arr = np.asarray(reg.iodine_on_tc.array[0], np.float64) * corr.iodine_factor
        out: dict[int, float] = {}
        thy = float(late_arr[thyroid].sum() / max(early_arr[thyroid].sum(), 1e-9)) * decay
        out[0] = thy
        for f in found:
            m = f.mask
            out[f.rank] = float(late_arr[m].sum() / max(early_arr[m].sum(), 1e-9)) * decay
        return out, notes

    @staticmethod
    def _foci_table(found: list, ref: Volume, retention: Optional[dict[int, float]]) -> Table:
        cols = [
            Column("Rank"), Column("Label"), Column("Location", description="thyroid bed or ectopic"),
            Column("R", "mm"), Column("A", "mm"), Column("S", "mm"),
            Column("Area", "mm2"), Column("Equivalent diameter", "mm"),
            Column("Peak", "counts", "peak of the evidence image used for ranking, in its own units"),
            Column("Contrast to thyroid bed", description="mean sestamibi counts in the focus / in the surrounding "
                                                           "thyroid-bed ring"),
            Column("Score", description="ranking score (higher = more likely parathyroid)"),
            Column("Flags"),
        ]
        if retention is not None:
            cols.insert(-1, Column("Retention late/early", description="decay-corrected; thyroid = "
                                                                        f"{retention.get(0, float('nan')):.2f}"))
        rows = []
        for f in found:
            ras = lps_to_ras_points(np.asarray(f.centroid_lps(ref)).reshape(1, 3))[0]
            row = [f.rank, f"Parathyroid focus {f.rank}", f.location, float(ras[0]), float(ras[1]), float(ras[2]),
                   float(f.area_mm2), float(f.equivalent_diameter_mm), float(f.peak),
                   float(f.contrast_to_bed), float(f.score), "; ".join(f.flags)]
            if retention is not None:
                row.insert(-1, float(retention.get(f.rank, float("nan"))))
            rows.append(row)
        return Table("Parathyroid foci", cols, rows, "Candidate parathyroid foci, most likely first.")

    @staticmethod
    def _quality_table(reg, scale, corr, info_tc, info_i, method_text: str, threshold: float) -> Table:
        rows: list[list[Any]] = []

        def add(name: str, value: Any, unit: str = "", note: str = "") -> None:
            rows.append([name, value, unit, note])

        add("Detection method", method_text)
        add("Detection threshold", float(threshold))
        add("Registration shift right-left", float(reg.translation_mm[0]), "mm", "123I moved onto sestamibi")
        add("Registration shift superior-inferior", float(reg.translation_mm[1]), "mm")
        add("Registration rotation", float(reg.rotation_deg), "deg")
        for key, value in sorted(getattr(reg, "quality", {}).items()):
            add(f"Registration {key.replace('_', ' ')}", value if isinstance(value, (bool, str)) else float(value))
        add("Registration quality", "OK" if reg.ok and not reg.flags else "CHECK", "", "; ".join(reg.flags))
        add("Scale factor k", float(scale.k), "", "sestamibi counts per 123I count on the thyroid")
        if corr.both_rates:
            add("Scale factor k (count rates)", corr.rate_scale(scale.k), "",
                "the same for count rates at each frame start (comparable between protocols)")
        add("Scale factor 95% interval", f"{scale.k_low:.4g} - {scale.k_high:.4g}")
        add("Scale factor quality", "OK" if not scale.flags else "CHECK", "", "; ".join(scale.flags))
        add("Sestamibi count correction", float(corr.tc_factor), "", corr.describe("tc"))
        add("123I count correction", float(corr.iodine_factor), "", corr.describe("iodine"))
        return Table("Subtraction quality", [Column("Quantity"), Column("Value"), Column("Unit"), Column("Note")],
                     rows, "Registration, scale factor and count corrections used, with quality flags.")

    @staticmethod
    def _picture(tc_arr, i_arr, difference, learned, found, ref: Volume) -> bytes:
        from MedSegAILib.viz import _figure, _png

        panels = [("99mTc-sestamibi", tc_arr, "gray_r"), ("123I (registered)", i_arr, "gray_r"),
                  ("Classical subtraction", np.clip(difference, 0, None), "gray_r")]
        if learned is not None:
            panels.append(("NM-USNet parathyroid image", learned[0], "gray_r"))
        flip_lr = float(np.asarray(ref.direction)[0, 0]) < 0  # display: patient's right on the picture's left
        fig = _figure(3.1 * len(panels), 3.6)
        for n, (title, img, cmap) in enumerate(panels):
            ax = fig.add_subplot(1, len(panels), n + 1)
            im = img[:, ::-1] if flip_lr else img
            hi = float(np.percentile(im, 99.8)) or 1.0
            ax.imshow(im, cmap=cmap, vmin=0, vmax=hi, interpolation="nearest")
            if n >= 2:
                for f in found:
                    m = f.mask[:, ::-1] if flip_lr else f.mask
                    color = FOCUS_COLORS[(f.rank - 1) % len(FOCUS_COLORS)]
                    ax.contour(m, levels=[0.5], colors=[color], linewidths=1.2)
                    ci, cj = f.centroid_ij  # (column, row)
                    ci = im.shape[1] - 1 - ci if flip_lr else ci
                    ax.text(ci + 4, cj - 4, f"F{f.rank}", color=color, fontsize=9, weight="bold")
            ax.set_title(title, fontsize=9)
            ax.set_axis_off()
        fig.text(0.01, 0.01, "R", fontsize=9)
        fig.text(0.985, 0.01, "L", fontsize=9, ha="right")
        fig.subplots_adjust(left=0.01, right=0.99, bottom=0.05, top=0.9, wspace=0.04)
        return _png(fig, tight=False)


class _Planar:
    """Adapts a 2-D network to the 3-D sliding-window engine: (N, C, 1, H, W) -> (N, C', 1, H, W)."""

    def __init__(self, net: Any):
        self.net = net

    def __call__(self, x: Any) -> Any:
        return self.net(x[:, :, 0])[:, :, None]

    def __getattr__(self, name: str) -> Any:
        return getattr(self.net, name)


def _fov(vol: Volume) -> np.ndarray:
    """Physical in-plane field of view (mm) of a planar image: columns x rows."""
    return np.array([vol.size_ijk[0] * vol.spacing[0], vol.size_ijk[1] * vol.spacing[1]], float)


def _display_window(arr: np.ndarray) -> tuple[float, float]:
    hi = float(np.percentile(arr, 99.9))
    return (0.0, hi if hi > 0 else 1.0)
