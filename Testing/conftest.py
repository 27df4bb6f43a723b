"""Shared pytest fixtures for the MedSegAI test suite."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest


ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def test_data() -> Path:
    """The real shared data (``MEDSEGAI_TEST_DATA``); tests using it skip, with the reason, when it is unset."""
    env = os.environ.get("MEDSEGAI_TEST_DATA", "").strip()
    if not env:
        pytest.skip("MEDSEGAI_TEST_DATA is not set (point it to the shared data folder, e.g. ../shared/data)")
    path = Path(env)
    if not path.is_dir():
        pytest.skip(f"MEDSEGAI_TEST_DATA={env} is not a folder")
    return path


@pytest.fixture(autouse=True)
def _isolated_user_models(tmp_path_factory, monkeypatch):
    """Every test sees an empty user model folder of its own unless it sets one."""
    monkeypatch.setenv("MEDSEGAI_MODEL_DIR", str(tmp_path_factory.mktemp("user-models")))


@pytest.fixture()
def one_torch_thread():
    """torch limited to one thread for the test (the CI machine has 2 cores; tests must not fight over them)."""
    torch = pytest.importorskip("torch")
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


TINY_MPI_HP = {"in_channels": 1, "out_channels": 3, "features": [2, 4, 8, 8], "levels": 3, "norm": "batch"}


@pytest.fixture()
def tiny_mpi_model(tmp_path, monkeypatch) -> Path:
    """A user model ``tiny-mpi@1.0.0`` for the myocardium task whose segmenter is tiny (seeded; the localiser is the
    bundled one, byte for byte), in a fresh user model folder (returned) — for fast fine-tuning tests."""
    import json

    torch = pytest.importorskip("torch")
    from safetensors.torch import save_file

    from MedSegAILib import nets
    from MedSegAILib.zoo.registry import get_model_spec, sha256_file

    folder = tmp_path / "models"
    monkeypatch.setenv("MEDSEGAI_MODEL_DIR", str(folder))
    base = get_model_spec("mpi-myocardium-unet3d")
    d = folder / "tiny-mpi"
    d.mkdir(parents=True)
    torch.manual_seed(0)
    save_file(nets.build("unet3d", **TINY_MPI_HP).state_dict(), str(d / "segmenter.safetensors"))
    (d / "localizer.safetensors").write_bytes(base.networks["localizer"].weights.read_bytes())
    entry = dict(base.raw)
    entry.update({"id": "tiny-mpi", "version": "1.0.0", "card": "card.md", "metrics": {}, "networks": {
        "localizer": dict(base.raw["networks"]["localizer"], weights="localizer.safetensors"),
        "segmenter": {"architecture": "unet3d", "hyperparameters": TINY_MPI_HP, "weights": "segmenter.safetensors",
                      "sha256": sha256_file(d / "segmenter.safetensors")}}})
    (d / "card.md").write_text("# tiny\n")
    (d / "model.json").write_text(json.dumps(entry))
    return folder
