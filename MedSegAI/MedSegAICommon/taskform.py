"""What the GUI shows for a task, derived from the task plug-in alone (pure Python: no Qt, no slicer).

* one input selector per :class:`~MedSegAILib.tasks.base.InputSpec`, stored as parameter ``input_<role>``;
* one editor per field of the task's ``Parameters`` dataclass, stored as ``param_<name>``; the editor kind
  follows the field type and its :func:`~MedSegAILib.tasks.base.param` metadata: ``choices`` -> combo box,
  ``bool`` -> check box, ``float`` with ``min`` and ``max`` -> slider, other ``float`` -> double spin box,
  ``int`` -> spin box, ``str`` -> line edit.
"""

from __future__ import annotations

import dataclasses
import math
import typing
from dataclasses import dataclass
from typing import Any, Mapping, Optional

INPUT_PREFIX = "input_"
PARAM_PREFIX = "param_"

_TYPE_NAMES = {"float": float, "int": int, "bool": bool, "str": str}


def inputKey(role: str) -> str:
    return f"{INPUT_PREFIX}{role}"


def paramKey(name: str) -> str:
    return f"{PARAM_PREFIX}{name}"


@dataclass(frozen=True)
class ParameterField:
    """One task parameter as the GUI presents it."""

    name: str  #: field name in the task's Parameters dataclass
    key: str  #: parameter-node name
    label: str
    pytype: type
    default: Any
    help: str
    widget: str  #: "QComboBox", "QCheckBox", "ctkSliderWidget", "QDoubleSpinBox", "QSpinBox" or "QLineEdit"
    minimum: Optional[float] = None
    maximum: Optional[float] = None
    choices: Optional[tuple] = None
    singleStep: Optional[float] = None
    decimals: Optional[int] = None


def humanize(name: str) -> str:
    words = name.replace("_", " ").strip()
    return words[:1].upper() + words[1:]


def _fieldType(cls: type, f: dataclasses.Field) -> Optional[type]:
    try:
        hints = typing.get_type_hints(cls)
    except Exception:  # noqa: BLE001 - forward references the GUI does not need
        hints = {}
    t = hints.get(f.name, f.type)
    if isinstance(t, str):
        t = _TYPE_NAMES.get(t.strip())
    origin = typing.get_origin(t)
    if origin is typing.Annotated:
        t = typing.get_args(t)[0]
    return t if t in (float, int, bool, str) else None


def _stepAndDecimals(minimum: Optional[float], maximum: Optional[float], default: Any) -> tuple[float, int]:
    span = (maximum - minimum) if minimum is not None and maximum is not None else abs(float(default or 1.0)) * 10
    span = span if span > 0 else 1.0
    step = 10 ** math.floor(math.log10(span / 100.0))
    decimals = max(0, -int(math.floor(math.log10(step))))
    return float(step), int(decimals)


def describeParameters(parametersClass: type) -> list[ParameterField]:
    """The editable fields of a task's Parameters dataclass (fields without a usable default are skipped:
    the task's own default applies)."""
    if not dataclasses.is_dataclass(parametersClass):
        return []
    out: list[ParameterField] = []
    for f in dataclasses.fields(parametersClass):
        if not f.init or f.default is dataclasses.MISSING:
            continue
        pytype = _fieldType(parametersClass, f)
        if pytype is None:
            continue
        md = f.metadata or {}
        minimum = md.get("min")
        maximum = md.get("max")
        choices = tuple(md["choices"]) if md.get("choices") else None
        step = decimals = None
        if choices is not None:
            widget = "QComboBox"
        elif pytype is bool:
            widget = "QCheckBox"
        elif pytype is float:
            widget = "ctkSliderWidget" if minimum is not None and maximum is not None else "QDoubleSpinBox"
            step, decimals = _stepAndDecimals(minimum, maximum, f.default)
        elif pytype is int:
            widget = "QSpinBox"
            step = 1
        else:
            widget = "QLineEdit"
        out.append(ParameterField(
            name=f.name, key=paramKey(f.name), label=str(md.get("label") or humanize(f.name)), pytype=pytype,
            default=f.default, help=str(md.get("help", "")), widget=widget, minimum=minimum, maximum=maximum,
            choices=choices, singleStep=step, decimals=decimals,
        ))
    return out


def buildParameters(parametersClass: type, valuesByKey: Mapping[str, Any]) -> Any:
    """An instance of the task's Parameters dataclass from parameter-node values (missing keys: defaults)."""
    kwargs = {}
    for field in describeParameters(parametersClass):
        if field.key in valuesByKey:
            value = valuesByKey[field.key]
            kwargs[field.name] = field.pytype(value) if value is not None else field.default
    return parametersClass(**kwargs)
