"""The contract between a task and the one training loop.

A task that can be trained or fine-tuned overrides ``Task.training_adapter(spec)`` and returns a
:class:`TrainingAdapter` for one network of the model ``spec`` (the task's main segmenter; auxiliary networks
such as localisers and detectors are carried over unchanged into the new model version).

The adapter turns one *case* — the task's inputs ``{role: Volume}`` plus a reference label map on the grid of
the task's reference input, holding the task's own label values (0 = background) — into one or more
:class:`Sample` s on the network's grid. The generic engine then crops/pads samples to :attr:`patch`, applies
:meth:`augment`, batches, trains with :meth:`loss`, and scores validation samples with :meth:`predict`
(Dice per foreground class on the network grid, mean over classes and samples).

Defaults fit a plain multi-class segmenter (logits ``(N, K, ...)``, cross-entropy + soft Dice, arg-max); a
task overrides only what differs (e.g. the lung-nodule generator outputs a nodule *image*, not logits).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import lru_cache
from typing import TYPE_CHECKING, Any, Mapping, Optional, Sequence

import numpy as np

from MedSegAILib.core.volume import Volume

if TYPE_CHECKING:
    import torch


@dataclass
class Sample:
    """One network-grid training sample.

    ``x``: float32 ``(C, *spatial)`` network input (already normalised); ``y``: int64 ``(*spatial)`` class
    indices of the network's output channels (0 = background); ``case``/``patient``: where it came from (splits
    are by patient; a case can give several samples, e.g. one per nodule); ``meta``: anything the adapter needs
    later (e.g. a working-image target).
    """

    x: np.ndarray
    y: np.ndarray
    case: str = ""
    patient: str = ""
    meta: dict[str, Any] = field(default_factory=dict)


class TrainingAdapter:
    """How a task's network is trained. Subclass and set :attr:`network`, :attr:`patch`, :attr:`classes`;
    implement :meth:`prepare`."""

    #: name of the network of the model that is trained (the others are carried over unchanged)
    network: str = "segmenter"
    #: spatial training patch (voxels, network axis order); samples larger are cropped at random, smaller padded
    patch: tuple[int, ...] = ()
    #: network output channel -> task label value, for the foreground channels (``{1: 1, 2: 2}``); channels not
    #: listed are background. Used to check that the user's masks only hold labels the model knows.
    classes: Mapping[int, int] = {}
    #: value used to pad the input outside the image when a sample is smaller than :attr:`patch`
    pad_value: float = 0.0
    #: spatial sizes of the network input must be multiples of this (2 ** levels)
    divisor: int = 8
    #: share of training patches placed so that they contain a random labelled voxel (the rest anywhere in the
    #: sample): structures small against the sample are then seen in most batches
    foreground_crop: float = 0.67
    #: default batch size on a CPU / on a GPU
    batch_cpu: int = 2
    batch_gpu: int = 8

    def __init__(self, spec: Any):
        self.spec = spec

    # ------------------------------------------------------------------------------------------ data
    def prepare(self, inputs: Mapping[str, Volume], labels: Volume, case: str) -> list[Sample]:
        """Network samples of one case. ``labels`` lies on the reference input's grid and holds task label
        values; raise :class:`~MedSegAILib.errors.InputError` with the case name for a case that cannot be used."""
        raise NotImplementedError

    def augment(self, x: np.ndarray, y: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        """Random augmentation of one cropped sample (default: intensity gain 0.9–1.1 and Gaussian noise of 2 %
        of the sample's standard deviation; no geometric change, so left stays left)."""
        gain = rng.uniform(0.9, 1.1)
        noise = rng.normal(0.0, 0.02 * float(x.std()) + 1e-6, x.shape).astype(np.float32)
        return (x * gain + noise).astype(np.float32), y

    # ------------------------------------------------------------------------------------------ network
    def forward(self, net: "torch.nn.Module", x: "torch.Tensor") -> "torch.Tensor":
        """Network output for a batch ``x`` ``(N, C, *spatial)`` (default ``net(x)``)."""
        return net(x)

    def loss(self, output: "torch.Tensor", y: "torch.Tensor") -> "torch.Tensor":
        """Training loss for a batch (default: cross-entropy + soft Dice of the foreground channels)."""
        import torch

        from MedSegAILib.train.losses import soft_dice_loss

        k = output.shape[1]
        target = torch.nn.functional.one_hot(y.long(), k).movedim(-1, 1).to(output.dtype)
        ce = torch.nn.functional.cross_entropy(output, y.long())
        return ce + soft_dice_loss(output, target, classes=tuple(range(1, k)), eps=1.0, batch_dice=False,
                                   empty="include")

    def predict(self, output: "torch.Tensor") -> "torch.Tensor":
        """Class indices ``(N, *spatial)`` from a network output (default arg-max over channels)."""
        return output.argmax(1)

    # ------------------------------------------------------------------------------------------ helpers
    def network_hyperparameters(self, model_kind: str) -> dict[str, Any]:
        """The hyper-parameters of :attr:`network` in the model, or a :class:`ModelError` saying the model is not
        a ``model_kind`` (e.g. "carpal") model when it lacks that network."""
        from MedSegAILib.errors import ModelError

        net = (getattr(self.spec, "networks", None) or {}).get(self.network)
        if net is None:
            raise ModelError(f"Model {getattr(self.spec, 'id', self.spec)!r} has no {self.network!r} network; it is "
                             f"not a {model_kind} model and cannot be fine-tuned by the {model_kind} task.")
        return dict(net.hyperparameters)

    def foreground_channels(self) -> list[int]:
        return sorted(int(c) for c in self.classes)

    def channel_of_label(self) -> dict[int, int]:
        """Task label value -> network channel."""
        return {int(v): int(c) for c, v in self.classes.items()}

    def labels_to_channels(self, labels: np.ndarray) -> np.ndarray:
        """Task label values -> network channel indices (unknown values are an error upstream)."""
        out = np.zeros(labels.shape, np.int64)
        for value, channel in self.channel_of_label().items():
            out[labels == value] = channel
        return out


@lru_cache(maxsize=None)
def recipe_defaults(recipe: str) -> Any:
    """The command-line defaults of training recipe ``MedSegAILib.train.<recipe>`` (its ``parse_args``): one
    definition of a training patch, shift or tile for the recipe and the fine-tuning adapter."""
    import importlib

    return importlib.import_module(f"MedSegAILib.train.{recipe}").parse_args(["--out", "-"])


def centre_of_mask(labels: Volume) -> Optional[np.ndarray]:
    """LPS centre (mm) of the non-zero voxels of a label map, or None when it is empty."""
    idx = np.argwhere(labels.array > 0)
    if idx.size == 0:
        return None
    kji = idx.mean(axis=0)
    return labels.index_to_lps(kji[::-1])[0]


def crop_or_pad(x: np.ndarray, y: np.ndarray, patch: Sequence[int], rng: Optional[np.random.Generator],
                pad_value: float = 0.0, around: Optional[Sequence[int]] = None) -> tuple[np.ndarray, np.ndarray]:
    """Crop ``x`` ``(C, *S)`` and ``y`` ``(*S)`` to ``patch`` (random offset with ``rng``, centred without;
    with ``around``, a voxel index, a random offset among those whose crop contains that voxel), padding with
    ``pad_value`` / background where the sample is smaller."""
    spatial = y.shape
    xo = np.full((x.shape[0],) + tuple(patch), pad_value, np.float32)
    yo = np.zeros(tuple(patch), np.int64)
    src, dst = [], []
    for ax, (n, p) in enumerate(zip(spatial, patch)):
        if n >= p:
            lo, hi = 0, n - p
            if around is not None:
                lo, hi = max(0, int(around[ax]) - p + 1), min(n - p, int(around[ax]))
            s = int(rng.integers(lo, hi + 1)) if rng is not None else (n - p) // 2
            src.append(slice(s, s + p))
            dst.append(slice(0, p))
        else:
            d = int(rng.integers(0, p - n + 1)) if rng is not None else (p - n) // 2
            src.append(slice(0, n))
            dst.append(slice(d, d + n))
    xo[(slice(None),) + tuple(dst)] = x[(slice(None),) + tuple(src)]
    yo[tuple(dst)] = y[tuple(src)]
    return xo, yo
