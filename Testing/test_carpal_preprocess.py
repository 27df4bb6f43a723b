"""Carpal task input handling: radiograph reading/checks, polarity detection, normalisation, gradients, letterbox.

Ground truth is analytic (step edges, ramps, constant images, one-hot maps) or built into the files written
here (DICOM tags, RGB channels); the synthetic radiographs have a known polarity.
"""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from MedSegAILib.core.volume import Volume
from MedSegAILib.errors import InputError
from MedSegAILib.tasks.carpal.preprocess import (
    MODES, LetterBox, central_difference_magnitude, distinct_level_median, global_gradient, gradient,
    local_gradient, normalise, prepare_input,
)
from MedSegAILib.tasks.carpal.radiograph import (
    INVERT_CONFIDENCE, check_radiograph, detect_inverted, grey_from_rgb, read_radiograph,
)


# ---------------------------------------------------------------------------------------------- helpers
def synthetic_radiograph(seed: int = 0, h: int = 320, w: int = 256, frame: str | None = None, text: bool = False,
                         inverted: bool = False, frame_width: int = 24) -> np.ndarray:
    """Hand-like radiograph in [0, 1]: dark air (0.1), soft tissue (0.45), textured bones (~0.75), noise.

    ``frame``: a collimation border on the top, left, right (``frame_width``) and bottom (half of it), either
    "bright" (1.0 + noise: unexposed film/plate) or "black" (exactly 0: an electronic shutter), added *after*
    any inversion, as a shutter is. ``text``: a burnt-in white "L" marker and a bar.
    """
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w].astype(float)

    def ell(cy: float, cx: float, ry: float, rx: float) -> np.ndarray:
        return ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1

    soft = ell(0.55 * h, 0.5 * w, 0.2 * h, 0.28 * w) | ((xx > 0.32 * w) & (xx < 0.68 * w) & (yy > 0.6 * h))
    soft |= ell(0.45 * h, 0.2 * w, 0.15 * h, 0.05 * w)  # thumb
    bone = np.zeros((h, w), bool)
    for k in range(4):  # fingers and metacarpals
        cx = (0.3 + 0.13 * k) * w
        soft |= (np.abs(xx - cx) < 0.045 * w) & (yy > 0.12 * h) & (yy < 0.5 * h)
        bone |= (np.abs(xx - cx) < 0.022 * w) & (yy > 0.15 * h) & (yy < 0.58 * h)
    for cy, cx in [(0.62, 0.4), (0.62, 0.5), (0.62, 0.6), (0.68, 0.45), (0.68, 0.56)]:  # carpals
        bone |= ell(cy * h, cx * w, 0.025 * h, 0.04 * w)
    bone |= (np.abs(xx - 0.42 * w) < 0.05 * w) & (yy > 0.74 * h)  # radius
    bone |= (np.abs(xx - 0.58 * w) < 0.035 * w) & (yy > 0.74 * h)  # ulna
    img = 0.1 + 0.35 * ndimage.gaussian_filter(soft.astype(float), 1.5)
    texture = ndimage.gaussian_filter(rng.normal(0, 1, (h, w)), 1.0)
    img += ndimage.gaussian_filter(bone.astype(float), 1.0) * (0.3 + 0.08 * texture / texture.std())
    img += rng.normal(0, 0.01, (h, w))
    if inverted:
        img = 1.0 - img
    if frame is not None:
        m = np.zeros((h, w), bool)
        m[:frame_width] = True
        m[-frame_width // 2:] = True
        m[:, :frame_width] = True
        m[:, -frame_width:] = True
        img[m] = 0.0 if frame == "black" else 1.0 + rng.normal(0, 0.01, int(m.sum()))
    if text:
        y0, x0 = 40, w - 70
        img[y0:y0 + 24, x0:x0 + 4] = 1.0
        img[y0 + 20:y0 + 24, x0:x0 + 16] = 1.0
        img[y0:y0 + 4, x0 + 20:x0 + 32] = 1.0
    return img.astype(np.float32)


def write_dx(path, arr, photometric="MONOCHROME2", pixel_spacing=None, imager_spacing=None, magnification=None):
    """A minimal uncompressed DX (for presentation) DICOM file."""
    from pydicom.dataset import FileDataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.1.1"  # Digital X-Ray Image Storage - For Presentation
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = FileDataset(str(path), {}, file_meta=meta, preamble=b"\0" * 128)
    ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
    ds.Modality = "DX"
    ds.PresentationIntentType = "FOR PRESENTATION"
    ds.Rows, ds.Columns = arr.shape
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = photometric
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    if pixel_spacing:
        ds.PixelSpacing = list(pixel_spacing)
    if imager_spacing:
        ds.ImagerPixelSpacing = list(imager_spacing)
    if magnification:
        ds.EstimatedRadiographicMagnificationFactor = magnification
    ds.PixelData = np.asarray(arr, np.uint16).tobytes()
    ds.save_as(str(path), enforce_file_format=True)


def _blob_image(h: int = 96, w: int = 80) -> np.ndarray:
    """12-bit image: dark background, bright bone block at rows 20-39, columns 10-29."""
    a = np.full((h, w), 300, np.uint16)
    a[20:40, 10:30] = 3500
    return a


# ---------------------------------------------------------------------------------------------- gradients
def test_step_edge_full_magnitude_no_overflow():
    img = np.zeros((64, 64), np.float32)
    img[:, 32:] = 255.0
    g = central_difference_magnitude(img)
    assert g[10, 31] == 255.0 and g[10, 32] == 255.0  # both sides of the step: 255, not wrapped
    assert g[10, 29] == 0.0 and g[10, 34] == 0.0
    diag = np.triu(np.full((64, 64), 255.0))  # a diagonal step: |grad| = 255 * sqrt(2) = 360.6 > 255
    assert central_difference_magnitude(diag).max() == pytest.approx(255 * np.sqrt(2))
    out = global_gradient(img)
    assert out.dtype == np.float32 and out.min() >= 0 and out.max() <= 1
    assert out[:, 31:33].min() > 0.99  # the edge is the maximum of the map
    assert out[:, :29].max() < 0.01 and out[:, 35:].max() < 0.01


def test_global_map_known_values_on_ramp():
    ramp = np.tile(np.arange(256.0) * 0.5, (128, 1))  # slope 0.5 -> central difference 1.0
    g = central_difference_magnitude(ramp)
    np.testing.assert_allclose(g[:, 1:-1], 1.0)
    np.testing.assert_allclose(g[:, [0, -1]], 0.0)  # mirrored border: derivative 0 (OpenCV REFLECT_101)
    assert distinct_level_median(g) == 0.5  # levels {0, 1}
    # integer levels {0, 3, 10, 250, 300} (300: no uint8 wrap-around) -> median 10, not the pixel median
    assert distinct_level_median(np.array([0.0, 0.0, 0.0, 3.7, 3.2, 10.0, 10.9, 250.0, 300.2])) == 10.0
    out = global_gradient(ramp)
    np.testing.assert_allclose(out[:, [0, -1]], 0.0, atol=1e-6)
    np.testing.assert_allclose(out[:, 1:-1], 1.0, atol=1e-3)


def test_global_threshold_clips_strong_edges():
    img = np.zeros((64, 96))
    img[:, 32:] = 40.0
    img[:, 64:] = 240.0  # edges of 40 and 200: levels {0, 40, 200} -> t = 40
    g = central_difference_magnitude(img)
    assert distinct_level_median(g) == 40.0
    out = global_gradient(img)
    assert abs(float(out[5, 31]) - float(out[5, 63])) < 1e-3  # both clipped at t: the same value


def test_local_map_constant_zero_and_edges_nonzero():
    assert np.all(local_gradient(np.full((128, 128), 77.0)) == 0)
    checker = ((np.indices((128, 128)) // 16).sum(0) % 2) * 255.0
    out = local_gradient(checker)
    assert out.dtype == np.float32 and out.min() >= 0 and out.max() == pytest.approx(1.0)
    edge_cols = out[:, 14:18]  # the vertical edge at column 16
    assert edge_cols.max(axis=1).min() > 0.5  # non-zero along the whole edge, also at the top/bottom border
    assert out[37:44, 4:11].max() < 0.05  # inside a square (edges at rows 32/48, column 16): 0


def test_outputs_shape_dtype_range_and_modes():
    img = synthetic_radiograph(0)
    for mode in MODES:
        x, box = prepare_input(img, mode)
        assert x.shape == (1, 256, 256) and x.dtype == np.float32
        assert 0.0 <= x.min() and x.max() <= 1.0 and x.max() > 0.5
        assert box.shape == img.shape
    with pytest.raises(InputError, match="none, global, local"):
        prepare_input(img, "sobel")
    with pytest.raises(InputError, match="NaN"):
        prepare_input(np.full((80, 80), np.nan), "none")
    np.testing.assert_allclose(gradient(np.array([[0.0, 127.5, 255.0]]), "none"), [[0, 0.5, 1]])


def test_normalise_scale_invariant():
    img01 = synthetic_radiograph(1)
    u8 = np.round(np.clip(img01, 0, 1) * 255).astype(np.uint8)
    f01 = u8.astype(np.float32) / 255.0
    raw16 = u8.astype(np.uint16) * 16 + 100  # another affine scale
    a, b, c = normalise(u8), normalise(f01), normalise(raw16)
    assert a.dtype == np.float32 and a.min() >= 0 and a.max() <= 255 and a.max() > 250
    np.testing.assert_allclose(a, b, atol=1e-3)
    np.testing.assert_allclose(a, c, atol=1e-3)
    for mode in MODES:
        np.testing.assert_allclose(prepare_input(u8, mode)[0], prepare_input(f01, mode)[0], atol=1e-4)
    np.testing.assert_array_equal(normalise(u8), a)  # deterministic


# ---------------------------------------------------------------------------------------------- letterbox
@pytest.mark.parametrize("shape", [(400, 260), (180, 300), (256, 256), (1000, 700), (120, 90)])
def test_letterbox_round_trip_smooth(shape):
    h, w = shape
    yy, xx = np.mgrid[0:h, 0:w] / max(h, w)
    p1 = 0.5 + 0.4 * np.sin(2 * np.pi * xx) * np.cos(2 * np.pi * yy)
    prob = np.stack([p1, 1 - p1])
    box = LetterBox((h, w), 256)
    nh, nw = box.inner_shape
    assert max(nh, nw) == 256 and abs(nh / nw - h / w) < 0.01
    grid = np.stack([box.forward(c) for c in prob])
    top, left = box.offsets
    assert np.all(grid[:, :top] == 0) and np.all(grid[:, :, :left] == 0)  # padding
    back = box.inverse(grid)
    assert back.shape == (2, h, w)
    assert np.abs(back - prob).max() < 0.03
    np.testing.assert_allclose(back.sum(0), 1.0, atol=1e-5)  # still probabilities


@pytest.mark.parametrize("shape", [(400, 260), (180, 300), (300, 300)])
def test_letterbox_inverse_keeps_label_positions(shape):
    h, w = shape
    box = LetterBox((h, w), 256)
    rng = np.random.default_rng(3)
    for _ in range(4):
        # a blob defined on the grid (as the network would output), its position known in image coordinates
        cy, cx = rng.uniform(0.3, 0.7) * h, rng.uniform(0.3, 0.7) * w
        gy, gx = box.image_to_grid([[cy, cx]])[0]
        yy, xx = np.mgrid[0:256, 0:256]
        onehot = (((yy - gy) ** 2 + (xx - gx) ** 2) <= 15 ** 2).astype(np.float32)
        back = box.inverse(np.stack([1 - onehot, onehot]))
        lab = back.argmax(0)
        got = np.array(ndimage.center_of_mass(lab == 1))
        assert np.hypot(*(got - [cy, cx])) < 1.0
    np.testing.assert_allclose(box.grid_to_image(box.image_to_grid([[10.0, 20.0]])), [[10.0, 20.0]])


def test_letterbox_labels_nearest_and_pixel_size():
    lab = np.zeros((400, 200), np.uint8)
    lab[100:200, 50:150] = 7
    box = LetterBox(lab.shape, 256)
    out = box.forward_labels(lab)
    assert set(np.unique(out)) == {0, 7}  # never an interpolated value
    assert (out == 7).sum() == pytest.approx(100 * 100 * box.scale ** 2, rel=0.05)
    col, row = box.pixel_size_mm((0.1, 0.12, 1.0))
    assert col == pytest.approx(0.1 * 200 / 128) and row == pytest.approx(0.12 * 400 / 256)


# ---------------------------------------------------------------------------------------------- reading
def test_grey_from_rgb():
    rng = np.random.default_rng(0)
    grey = rng.integers(0, 256, (64, 64)).astype(np.uint8)
    rgb = np.stack([grey, grey, grey], -1)
    rgb[0, 0, 1] ^= 1  # JPEG-like 1-level differences are tolerated
    out, note = grey_from_rgb(rgb)
    assert note and "grey" in note
    np.testing.assert_allclose(out, grey, atol=1)
    rgba = np.concatenate([rgb, np.full((64, 64, 1), 255, np.uint8)], -1)
    assert np.allclose(grey_from_rgb(rgba)[0], out)
    coloured = rgb.copy()
    coloured[10:20, 10:40, 0] = 255  # a red annotation
    coloured[10:20, 10:40, 1:] = 0
    with pytest.raises(InputError, match="colour photograph"):
        grey_from_rgb(coloured)


def test_read_png_grey_rgb_colour_and_spacing(tmp_path):
    from PIL import Image

    img = (synthetic_radiograph(2) * 255).clip(0, 255).astype(np.uint8)
    Image.fromarray(img).save(tmp_path / "g.png", dpi=(96, 96))
    vol, notes = read_radiograph(tmp_path / "g.png")
    assert vol.array.shape == (1,) + img.shape and vol.array.dtype == np.float32
    np.testing.assert_array_equal(vol.array[0], img)
    assert vol.meta["spacing_known"] is False and vol.spacing[:2] == (1.0, 1.0)
    assert any("pixels" in n for n in notes)
    Image.fromarray(np.stack([img] * 3, -1)).save(tmp_path / "rgb.png")
    vol, notes = read_radiograph(tmp_path / "rgb.png")
    np.testing.assert_array_equal(vol.array[0], img)
    assert vol.meta["photometric"] == "RGB" and any("converted to grey" in n for n in notes)
    col = np.stack([img] * 3, -1)
    col[50:90, 50:120] = (255, 40, 40)
    Image.fromarray(col).save(tmp_path / "photo.jpg")
    with pytest.raises(InputError, match="colour photograph"):
        read_radiograph(tmp_path / "photo.jpg")
    img16 = (synthetic_radiograph(2) * 4000).clip(0, 65535).astype(np.uint16)
    Image.fromarray(img16).save(tmp_path / "g16.tif")
    vol, _ = read_radiograph(tmp_path / "g16.tif")
    np.testing.assert_array_equal(vol.array[0], img16)
    assert vol.meta["spacing_known"] is False
    la = np.stack([img, np.full_like(img, 255)], -1)  # grey + alpha: SimpleITK cannot read it, PIL can
    Image.fromarray(la, mode="LA").save(tmp_path / "la.png")
    vol, _ = read_radiograph(tmp_path / "la.png")
    np.testing.assert_array_equal(vol.array[0], img)


def test_3d_refused(tmp_path):
    from MedSegAILib.core.io import write_volume

    write_volume(Volume(np.random.default_rng(0).random((5, 80, 80)).astype(np.float32)), tmp_path / "v.nrrd")
    with pytest.raises(InputError, match="3-D volume of 5 slices"):
        read_radiograph(tmp_path / "v.nrrd")
    with pytest.raises(InputError, match="3-D volume"):
        check_radiograph(Volume(np.zeros((3, 80, 80))))
    from PIL import Image

    frames = [Image.fromarray(np.full((80, 80), v, np.uint8)) for v in (10, 20, 30)]
    frames[0].save(tmp_path / "m.tif", save_all=True, append_images=frames[1:])
    with pytest.raises(InputError, match="3 slices"):
        read_radiograph(tmp_path / "m.tif")


def test_check_radiograph_refusals():
    ok = Volume(synthetic_radiograph(0)[np.newaxis])
    assert check_radiograph(ok) == []
    bad = synthetic_radiograph(0)
    bad[5, 5] = np.inf
    with pytest.raises(InputError, match="NaN or infinite"):
        check_radiograph(Volume(bad[np.newaxis]))
    with pytest.raises(InputError, match="constant"):
        check_radiograph(Volume(np.full((1, 100, 100), 7.0)))
    with pytest.raises(InputError, match="at least 64"):
        check_radiograph(Volume(np.random.default_rng(0).random((1, 50, 300))))


def test_dicom_monochrome1_inverted(tmp_path):
    a = _blob_image()
    write_dx(tmp_path / "m1.dcm", 4095 - a, photometric="MONOCHROME1", pixel_spacing=(0.1, 0.1))
    write_dx(tmp_path / "m2.dcm", a, photometric="MONOCHROME2", pixel_spacing=(0.1, 0.1))
    v1, notes1 = read_radiograph(tmp_path / "m1.dcm")
    v2, notes2 = read_radiograph(tmp_path / "m2.dcm")
    assert v1.meta["photometric"] == "MONOCHROME1" and v2.meta["photometric"] == "MONOCHROME2"
    assert any("MONOCHROME1" in n for n in notes1) and not any("MONOCHROME1" in n for n in notes2)
    for v in (v1, v2):  # bone bright in both, whatever the storage (and inverted exactly once)
        assert v.array[0, 30, 20] > v.array[0, 70, 60]
    np.testing.assert_allclose(v1.array[0] - v1.array[0].min(), v2.array[0] - v2.array[0].min())


def test_dicom_spacing_sources(tmp_path):
    a = _blob_image()
    write_dx(tmp_path / "ps.dcm", a, pixel_spacing=(0.1, 0.12), imager_spacing=(0.2, 0.15))
    write_dx(tmp_path / "ips.dcm", a, imager_spacing=(0.2, 0.15))
    write_dx(tmp_path / "mag.dcm", a, imager_spacing=(0.2, 0.15), magnification=1.25)
    write_dx(tmp_path / "none.dcm", a)
    v, _ = read_radiograph(tmp_path / "ps.dcm")  # PixelSpacing wins (GDCM would report ImagerPixelSpacing)
    assert v.spacing[:2] == pytest.approx((0.12, 0.1)) and v.meta["spacing_source"] == "PixelSpacing"
    assert v.meta["spacing_known"] is True and v.meta["presentation_intent"] == "FOR PRESENTATION"
    v, notes = read_radiograph(tmp_path / "ips.dcm")
    assert v.spacing[:2] == pytest.approx((0.15, 0.2)) and v.meta["spacing_source"] == "ImagerPixelSpacing"
    assert any("detector" in n and "magnified" in n for n in notes)
    v, _ = read_radiograph(tmp_path / "mag.dcm")
    assert v.spacing[:2] == pytest.approx((0.12, 0.16))
    v, notes = read_radiograph(tmp_path / "none.dcm")
    assert v.meta["spacing_known"] is False and any("pixels" in n for n in notes)


# ---------------------------------------------------------------------------------------------- polarity
@pytest.mark.parametrize("frame", [None, "bright", "black"])
@pytest.mark.parametrize("text", [False, True])
@pytest.mark.parametrize("inverted", [False, True])
def test_detect_inverted(frame, text, inverted):
    for seed in (0, 1):
        img = synthetic_radiograph(seed, frame=frame, text=text, inverted=inverted)
        decision, conf = detect_inverted(img)
        assert decision is inverted and conf >= INVERT_CONFIDENCE
    landscape = synthetic_radiograph(5, frame=frame, text=text, inverted=inverted).T.copy()
    assert detect_inverted(landscape)[0] is inverted


def test_inverse_argmax_matches_inverse_then_argmax():
    """Exact below 1024 px; block-wise above, with boundaries moved by at most f/2 pixels."""
    from scipy import ndimage

    rng = np.random.default_rng(0)
    p = np.exp(20 * ndimage.gaussian_filter(rng.random((11, 256, 256)), (0, 6, 6))).astype(np.float32)
    p /= p.sum(0)
    for shape, exact in (((300, 200), True), ((700, 1000), True), ((2600, 2100), False)):
        box = LetterBox(shape)
        lab, conf = box.inverse_argmax(p)
        ref = box.inverse(p)
        assert lab.shape == shape and conf.shape == shape and lab.dtype == np.uint8
        agree = lab == ref.argmax(0)
        if exact:  # up to floating-point ties between two classes
            top2 = np.sort(ref, 0)[-2:]
            assert (top2[1] - top2[0])[~agree].max(initial=0) < 1e-5
            np.testing.assert_allclose(conf, ref.max(0), atol=1e-5)
        else:
            assert agree.mean() > 0.98
            # every disagreement lies within f/2 pixels (f = 3 here) of a true boundary
            edge = ndimage.morphological_gradient(ref.argmax(0).astype(np.int16), size=3) > 0
            near = ndimage.binary_dilation(edge, iterations=2)
            assert near[~agree].all()


def test_non_square_pixels_keep_the_physical_shape():
    """A disc imaged with 0.2 x 0.1 mm pixels (an ellipse in pixels) is a disc again on the network grid."""
    h, w = 400, 200  # rows 0.1 mm, columns 0.2 mm: a 40 x 40 mm field
    yy, xx = np.mgrid[0:h, 0:w]
    disc = (((yy + 0.5) * 0.1 - 20) ** 2 + ((xx + 0.5) * 0.2 - 20) ** 2 < 10 ** 2).astype(np.float32)
    x, box = prepare_input(disc * 200 + 20, "none", 128, spacing=(0.2, 0.1))
    assert box.inner_shape == (128, 128)
    m = x[0] > 0.5
    rows, cols = np.nonzero(m)
    assert abs((rows.max() - rows.min()) - (cols.max() - cols.min())) <= 2
    lab, _ = box.inverse_argmax(np.stack([1 - m, m]).astype(np.float32))
    assert (lab.astype(bool) == disc.astype(bool)).mean() > 0.99


def test_postprocess_keeps_the_largest_piece_fills_holes_and_drops_unconfident_bones():
    from MedSegAILib.tasks.carpal.postprocess import confident_bones, keep_largest_per_label

    lab = np.zeros((300, 400), np.uint8)
    lab[50:100, 50:120] = 1
    lab[70, 80] = 0  # a hole
    lab[250:252, 350:352] = 1  # a stray island far away
    lab[150:200, 200:260] = 2
    lab[160:165, 210:215] = 3  # another bone inside bone 2's outline (the pisiform over the triquetrum) stays
    out = keep_largest_per_label(lab, (1, 2, 3))
    assert out[70, 80] == 1 and (out[250:252, 350:352] == 0).all()
    assert (out == 1).sum() == 50 * 70 and (out == 3).sum() == 25
    conf = np.full(lab.shape, 0.95, np.float32)
    conf[out == 3] = 0.4
    kept, dropped, ok = confident_bones(out, conf, (1, 2, 3), (1, 2, 3), 0.6, 2, 0.8)
    assert ok and dropped == [3] and not (kept == 3).any() and (kept == 1).sum() == 50 * 70
    kept, dropped, ok = confident_bones(out, conf, (1, 2, 3), (1, 2, 3), 0.6, 3, 0.8)
    assert not ok and not kept.any()
