"""Pictures for people: an overlay of a result on its image (PNG), and plots outside Slicer.

Uses matplotlib's object API with the Agg canvas (no global pyplot state, works headless and in threads).
Views are resampled to the patient axes so that they read like Slicer's: axial (patient's right on the left of
the picture, anterior up), coronal (right on the left, superior up), sagittal (anterior on the left, superior up).
"""

from __future__ import annotations

import io
from typing import Mapping, Optional, Sequence

import numpy as np

from MedSegAILib.core.volume import Volume
from MedSegAILib.tasks.base import LabelInfo, Plot


def _figure(width_in: float, height_in: float):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width_in, height_in), dpi=110)
    FigureCanvasAgg(fig)
    return fig


def _png(fig, tight: bool = True) -> bytes:  # noqa: ANN001
    """PNG bytes; ``tight=False`` skips the second layout pass of ``bbox_inches="tight"`` (faster)."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", bbox_inches="tight" if tight else None, facecolor=fig.get_facecolor())
    return buf.getvalue()


def _patient_aligned(image: Volume, labelmap: Volume, step_mm: float) -> tuple[np.ndarray, np.ndarray, float]:
    """Resample image and labels onto an LPS-axis-aligned grid (so oblique volumes display upright)."""
    from MedSegAILib.core.resample import resample_volume
    from MedSegAILib.core.volume import Geometry

    corners = np.array([[i, j, k] for i in (-0.5, image.size_ijk[0] - 0.5) for j in (-0.5, image.size_ijk[1] - 0.5)
                        for k in (-0.5, image.size_ijk[2] - 0.5)])
    pts = image.index_to_lps(corners)
    lo, hi = pts.min(axis=0), pts.max(axis=0)
    size = np.maximum(np.ceil((hi - lo) / step_mm).astype(int), 1)
    grid = Geometry(tuple(int(s) for s in size[::-1]), (step_mm,) * 3, tuple(lo + step_mm / 2), np.eye(3))
    img = resample_volume(image, reference=grid, interpolation="linear", default_value=float(image.array.min()))
    lab = resample_volume(labelmap, reference=grid, interpolation="nearest")
    return img.array.astype(np.float32), lab.array, step_mm


def overlay_png(
    image: Volume,
    labelmap: Volume,
    labels: Sequence[LabelInfo],
    title: str = "",
    window: Optional[tuple[float, float]] = None,
) -> bytes:
    """Three orthogonal slices through the labelled region's centre with coloured label contours and fills."""
    from matplotlib.colors import ListedColormap
    from matplotlib.patches import Patch

    step = float(min(max(min(image.spacing), 0.5), 4.0))
    # a picture needs no more than ~800 pixels a side (a 2048 x 2048 radiograph would otherwise be contoured at full
    # size, seconds for nothing the eye can see)
    extent = np.asarray(image.spacing) * np.asarray(image.size_ijk)
    step = max(step, float(extent.max()) / 800.0)
    # and no more than ~12 million voxels resampled for three slices (a 512 x 512 x 133 chest CT at its 0.7 mm
    # pixel size would be 124 million, 6 s for a picture of ~400 pixels a view)
    step = max(step, float(np.prod(extent) / 12e6) ** (1.0 / 3.0))
    img, lab, _ = _patient_aligned(image, labelmap, step)  # arrays [z, y, x] in LPS order
    if window is None:
        # window on the labelled structures, not the whole field: in nuclear medicine a hotter organ (liver, gut,
        # bladder) would otherwise leave the structure of interest dark
        inside = img[lab > 0]
        lo = float(np.percentile(img, 1))
        hi = float(np.percentile(inside, 99.5)) if inside.size else float(np.percentile(img, 99.5))
        window = (lo, hi if hi > lo else lo + 1)
    present = np.argwhere(lab > 0)
    cz, cy, cx = (present.mean(axis=0).round().astype(int) if len(present) else np.array(lab.shape) // 2)
    # LPS grid: x -> patient Left, y -> Posterior, z -> Superior; imshow puts row 0 at the top, column 0 left.
    # Radiological display: patient's right on the screen's left (= low x first), anterior up (= low y first),
    # superior up (rows flipped in the coronal and sagittal views).
    views = [
        ("Axial", img[cz], lab[cz]),
        ("Coronal", img[:, cy, :][::-1], lab[:, cy, :][::-1]),
        ("Sagittal", img[:, :, cx][::-1], lab[:, :, cx][::-1]),
    ]
    if image.is_2d:  # a planar image (scintigram, radiograph): the one view that lies in its plane
        normal_axis = int(np.argmax(np.abs(np.asarray(image.direction)[:, 2])))  # 0: L, 1: P, 2: S
        views = [views[{2: 0, 1: 1, 0: 2}[normal_axis]]]
        views[0] = ("Planar image", views[0][1], views[0][2])
    max_value = max([lab_.value for lab_ in labels] + [int(lab.max())])
    colors = np.zeros((max_value + 1, 4))
    for info in labels:
        colors[info.value] = (*info.color, 0.25)
    cmap = ListedColormap(colors)
    fig = _figure(11, 4.2) if len(views) == 3 else _figure(5.5, 5.8)
    fig.patch.set_facecolor("black")
    for n, (name, im, lb) in enumerate(views):
        ax = fig.add_subplot(1, len(views), n + 1)
        ax.imshow(im, cmap="gray", vmin=window[0], vmax=window[1], interpolation="bilinear")
        ax.imshow(np.ma.masked_equal(lb, 0), cmap=cmap, vmin=0, vmax=max_value, interpolation="nearest")
        for info in labels:
            if (lb == info.value).any():
                ax.contour(lb == info.value, levels=[0.5], colors=[info.color], linewidths=1.0)
        ax.set_title(name, color="white", fontsize=10)
        ax.set_axis_off()
    handles = [Patch(color=info.color, label=info.name) for info in labels]
    fig.legend(handles=handles, loc="lower center", ncol=max(1, len(handles)), frameon=False, labelcolor="white")
    if title:
        fig.suptitle(title, color="white")
    fig.subplots_adjust(left=0.01, right=0.99, bottom=0.1, top=0.88, wspace=0.03)
    return _png(fig, tight=False)


def plot_png(plot: Plot) -> bytes:
    fig = _figure(6, 4)
    ax = fig.add_subplot(1, 1, 1)
    for name, (x, y) in plot.series.items():
        style = plot.style_of(name)
        if style == "scatter":
            ax.scatter(x, y, label=name, s=12)
        else:
            ax.plot(x, y, label=name, linestyle="--" if style == "dashed" else "-")
    ax.set_xlabel(plot.x_label)
    ax.set_ylabel(plot.y_label)
    ax.set_title(plot.name)
    if len(plot.series) > 1:
        ax.legend()
    ax.grid(alpha=0.3)
    return _png(fig)


def bland_altman_png(
    data: Mapping[str, tuple[Sequence[float], Sequence[float]]],
    *,
    a_name: str = "prediction",
    b_name: str = "reference",
    quantity: str = "Volume",
    unit: str = "mL",
    title: str = "",
) -> bytes:
    """Bland-Altman plots, one panel per structure: ``data[name] = (a values, b values)``, paired by position.

    Each panel shows the mean ``(a + b) / 2`` (x) against the difference ``a - b`` (y) of every pair, the bias
    (mean difference, solid line) and the 95 % limits of agreement ``bias +/- 1.96 SD`` (dashed), with n and the
    three values in the legend. The numbers come from :func:`MedSegAILib.metrics.bland_altman`, so the picture
    and the tables agree by construction. A structure without pairs gets a panel saying so.
    """
    from MedSegAILib.metrics import bland_altman

    names = list(data)
    if not names:
        raise ValueError("bland_altman_png: no structure to plot")
    ncols = min(len(names), 3)
    nrows = (len(names) + ncols - 1) // ncols
    fig = _figure(4.6 * ncols, 3.8 * nrows)
    u = f" [{unit}]" if unit else ""
    for n, name in enumerate(names):
        ax = fig.add_subplot(nrows, ncols, n + 1)
        a = np.asarray(data[name][0], float)
        b = np.asarray(data[name][1], float)
        if a.shape != b.shape:
            raise ValueError(f"bland_altman_png: {name!r} has {a.size} {a_name} values but {b.size} {b_name} values")
        ax.set_title(name, fontsize=10)
        ax.set_xlabel(f"Mean of {a_name} and {b_name}{u}", fontsize=8)
        ax.set_ylabel(f"{a_name} − {b_name}{u}", fontsize=8)
        ax.grid(alpha=0.3)
        if a.size == 0:
            ax.text(0.5, 0.5, "no pairs", ha="center", va="center", transform=ax.transAxes, color="0.4")
            continue
        ba = bland_altman(a, b)
        ax.scatter((a + b) / 2.0, a - b, s=18, color="#1f77b4", label=f"{quantity.lower()}s (n = {ba['n']})")
        ax.axhline(ba["bias"], color="#d62728", linestyle="-", label=f"bias {ba['bias']:+.3g}{unit and ' ' + unit}")
        if ba["n"] > 1:  # one pair has no spread, hence no limits of agreement
            ax.axhline(ba["upper"], color="0.35", linestyle="--",
                       label=f"+1.96 SD {ba['upper']:+.3g}{unit and ' ' + unit}")
            ax.axhline(ba["lower"], color="0.35", linestyle="--",
                       label=f"−1.96 SD {ba['lower']:+.3g}{unit and ' ' + unit}")
        ax.axhline(0.0, color="0.75", linewidth=0.8)
        ax.legend(fontsize=7, loc="best")
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return _png(fig)
