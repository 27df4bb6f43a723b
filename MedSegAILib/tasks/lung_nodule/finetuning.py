"""Fine-tuning adapter of the lung-nodule task: the LNHG generator (network ``"generator"``) on user nodule masks.

Case -> samples (:meth:`LungGeneratorAdapter.prepare`): every 26-connected component of ``labels > 0`` (on the CT's
grid; the task writes one label value per nodule, 1..N, and *any* non-zero value counts as nodule here), largest
first, gives one sample (except fragments: components under :data:`FRAGMENT_MM3` lying in an earlier sample's
window, which that sample already holds): a working-grid window
(:data:`~MedSegAILib.tasks.lung_nodule.segmentation.WORK_SPACING`, x, y, z = 0.75, 0.75, 1.0 mm, the CT's own
orientation, :func:`~MedSegAILib.tasks.lung_nodule.segmentation.working_box`) centred on the component's centroid, of :data:`WINDOW` = 44 x 64 x 64 voxels (z, y, x; 44 x 48 x 48 mm): the generator's
training patch :data:`~MedSegAILib.train.lung_generator.PATCH` (32 x 48 x 48) plus the recipe's +-6 mm shift on
each side, so the engine's random crop to :attr:`~LungGeneratorAdapter.patch` *is* the recipe's random shift, and
its centred crop (validation) is the task's box centred on the nodule. CT linear (outside the CT -1000 HU, as in
training), ``x = (clip(HU, -1000, 500) + 1000) / 1000``; mask = every nodule voxel in the window (labels > 0,
linear then >= 0.5, as :func:`MedSegAILib.train.lidc.to_working_grid`), int64 0/1.

Augmentation: the recipe's :func:`~MedSegAILib.train.lung_generator.augment_pair` (HU ``hu * s + o``,
s ~ U(0.95, 1.05), o ~ U(-30, 30), random x/y flips, random 90-degree in-plane turns).

Network output: the generator ends in ``ReLU(z)``, ``z = G.residual(x) + x`` (a nodule *image*, not logits), and
its loss needs ``z`` (pre-ReLU, for the soft Dice) and ``x`` (the target image is ``x * mask``), so
:meth:`~LungGeneratorAdapter.forward` returns the 2-channel tensor ``cat([z, x])``. Loss = stage 2 of the recipe
without the adversarial term (:func:`~MedSegAILib.train.lung_generator.generator_loss` with weight 0):
``MSE(ReLU z, x m) + L1(ReLU z, x m) + 1 - softDice(sigmoid((z - 0.05) / 0.01), m)``. Prediction:
``ReLU(z) > tau`` with the model's ``nodule_threshold`` (manifest ``input``; 0.02 for the shipped model), the
threshold the task itself applies. Validation (the engine scores whole samples) runs the generator on the centred
patch of the window only, the task's box around the nodule (:meth:`LungGeneratorAdapter.forward`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Mapping

import numpy as np

from MedSegAILib.core.volume import Volume
from MedSegAILib.errors import InputError
from MedSegAILib.finetune.adapter import Sample, TrainingAdapter
from MedSegAILib.tasks.lung_nodule.segmentation import WORK_SPACING, HU_MIN, hu_to_work
from MedSegAILib.train.lung_generator import PATCH, SHIFT_MM

if TYPE_CHECKING:
    import torch

#: sample window (z, y, x working voxels): the training patch plus the recipe's +-SHIFT_MM shift on each side
WINDOW = tuple(int(p + 2 * round(SHIFT_MM / s)) for p, s in zip(PATCH, WORK_SPACING[::-1]))
#: a component smaller than this (mm^3; equivalent diameter 3 mm, the task's smallest nodule) inside an earlier
#: sample's window is a fragment of that mask, not a nodule of its own
FRAGMENT_MM3 = float(np.pi / 6.0 * 3.0 ** 3)


def _inside(window: Volume, point_lps: np.ndarray) -> bool:
    """Whether an LPS point lies inside a window's voxels."""
    ijk = window.lps_to_index(np.asarray(point_lps, float).reshape(1, 3))[0]
    return bool(np.all(ijk >= -0.5) and np.all(ijk <= np.asarray(window.array.shape[::-1]) - 0.5))


def _components(mask: np.ndarray) -> list[tuple[np.ndarray, int]]:
    """26-connected components of a boolean array, largest first: ``(centroid (k, j, i), voxel count)``."""
    from scipy import ndimage

    lab, n = ndimage.label(mask, structure=np.ones((3, 3, 3), bool))
    if n == 0:
        return []
    out = []
    for c, sl in enumerate(ndimage.find_objects(lab), start=1):
        idx = np.argwhere(lab[sl] == c) + np.array([s.start for s in sl])
        out.append((idx.mean(0), len(idx)))
    return sorted(out, key=lambda t: -t[1])


class LungGeneratorAdapter(TrainingAdapter):
    """Training adapter of the LNHG generator (see the module docstring).

    ``classes = {1: 1}``: the network has one foreground "channel" (nodule); :meth:`labels_to_channels` maps every
    non-zero task label value (nodules 1, 2, ... of the task's output) to it."""

    network = "generator"
    patch = tuple(PATCH)
    classes = {1: 1}
    pad_value = 0.0  # working scale of -1000 HU (air), the recipe's padding
    divisor = 4
    batch_cpu = 4  # the recipe's batch
    batch_gpu = 16

    def __init__(self, spec: Any):
        super().__init__(spec)
        from MedSegAILib.tasks.lung_nodule import LungNoduleConfig

        self.threshold = float(LungNoduleConfig.from_mapping(getattr(spec, "input", None)).nodule_threshold)

    # ------------------------------------------------------------------------------------------ data
    def labels_to_channels(self, labels: np.ndarray) -> np.ndarray:
        """Any non-zero label value (one per nodule in the task's output) -> channel 1."""
        return (np.asarray(labels) > 0).astype(np.int64)

    def prepare(self, inputs: Mapping[str, Volume], labels: Volume, case: str) -> list[Sample]:
        """One sample per connected nodule of ``labels`` (CT grid); see the module docstring. ``meta``: the
        window's ``origin``/``spacing``/``direction`` (LPS, mm; the geometry of ``y`` on the working grid),
        ``centre_lps`` (the component's centroid) and ``volume_mm3`` (the component on the CT grid)."""
        from MedSegAILib.core.resample import resample_volume
        from MedSegAILib.tasks.lung_nodule.segmentation import _index_box, sub_volume, working_box

        ct = inputs.get("image")
        if ct is None:
            raise InputError(f"Case {case!r}: the lung-nodule task needs its chest CT (input 'image').")
        if tuple(labels.array.shape) != tuple(ct.array.shape):
            raise InputError(f"Case {case!r}: the nodule mask ({labels.array.shape}) is not on the CT's grid "
                             f"({ct.array.shape}); resample it onto the CT first.")
        fg = np.asarray(labels.array) > 0
        comps = _components(fg)
        if not comps:
            raise InputError(f"Case {case!r}: the nodule mask is empty; outline at least one nodule.")
        size_mm = [n * s for n, s in zip(WINDOW[::-1], WORK_SPACING)]
        fg_vol = labels.with_array(fg)
        samples: list[Sample] = []
        windows: list[Volume] = []
        for n, (kji, count) in enumerate(comps):
            centre = ct.index_to_lps(kji[::-1])[0]
            volume = float(count * ct.voxel_volume_mm3)
            if volume < FRAGMENT_MM3 and any(_inside(w, centre) for w in windows):
                continue  # a fragment of a mask already in an earlier window (its voxels are in that sample's y)
            grid = working_box(ct, centre, size_mm, WORK_SPACING, self.divisor)
            lo, hi = _index_box(ct, grid, 2)
            src = sub_volume(ct, lo, hi)
            hu = resample_volume(src.with_array(np.asarray(src.array, np.float32)), reference=grid,
                                 interpolation="linear", default_value=HU_MIN).array
            msub = sub_volume(fg_vol, lo, hi)
            msub = msub.with_array(np.asarray(msub.array, np.float32))
            m = resample_volume(msub, reference=grid, interpolation="linear", default_value=0.0).array >= 0.5
            if not m.any():  # a speck smaller than a working voxel: nothing to learn from
                continue
            windows.append(Volume(m, grid.spacing, grid.origin, grid.direction))
            samples.append(Sample(
                x=hu_to_work(hu)[None], y=m.astype(np.int64), case=case,
                meta={"component": n, "centre_lps": [float(v) for v in centre], "volume_mm3": volume,
                      "origin": list(grid.origin), "spacing": list(grid.spacing),
                      "direction": np.asarray(grid.direction).tolist()}))
        if not samples:
            raise InputError(f"Case {case!r}: the nodule mask holds only specks smaller than the working voxel "
                             "(0.75 x 0.75 x 1 mm); outline the nodules.")
        return samples

    def augment(self, x: np.ndarray, y: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        """The recipe's :func:`~MedSegAILib.train.lung_generator.augment_pair` on the HU values of ``x``."""
        from MedSegAILib.train.lung_generator import augment_pair

        hu = np.asarray(x[0], np.float32) * 1000.0 + HU_MIN  # inverse of the working scale (inside its clip range)
        hu, m = augment_pair(hu, y, rng)
        return np.ascontiguousarray(hu_to_work(hu)[None]), np.ascontiguousarray(m).astype(np.int64)

    # ------------------------------------------------------------------------------------------ network
    def forward(self, net: "torch.nn.Module", x: "torch.Tensor") -> "torch.Tensor":
        """``cat([z, x], 1)`` with the pre-ReLU ``z = net.residual(x) + x`` (the generator's output is
        ``ReLU(z)``).

        An input larger than :attr:`patch` (the engine validates on whole samples, :data:`WINDOW`) is run on its
        centred patch only, as the task runs the generator on a box of the training size centred on the nodule
        (group-norm statistics depend on the window); outside that patch ``z = -1`` (no nodule)."""
        import torch

        spatial = tuple(int(n) for n in x.shape[2:])
        if len(self.patch) != len(spatial) or all(n <= p for n, p in zip(spatial, self.patch)):
            return torch.cat([net.residual(x) + x, x], dim=1)
        box = (Ellipsis,) + tuple(slice((n - p) // 2, (n - p) // 2 + p) if n > p else slice(0, n)
                                  for n, p in zip(spatial, self.patch))
        xc = x[box]
        z = torch.full_like(x, -1.0)
        z[box] = net.residual(xc) + xc
        return torch.cat([z, x], dim=1)

    def loss(self, output: "torch.Tensor", y: "torch.Tensor") -> "torch.Tensor":
        """The recipe's generator loss without the adversarial term (see the module docstring)."""
        from MedSegAILib.train.lung_generator import generator_loss

        out = output.float()
        z, x = out[:, :1], out[:, 1:2]
        mask = (y > 0).to(out.dtype).unsqueeze(1)
        loss, _ = generator_loss(lambda a, b: a.new_zeros(a.shape[0]), x, mask, z, adv_weight=0.0)
        return loss

    def predict(self, output: "torch.Tensor") -> "torch.Tensor":
        """The task's own rule on a window centred on the nodule: ``ReLU(z) > threshold``, then the connected
        component at the window's centre (or the nearest within 5 mm, :func:`segmentation.component_at`), as class
        indices 0/1 ``(N, *spatial)`` (accepts the plain 1-channel generator output too). Only validation uses it
        (its windows are centred), so validation Dice is the Dice the task would give with the centre known."""
        import torch

        from MedSegAILib.tasks.lung_nodule.segmentation import component_at

        masks = (output[:, 0] > self.threshold).cpu().numpy()
        out = np.zeros(masks.shape, np.int64)
        for n, m in enumerate(masks):
            out[n] = component_at(m, (np.asarray(m.shape, float) - 1) / 2.0, WORK_SPACING)
        return torch.from_numpy(out).to(output.device)


__all__ = ["LungGeneratorAdapter", "WINDOW"]
