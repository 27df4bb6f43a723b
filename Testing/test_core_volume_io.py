"""The volume type, file IO and resampling keep geometry exactly."""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk
from hypothesis import given, settings
from hypothesis import strategies as st

from MedSegAILib.core.volume import random_rotation
from MedSegAILib.core.io import read_volume, split_stem, write_volume
from MedSegAILib.core.resample import grid_for_spacing, resample_volume
from MedSegAILib.core.volume import Volume, lps_to_ras_points
from MedSegAILib.errors import InputError, OutputError


def _oblique(seed: int, shape=(7, 9, 11), dtype=np.int16) -> Volume:
    rng = np.random.default_rng(seed)
    arr = rng.integers(-1000, 1000, size=shape).astype(dtype)
    return Volume(arr, tuple(rng.uniform(0.3, 5.0, 3)), tuple(rng.uniform(-300, 300, 3)), random_rotation(rng))


def test_array_axis_order_matches_simpleitk_and_physical_points():
    vol = _oblique(1)
    img = sitk.GetImageFromArray(vol.array)
    img.SetSpacing(vol.spacing)
    img.SetOrigin(vol.origin)
    img.SetDirection(vol.direction.ravel())
    for ijk in [(0, 0, 0), (3, 5, 2), (10, 8, 6)]:
        assert np.allclose(img.TransformIndexToPhysicalPoint(ijk), vol.index_to_lps(ijk)[0])
        assert np.allclose(vol.lps_to_index(vol.index_to_lps(ijk))[0], ijk)
    # the array is [k, j, i]: voxel (i=10, j=8, k=6)
    assert vol.array[6, 8, 10] == sitk.GetArrayViewFromImage(img)[6, 8, 10]
    assert vol.size_ijk == (11, 9, 7)


def test_ras_matrix_is_lps_matrix_with_flipped_xy():
    vol = _oblique(2)
    ijk = np.array([2.0, 3.0, 4.0, 1.0])
    ras = vol.ijk_to_ras() @ ijk
    assert np.allclose(ras[:3], lps_to_ras_points(vol.index_to_lps(ijk[:3]))[0])
    assert vol.is_oblique


@pytest.mark.parametrize("suffix", [".nii.gz", ".nrrd", ".mha", ".nii"])
def test_file_round_trip_keeps_geometry_and_values(tmp_path, suffix):
    vol = _oblique(3)
    path = write_volume(vol, tmp_path / f"case{suffix}")
    back = read_volume(path)
    assert back.same_geometry(vol, atol=1e-5), (back, vol)
    assert np.array_equal(back.array, vol.array)
    assert back.meta["name"] == "case"


@settings(max_examples=15, deadline=None)
@given(seed=st.integers(0, 10_000), shape=st.tuples(st.integers(1, 6), st.integers(2, 7), st.integers(2, 7)))
def test_nrrd_round_trip_property(tmp_path_factory, seed, shape):
    vol = _oblique(seed, shape, np.float32)
    path = write_volume(vol, tmp_path_factory.mktemp("rt") / "v.nrrd")
    back = read_volume(path)
    assert back.same_geometry(vol, atol=1e-6)
    assert np.array_equal(back.array, vol.array)


def test_dicom_series_is_read_with_modality(test_data):
    vol = read_volume(test_data / "ct-fixtures" / "example_ct_dicom")
    assert vol.shape == (20, 512, 512)
    assert vol.meta["modality"] == "CT"
    assert np.isclose(vol.spacing[2], 2.0, atol=0.05)


def test_real_nifti_geometry_matches_nibabel_affine(test_data):
    nib = pytest.importorskip("nibabel")
    path = test_data / "ct-fixtures" / "example_ct_sm.nii.gz"
    vol = read_volume(path)
    affine = nib.load(str(path)).affine  # RAS
    ijk = np.array([5.0, 7.0, 3.0])
    assert np.allclose(lps_to_ras_points(vol.index_to_lps(ijk))[0], affine[:3, :3] @ ijk + affine[:3, 3], atol=1e-3)


def test_bad_files_and_shapes_give_clear_errors(tmp_path):
    with pytest.raises(InputError, match="not found"):
        read_volume(tmp_path / "missing.nii.gz")
    bad = tmp_path / "corrupt.nii.gz"
    bad.write_bytes(b"this is not a nifti file")
    with pytest.raises(InputError, match="corrupt"):
        read_volume(bad)
    four_d = sitk.JoinSeries([sitk.Image(8, 8, 8, sitk.sitkFloat32)] * 3)
    sitk.WriteImage(four_d, str(tmp_path / "4d.nii.gz"))
    with pytest.raises(InputError, match="4-D"):
        read_volume(tmp_path / "4d.nii.gz")
    colours = np.random.default_rng(0).integers(0, 255, (8, 8, 3)).astype(np.uint8)
    rgb = sitk.GetImageFromArray(colours, isVector=True)
    sitk.WriteImage(rgb, str(tmp_path / "rgb.png"))
    with pytest.raises(InputError, match="components"):
        read_volume(tmp_path / "rgb.png")
    with pytest.raises(InputError, match="orthonormal"):
        Volume(np.zeros((3, 3, 3)), direction=np.diag([1.0, 2.0, 1.0]))
    with pytest.raises(InputError, match="positive"):
        Volume(np.zeros((3, 3, 3)), spacing=(1.0, 0.0, 1.0))


def test_write_into_unwritable_folder_is_an_output_error(tmp_path):
    # a path below a regular file can never be created, even by root (CI runs as root, so chmod is not enough)
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    with pytest.raises(OutputError, match="Cannot create the output folder"):
        write_volume(_oblique(4), blocker / "out" / "x.nrrd")
    assert blocker.read_text() == "x"


def test_split_stem_handles_double_suffixes():
    assert split_stem("/a/b/ct.nii.gz") == ("ct", ".nii.gz")
    assert split_stem("x.seg.nrrd") == ("x", ".seg.nrrd")
    assert split_stem("scan.v2.nrrd") == ("scan.v2", ".nrrd")


def test_resample_to_spacing_keeps_extent_and_physical_positions():
    rng = np.random.default_rng(5)
    vol = Volume(np.zeros((20, 30, 40), np.float32), (1.5, 1.5, 3.0), (10.0, -20.0, 5.0), random_rotation(rng))
    # a bright voxel block at a known physical position
    vol.array[8:12, 12:18, 16:24] = 100.0
    centre = vol.index_to_lps([19.5, 14.5, 9.5])[0]
    out = resample_volume(vol, spacing=(2.0, 2.0, 2.0))
    grid = grid_for_spacing(vol, (2.0, 2.0, 2.0))
    assert out.shape == grid.shape
    assert np.allclose(out.direction, vol.direction)
    # extents agree to within one new voxel
    ext_in = np.array(vol.size_ijk) * np.array(vol.spacing)
    ext_out = np.array(out.size_ijk) * np.array(out.spacing)
    assert np.all(np.abs(ext_in - ext_out) <= 2.0)
    # the block's centre of mass lands at the same physical point
    idx = np.argwhere(out.array > 50).mean(axis=0)[::-1]
    assert np.linalg.norm(out.index_to_lps(idx)[0] - centre) < 1.0


def test_resample_nearest_keeps_label_values():
    lab = Volume(np.random.default_rng(0).integers(0, 3, (10, 10, 10)).astype(np.uint8), (2, 2, 2))
    out = resample_volume(lab, spacing=(1.0, 1.0, 1.0), interpolation="nearest")
    assert set(np.unique(out.array)) <= {0, 1, 2}
    assert out.array.dtype == np.uint8


def test_atomic_writes_get_plain_open_permissions(tmp_path):
    """Atomic writers create the final file as ``open()`` would: 0666 & ~umask for a new file (not mkstemp's 0600),
    the existing file's mode when overwriting; no temporary file is left behind."""
    import os
    import stat

    from MedSegAILib.core.io import atomic_write_bytes

    old = os.umask(0o022)
    try:
        assert stat.S_IMODE(atomic_write_bytes(tmp_path / "a.json", b"{}").stat().st_mode) == 0o644
        assert stat.S_IMODE(write_volume(_oblique(5), tmp_path / "v.nrrd").stat().st_mode) == 0o644
        os.umask(0o002)
        assert stat.S_IMODE(atomic_write_bytes(tmp_path / "b.json", b"{}").stat().st_mode) == 0o664
        os.chmod(tmp_path / "a.json", 0o640)  # overwriting keeps the file's own mode
        assert stat.S_IMODE(atomic_write_bytes(tmp_path / "a.json", b"[]").stat().st_mode) == 0o640
        assert (tmp_path / "a.json").read_bytes() == b"[]"
    finally:
        os.umask(old)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.json", "b.json", "v.nrrd"]
