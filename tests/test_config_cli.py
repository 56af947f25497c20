"""The ``train`` and ``generate`` options are built from the config dataclasses' field
metadata (``napari_sim_uq.core.config.option``): same flags, same defaults, checked ranges."""

from __future__ import annotations

import argparse
import math
import subprocess
import sys
from dataclasses import dataclass, fields

import pytest

from napari_sim_uq import cli
from napari_sim_uq.core.config import (
    JsonConfig,
    add_config_arguments,
    cli_fields,
    config_from_args,
    field_default,
    option,
    option_choices,
    option_meta,
)
from napari_sim_uq.core.errors import InputError
from napari_sim_uq.tasks.sim.loss import AUX_REC_MODES, SimLossConfig
from napari_sim_uq.tasks.sim.net import UQ_TARGETS, VAR_SPACES, SimNetConfig
from napari_sim_uq.tasks.sim.synth import SynthConfig
from napari_sim_uq.tasks.sim.train import TrainConfig

# The flags of `sim-uq train --help` and `sim-uq generate --help` before their options were
# built from the dataclasses (captured from the hand-written parser).
OLD_TRAIN_FLAGS = {
    "--train-glob", "--ckpt-dir", "--val-glob", "--epochs", "--batch-size", "--lr",
    "--lr-schedule", "--device", "--resume", "--seed", "--crop", "--max-steps", "--supervised",
    "--gt-norm", "--hr-factor", "--base-channels", "--depth", "--dropout", "--psf-size",
    "--uq-targets", "--uq-logvar-init", "--uq-logvar-min", "--uq-logvar-max", "--uq-var-space",
    "--uq-var-floor", "--uq-psf-var-weight", "--uq-aux-rec-weight", "--uq-aux-rec-mode",
    "--beta-nll", "--camera-init", "--debug-every-epochs", "--debug-samples", "--quiet",
    # added since (issue 15)
    "--uq-sup-var-only", "--uq-structure-weight",
    # issue 16: the instrument's light patterns
    "--patterns",
    # issue 15: deep ensembles
    "--ensemble",
}  # fmt: skip
OLD_TRAIN_GROUPS = {
    "model": {
        "--hr-factor", "--base-channels", "--depth", "--dropout", "--psf-size", "--uq-targets",
        "--uq-logvar-init", "--uq-logvar-min", "--uq-logvar-max", "--uq-var-space",
        "--patterns",
    },
    "loss": {
        "--uq-var-floor", "--uq-psf-var-weight", "--uq-aux-rec-weight", "--uq-aux-rec-mode",
        "--beta-nll", "--camera-init", "--uq-sup-var-only", "--uq-structure-weight",
    },
    "debug output": {"--debug-every-epochs", "--debug-samples"},
}  # fmt: skip
OLD_GENERATE_FLAGS = {
    "--out-dir", "--n-samples", "--lr-size", "--hr-factor", "--seed", "--split", "--angles",
    "--phases", "--modulation", "--period", "--psf-sigma", "--photons", "--background",
    "--read-noise", "--noise-regions", "--noise-factor", "--workers", "--overwrite", "--quiet",
    # added since (issue 15: data made differently from the training data)
    "--psf-model", "--line-width",
    # issue 16: one instrument per dataset
    "--fixed-instrument", "--instrument-seed", "--match",
}  # fmt: skip
# options of `generate` that are not generator parameters
GENERATE_OWN = {"out_dir", "n_samples", "seed", "split", "workers", "overwrite", "quiet", "match"}

TRAIN_REQUIRED = ["train", "--train-glob", "D/train/*.tif", "--ckpt-dir", "ck"]
GENERATE_REQUIRED = ["generate", "--out-dir", "D", "--n-samples", "2"]


def _sub(name: str) -> argparse.ArgumentParser:
    parser = cli.build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return sub.choices[name].ensure_arguments()


def _options(p: argparse.ArgumentParser) -> dict[str, argparse.Action]:
    """``{dest: action}`` of the options (not -h)."""
    return {a.dest: a for a in p._actions if a.option_strings and a.dest != "help"}


def _flags(p: argparse.ArgumentParser) -> set[str]:
    return {s for a in _options(p).values() for s in a.option_strings}


def _parse(argv):
    return cli.build_parser().parse_args(argv)


# ----------------------------------------------------------------------- (a) defaults


def test_train_defaults_are_the_dataclass_defaults():
    args = _parse(TRAIN_REQUIRED)
    cfg = cli._train_config(args)
    # documented CLI-specific values: train_glob and ckpt_dir are required options
    expected = TrainConfig(train_glob="D/train/*.tif", ckpt_dir="ck")
    for f in fields(TrainConfig):
        if f.name in ("model", "loss"):
            continue
        assert getattr(cfg, f.name) == getattr(expected, f.name), f.name
    # model and loss: exactly the exposed fields, at the dataclass defaults
    assert set(cfg.model) == {f.name for f in cli_fields(SimNetConfig)}
    assert set(cfg.loss) == {f.name for f in cli_fields(SimLossConfig)}
    for cls, given in ((SimNetConfig, cfg.model), (SimLossConfig, cfg.loss)):
        default = cls()
        for name, v in given.items():
            assert v == getattr(default, name), f"{cls.__name__}.{name}"
        assert cls.from_dict(given) == default
    assert args.quiet is False


def test_train_base_channels_default_agrees_with_the_model():
    args = _parse(TRAIN_REQUIRED)
    assert args.base_channels == SimNetConfig().base_channels == 32


def test_generate_defaults_are_the_dataclass_defaults():
    args = _parse(GENERATE_REQUIRED)
    cfg = config_from_args(SynthConfig, args)
    default = SynthConfig()
    for f in fields(SynthConfig):
        assert getattr(cfg, f.name) == getattr(default, f.name), f.name
    assert cfg == default
    assert (args.seed, args.split, args.workers, args.overwrite, args.quiet) == (
        0,
        "train",
        None,
        False,
        False,
    )


def test_given_values_reach_the_configs():
    args = _parse(
        [
            *TRAIN_REQUIRED,
            "--epochs", "3", "--max-steps", "7", "--supervised", "--gt-norm", "percentile",
            "--uq-targets", "psf, emitter", "--uq-logvar-init", "-3", "--uq-var-space", "logit",
            "--uq-aux-rec-mode", "ms-ssim", "--beta-nll", "0.5", "--camera-init", "fixed",
            "--debug-every-epochs", "2",
        ]
    )  # fmt: skip
    cfg = cli._train_config(args)
    assert (cfg.epochs, cfg.max_steps, cfg.supervised, cfg.gt_norm) == (3, 7, True, "percentile")
    assert (cfg.camera_init, cfg.debug_every_epochs) == ("fixed", 2)
    assert cfg.model["uq_targets"] == ("psf", "emitter")
    assert SimNetConfig.from_dict(cfg.model).uq_targets == ("emitter", "psf")
    assert (cfg.model["logvar_init"], cfg.model["var_space"]) == (-3.0, "logit")
    assert (cfg.loss["aux_rec_mode"], cfg.loss["beta_nll"]) == ("ms-ssim", 0.5)

    args = _parse([*GENERATE_REQUIRED, "--lr-size", "64", "--modulation", "0.2", "0.4"])
    cfg = config_from_args(SynthConfig, args)
    assert cfg.lr_size == (64, 64) and cfg.modulation == (0.2, 0.4)
    assert config_from_args(SynthConfig, args, n_angles=5).n_angles == 5


# ----------------------------------------------------------------------- (b) fields <-> flags


def test_every_train_flag_is_a_field_and_every_exposed_field_has_a_flag():
    opts = _options(_sub("train"))
    exposed = {
        f.name for cls in (TrainConfig, SimNetConfig, SimLossConfig) for f in cli_fields(cls)
    }
    assert set(opts) - {"quiet", "ensemble"} == exposed  # CLI-only: a loop over seeds
    # the dataclass's flag metadata is the flag used
    for cls in (TrainConfig, SimNetConfig, SimLossConfig):
        for f in cli_fields(cls):
            flag = option_meta(f)["flag"] or "--" + f.name.replace("_", "-")
            assert opts[f.name].option_strings == [flag]


def test_every_generate_flag_is_a_field_and_every_exposed_field_has_a_flag():
    opts = _options(_sub("generate"))
    assert set(opts) - GENERATE_OWN == {f.name for f in cli_fields(SynthConfig)}
    assert opts["n_angles"].option_strings == ["--angles"]
    assert opts["psf_sigma_lr"].option_strings == ["--psf-sigma"]


def test_option_metadata_matches_the_module_constants():
    from napari_sim_uq.tasks.sim.dataset import GT_NORMS

    meta = {f.name: option_meta(f) for f in fields(TrainConfig) if option_meta(f)}
    assert option_choices(meta["gt_norm"]) == GT_NORMS
    net = {f.name: option_meta(f) for f in cli_fields(SimNetConfig)}
    assert option_choices(net["var_space"]) == VAR_SPACES
    assert option_choices(net["uq_targets"]) == UQ_TARGETS
    loss = {f.name: option_meta(f) for f in cli_fields(SimLossConfig)}
    assert option_choices(loss["aux_rec_mode"]) == AUX_REC_MODES


@pytest.mark.parametrize("cls", [TrainConfig, SimNetConfig, SimLossConfig, SynthConfig])
def test_metadata_bounds_are_not_stricter_than_the_validation(cls):
    """Just outside a metadata bound the dataclass itself refuses the value, so the command
    line refuses nothing the Python API accepts."""
    base = {"train_glob": "x/*.tif"} if cls is TrainConfig else {}
    for f in cli_fields(cls):
        meta = option_meta(f)
        default = field_default(f)
        for bound, step in ((meta["minimum"], -1), (meta["maximum"], 1)):
            if bound is None:
                continue
            item = default[0] if isinstance(default, tuple) else default
            if isinstance(item, int):
                bad = bound + step
            else:
                bad = math.nextafter(bound, bound + step) if bound else step * 1e-9
            value = (bad,) * len(default) if isinstance(default, tuple) else bad
            with pytest.raises(InputError):
                cfg = cls(**base, **{f.name: value})
                cfg.validate()  # TrainConfig validates on demand


def test_metadata_leaves_json_round_trip_and_equality_alone():
    for cls in (SynthConfig, SimNetConfig, SimLossConfig):
        assert cls.from_dict(cls().to_dict()) == cls()
    t = TrainConfig(train_glob="x", model={"depth": 2})
    assert TrainConfig.from_dict(t.to_dict()) == t
    assert TrainConfig().model == {} and TrainConfig().model is not TrainConfig().model


# ----------------------------------------------------------------------- (c) ranges, choices


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--epochs", "0"], "argument --epochs: must be >= 1, got 0"),
        (["--epochs", "1.5"], "argument --epochs: invalid int value: '1.5'"),
        (["--dropout", "1.5"], "argument --dropout: must be in [0, 1], got 1.5"),
        (["--dropout", "nan"], "argument --dropout: must be a finite number"),
        (["--depth", "9"], "argument --depth: must be in [1, 8], got 9"),
        (["--max-steps", "0"], "argument --max-steps: must be >= 1, got 0"),
        (["--gt-norm", "bogus"], "argument --gt-norm: invalid choice: 'bogus'"),
        (["--uq-var-space", "x"], "argument --uq-var-space: invalid choice: 'x'"),
        (["--uq-targets", "emitter,foo"], "argument --uq-targets: invalid choice: 'foo'"),
        (["--uq-aux-rec-mode", "l2"], "argument --uq-aux-rec-mode: invalid choice: 'l2'"),
        (["--beta-nll", "2"], "argument --beta-nll: must be in [0, 1], got 2"),
        (["--debug-samples", "0"], "argument --debug-samples: must be >= 1, got 0"),
    ],
)
def test_train_out_of_range_or_choice_is_an_argparse_error(argv, message, capsys):
    with pytest.raises(SystemExit) as exc:
        _parse(TRAIN_REQUIRED + argv)
    assert exc.value.code == 2
    assert message in capsys.readouterr().err


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--lr-size", "4"], "argument --lr-size: must be >= 8, got 4"),
        (["--modulation", "0.5", "1.5"], "argument --modulation: must be in [0, 1], got 1.5"),
        (["--angles", "0"], "argument --angles: must be >= 1, got 0"),
        (["--noise-regions", "-1"], "argument --noise-regions: must be >= 0, got -1"),
        (["--period", "1"], "argument --period: expected 2 arguments"),
    ],
)
def test_generate_out_of_range_is_an_argparse_error(argv, message, capsys):
    with pytest.raises(SystemExit) as exc:
        cli.main(GENERATE_REQUIRED + argv)
    assert exc.value.code == 2
    assert message in capsys.readouterr().err


# ----------------------------------------------------------------------- (d) same flags


def test_train_help_lists_the_same_flags_in_the_same_groups(capsys):
    p = _sub("train")
    assert _flags(p) == OLD_TRAIN_FLAGS
    groups = {
        g.title: {s for a in g._group_actions for s in a.option_strings} for g in p._action_groups
    }
    for title, flags in OLD_TRAIN_GROUPS.items():
        assert groups[title] == flags
    with pytest.raises(SystemExit) as exc:
        cli.main(["train", "--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    for title in OLD_TRAIN_GROUPS:
        assert f"\n{title}:\n" in out
    listed = {w.strip("[],") for w in out.split() if w.strip("[],").startswith("--")}
    assert OLD_TRAIN_FLAGS <= listed


def test_generate_help_lists_the_same_flags(capsys):
    assert _flags(_sub("generate")) == OLD_GENERATE_FLAGS
    with pytest.raises(SystemExit):
        cli.main(["generate", "--help"])
    out = capsys.readouterr().out
    assert "--lr-size H [W ...]" in out and "--modulation LO HI" in out
    assert "(default: 0.6 0.9)" in out


def test_building_the_parser_does_not_import_torch():
    code = (
        "import sys; from napari_sim_uq.cli import build_parser; build_parser(); "
        "assert 'torch' not in sys.modules, 'torch imported'"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr


# ----------------------------------------------------------------------- the helpers


@dataclass
class _Toy(JsonConfig):
    n: int = option(3, help="a count", minimum=0)
    size: int | None = option(None, help="optional size", minimum=1)
    on: bool = option(False, help="switch on")
    off: bool = option(True, help="switch off", flag="--no-off")
    pair: tuple[float, float] = option((0.0, 1.0), help="a range")
    names: tuple[str, ...] = option(("a",), help="names", choices=("a", "b"), sep=",")
    items: list = option([1, 2], cli=False)
    hidden: int = 5


def test_add_config_arguments_types_and_round_trip():
    p = argparse.ArgumentParser()
    added = add_config_arguments(p, _Toy)
    assert added == {
        "n": "--n",
        "size": "--size",
        "on": "--on",
        "off": "--no-off",
        "pair": "--pair",
        "names": "--names",
    }
    assert config_from_args(_Toy, p.parse_args([])) == _Toy()
    cfg = config_from_args(
        _Toy,
        p.parse_args(
            ["--n", "0", "--size", "4", "--on", "--no-off", "--pair", "2", "3", "--names", "b,a"]
        ),
    )
    assert cfg == _Toy(n=0, size=4, on=True, off=False, pair=(2.0, 3.0), names=("b", "a"))
    assert _Toy().items == [1, 2] and _Toy().items is not _Toy().items
    help_text = p.format_help()
    assert "a count (default: 3)" in help_text and "--pair LO HI" in help_text


def test_add_config_arguments_prefix_include_exclude_and_mistakes():
    p = argparse.ArgumentParser()
    added = add_config_arguments(p, _Toy, prefix="toy-", include=("n", "pair"))
    assert added == {"n": "--toy-n", "pair": "--toy-pair"}
    args = p.parse_args(["--toy-n", "2"])
    assert args.toy_n == 2
    assert config_from_args(_Toy, args, prefix="toy-") == _Toy(n=2)
    with pytest.raises(ValueError, match="not fields"):
        add_config_arguments(argparse.ArgumentParser(), _Toy, exclude=("nope",))
    with pytest.raises(ValueError, match="already stores"):
        add_config_arguments(p, _Toy, prefix="toy-", include=("n",), flags={"n": "--other"})


def test_a_field_without_default_is_a_required_option():
    @dataclass
    class _Req:
        name: str = option(help="a name")
        k: int = option(1, help="k")

    p = argparse.ArgumentParser()
    add_config_arguments(p, _Req)
    assert config_from_args(_Req, p.parse_args(["--name", "x"])) == _Req(name="x")
    with pytest.raises(SystemExit):
        p.parse_args([])
