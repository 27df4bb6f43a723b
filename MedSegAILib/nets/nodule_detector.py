"""A small from-scratch Faster R-CNN for lung nodules on 2.5-D axial CT slices (LNHG false-positive branch).

Registered as ``"lnhg_faster_rcnn"``. Input: a batch of 3-channel float images at **1 mm/pixel** in-plane —
channel 0 is the CT slice at z - 2.5 mm, channel 1 the slice itself, channel 2 the slice at z + 2.5 mm — on the
working intensity scale ``x = (clip(HU, -1000, 500) + 1000) / 1000`` (air 0, water 1). The model normalises
with the fixed ``(x - 0.5) / 0.5`` and **never resizes** (:class:`NoResizeTransform`), so a box in its output is
in the input's pixel coordinates (pixel ``u`` covers ``[u, u + 1)``).

Architecture (~1.3 M parameters):

* backbone: 6 conv3x3 + BatchNorm + ReLU stages (widths 16-32-48-96-128, strides 2-2-2-2) and a two-level
  top-down feature pyramid (48 channels) at strides 4 and 8;
* RPN: anchors of 6 and 12 px on the stride-4 level, 24 and 48 px on the stride-8 level (nodules 3-35 mm at
  1 mm/px), aspect ratios 0.75 / 1 / 1.33 (6 anchors per position);
* RoIAlign 7x7 (all nodule-sized boxes pool from the stride-4 level), TwoMLPHead 256 units, 2 classes
  (0 background, 1 nodule).

Box regression loss: **GIoU on decoded boxes** (the LNHG code applied it to the encoded (dx, dy, dw, dh)
offsets, which is geometrically meaningless). ``L = sum_pos (1 - GIoU(decode(delta, ref), gt)) / N_sampled`` with
``GIoU = IoU - |C \\ (A u B)| / |C|`` (C: smallest enclosing box), ``ref`` the anchor (RPN; ``N_sampled`` = sampled
anchors of the batch, 256 per image) or the proposal (RoI head, deltas of the ground-truth class;
``N_sampled`` = sampled RoIs, 128 per image) — the same normalisation torchvision uses for its smooth-L1 term,
so only the distance changes. Classification losses are torchvision's (BCE for objectness, CE for the RoI head).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.models.detection import FasterRCNN
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.faster_rcnn import FastRCNNPredictor, TwoMLPHead
from torchvision.models.detection.roi_heads import RoIHeads
from torchvision.models.detection.rpn import RegionProposalNetwork, RPNHead
from torchvision.models.detection.transform import GeneralizedRCNNTransform
from torchvision.ops import MultiScaleRoIAlign, generalized_box_iou_loss

from MedSegAILib.nets import register

#: fixed normalisation of the working intensity scale: (x - MEAN) / STD, per channel
IMAGE_MEAN = (0.5, 0.5, 0.5)
IMAGE_STD = (0.5, 0.5, 0.5)


def giou_loss_decoded(deltas: torch.Tensor, ref_boxes: torch.Tensor, gt_boxes: torch.Tensor, box_coder: Any,
                      normaliser: int) -> torch.Tensor:
    """``sum_n (1 - GIoU(decode(deltas_n, ref_n), gt_n)) / normaliser`` for (N, 4) deltas, reference boxes
    (anchors or proposals, x0 y0 x1 y1) and matched ground-truth boxes; ``box_coder`` is the torchvision
    ``BoxCoder`` of the stage (its weights and dw/dh clamp apply). Zero (with a gradient path) when N = 0."""
    if deltas.shape[0] == 0:
        return deltas.sum() * 0.0
    boxes = box_coder.decode_single(deltas, ref_boxes)
    return generalized_box_iou_loss(boxes, gt_boxes, reduction="sum") / max(int(normaliser), 1)


class GIoURPN(RegionProposalNetwork):
    """RPN whose box loss is GIoU between decoded anchor boxes and their matched ground-truth boxes.

    Only :meth:`assign_targets_to_anchors` (to keep this batch's anchors and matched boxes, which the stock
    :meth:`compute_loss` never sees) and :meth:`compute_loss` are overridden; the objectness loss is unchanged."""

    def assign_targets_to_anchors(self, anchors, targets):  # type: ignore[override]
        labels, matched_gt_boxes = super().assign_targets_to_anchors(anchors, targets)
        self._giou_refs = (torch.cat(anchors, 0), torch.cat(matched_gt_boxes, 0))
        return labels, matched_gt_boxes

    def compute_loss(self, objectness, pred_bbox_deltas, labels, regression_targets):  # type: ignore[override]
        anchors, matched_gt = self._giou_refs
        self._giou_refs = None
        sampled_pos, sampled_neg = self.fg_bg_sampler(labels)
        pos = torch.where(torch.cat(sampled_pos, 0))[0]
        neg = torch.where(torch.cat(sampled_neg, 0))[0]
        sampled = torch.cat([pos, neg], 0)
        labels_all = torch.cat(labels, 0)
        objectness_loss = F.binary_cross_entropy_with_logits(objectness.flatten()[sampled], labels_all[sampled])
        box_loss = giou_loss_decoded(pred_bbox_deltas[pos], anchors[pos], matched_gt[pos], self.box_coder,
                                     sampled.numel())
        return objectness_loss, box_loss


class GIoURoIHeads(RoIHeads):
    """RoI heads whose box loss is GIoU between the decoded boxes (proposal + deltas of the ground-truth class)
    and the matched ground-truth boxes. Training forward is re-stated for the box branch only (no masks or
    keypoints); inference is torchvision's."""

    def forward(self, features, proposals, image_shapes, targets=None):  # type: ignore[override]
        if not self.training:
            return super().forward(features, proposals, image_shapes, targets)
        if targets is None:
            raise ValueError("targets are required in training mode")
        proposals, matched_idxs, labels, _ = self.select_training_samples(proposals, targets)
        matched_gt = [t["boxes"][m.clamp(min=0)] if t["boxes"].numel() else torch.zeros_like(p)
                      for t, m, p in zip(targets, matched_idxs, proposals)]
        feats = self.box_head(self.box_roi_pool(features, proposals, image_shapes))
        class_logits, box_regression = self.box_predictor(feats)
        labels_all = torch.cat(labels, 0)
        loss_cls = F.cross_entropy(class_logits, labels_all)
        pos = torch.where(labels_all > 0)[0]
        deltas = box_regression.reshape(labels_all.numel(), -1, 4)[pos, labels_all[pos]]
        loss_box = giou_loss_decoded(deltas, torch.cat(proposals, 0)[pos], torch.cat(matched_gt, 0)[pos],
                                     self.box_coder, labels_all.numel())
        return [], {"loss_classifier": loss_cls, "loss_box_reg": loss_box}


class NoResizeTransform(GeneralizedRCNNTransform):
    """torchvision's batching/normalising transform with the resize step removed: images are already at the
    model's 1 mm/pixel scale, so boxes come back in input pixel coordinates (images are only zero-padded at the
    bottom/right to a multiple of 32, which does not move coordinates)."""

    def __init__(self, image_mean=IMAGE_MEAN, image_std=IMAGE_STD):
        super().__init__(min_size=1, max_size=100000, image_mean=list(image_mean), image_std=list(image_std))

    def resize(self, image, target=None):  # type: ignore[override]
        return image, target


def _cbr(cin: int, cout: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


class TinyFPNBackbone(nn.Module):
    """Conv backbone with a 2-level feature pyramid: returns ``{"0": stride-4, "1": stride-8}`` maps with
    ``out_channels`` channels each."""

    def __init__(self, in_channels: int = 3, widths: tuple[int, ...] = (16, 32, 48, 96, 128), out_channels: int = 48):
        super().__init__()
        w0, w1, w2, w3, w4 = widths
        self.stem = nn.Sequential(_cbr(in_channels, w0, 2), _cbr(w0, w1, 2), _cbr(w1, w1))   # stride 4
        self.c8 = nn.Sequential(_cbr(w1, w2, 2), _cbr(w2, w2), _cbr(w2, w3))                # stride 8
        self.c16 = nn.Sequential(_cbr(w3, w4, 2), _cbr(w4, w4))                              # stride 16
        self.lat4, self.lat8, self.lat16 = (nn.Conv2d(c, out_channels, 1) for c in (w1, w3, w4))
        self.smooth8 = _cbr(out_channels, out_channels)  # (the stride-4 level is smoothed by the RPN's conv)
        self.out_channels = out_channels

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        f4 = self.stem(x)
        f8 = self.c8(f4)
        f16 = self.c16(f8)
        p8 = self.lat8(f8) + F.interpolate(self.lat16(f16), size=f8.shape[-2:], mode="nearest")
        p4 = self.lat4(f4) + F.interpolate(p8, size=f4.shape[-2:], mode="nearest")
        return {"0": p4, "1": self.smooth8(p8)}


@register("lnhg_faster_rcnn")
def build_lnhg_faster_rcnn(in_channels: int = 3, widths: tuple[int, ...] = (16, 32, 48, 96, 128),
                           fpn_channels: int = 48, anchor_sizes: tuple[tuple[int, ...], ...] = ((6, 12), (24, 48)),
                           aspect_ratios: tuple[float, ...] = (0.75, 1.0, 1.33), mlp_units: int = 256,
                           box_score_thresh: float = 0.01, box_nms_thresh: float = 0.3,
                           detections_per_img: int = 50, rpn_post_nms_test: int = 100,
                           num_classes: int = 2) -> FasterRCNN:
    """Build the detector (see the module docstring). ``anchor_sizes`` in pixels (= mm), one tuple per pyramid
    level; ``box_score_thresh`` is deliberately low (the task applies its own threshold)."""
    backbone = TinyFPNBackbone(in_channels, tuple(widths), fpn_channels)
    sizes = tuple(tuple(int(s) for s in lvl) for lvl in anchor_sizes)
    anchors = AnchorGenerator(sizes=sizes, aspect_ratios=(tuple(aspect_ratios),) * len(sizes))
    n_anchor = anchors.num_anchors_per_location()[0]
    rpn = GIoURPN(anchors, RPNHead(fpn_channels, n_anchor), fg_iou_thresh=0.7, bg_iou_thresh=0.3,
                  batch_size_per_image=256, positive_fraction=0.5,
                  pre_nms_top_n={"training": 1000, "testing": 500},
                  post_nms_top_n={"training": 500, "testing": int(rpn_post_nms_test)}, nms_thresh=0.7)
    roi_pool = MultiScaleRoIAlign(featmap_names=["0", "1"], output_size=7, sampling_ratio=2)
    head = TwoMLPHead(fpn_channels * 49, mlp_units)
    predictor = FastRCNNPredictor(mlp_units, num_classes)
    roi_heads = GIoURoIHeads(roi_pool, head, predictor,
                             fg_iou_thresh=0.5, bg_iou_thresh=0.5, batch_size_per_image=128, positive_fraction=0.5,
                             bbox_reg_weights=None, score_thresh=box_score_thresh, nms_thresh=box_nms_thresh,
                             detections_per_img=detections_per_img)
    # FasterRCNN builds default RPN/RoI heads; they are replaced by the GIoU versions above
    model = FasterRCNN(backbone, num_classes=None, rpn_anchor_generator=anchors, rpn_head=rpn.head,
                       box_roi_pool=roi_pool, box_head=head, box_predictor=predictor)
    model.rpn = rpn
    model.roi_heads = roi_heads
    model.transform = NoResizeTransform()
    return model


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
