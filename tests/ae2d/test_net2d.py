"""The 2D autoencoders: config, shapes, dropout placement, MC-dropout modes, upsampling
without checkerboard, input errors."""

from __future__ import annotations

import argparse
from dataclasses import fields

import pytest
import torch
from torch import nn
from torch.nn.modules.dropout import _DropoutNd

from napari_sim_uq.core.config import add_config_arguments, config_from_args, option_meta
from napari_sim_uq.core.errors import InputError
from napari_sim_uq.core.nn.modes import eval_mode, mc_dropout_mode
from napari_sim_uq.tasks.ae2d.net import AE2DConfig, AEOutput, ConvAE, UNet2D, build_model

pytestmark = pytest.mark.usefixtures("one_thread")

TINY = {"base_channels": 4, "depth": 2}


def tiny(**kw) -> nn.Module:
    return build_model({**TINY, **kw})


# ----------------------------------------------------------------------------- config


def test_config_defaults_and_round_trip():
    cfg = AE2DConfig()
    assert (cfg.arch, cfg.model, cfg.aleatoric) == ("unet", "mc-dropout", True)
    assert (cfg.base_channels, cfg.depth, cfg.dropout, cfg.in_channels) == (32, 3, 0.1, 1)
    assert AE2DConfig.from_dict(cfg.to_dict()) == cfg
    other = AE2DConfig(arch="conv-ae", model="hetero", aleatoric=False, dropout=0.0)
    assert AE2DConfig.from_dict(other.to_dict()) == other


def test_every_field_has_help_and_the_choices_are_declared():
    for f in fields(AE2DConfig):
        meta = option_meta(f)
        assert meta is not None and meta["help"], f.name
    by_name = {f.name: option_meta(f) for f in fields(AE2DConfig)}
    assert tuple(by_name["arch"]["choices"]) == ("unet", "conv-ae")
    assert tuple(by_name["model"]["choices"]) == ("mc-dropout", "hetero")


def test_config_from_command_line_options():
    parser = argparse.ArgumentParser()
    add_config_arguments(parser, AE2DConfig)
    assert config_from_args(AE2DConfig, parser.parse_args([])) == AE2DConfig()
    args = parser.parse_args(["--arch", "conv-ae", "--no-aleatoric", "--depth", "2"])
    cfg = config_from_args(AE2DConfig, args)
    assert (cfg.arch, cfg.aleatoric, cfg.depth) == ("conv-ae", False, 2)


@pytest.mark.parametrize(
    ("kw", "match"),
    [
        ({"arch": "resnet"}, "arch must be one of"),
        ({"model": "vae"}, "model must be one of"),
        ({"aleatoric": "yes"}, "aleatoric must be true or false"),
        ({"depth": 0}, "depth must be an integer"),
        ({"depth": 2.5}, "depth must be an integer"),
        ({"base_channels": 2}, "base_channels must be an integer >= 4"),
        ({"in_channels": 0}, "in_channels"),
        ({"dropout": 1.0}, r"dropout must lie in \[0, 1\)"),
        ({"dropout": float("nan")}, "dropout must be a finite number"),
        ({"logvar_min": 1.0, "logvar_max": 0.0}, "logvar_min must be < logvar_max"),
        ({"logvar_init": 10.0}, "logvar_init must lie strictly between"),
    ],
)
def test_bad_config_is_a_clear_error(kw, match):
    with pytest.raises(InputError, match=match):
        AE2DConfig(**kw)


def test_unknown_config_key_is_an_error():
    with pytest.raises(InputError, match="unknown autoencoder parameters"):
        build_model({"arch": "unet", "depht": 2})


# ----------------------------------------------------------------------------- shapes


@pytest.mark.parametrize("arch", ["unet", "conv-ae"])
@pytest.mark.parametrize("size", [(8, 8), (16, 24), (32, 12)])
def test_output_shapes(arch, size):
    model = tiny(arch=arch)
    x = torch.rand(2, 1, *size)
    with eval_mode(model), torch.no_grad():
        out = model(x)
    assert isinstance(out, AEOutput)
    assert out.mean.shape == x.shape and out.logvar.shape == x.shape
    assert torch.isfinite(out.mean).all() and (out.var > 0).all()
    # the variance head starts at logvar_init everywhere
    torch.testing.assert_close(out.logvar, torch.full_like(x, AE2DConfig().logvar_init))


def test_heads_follow_the_config():
    assert isinstance(tiny(arch="conv-ae"), ConvAE) and isinstance(tiny(), UNet2D)
    x = torch.rand(1, 1, 8, 8)
    assert tiny(aleatoric=False)(x).logvar is None
    assert tiny(aleatoric=False)(x).var is None
    # the heteroscedastic model always has a variance head
    assert tiny(model="hetero", aleatoric=False)(x).logvar is not None
    out = tiny(arch="conv-ae", in_channels=3)(torch.rand(1, 3, 8, 8))
    assert out.mean.shape == out.logvar.shape == (1, 3, 8, 8)
    assert ((out.mean > 0) & (out.mean < 1)).all()  # sigmoid mean


def test_logvar_stays_in_the_clamp_range():
    model = tiny(logvar_min=-3.0, logvar_max=1.0, logvar_init=-1.0)
    with torch.no_grad():
        model.logvar_head.conv.bias.fill_(50.0)
        hi = model(torch.rand(1, 1, 8, 8)).logvar
        model.logvar_head.conv.bias.fill_(-50.0)
        lo = model(torch.rand(1, 1, 8, 8)).logvar
    assert float(hi.max()) <= 1.0 and float(hi.min()) > 0.9
    assert float(lo.min()) >= -3.0 and float(lo.max()) < -2.9


def test_size_multiple():
    assert tiny().multiple == tiny().min_size == 4
    assert build_model({"depth": 3}).multiple == 8
    assert tiny(arch="conv-ae").multiple == 4


# ----------------------------------------------------------------------------- structure


def _dropouts(module: nn.Module) -> list[nn.Module]:
    return [m for m in module.modules() if isinstance(m, _DropoutNd)]


def test_conv_ae_has_dropout_in_the_encoder_only():
    model = tiny(arch="conv-ae", dropout=0.2)
    assert len(_dropouts(model.encoder)) == 3
    assert len(_dropouts(model)) == 3  # none in the decoder or the heads
    assert not _dropouts(model.decoder)
    # 128 -> 64 -> 32 channels for the default width
    convs = [m for m in ConvAE().encoder if isinstance(m, nn.Conv2d)]
    assert [c.out_channels for c in convs] == [128, 64, 32]
    assert any(isinstance(m, nn.ConvTranspose2d) for m in model.decoder)


def test_unet_has_dropout2d_in_encoder_and_decoder_and_no_transposed_conv():
    model = tiny(dropout=0.2)
    assert not any(isinstance(m, nn.ConvTranspose2d) for m in model.modules())
    drops = _dropouts(model)
    assert drops and all(isinstance(m, nn.Dropout2d) and m.p == 0.2 for m in drops)
    assert _dropouts(model.down) and _dropouts(model.up)


@pytest.mark.parametrize("arch", ["unet", "conv-ae"])
def test_mc_dropout_passes_differ_and_eval_passes_agree(arch):
    model = tiny(arch=arch, dropout=0.3)
    x = torch.rand(2, 1, 16, 16)
    with torch.no_grad():
        with mc_dropout_mode(model) as m:
            a, b = m(x).mean, m(x).mean
        assert not torch.allclose(a, b)
        with eval_mode(model) as m:
            c, d = m(x), m(x)
        torch.testing.assert_close(c.mean, d.mean)
        torch.testing.assert_close(c.logvar, d.logvar)
    assert model.training  # modes restored


def _nyquist_fraction(y: torch.Tensor) -> float:
    """Share of the image's variance (the spectrum without DC, which a near-constant output
    dominates) on the Nyquist row and column: 1 for a pure 2-periodic pattern, about
    ``(H + W - 1) / (H W)`` for white noise."""
    p = torch.fft.fft2(y - y.mean()).abs().square()
    h, w = y.shape
    nyq = p[h // 2, :].sum() + p[:, w // 2].sum() - p[h // 2, w // 2]
    return float(nyq / p.sum())


def _constant_response(seed: int, **kw) -> torch.Tensor:
    """Interior (away from the zero padding) of a fresh model's mean for a constant input."""
    torch.manual_seed(seed)
    model = tiny(**kw)
    x = torch.full((1, 1, 64, 64), 0.5)
    with torch.no_grad(), eval_mode(model):
        return model(x).mean[0, 0, 8:-8, 8:-8]


def test_no_checkerboard_at_initialisation():
    seeds = range(4)
    # the resize + conv U-Net has no 2-periodic pattern (white noise: about 4 % there) ...
    for seed in seeds:
        assert _nyquist_fraction(_constant_response(seed)) < 0.1, seed
    # ... while the transposed convolutions of the conv AE paint one (the measure works)
    control = [
        _nyquist_fraction(_constant_response(s, arch="conv-ae", base_channels=8)) for s in seeds
    ]
    assert sum(control) / len(control) > 0.25, control


# ----------------------------------------------------------------------------- input errors


@pytest.mark.parametrize("arch", ["unet", "conv-ae"])
def test_input_errors(arch):
    model = tiny(arch=arch)
    with pytest.raises(InputError, match=r"built for 1 input channel\(s\), got 3"):
        model(torch.rand(1, 3, 8, 8))
    with pytest.raises(InputError, match=r"too small \(4 x 2 pixels\).*at least 4 x 4"):
        model(torch.rand(1, 1, 4, 2))
    with pytest.raises(InputError, match="multiples of 4, got 8 x 10; pad"):
        model(torch.rand(1, 1, 8, 10))
    with pytest.raises(InputError, match=r"shape \(B, C, H, W\)"):
        model(torch.rand(1, 8, 8))
    with pytest.raises(InputError, match="floating-point"):
        model(torch.ones(1, 1, 8, 8, dtype=torch.int64))
