"""Checkpoints: round trip, refusal to execute code, clear errors, atomic writes."""

from __future__ import annotations

import collections
import os
import pickle
import struct

import numpy as np
import pytest
import torch
from torch import nn

from napari_sim_uq._version import __version__
from napari_sim_uq.core.errors import FileFormatError, InputError
from napari_sim_uq.core.io import checkpoint as ck
from napari_sim_uq.core.io.checkpoint import (
    FORMAT_MARKER,
    FORMAT_VERSION,
    Checkpoint,
    checkpoint_summary,
    config_hash,
    load_checkpoint,
    save_checkpoint,
    update_sigma_scale,
)

CONFIG = {"model_type": "sim_uq_net", "channels": 4, "hr_factor": 2, "optim": {"lr": 1e-2}}
SIGMA = {"emitter": 1.5, "lp": 0.8, "raw": 1.0}


def _model(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(),
                         nn.Conv2d(4, 1, 1))  # fmt: skip


def _train_steps(model, opt, sched, x, n):
    for _ in range(n):
        opt.zero_grad()
        loss = (model(x) - x).square().mean()
        loss.backward()
        opt.step()
        sched.step()
    return loss


def _save_small(path, **kw):
    model = _model()
    args = {"model_state": model.state_dict(), "config": CONFIG, "sigma_scale": SIGMA}
    args.update(kw)
    return save_checkpoint(path, **args)


def _files(folder):
    return sorted(os.listdir(folder))


def _assert_states_equal(got, want, where="state"):
    """Nested dicts of tensors (state_dicts) equal bit for bit, key for key."""
    assert list(got) == list(want), where
    for key, value in want.items():
        if isinstance(value, dict):
            _assert_states_equal(got[key], value, f"{where}[{key!r}]")
        elif isinstance(value, torch.Tensor):
            assert torch.equal(got[key], value), f"{where}[{key!r}]"
        else:
            assert got[key] == value, f"{where}[{key!r}]"


# --------------------------------------------------------------------------- round trip


def test_round_trip_resumes_model_and_optimizer_exactly(tmp_path):
    x = torch.randn(2, 1, 8, 8, generator=torch.Generator().manual_seed(1))
    model = _model(0)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=2, gamma=0.5)
    loss = _train_steps(model, opt, sched, x, 3)
    path = save_checkpoint(
        tmp_path / "a.pt",
        model_state=model.state_dict(),
        optimizer_state=opt.state_dict(),
        scheduler_state=sched.state_dict(),
        config=CONFIG,
        normalization={"rule": "percentile", "low": 0.5, "high": 99.5},
        sigma_scale=SIGMA,
        train_state={"epoch": 3, "step": 3, "best_metric": loss},  # a 0-d tensor
        extra={"note": "hello"},
    )
    ckpt = load_checkpoint(path, expected_model_type="sim_uq_net")

    model2 = _model(7)  # different initial weights
    opt2 = torch.optim.Adam(model2.parameters(), lr=0.5)
    sched2 = torch.optim.lr_scheduler.StepLR(opt2, step_size=5, gamma=0.1)
    model2.load_state_dict(ckpt.model_state)
    opt2.load_state_dict(ckpt.optimizer_state)
    sched2.load_state_dict(ckpt.scheduler_state)
    # what is restored is bit for bit what was saved (a file round trip of the same values)
    _assert_states_equal(model2.state_dict(), model.state_dict())
    _assert_states_equal(opt2.state_dict()["state"], opt.state_dict()["state"])
    assert opt2.state_dict()["param_groups"] == opt.state_dict()["param_groups"]
    assert sched2.state_dict() == sched.state_dict()
    # what is computed from it is compared up to float32 rounding, not bit for bit (issue 11);
    # a state restored wrongly (weights, BatchNorm statistics, Adam moments or step count,
    # learning rate) is far outside these tolerances
    model.eval(), model2.eval()
    torch.testing.assert_close(model2(x), model(x), rtol=1e-5, atol=1e-6)
    model.train(), model2.train()
    _train_steps(model, opt, sched, x, 2)  # the next steps are the same too
    _train_steps(model2, opt2, sched2, x, 2)
    for (name, a), b in zip(model.state_dict().items(), model2.state_dict().values(), strict=True):
        torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-6, msg=lambda m, n=name: f"{n}: {m}")
    assert opt2.param_groups[0]["lr"] == opt.param_groups[0]["lr"] == pytest.approx(2.5e-3)

    assert ckpt.config == CONFIG and ckpt.model_type == "sim_uq_net"
    assert ckpt.sigma_scale == SIGMA
    assert ckpt.normalization == {"rule": "percentile", "low": 0.5, "high": 99.5}
    assert ckpt.train_state["best_metric"] == pytest.approx(loss.item())
    assert type(ckpt.train_state["best_metric"]) is float
    assert ckpt.epoch == 3 and ckpt.step == 3 and ckpt.extra == {"note": "hello"}
    assert ckpt.package_version == __version__ and ckpt.format_version == FORMAT_VERSION
    assert ckpt.config_hash == config_hash(CONFIG) and ckpt.path == path
    # module versions (used by BatchNorm when loading old state dicts) survive
    assert (
        ckpt.model_state._metadata["1"]["version"] == model.state_dict()._metadata["1"]["version"]
    )
    assert _files(tmp_path) == ["a.pt"]


def test_modules_and_optimizers_are_accepted_directly(tmp_path):
    model = _model()
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    save_checkpoint(tmp_path / "m.pt", model_state=model, optimizer_state=opt, config=CONFIG)
    ckpt = load_checkpoint(tmp_path / "m.pt")
    assert ckpt.model_state.keys() == model.state_dict().keys()
    assert ckpt.optimizer_state["param_groups"][0]["momentum"] == 0.9
    assert ckpt.scheduler_state is None and ckpt.sigma_scale == {}


def test_everything_the_converter_emits_loads_with_weights_only(tmp_path):
    extra = {
        "tensors": [
            torch.zeros(2, dtype=dt)
            for dt in (torch.float16, torch.int64, torch.bool, torch.complex64, torch.uint8)
        ],
        "param": nn.Parameter(torch.ones(2)),
        "meta": (torch.float32, torch.device("cpu"), torch.Size([2, 3])),
        "scalars": [None, True, 3, 2.5, float("inf"), 1 + 2j, b"raw", "s"],
        "set": {1, 2},
        "frozen": frozenset({3}),
        "nested": collections.OrderedDict(a={(1, "b"): [()]}),
        "array": np.arange(6, dtype=">i4").reshape(2, 3)[:, ::-1],
    }
    save_checkpoint(tmp_path / "k.pt", model_state={}, config=CONFIG, extra=extra)
    got = load_checkpoint(tmp_path / "k.pt").extra
    assert [t.dtype for t in got["tensors"]] == [t.dtype for t in extra["tensors"]]
    assert type(got["param"]) is torch.Tensor
    assert got["meta"] == extra["meta"] and type(got["meta"][2]) is torch.Size
    assert got["scalars"] == extra["scalars"]
    assert got["set"] == {1, 2} and got["frozen"] == {3}
    assert got["nested"] == {"a": {(1, "b"): [()]}}
    assert torch.equal(got["array"], torch.tensor([[2, 1, 0], [5, 4, 3]], dtype=torch.int32))


# --------------------------------------------------------------------------- conversion


def test_numpy_values_are_converted(tmp_path):
    config = {
        "model_type": np.str_("sim_uq_net"),
        "lr": np.float32(0.25),
        "epochs": np.int64(4),
        "flag": np.bool_(True),
        "shape": (np.int64(3), 3),
        "weights": np.array([1.0, 2.0]),
    }
    norm = {"mean": np.array([0.5, 0.25], dtype=np.float32), "max": np.uint16(4095)}
    save_checkpoint(
        tmp_path / "n.pt",
        model_state={"w": np.ones(3, dtype=np.float32)},
        config=config,
        normalization=norm,
        sigma_scale={"emitter": np.float64(2.0)},
        train_state={"epoch": np.int32(2)},
    )
    ckpt = load_checkpoint(tmp_path / "n.pt")
    expected = {"model_type": "sim_uq_net", "lr": 0.25, "epochs": 4, "flag": True,
                "shape": [3, 3], "weights": [1.0, 2.0]}  # fmt: skip
    assert ckpt.config == expected
    assert [type(v) for v in ckpt.config.values()] == [str, float, int, bool, list, list]
    assert ckpt.normalization == {"mean": [0.5, 0.25], "max": 4095}
    assert type(ckpt.normalization["max"]) is int
    assert ckpt.sigma_scale == {"emitter": 2.0} and type(ckpt.sigma_scale["emitter"]) is float
    assert ckpt.train_state == {"epoch": 2} and type(ckpt.train_state["epoch"]) is int
    assert torch.equal(ckpt.model_state["w"], torch.ones(3))
    assert ckpt.config_hash == config_hash(config) == config_hash(expected)


@pytest.mark.parametrize(
    ("kwargs", "where"),
    [
        ({"config": {**CONFIG, "optim": {"fn": lambda x: x}}}, "config['optim']['fn']"),
        ({"config": {**CONFIG, "t": torch.ones(1)}}, "config['t']"),
        ({"normalization": {"rule": object()}}, "normalization['rule']"),
        ({"train_state": {"history": [1.0, slice(2)]}}, "train_state['history'][1]"),
        ({"extra": {"obj": {"inner": range(3)}}}, "extra['obj']['inner']"),
        ({"model_state": {"w": torch.ones(2), "bad": np.array(["a"])}}, "model_state['bad']"),
        ({"config": {"channels": 4}}, "config['model_type']"),
        ({"sigma_scale": {"emitter": -1.0}}, "sigma_scale['emitter']"),
        ({"sigma_scale": {"lp": float("nan")}}, "sigma_scale['lp']"),
        ({"model_state": [torch.ones(1)]}, "model_state"),
    ],
)
def test_unstorable_values_raise_input_error_naming_the_entry(tmp_path, kwargs, where):
    with pytest.raises(InputError, match=r"Cannot save checkpoint '.*x\.pt'") as info:
        _save_small(tmp_path / "x.pt", **kwargs)
    assert where in str(info.value)
    assert _files(tmp_path) == []


def test_self_referencing_value_is_refused(tmp_path):
    loop: list = []
    loop.append(loop)
    with pytest.raises(InputError, match="contains itself"):
        _save_small(tmp_path / "x.pt", extra={"loop": loop})


def test_config_hash():
    h = config_hash(CONFIG)
    assert len(h) == 12 and int(h, 16) >= 0
    assert config_hash(dict(reversed(list(CONFIG.items())))) == h  # key order is irrelevant
    assert config_hash({**CONFIG, "channels": 5}) != h
    assert config_hash({**CONFIG, "channels": np.int64(4)}) == h
    assert config_hash({**CONFIG, "s": {"b", "a", "c"}}) == config_hash(
        {**CONFIG, "s": ["a", "b", "c"]}
    )
    with pytest.raises(InputError, match="config\\['x'\\]"):
        config_hash({**CONFIG, "x": object()})


# --------------------------------------------------------------------------- bad files


class _Payload:
    """Unpickling this runs ``exec``: writes a marker file."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (exec, (f"open({self.marker!r}, 'w').write('pwned')",))


@pytest.mark.parametrize("how", ["torch zip", "torch legacy", "plain pickle"])
def test_code_in_a_checkpoint_is_never_executed(tmp_path, how):
    path, marker = tmp_path / "evil.pt", tmp_path / "marker.txt"
    obj = {"format": FORMAT_MARKER, "model_state": _Payload(marker)}
    if how == "torch zip":
        torch.save(obj, path)
    elif how == "torch legacy":
        torch.save(obj, path, _use_new_zipfile_serialization=False)
    else:
        path.write_bytes(pickle.dumps(obj, protocol=2))
    with pytest.raises(FileFormatError, match="contains code or Python objects") as info:
        load_checkpoint(path)
    assert "NOT loaded" in str(info.value) and str(path) in str(info.value)
    assert not marker.exists()
    # the payload is live: an unsafe load would have run it
    if how == "plain pickle":
        pickle.loads(path.read_bytes())
    else:
        torch.load(path, weights_only=False)
    assert marker.read_text() == "pwned"


def test_truncated_file(tmp_path):
    good = _save_small(tmp_path / "good.pt").read_bytes()
    for n in (len(good) // 2, len(good) - 10, 3):
        (tmp_path / "cut.pt").write_bytes(good[:n])
        with pytest.raises(FileFormatError, match="not a napari-sim-uq checkpoint or is damaged"):
            load_checkpoint(tmp_path / "cut.pt")


def test_corrupted_tensor_data_is_detected(tmp_path):
    path = save_checkpoint(tmp_path / "c.pt", model_state={"w": torch.full((64,), 7.0)},
                           config=CONFIG)  # fmt: skip
    data = bytearray(path.read_bytes())
    at = data.find(struct.pack("<f", 7.0) * 64)
    assert at > 0
    data[at + 100] ^= 0x01
    path.write_bytes(bytes(data))
    with pytest.raises(FileFormatError, match="damaged"):
        load_checkpoint(path)


@pytest.mark.parametrize("prefix", [b"", b"\x80\x02", b"PK\x03\x04"])
def test_random_bytes(tmp_path, rng, prefix):
    path = tmp_path / "rand.pt"
    path.write_bytes(prefix + rng.integers(0, 256, 2000, dtype=np.uint8).tobytes())
    with pytest.raises(FileFormatError, match="not a napari-sim-uq checkpoint or is damaged"):
        load_checkpoint(path)


def test_empty_missing_and_folder(tmp_path):
    (tmp_path / "empty.pt").write_bytes(b"")
    with pytest.raises(FileFormatError, match="empty.pt'.*empty \\(0 bytes\\)"):
        load_checkpoint(tmp_path / "empty.pt")
    with pytest.raises(InputError, match="nothere.pt'.*file not found") as info:
        load_checkpoint(tmp_path / "nothere.pt")
    assert not isinstance(info.value, FileFormatError)
    with pytest.raises(InputError, match="is a folder"):
        load_checkpoint(tmp_path)


@pytest.mark.parametrize(
    ("obj", "message"),
    [
        (_model().state_dict(), "bare PyTorch state_dict"),
        ({"state_dict": {"w": torch.ones(1)}, "epoch": 3}, "training checkpoint from other"),
        (torch.ones(3), "holds a torch.Tensor"),
        ({"a": 1}, "no format marker"),
        ({"format": "something else", "format_version": 1}, "format marker is 'something else'"),
    ],
)
def test_foreign_files_are_explained(tmp_path, obj, message):
    torch.save(obj, tmp_path / "f.pt")
    with pytest.raises(FileFormatError, match=message):
        load_checkpoint(tmp_path / "f.pt")


def _rewrite(path, **changes):
    payload = torch.load(path, weights_only=True)
    payload.update(changes)
    for key, value in changes.items():
        if value is None:
            del payload[key]
    torch.save(payload, path)


def test_future_format_version(tmp_path):
    path = _save_small(tmp_path / "f.pt")
    _rewrite(path, format_version=FORMAT_VERSION + 1, package_version="9.0")
    with pytest.raises(FileFormatError, match="newer napari-sim-uq \\(version 9.0") as info:
        load_checkpoint(path)
    assert "Upgrade" in str(info.value)


def test_incomplete_or_inconsistent_checkpoint(tmp_path):
    path = _save_small(tmp_path / "i.pt")
    _rewrite(path, sigma_scale=None, extra=None)
    with pytest.raises(FileFormatError, match="incomplete or damaged.*'sigma_scale', 'extra'"):
        load_checkpoint(path)
    path = _save_small(tmp_path / "h.pt")
    _rewrite(path, config={**CONFIG, "channels": 99})
    with pytest.raises(FileFormatError, match="does not match its config hash"):
        load_checkpoint(path)


def test_wrong_model_type(tmp_path):
    path = _save_small(tmp_path / "w.pt")
    with pytest.raises(InputError, match="is for model 'sim_uq_net', this needs 'conv_ae'"):
        load_checkpoint(path, expected_model_type="conv_ae")
    assert load_checkpoint(path, expected_model_type="sim_uq_net").model_type == "sim_uq_net"


# --------------------------------------------------------------------------- writing


def test_failed_save_keeps_previous_checkpoint(tmp_path, monkeypatch):
    path = _save_small(tmp_path / "ck.pt", train_state={"epoch": 1})
    before = path.read_bytes()
    real_save = torch.save

    def broken_save(obj, f, *args, **kwargs):
        real_save(obj, f, *args, **kwargs)
        with open(f, "r+b") as fh:  # half written, then the disk fills up
            fh.truncate(os.path.getsize(f) // 2)
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(torch, "save", broken_save)
    with pytest.raises(OSError, match="No space left"):
        _save_small(path, train_state={"epoch": 2})
    monkeypatch.undo()
    assert path.read_bytes() == before
    assert load_checkpoint(path).epoch == 1
    assert _files(tmp_path) == ["ck.pt"]  # no temporary files left behind


def test_no_overwrite(tmp_path):
    path = _save_small(tmp_path / "o.pt", train_state={"epoch": 1})
    with pytest.raises(FileExistsError, match="not overwriting"):
        _save_small(path, train_state={"epoch": 2}, overwrite=False)
    assert load_checkpoint(path).epoch == 1


def test_update_sigma_scale_keeps_everything_else(tmp_path, monkeypatch):
    model = _model()
    opt = torch.optim.Adam(model.parameters())
    _train_steps(model, opt, torch.optim.lr_scheduler.StepLR(opt, 1), torch.ones(1, 1, 4, 4), 1)
    path = save_checkpoint(tmp_path / "s.pt", model_state=model.state_dict(), config=CONFIG,
                           optimizer_state=opt.state_dict(), sigma_scale=SIGMA,
                           normalization={"rule": "minmax"}, train_state={"epoch": 5})  # fmt: skip
    old = load_checkpoint(path)
    monkeypatch.setattr(ck, "__version__", "99.0")  # the writer's version is not recorded
    new = update_sigma_scale(path, {"emitter": 2.0, "lp": 3.0, "raw": 0.5})
    assert new.sigma_scale == {"emitter": 2.0, "lp": 3.0, "raw": 0.5}
    again = load_checkpoint(path)
    assert again.sigma_scale == new.sigma_scale
    assert again.model_state.keys() == old.model_state.keys()
    for name, tensor in old.model_state.items():
        assert torch.equal(again.model_state[name], tensor), name
    for pid, state in old.optimizer_state["state"].items():
        for k, v in state.items():
            assert torch.equal(again.optimizer_state["state"][pid][k], v)
    assert again.optimizer_state["param_groups"] == old.optimizer_state["param_groups"]
    assert (again.config, again.config_hash, again.normalization, again.train_state) == (
        old.config, old.config_hash, old.normalization, old.train_state)  # fmt: skip
    assert again.package_version == old.package_version == __version__
    assert _files(tmp_path) == ["s.pt"]

    before = path.read_bytes()
    with pytest.raises(InputError, match="sigma_scale\\['emitter'\\].*> 0"):
        update_sigma_scale(path, {"emitter": 0.0})
    assert path.read_bytes() == before


def test_checkpoint_object_save_and_metadata(tmp_path):
    ckpt = Checkpoint(model_state=_model().state_dict(), config=CONFIG, sigma_scale=SIGMA)
    with pytest.raises(InputError, match="give a path"):
        ckpt.save()
    path = ckpt.with_sigma_scale({"emitter": 3.0}).save(tmp_path / "o.pt")
    loaded = load_checkpoint(path)
    assert loaded.sigma_scale == {"emitter": 3.0}
    meta = loaded.layer_metadata()
    assert meta["model_type"] == "sim_uq_net" and meta["config_hash"] == config_hash(CONFIG)
    assert meta["checkpoint"] == str(path)


def test_checkpoint_summary(tmp_path):
    path = _save_small(tmp_path / "s.pt", train_state={"epoch": 4, "step": 40, "best_metric": 0.1})
    info = checkpoint_summary(path)
    n_params = sum(t.numel() for t in _model().state_dict().values())
    assert info["model_type"] == "sim_uq_net" and info["package_version"] == __version__
    assert (info["epoch"], info["step"], info["best_metric"]) == (4, 40, 0.1)
    assert info["config_hash"] == config_hash(CONFIG) and info["sigma_scale"] == SIGMA
    assert info["n_parameters"] == n_params and not info["has_optimizer_state"]
    assert info["file_size_bytes"] == path.stat().st_size
