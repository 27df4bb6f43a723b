"""Training adapter of the myocardium task: the segmenter on its 3 mm box, as the task feeds it.

A case (SPECT volume + label map with 1 = myocardium, 2 = cavity on the SPECT grid) becomes one sample: the box
of :func:`preprocess.prepare_segmenter_input` centred on the labelled left ventricle, 8 voxels (24 mm) larger than
the network box on each axis so that random crops move the ventricle around in the box as the localiser's errors
do; intensities normalised exactly as at inference; labels resampled onto the box by nearest neighbour.
Augmentation is the recipe's (flips and axis permutations of the box, intensity gain 0.85-1.15). The localiser
is carried over unchanged.
"""

from __future__ import annotations

from typing import Any, Mapping

import numpy as np

from MedSegAILib.core.resample import resample_volume
from MedSegAILib.core.volume import Volume
from MedSegAILib.errors import InputError
from MedSegAILib.finetune.adapter import Sample, TrainingAdapter, centre_of_mask
from MedSegAILib.tasks.mpi_myocardium import preprocess as pp

MARGIN = 8  #: extra voxels of the training box on each side (random crops = +-24 mm of centring error)


class MyocardiumAdapter(TrainingAdapter):
    network = "segmenter"
    classes = {1: 1, 2: 2}  # network channel -> task label (myocardium, cavity)
    batch_cpu = 2
    batch_gpu = 8

    def __init__(self, spec: Any):
        super().__init__(spec)
        self.cfg = pp.PreprocessConfig.from_mapping(spec.input)
        self.patch = tuple(self.cfg.segmenter_shape)
        self.divisor = 8

    def prepare(self, inputs: Mapping[str, Volume], labels: Volume, case: str) -> list[Sample]:
        vol = inputs["image"]
        centre = centre_of_mask(labels)
        if centre is None:
            raise InputError(f"{case}: the mask is empty.")
        shape = tuple(n + 2 * MARGIN for n in self.cfg.segmenter_shape)
        x, grid = pp.prepare_segmenter_input(vol, centre, self.cfg, shape=shape)
        y = resample_volume(labels, reference=grid, interpolation="nearest").array
        inner = tuple(slice(MARGIN, MARGIN + n) for n in self.cfg.segmenter_shape)
        inside_mm3 = np.count_nonzero(y[inner]) * self.cfg.segmenter_spacing_mm ** 3
        kept = inside_mm3 / max(np.count_nonzero(labels.array) * labels.voxel_volume_mm3, 1.0)
        if kept < 0.8:
            raise InputError(f"{case}: the labelled structure does not fit in the segmenter's "
                             f"{self.cfg.segmenter_box_mm:.0f} mm box ({kept:.0%} inside); is the mask the left "
                             "ventricle (1 = myocardium, 2 = cavity)?")
        return [Sample(x.astype(np.float32), self.labels_to_channels(y), case)]

    def augment(self, x: np.ndarray, y: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        from MedSegAILib.train.mpi_myocardium import _augment

        x, y = _augment(rng, [x, y])
        return np.clip(x * rng.uniform(0.85, 1.15), 0, self.cfg.normalise_clip).astype(np.float32), y
