"""The parotid networks (residual + layer-norm 3-D U-Net, CBAM 3-D U-Net: options of the one generic UNet) and the
shared segmentation losses (soft Dice, focal, hybrid), including the carpal / mpi-myocardium recipes' use of them."""

from __future__ import annotations

import math

import numpy as np
import pytest

torch = pytest.importorskip("torch")
import torch.nn.functional as F  # noqa: E402

from MedSegAILib import nets  # noqa: E402
from MedSegAILib.metrics import dice  # noqa: E402
from MedSegAILib.nets.unet import (  # noqa: E402
    CBAM, ChannelAttention, ConvBlock, ResidualBlock, SpatialAttention, UNet, cbam_parameter_count, make_norm,
    unet_parameter_count,
)
from MedSegAILib.train.losses import HybridDiceFocalLoss, focal_loss, soft_dice_loss  # noqa: E402


@pytest.fixture(autouse=True)
def _one_thread():
    """One intra-op thread: these tiny tensors gain nothing from two, and OpenMP threads that spin against another
    job on a shared 2-core machine make the overfit test several times slower."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def _n_params(net: torch.nn.Module) -> int:
    return sum(p.numel() for p in net.parameters())


# ---------------------------------------------------------------------------------------------- networks
@pytest.mark.parametrize(
    "arch, expected",
    [
        # default builders: features 8-128, 4 levels, 1 -> 3 channels (the counts documented in unet.py)
        ("resunet3d", 1_435_027),
        ("cbam_unet3d", 1_426_170),
    ],
)
def test_default_builders_shapes_and_parameter_counts(arch, expected):
    net = nets.build(arch)
    assert arch in nets.available()
    assert net.in_channels == 1 and net.out_channels == 3 and net.levels == 4 and net.features == [8, 16, 32, 64, 128]
    assert _n_params(net) == expected
    kw = {"block": "residual"} if arch == "resunet3d" else {"attention": "cbam"}
    assert unet_parameter_count(3, 1, 3, [8, 16, 32, 64, 128], 4, **kw) == expected
    with torch.no_grad():
        y = net.eval()(torch.zeros(1, 1, 16, 16, 32))
    assert tuple(y.shape) == (1, 3, 16, 16, 32)


def test_hand_counted_small_networks():
    # residual, features [2, 4], 1 level, 1 -> 3 channels; every block changes channels so each has a projection:
    # enc0 27*1*2+27*2*2+4*2 = 170 + proj 1*2+2*2 = 6; enc1 27*2*4+27*4*4+4*4 = 664 + proj 2*4+2*4 = 16;
    # up 8*4*2+2 = 66; dec 27*4*2+27*2*2+4*2 = 332 + proj 4*2+2*2 = 12; head 2*3+3 = 9  -> 1275
    res = UNet(3, 1, 3, [2, 4], 1, norm="layer", block="residual")
    assert _n_params(res) == 1275
    # plain + CBAM (r 8, hidden max(4, C // 8) = 4, kernel 7): plain 170 + 664 + 66 + 332 + 9 = 1241;
    # cbam(C) = 2*C*4 + 4 + C + 2*343 + 1 = 9 C + 691 -> C = 2, 4, 2: 709 + 727 + 709 = 2145  -> 3386
    att = UNet(3, 1, 3, [2, 4], 1, norm="instance", attention="cbam")
    assert _n_params(att) == 3386
    assert cbam_parameter_count(4) == 727 and cbam_parameter_count(64, reduction=8) == 2 * 64 * 8 + 8 + 64 + 687
    assert sum(isinstance(m, CBAM) for m in att.modules()) == 3  # after every encoder and decoder block


@pytest.mark.parametrize("dims", [2, 3])
@pytest.mark.parametrize("block", ["plain", "residual"])
@pytest.mark.parametrize("attention", ["none", "cbam"])
def test_parameter_formula_all_variants(dims, block, attention):
    kw = dict(in_channels=2, out_channels=3, features=[3, 6, 6, 20], levels=3)
    cb = dict(cbam_reduction=2, cbam_min_hidden=3, cbam_kernel=5)
    for norm in ("batch", "instance", "layer"):
        net = UNet(dims, norm=norm, block=block, attention=attention, **kw, **cb)
        assert _n_params(net) == unet_parameter_count(dims, block=block, attention=attention, **kw, **cb)


def test_plain_options_keep_the_original_layout():
    a = UNet(3, 1, 3, [2, 4, 8], 2)
    b = UNet(3, 1, 3, [2, 4, 8], 2, block="plain", attention="none")
    assert list(a.state_dict()) == list(b.state_dict())
    assert all(isinstance(m, ConvBlock) for m in list(b.encoders) + list(b.decoders))
    with pytest.raises(ValueError, match="block must be"):
        UNet(3, block="dense")
    with pytest.raises(ValueError, match="attention must be"):
        UNet(3, attention="se")
    with pytest.raises(ValueError, match="norm must be 'batch', 'instance' or 'layer'"):
        UNet(3, norm="group")
    with pytest.raises(ValueError, match="odd"):
        UNet(3, attention="cbam", cbam_kernel=4)


def test_residual_projection_only_when_channels_change():
    assert ResidualBlock(4, 4).proj is None
    assert isinstance(ResidualBlock(4, 8).proj, torch.nn.Sequential)
    net = UNet(3, 4, 2, [4, 4, 8], 2, norm="layer", block="residual")
    has_proj = [b.proj is not None for b in list(net.encoders) + list(net.decoders)]
    # encoders 4->4, 4->4, 4->8; decoders 2*4 -> 4 (skip concatenated with the up-sampled features) at both levels
    assert has_proj == [False, False, True, True, True]
    # the shortcut really is the identity / the projection: with the residual branch switched off (second norm's
    # affine map zeroed) the block returns act(x), resp. act(proj(x))
    torch.manual_seed(0)
    x = torch.randn(2, 4, 4, 6, 8)
    same, wider = ResidualBlock(4, 4, act="leaky_relu"), ResidualBlock(4, 8, act="leaky_relu")
    with torch.no_grad():
        for blk in (same, wider):
            blk.norm2.weight.zero_()
            blk.norm2.bias.zero_()
        torch.testing.assert_close(same(x), F.leaky_relu(x, 0.01))
        torch.testing.assert_close(wider(x), F.leaky_relu(wider.proj(x), 0.01))
        # and with the branch on, the output differs from the shortcut alone (the test can fail)
        same.norm2.weight.fill_(1.0)
        assert not torch.allclose(same(x), F.leaky_relu(x, 0.01), atol=1e-3)


def test_cbam_weights_in_unit_interval_and_formula():
    torch.manual_seed(1)
    x = torch.randn(2, 16, 6, 8, 10) * 3
    cbam = CBAM(16, reduction=8, min_hidden=4, kernel_size=7)
    assert cbam.channel.mlp[0].out_features == 4  # max(4, 16 // 8)
    with torch.no_grad():
        mc = cbam.channel.weights(x)
        assert tuple(mc.shape) == (2, 16, 1, 1, 1)
        assert float(mc.min()) > 0 and float(mc.max()) < 1
        assert not torch.allclose(mc[0], mc[1])  # input dependent, per sample
        xc = x * mc
        ms = cbam.spatial.weights(xc)
        assert tuple(ms.shape) == (2, 1, 6, 8, 10)
        assert float(ms.min()) > 0 and float(ms.max()) < 1
        # spatial weights by hand: sigmoid(conv([channel mean, channel max]))
        pooled = torch.cat([xc.mean(1, keepdim=True), xc.amax(1, keepdim=True)], 1)
        torch.testing.assert_close(ms, torch.sigmoid(F.conv3d(pooled, cbam.spatial.conv.weight,
                                                              cbam.spatial.conv.bias, padding=3)))
        # channel weights by hand: sigmoid(MLP(avg) + MLP(max))
        mlp = cbam.channel.mlp
        ref = torch.sigmoid(mlp(x.mean((2, 3, 4))) + mlp(x.amax((2, 3, 4))))
        torch.testing.assert_close(mc.flatten(1), ref)
        y = cbam(x)
        torch.testing.assert_close(y, xc * ms)
        assert not torch.allclose(y, x, atol=1e-2)
    assert SpatialAttention(3, spatial_dims=2).conv.weight.shape == (1, 2, 3, 3)
    assert ChannelAttention(100, reduction=8).mlp[0].out_features == 12


def test_cbam_changes_the_network_output():
    torch.manual_seed(2)
    net = nets.build("cbam_unet3d", features=[4, 8, 16], levels=2).eval()
    x = torch.randn(1, 1, 8, 16, 16)
    with torch.no_grad():
        y = net(x)
        for seq in list(net.encoders) + list(net.decoders):
            seq.cbam = torch.nn.Identity()
        y0 = net(x)
    assert not torch.allclose(y, y0, atol=1e-3)


@pytest.mark.parametrize("arch", ["resunet3d", "cbam_unet3d"])
def test_batch_one_odd_sizes_train_and_eval(arch):
    torch.manual_seed(3)
    net = nets.build(arch)  # default widths, 4 levels: sizes must be multiples of 16
    x = torch.randn(1, 1, 16, 16, 48)  # bottleneck 1 x 1 x 3
    net.train()
    y = net(x)
    assert tuple(y.shape) == (1, 3, 16, 16, 48)
    y.square().mean().backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in net.parameters())
    with torch.no_grad():
        assert tuple(net.eval()(x).shape) == (1, 3, 16, 16, 48)
    with pytest.raises(ValueError, match=f"{arch} with 4 levels needs spatial sizes divisible by 16"):
        net(torch.zeros(1, 1, 16, 40, 80))


def test_layer_norm_is_groupnorm_over_channels_and_voxels():
    norm = make_norm("layer", 6, 3)
    assert isinstance(norm, torch.nn.GroupNorm) and norm.num_groups == 1
    scale, offset = torch.tensor([1.0, 5.0, 0.1]).view(3, 1, 1, 1, 1), torch.arange(6.0).view(1, 6, 1, 1, 1)
    x = torch.randn(3, 6, 4, 5, 2) * scale + offset
    with torch.no_grad():
        y = norm(x)
    flat = y.flatten(1)
    torch.testing.assert_close(flat.mean(1), torch.zeros(3), atol=1e-5, rtol=0)
    torch.testing.assert_close(flat.var(1, unbiased=False), torch.ones(3), atol=1e-3, rtol=0)
    # but the channels are not normalised one by one (that would be instance norm): their offsets survive
    assert float(y[:, 0].mean()) < -0.5 and float(y[:, 5].mean()) > 0.5


@pytest.mark.parametrize("arch", ["resunet3d", "cbam_unet3d", "unet3d"])
def test_output_independent_of_batch_composition(arch):
    """A sample gives the same output alone and inside a batch, in train and eval mode -- except with batch norm
    (``unet3d``), whose training-mode statistics mix the batch (the check can fail)."""
    torch.manual_seed(4)
    net = nets.build(arch, features=[4, 8, 16], levels=2)
    x = torch.randn(3, 1, 8, 16, 16) * torch.tensor([1.0, 4.0, 0.2]).view(3, 1, 1, 1, 1)
    for mode in ("train", "eval"):
        getattr(net, mode)()
        with torch.no_grad():
            batch = net(x)
            alone = net(x[1:2])
        same = torch.allclose(batch[1:2], alone, atol=1e-5, rtol=1e-4)
        assert same == (arch != "unet3d" or mode == "eval"), (arch, mode)


# ---------------------------------------------------------------------------------------------- losses
def _tiny() -> tuple[torch.Tensor, torch.Tensor]:
    """4 voxels (1, 3, 1, 4) with equal logits (p = 1/3 everywhere) and labels [0, 1, 1, 2]."""
    return torch.zeros(1, 3, 1, 4, requires_grad=True), torch.tensor([[[0, 1, 1, 2]]])


def test_soft_dice_hand_values():
    logits, target = _tiny()
    eps = 1e-5
    # class 1: I = 2/3, P = 4/3, Y = 2; class 2: I = 1/3, P = 4/3, Y = 1
    d1 = (4 / 3 + eps) / (4 / 3 + 2 + eps)
    d2 = (2 / 3 + eps) / (4 / 3 + 1 + eps)
    assert float(soft_dice_loss(logits, target).detach()) == pytest.approx(1 - (d1 + d2) / 2, rel=1e-6)
    one = soft_dice_loss(logits, target, classes=(1,), eps=1.0).item()
    assert one == pytest.approx(1 - (4 / 3 + 1) / (10 / 3 + 1))
    # a one-hot float target gives the same as the label map
    onehot = F.one_hot(target, 3).permute(0, 3, 1, 2).float()
    with torch.no_grad():
        assert float(soft_dice_loss(logits, onehot)) == pytest.approx(float(soft_dice_loss(logits, target)), rel=1e-6)


def test_soft_dice_perfect_prediction_is_zero():
    target = torch.randint(0, 3, (2, 4, 5, 6))
    logits = 30.0 * F.one_hot(target, 3).permute(0, 4, 1, 2, 3).float()
    assert float(soft_dice_loss(logits, target)) < 1e-6
    assert float(soft_dice_loss(logits, target, batch_dice=False)) < 1e-6
    wrong = 30.0 * F.one_hot((target + 1) % 3, 3).permute(0, 4, 1, 2, 3).float()
    assert float(soft_dice_loss(wrong, target)) > 0.99


def test_soft_dice_batch_vs_per_sample():
    torch.manual_seed(5)
    logits = torch.randn(2, 3, 4, 4, 4)
    target = torch.randint(0, 3, (2, 4, 4, 4))
    per_sample = soft_dice_loss(logits, target, batch_dice=False)
    each = [soft_dice_loss(logits[i:i + 1], target[i:i + 1]) for i in range(2)]
    assert float(per_sample) == pytest.approx(float(sum(each)) / 2, rel=1e-6)
    pooled = soft_dice_loss(logits, target, batch_dice=True)
    assert abs(float(pooled) - float(per_sample)) > 1e-4  # they are different quantities


def test_soft_dice_empty_class():
    torch.manual_seed(6)
    logits = torch.randn(1, 3, 8, 8, 8, requires_grad=True)
    target = torch.zeros(1, 8, 8, 8, dtype=torch.long)
    target[0, 2:5, 2:5, 2:5] = 1  # gland 2 absent from this patch
    # default: the absent class is left out of the mean -> the Dice loss of class 1 alone
    loss = soft_dice_loss(logits, target)
    assert loss.item() == pytest.approx(soft_dice_loss(logits, target, classes=(1,)).item(), rel=1e-6)
    loss.backward()
    assert torch.isfinite(logits.grad).all() and float(logits.grad.abs().max()) < 1.0
    # kept ("include"): its term is eps / (sum p_2 + eps) ~ 0, i.e. a constant ~1 halving the other term
    incl = soft_dice_loss(logits, target, empty="include")
    assert incl.item() == pytest.approx((1 + loss.item()) / 2, abs=1e-6)
    # nothing present at all: exactly 0, still differentiable (zero gradient), no NaN
    logits.grad = None
    none = soft_dice_loss(logits, torch.zeros_like(target))
    assert none.item() == 0.0 and none.requires_grad
    none.backward()
    assert float(logits.grad.abs().max()) == 0.0
    # a confident "nothing" prediction of an absent class: finite, bounded gradient even with eps tiny
    sure = torch.full((1, 3, 4, 4, 4), -60.0)
    sure[:, 0] = 60.0
    sure.requires_grad_(True)
    soft_dice_loss(sure, torch.zeros(1, 4, 4, 4, dtype=torch.long), empty="include").backward()
    assert torch.isfinite(sure.grad).all() and float(sure.grad.abs().sum()) <= 0.25 + 1e-6


def test_soft_dice_input_errors():
    logits = torch.zeros(1, 3, 4, 4)
    with pytest.raises(ValueError, match="out of range"):
        soft_dice_loss(logits, torch.zeros(1, 4, 4, dtype=torch.long), classes=(1, 3))
    with pytest.raises(ValueError, match="labels must lie"):
        soft_dice_loss(logits, torch.full((1, 4, 4), 3))
    with pytest.raises(ValueError, match="label map"):
        soft_dice_loss(logits, torch.zeros(1, 4, 5, dtype=torch.long))
    with pytest.raises(ValueError, match="eps"):
        soft_dice_loss(logits, torch.zeros(1, 4, 4, dtype=torch.long), eps=0.0)


def test_focal_hand_values_and_cross_entropy():
    logits, target = _tiny()
    # p_y = 1/3 everywhere: FL_v = alpha_y * (2/3)^gamma * ln 3
    a = (0.3, 0.35, 0.35)
    expected = np.mean([a[c] for c in (0, 1, 1, 2)]) * (2 / 3) * math.log(3)
    assert focal_loss(logits, target, gamma=1.0, alpha=a).item() == pytest.approx(expected, rel=1e-6)
    assert focal_loss(logits, target, gamma=2.0, alpha=None).item() == pytest.approx((2 / 3) ** 2 * math.log(3))
    torch.manual_seed(7)
    lg = torch.randn(2, 3, 5, 6, 7) * 4
    tg = torch.randint(0, 3, (2, 5, 6, 7))
    ce = F.cross_entropy(lg, tg)
    assert float(focal_loss(lg, tg, gamma=0.0, alpha=None)) == pytest.approx(float(ce), rel=1e-6)
    assert float(focal_loss(lg, tg, gamma=0.0, alpha=(1.0, 1.0, 1.0))) == pytest.approx(float(ce), rel=1e-6)
    # alpha weights each voxel by its true class (mean over voxels, not normalised by the weights)
    w = torch.tensor([0.3, 0.35, 0.35])
    ref = F.cross_entropy(lg, tg, weight=w, reduction="none").mean()
    assert float(focal_loss(lg, tg, gamma=0.0, alpha=w)) == pytest.approx(float(ref), rel=1e-6)
    # gamma > 0 down-weights the confident voxels: smaller than CE, and the ratio is largest where p_y is high
    assert float(focal_loss(lg, tg, gamma=1.0, alpha=None)) < float(ce)


def test_focal_numerically_stable():
    target = torch.tensor([[0, 1, 2, 2]])  # 4 voxels; logits (1, 3 classes, 4 voxels)
    logits = torch.tensor([[[1e4, -1e4, 0.0, 5.0], [-1e4, 1e4, 0.0, 5.0], [0.0, 0.0, 1e4, -1e4]]],
                          requires_grad=True)
    for gamma in (0.0, 0.5, 1.0, 2.0):
        logits.grad = None
        loss = focal_loss(logits, target, gamma=gamma)
        loss.backward()
        assert torch.isfinite(loss) and torch.isfinite(logits.grad).all(), gamma
    # the last voxel is badly wrong (p_y ~ e^-1e4): loss ~ alpha * 1e4 / 4, not inf
    assert focal_loss(logits, target, gamma=1.0, alpha=None).item() == pytest.approx(1e4 / 4, rel=1e-3)
    with pytest.raises(ValueError, match="alpha"):
        focal_loss(logits, target, alpha=(0.5, 0.5))


def test_hybrid_loss_parts():
    torch.manual_seed(8)
    logits = torch.randn(1, 3, 6, 6, 6, requires_grad=True)
    target = torch.randint(0, 3, (1, 6, 6, 6))
    crit = HybridDiceFocalLoss()
    total = crit(logits, target)
    d = soft_dice_loss(logits, target, classes=(1, 2))
    f = focal_loss(logits, target, gamma=1.0, alpha=(0.3, 0.35, 0.35))
    assert total.item() == pytest.approx(0.7 * d.item() + 0.3 * f.item(), rel=1e-6)
    assert crit.last["dice"] == pytest.approx(d.item(), rel=1e-6)
    assert crit.last["focal"] == pytest.approx(f.item(), rel=1e-6)
    parts = crit.parts(logits, target)
    assert set(parts) == {"dice", "focal", "total"}
    total.backward()
    assert torch.isfinite(logits.grad).all()
    assert HybridDiceFocalLoss(1.0, 0.0)(logits, target).item() == pytest.approx(d.item(), rel=1e-6)
    with pytest.raises(ValueError):
        HybridDiceFocalLoss(0.0, 0.0)


def test_recipes_use_the_shared_soft_dice_with_their_semantics():
    """carpal DiceCELoss: batch Dice over classes 1.., smooth 1, + CE; mpi soft_dice_ce: soft-target CE + per-sample
    Dice of ``fg`` with smooth 1 -- against the formulas written out here."""
    from MedSegAILib.train.carpal import DiceCELoss
    from MedSegAILib.train.mpi_myocardium import soft_dice_ce

    torch.manual_seed(9)
    lg = torch.randn(3, 5, 6, 4)
    tg = torch.randint(0, 4, (3, 6, 4))  # class 4 absent: its term (1 / (sum p + 1)) is kept
    p = torch.softmax(lg, 1)[:, 1:]
    y = F.one_hot(tg, 5).permute(0, 3, 1, 2).float()[:, 1:]
    dc = (2 * (p * y).sum((0, 2, 3)) + 1) / (p.sum((0, 2, 3)) + y.sum((0, 2, 3)) + 1)
    ref = 1 - dc.mean() + 0.5 * F.cross_entropy(lg, tg)
    assert float(DiceCELoss(ce_weight=0.5)(lg, tg)) == pytest.approx(float(ref), rel=1e-6)

    lg3 = torch.randn(2, 3, 4, 5, 3)
    soft = torch.softmax(torch.randn(2, 3, 4, 5, 3) * 2, 1)
    q = torch.softmax(lg3, 1)
    d = (2 * (q * soft).sum((2, 3, 4)) + 1) / (q.sum((2, 3, 4)) + soft.sum((2, 3, 4)) + 1)
    ce = -(soft * torch.log_softmax(lg3, 1)).sum(1).mean()
    ref3 = ce + 0.5 * (1 - d[:, [1, 2]].mean())
    assert float(soft_dice_ce(lg3, soft, fg=(1, 2), dice_weight=0.5)) == pytest.approx(float(ref3), rel=1e-6)


# ---------------------------------------------------------------------------------------------- overfit
def _blob_pair() -> tuple[torch.Tensor, torch.Tensor]:
    """One 8 x 16 x 24 image with two ellipsoids (label 1 at low i, brightness 0.5; label 2 at high i, brightness 1)
    in Gaussian noise (sd 0.1); each gland covers 436 of 3072 voxels. Different brightness keeps 40 steps enough
    for both nets (telling equally bright glands apart by position alone is the training recipe's job)."""
    k, j, i = np.meshgrid(np.arange(8), np.arange(16), np.arange(24), indexing="ij")
    lab = np.zeros((8, 16, 24), np.int64)
    lab[((k - 4) / 3.5) ** 2 + ((j - 7.5) / 6.0) ** 2 + ((i - 6) / 5.0) ** 2 <= 1] = 1
    lab[((k - 3) / 3.5) ** 2 + ((j - 7.5) / 6.0) ** 2 + ((i - 17) / 5.0) ** 2 <= 1] = 2
    img = 0.5 * (lab == 1) + 1.0 * (lab == 2) + np.random.default_rng(0).normal(0, 0.1, lab.shape)
    return torch.from_numpy(img[None, None].astype(np.float32)), torch.from_numpy(lab[None])


@pytest.mark.parametrize("arch", ["resunet3d", "cbam_unet3d"])
def test_overfit_blob_pair(arch):
    """40 Adam steps (lr 1e-2) with the hybrid loss fit the pair: argmax Dice > 0.9 for both glands (measured with
    seeds 0-3: >= 0.998 resp. >= 0.948; at initialisation the minimum is < 0.5)."""
    torch.manual_seed(0)
    x, y = _blob_pair()
    net = nets.build(arch, features=[8, 16, 32], levels=2)
    ref = y[0].numpy()

    def scores() -> list[float]:
        with torch.no_grad():
            pred = net.eval()(x).argmax(1)[0].numpy()
        return [dice(pred == c, ref == c) for c in (1, 2)]

    assert min(scores()) < 0.5
    opt = torch.optim.Adam(net.parameters(), lr=1e-2)
    crit = HybridDiceFocalLoss()
    for _ in range(40):
        net.train()
        opt.zero_grad()
        crit(net(x), y).backward()
        opt.step()
    assert min(scores()) > 0.9, scores()
