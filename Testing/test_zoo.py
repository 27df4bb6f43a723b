"""The model zoo: manifest schema, user model folder, checksum-verified safetensors loading."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from MedSegAILib import nets
from MedSegAILib.errors import ModelError
from MedSegAILib.zoo import registry
from MedSegAILib.zoo.registry import (
    MANIFEST_PATH,
    SCHEMA_PATH,
    bundled_models,
    get_model_spec,
    list_models,
    load_model,
    sha256_file,
    user_models,
)


class TinyNet(torch.nn.Module):
    def __init__(self, channels: int = 2):
        super().__init__()
        self.conv = torch.nn.Conv3d(1, channels, 3, padding=1)

    def forward(self, x):  # noqa: ANN001
        return self.conv(x)


if "test-tiny" not in nets._BUILDERS:
    nets.register("test-tiny")(TinyNet)


def _write_user_model(root: Path, *, channels=2, version="1.0.0", model_id="tiny-user") -> Path:
    folder = root / f"{model_id}-{version}"
    folder.mkdir(parents=True)
    torch.manual_seed(0)
    save_file(TinyNet(channels).state_dict(), str(folder / "net.safetensors"))
    (folder / "CARD.md").write_text("# tiny test model\n")
    entry = {
        "id": model_id, "version": version, "task": "mpi-myocardium", "title": "Tiny test model",
        "license": "Apache-2.0",
        "networks": {"segmenter": {"architecture": "test-tiny", "hyperparameters": {"channels": 2},
                                   "weights": "net.safetensors", "sha256": sha256_file(folder / "net.safetensors")}},
        "input": {"modality": "NM"}, "labels": [{"value": 1, "name": "x"}], "training_data": "none",
        "recipe": "pytest", "metrics": {}, "card": "CARD.md",
    }
    (folder / "model.json").write_text(json.dumps(entry))
    return folder


@pytest.fixture()
def user_dir(tmp_path, monkeypatch) -> Path:
    monkeypatch.setenv("MEDSEGAI_MODEL_DIR", str(tmp_path))
    return tmp_path


def test_bundled_manifest_follows_its_schema_and_every_weight_file_verifies():
    jsonschema = pytest.importorskip("jsonschema")
    data = json.loads(MANIFEST_PATH.read_text())
    jsonschema.validate(data, json.loads(SCHEMA_PATH.read_text()))
    for spec in bundled_models():
        registry.verify_weights(spec)
        assert spec.card.is_file(), f"{spec.key} has no model card"
        text = spec.card.read_text()
        assert spec.recipe.split()[0] in text or "python -m" in text, f"{spec.key}: card lacks the recipe command"
        loaded = load_model(spec, "cpu")
        assert set(loaded.networks) == set(spec.networks)


def test_user_model_is_listed_and_loads(user_dir):
    _write_user_model(user_dir)
    spec = get_model_spec("tiny-user")
    assert spec.source == "user" and spec.key == "tiny-user@1.0.0"
    assert any(s.key == spec.key for s in list_models(task="mpi-myocardium"))
    model = load_model("tiny-user", "cpu")
    out = model.networks["segmenter"](torch.zeros(1, 1, 4, 4, 4))
    assert out.shape == (1, 2, 4, 4, 4)
    assert not model.networks["segmenter"].training


def test_newest_version_is_the_default_and_a_version_can_be_pinned(user_dir):
    _write_user_model(user_dir, version="1.0.0")
    _write_user_model(user_dir, version="1.10.0")
    _write_user_model(user_dir, version="1.2.0")
    assert get_model_spec("tiny-user").version == "1.10.0"
    assert get_model_spec("tiny-user@1.2.0").version == "1.2.0"


def test_checksum_mismatch_is_refused_before_loading(user_dir):
    folder = _write_user_model(user_dir)
    torch.manual_seed(1)
    save_file(TinyNet(2).state_dict(), str(folder / "net.safetensors"))  # replaced file, stale checksum
    with pytest.raises(ModelError, match="does not match its checksum"):
        load_model("tiny-user", "cpu")


def test_corrupt_weight_file_is_refused(user_dir):
    folder = _write_user_model(user_dir)
    (folder / "net.safetensors").write_bytes(b"\x00" * 64)
    entry = json.loads((folder / "model.json").read_text())
    entry["networks"]["segmenter"]["sha256"] = sha256_file(folder / "net.safetensors")
    (folder / "model.json").write_text(json.dumps(entry))
    with pytest.raises(ModelError, match="cannot read net.safetensors"):
        load_model("tiny-user", "cpu")


def test_weights_that_do_not_fit_the_architecture_are_refused(user_dir):
    folder = _write_user_model(user_dir)
    entry = json.loads((folder / "model.json").read_text())
    entry["networks"]["segmenter"]["hyperparameters"] = {"channels": 3}
    (folder / "model.json").write_text(json.dumps(entry))
    with pytest.raises(ModelError, match=r"2 of the wrong shape .*conv.bias: file \(2,\), network \(3,\)"):
        load_model("tiny-user", "cpu")


def test_missing_weight_file_and_unknown_architecture(user_dir):
    folder = _write_user_model(user_dir)
    (folder / "net.safetensors").unlink()
    with pytest.raises(ModelError, match="missing"):
        load_model("tiny-user", "cpu")
    with pytest.raises(ModelError, match="Unknown network architecture"):
        nets.build("no-such-architecture")


def test_broken_user_entries_are_reported_not_fatal(user_dir):
    _write_user_model(user_dir)
    bad = user_dir / "broken"
    bad.mkdir()
    (bad / "model.json").write_text("{not json")
    specs, problems = user_models()
    assert [s.id for s in specs] == ["tiny-user"]
    assert len(problems) == 1 and "broken" in problems[0]


def test_unknown_model_lists_what_is_known(user_dir):
    _write_user_model(user_dir)
    with pytest.raises(ModelError, match="tiny-user@1.0.0"):
        get_model_spec("nope")
    with pytest.raises(ModelError, match="not 'carpal'"):
        get_model_spec("tiny-user", task="carpal")
