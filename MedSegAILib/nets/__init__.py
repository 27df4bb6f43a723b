"""Network architectures, built by name from the model manifest.

Each architecture module registers a builder with :func:`register`; the zoo calls :func:`build` with the
``architecture`` and ``hyperparameters`` of a manifest entry, so a weight file can only ever be loaded
into the network it was trained as.
"""

from __future__ import annotations

import importlib
import pkgutil
from typing import Any, Callable

_BUILDERS: dict[str, Callable[..., Any]] = {}


def register(name: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Class/function decorator: ``@register("unet3d")`` makes ``build("unet3d", **hp)`` call it."""

    def deco(builder: Callable[..., Any]) -> Callable[..., Any]:
        if name in _BUILDERS and _BUILDERS[name] is not builder:
            raise ValueError(f"architecture {name!r} registered twice")
        _BUILDERS[name] = builder
        return builder

    return deco


def _discover() -> None:
    for mod in pkgutil.iter_modules(__path__):
        importlib.import_module(f"{__name__}.{mod.name}")


def available() -> list[str]:
    _discover()
    return sorted(_BUILDERS)


def build(name: str, **hyperparameters: Any) -> Any:
    """Instantiate architecture ``name`` (a ``torch.nn.Module``) with the manifest's hyper-parameters."""
    from MedSegAILib.errors import ModelError

    _discover()
    if name not in _BUILDERS:
        raise ModelError(f"Unknown network architecture {name!r}; this MedSegAILib knows {sorted(_BUILDERS)}. "
                         "The model may need a newer MedSegAI version.")
    try:
        return _BUILDERS[name](**hyperparameters)
    except TypeError as exc:
        raise ModelError(f"The manifest's hyper-parameters do not fit architecture {name!r}: {exc}") from None
