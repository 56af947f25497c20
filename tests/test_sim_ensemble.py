"""Deep ensembles of SIM models: the predictive statistics against the members run one by
one, tiling, checkpoint round trip, CLI and bad input."""

import numpy as np
import pytest
import torch

from napari_sim_uq.cli import main
from napari_sim_uq.core.errors import InputError
from napari_sim_uq.core.events import run
from napari_sim_uq.core.io.checkpoint import load_checkpoint, save_checkpoint
from napari_sim_uq.tasks.sim.ensemble import SimUQEnsemble, combine_sim_checkpoints
from napari_sim_uq.tasks.sim.net import SimNetConfig, SimUQNet
from napari_sim_uq.tasks.sim.predict import predict_sim_sync
from napari_sim_uq.tasks.sim.reconstruct import load_sim_model
from napari_sim_uq.tasks.sim.train import MODEL_TYPE

pytestmark = pytest.mark.usefixtures("one_thread")

CFG = {"depth": 1, "base_channels": 8, "hr_factor": 2, "psf_size": 5, "dropout": 0.2}


def _ensemble(n: int = 3, **kw) -> SimUQEnsemble:
    ens = SimUQEnsemble(SimNetConfig(**{**CFG, **kw}), n)
    for i, m in enumerate(ens.members):  # distinct members
        g = torch.Generator().manual_seed(100 + i)
        with torch.no_grad():
            for p in m.parameters():
                p.add_(0.05 * torch.randn(p.shape, generator=g))
    return ens.eval()


def _frames(h=20, w=20, seed=1):
    return np.random.default_rng(seed).random((9, h, w), dtype=np.float32)


def test_ensemble_statistics_equal_the_members_run_one_by_one():
    ens, x = _ensemble(3), _frames()
    pred = predict_sim_sync(ens, x)
    singles = [predict_sim_sync(m, x) for m in ens.members]
    mus = np.stack([s.emitter for s in singles])
    sds = np.stack([s.emitter_std for s in singles])
    assert pred.meta["ensemble_members"] == 3 and pred.meta["mc_samples_drawn"] == 3
    np.testing.assert_allclose(pred.emitter, mus.mean(0), rtol=1e-5, atol=1e-6)
    # law of total variance over the members (population variance of the means)
    np.testing.assert_allclose(
        pred.emitter_aleatoric_std**2, (sds**2).mean(0), rtol=1e-4, atol=1e-9
    )
    np.testing.assert_allclose(pred.emitter_epistemic_std**2, mus.var(0), rtol=1e-3, atol=1e-9)
    np.testing.assert_allclose(
        pred.emitter_std**2, (sds**2).mean(0) + mus.var(0), rtol=1e-3, atol=1e-9
    )
    assert (pred.emitter_epistemic_std > 0).mean() > 0.99
    lps = np.stack([s.lp for s in singles])
    np.testing.assert_allclose(pred.lp, lps.mean(0), rtol=1e-5, atol=1e-6)


def test_ensemble_with_mc_dropout_draws_members_times_passes():
    ens = _ensemble(2)
    pred = predict_sim_sync(ens, _frames(), mc_samples=3, mc_batch=2)
    assert pred.meta["mc_samples_drawn"] == 6
    no_mc = predict_sim_sync(ens, _frames())
    # dropout adds spread within each member
    assert pred.emitter_epistemic_std.mean() > 0
    assert not np.allclose(pred.emitter, no_mc.emitter)


def test_tiled_ensemble_equals_whole_image():
    # the pooled PSF/background of the whole field reaches every tile, per member
    ens = _ensemble(2)
    tile = 2 * 40 + 6  # the automatic overlap of this model is 40
    x = _frames(tile + 30, tile + 10)
    whole = predict_sim_sync(ens, x)
    tiled = predict_sim_sync(ens, x, tile=tile)
    assert tiled.meta["n_tiles"] == 4 and tiled.meta["tiling_exact"]
    for q in ("emitter", "emitter_std", "emitter_epistemic_std", "psf", "rec"):
        np.testing.assert_allclose(getattr(tiled, q), getattr(whole, q), rtol=1e-4, atol=1e-5)


def _member_checkpoint(path, seed, **cfg_kw):
    torch.manual_seed(seed)
    net = SimUQNet(SimNetConfig(**{**CFG, **cfg_kw}))
    save_checkpoint(
        path,
        model_state=net.state_dict(),
        config={"model_type": MODEL_TYPE, "model": net.cfg.to_dict()},
        normalization={"mode": "percentile"},
        sigma_scale={"emitter": 0.5},
    )
    return net


def test_combined_checkpoint_loads_as_the_members(tmp_path):
    nets = [_member_checkpoint(tmp_path / f"m{i}.pt", i) for i in range(3)]
    import napari_sim_uq as squ  # the console function

    out = squ.ensemble_sim([tmp_path / f"m{i}.pt" for i in range(3)], tmp_path / "e.pt")
    model, ck = load_sim_model(out)
    assert isinstance(model, SimUQEnsemble) and model.n_members == 3
    assert ck.config["ensemble"]["members"] == 3
    assert ck.sigma_scale.get("emitter", 1.0) == 1.0  # members' calibration not carried over
    x = torch.from_numpy(_frames())[None]
    with torch.no_grad():
        both = model(x)
        for i, net in enumerate(nets):
            ref = net.eval()(x)
            torch.testing.assert_close(both.emitter[i : i + 1], ref.emitter)
    # the plain attributes are the members'
    assert model.hr_factor == 2 and model.receptive_radius == nets[0].receptive_radius


def test_combine_refuses_what_cannot_be_an_ensemble(tmp_path):
    _member_checkpoint(tmp_path / "a.pt", 0)
    _member_checkpoint(tmp_path / "b.pt", 1)
    _member_checkpoint(tmp_path / "wide.pt", 2, base_channels=12)
    with pytest.raises(InputError, match="at least 2"):
        combine_sim_checkpoints([tmp_path / "a.pt"], tmp_path / "e.pt")
    with pytest.raises(InputError, match="model configuration"):
        combine_sim_checkpoints([tmp_path / "a.pt", tmp_path / "wide.pt"], tmp_path / "e.pt")
    with pytest.raises(InputError, match="one of the members"):
        combine_sim_checkpoints([tmp_path / "a.pt", tmp_path / "b.pt"], tmp_path / "a.pt")
    c = load_checkpoint(tmp_path / "b.pt")
    save_checkpoint(
        tmp_path / "other_norm.pt",
        model_state=c.model_state,
        config=c.config,
        normalization={"mode": "minmax"},
    )
    with pytest.raises(InputError, match="normalises"):
        combine_sim_checkpoints([tmp_path / "a.pt", tmp_path / "other_norm.pt"], tmp_path / "e.pt")
    combine_sim_checkpoints([tmp_path / "a.pt", tmp_path / "b.pt"], tmp_path / "e.pt")
    with pytest.raises(InputError, match="already an ensemble"):
        combine_sim_checkpoints([tmp_path / "e.pt", tmp_path / "b.pt"], tmp_path / "e2.pt")
    # a.pt is untouched by the failed attempts
    assert load_checkpoint(tmp_path / "a.pt").sigma_scale["emitter"] == 0.5


def test_cli_ensemble_and_reconstruct(tmp_path, capsys):
    import tifffile

    for i in range(2):
        _member_checkpoint(tmp_path / f"m{i}.pt", i)
    args = ["ensemble", "--checkpoints", str(tmp_path / "m0.pt"), str(tmp_path / "m1.pt")]
    assert main([*args, "--out", str(tmp_path / "e.pt")]) == 0
    assert "2 members" in capsys.readouterr().out
    # not replaced without --overwrite
    assert main([*args, "--out", str(tmp_path / "e.pt")]) == 2
    assert "exists" in capsys.readouterr().err
    tifffile.imwrite(tmp_path / "s.tif", (_frames(24, 24) * 100).astype(np.float32))
    rc = main(
        [
            "reconstruct",
            "--checkpoint",
            str(tmp_path / "e.pt"),
            "--input",
            str(tmp_path / "s.tif"),
            "--out-dir",
            str(tmp_path / "o"),
            "--quiet",
        ]
    )
    assert rc == 0, capsys.readouterr().err
    # an ensemble gives the epistemic part without MC dropout
    assert (tmp_path / "o" / "s_emitter_epistemic_std.tif").exists()
    ep = tifffile.imread(tmp_path / "o" / "s_emitter_epistemic_std.tif")
    assert (ep > 0).mean() > 0.99


def test_an_ensemble_needs_two_members():
    with pytest.raises(InputError, match="at least 2 members"):
        SimUQEnsemble(SimNetConfig(**CFG), 1)


def test_cli_train_ensemble_trains_members_with_their_own_seeds(tmp_path, capsys):
    from napari_sim_uq.tasks.sim.synth import SynthConfig, generate_dataset

    run(generate_dataset(tmp_path / "d", 2, SynthConfig(lr_size=(24, 24), hr_factor=2), workers=1))
    base = ["train", "--train-glob", str(tmp_path / "d" / "train" / "*.tif"), "--epochs", "1"]
    base += ["--batch-size", "2", "--base-channels", "8", "--depth", "1", "--psf-size", "5"]
    base += ["--device", "cpu", "--quiet", "--seed", "7"]
    assert main([*base, "--ckpt-dir", str(tmp_path / "c1"), "--ensemble", "1"]) == 0
    assert not (tmp_path / "c1" / "ensemble.pt").exists()  # one network: as before
    assert main([*base, "--ckpt-dir", str(tmp_path / "ck"), "--ensemble", "2"]) == 0
    out = capsys.readouterr().out
    assert "member 2/2 (seed 8)" in out and "ensemble of 2 members" in out
    seeds = [load_checkpoint(tmp_path / "ck" / f"member_{i}" / "best.pt") for i in range(2)]
    assert [c.config["train"]["seed"] for c in seeds] == [7, 8]
    assert load_checkpoint(tmp_path / "c1" / "best.pt").config["train"]["seed"] == 7
    w = "emitter_head.weight"  # different initialisations
    assert not torch.equal(seeds[0].model_state[w], seeds[1].model_state[w])
    model, ck = load_sim_model(tmp_path / "ck" / "ensemble.pt")
    assert model.n_members == 2
    assert main([*base, "--ckpt-dir", str(tmp_path / "bad"), "--ensemble", "0"]) == 2
    assert "at least 2" in capsys.readouterr().err


def test_console_train_sim_ensemble_is_the_cli_job(tmp_path):
    """``napari_sim_uq.train_sim(..., ensemble=2)`` trains the members with their own seeds
    and writes the combined checkpoint, as ``sim-uq train --ensemble 2``; fewer than 2
    members is a clear error before any training."""
    from napari_sim_uq.api import train_sim
    from napari_sim_uq.tasks.sim.synth import SynthConfig, generate_dataset

    run(generate_dataset(tmp_path / "d", 2, SynthConfig(lr_size=(24, 24), hr_factor=2), workers=1))
    opts = dict(
        epochs=1, batch_size=2, device="cpu", seed=3, model={"base_channels": 8, "depth": 1}
    )
    glob = str(tmp_path / "d" / "train" / "*.tif")
    res = train_sim(glob, tmp_path / "ck", ensemble=2, **opts)
    assert [r["ckpt_dir"] for r in res["members"]] == [
        str(tmp_path / "ck" / f"member_{i}") for i in range(2)
    ]
    seeds = [
        load_checkpoint(r["best"] or r["latest"]).config["train"]["seed"] for r in res["members"]
    ]
    assert seeds == [3, 4]
    model, _ = load_sim_model(res["ensemble"])
    assert model.n_members == 2
    with pytest.raises(InputError, match="at least 2 members"):
        train_sim(glob, tmp_path / "bad", ensemble=0, **opts)
    assert not (tmp_path / "bad").exists()
