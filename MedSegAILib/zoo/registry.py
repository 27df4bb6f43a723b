"""The model zoo: manifest entries, the user model folder, and checksum-verified loading of safetensors weights.

* Bundled models are listed in ``MedSegAILib/zoo/manifest.json``; their files live in ``MedSegAILib/weights/``.
* User models (imported or fine-tuned) live in the user model folder: ``$MEDSEGAI_MODEL_DIR`` or, when unset,
  ``~/.medsegai/models``. Each model is a sub-folder holding ``model.json`` (one manifest model object) with
  its weight files and card beside it. A user model with the same id and version as a bundled one is refused.
* :func:`load_model` verifies every weight file's SHA-256 against the manifest before reading a byte of it
  as tensors, and refuses mismatches, corrupt files and tensors that do not fit the architecture.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional

from MedSegAILib.errors import ModelError

if TYPE_CHECKING:
    import torch

ZOO_DIR = Path(__file__).resolve().parent
MANIFEST_PATH = ZOO_DIR / "manifest.json"
SCHEMA_PATH = ZOO_DIR / "manifest.schema.json"
WEIGHTS_DIR = ZOO_DIR.parent / "weights"
USER_DIR_ENV = "MEDSEGAI_MODEL_DIR"

_REQUIRED = ("id", "version", "task", "title", "license", "networks", "input", "labels", "training_data", "recipe",
             "metrics", "card")
_SEMVER = re.compile(r"^(0|[1-9]\d*)\.(0|[1-9]\d*)\.(0|[1-9]\d*)(?:-[0-9A-Za-z.-]+)?(?:\+[0-9A-Za-z.-]+)?$")


@dataclass(frozen=True)
class NetworkSpec:
    architecture: str
    hyperparameters: dict[str, Any]
    weights: Path  #: absolute path of the safetensors file
    sha256: str


@dataclass(frozen=True)
class ModelSpec:
    """One model of the zoo, as described by its manifest entry."""

    id: str
    version: str
    task: str
    title: str
    license: str
    networks: dict[str, NetworkSpec]
    input: dict[str, Any]
    labels: list[dict[str, Any]]
    training_data: str
    recipe: str
    metrics: dict[str, Any]
    card: Path
    description: str = ""
    source: str = "bundled"  #: "bundled" or "user"
    folder: Path = WEIGHTS_DIR
    base_model: Optional[str] = None
    created: Optional[str] = None
    raw: dict[str, Any] = field(default_factory=dict, compare=False, repr=False)

    @property
    def key(self) -> str:
        return f"{self.id}@{self.version}"

    @property
    def version_tuple(self) -> tuple[int, int, int]:
        m = _SEMVER.match(self.version)
        assert m is not None
        return int(m.group(1)), int(m.group(2)), int(m.group(3))


@dataclass
class LoadedModel:
    """A model ready to run: its spec and its networks (eval mode, on the run device)."""

    spec: ModelSpec
    networks: dict[str, "torch.nn.Module"]

    def to(self, device: "torch.device") -> "LoadedModel":
        for net in self.networks.values():
            net.to(device)
        return self


# ------------------------------------------------------------------------------------------------ parsing
def _parse_model(entry: dict[str, Any], folder: Path, source: str, where: str) -> ModelSpec:
    missing = [k for k in _REQUIRED if k not in entry]
    if missing:
        raise ModelError(f"{where}: model entry {entry.get('id', '?')!r} lacks {', '.join(missing)}.")
    if not _SEMVER.match(str(entry["version"])):
        raise ModelError(f"{where}: model {entry['id']!r} has version {entry['version']!r}, not a semantic version.")
    nets: dict[str, NetworkSpec] = {}
    if not isinstance(entry["networks"], dict) or not entry["networks"]:
        raise ModelError(f"{where}: model {entry['id']!r} lists no networks.")
    for name, n in entry["networks"].items():
        for k in ("architecture", "hyperparameters", "weights", "sha256"):
            if k not in n:
                raise ModelError(f"{where}: network {name!r} of model {entry['id']!r} lacks {k!r}.")
        if not re.fullmatch(r"[0-9a-f]{64}", str(n["sha256"])):
            raise ModelError(f"{where}: network {name!r} of model {entry['id']!r} has no valid sha256.")
        nets[name] = NetworkSpec(str(n["architecture"]), dict(n["hyperparameters"]), (folder / n["weights"]).resolve(),
                                 str(n["sha256"]))
    return ModelSpec(
        id=str(entry["id"]), version=str(entry["version"]), task=str(entry["task"]), title=str(entry["title"]),
        license=str(entry["license"]), networks=nets, input=dict(entry["input"]), labels=list(entry["labels"]),
        training_data=str(entry["training_data"]), recipe=str(entry["recipe"]), metrics=dict(entry["metrics"]),
        card=(folder / entry["card"]).resolve(), description=str(entry.get("description", "")), source=source,
        folder=folder, base_model=entry.get("base_model"), created=entry.get("created"), raw=dict(entry),
    )


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise ModelError(f"Cannot read the model manifest {path}: {exc}") from None


def validate_manifest(data: dict[str, Any]) -> None:
    """Validate a manifest against ``manifest.schema.json`` (needs ``jsonschema``; skipped when absent)."""
    try:
        import jsonschema
    except ImportError:  # Slicer's Python may lack it; the structural checks in _parse_model still apply
        return
    schema = json.loads(SCHEMA_PATH.read_text(encoding="utf-8"))
    try:
        jsonschema.validate(data, schema)
    except jsonschema.ValidationError as exc:
        raise ModelError(f"Model manifest does not follow its schema: {exc.message} (at {list(exc.absolute_path)})")


def user_model_dir() -> Path:
    """The user model folder: ``$MEDSEGAI_MODEL_DIR`` or ``~/.medsegai/models``."""
    env = os.environ.get(USER_DIR_ENV, "").strip()
    return Path(env).expanduser() if env else Path.home() / ".medsegai" / "models"


def bundled_models() -> list[ModelSpec]:
    data = _read_json(MANIFEST_PATH)
    validate_manifest(data)
    return [_parse_model(e, WEIGHTS_DIR, "bundled", str(MANIFEST_PATH)) for e in data.get("models", [])]


def user_models(folder: Optional[Path] = None) -> tuple[list[ModelSpec], list[str]]:
    """Models in the user folder, and a list of problems (unreadable entries are reported, not fatal)."""
    folder = folder or user_model_dir()
    specs: list[ModelSpec] = []
    problems: list[str] = []
    if not folder.is_dir():
        return specs, problems
    for mj in sorted(folder.glob("*/model.json")):
        if mj.parent.name.startswith("."):  # staging/deleting folders of MedSegAILib.finetune.publish
            continue
        try:
            entry = _read_json(mj)
            validate_manifest({"schema_version": 1, "models": [entry]})
            specs.append(_parse_model(entry, mj.parent, "user", str(mj)))
        except ModelError as exc:
            problems.append(str(exc))
    return specs, problems


def list_models(task: Optional[str] = None, include_user: bool = True) -> list[ModelSpec]:
    """All models (bundled first, then user models), optionally for one task, newest version first per id."""
    specs = bundled_models()
    if include_user:
        bundled_keys = {s.key for s in specs}
        specs += [s for s in user_models()[0] if s.key not in bundled_keys]
    if task is not None:
        specs = [s for s in specs if s.task == task]
    return sorted(specs, key=lambda s: (s.source != "bundled", s.id, tuple(-v for v in s.version_tuple)))


def get_model_spec(model: str, task: Optional[str] = None) -> ModelSpec:
    """Find ``"id"`` (newest version) or ``"id@version"``."""
    model_id, _, version = model.partition("@")
    candidates = [s for s in list_models() if s.id == model_id and (not version or s.version == version)]
    if not candidates:
        known = ", ".join(sorted({s.key for s in list_models(task)})) or "none"
        raise ModelError(f"No model {model!r} in the zoo{' for task ' + task if task else ''}. Known: {known}. "
                         f"User models go in {user_model_dir()} (set {USER_DIR_ENV} to change it).")
    best = max(candidates, key=lambda s: s.version_tuple)
    if task is not None and best.task != task:
        raise ModelError(f"Model {best.key} is for task {best.task!r}, not {task!r}.")
    return best


# ------------------------------------------------------------------------------------------------ loading
def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(chunk), b""):
            h.update(block)
    return h.hexdigest()


def verify_weights(spec: ModelSpec) -> None:
    """Raise :class:`ModelError` unless every weight file exists and matches its SHA-256."""
    for name, net in spec.networks.items():
        if not net.weights.is_file():
            raise ModelError(f"Model {spec.key}: weight file for {name!r} is missing ({net.weights}). "
                             "Reinstall the extension or re-import the model.")
        digest = sha256_file(net.weights)
        if digest != net.sha256:
            raise ModelError(
                f"Model {spec.key}: the weight file {net.weights.name} does not match its checksum "
                f"(expected {net.sha256[:12]}..., found {digest[:12]}...). The file is corrupt or was replaced; "
                "it was not loaded. Reinstall the extension or re-import the model."
            )


def load_model(model: "str | ModelSpec", device: "torch.device | str" = "cpu") -> LoadedModel:
    """Load all networks of a model onto ``device`` after verifying their checksums."""
    import torch
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    from MedSegAILib import nets

    spec = get_model_spec(model) if isinstance(model, str) else model
    verify_weights(spec)
    device = torch.device(device)
    loaded: dict[str, torch.nn.Module] = {}
    for name, net_spec in spec.networks.items():
        try:
            state = load_file(str(net_spec.weights), device="cpu")
        except (SafetensorError, OSError, ValueError) as exc:
            raise ModelError(f"Model {spec.key}: cannot read {net_spec.weights.name} as safetensors ({exc}).") from None
        net = nets.build(net_spec.architecture, **net_spec.hyperparameters)
        expected = net.state_dict()
        missing = sorted(set(expected) - set(state))
        unexpected = sorted(set(state) - set(expected))
        wrong = sorted(k for k in set(expected) & set(state) if tuple(expected[k].shape) != tuple(state[k].shape))
        if missing or unexpected or wrong:
            details = []
            if missing:
                details.append(f"{len(missing)} missing (e.g. {missing[0]})")
            if unexpected:
                details.append(f"{len(unexpected)} unexpected (e.g. {unexpected[0]})")
            if wrong:
                k = wrong[0]
                details.append(f"{len(wrong)} of the wrong shape (e.g. {k}: file {tuple(state[k].shape)}, "
                               f"network {tuple(expected[k].shape)})")
            raise ModelError(f"Model {spec.key}: the weights of {name!r} do not fit architecture "
                             f"{net_spec.architecture!r} with its manifest hyper-parameters: tensors "
                             + "; ".join(details) + ".")
        net.load_state_dict(state, strict=True)
        loaded[name] = net.to(device).eval()
    return LoadedModel(spec, loaded)
