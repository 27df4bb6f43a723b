"""Case ranking by test-time augmentation (TTA): an uncertainty map per result and a per-case uncertainty score.

Works for every task and every network without task code: the task is run once on the user's inputs (the
answer, exactly what :func:`MedSegAILib.pipeline.segment` returns) and ``runs`` more times on perturbed copies
(the user's volumes are never modified). Each perturbed run ``r`` draws, from ``numpy.random.default_rng(seed)``:

* an intensity gain ``g_r ~ U(1 - gain, 1 + gain)`` applied to every voxel of every input;
* additive Gaussian noise with SD ``noise * SD_robust`` per input, where ``SD_robust = 1.4826 * MAD`` of the
  voxels inside the body/field (values above ``p1 + 0.1 * (p99 - p1)``), added to every voxel above the image
  minimum (padding and empty background at the minimum are left alone);
* a sub-voxel shift of the grid: the origin of every input moves by the same physical vector
  ``d = D_ref @ (spacing_ref * f)``, ``f_i ~ U(-shift, shift)`` voxel (``shift < 0.5``; axes of one voxel are not
  shifted). The arrays are not touched: the image content moves with its grid, so only the task's own
  physical resampling (network grids, boxes, crops) sees the image differently. The run's label map, on the
  shifted grid, is brought back onto the reference grid with nearest-neighbour resampling; since ``|f| < 0.5``
  every voxel maps back onto itself.

Per voxel, with ``n = 1 + runs`` label votes, ``K`` distinct labels over all maps (background included) and
``p_l`` the share of votes for label ``l``: the map is the normalised vote entropy
``U = -sum_l p_l ln p_l / H_max``, where ``H_max`` is the entropy of the most even split of ``n`` votes over
``min(n, K)`` labels (so 0 = all runs agree, 1 = the largest disagreement possible).

Per case: ``score = 1 - mean over runs r and foreground labels l of Dice(run_r == l, result == l)``, counting a
label for a run when it is present in that run or in the result; 0 = stable, higher = correct this case
first. Also the mean of ``U`` over the union of every map's foreground.
"""

from __future__ import annotations

import math
import time
from typing import TYPE_CHECKING, Any, Callable, Mapping, Optional, Sequence, Union

import numpy as np

from MedSegAILib.core.volume import Volume
from MedSegAILib.engine.progress import CancelToken, Progress
from MedSegAILib.errors import InputError
from MedSegAILib.tasks.base import Column, ScalarMap, Table, TaskResult

if TYPE_CHECKING:
    from MedSegAILib.zoo.registry import LoadedModel

#: Default perturbation strengths: relative gain half-range, noise SD as a fraction of the robust SD,
#: largest shift in voxels (must stay below 0.5). Noise 0.2: on the demo SPECT that is 27 counts, about half
#: the image's own voxel noise (49 counts from neighbour differences); 0.03 changed only 7 of its 10^6 voxels.
GAIN, NOISE, SHIFT = 0.05, 0.2, 0.45
MAP_NAME = "Uncertainty"
FORMULA = (
    "Normalised entropy of the label votes of the result and {runs} perturbed runs (intensity gain, noise, "
    "sub-voxel shift): U = -sum p_l ln p_l / H_max; 0 = all runs agree, 1 = maximal disagreement."
)

ProgressLike = Union[None, Progress, Callable[[float, str], None]]


# ---------------------------------------------------------------------------------------------- perturbation
def _present_labels(arr: np.ndarray) -> np.ndarray:
    """Sorted label values present in an integer label array (bincount when cheap, else unique)."""
    if arr.dtype.kind in "ub" and arr.dtype.itemsize <= 2:
        return np.flatnonzero(np.bincount(arr.ravel().astype(np.intp, copy=False)))
    return np.unique(arr)


def robust_sd(array: np.ndarray) -> float:
    """``1.4826 * MAD`` of the body/field voxels (values above ``p1 + 0.1 * (p99 - p1)``), in image units;
    falls back to the plain SD of all voxels when that is zero. Sub-sampled to at most ~2 M voxels."""
    flat = array.ravel()
    if flat.size > 2_000_000:
        flat = flat[:: flat.size // 2_000_000 + 1]
    flat = flat.astype(np.float64)
    p1, p99 = np.percentile(flat, [1, 99])
    body = flat[flat > p1 + 0.1 * (p99 - p1)]
    if body.size >= 10:
        sd = 1.4826 * float(np.median(np.abs(body - np.median(body))))
        if sd > 0:
            return sd
    return float(flat.std())


def perturb_inputs(
    inputs: Mapping[str, Volume], reference_role: str, rng: np.random.Generator, *,
    gain: float = GAIN, noise: float = NOISE, shift: float = SHIFT,
) -> tuple[dict[str, Volume], dict[str, Any]]:
    """New volumes (copies) with a random gain, noise and grid shift (see the module docstring), and a record
    of what was drawn. ``inputs`` are not modified."""
    if not 0 <= shift < 0.5:
        raise ValueError("shift must be in [0, 0.5) voxel")
    ref = inputs[reference_role]
    f = rng.uniform(-shift, shift, 3) * (np.asarray(ref.size_ijk) > 1)
    d = ref.direction @ (np.asarray(ref.spacing) * f)
    out: dict[str, Volume] = {}
    record: dict[str, Any] = {"shift_voxels": [round(float(v), 4) for v in f],
                              "shift_mm": [round(float(v), 4) for v in d], "gain": {}, "noise_sd": {}}
    for role in sorted(inputs):
        vol = inputs[role]
        g = float(rng.uniform(1.0 - gain, 1.0 + gain))
        arr = vol.array.astype(np.float32) * np.float32(g)
        sd = noise * robust_sd(vol.array) * g
        if sd > 0:
            field = vol.array > vol.array.min()
            arr[field] += rng.normal(0.0, sd, int(field.sum())).astype(np.float32)
        out[role] = Volume(arr, vol.spacing, tuple(np.asarray(vol.origin) + d), vol.direction.copy(), dict(vol.meta))
        record["gain"][role] = round(g, 5)
        record["noise_sd"][role] = round(float(sd), 6)
    return out, record


# ---------------------------------------------------------------------------------------------- statistics
def _max_entropy(n: int, k: int) -> float:
    """Entropy (nats) of the most even split of ``n`` votes over ``min(n, k)`` labels."""
    m = min(n, k)
    if m <= 1:
        return 0.0
    q, r = divmod(n, m)
    h = 0.0
    for count, times in ((q + 1, r), (q, m - r)):
        if count and times:
            p = count / n
            h -= times * p * math.log(p)
    return h


def vote_entropy(maps: Sequence[np.ndarray]) -> np.ndarray:
    """Normalised per-voxel entropy (float32, in [0, 1]) of the label votes of ``maps`` (same shape each)."""
    base = maps[0]
    out = np.zeros(base.shape, np.float32)
    labels = np.unique(np.concatenate([_present_labels(m) for m in maps]))
    hmax = _max_entropy(len(maps), len(labels))
    if hmax == 0.0:
        return out
    disagree = np.zeros(base.shape, bool)
    for m in maps[1:]:
        disagree |= m != base
    idx = np.flatnonzero(disagree)
    if idx.size == 0:
        return out
    votes = np.stack([m.ravel()[idx] for m in maps])
    h = np.zeros(idx.size, np.float64)
    for lab in labels:
        p = (votes == lab).mean(axis=0)
        nz = p > 0
        h[nz] -= p[nz] * np.log(p[nz])
    out.ravel()[idx] = np.clip(h / hmax, 0.0, 1.0).astype(np.float32)
    return out


def dice_per_label(run: np.ndarray, main: np.ndarray) -> dict[int, float]:
    """Dice of each foreground label present in ``run`` or ``main``: ``2|A n B| / (|A| + |B|)``."""
    from MedSegAILib.metrics import dice

    labels = np.union1d(_present_labels(run), _present_labels(main))
    return {int(lab): dice(run == lab, main == lab) for lab in labels[labels != 0]}


# ---------------------------------------------------------------------------------------------- the run
def segment_with_uncertainty(
    task_id: str,
    inputs: Mapping[str, Volume],
    *,
    runs: int = 4,
    seed: int = 0,
    model_id: Optional[str] = None,
    device: str = "auto",
    params: Any = None,
    progress: ProgressLike = None,
    cancel: Optional[CancelToken] = None,
    model: Optional["LoadedModel"] = None,
    gain: float = GAIN,
    noise: float = NOISE,
    shift: float = SHIFT,
) -> TaskResult:
    """:func:`MedSegAILib.pipeline.segment` plus a TTA uncertainty map and score (see the module docstring).

    Returns the unperturbed run's :class:`TaskResult` (same label map, tables... as a plain ``segment``) with a
    :class:`ScalarMap` "Uncertainty" (float32 in [0, 1] on the reference grid), a one-row :class:`Table`
    "Uncertainty", a message and ``provenance["uncertainty"]``. ``runs``: perturbed runs (1-32; each costs
    one full task run). ``gain``, ``noise``, ``shift``: perturbation strengths. Cancel is checked between runs
    and inside each run (:class:`~MedSegAILib.errors.Cancelled`).
    """
    from MedSegAILib.core.resample import resample_volume
    from MedSegAILib.pipeline import segment
    from MedSegAILib.tasks.registry import get_task

    if not 1 <= int(runs) <= 32:
        raise InputError(f"The number of uncertainty runs must be between 1 and 32; got {runs}.")
    runs = int(runs)
    task = get_task(task_id)
    top = progress if isinstance(progress, Progress) else Progress(progress)
    cancel = cancel or CancelToken()
    share = 1.0 / (1 + runs)
    kw = dict(model_id=model_id, device=device, params=params, cancel=cancel, model=model)

    t0 = time.perf_counter()
    result = segment(task_id, inputs, progress=top.sub(0.0, share), **kw)
    main_seconds = time.perf_counter() - t0
    reference = inputs[task.reference_role]
    grid = reference.geometry()
    main = result.labelmap.array
    maps = [main]
    rng = np.random.default_rng(seed)
    records, seconds = [], []
    for r in range(runs):
        cancel.check()
        t0 = time.perf_counter()
        perturbed, rec = perturb_inputs(inputs, task.reference_role, rng, gain=gain, noise=noise, shift=shift)
        prefix = f"Uncertainty run {r + 1}/{runs}: "
        res = segment(task_id, perturbed, progress=top.sub(share * (r + 1), share * (r + 2), prefix),
                      **kw)
        lab = resample_volume(res.labelmap, reference=grid, interpolation="nearest").array.astype(main.dtype)
        maps.append(lab)
        rec["dice"] = {str(k): round(v, 5) for k, v in dice_per_label(lab, main).items()}
        records.append(rec)
        seconds.append(time.perf_counter() - t0)
        del perturbed, res
    cancel.check()
    top(1.0, "Uncertainty: combining the runs")

    entropy = vote_entropy(maps)
    foreground = np.zeros(main.shape, bool)
    for m in maps:
        foreground |= m != 0
    mean_entropy = float(entropy[foreground].mean()) if foreground.any() else 0.0
    per_run_dice = [{int(k): v for k, v in rec["dice"].items()} for rec in records]
    all_dice = [v for d in per_run_dice for v in d.values()]
    score = 1.0 - float(np.mean(all_dice)) if all_dice else 0.0
    label_values = sorted({k for d in per_run_dice for k in d})
    label_dice = {k: float(np.mean([d[k] for d in per_run_dice if k in d])) for k in label_values}

    names = {lab.value: lab.name for lab in result.labels}
    description = FORMULA.format(runs=runs)
    result.maps.append(ScalarMap(
        name=MAP_NAME,
        volume=Volume(entropy, grid.spacing, grid.origin, grid.direction.copy(), {"name": MAP_NAME, "units": ""}),
        colormap="Inferno", window=(0.0, 1.0), units="", description=description, zero_transparent=True,
    ))
    columns = [
        Column("Uncertainty score", "", "1 - mean Dice of the perturbed runs against the result, over runs and "
                                       "foreground labels; 0 = stable"),
        Column("Mean entropy in foreground", "", "mean normalised vote entropy over the union of all runs' "
                                                 "foreground"),
        Column("Perturbed runs", "", "runs on inputs with random gain, noise and sub-voxel shift"),
        Column("Mean Dice", "", "mean Dice of the perturbed runs against the result"),
    ] + [Column(f"Dice {names.get(k, f'label {k}')}", "", "mean over runs") for k in label_values] + [
        Column("Seconds per run", "s", "mean wall time of one perturbed run"),
    ]
    row = [score, mean_entropy, runs, (1.0 - score) if all_dice else float("nan")]
    row += [label_dice[k] for k in label_values] + [float(np.mean(seconds))]
    result.tables.append(Table(MAP_NAME, columns, [row], description=description))
    if all_dice:
        result.messages.append(
            f"Uncertainty score {score:.2f} ({runs} perturbed run{'s' if runs > 1 else ''}; 0 = stable, "
            "higher = check this case first)."
        )
    else:
        result.messages.append(
            f"Uncertainty score 0: no structure was found in the result or in any of the {runs} perturbed runs, "
            "so there was nothing to compare."
        )
    result.provenance["uncertainty"] = {
        "method": "test-time augmentation: intensity gain, Gaussian noise, sub-voxel grid shift",
        "runs": runs,
        "seed": int(seed),
        "gain_half_range": gain,
        "noise_fraction_of_robust_sd": noise,
        "max_shift_voxels": shift,
        "score": round(score, 6),
        "mean_entropy": round(mean_entropy, 6),
        "dice_per_label": {str(k): round(v, 6) for k, v in label_dice.items()},
        "per_run": records,
        "seconds_main_run": round(main_seconds, 4),
        "seconds_per_run": [round(s, 4) for s in seconds],
        "formula": description,
    }
    return result


def uncertainty_summary(result: TaskResult) -> dict[str, Any]:
    """``{"score", "mean_entropy", "runs"}`` of a result made by :func:`segment_with_uncertainty`."""
    u = result.provenance.get("uncertainty")
    if not u:
        raise KeyError("this result has no uncertainty (it was not made by segment_with_uncertainty)")
    return {"score": float(u["score"]), "mean_entropy": float(u["mean_entropy"]), "runs": int(u["runs"])}


def rank_cases(
    task_id: str,
    cases: Sequence[tuple[str, Mapping[str, Volume]]],
    *,
    runs: int = 4,
    seed: int = 0,
    model_id: Optional[str] = None,
    device: str = "auto",
    params: Any = None,
    progress: ProgressLike = None,
    cancel: Optional[CancelToken] = None,
    model: Optional["LoadedModel"] = None,
    on_result: Optional[Callable[[str, TaskResult], None]] = None,
) -> list[dict[str, Any]]:
    """Run :func:`segment_with_uncertainty` on each ``(name, inputs)`` case and rank them, most uncertain first.

    Returns dicts ``{"name", "score", "mean_entropy", "runs", "seconds", "error"}``, sorted by decreasing
    score (ties: decreasing mean entropy, then name). A case the task refuses (:class:`InputError`) is kept with
    ``score=None`` and its message in ``"error"``, and listed first: it needs the user's attention most.
    Other errors (model, device, cancel) stop the ranking. ``on_result(name, result)`` receives each full
    result (e.g. to write its files) so that the caller need not keep them all in memory.
    """
    top = progress if isinstance(progress, Progress) else Progress(progress)
    cancel = cancel or CancelToken()
    rows: list[dict[str, Any]] = []
    n = max(len(cases), 1)
    for i, (name, inputs) in enumerate(cases):
        cancel.check()
        t0 = time.perf_counter()
        try:
            res = segment_with_uncertainty(
                task_id, inputs, runs=runs, seed=seed, model_id=model_id, device=device, params=params,
                progress=top.sub(i / n, (i + 1) / n, f"Case {i + 1}/{n} ({name}): "), cancel=cancel,
                model=model,
            )
        except InputError as exc:
            rows.append({"name": name, "score": None, "mean_entropy": None, "runs": runs,
                         "seconds": round(time.perf_counter() - t0, 3), "error": str(exc)})
            continue
        summary = uncertainty_summary(res)
        rows.append({"name": name, **summary, "seconds": round(time.perf_counter() - t0, 3), "error": None})
        if on_result is not None:
            on_result(name, res)
        del res
    top(1.0, "Ranked")
    return sorted(rows, key=lambda r: (r["score"] is not None, -(r["score"] or 0.0), -(r["mean_entropy"] or 0.0),
                                       r["name"]))


__all__ = ["segment_with_uncertainty", "rank_cases", "uncertainty_summary", "perturb_inputs", "vote_entropy",
           "dice_per_label", "robust_sd"]
