"""Lung-nodule detector: GIoU on decoded boxes, no-resize transform, training smoke, slice inference geometry,
3-D grouping (nets/nodule_detector.py, tasks/lung_nodule/detection.py)."""

import math

import numpy as np
import pytest
import torch

from MedSegAILib.core.volume import Volume
from MedSegAILib.errors import InputError
from MedSegAILib.nets import build
from MedSegAILib.nets.nodule_detector import NoResizeTransform, giou_loss_decoded
from MedSegAILib.tasks.lung_nodule.detection import (Detection2D, context_stack, detect_nodules,
                                                     group_detections_3d)

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return build("lnhg_faster_rcnn")


def _rpn_loss(model, anchors, gt, deltas):
    rpn = model.rpn
    rpn._giou_refs = (anchors, gt)
    labels = [torch.ones(len(anchors))]
    return rpn.compute_loss(torch.zeros(len(anchors), 1), deltas, labels, [torch.zeros_like(deltas)])[1]


def test_rpn_giou_is_on_decoded_boxes(model):
    coder = model.rpn.box_coder
    anchors = torch.tensor([[10.0, 10.0, 20.0, 20.0], [100.0, 50.0, 200.0, 130.0]])
    gt = torch.tensor([[12.0, 9.0, 23.0, 21.0], [90.0, 60.0, 210.0, 120.0]])
    exact = coder.encode_single(gt, anchors)
    assert _rpn_loss(model, anchors, gt, exact).item() == pytest.approx(0.0, abs=1e-5)
    # deltas (0, 0, log 2, log 2): the decoded box is the anchor doubled about its centre -> IoU = GIoU = 1/4,
    # loss 0.75 per positive, whatever the anchor's size (both positives count, normaliser = 2 sampled anchors)
    d = torch.tensor([[0.0, 0.0, math.log(2), math.log(2)]] * 2)
    assert _rpn_loss(model, anchors, anchors.clone(), d).item() == pytest.approx(0.75, abs=1e-4)
    # small offsets, big geometric error: dw = dh = log(3) is "0.1 away" from log(2.7)-ish encodings but the loss
    # follows the boxes: 3x box around a 1x target -> GIoU = 1/9
    d3 = torch.tensor([[0.0, 0.0, math.log(3), math.log(3)]] * 2)
    assert _rpn_loss(model, anchors, anchors.clone(), d3).item() == pytest.approx(1 - 1 / 9, abs=1e-4)


def test_giou_loss_decoded_translation():
    from torchvision.models.detection._utils import BoxCoder

    coder = BoxCoder((1.0, 1.0, 1.0, 1.0))
    ref = torch.tensor([[0.0, 0.0, 10.0, 10.0]])
    # shift by one box width: disjoint boxes, enclosing box 20x10, IoU 0 -> GIoU = -0/.. - (200-200)/200 = 0 -> loss 1
    loss = giou_loss_decoded(torch.tensor([[1.0, 0.0, 0.0, 0.0]]), ref, ref.clone(), coder, 1)
    assert loss.item() == pytest.approx(1.0, abs=1e-5)
    # shift by two widths: enclosing 30x10, union 200 -> GIoU = -(300-200)/300 -> loss 4/3
    loss = giou_loss_decoded(torch.tensor([[2.0, 0.0, 0.0, 0.0]]), ref, ref.clone(), coder, 1)
    assert loss.item() == pytest.approx(4 / 3, abs=1e-5)


def test_roi_head_giou_on_decoded_boxes(model):
    heads = model.roi_heads
    heads.train()
    pred = heads.box_predictor.bbox_pred
    feats = {"0": torch.zeros(1, model.backbone.out_channels, 32, 32), "1": torch.zeros(1, model.backbone.out_channels, 16, 16)}
    gt = torch.tensor([[40.0, 40.0, 60.0, 60.0]])
    targets = [{"boxes": gt, "labels": torch.tensor([1])}]
    proposals = [torch.tensor([[0.0, 0.0, 10.0, 10.0], [40.0, 40.0, 60.0, 60.0]])]
    saved = (pred.weight.detach().clone(), pred.bias.detach().clone())
    try:
        with torch.no_grad():
            pred.weight.zero_()
            pred.bias.zero_()
        torch.manual_seed(0)
        _, losses = heads(feats, proposals, [(128, 128)], targets)
        assert losses["loss_box_reg"].item() == pytest.approx(0.0, abs=1e-6)
        with torch.no_grad():  # class-1 deltas (0, 0, 5 log 2, 5 log 2) with weights (10, 10, 5, 5): box doubled
            pred.bias[4:8] = torch.tensor([0.0, 0.0, 5 * math.log(2), 5 * math.log(2)])
        _, losses = heads(feats, proposals, [(128, 128)], targets)
        # positives: the GT-equal proposal and the appended GT (2), negative: the far box -> 0.75 * 2 / 3
        assert losses["loss_box_reg"].item() == pytest.approx(0.5, abs=1e-4)
        assert torch.isfinite(losses["loss_classifier"])
    finally:
        with torch.no_grad():
            pred.weight.copy_(saved[0])
            pred.bias.copy_(saved[1])


def test_transform_does_not_resize():
    tr = NoResizeTransform().eval()
    img = torch.full((3, 100, 130), 0.5)
    img[:, 10, 20] = 1.5
    il, _ = tr([img], [{"boxes": torch.tensor([[5.0, 6.0, 30.0, 40.0]]), "labels": torch.tensor([1])}])
    assert il.image_sizes == [(100, 130)]
    assert il.tensors.shape[-2:] == (128, 160)  # zero padding to /32 only, bottom/right
    assert il.tensors[0, 0, 10, 20].item() == pytest.approx(2.0)  # (1.5 - 0.5) / 0.5
    assert il.tensors[0, 0, 50, 50].item() == pytest.approx(0.0)
    tr.train()
    _, tg = tr([img], [{"boxes": torch.tensor([[5.0, 6.0, 30.0, 40.0]]), "labels": torch.tensor([1])}])
    assert torch.equal(tg[0]["boxes"], torch.tensor([[5.0, 6.0, 30.0, 40.0]]))


def _disc_image(rng, size=96):
    img = np.full((3, size, size), 0.15, np.float32) + rng.normal(0, 0.02, (3, size, size)).astype(np.float32)
    r = rng.uniform(4, 10)
    cy, cx = rng.uniform(r + 2, size - r - 2, 2)
    yy, xx = np.mgrid[:size, :size]
    img[:, (yy - cy) ** 2 + (xx - cx) ** 2 <= r * r] = 1.0
    return torch.from_numpy(img), torch.tensor([[cx - r, cy - r, cx + r, cy + r]], dtype=torch.float32)


def test_training_smoke():
    torch.manual_seed(1)
    rng = np.random.default_rng(1)
    m = build("lnhg_faster_rcnn")
    m.train()
    opt = torch.optim.AdamW(m.parameters(), lr=1e-3)
    data = [_disc_image(rng) for _ in range(4)]
    imgs = [d[0] for d in data]
    tg = [{"boxes": d[1], "labels": torch.tensor([1])} for d in data]
    totals = []
    for _ in range(3):
        losses = m(imgs, tg)
        assert set(losses) == {"loss_classifier", "loss_box_reg", "loss_objectness", "loss_rpn_box_reg"}
        loss = sum(losses.values())
        assert torch.isfinite(loss)
        assert losses["loss_rpn_box_reg"].item() > 0  # positives exist, GIoU of untrained boxes is not 0
        opt.zero_grad()
        loss.backward()
        opt.step()
        totals.append(loss.item())
    assert totals[-1] < totals[0]
    m.eval()
    with torch.no_grad():
        out = m([imgs[0]])
    assert out[0]["boxes"].shape[1] == 4


class _BrightBlobModel:
    """Stand-in detector: one box around the channel-1 pixels brighter than 0.8 (input pixel coordinates);
    records the inputs it saw."""

    def __init__(self):
        self.training = False
        self.seen = []

    def eval(self):
        return self

    def train(self, mode=True):
        self.training = mode
        return self

    def __call__(self, images):
        out = []
        for im in images:
            self.seen.append(im)
            yy, xx = np.nonzero(im[1].numpy() > 0.8)
            if len(yy):
                b = torch.tensor([[xx.min(), yy.min(), xx.max() + 1, yy.max() + 1]], dtype=torch.float32)
                out.append({"boxes": b, "scores": torch.tensor([0.9]), "labels": torch.tensor([1])})
            else:
                out.append({"boxes": torch.zeros(0, 4), "scores": torch.zeros(0), "labels": torch.zeros(0, dtype=torch.int64)})
        return out


@pytest.mark.parametrize("direction", [np.eye(3), np.diag([-1.0, -1.0, 1.0]),
                                       np.array([[0.0, 1.0, 0.0], [-1.0, 0.0, 0.0], [0.0, 0.0, -1.0]])])
def test_detect_nodules_sphere_lps(direction):
    sp = (0.7, 0.8, 2.0)
    shape = (30, 90, 100)  # k, j, i
    ct = Volume(np.full(shape, -850, np.int16), sp, (12.0, -30.0, 50.0), direction)
    centre = np.array([55.3, 40.6, 14.0])  # i, j, k
    kk, jj, ii = np.meshgrid(*[np.arange(n) for n in shape], indexing="ij")
    d2 = ((ii - centre[0]) * sp[0]) ** 2 + ((jj - centre[1]) * sp[1]) ** 2 + ((kk - centre[2]) * sp[2]) ** 2
    ct.array[d2 <= 6.0 ** 2] = 40
    lung = ct.with_array(np.zeros(shape, np.uint8))
    lung.array[3:27, 10:80, 10:90] = 1
    fake = _BrightBlobModel()
    dets = detect_nodules(fake, ct, lung, score_min=0.5)
    ks = sorted({d.k for d in dets})
    assert ks[0] >= 11 and ks[-1] <= 17 and 14 in ks
    assert len(fake.seen) == 24  # one image per lung slice
    x = fake.seen[0]
    # lung box i 10..89 + 15 px margin -> clipped to 0..99 (70 mm); j 10..79 + 13 px -> 0..89 (72 mm): 1 mm/px
    assert tuple(x.shape) == (3, 72, 70)
    centre_det = [d for d in dets if d.k == 14][0]
    want = ct.index_to_lps(centre)[0]
    assert np.allclose(centre_det.center_lps, want, atol=1.0)  # within 1 mm (1 mm pixels)
    assert centre_det.size_mm[0] == pytest.approx(12.0, abs=2.0)
    tracks = group_detections_3d(dets)
    assert len(tracks) == 1 and tracks[0].n_slices == len(dets)
    assert np.allclose(tracks[0].center_lps, want, atol=1.5)


def test_context_channels_and_refusal():
    work = np.arange(5, dtype=np.float32)[:, None, None] * np.ones((5, 2, 2), np.float32)
    st = context_stack(work, 2, 2.0)  # +-2.5 mm at 2 mm spacing = +-1.25 slices
    assert st[:, 0, 0] == pytest.approx([0.75, 2.0, 3.25])
    st = context_stack(work, 0, 2.5)
    assert st[:, 0, 0] == pytest.approx([0.0, 0.0, 1.0])  # clamped at the first slice
    sag = np.array([[0.0, 0.0, 1.0], [1.0, 0.0, 0.0], [0.0, 1.0, 0.0]])  # k axis along L
    ct = Volume(np.zeros((4, 5, 6), np.int16), direction=sag)
    with pytest.raises(InputError, match="axial"):
        detect_nodules(_BrightBlobModel(), ct, ct.with_array(np.ones((4, 5, 6), np.uint8)))


def test_group_detections_3d():
    def det(k, box, s):
        return Detection2D(k, box, s, (box[0], box[1], float(k)))

    dets = [det(3, (10, 10, 20, 20), 0.5), det(4, (11, 10, 21, 20), 0.9), det(5, (12, 11, 21, 21), 0.4),
            det(4, (50, 50, 60, 60), 0.3),  # separate track (no overlap)
            det(7, (12, 11, 21, 21), 0.8),  # gap of 2 slices: new track with max_gap=1
            det(5, (30, 10, 40, 20), 0.2)]  # IoU 0 with the first track
    tracks = group_detections_3d(dets)
    assert [(t.k_range, t.n_slices) for t in tracks] == [((3, 5), 3), ((7, 7), 1), ((4, 4), 1), ((5, 5), 1)]
    assert tracks[0].score == pytest.approx(0.9)
    assert len(group_detections_3d(dets, max_gap=2)) == 3  # slice 7 joins the first track
    assert len(group_detections_3d(dets, iou_min=0.95)) == 6
