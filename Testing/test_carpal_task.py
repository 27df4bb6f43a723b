"""The carpal task end to end with the shipped model: Dice on held-out simulated radiographs, polarity, mirrored
hands, large images, missing spacing, bad input, the command line, the batch script and a real MRML scene."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from MedSegAILib.core.volume import Volume
from MedSegAILib.errors import InputError
from MedSegAILib.pipeline import segment
from MedSegAILib.simulate.wrist_xray import simulate_wrist_views
from MedSegAILib.tasks.carpal import BONES, CarpalTask
from MedSegAILib.train.carpal import SEEDS, per_bone_dice

#: held-out phantoms for the tests (the benchmark uses SEEDS["test"] + 0..; these are further on)
TEST_SEED = SEEDS["test"] + 5000
MIN_MEAN_DICE = 0.90  # held-out benchmark: 0.968 mean over 80 radiographs, worst radiograph 0.930


@pytest.fixture(scope="module")
def views():
    return simulate_wrist_views(TEST_SEED, 2) + simulate_wrist_views(TEST_SEED + 1, 1)


def _mean_dice(pred: np.ndarray, ref: np.ndarray) -> float:
    return float(np.nanmean(per_bone_dice(pred[None], ref[None])))


def _run(image: Volume, **params):
    return segment("carpal", {"image": image}, device="cpu", params=params or None)


# ---------------------------------------------------------------------------------------------- results
def test_segments_held_out_radiographs(views):
    dices = []
    for v in views:
        res = _run(v.image)
        assert res.labelmap.same_geometry(v.image)
        dices.append(_mean_dice(res.labelmap.array[0], v.label.array[0]))
    # over the three views (each radiograph's own mean varies: 0.96, 0.97, 0.89 here; the benchmark's 80: >= 0.93)
    assert np.mean(dices) >= MIN_MEAN_DICE and min(dices) >= MIN_MEAN_DICE - 0.05, dices
    # the result: named bones with terminology, a table in mm^2 (the DRR's spacing is known), markups, a picture
    names = [lab.name for lab in res.labels]
    assert {"Scaphoid", "Lunate", "Capitate", "Distal radius"} <= set(names)
    assert res.labels[0].type.scheme in ("SCT", "99MEDSEGAI")
    table = res.tables[0]
    assert table.columns[1].unit == "mm^2"
    areas = dict(zip(table.column("Bone"), table.column("Area")))
    px = v.image.spacing[0] * v.image.spacing[1]
    assert areas["Capitate"] == pytest.approx((res.labelmap.array == 7).sum() * px)
    assert 40 < areas["Capitate"] < 600  # mm^2 of a projected adult capitate (detector plane)
    assert res.points and len(res.points[0].labels) == len(names)
    from MedSegAILib.viz import overlay_png

    assert overlay_png(v.image, res.labelmap, res.labels)[:8] == b"\x89PNG\r\n\x1a\n"
    assert res.provenance["preprocessing"] in ("none", "global", "local")


def test_inverted_radiograph_is_detected_and_segmented(views):
    v = views[0]
    inverted = v.image.with_array(1.0 - v.image.array)
    res = _run(inverted)
    assert any("invert" in m.lower() for m in res.messages), res.messages
    assert _mean_dice(res.labelmap.array[0], v.label.array[0]) >= MIN_MEAN_DICE - 0.03
    # as-is: the inverted image is segmented badly (the check above is not vacuous)
    res_raw = _run(inverted, intensity="as-is")
    assert _mean_dice(res_raw.labelmap.array[0], v.label.array[0]) < MIN_MEAN_DICE - 0.1


def test_mirrored_hand_and_other_orientation(views):
    """A left hand is a mirrored right hand: the same bones, mirrored, on the image's own grid."""
    v = views[1]
    mirrored = v.image.with_array(v.image.array[..., ::-1].copy())
    res = _run(mirrored, mirror_average=False)
    assert _mean_dice(res.labelmap.array[0], v.label.array[0][..., ::-1]) >= MIN_MEAN_DICE - 0.03


def test_large_radiograph_keeps_its_grid(views):
    import torch

    v = views[1]
    big = torch.nn.functional.interpolate(torch.from_numpy(v.image.array[0])[None, None], size=(1024, 768),
                                          mode="bilinear", align_corners=False)[0].numpy()
    # 1024 x 768 pixels over the same field: non-square pixels, labels by nearest neighbour
    sp = (v.image.spacing[0] * 256 / 768, v.image.spacing[1] * 256 / 1024, 1.0)
    image = Volume(big, sp, v.image.origin, v.image.direction, {"modality": "DX", "spacing_known": True})
    rows = (np.arange(1024) * 256 / 1024).astype(int)
    cols = (np.arange(768) * 256 / 768).astype(int)
    ref = v.label.array[0][np.ix_(rows, cols)]
    res = _run(image)
    assert res.labelmap.shape == (1, 1024, 768) and res.labelmap.same_geometry(image)
    # the letterbox (768 -> padded to 1024 square) and the way back are exact to about a pixel
    assert _mean_dice(res.labelmap.array[0], ref) >= MIN_MEAN_DICE - 0.03


# ---------------------------------------------------------------------------------------------- bad input
def test_bad_inputs_get_clear_messages(views):
    v = views[0]
    vol3d = Volume(np.repeat(v.image.array, 5, axis=0), (0.4, 0.4, 1.0))
    with pytest.raises(InputError, match="3-D"):
        _run(vol3d)
    with pytest.raises(InputError, match="constant"):
        _run(v.image.with_array(np.zeros_like(v.image.array)))
    nan = v.image.array.copy()
    nan[0, 10, 10] = np.nan
    with pytest.raises(InputError, match="NaN"):
        _run(v.image.with_array(nan))
    ct = v.image.with_array(v.image.array, modality="CT")
    with pytest.raises(InputError, match="CT"):
        _run(ct)


def test_colour_photograph_refused_grey_rgb_accepted(tmp_path, views):
    from PIL import Image

    task = CarpalTask()
    g = (np.clip(views[0].image.array[0], 0, 1) * 255).astype(np.uint8)
    Image.fromarray(np.stack([g, g, g], -1)).save(tmp_path / "grey_rgb.jpg", quality=95)
    vol = task.read_input("image", str(tmp_path / "grey_rgb.jpg"))
    assert vol.shape == (1, 256, 256) and vol.meta["spacing_known"] is False
    photo = np.stack([g, np.roll(g, 40, axis=1), 255 - g], -1)
    Image.fromarray(photo).save(tmp_path / "photo.png")
    with pytest.raises(InputError, match="colour"):
        task.read_input("image", str(tmp_path / "photo.png"))


def test_image_without_a_hand_reports_no_bones(views):
    """The network answers on anything; the task reports bones only when it sees a wrist (enough confident
    carpals), and says so otherwise: no segments, a clear message, not an error."""
    rng = np.random.default_rng(3)
    yy, xx = np.mgrid[0:256, 0:256]
    smooth = 0.3 + 0.2 * np.sin(xx / 40.0) * np.cos(yy / 55.0) + 0.02 * rng.standard_normal((256, 256))
    from MedSegAILib.simulate.planar_neck import simulate_neck

    neck = simulate_neck(7).tc.array[0]
    for img in (smooth, rng.random((256, 256)), xx / 255.0, neck / neck.max()):
        res = _run(Volume(img[None].astype(np.float32), (0.4, 0.4, 1.0), meta={"modality": "DX"}))
        assert not res.labels and not res.labelmap.array.any()
        assert any("No carpal bones were found" in m for m in res.messages)
    # the same decision keeps every bone of a real view
    assert len(_run(views[0].image).labels) >= 9


# ---------------------------------------------------------------------------------------------- front ends
def test_cli_png_without_spacing_reports_pixels(tmp_path, views):
    import SimpleITK as sitk

    png = tmp_path / "wrist.png"
    sitk.WriteImage(sitk.GetImageFromArray((np.clip(views[0].image.array[0], 0, 1) * 65535).astype(np.uint16)),
                    str(png))
    out = tmp_path / "out"
    proc = subprocess.run([sys.executable, "-m", "MedSegAILib.cli", "segment", "--task", "carpal", str(png), "-o",
                           str(out), "--device", "cpu"], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert "pixels" in proc.stdout
    csv = (out / "wrist_carpal-bone-areas.csv").read_text() if (out / "wrist_carpal-bone-areas.csv").exists() else \
        next(out.glob("*.csv")).read_text()
    assert "Area [pixels]" in csv and "Capitate" in csv
    assert next(out.glob("*.seg.nrrd")).stat().st_size > 0


def test_mrml_scene_with_an_rgb_vector_node(views):
    import slicer

    from MedSegAILib.mrml.logic import SegmentationLogic

    scene = slicer.vtkMRMLScene()
    v = views[0]
    g = (np.clip(v.image.array[0], 0, 1) * 255).astype(np.uint8)
    node = scene.AddNewNodeByClass("vtkMRMLVectorVolumeNode", "wrist rgb")
    slicer.util.updateVolumeFromArray(node, np.stack([g, g, g], -1)[None])
    node.SetSpacing(*v.image.spacing)
    published = SegmentationLogic().run(scene, "carpal", {"image": node}, device="cpu")
    seg = published.segmentation.GetSegmentation()
    names = {seg.GetNthSegment(i).GetName() for i in range(seg.GetNumberOfSegments())}
    assert {"Scaphoid", "Lunate", "Capitate", "Hamate"} <= names
    assert any("RGB" in m or "grey" in m.lower() or "gray" in m.lower() for m in published.messages)
