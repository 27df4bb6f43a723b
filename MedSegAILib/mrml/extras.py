"""Writers for the extras of a TaskResult: scalar maps, tables, point lists, plots (and colour tables).

Each writer adds nodes to the scene and returns them; it never modifies an existing node except to
*reuse* (read-only) a colour table. Atomicity is handled by the caller (:mod:`MedSegAILib.mrml.results`),
which removes every node created when any writer fails.
"""

from __future__ import annotations

import numbers
from typing import Any, Optional

import numpy as np
import vtk

from MedSegAILib.core.volume import lps_to_ras_points
from MedSegAILib.mrml.volumes import set_node_voxels
from MedSegAILib.tasks.base import Plot, PointList, ScalarMap, Table

# ---------------------------------------------------------------------------------------------- colours
#: Colour tables that Slicer's colour logic creates at start-up (present in the app's scene, not in a
#: bare slicer-core scene), keyed by lower-case matplotlib colormap name.
SLICER_COLOR_NODE_IDS = {
    "inferno": "vtkMRMLColorTableNodeFileInferno.txt",
    "magma": "vtkMRMLColorTableNodeFileMagma.txt",
    "plasma": "vtkMRMLColorTableNodeFilePlasma.txt",
    "viridis": "vtkMRMLColorTableNodeFileViridis.txt",
    "cividis": "vtkMRMLColorTableNodeFileCividis.txt",
    "gray": "vtkMRMLColorTableNodeGrey",
    "grey": "vtkMRMLColorTableNodeGrey",
}

#: 17 evenly spaced samples of matplotlib colormaps, used when matplotlib is not installed (Slicer does not
#: ship it); linear interpolation between them stays within 0.06 (RGB in [0, 1]) of matplotlib.
_ANCHORS = {
    "inferno": [(0.001, 0.000, 0.014), (0.042, 0.028, 0.141), (0.129, 0.047, 0.291), (0.238, 0.037, 0.396), (0.342, 0.062, 0.429), (0.441, 0.099, 0.432), (0.541, 0.135, 0.415), (0.640, 0.171, 0.381), (0.736, 0.216, 0.330), (0.822, 0.275, 0.266), (0.894, 0.353, 0.194), (0.947, 0.449, 0.115), (0.978, 0.558, 0.035), (0.988, 0.675, 0.065), (0.975, 0.798, 0.206), (0.948, 0.917, 0.411), (0.988, 0.998, 0.645)],
    "magma": [(0.001, 0.000, 0.014), (0.040, 0.031, 0.134), (0.113, 0.065, 0.277), (0.212, 0.062, 0.419), (0.317, 0.072, 0.485), (0.415, 0.110, 0.505), (0.513, 0.148, 0.508), (0.614, 0.182, 0.499), (0.716, 0.215, 0.475), (0.817, 0.256, 0.436), (0.904, 0.320, 0.388), (0.961, 0.418, 0.360), (0.987, 0.536, 0.382), (0.996, 0.654, 0.446), (0.997, 0.770, 0.535), (0.992, 0.884, 0.640), (0.987, 0.991, 0.750)],
    "plasma": [(0.050, 0.030, 0.528), (0.193, 0.018, 0.590), (0.300, 0.010, 0.632), (0.399, 0.001, 0.656), (0.495, 0.012, 0.658), (0.584, 0.069, 0.633), (0.665, 0.139, 0.586), (0.736, 0.209, 0.528), (0.798, 0.280, 0.470), (0.853, 0.352, 0.414), (0.902, 0.425, 0.360), (0.943, 0.503, 0.306), (0.973, 0.586, 0.252), (0.991, 0.675, 0.198), (0.993, 0.772, 0.155), (0.974, 0.875, 0.144), (0.940, 0.975, 0.131)],
    "viridis": [(0.267, 0.005, 0.329), (0.282, 0.095, 0.417), (0.279, 0.175, 0.483), (0.259, 0.252, 0.525), (0.230, 0.322, 0.546), (0.199, 0.388, 0.555), (0.173, 0.449, 0.558), (0.149, 0.508, 0.557), (0.128, 0.567, 0.551), (0.121, 0.626, 0.533), (0.158, 0.684, 0.502), (0.246, 0.739, 0.452), (0.369, 0.789, 0.383), (0.516, 0.831, 0.294), (0.678, 0.864, 0.190), (0.846, 0.887, 0.100), (0.993, 0.906, 0.144)],
    "cividis": [(0.000, 0.135, 0.305), (0.000, 0.179, 0.415), (0.103, 0.220, 0.436), (0.195, 0.264, 0.426), (0.264, 0.308, 0.423), (0.324, 0.351, 0.426), (0.381, 0.395, 0.436), (0.435, 0.440, 0.451), (0.489, 0.485, 0.471), (0.548, 0.532, 0.472), (0.609, 0.580, 0.464), (0.672, 0.629, 0.448), (0.736, 0.681, 0.424), (0.803, 0.734, 0.390), (0.871, 0.790, 0.343), (0.941, 0.848, 0.276), (0.996, 0.909, 0.218)],
    "hot": [(0.042, 0.000, 0.000), (0.206, 0.000, 0.000), (0.371, 0.000, 0.000), (0.536, 0.000, 0.000), (0.700, 0.000, 0.000), (0.865, 0.000, 0.000), (1.000, 0.030, 0.000), (1.000, 0.195, 0.000), (1.000, 0.359, 0.000), (1.000, 0.524, 0.000), (1.000, 0.689, 0.000), (1.000, 0.853, 0.000), (1.000, 1.000, 0.027), (1.000, 1.000, 0.274), (1.000, 1.000, 0.521), (1.000, 1.000, 0.768), (1.000, 1.000, 1.000)],
    "jet": [(0.000, 0.000, 0.500), (0.000, 0.000, 0.785), (0.000, 0.002, 1.000), (0.000, 0.253, 1.000), (0.000, 0.504, 1.000), (0.000, 0.755, 1.000), (0.085, 1.000, 0.882), (0.288, 1.000, 0.680), (0.490, 1.000, 0.478), (0.693, 1.000, 0.275), (0.895, 1.000, 0.073), (1.000, 0.814, 0.000), (1.000, 0.582, 0.000), (1.000, 0.349, 0.000), (1.000, 0.117, 0.000), (0.767, 0.000, 0.000), (0.500, 0.000, 0.000)],
    "coolwarm": [(0.230, 0.299, 0.754), (0.304, 0.407, 0.845), (0.384, 0.510, 0.918), (0.468, 0.606, 0.969), (0.554, 0.690, 0.996), (0.641, 0.761, 0.998), (0.724, 0.815, 0.976), (0.801, 0.850, 0.930), (0.867, 0.864, 0.863), (0.926, 0.826, 0.771), (0.960, 0.767, 0.674), (0.970, 0.690, 0.575), (0.957, 0.598, 0.477), (0.921, 0.491, 0.383), (0.865, 0.371, 0.296), (0.791, 0.231, 0.216), (0.706, 0.016, 0.150)],
    "gray": [(0.000, 0.000, 0.000), (1.000, 1.000, 1.000)],
    "turbo": [(0.190, 0.072, 0.232), (0.251, 0.252, 0.634), (0.276, 0.421, 0.891), (0.259, 0.580, 0.999), (0.158, 0.736, 0.923), (0.093, 0.866, 0.762), (0.197, 0.949, 0.595), (0.428, 0.994, 0.386), (0.644, 0.990, 0.234), (0.805, 0.925, 0.205), (0.933, 0.812, 0.227), (0.993, 0.674, 0.203), (0.984, 0.493, 0.128), (0.921, 0.315, 0.055), (0.816, 0.185, 0.018), (0.664, 0.084, 0.004), (0.480, 0.016, 0.011)],
}
_ANCHORS["grey"] = _ANCHORS["gray"]


def colormap_rgb(name: str, n: int = 256) -> tuple[np.ndarray, bool]:
    """``(n x 3 RGB in [0, 1], known)``: matplotlib's colormap when available, else the built-in anchors.

    An unknown name gives a grey ramp and ``known=False``.
    """
    key = name.strip()
    try:
        import matplotlib

        cmap = matplotlib.colormaps.get(key) or matplotlib.colormaps.get(key.lower())
        if cmap is not None:
            return np.asarray(cmap(np.linspace(0.0, 1.0, n)))[:, :3], True
    except ImportError:
        pass
    anchors = _ANCHORS.get(key.lower())
    known = anchors is not None
    a = np.asarray(anchors if known else _ANCHORS["gray"], dtype=float)
    x = np.linspace(0.0, 1.0, len(a))
    t = np.linspace(0.0, 1.0, n)
    return np.stack([np.interp(t, x, a[:, c]) for c in range(3)], axis=1), known


def color_node_for(scene: Any, colormap: str, messages: list[str]) -> Any:
    """Slicer's standard colour node for ``colormap`` when the scene has it, else a MedSegAI table.

    A table built earlier by MedSegAI (same name) is reused; otherwise a new 256-entry
    ``vtkMRMLColorTableNode`` is added (the caller's rollback removes it on failure).
    """
    node = scene.GetNodeByID(SLICER_COLOR_NODE_IDS.get(colormap.strip().lower(), "")) if colormap else None
    if node is not None:
        return node
    name = f"MedSegAI {colormap}"
    existing = scene.GetFirstNode(name, "vtkMRMLColorTableNode", False, False)
    if existing is not None and existing.GetAttribute("MedSegAI.Colormap") == colormap:
        return existing
    rgb, known = colormap_rgb(colormap)
    if not known:
        messages.append(f"Unknown colour map {colormap!r}; a grey scale was used instead.")
    table = scene.AddNewNodeByClass("vtkMRMLColorTableNode", name)
    table.SetTypeToUser()
    table.SetNumberOfColors(len(rgb))
    for i, (r, g, b) in enumerate(rgb):
        table.SetColor(i, f"{i}", float(r), float(g), float(b), 1.0)
    table.SetAttribute("MedSegAI.Colormap", colormap)
    return table


# ---------------------------------------------------------------------------------------------- maps
def write_scalar_map(
    scene: Any, smap: ScalarMap, name: str, ijk_to_ras: Optional[np.ndarray], messages: list[str]
) -> tuple[Any, Any]:
    """A scalar volume node (+ display node with colour map and window). Returns ``(volume, colour node)``.

    ``ijk_to_ras``: the grid in the caller's local coordinates (None: the map's own world geometry).
    """
    node = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", name)
    set_node_voxels(node, smap.volume, ijk_to_ras)
    node.CreateDefaultDisplayNodes()
    color = color_node_for(scene, smap.colormap, messages)
    display = node.GetDisplayNode()
    display.SetAndObserveColorNodeID(color.GetID())
    if smap.window is not None:
        lo, hi = (float(v) for v in smap.window)
        if not (np.isfinite(lo) and np.isfinite(hi) and hi > lo):
            raise ValueError(f"scalar map {smap.name!r}: invalid display window {smap.window!r}")
        display.AutoWindowLevelOff()
        display.SetWindowLevelMinMax(lo, hi)
    else:
        display.AutoWindowLevelOn()
    if smap.zero_transparent:  # only voxels above 0 are drawn when the map is shown as a layer
        display.SetApplyThreshold(1)
        display.SetLowerThreshold(1e-6)
        display.SetUpperThreshold(float(np.nanmax(smap.volume.array)) + 1.0)
    if smap.description:
        node.SetDescription(smap.description)
    if smap.units:
        node.SetAttribute("MedSegAI.Units", smap.units)
    return node, color


# ---------------------------------------------------------------------------------------------- tables
def _is_number(v: Any) -> bool:
    return v is None or (isinstance(v, numbers.Real) and not isinstance(v, (bool, np.bool_)))


def _is_int(v: Any) -> bool:
    return isinstance(v, numbers.Integral) and not isinstance(v, (bool, np.bool_))


def fill_table_node(node: Any, table: Table) -> None:
    """Columns named ``"name [unit]"`` (unit also as the column's unit label); numeric columns are
    ``vtkIntArray``/``vtkDoubleArray`` (``None`` -> NaN), the others ``vtkStringArray``."""
    ncol = len(table.columns)
    for r, row in enumerate(table.rows):
        if len(row) != ncol:
            raise ValueError(f"table {table.name!r}: row {r} has {len(row)} cells, expected {ncol}")
    headers = table.header()
    if len(set(headers)) != len(headers):
        raise ValueError(f"table {table.name!r}: duplicate column names {headers}")
    vtable = node.GetTable()
    for c, (col, header) in enumerate(zip(table.columns, headers)):
        values = [row[c] for row in table.rows]
        if values and all(_is_int(v) for v in values) and all(-(2**31) <= int(v) < 2**31 for v in values):
            arr = vtk.vtkIntArray()
            for v in values:
                arr.InsertNextValue(int(v))
        elif values and all(_is_number(v) for v in values):
            arr = vtk.vtkDoubleArray()
            for v in values:
                arr.InsertNextValue(float("nan") if v is None else float(v))
        else:
            arr = vtk.vtkStringArray()
            for v in values:
                arr.InsertNextValue("" if v is None else str(v))
        arr.SetName(header)
        vtable.AddColumn(arr)
        if col.unit:
            node.SetColumnUnitLabel(header, col.unit)
        if col.description:
            node.SetColumnDescription(header, col.description)
    node.Modified()


def write_table(scene: Any, table: Table, name: str) -> Any:
    node = scene.AddNewNodeByClass("vtkMRMLTableNode", name)
    fill_table_node(node, table)
    if table.description:
        node.SetDescription(table.description)
    return node


# ---------------------------------------------------------------------------------------------- points
def write_points(scene: Any, points: PointList, name: str, world_to_local: np.ndarray) -> Any:
    """A markups fiducial node; LPS -> RAS with core's helper, then world -> the node's local frame."""
    pts = np.asarray(points.points_lps, dtype=float).reshape(-1, 3)
    if len(points.labels) != len(pts):
        raise ValueError(f"point list {points.name!r}: {len(pts)} points but {len(points.labels)} labels")
    if not np.all(np.isfinite(pts)):
        raise ValueError(f"point list {points.name!r} has non-finite coordinates")
    ras = lps_to_ras_points(pts)
    local = (np.c_[ras, np.ones(len(ras))] @ np.asarray(world_to_local).T)[:, :3]
    node = scene.AddNewNodeByClass("vtkMRMLMarkupsFiducialNode", name)
    node.CreateDefaultDisplayNodes()
    for i, (p, label) in enumerate(zip(local, points.labels)):
        node.AddControlPoint(vtk.vtkVector3d(*[float(x) for x in p]), str(label))
        if i < len(points.descriptions) and points.descriptions[i]:
            node.SetNthControlPointDescription(i, str(points.descriptions[i]))
    return node


# ---------------------------------------------------------------------------------------------- plots
#: matplotlib's "tab10" (SetUniqueColor needs Slicer's random colour table, absent from a bare scene)
_SERIES_COLORS = [
    (0.122, 0.467, 0.706), (1.000, 0.498, 0.055), (0.173, 0.627, 0.173), (0.839, 0.153, 0.157),
    (0.580, 0.404, 0.741), (0.549, 0.337, 0.294), (0.890, 0.467, 0.761), (0.498, 0.498, 0.498),
    (0.737, 0.741, 0.133), (0.090, 0.745, 0.812),
]

def write_plot(scene: Any, plot: Plot, name: str) -> tuple[Any, Any, list[Any]]:
    """``(chart node, table node, series nodes)``: one table with an x and a y column per series."""
    if plot.kind not in ("line", "scatter"):
        raise ValueError(f"plot {plot.name!r}: kind must be 'line' or 'scatter', got {plot.kind!r}")
    bad = {k: v for k, v in plot.styles.items() if v not in plot.STYLES}
    if bad:
        raise ValueError(f"plot {plot.name!r}: series styles must be 'scatter', 'line' or 'dashed'; got {bad!r}")
    if not plot.series:
        raise ValueError(f"plot {plot.name!r} has no series")
    for sname, (xs, ys) in plot.series.items():
        if len(xs) != len(ys):
            raise ValueError(f"plot {plot.name!r}, series {sname!r}: {len(xs)} x values but {len(ys)} y values")
    table = scene.AddNewNodeByClass("vtkMRMLTableNode", f"{name} data")
    n = max(len(xs) for xs, _ in plot.series.values())
    vtable = table.GetTable()
    columns = []
    for sname, (xs, ys) in plot.series.items():
        for axis, values in (("x", xs), ("y", ys)):
            arr = vtk.vtkDoubleArray()
            arr.SetName(f"{sname} ({axis})")
            vals = [float(v) for v in values] + [float("nan")] * (n - len(values))
            for v in vals:
                arr.InsertNextValue(v)
            vtable.AddColumn(arr)
        columns.append((sname, f"{sname} (x)", f"{sname} (y)"))
    table.Modified()
    chart = scene.AddNewNodeByClass("vtkMRMLPlotChartNode", name)
    chart.SetTitle(plot.name)
    chart.SetXAxisTitle(plot.x_label)
    chart.SetYAxisTitle(plot.y_label)
    series_nodes = []
    import slicer

    S = slicer.vtkMRMLPlotSeriesNode
    for sname, xcol, ycol in columns:
        series = scene.AddNewNodeByClass("vtkMRMLPlotSeriesNode", sname)
        series.SetAndObserveTableNodeID(table.GetID())
        series.SetXColumnName(xcol)
        series.SetYColumnName(ycol)
        # PlotTypeLine ignores the x column (it plots against the row index): x-y curves are scatter plots
        series.SetPlotType(S.PlotTypeScatter)
        style = plot.style_of(sname)
        if style == "line":
            series.SetLineStyle(S.LineStyleSolid)
            series.SetMarkerStyle(S.MarkerStyleNone)
        elif style == "dashed":
            series.SetLineStyle(S.LineStyleDash)
            series.SetMarkerStyle(S.MarkerStyleNone)
        else:
            series.SetLineStyle(S.LineStyleNone)
            series.SetMarkerStyle(S.MarkerStyleCircle)
        series.SetColor(*_SERIES_COLORS[len(series_nodes) % len(_SERIES_COLORS)])
        chart.AddAndObservePlotSeriesNodeID(series.GetID())
        series_nodes.append(series)
    return chart, table, series_nodes
