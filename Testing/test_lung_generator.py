"""LNHG segmentation branch: generator/critic networks, gradient penalty, LIDC metadata and split, the inference
helper's geometry, and a 3-step smoke run of the training recipe."""

from __future__ import annotations

import hashlib
import json
import time

import numpy as np
import pytest
import torch

from MedSegAILib.core.volume import Volume, random_rotation
from MedSegAILib.nets import build
from MedSegAILib.nets.lnhg import gradient_penalty, parameter_count
from MedSegAILib.tasks.lung_nodule import segmentation as seg
from MedSegAILib.train import lidc

torch.set_num_threads(1)


# ---------------------------------------------------------------------------------------------- networks
def test_generator_shape_identity_and_zeros_outside():
    g = build("lnhg_generator3d", features=[4, 8, 8], blocks=[0, 1, 1])
    x = torch.rand(2, 1, 8, 12, 16)
    y = g(x)
    assert y.shape == x.shape and float(y.detach().min()) >= 0.0
    with torch.no_grad():  # head = 0: output = ReLU(x) = x (global input residual)
        g.head.weight.zero_()
        g.head.bias.zero_()
        assert torch.equal(g(x), x)
        g.head.bias.fill_(-0.5)  # head = -0.5: exactly 0 where x < 0.5, x - 0.5 elsewhere
        y = g(x)
        assert torch.all(y[x < 0.5] == 0) and torch.allclose(y[x >= 0.5], x[x >= 0.5] - 0.5)
    with pytest.raises(ValueError, match="divisible by 4"):
        g(torch.rand(1, 1, 8, 10, 12))


def test_default_generator_size():
    g = build("lnhg_generator3d")
    assert parameter_count(g) == 161_593


def test_critic_independent_of_patch_size():
    d = build("lnhg_critic3d")
    n = parameter_count(d)
    s1 = d(torch.rand(3, 1, 16, 24, 24), torch.rand(3, 1, 16, 24, 24))
    s2 = d(torch.rand(2, 2, 32, 48, 64))
    assert s1.shape == (3,) and s2.shape == (2,) and parameter_count(d) == n
    assert not any(isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for m in d.modules())


class _Linear(torch.nn.Module):
    """D(c, y) = sum(w * y): gradient w.r.t. y is w everywhere, so GP = (||w|| - 1)^2 exactly."""

    def __init__(self, w):
        super().__init__()
        self.w = w

    def forward(self, c, y):
        return (y * self.w).flatten(1).sum(1)


def test_gradient_penalty_exact_on_linear_critic():
    shape = (3, 1, 4, 5, 6)
    w = torch.randn(shape[1:])
    real, fake, cond = torch.rand(shape), torch.rand(shape), torch.rand(shape)
    for norm in (1.0, 2.0, 0.5):
        gp = gradient_penalty(_Linear(w / w.norm() * norm), cond, real, fake)
        assert abs(float(gp) - (norm - 1.0) ** 2) < 1e-5
    # on the real critic: finite, non-negative, differentiable w.r.t. the critic's weights
    d = build("lnhg_critic3d", features=[4, 8])
    gp = gradient_penalty(d, cond, real, fake)
    gp.backward()
    assert float(gp.detach()) >= 0 and all(p.grad is not None for p in d.parameters() if p.ndim > 1)  # (the last bias has no
    # effect on the input gradient)


# ---------------------------------------------------------------------------------------------- data
def test_split_is_by_patient_and_deterministic():
    cases = [{"name": f"P{p}_R_{k}", "patient": f"LIDC-IDRI-{p:04d}"} for p in range(1000) for k in (1, 2)]
    s = lidc.split_by_patient(cases)
    pats = {k: {c["patient"] for c in v} for k, v in s.items()}
    assert not (pats["train"] & pats["val"]) and not (pats["train"] & pats["test"]) and not (pats["val"] & pats["test"])
    assert sum(len(v) for v in s.values()) == len(cases)
    frac = np.array([len(pats[k]) for k in ("train", "val", "test")]) / 1000
    assert np.allclose(frac, [0.70, 0.15, 0.15], atol=0.05)
    assert [c["name"] for c in lidc.split_by_patient(cases[::-1])["val"]] == [c["name"] for c in s["val"]][::-1]


def test_groups():
    assert [lidc.texture_group(v) for v in (1, 2, 3, 4, 5, None)] == ["ggo", "ggo", "part-solid", "solid", "solid", None]
    assert [lidc.size_group(v) for v in (3.0, 6.0, 9.9, 10.0, 25.0)] == ["<6", "6-10", "6-10", "10-20", ">=20"]
    m = np.zeros((40, 40, 40), np.uint8)
    kk, jj, ii = np.mgrid[:40, :40, :40]
    m[(kk - 20) ** 2 + (jj - 20) ** 2 + (ii - 20) ** 2 <= 10 ** 2] = 1
    assert abs(lidc.equivalent_diameter_mm(Volume(m, (0.5, 0.5, 0.5))) - 10.0) < 0.2


def test_xlsx_reader_on_real_metadata(test_data):
    root = test_data / "lidc-nodule-vois"
    if not (root / "metadata.xlsx").is_file():
        pytest.skip("lidc-nodule-vois is not in MEDSEGAI_TEST_DATA")
    rows = lidc.read_xlsx(root / "metadata.xlsx")
    assert len(rows) == 996
    r0 = rows[0]
    assert r0["patient_id"] == "LIDC-IDRI-0001" and r0["nodule_id"] == 1.0
    assert abs(r0["diameter_mm"] - 23.3506) < 1e-3 and r0["Texture_value"] == 5.0 and r0["Texture"] == "Solid"
    cases = lidc.list_cases(root)
    assert len(cases) == 794 and all(c["meta"] for c in cases)  # every crop has its metadata row
    assert len({c["patient"] for c in cases}) == 445
    s = lidc.split_by_patient(cases)
    assert not ({c["patient"] for c in s["train"]} & {c["patient"] for c in s["test"]})
    # the row's centre (LPS) is the mask centroid of the crop, to within 2 mm
    ct, m = lidc.load_case(cases[0])
    c = ct.index_to_lps(np.argwhere(m.array > 0).mean(0)[::-1])[0]
    assert np.linalg.norm(c - [cases[0]["meta"][k] for k in ("coordX", "coordY", "coordZ")]) < 2.0


# ---------------------------------------------------------------------------------------------- inference
class _Threshold(torch.nn.Module):
    """A perfect 'nodule imager' for geometry tests: keeps x where x > 0.5 (HU > -500), 0 elsewhere."""

    divisor = 4

    def forward(self, x):
        return x * (x > 0.5)


def _sphere_ct(rng):
    direction = random_rotation(rng)
    spacing = (0.7, 0.8, 2.0)
    shape = (40, 90, 90)
    ct = Volume(np.full(shape, -1000, np.int16), spacing, (12.0, -30.0, 50.0), direction)
    centre_ijk = np.array([41.3, 47.6, 18.2])
    centre = ct.index_to_lps(centre_ijk)[0]
    kk, jj, ii = np.mgrid[:shape[0], :shape[1], :shape[2]]
    pts = ct.index_to_lps(np.stack([ii.ravel(), jj.ravel(), kk.ravel()], 1))
    inside = (np.linalg.norm(pts - centre, axis=1) <= 8.0).reshape(shape)
    ct.array[inside] = 0
    return ct, centre, inside


def test_segment_region_geometry_oblique():
    ct, centre, inside = _sphere_ct(np.random.default_rng(3))
    assert ct.is_oblique
    out = seg.segment_region(_Threshold(), ct, centre, (40.0, 40.0, 40.0))
    lo = np.asarray(out.meta["index_lo"])
    assert out.spacing == ct.spacing and np.allclose(out.direction, ct.direction)
    assert np.allclose(out.origin, ct.index_to_lps(lo)[0])
    m = out.array > 0.5
    # the segmented sphere's centroid is the true centre (physical position of the sub-volume is right)
    c = out.index_to_lps(np.argwhere(m).mean(0)[::-1])[0]
    assert np.linalg.norm(c - centre) < 0.5
    k, j, i = out.shape
    ref = inside[lo[2]:lo[2] + k, lo[1]:lo[1] + j, lo[0]:lo[0] + i]
    assert ref.sum() == inside.sum()  # the box holds the whole nodule
    assert 2 * (m & ref).sum() / (m.sum() + ref.sum()) > 0.9
    # a centre outside the CT is an input error
    with pytest.raises(Exception, match="outside the CT"):
        seg.segment_region(_Threshold(), ct, centre + 1000.0, (40.0, 40.0, 40.0))


def test_segment_region_speed_default_net():
    ct, centre, _ = _sphere_ct(np.random.default_rng(4))
    g = build("lnhg_generator3d").eval()
    seg.segment_region(g, ct, centre, (40.0, 40.0, 40.0))  # warm-up
    t = time.perf_counter()
    out = seg.segment_region(g, ct, centre, (40.0, 40.0, 40.0))
    dt = time.perf_counter() - t
    assert out.array.dtype == np.float32 and dt < 1.5, f"{dt:.2f} s for a 40 mm box (goal 0.5 s)"


def test_component_at():
    m = np.zeros((10, 20, 20), bool)
    m[4:6, 2:5, 2:5] = True
    m[4:6, 12:16, 12:16] = True
    a = seg.component_at(m, (5, 13, 13))
    assert a.sum() == 2 * 4 * 4 and a[5, 13, 13] and not a[5, 3, 3]
    b = seg.component_at(m, (5, 9, 9), spacing=(1, 1, 1), max_dist_mm=5.0)  # background: nearest blob (12,12)
    assert b.sum() == 32
    assert not seg.component_at(m, (0, 9, 9), spacing=(1, 1, 1), max_dist_mm=3.0).any()


# ---------------------------------------------------------------------------------------------- recipe
def _fake_lidc(root):
    from MedSegAILib.core.io import write_volume

    (root / "image").mkdir(parents=True)
    (root / "nodule_mask").mkdir()
    pats, sides = [], set()
    p = 0
    while len(pats) < 6 or not {"train", "val"} <= sides:  # patients on both the train and the val side
        pid = f"LIDC-IDRI-{p:04d}"
        u = int(hashlib.sha1(pid.encode()).hexdigest()[:8], 16) / 2.0**32
        side = "train" if u < 0.7 else ("val" if u < 0.85 else "test")
        if side != "test" and (len(pats) < 5 or side not in sides):
            pats.append(pid)
            sides.add(side)
        p += 1
        assert p < 10_000
    rng = np.random.default_rng(0)
    for pid in pats:
        hu = rng.normal(-850, 30, (8, 40, 40)).astype(np.int16)
        kk, jj, ii = np.mgrid[:8, :40, :40]
        m = ((kk - 4) ** 2 * 4 + (jj - 20) ** 2 + (ii - 20) ** 2 <= 36).astype(np.uint8)
        hu[m > 0] = 20
        write_volume(Volume(hu, (0.7, 0.7, 2.0), (0, 0, 0)), root / "image" / f"{pid}_R_1.nii.gz")
        write_volume(Volume(m, (0.7, 0.7, 2.0), (0, 0, 0)), root / "nodule_mask" / f"{pid}_R_1.nii.gz")


def test_recipe_smoke_writes_loadable_generator(tmp_path):
    from safetensors.torch import load_file

    from MedSegAILib.train import lung_generator as rec

    _fake_lidc(tmp_path / "lidc")
    out = tmp_path / "run"
    rc = rec.main(["--out", str(out), "--cache", str(tmp_path / "c.npz"), "--data", str(tmp_path / "lidc"),
                   "--steps", "3", "--batch", "2", "--max-cases", "4", "--threads", "1",
                   "--gen-hp", json.dumps({"features": [4, 4, 8], "blocks": [0, 0, 1]}),
                   "--critic-hp", json.dumps({"features": [4, 8]})])
    assert rc == 0
    cfg = json.loads((out / "generator.json").read_text())
    assert cfg["tau"] in rec.TAUS and 0.0 <= cfg["val_dice"] <= 1.0
    g = build(cfg["architecture"], **cfg["hyperparameters"])
    g.load_state_dict(load_file(str(out / "generator.safetensors")))
    hist = json.loads((out / "history.json").read_text())
    assert hist[-1]["step"] == 3
    assert "step 3:" in (out / "train_log.txt").read_text()
    # the cache round-trips the geometry of the working grid
    cases = lidc.load_cache(tmp_path / "c.npz")
    assert cases[0]["hu"].spacing == lidc.WORK_SPACING and cases[0]["mask"].array.max() == 1
