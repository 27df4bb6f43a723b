"""The shared pipeline, the file writers and the CLI, exercised with a small model-free test task."""

from __future__ import annotations

import json
from dataclasses import dataclass

import numpy as np
import pytest

from MedSegAILib import cli
from MedSegAILib.core.io import read_volume, write_volume
from MedSegAILib.core.volume import Volume
from MedSegAILib.engine.progress import CancelToken
from MedSegAILib.errors import Cancelled, InputError, OutputError
from MedSegAILib.outputs import planned_files, write_result_files
from MedSegAILib.pipeline import segment
from MedSegAILib.tasks.base import (
    ANATOMICAL_STRUCTURE,
    CodedTerm,
    InputSpec,
    LabelInfo,
    Picture,
    ScalarMap,
    Table,
    Column,
    Task,
    TaskResult,
    param,
)
from MedSegAILib.tasks.registry import get_task, register_task

from MedSegAILib.core.volume import random_rotation

HOT = LabelInfo(1, "Hot region", (1.0, 0.2, 0.1), ANATOMICAL_STRUCTURE, CodedTerm("SCT", "80891009", "Heart"))


@dataclass
class ThresholdParameters:
    fraction: float = param(0.5, "threshold as a fraction of the maximum", min=0.0, max=1.0)
    shift_grid: bool = param(False, "deliberately return the result on a wrong grid (tests the guard)")


class ThresholdTask(Task):
    id = "test-threshold"
    title = "Threshold (test)"
    description = "labels voxels above a fraction of the maximum"
    inputs = (InputSpec("image", "test volume", "NM", 3),)
    Parameters = ThresholdParameters
    labels = (HOT,)

    def run(self, inputs, params, model, ctx):  # noqa: ANN001
        img = inputs["image"]
        ctx.cancel.check()
        lab = (img.array > params.fraction * img.array.max()).astype(np.uint8)
        out = img.with_array(lab)
        if params.shift_grid:
            out = Volume(lab, img.spacing, tuple(np.add(img.origin, 1.0)), img.direction)
        ctx.progress(1.0, "thresholded")
        return TaskResult(
            self.id, out, [HOT],
            maps=[ScalarMap("Relative uptake", img.with_array(img.array / img.array.max()), "Inferno")],
            tables=[Table("Volumes", [Column("Structure"), Column("Volume", "mL")],
                          [["Hot region", float(lab.sum() * img.voxel_volume_mm3 / 1000)]])],
            pictures=[Picture("Dummy", b"\x89PNG\r\n\x1a\n")],
        )


register_task(ThresholdTask)


def _volume(seed=0, shape=(12, 14, 16)) -> Volume:
    rng = np.random.default_rng(seed)
    arr = rng.uniform(0, 10, shape).astype(np.float32)
    arr[4:8, 5:9, 6:10] += 100
    return Volume(arr, (2.0, 2.5, 3.0), (-10.0, 20.0, 30.0), random_rotation(rng), {"modality": "NM", "name": "case"})


def test_segment_records_provenance_and_keeps_the_grid():
    vol = _volume()
    before = vol.array.copy()
    res = segment("test-threshold", {"image": vol}, device="cpu", params={"fraction": "0.6"})
    assert res.labelmap.same_geometry(vol)
    assert res.labelmap.array.sum() == 4 * 4 * 4
    assert np.array_equal(vol.array, before), "inputs must never be modified"
    prov = res.provenance
    assert prov["task"] == "test-threshold" and prov["device"] == "cpu"
    assert prov["parameters"] == {"fraction": 0.6, "shift_grid": False}
    assert "total" in prov["timings_s"] and prov["date"]
    assert res.messages[0].startswith("Using the CPU")


def test_parameters_are_validated():
    with pytest.raises(InputError, match="at most 1.0"):
        segment("test-threshold", {"image": _volume()}, device="cpu", params={"fraction": "1.5"})
    with pytest.raises(InputError, match="Unknown parameter 'nope'"):
        segment("test-threshold", {"image": _volume()}, device="cpu", params={"nope": "1"})
    with pytest.raises(InputError, match="expects a float"):
        segment("test-threshold", {"image": _volume()}, device="cpu", params={"fraction": "high"})


def test_a_result_off_the_input_grid_is_discarded():
    with pytest.raises(RuntimeError, match="not on the input grid"):
        segment("test-threshold", {"image": _volume()}, device="cpu", params={"shift_grid": "true"})


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda v: Volume(v.array[:1], v.spacing, v.origin, v.direction, dict(v.meta)), "2-D image"),
        (lambda v: v.with_array(np.full(v.shape, 3.0, np.float32)), "constant"),
        (lambda v: v.with_array(np.where(v.array > 50, np.nan, v.array)), "NaN"),
        (lambda v: Volume(v.array, v.spacing, v.origin, v.direction, {"modality": "CT"}), "CT image"),
        (lambda v: Volume(v.array, v.spacing, v.origin, v.direction, {"is_labelmap": True}), "label map"),
    ],
)
def test_bad_inputs_are_refused_with_a_clear_message(make, message):
    with pytest.raises(InputError, match=message):
        segment("test-threshold", {"image": make(_volume())}, device="cpu")


def test_missing_and_unknown_inputs_and_tasks():
    with pytest.raises(InputError, match="needs the test volume"):
        segment("test-threshold", {}, device="cpu")
    with pytest.raises(InputError, match="does not take"):
        segment("test-threshold", {"image": _volume(), "other": _volume()}, device="cpu")
    with pytest.raises(InputError, match="Unknown task 'no-such-task'.*test-threshold"):
        get_task("no-such-task")


def test_planned_tasks_that_are_not_implemented_say_so():
    from MedSegAILib.tasks.registry import PLANNED_TASKS, task_ids

    missing = [t for t in PLANNED_TASKS if t not in task_ids()]
    if not missing:
        pytest.skip("every planned task is implemented")
    with pytest.raises(InputError, match="planned, not available"):
        get_task(missing[0])


def test_cancel_before_the_run_raises():
    token = CancelToken()
    token.cancel()
    with pytest.raises(Cancelled):
        segment("test-threshold", {"image": _volume()}, device="cpu", cancel=token)


def test_all_files_are_written_with_geometry_and_legend(tmp_path):
    vol = _volume()
    res = segment("test-threshold", {"image": vol}, device="cpu")
    paths = write_result_files(res, tmp_path, "case", image=vol)
    assert sorted(p.name for p in paths) == sorted(planned_files(res, "case", True))
    labels = read_volume(tmp_path / "case.labels.nii.gz")
    assert labels.same_geometry(vol, atol=1e-4)
    assert np.array_equal(labels.array, res.labelmap.array)
    legend = json.loads((tmp_path / "case.labels.json").read_text())
    assert legend["labels"][0]["name"] == "Hot region" and legend["labels"][0]["type"]["code"] == "80891009"
    assert legend["provenance"]["task"] == "test-threshold"
    assert (tmp_path / "case.volumes.csv").read_text().startswith("Structure,Volume [mL]")
    assert read_volume(tmp_path / "case.relative-uptake.nrrd").same_geometry(vol, atol=1e-4)
    assert (tmp_path / "case.overlay.png").read_bytes()[:4] == b"\x89PNG"
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".medsegai")], "staging folder left behind"


def test_seg_nrrd_reads_back_with_names_colours_and_geometry(tmp_path):
    from MedSegAILib.mrml.segfile import read_seg_nrrd

    vol = _volume(3)
    res = segment("test-threshold", {"image": vol}, device="cpu")
    write_result_files(res, tmp_path, "case")
    labelmap, segments = read_seg_nrrd(tmp_path / "case.seg.nrrd")
    assert labelmap.same_geometry(vol, atol=1e-4)
    assert np.array_equal(labelmap.array > 0, res.labelmap.array > 0)
    assert [s[1] for s in segments] == ["Hot region"]


def test_existing_files_are_not_overwritten_and_a_cancel_writes_nothing(tmp_path):
    vol = _volume()
    res = segment("test-threshold", {"image": vol}, device="cpu")
    (tmp_path / "case.labels.json").write_text("user's own file")
    with pytest.raises(OutputError, match="already exist"):
        write_result_files(res, tmp_path, "case")
    assert (tmp_path / "case.labels.json").read_text() == "user's own file"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["case.labels.json"]
    token = CancelToken()
    token.cancel()
    with pytest.raises(Cancelled):
        write_result_files(res, tmp_path / "new", "case", cancel=token)
    assert list((tmp_path / "new").iterdir()) == []


def test_cli_segments_a_file_and_reports_errors(tmp_path, capsys):
    vol = _volume()
    write_volume(vol, tmp_path / "case.nii.gz")
    rc = cli.main(["segment", "--task", "test-threshold", str(tmp_path / "case.nii.gz"), "-o", str(tmp_path / "out"),
                   "--device", "cpu", "--param", "fraction=0.6"])
    assert rc == 0
    out = capsys.readouterr().out
    assert "wrote" in out and "case.seg.nrrd" in out
    assert (tmp_path / "out" / "case.seg.nrrd").is_file()
    # same command again: refuses to overwrite
    rc = cli.main(["segment", "--task", "test-threshold", str(tmp_path / "case.nii.gz"), "-o", str(tmp_path / "out")])
    assert rc == 2 and "already exist" in capsys.readouterr().err
    # unwritable output: refused before any computation
    blocker = tmp_path / "file"
    blocker.write_text("x")
    rc = cli.main(["segment", "--task", "test-threshold", str(tmp_path / "case.nii.gz"), "-o", str(blocker / "o")])
    assert rc == 2 and "Cannot create the output folder" in capsys.readouterr().err
    # a 2-D image for a 3-D task
    write_volume(Volume(vol.array[:1]), tmp_path / "slice.nrrd")
    rc = cli.main(["segment", "--task", "test-threshold", str(tmp_path / "slice.nrrd"), "-o", str(tmp_path / "o2")])
    assert rc == 2 and "2-D image" in capsys.readouterr().err
    assert not (tmp_path / "o2").exists() or list((tmp_path / "o2").iterdir()) == []
