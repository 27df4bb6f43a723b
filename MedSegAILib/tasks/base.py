"""The one interface every task plug-in implements, and the typed result every front end consumes.

A task is a class deriving from :class:`Task` in a module of the ``MedSegAILib.tasks`` package; the
registry (:mod:`MedSegAILib.tasks.registry`) discovers it by scanning that package, so adding a task means
adding one module and touching no other task.

Data flow: front end -> ``{role: Volume}`` -> :meth:`Task.run` -> :class:`TaskResult` -> writers
(:mod:`MedSegAILib.outputs` for files, :mod:`MedSegAILib.mrml` for a Slicer scene).
All geometry in a result is on the grid of the task's *reference* input (``TaskResult.reference_role``).
"""

from __future__ import annotations

import abc
import csv
import dataclasses
import io
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar, Mapping, Optional, Sequence

import numpy as np

from MedSegAILib.core.volume import Volume
from MedSegAILib.engine.progress import CancelToken, Progress
from MedSegAILib.errors import InputError

if TYPE_CHECKING:  # torch is imported lazily everywhere
    import torch

    from MedSegAILib.finetune.adapter import TrainingAdapter
    from MedSegAILib.zoo.registry import LoadedModel, ModelSpec


# ---------------------------------------------------------------------------------------------- inputs
@dataclass(frozen=True)
class InputSpec:
    """One image a task needs."""

    role: str  #: key in the ``inputs`` mapping, e.g. ``"image"``, ``"sestamibi"``, ``"iodine"``
    title: str  #: label shown in the GUI, e.g. "SPECT volume"
    modality: str  #: DICOM modality the task expects: ``"NM"``, ``"CT"``, ``"CR"``/``"DX"``...
    dims: int  #: 3 for a volume, 2 for a planar image
    required: bool = True
    description: str = ""


# ---------------------------------------------------------------------------------------------- terminology
@dataclass(frozen=True)
class CodedTerm:
    """A DICOM-style coded concept: (coding scheme designator, code value, code meaning)."""

    scheme: str
    code: str
    meaning: str

    def as_slicer_triplet(self) -> str:
        """``scheme^code^meaning`` as Slicer's terminology tag strings use it."""
        return f"{self.scheme}^{self.code}^{self.meaning}"


ANATOMICAL_STRUCTURE = CodedTerm("SCT", "123037004", "Anatomical Structure")
MORPHOLOGICALLY_ALTERED_STRUCTURE = CodedTerm("SCT", "49755003", "Morphologically Altered Structure")
LEFT = CodedTerm("SCT", "7771000", "Left")
RIGHT = CodedTerm("SCT", "24028007", "Right")


@dataclass(frozen=True)
class LabelInfo:
    """One class of a label map: its value, name, display colour and standard terminology."""

    value: int
    name: str
    color: tuple[float, float, float]  #: RGB in [0, 1]
    category: CodedTerm
    type: CodedTerm
    type_modifier: Optional[CodedTerm] = None
    region: Optional[CodedTerm] = None
    region_modifier: Optional[CodedTerm] = None


# ---------------------------------------------------------------------------------------------- extras
@dataclass
class ScalarMap:
    """A scalar volume to show over the image (heterogeneity, uncertainty, subtraction...)."""

    name: str
    volume: Volume
    colormap: str = "Inferno"  #: matplotlib colormap name; also mapped to a Slicer colour node
    window: Optional[tuple[float, float]] = None  #: display range; None = data range
    units: str = ""
    description: str = ""
    #: show voxels at or below 0 as transparent (a map that is zero outside the structures it describes)
    zero_transparent: bool = False


@dataclass(frozen=True)
class Column:
    name: str
    unit: str = ""
    description: str = ""


@dataclass
class Table:
    """A small table: one row per structure, segment, nodule..."""

    name: str
    columns: list[Column]
    rows: list[list[Any]]
    description: str = ""

    def __post_init__(self) -> None:
        for r in self.rows:
            if len(r) != len(self.columns):
                raise ValueError(f"table {self.name!r}: row {r!r} does not have {len(self.columns)} cells")

    def header(self) -> list[str]:
        return [f"{c.name} [{c.unit}]" if c.unit else c.name for c in self.columns]

    def to_csv(self) -> str:
        buf = io.StringIO()
        w = csv.writer(buf, lineterminator="\n")
        w.writerow(self.header())
        for r in self.rows:
            w.writerow([_fmt(v) for v in r])
        return buf.getvalue()

    def column(self, name: str) -> list[Any]:
        idx = [c.name for c in self.columns].index(name)
        return [r[idx] for r in self.rows]


def _fmt(v: Any) -> Any:
    if isinstance(v, (float, np.floating)):
        return f"{float(v):.6g}"
    return v


@dataclass
class PointList:
    """Named points in LPS millimetres (markups fiducials in Slicer)."""

    name: str
    points_lps: np.ndarray  #: (N, 3)
    labels: list[str]
    descriptions: list[str] = field(default_factory=list)


@dataclass
class Plot:
    """Curves (a Slicer plot chart; a PNG outside Slicer)."""

    name: str
    x_label: str
    y_label: str
    series: dict[str, tuple[Sequence[float], Sequence[float]]]
    kind: str = "line"  #: "line" or "scatter": the style of every series not named in :attr:`styles`
    #: per-series style, ``series name -> "scatter" | "line" | "dashed"`` (e.g. the points of a Bland-Altman
    #: plot as a scatter, its bias as a line and its limits of agreement dashed); unnamed series use ``kind``
    styles: dict[str, str] = field(default_factory=dict)

    STYLES: ClassVar[tuple[str, ...]] = ("scatter", "line", "dashed")

    def style_of(self, series: str) -> str:
        """The drawing style of one series: its entry in :attr:`styles`, else :attr:`kind`."""
        return self.styles.get(series, self.kind)


@dataclass
class Picture:
    """A rendered picture (overlay, polar map...) as PNG bytes."""

    name: str
    png: bytes
    description: str = ""


@dataclass
class TaskResult:
    """Everything a task produces, in the geometry of its reference input."""

    task_id: str
    labelmap: Volume  #: integer label values of :attr:`labels`, 0 = background, on the reference grid
    labels: list[LabelInfo]
    reference_role: str = "image"
    maps: list[ScalarMap] = field(default_factory=list)
    tables: list[Table] = field(default_factory=list)
    points: list[PointList] = field(default_factory=list)
    plots: list[Plot] = field(default_factory=list)
    pictures: list[Picture] = field(default_factory=list)
    #: model id/version, device, date, parameters, timings... (JSON-serialisable values only)
    provenance: dict[str, Any] = field(default_factory=dict)
    #: notes for the user (assumptions made, quality flags); shown by every front end
    messages: list[str] = field(default_factory=list)

    def label_named(self, name: str) -> LabelInfo:
        for lab in self.labels:
            if lab.name == name:
                return lab
        raise KeyError(name)


# ---------------------------------------------------------------------------------------------- run context
@dataclass
class RunContext:
    """What a run needs besides its inputs: where to compute, how to report, how to stop."""

    device: "torch.device"
    progress: Progress = field(default_factory=Progress)
    cancel: CancelToken = field(default_factory=CancelToken)
    #: mixed precision on CUDA (ignored elsewhere)
    amp: bool = True
    #: upper bound for the inference engine's memory estimate, in bytes (None = ask the device)
    memory_limit_bytes: Optional[int] = None
    #: seconds spent per step, filled by the engine and the task (e.g. ``"network_forward"``)
    timings: dict[str, float] = field(default_factory=dict)
    #: notes for the user raised while running (e.g. a fall-back to the CPU after out-of-memory)
    messages: list[str] = field(default_factory=list)

    def add_time(self, key: str, seconds: float) -> None:
        self.timings[key] = self.timings.get(key, 0.0) + float(seconds)


# ---------------------------------------------------------------------------------------------- parameters
def param(default: Any, help: str, **constraints: Any) -> Any:
    """A typed task parameter: ``threshold: float = param(0.5, "...", min=0, max=1)``.

    Constraints understood by every front end: ``min``, ``max``, ``choices``.
    """
    return field(default=default, metadata={"help": help, **constraints})


def parameters_from_strings(cls: type, values: Mapping[str, str]) -> Any:
    """Build a parameters dataclass from ``name -> text`` (CLI ``--param k=v``), validating each value."""
    fields = {f.name: f for f in dataclasses.fields(cls)}
    kwargs: dict[str, Any] = {}
    for name, text in values.items():
        if name not in fields:
            raise InputError(f"Unknown parameter {name!r}; this task knows: {', '.join(sorted(fields)) or 'none'}.")
        f = fields[name]
        typ = f.type if isinstance(f.type, type) else {"float": float, "int": int, "bool": bool, "str": str}.get(
            str(f.type), str
        )
        try:
            if typ is bool:
                low = str(text).strip().lower()
                if low not in ("1", "0", "true", "false", "yes", "no", "on", "off"):
                    raise ValueError(text)
                kwargs[name] = low in ("1", "true", "yes", "on")
            else:
                kwargs[name] = typ(text)
        except ValueError:
            raise InputError(f"Parameter {name!r} expects a {typ.__name__}; got {text!r}.") from None
    return validate_parameters(cls(**kwargs))


def validate_parameters(params: Any) -> Any:
    """Check ``min``/``max``/``choices`` constraints declared with :func:`param`; returns ``params``."""
    for f in dataclasses.fields(params):
        v = getattr(params, f.name)
        md = f.metadata
        if "min" in md and v < md["min"]:
            raise InputError(f"Parameter {f.name!r} must be at least {md['min']}; got {v}.")
        if "max" in md and v > md["max"]:
            raise InputError(f"Parameter {f.name!r} must be at most {md['max']}; got {v}.")
        if "choices" in md and v not in md["choices"]:
            raise InputError(f"Parameter {f.name!r} must be one of {list(md['choices'])}; got {v!r}.")
    return params


@dataclass
class NoParameters:
    """For tasks without user parameters."""


# ---------------------------------------------------------------------------------------------- the task
class Task(abc.ABC):
    """Base class of a task plug-in. Subclasses set the class attributes and implement :meth:`run`."""

    id: ClassVar[str]
    title: ClassVar[str]
    description: ClassVar[str]
    inputs: ClassVar[tuple[InputSpec, ...]]
    Parameters: ClassVar[type] = NoParameters
    #: labels the task writes (the model may refine colours/terminology; the task owns the names)
    labels: ClassVar[tuple[LabelInfo, ...]] = ()
    #: id of the zoo model used when the user picks none (None: the task needs no network)
    default_model: ClassVar[Optional[str]] = None
    reference_role: ClassVar[str] = "image"

    def needs_model(self, params: Any) -> bool:
        """Whether a run with ``params`` uses a network (a task with a weight-free method returns False for it,
        and the pipeline then loads no model unless one is asked for)."""
        return self.default_model is not None

    def read_input(self, role: str, path: str) -> Volume:
        """Read the file of input ``role``. The default reads any format :func:`read_volume` knows; a task whose
        inputs need more (e.g. radiographs stored as RGB, MONOCHROME1) overrides this. Notes for the user made
        while reading go to ``meta["read_notes"]`` (a list of strings)."""
        from MedSegAILib.core.io import read_volume

        return read_volume(path)

    def scalar_from_vector(self, array: np.ndarray) -> tuple[np.ndarray, Optional[str]]:
        """Convert a colour/vector image ``array`` (``(..., C)``) to the scalar image this task reads, with a note
        for the user; the default refuses (no task takes colour images unless it says how)."""
        raise InputError(
            f"The image has {array.shape[-1]} components per pixel (colour or vector data); {self.title} needs a "
            "single-component grayscale image. Convert it with the Vector to Scalar Volume module first."
        )

    @property
    def accepts_colour_nodes(self) -> bool:
        """Whether colour (vector) volume nodes may be offered to this task (it overrides
        :meth:`scalar_from_vector`); the Slicer input selectors then list them."""
        return type(self).scalar_from_vector is not Task.scalar_from_vector

    def input_spec(self, role: str) -> InputSpec:
        for spec in self.inputs:
            if spec.role == role:
                return spec
        raise KeyError(role)

    def validate_inputs(self, inputs: Mapping[str, Volume]) -> None:
        """Generic checks from :attr:`inputs`; tasks extend this with modality-specific checks.

        Raises :class:`InputError` with an actionable message; never modifies the inputs.
        """
        from MedSegAILib.core.validate import check_volume

        for spec in self.inputs:
            vol = inputs.get(spec.role)
            if vol is None:
                if spec.required:
                    raise InputError(f"{self.title} needs the {spec.title} ({spec.role!r}); none was given.")
                continue
            check_volume(vol, spec)
        unknown = set(inputs) - {s.role for s in self.inputs}
        if unknown:
            raise InputError(
                f"{self.title} does not take input(s) {sorted(unknown)}; it takes {[s.role for s in self.inputs]}."
            )

    def check_model(self, model: Optional["LoadedModel"], networks: Sequence[str]) -> None:
        """Raise :class:`~MedSegAILib.errors.ModelError` unless ``model`` is loaded, provides every network in
        ``networks``, and calls each of this task's label values by the task's own name (a model trained with
        another label order would otherwise be silently wrong)."""
        from MedSegAILib.errors import ModelError

        if model is None:
            raise ModelError(f"The {self.title} task needs a model (default {self.default_model!r}); none was loaded.")
        missing = set(networks) - set(model.networks)
        if missing:
            raise ModelError(
                f"Model {model.spec.id!r} lacks the network(s) {sorted(missing)}; the {self.title} task needs "
                + " and ".join(repr(n) for n in networks) + "."
            )
        names = {int(d["value"]): str(d["name"]) for d in (model.spec.labels or [])}
        for lab in self.labels:
            if lab.value in names and names[lab.value] != lab.name:
                raise ModelError(
                    f"Model {model.spec.id!r} calls label {lab.value} {names[lab.value]!r}, but this task writes "
                    f"{lab.name!r}; the model was trained for a different label convention."
                )

    def training_adapter(self, spec: "ModelSpec") -> "TrainingAdapter":
        """How the main network of model ``spec`` is trained/fine-tuned on user cases
        (:class:`MedSegAILib.finetune.adapter.TrainingAdapter`). Tasks that support local training override
        this; the default refuses clearly."""
        from MedSegAILib.errors import ModelError

        raise ModelError(f"The {self.title} task does not support local training or fine-tuning yet.")

    @abc.abstractmethod
    def run(
        self,
        inputs: Mapping[str, Volume],
        params: Any,
        model: Optional["LoadedModel"],
        ctx: RunContext,
    ) -> TaskResult:
        """Segment ``inputs`` and return a :class:`TaskResult` on the reference input's grid.

        Must call ``ctx.cancel.check()`` regularly and report through ``ctx.progress``; must not modify
        the input volumes.
        """
