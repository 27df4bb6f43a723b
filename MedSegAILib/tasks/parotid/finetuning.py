"""How the parotid segmenter is fine-tuned: one corrected CT -> one sample on the network's own grid.

The sample is made exactly as :meth:`MedSegAILib.tasks.parotid.ParotidTask.run` feeds the segmenter, with the
reference label map standing in for the localiser:

1. the LPS box of the labelled glands plus ``roi_margin_mm`` (the task's box around the localised glands plus the
   same margin); with one gland labelled, the box is also grown to where the other gland would be, mirrored about
   the body's centre (the task's rule for a single localised gland, :func:`preprocess.body_centre_x`);
2. :func:`preprocess.segmenter_input`: that box (grown to at least one 128 x 128 x 64 mm window) on the 1 mm
   patient-aligned grid, HU windowed to ``[-200, 300]`` -> ``[0, 1]``; ``x`` is ``(1, D, H, W)``;
3. the labels onto that grid by the recipe's :func:`MedSegAILib.train.parotid.labels_to_grid` (each gland's
   indicator interpolated linearly, > 0.5): ``y`` is ``(D, H, W)`` with channel 1 = right, 2 = left gland.

On the patient-aligned grid ``i`` runs towards the patient's left whatever the CT's direction matrix, so the
channels keep the recipe's convention (1 = the patient's right) for flipped or oblique CTs too. The task writes
label 1 = "Right parotid gland", 2 = "Left parotid gland" (:data:`preprocess.RIGHT`, :data:`preprocess.LEFT`), so
channel c holds label c.

Validation labels as the task: arg-max, then the task's post-processing on the network grid (sides from the
geometry, :meth:`ParotidAdapter.predict`).

Training as the recipe: its segmenter training window (``--train-patch``, 48 x 96 x 96 voxels, k j i), loss
``0.7 soft Dice + 0.3 focal`` (:class:`MedSegAILib.train.losses.HybridDiceFocalLoss`), augmentation = left-right
mirroring **with the side labels swapped** and a mild HU scale/offset (see :meth:`ParotidAdapter.augment`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Mapping

import numpy as np

from MedSegAILib.core.volume import Volume
from MedSegAILib.errors import InputError, ModelError
from MedSegAILib.finetune.adapter import recipe_defaults, Sample, TrainingAdapter
from MedSegAILib.tasks.parotid import preprocess as pp

if TYPE_CHECKING:
    import torch

#: a labelled gland that keeps less than this share of its volume on the 1 mm network grid is refused
MIN_KEPT = 0.8
#: labels spread over more than this (mm, any axis, before the margin) are not a pair of parotid glands
MAX_EXTENT_MM = 300.0


class ParotidAdapter(TrainingAdapter):
    """Fine-tuning of the ``segmenter`` network of a parotid model (see the module docstring)."""

    network = "segmenter"
    classes = {1: pp.RIGHT, 2: pp.LEFT}
    pad_value = 0.0  #: windowed air (-1024 HU -> 0), what the task's grid holds outside the scanned field of view
    batch_cpu = 1
    batch_gpu = 4

    def __init__(self, spec: Any):
        super().__init__(spec)
        hp = self.network_hyperparameters("parotid")
        if int(hp.get("out_channels", 3)) != 3:
            raise ModelError(f"Model {spec.id!r}: the parotid segmenter must have 3 outputs (background, right, "
                             f"left gland); this one has {hp.get('out_channels')}.")
        self.cfg = pp.ParotidConfig.from_mapping(spec.input)
        self.patch = tuple(int(v) for v in recipe_defaults("parotid").train_patch.split(","))
        self.divisor = 2 ** int(hp.get("levels", 4))
        self._loss_fn: Any = None

    # ------------------------------------------------------------------------------------------ data
    def prepare(self, inputs: Mapping[str, Volume], labels: Volume, case: str) -> list[Sample]:
        """One sample: the box around the labelled glands on the 1 mm patient-aligned grid (module docstring).

        Refused (:class:`InputError`): no CT, labels on another grid, no gland or unknown label values, the right
        gland labelled to the patient's left of the left one, labels spread wider than a head, or a gland that
        does not survive the move to the 1 mm grid (< 80 % of its volume)."""
        from MedSegAILib.tasks.parotid.postprocess import centroid_lps
        from MedSegAILib.train.parotid import labels_to_grid

        vol = inputs.get("image")
        if vol is None:
            raise InputError(f"Case {case!r}: the parotid task needs the head-and-neck CT ('image'); none was given.")
        if not labels.same_geometry(vol):
            raise InputError(f"Case {case!r}: the label map is not on the CT's grid (shape, spacing, origin or "
                             "direction differ); resample it onto the CT first.")
        lab = np.asarray(labels.array)
        values = {int(v) for v in np.unique(lab)} - {0}
        unknown = values - set(self.channel_of_label())
        if unknown:
            raise InputError(f"Case {case!r}: label value(s) {sorted(unknown)} are not parotid labels (1 = right, "
                             "2 = left parotid gland).")
        if not values:
            raise InputError(f"Case {case!r}: the label map is empty (no parotid gland).")
        centres = {side: centroid_lps(lab, side, labels) for side in sorted(values)}
        if len(centres) == 2 and centres[pp.RIGHT][0] >= centres[pp.LEFT][0]:
            raise InputError(f"Case {case!r}: the gland labelled right (1) lies to the patient's left of the gland "
                             "labelled left (2) (LPS x of the centres: "
                             f"{centres[pp.RIGHT][0]:.0f} vs {centres[pp.LEFT][0]:.0f} mm); the sides look swapped.")
        lo, hi = _label_box(labels)
        if np.any(hi - lo > MAX_EXTENT_MM):
            ext = hi - lo
            raise InputError(f"Case {case!r}: the labels spread over {ext[0]:.0f} x {ext[1]:.0f} x {ext[2]:.0f} mm; "
                             "a pair of parotid glands fits in about 150 x 100 x 100 mm. Check for stray labels.")
        lo, hi = lo - self.cfg.roi_margin_mm, hi + self.cfg.roi_margin_mm
        if len(values) == 1:  # the task also looks where the other gland would be
            lo, hi = self._mirrored_box(vol, lo, hi, centres)
        x, grid = pp.segmenter_input(vol, lo, hi, self.cfg)
        y_lab = labels_to_grid(labels, grid)
        kept = {}
        for side in sorted(values):
            ml_in = float((lab == side).sum() * labels.voxel_volume_mm3 / 1000.0)
            ml_net = float((y_lab == side).sum() * np.prod(grid.spacing) / 1000.0)
            kept[pp.SIDE_NAMES[side]] = (ml_in, ml_net)
            if ml_net < MIN_KEPT * ml_in:
                raise InputError(
                    f"Case {case!r}: only {ml_net:.2f} of the {ml_in:.2f} mL labelled as the {pp.SIDE_NAMES[side]} "
                    "parotid lie inside the network's 1 mm box (a gland outside the CT's field of view, or a label "
                    "thinner than the voxels); check the label map.")
        meta = {"grid": grid.to_mapping(), "volume_ml_input_network": kept}
        return [Sample(x=np.ascontiguousarray(x, np.float32), y=self.labels_to_channels(y_lab), case=case,
                       patient=case, meta=meta)]

    def _mirrored_box(self, vol: Volume, lo: np.ndarray, hi: np.ndarray,
                      centres: Mapping[int, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        """The box grown to its mirror image about the body's centre x on the gland's slices, as the task does when
        its localiser finds one gland (the body's centre from the task's 8 mm localiser input)."""
        side = next(iter(centres))
        x_loc, loc_grid = pp.localizer_input(vol, self.cfg)
        gland = pp.GlandBox(side=side, centre_lps=np.asarray(centres[side], float), lo_lps=lo, hi_lps=hi,
                            volume_ml=0.0, mean_probability=1.0)
        mx = pp.body_centre_x(x_loc[0], loc_grid, gland)
        if mx is None:
            return lo, hi
        return (np.minimum(lo, [2 * mx - hi[0], lo[1], lo[2]]), np.maximum(hi, [2 * mx - lo[0], hi[1], hi[2]]))

    def augment(self, x: np.ndarray, y: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        """The recipe's augmentation on the windowed sample.

        * HU ``h -> s h + o`` with ``s ~ U(0.96, 1.04)``, ``o ~ U(-15, 15)`` HU; on the window
          ``w = (h - lo) / (hi - lo)`` this is ``w' = s w + ((s - 1) lo + o) / (hi - lo)``, clipped to [0, 1]
          (exact inside the window; voxels clipped at the window's ends stay clipped);
        * with probability 1/2, mirrored left-right (``i``, the last axis = the patient's left-right on the
          patient-aligned grid) **and channels 1 and 2 swapped**: the mirrored right gland is a left gland."""
        lo, hi = self.cfg.window_hu
        s, o = rng.uniform(0.96, 1.04), rng.uniform(-15.0, 15.0)
        x = np.clip(s * x + ((s - 1.0) * lo + o) / (hi - lo), 0.0, 1.0).astype(np.float32)
        if rng.random() < 0.5:
            x, y = x[..., ::-1], y[..., ::-1]
            y = np.where(y == 1, 2, np.where(y == 2, 1, y))
        return np.ascontiguousarray(x, np.float32), np.ascontiguousarray(y, np.int64)

    # ------------------------------------------------------------------------------------------ network
    def loss(self, output: "torch.Tensor", y: "torch.Tensor") -> "torch.Tensor":
        """The recipe's loss: ``0.7 soft Dice (both glands, batch Dice) + 0.3 focal (gamma 1, alpha 0.3/0.35/0.35)``."""
        from MedSegAILib.train.losses import HybridDiceFocalLoss

        if self._loss_fn is None:
            self._loss_fn = HybridDiceFocalLoss()
        return self._loss_fn.to(output.device)(output.float(), y.long())

    def predict(self, output: "torch.Tensor") -> "torch.Tensor":
        """Labels as the task makes them: arg-max, then the task's post-processing
        (:func:`MedSegAILib.tasks.parotid.postprocess.clean_glands`) on the patient-aligned network grid: every
        parotid voxel takes the side of the mid-sagittal plane it lies on (the bisector of the two largest regions;
        with one region, the sagittal plane through the sample's centre, where the task's box is centred), one
        component per side, holes filled. The network's own right/left channels only have to find parotid tissue,
        as in the task; without this, validation Dice would score a side swap the task never shows."""
        import torch

        from MedSegAILib.tasks.parotid.postprocess import clean_glands

        lab = output.detach().argmax(1).to("cpu").numpy().astype(np.uint8)
        out = np.empty(lab.shape, np.int64)
        for n, one in enumerate(lab):
            grid = Volume(np.zeros(one.shape, np.float32), (1.0, 1.0, 1.0), (0.0, 0.0, 0.0), np.eye(3))
            out[n] = clean_glands(one, grid)[0]
        return torch.from_numpy(out).to(output.device)


def _label_box(labels: Volume) -> tuple[np.ndarray, np.ndarray]:
    """Axis-aligned LPS box ``(lo, hi)`` of the labelled voxels' outer corners (voxel centres +- half a voxel)."""
    idx = np.argwhere(np.asarray(labels.array) > 0)
    a, b = idx.min(0)[::-1] - 0.5, idx.max(0)[::-1] + 0.5  # i, j, k
    corners = np.array([[i, j, k] for i in (a[0], b[0]) for j in (a[1], b[1]) for k in (a[2], b[2])], float)
    pts = labels.index_to_lps(corners)
    return pts.min(0), pts.max(0)
