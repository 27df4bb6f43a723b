"""Lung-nodule training adapter (MedSegAILib.tasks.lung_nodule.finetuning): samples, geometry, loss, prediction.

Real data: a LIDC crop (``MEDSEGAI_TEST_DATA``/lidc-nodule-vois, skipped when unset); synthetic: two spheres in an
oblique CT to check one sample per nodule and the LPS geometry of every window.
"""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from MedSegAILib.core.resample import resample_volume  # noqa: E402
from MedSegAILib.core.volume import Volume  # noqa: E402
from MedSegAILib.errors import InputError  # noqa: E402
from MedSegAILib.finetune.adapter import crop_or_pad  # noqa: E402
from MedSegAILib.metrics import dice  # noqa: E402

LR_CHECK = 1e-3
CROP = "LIDC-IDRI-0027_R_1"  # a solid 10.6 mm nodule (val split; shipped generator Dice 0.92 on its crop)


@pytest.fixture(autouse=True)
def _one_thread(one_torch_thread):
    """Every test here runs torch on one thread."""


@pytest.fixture(scope="module")
def spec():
    from MedSegAILib.zoo.registry import get_model_spec

    return get_model_spec("lung-nodule-lnhg")


@pytest.fixture(scope="module")
def adapter(spec):
    from MedSegAILib.tasks.registry import get_task

    return get_task("lung-nodule").training_adapter(spec)


@pytest.fixture(scope="module")
def crop(test_data):
    from MedSegAILib.core.io import read_volume

    root = test_data / "lidc-nodule-vois"
    if not (root / "image" / f"{CROP}.nii.gz").is_file():
        pytest.skip(f"{CROP} is not in {root}")
    return read_volume(root / "image" / f"{CROP}.nii.gz"), read_volume(root / "nodule_mask" / f"{CROP}.nii.gz")


def _window(sample) -> Volume:
    m = sample.meta
    return Volume(sample.y.astype(np.float32), tuple(m["spacing"]), tuple(m["origin"]), np.asarray(m["direction"]))


def _window_centre_lps(sample) -> np.ndarray:
    w = _window(sample)
    return w.index_to_lps((np.asarray(w.array.shape[::-1], float) - 1) / 2.0)[0]


def test_adapter_contract(adapter, spec):
    from MedSegAILib.tasks.lung_nodule.finetuning import LungGeneratorAdapter

    assert isinstance(adapter, LungGeneratorAdapter)
    assert adapter.network == "generator" and "generator" in spec.networks
    assert adapter.patch == (32, 48, 48) and adapter.classes == {1: 1}
    assert adapter.threshold == pytest.approx(float(spec.input["nodule_threshold"]))
    # the task writes one label value per nodule: every non-zero value is "nodule"
    assert adapter.labels_to_channels(np.array([0, 1, 2, 7])).tolist() == [0, 1, 1, 1]


def test_real_crop_sample_matches_mask_and_is_centred(adapter, crop):
    ct, mask = crop
    samples = adapter.prepare({"image": ct}, mask, CROP)
    assert len(samples) == 1
    s = samples[0]
    assert s.x.shape == (1, 44, 64, 64) and s.x.dtype == np.float32
    assert s.y.shape == (44, 64, 64) and s.y.dtype == np.int64 and set(np.unique(s.y)) == {0, 1}
    assert 0.0 <= s.x.min() and s.x.max() <= 1.5
    ref = np.asarray(mask.array) > 0
    # volume on the working grid within 10 % of the mask's volume on the CT grid
    v_ref = ref.sum() * mask.voxel_volume_mm3
    v_win = s.y.sum() * float(np.prod(s.meta["spacing"]))
    assert abs(v_win / v_ref - 1.0) < 0.10, (v_win, v_ref)
    # mapped back onto the CT grid, the window's mask is the original one
    back = resample_volume(_window(s), reference=mask.geometry(), interpolation="linear", default_value=0.0)
    assert dice(back.array >= 0.5, ref) > 0.9
    # the window is centred on the nodule: window centre = mask centroid (LPS), and so is the sample mask's centroid
    centroid = mask.index_to_lps(np.argwhere(ref).mean(0)[::-1])[0]
    assert np.allclose(_window_centre_lps(s), centroid, atol=1e-3)
    w = _window(s)
    assert np.linalg.norm(w.index_to_lps(np.argwhere(s.y > 0).mean(0)[::-1])[0] - centroid) < 1.0
    # the image is the CT on the same voxels: the nodule is denser than its surroundings (lung, air padding)
    assert s.x[0][s.y > 0].mean() > s.x[0][s.y == 0].mean() + 0.3


def test_two_nodules_give_two_centred_samples():
    from MedSegAILib.tasks.lung_nodule.finetuning import LungGeneratorAdapter

    adapter = LungGeneratorAdapter(None)  # no spec: the task's default threshold
    # an oblique CT (30 degrees about z, k axis head-first) of lung (-850 HU) with two 8 mm "nodules" (40 HU)
    a = np.deg2rad(30.0)
    direction = np.array([[np.cos(a), -np.sin(a), 0], [np.sin(a), np.cos(a), 0], [0, 0, 1.0]])
    shape = (40, 96, 96)
    spacing = (0.7, 0.7, 1.5)
    ct = Volume(np.full(shape, -850, np.int16), spacing, (-20.0, 35.0, -110.0), direction)
    kk, jj, ii = np.meshgrid(*[np.arange(n) for n in shape], indexing="ij")
    lab = np.zeros(shape, np.uint8)
    centres_kji = [(12.0, 30.0, 25.0), (27.0, 65.0, 70.0)]
    for value, (k, j, i) in enumerate(centres_kji, start=1):
        r2 = ((ii - i) * spacing[0]) ** 2 + ((jj - j) * spacing[1]) ** 2 + ((kk - k) * spacing[2]) ** 2
        ct.array[r2 <= 16.0] = 40
        lab[r2 <= 16.0] = value + 1  # label values 2 and 3: any non-zero value is a nodule
    labels = Volume(lab, spacing, ct.origin, direction)
    samples = adapter.prepare({"image": ct}, labels, "two")
    assert len(samples) == 2
    got = sorted(samples, key=lambda s: s.meta["centre_lps"][2])
    for s, (k, j, i) in zip(got, centres_kji):
        truth = ct.index_to_lps(np.array([i, j, k], float))[0]
        assert np.allclose(_window_centre_lps(s), truth, atol=0.05)
        # an 8 mm sphere: 268 mm^3, each window holds exactly its own nodule
        v = s.y.sum() * float(np.prod(s.meta["spacing"]))
        assert abs(v / (4 / 3 * np.pi * 64) - 1.0) < 0.15, v
        yy = s.y[s.y.shape[0] // 2]  # the centre slice is on the nodule
        assert yy[yy.shape[0] // 2, yy.shape[1] // 2] == 1
        # CT and mask use the same linear weights: mask >= 0.5 <=> at least half nodule (40 HU -> 1.04, lung 0.15)
        inside = s.x[0][s.y > 0]
        assert np.median(inside) > 1.0 and inside.min() > 0.5 * (1.04 + 0.15) - 1e-3


def test_mask_fragments_join_their_nodule_but_small_lone_nodules_count():
    from MedSegAILib.tasks.lung_nodule.finetuning import LungGeneratorAdapter

    spacing = (0.75, 0.75, 1.0)
    ct = Volume(np.full((40, 80, 80), -850, np.int16), spacing)
    lab = np.zeros(ct.array.shape, np.uint8)
    lab[16:24, 20:31, 20:31] = 1  # a nodule (~ 8 x 8 x 8 mm)
    lab[20, 36:38, 25:27] = 1  # a 4-voxel fragment 4 mm from it (reader noise of a consensus mask)
    lab[20, 60:63, 60:63] = 1  # a separate small nodule (9 voxels, 5 mm^3) 30 mm away: its own sample
    ct.array[lab > 0] = 30
    adapter = LungGeneratorAdapter(None)
    samples = adapter.prepare({"image": ct}, ct.with_array(lab), "fragments")
    assert len(samples) == 2
    assert samples[0].meta["volume_mm3"] == pytest.approx(8 * 11 * 11 * 0.5625)
    assert samples[1].meta["volume_mm3"] == pytest.approx(9 * 0.5625)
    lab[20, 36:38, 25:27] = 0
    alone = adapter.prepare({"image": ct}, ct.with_array(lab), "no-fragment")[0]
    assert samples[0].y.sum() > alone.y.sum()  # the fragment is in the first sample's window


def test_empty_or_misplaced_labels_are_refused(adapter):
    ct = Volume(np.full((20, 30, 30), -850, np.int16), (0.7, 0.7, 1.25))
    with pytest.raises(InputError, match="empty-case.*empty"):
        adapter.prepare({"image": ct}, ct.with_array(np.zeros((20, 30, 30), np.uint8)), "empty-case")
    with pytest.raises(InputError, match="bad-grid.*grid"):
        adapter.prepare({"image": ct}, Volume(np.ones((3, 4, 5), np.uint8)), "bad-grid")
    speck = np.zeros((20, 30, 30), np.uint8)
    speck[10, 15, 15] = 1  # 0.6 mm^3: less than half a working voxel after resampling
    with pytest.raises(InputError, match="specks"):
        adapter.prepare({"image": ct}, ct.with_array(speck), "speck")


def test_augment_keeps_image_and_mask_aligned(adapter):
    rng = np.random.default_rng(3)
    y = np.zeros((32, 48, 48), np.int64)
    y[10:20, 5:20, 30:44] = 1  # asymmetric: flips and turns move it
    x = np.where(y > 0, 1.04, 0.15).astype(np.float32)[None]
    moved = 0
    for _ in range(6):
        xa, ya = adapter.augment(x, y, rng)
        assert xa.shape == x.shape and xa.dtype == np.float32 and ya.dtype == np.int64
        assert ya.sum() == y.sum() and np.array_equal(xa[0] > 0.6, ya > 0)
        moved += int(not np.array_equal(ya, y))
    assert moved >= 3


@pytest.fixture(scope="module")
def generator(spec):
    from MedSegAILib.zoo.registry import load_model

    return load_model(spec).networks["generator"]


def test_prediction_on_real_crop(adapter, crop, generator):
    from MedSegAILib.finetune.engine import validation_dice

    ct, mask = crop
    s = adapter.prepare({"image": ct}, mask, CROP)[0]
    x, y = crop_or_pad(s.x, s.y, adapter.patch, None)  # the validation crop: centred
    net = generator.eval()
    with torch.no_grad():
        out = adapter.forward(net, torch.from_numpy(x)[None])
        plain = net(torch.from_numpy(x)[None])
        whole = adapter.forward(net, torch.from_numpy(s.x)[None])
    assert out.shape == (1, 2, 32, 48, 48)
    pred = adapter.predict(out)
    assert pred.shape == (1, 32, 48, 48) and pred.dtype == torch.int64
    assert torch.equal(pred, adapter.predict(plain))  # same mask from the packed and the plain output
    assert dice(pred[0].numpy() > 0, y > 0) > 0.5
    # the engine's validation scores the whole window: the generator runs on its centred patch (the task's box)
    inner = (slice(None), slice(None), slice(6, 38), slice(8, 56), slice(8, 56))
    assert whole.shape == (1, 2, 44, 64, 64) and torch.allclose(whole[inner], out, atol=1e-5)
    outside = torch.ones(44, 64, 64, dtype=torch.bool)
    outside[6:38, 8:56, 8:56] = False
    assert torch.all(whole[0, 0][outside] == -1.0)
    d_whole = dice(adapter.predict(whole)[0].numpy() > 0, s.y > 0)
    assert d_whole > 0.5
    assert validation_dice(adapter, net, [s], torch.device("cpu")) == pytest.approx(d_whole)


def test_one_training_step_on_real_crop(adapter, crop, generator):
    import copy

    ct, mask = crop
    s = adapter.prepare({"image": ct}, mask, CROP)[0]
    net = copy.deepcopy(generator).train()
    rng = np.random.default_rng(0)
    x, y = crop_or_pad(s.x, s.y, adapter.patch, None)
    xa, ya = adapter.augment(*crop_or_pad(s.x, s.y, adapter.patch, rng), rng)
    xb = torch.from_numpy(np.stack([x, xa]))
    yb = torch.from_numpy(np.stack([y, ya]))
    opt = torch.optim.SGD(net.parameters(), lr=LR_CHECK)
    loss = adapter.loss(adapter.forward(net, xb), yb)
    assert loss.ndim == 0 and torch.isfinite(loss) and 0.0 < float(loss.detach()) < 2.0
    opt.zero_grad()
    loss.backward()
    grads = [p.grad for p in net.parameters() if p.grad is not None]
    assert len(grads) == len(list(net.parameters())) and all(torch.isfinite(g).all() for g in grads)
    assert sum(float(g.abs().sum()) for g in grads) > 0
    opt.step()
    with torch.no_grad():
        after = float(adapter.loss(adapter.forward(net, xb), yb))
    assert after < float(loss.detach())  # a small plain gradient step goes downhill: the gradient is the loss's
