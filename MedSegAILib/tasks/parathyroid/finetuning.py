"""How the parathyroid NM-USNet generator is fine-tuned from corrected focus masks.

**Which network, and why a mask can train it.** The model's ``generator`` (a 2-D U-Net, 2 inputs: normalised
sestamibi and registered 123I; 1 softplus output) predicts the *parathyroid-only image* in Tc-normaliser units, not
class scores. The task's foci -- the masks a user corrects -- come from that image alone
(:func:`MedSegAILib.tasks.parathyroid.foci.detect_foci`): local maxima reaching the detection threshold ``t``
(the model's ``input.detection_threshold``, 0.05), each grown to the pixels of its basin at >= 50 % of its peak,
regions under 5 mm dropped. So a focus mask M says, of the generator's output ``g``: inside M, ``g`` reaches ``t``
and is at least half its local peak; just outside M, ``g`` falls below half that peak; far from every focus ``g``
stays under ``t``. :meth:`ParathyroidAdapter.loss` penalises exactly the violations of these statements (squared
hinges, zero once they hold), so fine-tuning moves the foci the task would find towards the user's masks and
leaves the rest of the parathyroid image alone (no invented intensities). The ``siamese`` network (a training-time
similarity of the recipe's loss) is not trained and is carried over unchanged.

**Samples**, exactly as :meth:`MedSegAILib.tasks.parathyroid.ParathyroidTask.run` feeds the generator:

1. the 123I image registered to the sestamibi image (:func:`.registration.register_iodine`, ``rigid``, the task's
   default) and resampled onto its grid;
2. :func:`.preprocess.to_network`: both images on the network grid (the sestamibi image's direction and centre,
   ``pixel_mm`` = 2 mm pixels, sides a multiple of 32 covering the whole field of view), each divided by its own
   global normaliser -> ``x`` ``(2, H, W)`` (channel 0 sestamibi, 1 iodine: the network's own two inputs, so no
   splitting is needed in :meth:`forward`);
3. the mask (any focus label > 0) onto the network grid by the same count-density resampling
   (:func:`MedSegAILib.core.aligned.resample_aligned`: area mean where coarser), > 0.5 -> ``y`` ``(H, W)``,
   1 = parathyroid focus.

**Labels.** The task writes one label per ranked focus, "Parathyroid focus 1..n" (n <= 10, the ``max_foci``
parameter's limit); they are all one class here: every value 1..10 maps to output channel 1
(:meth:`ParathyroidAdapter.channel_of_label`). :attr:`classes` lists channel 1 -> label 1 only, as the contract has
one label per channel.

**Validation labels** (:meth:`ParathyroidAdapter.predict`) are the task's own foci: ``detect_foci`` on the output.

**Augmentation** as the recipe (:func:`MedSegAILib.train.parathyroid.sample`): a residual misregistration of the
iodine channel (its ``misregister``, +-1.5 mm, +-1 deg), left/right mirroring of everything, the two inputs scaled
independently by U(0.9, 1.1). Training tile: the recipe's ``--tile`` (96 px).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Mapping

import numpy as np

from MedSegAILib.core.volume import Volume
from MedSegAILib.errors import InputError, ModelError
from MedSegAILib.finetune.adapter import recipe_defaults, Sample, TrainingAdapter

if TYPE_CHECKING:
    import torch

#: focus labels the task can write (ranks 1..10: the ``max_foci`` parameter's maximum)
MAX_FOCUS_LABEL = 10
#: inside a mask the output must reach ``FG_MARGIN x t``; far from every mask it must stay under ``BG_MARGIN x t``
FG_MARGIN, BG_MARGIN = 2.0, 0.5
#: "just outside" a mask: within this distance (mm) of it; beyond it is "far" (the camera's blur tail lies within)
RING_MM = 8.0
#: a focus' peak is the largest output inside its mask within this distance (mm)
PEAK_MM = 20.0
#: a region is a focus down to this fraction of its peak (:func:`detect_foci`'s ``region_fraction``)
REGION_FRACTION = 0.5


class ParathyroidAdapter(TrainingAdapter):
    """Fine-tuning of the ``generator`` network of a parathyroid model (see the module docstring)."""

    network = "generator"
    classes = {1: 1}
    pad_value = 0.0  #: outside the field of view the network sees zeros
    batch_cpu = 4
    batch_gpu = 16

    def __init__(self, spec: Any):
        super().__init__(spec)
        from MedSegAILib.tasks.parathyroid import ParathyroidParameters
        from MedSegAILib.tasks.parathyroid.preprocess import PreprocessConfig

        hp = self.network_hyperparameters("parathyroid subtraction")
        if int(hp.get("in_channels", 2)) != 2 or int(hp.get("out_channels", 1)) != 1:
            raise ModelError(f"Model {spec.id!r}: the parathyroid generator must take 2 images and give 1; this one "
                             f"takes {hp.get('in_channels')} and gives {hp.get('out_channels')}.")
        self.cfg = PreprocessConfig.from_mapping(spec.input)
        self.threshold = float(spec.input.get("detection_threshold", 0.05))
        self.max_foci = int(ParathyroidParameters().max_foci)
        args = recipe_defaults("parathyroid")
        self.patch = (int(args.tile), int(args.tile))
        self.misreg_px = float(args.misreg_mm) / self.cfg.pixel_mm
        self.misreg_deg = float(args.misreg_deg)
        self.divisor = 2 ** int(hp.get("levels", 4))

    def channel_of_label(self) -> dict[int, int]:
        """Every focus rank 1..10 the task writes -> channel 1 (one class: parathyroid focus)."""
        return {v: 1 for v in range(1, MAX_FOCUS_LABEL + 1)}

    # ------------------------------------------------------------------------------------------ data
    def prepare(self, inputs: Mapping[str, Volume], labels: Volume, case: str) -> list[Sample]:
        """One sample on the network grid (module docstring). Refused (:class:`InputError`): a missing image,
        labels on another grid than the sestamibi image, unknown label values, an empty mask, or foci smaller than
        a network pixel."""
        from MedSegAILib.core.aligned import resample_aligned
        from MedSegAILib.tasks.parathyroid.preprocess import to_network
        from MedSegAILib.tasks.parathyroid.registration import register_iodine

        tc, iod = inputs.get("sestamibi"), inputs.get("iodine")
        if tc is None or iod is None:
            raise InputError(f"Case {case!r}: the parathyroid task needs the 99mTc-sestamibi image ('sestamibi') and "
                             "the 123I image ('iodine').")
        if not labels.same_geometry(tc):
            raise InputError(f"Case {case!r}: the focus mask is not on the sestamibi image's grid (size, spacing, "
                             "origin or direction differ); resample it onto the sestamibi image first.")
        lab = np.asarray(labels.array)
        values = {int(v) for v in np.unique(lab)} - {0}
        unknown = values - set(self.channel_of_label())
        if unknown:
            raise InputError(f"Case {case!r}: label value(s) {sorted(unknown)} are not parathyroid focus labels "
                             f"(1-{MAX_FOCUS_LABEL}, 'Parathyroid focus N').")
        if not values:
            raise InputError(f"Case {case!r}: the focus mask is empty.")
        try:
            reg = register_iodine(tc, iod, mode="rigid")
            x, grid = to_network(tc, reg.iodine_on_tc, self.cfg)
        except InputError as exc:
            raise InputError(f"Case {case!r}: {exc}") from None
        mask = (lab > 0).astype(np.float32)
        y = resample_aligned(mask, grid.source, grid.geometry, 0.0)[0] > 0.5
        if not y.any():
            raise InputError(f"Case {case!r}: the focus mask is smaller than one {self.cfg.pixel_mm:g} mm pixel of the "
                             "network grid; draw the whole focus.")
        area_in = float(mask.sum() * tc.spacing[0] * tc.spacing[1])
        area_net = float(y.sum() * self.cfg.pixel_mm ** 2)
        meta = {"area_mm2_input_network": (area_in, area_net), "registration_ok": bool(reg.ok),
                "registration_flags": list(reg.flags), "tc_normaliser": grid.tc_normaliser,
                "network_grid": grid.geometry.to_mapping()}
        return [Sample(x=np.ascontiguousarray(x, np.float32), y=y.astype(np.int64), case=case, patient=case,
                       meta=meta)]

    def augment(self, x: np.ndarray, y: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        """The recipe's augmentation (module docstring), on a sample cropped to the tile."""
        from MedSegAILib.train.parathyroid import misregister

        x = np.stack([x[0], misregister(np.asarray(x[1], np.float32), rng, self.misreg_px, self.misreg_deg)])
        if rng.random() < 0.5:
            x, y = x[..., ::-1], y[..., ::-1]
        s_tc, s_io = rng.uniform(0.9, 1.1, 2)
        x = np.stack([x[0] * s_tc, x[1] * s_io])
        return np.ascontiguousarray(x, np.float32), np.ascontiguousarray(y, np.int64)

    # ------------------------------------------------------------------------------------------ network
    def _px(self, mm: float) -> int:
        return max(1, int(round(mm / self.cfg.pixel_mm)))

    def loss(self, output: "torch.Tensor", y: "torch.Tensor") -> "torch.Tensor":
        """Squared hinges on the statements a focus mask makes about the output ``g`` (module docstring), with
        ``t`` the detection threshold, ``P`` the largest ``g`` inside the mask within ``PEAK_MM`` (no gradient),
        ``near`` = within ``RING_MM`` of the mask::

            L = mean_mask [relu(2t - g) / t]^2            the focus reaches the threshold (with a margin)
              + mean_far  [relu(g - t/2) / t]^2           nothing far from the foci does
              + mean_mask [relu(P/2 - g) / (P + t)]^2     the mask is inside the focus' half-maximum region
              + mean_ring [relu(g - P/2) / (P + t)]^2     ... and the ring just outside is not (ring = near - mask)

        The mask terms are means over the mask's pixels; the two "not here" terms are means over the pixels that
        break them (a false focus of 30 pixels among 30 000 background pixels weighs as much as a missed one, not
        a thousand times less); a set without pixels gives 0."""
        import torch
        import torch.nn.functional as F

        g = output[:, :1].float()
        fg = (y == 1).unsqueeze(1).to(g.dtype)
        r = self._px(RING_MM)
        near = F.max_pool2d(fg, 2 * r + 1, stride=1, padding=r)
        far, ring = 1.0 - near, near - fg
        rp = self._px(PEAK_MM)
        peak = F.max_pool2d((g * fg).detach(), 2 * rp + 1, stride=1, padding=rp)
        half, scale = REGION_FRACTION * peak, peak + self.threshold
        t = self.threshold

        def mean(v: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
            return (v * w).sum() / w.sum().clamp_min(1.0)

        def mean_violating(v: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
            return (v * w).sum() / (w * (v > 0).to(v.dtype)).sum().clamp_min(1.0)

        return (mean(torch.relu(FG_MARGIN * t - g).div(t) ** 2, fg)
                + mean_violating(torch.relu(g - BG_MARGIN * t).div(t) ** 2, far)
                + mean((torch.relu(half - g) / scale) ** 2, fg)
                + mean_violating((torch.relu(g - half) / scale) ** 2, ring))

    def predict(self, output: "torch.Tensor") -> "torch.Tensor":
        """The task's foci on each output image: :func:`detect_foci` (threshold ``t``, at most ``max_foci``,
        learned-image rules, no thyroid mask) -> 1 inside any focus, 0 elsewhere; ``(N, H, W)``."""
        import torch

        from MedSegAILib.tasks.parathyroid.foci import detect_foci, focus_masks

        g = output.detach()[:, 0].float().to("cpu").numpy()
        out = np.zeros(g.shape, np.int64)
        p = float(self.cfg.pixel_mm)
        for n, img in enumerate(g):
            found = detect_foci(img, (p, p), thyroid_mask=None, threshold=self.threshold, max_foci=self.max_foci,
                                classical=False)
            out[n] = focus_masks(found, img.shape) > 0
        return torch.from_numpy(out).to(output.device)
