"""SIM reconstruction from a checkpoint: files, units, time series, bad input."""

import json

import numpy as np
import pytest
import tifffile

from napari_sim_uq.cli import main
from napari_sim_uq.core.errors import InputError
from napari_sim_uq.core.events import run
from napari_sim_uq.core.io.checkpoint import load_checkpoint, save_checkpoint
from napari_sim_uq.core.io.tiff_io import read_image
from napari_sim_uq.tasks.sim.reconstruct import reconstruct_sim_job
from napari_sim_uq.tasks.sim.synth import SynthConfig, generate_dataset
from napari_sim_uq.tasks.sim.train import TrainConfig, train_sim_job


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("rec")
    run(generate_dataset(root / "d", 4, SynthConfig(lr_size=(24, 24), hr_factor=2), workers=1))
    cfg = TrainConfig(
        train_glob=str(root / "d" / "train" / "*.tif"),
        ckpt_dir=str(root / "ck"),
        epochs=1,
        batch_size=2,
        device="cpu",
        model={"hr_factor": 2, "base_channels": 8, "depth": 2, "psf_size": 7},
    )
    run(train_sim_job(cfg))
    return root


def test_cli_writes_all_outputs_on_the_hr_grid(trained, tmp_path, capsys):
    inp = trained / "d" / "train" / "sample_00000.tif"
    rc = main(
        [
            "reconstruct",
            "--checkpoint",
            str(trained / "ck" / "best.pt"),
            "--input",
            str(inp),
            "--out-dir",
            str(tmp_path / "o"),
            "--mc-samples",
            "3",
            "--quiet",
        ]
    )
    assert rc == 0, capsys.readouterr().err
    names = sorted(p.name for p in (tmp_path / "o").iterdir())
    assert names == sorted(
        f"sample_00000_{k}"
        for k in (
            "emitter.tif",
            "emitter_std.tif",
            "lp.tif",
            "lp_std.tif",
            "psf.tif",
            "psf_std.tif",
            "rec_std.tif",
            "uq.json",
            # with MC samples: the two parts of the emitter std
            "emitter_aleatoric_std.tif",
            "emitter_epistemic_std.tif",
        )
    )
    # the raw-domain self-check is printed (this 2-step model does not fit the data)
    assert "does not fit these data" in capsys.readouterr().out
    em = read_image(tmp_path / "o" / "sample_00000_emitter.tif")
    std = read_image(tmp_path / "o" / "sample_00000_emitter_std.tif")
    lp = read_image(tmp_path / "o" / "sample_00000_lp.tif")
    assert em.data.shape == (48, 48) and lp.data.shape == (9, 48, 48)
    assert em.scale == (0.5, 0.5) and em.translate == (-0.25, -0.25)  # overlays the raw
    assert (std.data > 0).all()
    doc = json.loads((tmp_path / "o" / "sample_00000_uq.json").read_text())
    assert doc["mc_samples"] == 3 and doc["config_hash"]
    # nothing is overwritten without --overwrite
    rc = main(
        [
            "reconstruct",
            "--checkpoint",
            str(trained / "ck" / "best.pt"),
            "--input",
            str(inp),
            "--out-dir",
            str(tmp_path / "o"),
            "--quiet",
        ]
    )
    assert rc == 2 and "not overwriting" in capsys.readouterr().err


def test_outputs_are_in_the_input_units(trained):
    # the network sees normalised stacks, so scaling the input scales emitter and its std
    raw = read_image(trained / "d" / "train" / "sample_00001.tif").data
    ck = trained / "ck" / "best.pt"
    a = run(reconstruct_sim_job(raw, ck, device="cpu"))
    b = run(reconstruct_sim_job(3.0 * raw, ck, device="cpu"))
    np.testing.assert_allclose(
        b.arrays["emitter"],
        3 * a.arrays["emitter"],
        rtol=1e-4,
        atol=1e-4 * a.arrays["emitter"].max(),
    )
    np.testing.assert_allclose(b.arrays["emitter_std"], 3 * a.arrays["emitter_std"], rtol=1e-4)
    np.testing.assert_allclose(b.arrays["lp"], a.arrays["lp"], rtol=1e-4, atol=1e-5)


def test_time_series_is_reconstructed_per_time_point(trained):
    ck = trained / "ck" / "best.pt"
    s0 = read_image(trained / "d" / "train" / "sample_00000.tif").data
    s1 = read_image(trained / "d" / "train" / "sample_00002.tif").data
    ts = run(reconstruct_sim_job(np.stack([s0, s1]), ck, device="cpu"))
    assert ts.time_series and ts.arrays["emitter"].shape == (2, 48, 48)
    one = run(reconstruct_sim_job(s1, ck, device="cpu"))
    # separate model runs: equal up to float32 rounding, which is relative to the image's
    # magnitude, not to each pixel's (near-zero background pixels)
    want = one.arrays["emitter"]
    np.testing.assert_allclose(
        ts.arrays["emitter"][1], want, rtol=1e-5, atol=1e-6 * np.abs(want).max()
    )


def test_bad_inputs(trained, tmp_path, capsys):
    ck = trained / "ck" / "best.pt"
    four = tmp_path / "four.tif"
    tifffile.imwrite(
        four,
        np.ones((4, 24, 24), np.float32),
        imagej=True,
        metadata={"axes": "ZYX", "sim_angles": 2, "sim_phases": 2},
    )
    rc = main(
        [
            "reconstruct",
            "--checkpoint",
            str(ck),
            "--input",
            str(four),
            "--out-dir",
            str(tmp_path / "o"),
            "--quiet",
        ]
    )
    err = capsys.readouterr().err
    assert rc == 2 and "9" in err and "four.tif" in err
    with pytest.raises(InputError, match="2D image"):
        run(reconstruct_sim_job(np.ones((24, 24), np.float32), ck, device="cpu"))
    tampered = tmp_path / "tampered.pt"
    data = bytearray(ck.read_bytes())
    data[len(data) // 2] ^= 0xFF
    tampered.write_bytes(bytes(data))
    with pytest.raises(InputError):
        run(reconstruct_sim_job(np.ones((9, 24, 24), np.float32), tampered, device="cpu"))
    other = tmp_path / "other.pt"
    c = load_checkpoint(ck)
    save_checkpoint(other, model_state=c.model_state, config={**c.config, "model_type": "vae"})
    with pytest.raises(InputError, match="is for model 'vae'"):
        run(reconstruct_sim_job(np.ones((9, 24, 24), np.float32), other, device="cpu"))
