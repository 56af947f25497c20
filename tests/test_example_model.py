"""The model shipped in example_data/ (trained by `sim-uq demo`): it loads safely and
reconstructs the shipped sample stack better than a widefield baseline, with a std map that
ranks its true errors."""

from pathlib import Path

import numpy as np
import pytest
from scipy.stats import spearmanr

from napari_sim_uq.core.events import run
from napari_sim_uq.core.io.checkpoint import checkpoint_summary, load_checkpoint
from napari_sim_uq.core.io.tiff_io import read_image
from napari_sim_uq.core.uq.metrics import psnr
from napari_sim_uq.tasks.sim.evaluate import widefield_baseline
from napari_sim_uq.tasks.sim.reconstruct import reconstruct_sim_job

EXAMPLES = Path(__file__).resolve().parents[1] / "example_data"
MODEL = EXAMPLES / "sim_uq_demo_model.pt"


pytestmark = pytest.mark.usefixtures("one_thread")


def test_shipped_model_is_small_calibrated_and_safe():
    assert MODEL.stat().st_size < 4_000_000
    ck = load_checkpoint(MODEL, expected_model_type="sim_uq_net")
    assert ck.optimizer_state is None  # weights only, no training state
    assert all(ck.sigma_scale[q] != 1.0 for q in ("emitter", "lp", "raw"))
    info = checkpoint_summary(MODEL)
    assert info["model_type"] == "sim_uq_net"


def test_shipped_model_beats_widefield_on_the_sample_stack():
    raw = read_image(EXAMPLES / "sim_stack.tif")
    gt = read_image(EXAMPLES / "sim_stack_gt.tif").data.astype(np.float64)
    rec = run(reconstruct_sim_job(raw, MODEL, device="cpu"))
    e = rec.arrays["emitter"].astype(np.float64)
    s = rec.arrays["emitter_std"].astype(np.float64)
    assert e.shape == gt.shape == (2 * raw.data.shape[-2], 2 * raw.data.shape[-1])
    # widefield, given the advantage of a least-squares affine fit to the ground truth
    wf = widefield_baseline(np.asarray(raw.data, np.float64), 2)
    a, b = np.linalg.lstsq(np.c_[wf.ravel(), np.ones(wf.size)], gt.ravel(), rcond=None)[0]
    dr = float(gt.max() - gt.min())
    gain = psnr(e, gt, dr) - psnr(a * wf + b, gt, dr)
    assert gain > 2.0, gain  # measured: 6.8 dB
    rho = spearmanr(s.ravel(), np.abs(e - gt).ravel())[0]
    assert rho > 0.6, rho  # measured: 0.76
