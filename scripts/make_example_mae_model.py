"""Make the small masked autoencoder shipped in ``example_data/mae2d_demo_model.pt``.

The ``demo`` run of ``bench/mae_train.py`` (a ViT MAE: 32 x 32 images, 4-pixel tokens,
embedding 128, 4 encoder blocks, one decoder block of 128; 75 % of the tokens hidden in
training) on 512 clean 256 x 256 images made like the 2D sample (textured nuclei of the
sample's size), then ``calibrate-mae`` on 16 other held-out 256 x 256 images; only the
weights, config, normalisation and the sigma scale are kept. The shipped file was trained on
a GPU in 44 s (1504 steps, ``--minutes 3``); on a 2-core CPU the same number of steps takes
about 8 minutes.

Usage (from the repository root)::

    python scripts/make_example_mae_model.py [--out example_data/mae2d_demo_model.pt]
                                             [--model DONE.pt] [--minutes 5] [--device auto]

``--model``: calibrate and ship an already trained ``demo`` checkpoint instead of training.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=str(ROOT / "example_data" / "mae2d_demo_model.pt"))
    ap.add_argument("--model", default=None, help="an already trained demo checkpoint")
    ap.add_argument("--minutes", type=float, default=5.0)
    ap.add_argument("--device", default="auto")
    args = ap.parse_args()

    from napari_sim_uq.core.events import run
    from napari_sim_uq.core.io.tiff_io import write_image
    from napari_sim_uq.tasks.mae2d.calibrate import calibrate_mae_job
    from napari_sim_uq.tasks.sim.samples import image2d_clean

    work = Path(tempfile.mkdtemp(prefix="mae_demo_"))
    model = args.model
    if model is None:
        cmd = [
            sys.executable,
            str(ROOT / "bench" / "mae_train.py"),
            "--out",
            str(work),
            "--runs",
            "demo",
            "--minutes",
            str(args.minutes),
            "--device",
            args.device,
        ]
        subprocess.run(cmd, check=True)
        model = work / "demo.pt"
    target = work / "calibrated.pt"
    shutil.copy(model, target)
    target.chmod(0o644)
    for s in range(500000, 500016):  # seeds no training or test run uses
        img = np.rint(image2d_clean(seed=s, size=256)).astype(np.uint16)
        write_image(work / "calib" / f"c_{s}.tif", img, overwrite=True)
    t = run(calibrate_mae_job(target, work / "calib", num_samples=16, seed=0))
    p = t["after"]["pooled"]
    print(
        f"sigma scale {t['sigma_scale']['mean']:.4f} on {t['n_pixels']} hidden pixels "
        f"(after: ZMS {p['zms']:.3f}, cov95 {p['cov95']:.3f})"
    )
    shutil.copy(target, args.out)
    shutil.rmtree(work, ignore_errors=True)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
