"""Sliding-window inference, device choice, memory guard, progress and cancel."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest
import torch

from MedSegAILib.engine.device import select_device
from MedSegAILib.engine.inference import gaussian_importance, sliding_window_inference, window_starts
from MedSegAILib.engine.progress import CancelToken, Progress
from MedSegAILib.errors import Cancelled, DeviceError, InputError
from MedSegAILib.tasks.base import RunContext


class Affine(torch.nn.Module):
    """Pointwise network: output channel c = (c + 1) * input; translation-equivariant, so tiling must be exact."""

    def __init__(self, channels: int = 2):
        super().__init__()
        self.channels = channels
        self.calls: list[tuple[int, ...]] = []

    def forward(self, x):  # noqa: ANN001
        self.calls.append(tuple(x.shape))
        return torch.cat([(c + 1) * x for c in range(self.channels)], dim=1)


def _ctx(**kw) -> RunContext:
    return RunContext(device=torch.device("cpu"), **kw)


def test_window_starts_cover_and_end_at_the_edge():
    assert window_starts(10, 16, 0.5) == [0]
    assert window_starts(64, 32, 0.5) == [0, 16, 32]
    s = window_starts(70, 32, 0.5)
    assert s[0] == 0 and s[-1] == 70 - 32 and all(b - a <= 16 for a, b in zip(s, s[1:]))


def test_gaussian_weights_peak_in_the_centre():
    w = gaussian_importance((9, 9, 9))
    assert w.shape == (9, 9, 9)
    assert w[4, 4, 4] == pytest.approx(1.0)
    assert w.min() >= 1e-3 and w[0, 0, 0] < w[2, 2, 2] < w[4, 4, 4]


@pytest.mark.parametrize("shape", [(1, 20, 33, 41), (1, 5, 6, 7)])
def test_pointwise_network_is_reproduced_exactly_by_the_blended_windows(shape):
    rng = np.random.default_rng(0)
    image = rng.normal(size=shape).astype(np.float32)
    net = Affine(2)
    out = sliding_window_inference(net, image, (8, 16, 16), ctx=_ctx(), overlap=0.5, batch_size=3, activation=None)
    assert out.shape == (2,) + shape[1:]
    assert np.allclose(out[0], image[0], atol=1e-5)
    assert np.allclose(out[1], 2 * image[0], atol=1e-5)
    assert max(c[0] for c in net.calls) <= 3


def test_softmax_outputs_are_probabilities():
    image = np.random.default_rng(1).normal(size=(1, 16, 16, 16)).astype(np.float32)
    out = sliding_window_inference(Affine(3), image, (8, 8, 8), ctx=_ctx(), activation="softmax")
    assert np.allclose(out.sum(axis=0), 1.0, atol=1e-5)


def test_progress_is_reported_and_timings_recorded():
    seen = []
    ctx = _ctx(progress=Progress(lambda f, t: seen.append((f, t))))
    sliding_window_inference(Affine(), np.zeros((1, 16, 16, 32), np.float32), (8, 8, 8), ctx=ctx, batch_size=2)
    fractions = [f for f, _ in seen]
    assert fractions == sorted(fractions) and fractions[-1] == pytest.approx(1.0)
    assert ctx.timings["network_forward"] > 0


def test_cancel_is_honoured_within_a_second():
    class Slow(Affine):
        def forward(self, x):  # noqa: ANN001
            time.sleep(0.05)
            return super().forward(x)

    token = CancelToken()
    ctx = _ctx(cancel=token)
    threading.Timer(0.3, token.cancel).start()
    t0 = time.monotonic()
    with pytest.raises(Cancelled):
        sliding_window_inference(Slow(), np.zeros((1, 64, 64, 64), np.float32), (8, 8, 8), ctx=ctx, batch_size=1)
    assert time.monotonic() - token.requested_at < 1.0
    assert time.monotonic() - t0 < 5.0


def test_out_of_memory_halves_the_batch_then_the_tiles():
    class Picky(Affine):
        def forward(self, x):  # noqa: ANN001
            if x.shape[0] > 1 or x.shape[-1] > 8:
                raise torch.OutOfMemoryError("CUDA out of memory (simulated)")
            return super().forward(x)

    ctx = _ctx()
    image = np.random.default_rng(2).normal(size=(1, 16, 16, 16)).astype(np.float32)
    out = sliding_window_inference(Picky(), image, (16, 16, 16), ctx=ctx, batch_size=4, activation=None)
    assert np.allclose(out[0], image[0], atol=1e-5)
    assert any("batch size 2" in m for m in ctx.messages)
    assert any("smaller tiles (8, 8, 8)" in m for m in ctx.messages)


def test_out_of_memory_on_the_cpu_with_the_smallest_tiles_is_a_clear_error():
    class Never(Affine):
        def forward(self, x):  # noqa: ANN001
            raise torch.OutOfMemoryError("out of memory (simulated)")

    with pytest.raises(DeviceError, match="Out of memory on the CPU"):
        sliding_window_inference(Never(), np.zeros((1, 8, 8, 8), np.float32), (8, 8, 8), ctx=_ctx())


def test_memory_guard_refuses_a_grid_that_cannot_fit():
    with pytest.raises(InputError, match="too large"):
        sliding_window_inference(Affine(), np.zeros((1, 8, 8, 8), np.float32), (8, 8, 8),
                                 ctx=_ctx(memory_limit_bytes=10_000))


def test_other_errors_propagate_unchanged():
    class Broken(Affine):
        def forward(self, x):  # noqa: ANN001
            raise ValueError("boom")

    with pytest.raises(ValueError, match="boom"):
        sliding_window_inference(Broken(), np.zeros((1, 8, 8, 8), np.float32), (8, 8, 8), ctx=_ctx())


def test_device_choice():
    dev, msg = select_device("cpu")
    assert dev.type == "cpu" and "CPU" in msg
    auto, msg = select_device("auto")
    assert auto.type in ("cpu", "cuda", "mps") and msg
    if not torch.cuda.is_available():
        assert auto.type != "cuda"
        with pytest.raises(DeviceError, match="CUDA GPU was requested"):
            select_device("cuda")
    with pytest.raises(DeviceError, match="Unknown device"):
        select_device("tpu")


def test_progress_sub_ranges_nest():
    seen = []
    p = Progress(lambda f, t: seen.append(round(f, 3)))
    p.sub(0.5, 1.0).sub(0.0, 0.5)(1.0, "x")
    assert seen == [0.75]
