"""The headless batch script ``MedSegAI/Scripts/MedSegAIBatch.py``, run as a subprocess under plain Python
with slicer-core (the same file runs in Slicer with ``--python-script``).

Two simulated SPECT studies written as NIfTI plus one corrupt file: the corrupt case fails and is reported,
the batch goes on, both good cases get a ``.seg.nrrd`` with the task's segments on the input's grid, the
summary CSV lists all three, and the exit status is 1 (a case failed).
"""

from __future__ import annotations

import csv
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "MedSegAI" / "Scripts" / "MedSegAIBatch.py"
TASK_ID = "mpi-myocardium"
SEGMENT_NAMES = {"Left ventricle myocardium", "Left ventricle cavity"}


def _run(args: list[str], cwd: Path, timeout: int = 900) -> subprocess.CompletedProcess:
    env = dict(os.environ)
    env.pop("PYTHONPATH", None)  # the script must find MedSegAILib by itself
    env.setdefault("OMP_NUM_THREADS", "2")
    return subprocess.run([sys.executable, str(SCRIPT), *args], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=timeout)


def _read_summary(path: Path) -> dict[str, dict[str, str]]:
    with open(path, newline="", encoding="utf-8") as fh:
        reader = csv.DictReader(fh)
        assert reader.fieldnames == ["case", "status", "seconds", "message"]
        return {row["case"]: row for row in reader}


def test_usage_errors_exit_with_status_2(tmp_path):
    (tmp_path / "empty").mkdir()
    r = _run(["--task", TASK_ID, "--input", str(tmp_path / "empty"), "--output", str(tmp_path / "out")], tmp_path)
    assert r.returncode == 2, r.stderr
    assert "No input images found" in r.stderr or "Unknown task" in r.stderr
    r = _run(["--task", "no-such-task", "--input", str(tmp_path), "--output", str(tmp_path / "out")], tmp_path)
    assert r.returncode == 2 and "Unknown task 'no-such-task'" in r.stderr
    r = _run(["--input", str(tmp_path)], tmp_path)
    assert r.returncode == 2 and "--task" in r.stderr


def test_batch_segments_good_cases_and_reports_the_corrupt_one(tmp_path):
    try:
        import MedSegAILib.pipeline  # noqa: F401
    except ImportError as exc:
        pytest.skip(f"MedSegAILib.pipeline cannot be imported yet ({exc}); the batch script needs it")
    import nrrd
    import numpy as np

    from MedSegAILib.core.io import write_volume
    from MedSegAILib.simulate.spect import simulate_spect

    in_dir = tmp_path / "in"
    out_dir = tmp_path / "out"
    in_dir.mkdir()
    shapes = {}
    for seed in (11, 12):
        image, _labels, _params = simulate_spect(seed=seed, fov="tight", orientation="typical")
        write_volume(image, in_dir / f"spect{seed}.nii.gz")
        shapes[f"spect{seed}"] = image.shape
    (in_dir / "corrupt.nii.gz").write_bytes(b"\x1f\x8b this is not a NIfTI file" * 20)
    (in_dir / "notes.txt").write_text("not an image: ignored by the default pattern\n")

    r = _run(["--task", TASK_ID, "--input", str(in_dir), "--output", str(out_dir), "--device", "cpu"], tmp_path)
    assert r.returncode == 1, f"stdout:\n{r.stdout}\nstderr:\n{r.stderr}"

    summary = _read_summary(out_dir / "summary.csv")
    assert set(summary) == {"corrupt.nii.gz", "spect11.nii.gz", "spect12.nii.gz"}
    assert summary["corrupt.nii.gz"]["status"] == "failed"
    assert "corrupt.nii.gz" in summary["corrupt.nii.gz"]["message"]
    for stem, shape in shapes.items():
        row = summary[f"{stem}.nii.gz"]
        assert row["status"] == "ok", row
        assert float(row["seconds"]) > 0
        seg = out_dir / f"{stem}.seg.nrrd"
        assert seg.is_file()
        data, header = nrrd.read(str(seg))
        names = {v for k, v in header.items() if k.startswith("Segment") and k.endswith("_Name")}
        assert SEGMENT_NAMES <= names, names
        assert tuple(data.shape[-3:]) == tuple(shape[::-1]), "the file must hold the input's full grid"
        assert np.count_nonzero(data) > 0, "the segmentation is empty"
    assert not (out_dir / "corrupt.seg.nrrd").exists()
    assert not list(out_dir.glob("*.tmp.seg.nrrd")), "no temporary file may be left behind"


def test_pattern_selects_files_and_all_ok_exits_0(tmp_path):
    try:
        import MedSegAILib.pipeline  # noqa: F401
    except ImportError as exc:
        pytest.skip(f"MedSegAILib.pipeline cannot be imported yet ({exc}); the batch script needs it")
    from MedSegAILib.core.io import write_volume
    from MedSegAILib.simulate.spect import simulate_spect

    in_dir = tmp_path / "in"
    in_dir.mkdir()
    image, _labels, _params = simulate_spect(seed=13, fov="tight", orientation="typical", shape=32)
    write_volume(image, in_dir / "keep.nii.gz")
    (in_dir / "skip.nii.gz").write_bytes(b"corrupt, but not selected")
    r = _run(["--task", TASK_ID, "--input", str(in_dir), "--output", str(tmp_path / "out"), "--device", "cpu",
              "--pattern", "keep*"], tmp_path)
    assert r.returncode == 0, f"stdout:\n{r.stdout}\nstderr:\n{r.stderr}"
    assert set(_read_summary(tmp_path / "out" / "summary.csv")) == {"keep.nii.gz"}


def test_batch_with_two_images_per_case(tmp_path):
    """The parathyroid task (two planar images): one folder per case with role-named files; a case missing its
    123I image fails with a clear message, the good one gets its foci."""
    from MedSegAILib.core.io import write_volume
    from MedSegAILib.simulate.planar_neck import simulate_neck

    cases = tmp_path / "cases"
    study = simulate_neck(77, n_adenomas=1, min_diameter_mm=14.0, max_diameter_mm=14.0)
    (cases / "patient1").mkdir(parents=True)
    write_volume(study.tc, cases / "patient1" / "sestamibi.nrrd")
    write_volume(study.iodine, cases / "patient1" / "iodine.nrrd")
    (cases / "patient2").mkdir()
    write_volume(study.tc, cases / "patient2" / "sestamibi.nrrd")
    out = tmp_path / "out"
    r = _run(["--task", "parathyroid", "--input", str(cases), "--output", str(out), "--param", "method=classical"],
             tmp_path)
    assert r.returncode == 1, r.stderr
    rows = _read_summary(out / "summary.csv")
    assert rows["patient1"]["status"] == "ok", rows["patient1"]["message"]
    assert rows["patient2"]["status"] == "failed" and "123I" in rows["patient2"]["message"]
    import nrrd

    _, header = nrrd.read(str(out / "patient1.seg.nrrd"))
    names = [v for k, v in header.items() if k.endswith("_Name")]
    assert "Parathyroid focus 1" in names


def test_batch_radiographs_read_by_the_task(tmp_path):
    """The carpal task reads its own inputs (grey RGB JPEG, 16-bit PNG): the batch script goes through the task's
    reader, so a radiograph saved as RGB is segmented, not refused as a vector image."""
    import numpy as np
    from PIL import Image

    from MedSegAILib.simulate.wrist_xray import simulate_wrist_views

    indir = tmp_path / "in"
    indir.mkdir()
    v = simulate_wrist_views(20261125, 1)[0]
    g = (np.clip(v.image.array[0], 0, 1) * 255).astype(np.uint8)
    Image.fromarray(np.stack([g, g, g], -1)).save(indir / "wrist_rgb.jpg", quality=95)
    r = _run(["--task", "carpal", "--input", str(indir), "--output", str(tmp_path / "out"), "--device", "cpu"],
             tmp_path)
    assert r.returncode == 0, r.stdout + r.stderr
    rows = _read_summary(tmp_path / "out" / "summary.csv")
    assert rows["wrist_rgb.jpg"]["status"] == "ok", rows
    assert (tmp_path / "out" / "wrist_rgb.seg.nrrd").stat().st_size > 0
