"""Carpal bones on a hand/wrist radiograph: 2-D U-Net trained on DRRs of hand phantoms (the Nottingham method,
done right).

Pipeline of :meth:`CarpalTask.run` (everything on the radiograph's own pixel grid):

1. read and check (:mod:`.radiograph`): one 2-D grey image (a grey image saved as RGB is accepted, a colour
   photograph refused), MONOCHROME1 inverted from its header, pixel spacing from the header or stated unknown;
2. intensity polarity: an inverted radiograph (white background, dark bones) is detected and inverted, and the
   user is told (parameter ``intensity``);
3. the model's own pre-processing (:func:`.preprocess.prepare_input`: robust window + CLAHE, letterbox to the
   network's square grid, then none/global/local gradient, whichever the model was trained with; the model
   manifest records it, so a model is never used with another pre-processing);
4. the U-Net's softmax (averaged with the mirrored image's, by default), mapped back to the input grid as
   PROBABILITIES (bilinear), then arg-max: labels are never interpolated;
5. per bone the largest connected component, holes filled; a table of areas (mm^2 when the pixel spacing is
   known, otherwise pixels, said so), the mean confidence, and a markups point at each bone's centre.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Mapping, Optional

import numpy as np
from scipy import ndimage

from MedSegAILib.core.volume import Volume, lps_to_ras_points
from MedSegAILib.errors import ModelError
from MedSegAILib.tasks.base import (
    ANATOMICAL_STRUCTURE,
    Column,
    CodedTerm,
    InputSpec,
    LabelInfo,
    PointList,
    RunContext,
    Table,
    Task,
    TaskResult,
    param,
)

if TYPE_CHECKING:
    from MedSegAILib.zoo.registry import LoadedModel

#: Coding scheme of the bones whose SNOMED CT code could not be verified in a source available here (DICOM's
#: context groups list only the scaphoid, radius and ulna): a private scheme rather than a guessed SNOMED code.
PRIVATE_SCHEME = "99MEDSEGAI"

#: (label value, name, coding scheme, code, code meaning, display colour) of the ten bones, the network's order.
#: SNOMED CT codes as listed in DICOM CID 1006 (scaphoid) and CID 7304/8134 (distal radius, distal ulna).
BONES: tuple[tuple[int, str, str, str, str, tuple[float, float, float]], ...] = (
    (1, "Scaphoid", "SCT", "30518006", "Scaphoid", (0.90, 0.35, 0.30)),
    (2, "Lunate", PRIVATE_SCHEME, "carpal-lunate", "Lunate bone", (0.95, 0.70, 0.25)),
    (3, "Triquetrum", PRIVATE_SCHEME, "carpal-triquetrum", "Triquetral bone", (0.85, 0.85, 0.30)),
    (4, "Pisiform", PRIVATE_SCHEME, "carpal-pisiform", "Pisiform bone", (0.55, 0.80, 0.35)),
    (5, "Trapezium", PRIVATE_SCHEME, "carpal-trapezium", "Trapezium bone", (0.30, 0.75, 0.65)),
    (6, "Trapezoid", PRIVATE_SCHEME, "carpal-trapezoid", "Trapezoid bone", (0.35, 0.60, 0.90)),
    (7, "Capitate", PRIVATE_SCHEME, "carpal-capitate", "Capitate bone", (0.55, 0.45, 0.90)),
    (8, "Hamate", PRIVATE_SCHEME, "carpal-hamate", "Hamate bone", (0.85, 0.45, 0.80)),
    (9, "Distal radius", "SCT", "75129005", "Distal Radius", (0.80, 0.80, 0.80)),
    (10, "Distal ulna", "SCT", "91238003", "Distal Ulna", (0.60, 0.55, 0.50)),
)


def bone_labels() -> list[LabelInfo]:
    return [LabelInfo(value=v, name=name, color=color, category=ANATOMICAL_STRUCTURE,
                      type=CodedTerm(scheme, code, meaning))
            for v, name, scheme, code, meaning, color in BONES]


#: the eight carpal bones (label values)
CARPALS = tuple(range(1, 9))
#: a bone whose mean winning probability is below this is not reported (mostly fragments on non-wrist images)
MIN_BONE_CONFIDENCE = 0.6
#: an image is taken as a wrist radiograph when at least this many carpal bones reach WRIST_CONFIDENCE
MIN_CONFIDENT_CARPALS = 4
WRIST_CONFIDENCE = 0.8


def wrist_evidence(prob: np.ndarray, min_pixels: int = 10) -> tuple[int, float]:
    """How much a (C, S, S) softmax looks like a wrist: (number of carpal bones whose arg-max region has at least
    ``min_pixels`` pixels and a mean probability >= WRIST_CONFIDENCE, mean probability over all bone pixels).
    Compared as a tuple: more confident carpals first, then the overall confidence."""
    from MedSegAILib.tasks.carpal.postprocess import label_confidence

    label, winning = prob.argmax(0), prob.max(0)
    n = sum(1 for m, count in label_confidence(label, winning, CARPALS).values()
            if count >= min_pixels and m >= WRIST_CONFIDENCE)
    bone = label > 0
    return n, float(winning[bone].mean()) if bone.any() else 0.0


@dataclass
class CarpalParameters:
    intensity: str = param(
        "auto", "Image polarity: 'auto' (an inverted radiograph with a white background is detected and inverted, "
                "and you are told), 'as-is', or 'invert'.", choices=("auto", "as-is", "invert"),
    )
    mirror_average: bool = param(
        True, "Average the network's output with that of the mirrored image (a left hand is a mirrored right "
              "hand); a little more robust, twice the network time.",
    )
    largest_component: bool = param(
        True, "Keep only the largest connected piece of each bone (and fill its holes).",
    )


class CarpalTask(Task):
    id = "carpal"
    title = "Carpal bones"
    description = (
        "Segments the eight carpal bones, the distal radius and the distal ulna on a PA hand or wrist radiograph "
        "(2-D U-Net trained on digitally reconstructed radiographs of hand phantoms), with their areas."
    )
    inputs = (
        InputSpec(role="image", title="Hand/wrist radiograph", modality="DX", dims=2,
                  description="A PA radiograph of the hand or wrist (DICOM CR/DX, PNG, JPEG, TIFF)."),
    )
    Parameters = CarpalParameters
    labels = tuple(bone_labels())
    default_model = "carpal-unet2d-none"

    # ------------------------------------------------------------------------------------------ reading, checks
    def read_input(self, role: str, path: str) -> Volume:
        """Radiographs need more than :func:`read_volume`: grey images stored as RGB, MONOCHROME1, the pixel
        spacing tags; the notes made while reading are kept in ``meta['read_notes']`` and shown with the
        result."""
        from MedSegAILib.tasks.carpal.radiograph import read_radiograph

        vol, notes = read_radiograph(path)
        vol.meta["read_notes"] = list(vol.meta.get("read_notes", [])) + list(notes)
        return vol

    def scalar_from_vector(self, array: np.ndarray) -> tuple[np.ndarray, Optional[str]]:
        """Radiographs are often saved as RGB JPEG/PNG (Slicer loads them as vector volumes): equal channels are
        taken as grey; a real colour image (a photograph, a screenshot with coloured marks) is refused."""
        from MedSegAILib.tasks.carpal.radiograph import grey_from_rgb

        return grey_from_rgb(array)

    def validate_inputs(self, inputs: Mapping[str, Volume]) -> None:
        super().validate_inputs(inputs)
        from MedSegAILib.tasks.carpal.radiograph import check_radiograph

        check_radiograph(inputs["image"])

    def _check_model(self, model: Optional["LoadedModel"]) -> tuple[Any, str, int]:
        if model is None:
            raise ModelError(f"The carpal task needs a model (default {self.default_model!r}); none was loaded.")
        if "segmenter" not in model.networks:
            raise ModelError(f"Model {model.spec.id!r} has no 'segmenter' network; it is not a carpal model.")
        from MedSegAILib.tasks.carpal.preprocess import MODES

        mode = str(model.spec.input.get("preprocessing", ""))
        if mode not in MODES:
            raise ModelError(f"Model {model.spec.id!r} does not say which pre-processing it was trained with "
                             f"(input.preprocessing must be one of {list(MODES)}; got {mode!r}).")
        net = model.networks["segmenter"]
        if getattr(net, "out_channels", len(BONES) + 1) != len(BONES) + 1:
            raise ModelError(f"Model {model.spec.id!r} has {net.out_channels} output classes; the carpal task "
                             f"needs {len(BONES) + 1} (background + 10 bones).")
        return net, mode, int(model.spec.input.get("size", 256))

    # ------------------------------------------------------------------------------------------ training
    def training_adapter(self, spec: Any) -> Any:
        """Fine-tuning of the model's ``segmenter`` on corrected bone masks, with the model's own pre-processing
        (:class:`MedSegAILib.tasks.carpal.finetuning.CarpalAdapter`)."""
        from MedSegAILib.tasks.carpal.finetuning import CarpalAdapter

        return CarpalAdapter(spec)

    # ------------------------------------------------------------------------------------------ run
    def run(self, inputs: Mapping[str, Volume], params: Any, model: Optional["LoadedModel"],
            ctx: RunContext) -> TaskResult:
        from MedSegAILib.tasks.carpal import postprocess
        from MedSegAILib.tasks.carpal.preprocess import prepare_input
        from MedSegAILib.tasks.carpal.radiograph import INVERT_CONFIDENCE, detect_inverted, invert_intensity

        params = params if params is not None else CarpalParameters()
        self.validate_inputs(inputs)
        net, mode, size = self._check_model(model)
        prog = ctx.progress
        image = inputs["image"]
        messages: list[str] = list(image.meta.get("read_notes", []))
        timings: dict[str, float] = {}
        t0 = time.perf_counter()

        # ---- polarity: the header (MONOCHROME1) was applied when reading; then the image statistics decide when
        # they are confident, and otherwise the network itself: a radiograph of the wrong polarity gives no
        # confident carpal bones (both polarities are run, the one with more evidence of a wrist is kept)
        img = np.asarray(image.array[0], np.float32)
        candidates: list[tuple[np.ndarray, Optional[str]]] = []
        if params.intensity == "invert":
            candidates.append((invert_intensity(img), "The image was inverted as requested (parameter intensity)."))
        elif params.intensity == "as-is":
            candidates.append((img, None))
        else:
            inverted, conf = detect_inverted(img)
            if conf >= INVERT_CONFIDENCE:
                candidates.append((invert_intensity(img), f"The image looked inverted (bright background, dark "
                                   f"bones; confidence {conf:.2f}) and was inverted; set the parameter intensity to "
                                   "'as-is' if that is wrong.") if inverted else (img, None))
            else:  # the inverted image is tried only if the image as it is shows no wrist to the network
                candidates += [(img, None), (invert_intensity(img), "The image was taken as inverted (bright "
                                "background, dark bones): the network found a wrist only in the inverted image. "
                                "Set the parameter intensity to 'as-is' if that is wrong.")]
        ctx.cancel.check()

        prog(0.1, f"Segmenting the bones ({mode} pre-processing)")
        t1 = time.perf_counter()
        best = None
        for cand, note in candidates:
            x, box = prepare_input(cand, mode, size, spacing=image.spacing[:2])
            prob_np = self._forward(net, x, ctx.device, params.mirror_average)
            evidence = wrist_evidence(prob_np)
            if best is None or evidence > best[0]:
                best = (evidence, prob_np, box, note, cand)
            ctx.cancel.check()
            if evidence[0] >= MIN_CONFIDENT_CARPALS:
                break
        assert best is not None
        _evidence, prob_np, box, note, img = best
        if note:
            messages.append(note)
        timings["network_s"] = time.perf_counter() - t1

        # ---- back to the input grid (probabilities, never labels), arg-max, clean-up
        prog(0.7, "Mapping to the image grid")
        t1 = time.perf_counter()
        label, confidence = box.inverse_argmax(prob_np)
        if params.largest_component:
            label = postprocess.keep_largest_per_label(label, range(1, len(BONES) + 1))
        label, dropped, is_wrist = postprocess.confident_bones(label, confidence, range(1, len(BONES) + 1),
                                                               CARPALS, MIN_BONE_CONFIDENCE, MIN_CONFIDENT_CARPALS,
                                                               WRIST_CONFIDENCE)
        if dropped and is_wrist:
            messages.append(f"Not reported (mean confidence below {MIN_BONE_CONFIDENCE:g}): "
                            f"{', '.join(BONES[v - 1][1] for v in dropped)}.")
        timings["postprocess_s"] = time.perf_counter() - t1

        # ---- measurements
        prog(0.85, "Measuring")
        table, points, found = self._measure(image, label, confidence)
        missing = [name for v, name, *_ in BONES if v not in found]
        if not found:
            messages.append(
                "No carpal bones were found: the image does not look like a PA hand/wrist radiograph to the model "
                f"(fewer than {MIN_CONFIDENT_CARPALS} carpal bones with a confidence of {WRIST_CONFIDENCE:g}). The "
                "model was trained on wrist-centred PA views (field of view about 8.5-12.5 cm): crop a whole-hand or "
                "whole-arm image to the wrist; lateral views are not supported.")
        elif missing:
            messages.append(f"Not found: {', '.join(missing)} (outside the field of view, or not visible).")
        if not image.meta.get("spacing_known", True):
            messages.append("The image has no pixel spacing: areas are given in pixels, not mm^2.")

        # no picture of its own: the overlay every front end draws (outputs.py, the Slicer views) is the picture
        label_vol = image.with_array(label[np.newaxis], is_labelmap=True, modality="SEG")
        timings["total_s"] = time.perf_counter() - t0
        provenance = {"preprocessing": mode, "network_grid": size, "intensity": params.intensity,
                      "task_timings_s": {k: round(v, 4) for k, v in timings.items()}}
        return TaskResult(task_id=self.id, labelmap=label_vol, labels=[lab for lab in bone_labels() if lab.value in found],
                          tables=[table], points=[points] if len(points.labels) else [],
                          provenance=provenance, messages=messages)

    # ------------------------------------------------------------------------------------------ helpers
    @staticmethod
    def _forward(net: Any, x: np.ndarray, device: Any, mirror_average: bool) -> np.ndarray:
        """Softmax (C, S, S) of the network input ``x`` (1, S, S), averaged with the mirrored input's."""
        import torch

        net = net.to(device).eval()
        with torch.inference_mode():
            xt = torch.from_numpy(np.ascontiguousarray(x[None])).to(device)
            prob = torch.softmax(net(xt).float(), 1)
            if mirror_average:
                prob = 0.5 * (prob + torch.softmax(net(xt.flip(-1)).float(), 1).flip(-1))
        return prob[0].cpu().numpy()

    @staticmethod
    def _measure(image: Volume, label: np.ndarray, confidence: np.ndarray) -> tuple[Table, PointList, set[int]]:
        spacing_known = bool(image.meta.get("spacing_known", True))
        px_area = float(image.spacing[0] * image.spacing[1]) if spacing_known else 1.0
        unit = "mm^2" if spacing_known else "pixels"
        rows, pts, names, found = [], [], [], set()
        boxes = ndimage.find_objects(label, max_label=len(BONES))  # each bone measured inside its own box
        for v, name, *_ in BONES:
            if boxes[v - 1] is None:
                continue
            sl = boxes[v - 1]
            mask = label[sl] == v
            n = int(mask.sum())
            found.add(v)
            jj, ii = np.nonzero(mask)
            jj, ii = jj + sl[0].start, ii + sl[1].start
            centre_lps = image.index_to_lps(np.array([[ii.mean(), jj.mean(), 0.0]]))
            centre_ras = lps_to_ras_points(centre_lps)[0]
            rows.append([name, n * px_area, float(confidence[sl][mask].mean()),
                         float(centre_ras[0]), float(centre_ras[1]), float(centre_ras[2])])
            pts.append(centre_lps[0])
            names.append(name)
        cols = [Column("Bone"), Column("Area", unit, "projected area on the radiograph"),
                Column("Confidence", "", "mean softmax probability of the assigned class inside the bone"),
                Column("Centre R", "mm"), Column("Centre A", "mm"), Column("Centre S", "mm")]
        table = Table("Carpal bone areas", cols, rows,
                      "Projected areas of the segmented bones" + ("" if spacing_known else " (pixels: no spacing)"))
        points = PointList("Carpal bone centres", np.array(pts).reshape(-1, 3), names)
        return table, points, found
