"""How a carpal segmenter is fine-tuned: one corrected radiograph -> one 2-D sample on the network's square grid.

The sample is made exactly as :meth:`MedSegAILib.tasks.carpal.CarpalTask.run` feeds its ``segmenter``:

1. polarity: an image that :func:`.radiograph.detect_inverted` finds inverted with confidence at least
   :data:`.radiograph.INVERT_CONFIDENCE` is inverted (the task's ``intensity="auto"`` rule). The task's last
   resort for an undecided polarity (run the network on both and keep the one that looks more like a wrist) needs
   the network, so here an undecided image is taken as it is;
2. :func:`.preprocess.prepare_input` with the model's own pre-processing (``input.preprocessing`` of the model:
   none / global / local) and grid size, the image's pixel spacing giving the aspect ratio: letterboxed into
   ``size x size`` (256), robust window + CLAHE, gradient map -> ``x`` ``(1, 256, 256)`` in [0, 1];
3. the label map by the same letterbox, nearest neighbour (:meth:`.preprocess.LetterBox.forward_labels`; labels
   are never interpolated) -> ``y`` ``(256, 256)``. Channel c holds bone label c (1 scaphoid ... 8 hamate,
   9 distal radius, 10 distal ulna; :data:`MedSegAILib.tasks.carpal.BONES`, the network's order).

Training as the recipe (:mod:`MedSegAILib.train.carpal`): random ``--crop`` (160 px) windows, horizontal
mirroring (a left hand is a mirrored right hand; bone labels are not sided, so they mirror unchanged), loss soft
Dice over the ten bones + cross-entropy (:class:`MedSegAILib.train.carpal.DiceCELoss`). No intensity
augmentation: the pre-processing already ends in a min-max/CLAHE-normalised map, and inference never sees a
rescaled one.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Mapping

import numpy as np

from MedSegAILib.core.volume import Volume
from MedSegAILib.errors import InputError, ModelError
from MedSegAILib.finetune.adapter import recipe_defaults, Sample, TrainingAdapter

if TYPE_CHECKING:
    import torch

#: bone label values (the network's output channels 1..10)
N_BONES = 10


class CarpalAdapter(TrainingAdapter):
    """Fine-tuning of the ``segmenter`` network of a carpal model (see the module docstring)."""

    network = "segmenter"
    classes = {c: c for c in range(1, N_BONES + 1)}
    pad_value = 0.0  #: the letterbox pads with 0, the background of a normalised radiograph
    batch_cpu = 4
    batch_gpu = 16

    def __init__(self, spec: Any):
        super().__init__(spec)
        from MedSegAILib.tasks.carpal.preprocess import MODES

        hp = self.network_hyperparameters("carpal")
        if int(hp.get("out_channels", N_BONES + 1)) != N_BONES + 1:
            raise ModelError(f"Model {spec.id!r} has {hp.get('out_channels')} output classes; the carpal task needs "
                             f"{N_BONES + 1} (background + 10 bones).")
        self.mode = str(spec.input.get("preprocessing", ""))
        if self.mode not in MODES:
            raise ModelError(f"Model {spec.id!r} does not say which pre-processing it was trained with "
                             f"(input.preprocessing must be one of {list(MODES)}; got {self.mode!r}).")
        self.size = int(spec.input.get("size", 256))
        crop = min(int(recipe_defaults("carpal").crop), self.size)
        self.patch = (crop, crop)
        self.divisor = 2 ** int(hp.get("levels", 4))

    # ------------------------------------------------------------------------------------------ data
    def prepare(self, inputs: Mapping[str, Volume], labels: Volume, case: str) -> list[Sample]:
        """One sample on the ``size x size`` network grid (module docstring). Refused (:class:`InputError`): no
        radiograph, labels on another grid, unknown label values, or no bone left on the network grid."""
        from MedSegAILib.tasks.carpal.preprocess import prepare_input
        from MedSegAILib.tasks.carpal.radiograph import INVERT_CONFIDENCE, detect_inverted, invert_intensity

        image = inputs.get("image")
        if image is None:
            raise InputError(f"Case {case!r}: the carpal task needs the hand/wrist radiograph ('image'); none was "
                             "given.")
        if not labels.same_geometry(image):
            raise InputError(f"Case {case!r}: the label map is not on the radiograph's grid (size, spacing, origin "
                             "or direction differ); resample it onto the radiograph first.")
        lab = np.asarray(labels.array)[0]
        values = {int(v) for v in np.unique(lab)} - {0}
        unknown = values - set(self.channel_of_label())
        if unknown:
            raise InputError(f"Case {case!r}: label value(s) {sorted(unknown)} are not carpal-task bones (1-10: "
                             "scaphoid, lunate, triquetrum, pisiform, trapezium, trapezoid, capitate, hamate, "
                             "distal radius, distal ulna).")
        if not values:
            raise InputError(f"Case {case!r}: the label map is empty (no bone).")
        img = np.asarray(image.array[0], np.float32)
        inverted, confidence = detect_inverted(img)
        flipped = bool(inverted and confidence >= INVERT_CONFIDENCE)
        if flipped:
            img = invert_intensity(img)
        try:
            x, box = prepare_input(img, self.mode, self.size, spacing=image.spacing[:2])
        except InputError as exc:
            raise InputError(f"Case {case!r}: {exc}") from None
        y_lab = box.forward_labels(lab)
        kept = {int(v) for v in np.unique(y_lab)} - {0}
        if not kept:
            raise InputError(f"Case {case!r}: every labelled bone is smaller than one pixel of the {self.size} x "
                             f"{self.size} network grid (the radiograph is {lab.shape[1]} x {lab.shape[0]} pixels); "
                             "nothing is left to train on.")
        meta = {"inverted": flipped, "inversion_confidence": float(confidence), "letterbox_shape": list(box.shape),
                "bones_lost_on_grid": sorted(values - kept)}
        return [Sample(x=np.ascontiguousarray(x, np.float32), y=self.labels_to_channels(y_lab), case=case,
                       patient=case, meta=meta)]

    def augment(self, x: np.ndarray, y: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        """The recipe's augmentation: horizontal mirroring with probability 1/2 (labels mirror unchanged)."""
        if rng.random() < 0.5:
            x, y = x[..., ::-1], y[..., ::-1]
        return np.ascontiguousarray(x, np.float32), np.ascontiguousarray(y, np.int64)

    # ------------------------------------------------------------------------------------------ network
    def loss(self, output: "torch.Tensor", y: "torch.Tensor") -> "torch.Tensor":
        """The recipe's loss: ``1 - mean soft Dice`` over the ten bones (batch Dice, smooth 1) + cross-entropy."""
        from MedSegAILib.train.carpal import DiceCELoss

        return DiceCELoss()(output.float(), y.long())
