"""Re-make the embedded demo volume (MedSegAILib/data/demo-mpi-spect.nii.gz) and its simulated truth
(Testing/data/demo-mpi-spect-truth.nii.gz, used by the demo test) with this project's SPECT simulator.

    .venv/bin/python scripts/make_demo_data.py
"""

from pathlib import Path
import sys

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from MedSegAILib.core.io import write_volume  # noqa: E402
from MedSegAILib.simulate.spect import simulate_spect  # noqa: E402

SEED = 20261123  # outside the training (1,000,000+), validation (900,000,000+) and benchmark (950,000,000+) seeds


def main() -> None:
    image, truth, _ = simulate_spect(SEED, spacing=4.42, fov="thorax", oblique=False, orientation="typical",
                                     defects=True)
    counts = np.round(image.array / image.array.max() * 4000).clip(0, 32767).astype(np.int16)
    write_volume(image.with_array(counts), ROOT / "MedSegAILib" / "data" / "demo-mpi-spect.nii.gz")
    write_volume(truth, ROOT / "Testing" / "data" / "demo-mpi-spect-truth.nii.gz")
    print(f"demo volume {image!r}; truth voxels per label {np.bincount(truth.array.ravel()).tolist()}")


if __name__ == "__main__":
    main()
