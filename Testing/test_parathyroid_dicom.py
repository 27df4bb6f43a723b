"""Planar NM DICOM: the writer (simulate/dicom_nm.py) and the reader's tracer/timing metadata (core/io.py)."""

from __future__ import annotations

import datetime as dt

import numpy as np
import pydicom
import pytest

from MedSegAILib.core.io import read_volume
from MedSegAILib.core.validate import check_volume
from MedSegAILib.errors import InputError
from MedSegAILib.simulate.dicom_nm import write_planar_nm_dicom
from MedSegAILib.simulate.planar_neck import simulate_neck
from MedSegAILib.tasks.base import InputSpec
from MedSegAILib.tasks.parathyroid import acquisition as acq

PLANAR = InputSpec(role="sestamibi", title="99mTc-sestamibi image", modality="NM", dims=2)


@pytest.fixture(scope="module")
def study():
    return simulate_neck(11, iodine_pixel_mm=2.3, iodine_matrix=120)


@pytest.mark.parametrize("which", ["tc", "iodine"])
def test_round_trip_keeps_pixels_geometry_and_tracer(study, which, tmp_path):
    vol = getattr(study, which)
    path = write_planar_nm_dicom(vol, tmp_path / f"{which}.dcm", patient_id="P1")
    back = read_volume(path)
    assert back.shape == vol.shape == (1,) + vol.array.shape[1:]
    assert np.array_equal(back.array.astype(np.float64), vol.array.astype(np.float64))  # integer counts: exact
    assert np.allclose(back.spacing[:2], vol.spacing[:2], rtol=1e-8)
    assert np.allclose(back.origin, vol.origin, atol=1e-6)
    assert np.allclose(back.direction, vol.direction, atol=1e-6)
    m = back.meta
    assert m["modality"] == "NM" and m["patient_id"] == "P1"
    assert m["tracer"] == vol.meta["tracer"]
    assert acq.radionuclide_of(back) == acq.radionuclide_of(vol)
    assert acq.tracer_kind(back) == acq.tracer_kind(vol)
    assert m["half_life_s"] == pytest.approx(vol.meta["half_life_s"], rel=1e-8)
    assert m["injected_MBq"] == pytest.approx(vol.meta["injected_MBq"], rel=1e-8)
    assert m["frame_duration_s"] == pytest.approx(vol.meta["frame_duration_s"], abs=5e-4)  # stored in whole ms
    assert m["acquisition_start_s"] == pytest.approx(vol.meta["acquisition_start_s"], abs=1e-5)


def test_count_corrections_from_dicom_equal_those_from_the_simulator(study, tmp_path):
    tc = read_volume(write_planar_nm_dicom(study.tc, tmp_path / "tc.dcm"))
    io = read_volume(write_planar_nm_dicom(study.iodine, tmp_path / "io.dcm"))
    from_sim = acq.count_rate_correction(acq.acquisition_info(study.tc), acq.acquisition_info(study.iodine))
    from_dcm = acq.count_rate_correction(acq.acquisition_info(tc), acq.acquisition_info(io))
    assert from_dcm.tc_factor == pytest.approx(from_sim.tc_factor, rel=1e-5)
    assert from_dcm.iodine_factor == pytest.approx(from_sim.iodine_factor, rel=1e-5)
    assert from_dcm.corrections == from_sim.corrections
    late_sim = acq.late_decay_factor(acq.acquisition_info(study.tc), acq.acquisition_info(study.tc))
    assert late_sim == pytest.approx(1.0)


def test_planar_file_without_position_is_read_with_its_spacing(study, tmp_path):
    """Many planar NM files have a Detector Information Sequence without Image Position: GDCM refuses them."""
    path = write_planar_nm_dicom(study.tc, tmp_path / "nopos.dcm", write_geometry=False)
    ds = pydicom.dcmread(path)
    assert "ImagePositionPatient" not in ds.DetectorInformationSequence[0]
    back = read_volume(path)
    assert back.shape == study.tc.shape
    assert np.allclose(back.spacing[:2], study.tc.spacing[:2])
    assert np.array_equal(back.array.astype(np.float64), study.tc.array.astype(np.float64))
    assert "assumed_geometry" in back.meta and back.meta["tracer"] == "sestamibi"
    check_volume(back, PLANAR)  # a valid planar input


def test_float_pixels_use_rescale(study, tmp_path):
    vol = study.parathyroid.with_array(study.parathyroid.array * 0.37 - 1.5)
    back = read_volume(write_planar_nm_dicom(vol, tmp_path / "float.dcm"))
    span = float(vol.array.max() - vol.array.min())
    assert np.abs(back.array - vol.array).max() <= span / 65535 + 1e-6


def test_multiframe_nm_is_a_volume_and_refused_as_planar(study, tmp_path):
    path = write_planar_nm_dicom(study.tc, tmp_path / "one.dcm")
    ds = pydicom.dcmread(path)
    ds.NumberOfFrames = 3
    ds.PixelData = ds.PixelData * 3
    ds.save_as(tmp_path / "three.dcm")
    vol = read_volume(tmp_path / "three.dcm")
    assert vol.shape == (3,) + study.tc.shape[1:]
    with pytest.raises(InputError, match="3-D volume with 3 slices"):
        check_volume(vol, PLANAR)


def test_series_folder_and_dose_in_becquerel(study, tmp_path):
    folder = tmp_path / "series"
    path = write_planar_nm_dicom(study.iodine, folder / "img.dcm")
    ds = pydicom.dcmread(path)
    ds.RadiopharmaceuticalInformationSequence[0].RadionuclideTotalDose = "18500000"  # 18.5 MBq written in Bq
    ds.save_as(path)
    vol = read_volume(folder)
    assert vol.meta["injected_MBq"] == pytest.approx(18.5)
    assert vol.meta["tracer"] == "iodine" and acq.tracer_kind(vol) == "iodine"


def test_injection_time_only_as_time_of_day(study, tmp_path):
    """Old files give only Radiopharmaceutical Start Time; the injection may be the day before the scan."""
    vol = study.iodine  # 123I: imaged hours after its injection
    path = write_planar_nm_dicom(vol, tmp_path / "i.dcm", injection_datetime=dt.datetime(2024, 1, 15, 23, 0, 0))
    ds = pydicom.dcmread(path)
    del ds.RadiopharmaceuticalInformationSequence[0].RadiopharmaceuticalStartDateTime
    ds.save_as(path)
    back = read_volume(path)
    assert back.meta["acquisition_start_s"] == pytest.approx(vol.meta["acquisition_start_s"], abs=1e-5)
