"""Case ranking by test-time augmentation (MedSegAILib.uncertainty): map, score, ranking, cancel, no side effects.

The real-network tests use the shipped MPI model on a tight 40-voxel (177 mm) crop around the heart of the
embedded demo SPECT volume (clean; the crop keeps each run near 1.3-2 s) and a low-count copy of it (Poisson
counts at 0.2 % of the demo's scale, Gaussian post-filter 0.8 voxel); one ``rank_cases`` call with 2 perturbed
runs per case feeds most of them. The logic tests replace ``pipeline.segment`` by a stub.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from scipy import ndimage  # noqa: E402

from MedSegAILib import pipeline  # noqa: E402
from MedSegAILib.core.io import read_volume  # noqa: E402
from MedSegAILib.core.resample import resample_volume  # noqa: E402
from MedSegAILib.core.volume import Volume, random_rotation  # noqa: E402
from MedSegAILib.engine.progress import CancelToken  # noqa: E402
from MedSegAILib.errors import Cancelled, InputError  # noqa: E402
from MedSegAILib.tasks.base import TaskResult  # noqa: E402
from MedSegAILib.uncertainty import (  # noqa: E402
    dice_per_label, perturb_inputs, rank_cases, segment_with_uncertainty, vote_entropy,
)

TASK = "mpi-myocardium"
DEMO = Path(__file__).resolve().parents[1] / "MedSegAILib" / "data" / "demo-mpi-spect.nii.gz"
PARAMS = {"polar_map": False}  # the polar map costs time and plays no part here
#: the crop, as (k, j, i) index slices of the demo volume (the heart's centre is near voxel (40, 39, 62))
CROP = (slice(20, 60), slice(19, 59), slice(42, 82))


def _demo_crop() -> Volume:
    vol = read_volume(DEMO)
    corner = vol.index_to_lps(np.array([[CROP[2].start, CROP[1].start, CROP[0].start]]))[0]
    return Volume(vol.array[CROP].copy(), vol.spacing, tuple(corner), vol.direction.copy(), dict(vol.meta))


def _low_count(vol: Volume, scale: float = 0.002, seed: int = 1) -> Volume:
    rng = np.random.default_rng(seed)
    counts = rng.poisson(vol.array.astype(np.float64) * scale) / scale
    return vol.with_array(ndimage.gaussian_filter(counts, 0.8).astype(np.float32))


@pytest.fixture(scope="module")
def mpi():
    from MedSegAILib.zoo.registry import load_model

    torch.set_num_threads(1)
    model = load_model("mpi-myocardium-unet3d", "cpu")
    clean = _demo_crop()
    noisy = _low_count(clean)
    copies = {"clean": clean.copy(), "noisy": noisy.copy()}
    results: dict[str, TaskResult] = {}
    t0 = time.perf_counter()
    rows = rank_cases(TASK, [("clean", {"image": clean}), ("noisy", {"image": noisy})], runs=2, seed=0,
                      device="cpu", params=PARAMS, model=model, on_result=lambda n, r: results.__setitem__(n, r))
    seconds = time.perf_counter() - t0
    return dict(model=model, clean=clean, noisy=noisy, copies=copies, rows=rows, results=results, seconds=seconds)


# ---------------------------------------------------------------------------------------------- real network
def test_rank_puts_the_low_count_case_first(mpi):
    rows = mpi["rows"]
    assert [r["name"] for r in rows] == ["noisy", "clean"]
    noisy, clean = rows
    assert noisy["error"] is None and clean["error"] is None and noisy["runs"] == 2
    # measured (seeds 0-3): clean 0.0063-0.0073, low-count 0.0146-0.0166 (0.011 with the clean case's noise SD)
    assert 0.0 < clean["score"] < 0.02
    assert noisy["score"] > 1.5 * clean["score"]
    assert noisy["mean_entropy"] > clean["mean_entropy"] > 0.0


def test_map_lies_on_the_input_grid_and_marks_the_myocardium_border(mpi):
    vol, res = mpi["clean"], mpi["results"]["clean"]
    (m,) = [m for m in res.maps if m.name == "Uncertainty"]
    u = m.volume
    assert u.shape == vol.shape and u.spacing == vol.spacing and u.origin == vol.origin
    assert np.array_equal(u.direction, vol.direction)
    assert u.array.dtype == np.float32 and m.zero_transparent and m.window == (0.0, 1.0)
    assert u.array.min() >= 0.0 and u.array.max() <= 1.0
    lab = res.labelmap.array
    # zero far (> 20 mm) from every labelled voxel
    far = ndimage.distance_transform_edt(lab == 0, sampling=vol.spacing[::-1]) > 20.0
    assert far.sum() > 0.5 * lab.size and not u.array[far].any()
    # non-zero at the myocardium border: within one voxel of a label change of the result
    myo = lab == 1
    border = ndimage.binary_dilation(myo) & ~ndimage.binary_erosion(myo)
    nonzero = u.array > 0
    assert nonzero.sum() >= 20
    assert (nonzero & border).sum() >= 0.8 * nonzero.sum()


def test_table_message_and_provenance(mpi):
    res = mpi["results"]["noisy"]
    (t,) = [t for t in res.tables if t.name == "Uncertainty"]
    assert len(t.rows) == 1
    u = res.provenance["uncertainty"]
    assert t.column("Uncertainty score")[0] == pytest.approx(u["score"], abs=1e-6)
    assert t.column("Perturbed runs")[0] == 2 == u["runs"] == len(u["per_run"]) == len(u["seconds_per_run"])
    dice = [d for run in u["per_run"] for d in run["dice"].values()]
    assert u["score"] == pytest.approx(1.0 - np.mean(dice), abs=1e-4)
    assert set(u["dice_per_label"]) == {"1", "2"}
    assert 0.9 < t.column("Dice Left ventricle myocardium")[0] < 1.0
    assert any(msg.startswith(f"Uncertainty score {u['score']:.2f} (2 perturbed runs") for msg in res.messages)
    assert res.provenance["task"] == TASK  # the pipeline's own provenance is kept


def test_answer_is_the_plain_segment_result_and_inputs_are_untouched(mpi):
    plain = pipeline.segment(TASK, {"image": mpi["clean"]}, device="cpu", params=PARAMS, model=mpi["model"])
    res = mpi["results"]["clean"]
    assert np.array_equal(res.labelmap.array, plain.labelmap.array)
    assert res.labelmap.same_geometry(plain.labelmap, atol=0)
    assert [t.name for t in res.tables] == [t.name for t in plain.tables] + ["Uncertainty"]
    for name in ("clean", "noisy"):
        vol, copy = mpi[name], mpi["copies"][name]
        assert vol.array.dtype == copy.array.dtype and np.array_equal(vol.array, copy.array)
        assert vol.origin == copy.origin and vol.spacing == copy.spacing
        assert np.array_equal(vol.direction, copy.direction) and vol.meta == copy.meta


def test_cancel_after_the_first_run(mpi):
    cancel, seen = CancelToken(), []

    def progress(fraction: float, text: str) -> None:
        seen.append(text)
        if text == "Done":  # the unperturbed run has finished
            cancel.cancel()

    with pytest.raises(Cancelled):
        segment_with_uncertainty(TASK, {"image": mpi["clean"]}, runs=3, device="cpu", params=PARAMS,
                                 model=mpi["model"], progress=progress, cancel=cancel)
    assert "Done" in seen and not any(t.startswith("Uncertainty run") for t in seen)


# ---------------------------------------------------------------------------------------------- logic (stubbed)
def test_vote_entropy_normalisation():
    a = np.array([[[0, 1, 0, 1]]], np.uint8)
    b = np.array([[[0, 1, 1, 2]]], np.uint8)
    c = np.array([[[0, 1, 1, 0]]], np.uint8)
    h = vote_entropy([a, b, c])  # 3 votes over 3 labels: all different = 1, a 2:1 split = H(2/3, 1/3) / ln 3
    two_one = -(2 / 3 * np.log(2 / 3) + 1 / 3 * np.log(1 / 3)) / np.log(3)
    np.testing.assert_allclose(h.ravel(), [0.0, 0.0, two_one, 1.0], atol=1e-6)
    # 3 votes over 2 labels: the most even split (2:1) is the maximum
    np.testing.assert_allclose(vote_entropy([a, a, a ^ 1]).ravel(), [1.0] * 4, atol=1e-6)
    assert not vote_entropy([a, a]).any() and h.dtype == np.float32


def test_dice_per_label():
    run = np.array([0, 1, 1, 2, 0, 0])
    main = np.array([0, 1, 0, 0, 3, 0])
    d = dice_per_label(run, main)
    assert d == {1: pytest.approx(2 / 3), 2: 0.0, 3: 0.0}


def test_perturbation_copies_shifts_less_than_half_a_voxel_and_maps_back_exactly():
    rng = np.random.default_rng(3)
    arr = np.zeros((12, 14, 16), np.int16)
    arr[3:9, 4:10, 5:12] = rng.integers(100, 1000, (6, 6, 7))
    vol = Volume(arr, (1.5, 2.0, 3.0), (10.0, -5.0, 7.0), random_rotation(rng))
    other = Volume(np.ones((4, 4, 4), np.float32), (5.0, 5.0, 5.0), (0.0, 0.0, 0.0))
    before = arr.copy()
    out, rec = perturb_inputs({"image": vol, "extra": other}, "image", np.random.default_rng(0))
    assert np.array_equal(vol.array, before) and vol.origin == (10.0, -5.0, 7.0)
    p = out["image"]
    assert p.array.dtype == np.float32 and p.shape == vol.shape and p.spacing == vol.spacing
    f = np.asarray(vol.lps_to_index(np.asarray(p.origin)[None])[0])
    assert np.all(np.abs(f) < 0.5) and np.abs(f).max() > 0.01
    np.testing.assert_allclose(np.asarray(out["extra"].origin) - 0.0, np.asarray(p.origin) - vol.origin, atol=1e-9)
    assert np.all(p.array[arr == 0] == 0)  # the padding/background at the minimum gets no noise
    inside = arr > 0
    ratio = p.array[inside] / arr[inside]
    assert 0.9 < np.median(ratio) < 1.1 and ratio.std() > 0
    labels = Volume((arr > 500).astype(np.uint8), p.spacing, p.origin, p.direction)
    back = resample_volume(labels, reference=vol.geometry(), interpolation="nearest")
    assert np.array_equal(back.array, labels.array)  # each voxel maps back onto itself
    again, _ = perturb_inputs({"image": vol, "extra": other}, "image", np.random.default_rng(0))
    assert np.array_equal(again["image"].array, p.array) and again["image"].origin == p.origin


def _stub(monkeypatch, make_labels):
    """Replace pipeline.segment by a stub whose label map is ``make_labels(call index, inputs)``."""
    calls = []

    def fake_segment(task_id, inputs, **kw):
        vol = inputs["image"]
        if vol.meta.get("bad"):
            raise InputError("this case is unreadable")
        lab = make_labels(len(calls), vol)
        calls.append(vol)
        kw["progress"](1.0, "Done")
        return TaskResult(task_id, vol.with_array(lab.astype(np.uint8)), [], provenance={"task": task_id})

    monkeypatch.setattr(pipeline, "segment", fake_segment)
    return calls


def test_score_formula_with_changing_label_sets(monkeypatch):
    vol = Volume(np.ones((10, 10, 10), np.float32))
    base = np.zeros((10, 10, 10), np.uint8)
    base[2:6, 2:6, 2:6] = 1

    def make(i, v):  # main: a cube of 1; run 1: the same plus a label-2 voxel; run 2: a smaller cube
        lab = base.copy()
        if i == 1:
            lab[8, 8, 8] = 2
        if i == 2:
            lab[2:6, 2:6, 5] = 0
        return lab

    _stub(monkeypatch, make)
    res = segment_with_uncertainty(TASK, {"image": vol}, runs=2)
    u = res.provenance["uncertainty"]
    expected = 1.0 - np.mean([1.0, 0.0, 2 * 48 / (64 + 48)])  # run 1: label 1 = 1, label 2 = 0; run 2: 6/7
    assert u["score"] == pytest.approx(expected, abs=1e-5)
    h = res.maps[-1].volume.array
    assert h[8, 8, 8] > 0 and h[2, 2, 5] > 0 and h[2, 2, 2] == 0 and h[0, 0, 0] == 0


def test_no_foreground_anywhere_gives_score_zero_with_a_note(monkeypatch):
    _stub(monkeypatch, lambda i, v: np.zeros(v.shape))
    res = segment_with_uncertainty(TASK, {"image": Volume(np.ones((5, 6, 7), np.float32))}, runs=2)
    assert res.provenance["uncertainty"]["score"] == 0.0 and not res.maps[-1].volume.array.any()
    assert any("no structure was found" in m for m in res.messages)


def test_rank_cases_lists_refused_cases_first_then_by_score(monkeypatch):
    def make(i, v):  # case "b" (value 2) flips a slab in its perturbed runs, case "a" is stable
        lab = np.zeros(v.shape)
        lab[2:8, 2:8, 2:8] = 1
        if v.meta["case"] == "b" and v.array.max() != 2:  # perturbed copies are not exactly 2 any more
            lab[2:4] = 0
        return lab

    _stub(monkeypatch, make)
    cases = [(name, {"image": Volume(np.full((10, 10, 10), val, np.float32), meta={"case": name, **extra})})
             for name, val, extra in [("a", 1.0, {}), ("b", 2.0, {}), ("bad", 1.0, {"bad": True})]]
    rows = rank_cases(TASK, cases, runs=2)
    assert [r["name"] for r in rows] == ["bad", "b", "a"]
    assert rows[0]["score"] is None and "unreadable" in rows[0]["error"]
    assert rows[1]["score"] == pytest.approx(1.0 - 2 * 144 / (216 + 144), abs=1e-5) and rows[2]["score"] == 0.0


def test_runs_out_of_range_is_refused():
    with pytest.raises(InputError, match="between 1 and 32"):
        segment_with_uncertainty(TASK, {"image": Volume(np.ones((4, 4, 4), np.float32))}, runs=0)


def test_cli_rank_and_segment_uncertainty(tmp_path):
    """``medsegai rank`` lists the low-count copy first; ``segment --uncertainty`` writes the map on the input grid."""
    from MedSegAILib.cli import main
    from MedSegAILib.core.io import read_volume, write_volume

    torch = pytest.importorskip("torch")
    torch.set_num_threads(1)
    clean = _demo_crop()
    data = tmp_path / "cases"
    data.mkdir()
    write_volume(clean, data / "clean.nii.gz")
    write_volume(_low_count(clean), data / "lowcount.nii.gz")
    out = tmp_path / "rank.csv"
    assert main(["rank", "--task", "mpi-myocardium", "--data", str(data), "--runs", "2", "--device", "cpu",
                 "-o", str(out), "-q"]) == 0
    rows = out.read_text().splitlines()
    assert rows[0].startswith("rank,case,score") and rows[1].split(",")[1] == "lowcount"
    assert float(rows[1].split(",")[2]) > float(rows[2].split(",")[2])
    res = tmp_path / "seg"
    assert main(["segment", "--task", "mpi-myocardium", str(data / "clean.nii.gz"), "-o", str(res), "--uncertainty",
                 "1", "--device", "cpu", "--no-overlay", "-q"]) == 0
    maps = list(res.glob("*uncertainty*.nrrd"))
    assert len(maps) == 1
    m = read_volume(maps[0])
    assert m.same_geometry(read_volume(data / "clean.nii.gz"), 1e-3)
    assert 0.0 <= float(m.array.min()) and float(m.array.max()) <= 1.0
