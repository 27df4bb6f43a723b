"""The README's main job: `medsegai demo` on the embedded volume, and the zoo/task listings, as a user runs them."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np

from MedSegAILib import cli
from MedSegAILib.core.io import read_volume
from MedSegAILib.metrics import dice


def test_demo_writes_every_output_and_matches_the_simulated_truth(tmp_path, capsys):
    rc = cli.main(["demo", "-o", str(tmp_path), "--device", "cpu"])
    out = capsys.readouterr().out
    assert rc == 0, out
    assert "demo-mpi-spect.seg.nrrd" in out and "overlay" in out
    names = {p.name for p in tmp_path.iterdir()}
    for expected in ["demo-mpi-spect.seg.nrrd", "demo-mpi-spect.labels.nii.gz", "demo-mpi-spect.labels.json",
                     "demo-mpi-spect.overlay.png", "demo-mpi-spect.polar-map.png"]:
        assert expected in names, sorted(names)
    assert any(n.endswith(".csv") for n in names)
    labels = read_volume(tmp_path / "demo-mpi-spect.labels.nii.gz")
    image = read_volume(cli.DEMO_INPUT)
    assert labels.same_geometry(image, atol=1e-4)
    # the demo's simulated truth, made with it by scripts/make_demo_data.py
    truth = read_volume(Path(__file__).parent / "data" / "demo-mpi-spect-truth.nii.gz")
    assert truth.same_geometry(image, atol=1e-3)
    assert dice(labels.array == 1, truth.array == 1) >= 0.85
    legend = json.loads((tmp_path / "demo-mpi-spect.labels.json").read_text())
    assert [lab["name"] for lab in legend["labels"]] == ["Left ventricle myocardium", "Left ventricle cavity"]
    assert legend["provenance"]["model_id"] == "mpi-myocardium-unet3d"


def test_models_and_tasks_listings(capsys):
    assert cli.main(["models"]) == 0
    out = capsys.readouterr().out
    assert "mpi-myocardium-unet3d@" in out and "User model folder" in out
    assert cli.main(["models", "--json"]) == 0
    listed = json.loads(capsys.readouterr().out)
    assert any(m["id"] == "mpi-myocardium-unet3d" and m["task"] == "mpi-myocardium" for m in listed)
    assert cli.main(["tasks"]) == 0
    assert "mpi-myocardium" in capsys.readouterr().out


def test_installed_console_script_runs():
    exe = __import__("shutil").which("medsegai", path=str(__import__("pathlib").Path(sys.executable).parent))
    cmd = [exe] if exe else [sys.executable, "-m", "MedSegAILib.cli"]
    proc = subprocess.run(cmd + ["--version"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and proc.stdout.startswith("MedSegAI ")
