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
