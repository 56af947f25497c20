"""Optional perceptual metrics: Frechet distance/FID analytically, LPIPS skip paths.

Nothing here downloads anything: LPIPS is exercised through a stand-in ``lpips`` module
and empty stand-in weight files in tmp_path; the real package is used only if it and its
weights are already on this machine.
"""

from __future__ import annotations

import subprocess
import sys
import types
import warnings

import numpy as np
import pytest
import torch
from scipy import linalg

from napari_sim_uq.core.errors import FileFormatError, InputError
from napari_sim_uq.core.uq import perceptual as P

pytestmark = pytest.mark.usefixtures("one_thread")


def _random_cov(rng, d, rank=None):
    a = rng.standard_normal((d, rank or d))
    return a @ a.T / d + (0.0 if rank else 0.1 * np.eye(d))


# --------------------------------------------------------------------- Frechet distance


def test_frechet_distance_diagonal_closed_form(rng):
    d = 6
    mu1, mu2 = rng.standard_normal(d), rng.standard_normal(d)
    v1, v2 = rng.uniform(0.1, 3.0, d), rng.uniform(0.1, 3.0, d)
    # commuting (diagonal) covariances: tr sqrt(C1 C2) = sum sqrt(v1 v2)
    want = np.sum((mu1 - mu2) ** 2) + np.sum((np.sqrt(v1) - np.sqrt(v2)) ** 2)
    got = P.frechet_distance(mu1, np.diag(v1), mu2, np.diag(v2))
    assert got == pytest.approx(want, rel=1e-12)
    # same covariance: only the means count; same distribution: 0
    c = _random_cov(rng, d)
    assert P.frechet_distance(mu1, c, mu2, c) == pytest.approx(np.sum((mu1 - mu2) ** 2), rel=1e-9)
    assert P.frechet_distance(mu1, c, mu1, c) == pytest.approx(0.0, abs=1e-10)
    # one dimension: (m1 - m2)^2 + (s1 - s2)^2
    assert P.frechet_distance([1.0], [[4.0]], [3.0], [[9.0]]) == pytest.approx(4.0 + 1.0)
    # commuting, non-diagonal: C2 = f(C1) in the same eigenbasis
    q = linalg.qr(rng.standard_normal((d, d)))[0]
    c1 = q @ np.diag(v1) @ q.T
    c2 = q @ np.diag(v2) @ q.T
    assert P.frechet_distance(mu1, c1, mu2, c2) == pytest.approx(want, rel=1e-9)


def test_frechet_distance_symmetric_and_matches_sqrtm(rng):
    d = 8
    mu1, mu2 = rng.standard_normal(d), rng.standard_normal(d)
    c1, c2 = _random_cov(rng, d), _random_cov(rng, d)
    fd = P.frechet_distance(mu1, c1, mu2, c2)
    assert fd == pytest.approx(P.frechet_distance(mu2, c2, mu1, c1), rel=1e-10)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        tr = np.trace(linalg.sqrtm(c1 @ c2)).real
    want = np.sum((mu1 - mu2) ** 2) + np.trace(c1) + np.trace(c2) - 2 * tr
    assert fd == pytest.approx(want, rel=1e-9)
    # singular (rank-deficient) covariances stay finite and real
    s1, s2 = _random_cov(rng, d, rank=3), _random_cov(rng, d, rank=2)
    v = P.frechet_distance(mu1, s1, mu2, s2)
    assert np.isfinite(v) and v >= 0
    assert v == pytest.approx(P.frechet_distance(mu2, s2, mu1, s1), rel=1e-8)


def test_fid_from_features(rng):
    real = rng.standard_normal((400, 5))
    assert P.fid(real, real) == pytest.approx(0.0, abs=1e-9)
    assert P.fid(torch.from_numpy(real), real) == pytest.approx(0.0, abs=1e-9)
    shifted = real + np.array([1.0, 0, 0, 0, 2.0])
    assert P.fid(real, shifted) == pytest.approx(5.0, rel=1e-9)  # same covariance
    scaled = 3.0 * real  # centred data: mean 3 mu, covariance 9 C (commutes with C)
    mu, c = P.feature_statistics(real)
    np.testing.assert_allclose(c, np.cov(real, rowvar=False))
    ev = linalg.eigvalsh(c)
    want = np.sum((2 * mu) ** 2) + np.sum((np.sqrt(ev) - 3 * np.sqrt(ev)) ** 2)
    assert P.fid(real, scaled) == pytest.approx(want, rel=1e-9)
    # different N is fine; one feature dimension works
    assert P.fid(real[:100], real[100:]) > 0
    assert P.fid(real[:, :1], real[:, :1] + 1.0) == pytest.approx(1.0, rel=1e-9)


# ------------------------------------------------------------------- FID through images


class _Stats(torch.nn.Module):
    """Per-image mean and standard deviation: a 2-feature extractor."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.stack([x.mean(dim=(1, 2, 3)), x.std(dim=(1, 2, 3))], dim=1)


def _stats_np(imgs):
    flat = imgs.reshape(imgs.shape[0], -1).astype(np.float32).astype(np.float64)
    return np.stack([flat.mean(1), flat.std(1, ddof=1)], axis=1)


def test_fid_from_images_torchscript_path_and_callable(rng, tmp_path):
    with warnings.catch_warnings():  # TorchScript is deprecated in recent torch
        warnings.simplefilter("ignore", DeprecationWarning)
        scripted = torch.jit.script(_Stats())
    path = tmp_path / "extractor.pt"
    scripted.save(str(path))
    real = rng.random((40, 12, 12))
    fake = 0.5 * rng.random((30, 12, 12)) + 0.2
    want = P.fid(_stats_np(real), _stats_np(fake))
    got_path = P.fid_from_images(real, fake, path, batch_size=7)
    got_str = P.fid_from_images(torch.from_numpy(real), fake, str(path))
    got_call = P.fid_from_images(real, fake, _Stats())
    for got in (got_path, got_str, got_call):
        assert got == pytest.approx(want, rel=1e-4, abs=1e-8)
    assert want > 0.01
    assert P.fid_from_images(real, real, path) == pytest.approx(0.0, abs=1e-8)
    feats = P.extract_features(real[:5], path)
    assert feats.shape == (5, 2) and feats.dtype == np.float64
    np.testing.assert_allclose(feats, _stats_np(real[:5]), rtol=1e-5)
    # (N, C, H, W) and outputs of shape (b, D, 1, 1) are accepted
    feats = P.extract_features(real[:4, None], lambda x: _Stats()(x)[:, :, None, None])
    assert feats.shape == (4, 2)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_fid_from_images_on_cuda(rng, tmp_path):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.jit.script(_Stats()).save(str(tmp_path / "extractor.pt"))
    real, fake = rng.random((20, 16, 16)), rng.random((20, 16, 16)) ** 2
    want = P.fid(_stats_np(real), _stats_np(fake))
    got = P.fid_from_images(real, fake, tmp_path / "extractor.pt", device="cuda")
    assert got == pytest.approx(want, rel=1e-4)
    got = P.fid_from_images(torch.from_numpy(real).cuda(), fake, _Stats().cuda())
    assert got == pytest.approx(want, rel=1e-4)


def test_fid_from_images_errors(rng, tmp_path):
    imgs = rng.random((4, 8, 8))
    with pytest.raises(InputError, match="does not exist"):
        P.fid_from_images(imgs, imgs, tmp_path / "missing.pt")
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a model")
    with pytest.raises(FileFormatError, match="cannot load"):
        P.fid_from_images(imgs, imgs, bad)
    with pytest.raises(InputError, match="path to a TorchScript"):
        P.fid_from_images(imgs, imgs, 3)
    with pytest.raises(InputError, match="one row per image"):
        P.fid_from_images(imgs, imgs, lambda x: x.mean())
    with pytest.raises(InputError, match="extractor failed"):
        P.fid_from_images(imgs, imgs, lambda x: x @ torch.ones(3, 3))
    with pytest.raises(InputError, match="at least 2 images"):
        P.fid_from_images(imgs[:1], imgs, _Stats())
    nan = imgs.copy()
    nan[0, 0, 0] = np.nan
    with pytest.raises(InputError, match="NaN"):
        P.fid_from_images(nan, imgs, _Stats())
    with pytest.raises(InputError, match="batch_size"):
        P.fid_from_images(imgs, imgs, _Stats(), batch_size=0)


def test_frechet_and_fid_bad_input(rng):
    c = np.eye(3)
    with pytest.raises(InputError, match="same feature dimension"):
        P.fid(rng.random((10, 3)), rng.random((10, 4)))
    with pytest.raises(InputError, match="at least 2 samples"):
        P.fid(rng.random((1, 3)), rng.random((10, 3)))
    with pytest.raises(InputError, match=r"shape \(N, D\)"):
        P.fid(rng.random(10), rng.random(10))
    with pytest.raises(InputError, match="NaN"):
        P.fid(np.full((5, 3), np.nan), rng.random((5, 3)))
    with pytest.raises(InputError, match="1D vectors of one length"):
        P.frechet_distance(np.zeros(3), c, np.zeros(4), np.eye(4))
    with pytest.raises(InputError, match=r"cov2 must have shape \(3, 3\)"):
        P.frechet_distance(np.zeros(3), c, np.zeros(3), np.eye(4))
    with pytest.raises(InputError, match="symmetric"):
        P.frechet_distance(np.zeros(3), c + np.triu(np.ones((3, 3)), 1), np.zeros(3), c)
    with pytest.raises(InputError, match="positive semi-definite"):
        P.frechet_distance(np.zeros(3), -c, np.zeros(3), c)


# ---------------------------------------------------------------------------------- LPIPS


def _fake_lpips(calls):
    """A stand-in ``lpips`` module: LPIPS(net) -> mean absolute difference per image."""

    class LPIPS(torch.nn.Module):
        def __init__(self, net="alex", verbose=True):
            super().__init__()
            calls.append({"net": net, "hub": torch.hub.get_dir()})
            self.scale = torch.nn.Parameter(torch.ones(()))

        def forward(self, x, y):
            calls[-1]["input"] = (tuple(x.shape), float(x.min()), float(x.max()))
            return self.scale * (x - y).abs().mean(dim=(1, 2, 3), keepdim=True)

    return types.SimpleNamespace(LPIPS=LPIPS)


def test_lpips_skipped_when_package_missing(monkeypatch, rng):
    monkeypatch.setitem(sys.modules, "lpips", None)  # makes `import lpips` fail
    x = rng.random((2, 32, 32))
    assert P.lpips_distance(x, x) is None
    msg = P.lpips_status()
    assert msg == (
        "LPIPS skipped: the `lpips` package is not installed (pip install lpips; its "
        "AlexNet weights must be in the torch hub cache, nothing is downloaded)"
    )
    values, skipped = P.perceptual_metrics(x, x)
    assert values == {}
    assert skipped[0] == msg
    assert skipped[1].startswith("FID skipped: no feature extractor given")
    assert all("\n" not in s for s in skipped)
    values, skipped = P.perceptual_metrics(x, x, lpips=False, fid_extractor=_Stats())
    assert skipped == [] and values["fid"] == pytest.approx(0.0, abs=1e-8)
    values, skipped = P.perceptual_metrics(x[:1], x[:1], lpips=False, fid_extractor=_Stats())
    assert values == {} and skipped == ["FID skipped: it needs at least 2 images per set, got 1"]


def test_lpips_skipped_when_weights_missing_builds_nothing(monkeypatch, tmp_path, rng):
    calls = []
    monkeypatch.setitem(sys.modules, "lpips", _fake_lpips(calls))
    x = rng.random((2, 32, 32))
    assert P.lpips_distance(x, x, weights=tmp_path) is None
    values, skipped = P.perceptual_metrics(x, x, lpips_weights=tmp_path)
    assert values == {}
    want = tmp_path / "checkpoints" / "alexnet-owt-7be5be79.pth"
    assert skipped[0].startswith("LPIPS skipped: the AlexNet backbone weights are not on disk")
    assert str(want) in skipped[0] and "nothing is downloaded" in skipped[0]
    assert P.lpips_status("vgg", tmp_path).count("vgg16-397923af.pth") == 2
    assert calls == []  # checked before anything was constructed


def test_lpips_with_weights_on_disk_uses_that_hub_folder(monkeypatch, tmp_path, rng):
    calls = []
    monkeypatch.setitem(sys.modules, "lpips", _fake_lpips(calls))
    ckpt = tmp_path / "hub" / "checkpoints" / "alexnet-owt-7be5be79.pth"
    ckpt.parent.mkdir(parents=True)
    ckpt.write_bytes(b"")  # the stand-in never reads it
    before = torch.hub.get_dir()
    x = rng.random((3, 32, 32))
    ref = rng.random((3, 32, 32))
    assert P.lpips_status(weights=tmp_path / "hub") is None
    d = P.lpips_distance(x, ref, weights=tmp_path / "hub")
    assert torch.hub.get_dir() == before  # restored
    assert len(calls) == 1 and calls[0]["net"] == "alex"
    assert calls[0]["hub"] == str(tmp_path / "hub")  # torchvision would look there
    shape, lo, hi = calls[0]["input"]
    assert shape == (3, 3, 32, 32) and lo >= -1.0 and hi <= 1.0  # gray -> RGB in [-1, 1]
    want = 2 * np.abs(x - ref).mean(axis=(1, 2))  # [0, 1] -> [-1, 1] doubles differences
    np.testing.assert_allclose(d.numpy(), want, rtol=1e-5)
    # the model is cached; the checkpoint file itself may be passed as weights
    d2 = P.lpips_distance(x * 255, ref * 255, weights=ckpt, value_range=(0, 255))
    np.testing.assert_allclose(d2.numpy(), want, rtol=1e-4)
    assert len(calls) == 1
    values, skipped = P.perceptual_metrics(x, ref, lpips_weights=ckpt, fid_extractor=_Stats())
    assert set(values) == {"lpips", "fid"} and len(skipped) == 0
    np.testing.assert_allclose(values["lpips"].numpy(), want, rtol=1e-5)
    with pytest.raises(InputError, match="inside a folder named 'checkpoints'"):
        P.lpips_distance(x, ref, weights=tmp_path / "alexnet.pth")
    with pytest.raises(InputError, match="net must be one of"):
        P.lpips_distance(x, ref, net="resnet")
    with pytest.raises(InputError, match="same shape"):
        P.lpips_distance(x, ref[:2])
    with pytest.raises(InputError, match="value_range"):
        P.lpips_distance(x, ref, value_range=(1, 1))


def test_lpips_import_error_other_than_missing(monkeypatch):
    real_import = __import__

    def fake_import(name, *args, **kwargs):
        if name == "lpips":
            raise ModuleNotFoundError("No module named 'torchvision'", name="torchvision")
        return real_import(name, *args, **kwargs)

    monkeypatch.delitem(sys.modules, "lpips", raising=False)
    monkeypatch.setattr("builtins.__import__", fake_import)
    msg = P.lpips_status()
    assert msg == "LPIPS skipped: importing `lpips` failed (missing module 'torchvision')"


def test_real_lpips_if_available(rng):
    """Runs only where the `lpips` package and its AlexNet weights are already installed."""
    if P.lpips_status() is not None:
        pytest.skip(P.lpips_status())
    ref = rng.random((2, 64, 64))
    d = P.lpips_distance(ref + 0.1 * rng.standard_normal(ref.shape), ref)
    assert d.shape == (2,) and torch.all(d > 0)
    assert torch.all(P.lpips_distance(ref, ref) < 1e-6)


def test_import_does_not_load_torch():
    code = (
        "import sys; import napari_sim_uq.core.uq.perceptual as p; "
        "p.frechet_distance([0.0], [[1.0]], [1.0], [[1.0]]); "
        "assert 'torch' not in sys.modules, 'torch loaded'"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
