"""Reading 2D training images and the deterministic patch dataset."""

from __future__ import annotations

import numpy as np
import pytest
import tifffile
import torch
from PIL import Image

from napari_sim_uq.core.data.degrade import parse_degradations
from napari_sim_uq.core.data.images2d import PatchDataset, read_image_2d
from napari_sim_uq.core.data.loaders import make_loader, set_loader_epoch
from napari_sim_uq.core.data.normalization import Normalization
from napari_sim_uq.core.errors import InputError

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.mark.parametrize(
    "dtype, scale", [(np.uint8, 255), (np.uint16, 65535), (np.float32, 3.5), (np.int16, 1000)]
)
def test_tiff_round_trip(tmp_path, rng, dtype, scale):
    a = (rng.random((20, 30)) * scale).astype(dtype)
    tifffile.imwrite(tmp_path / "a.tif", a)
    out = read_image_2d(tmp_path / "a.tif")
    assert out.dtype == np.float32 and out.shape == (20, 30)
    np.testing.assert_array_equal(out, a.astype(np.float32))


@pytest.mark.parametrize("dtype, scale", [(np.uint8, 255), (np.uint16, 65535)])
def test_png_round_trip(tmp_path, rng, dtype, scale):
    a = (rng.random((17, 23)) * scale).astype(dtype)
    Image.fromarray(a).save(tmp_path / "a.png")
    np.testing.assert_array_equal(read_image_2d(tmp_path / "a.png"), a.astype(np.float32))


def luminance(rgb):
    rgb = rgb.astype(np.float64)
    return 0.299 * rgb[..., 0] + 0.587 * rgb[..., 1] + 0.114 * rgb[..., 2]


@pytest.mark.parametrize("mode", ["RGB", "RGBA"])
def test_colour_png_becomes_luminance_with_a_warning(tmp_path, rng, mode):
    a = rng.integers(0, 256, (16, 18, len(mode)), dtype=np.uint8)
    Image.fromarray(a, mode).save(tmp_path / "c.png")
    with pytest.warns(UserWarning, match="luminance"):
        out = read_image_2d(tmp_path / "c.png")
    np.testing.assert_allclose(out, luminance(a), rtol=1e-6)


def test_palette_png_is_read_through_its_colours(tmp_path, rng):
    a = rng.integers(0, 256, (16, 18, 3), dtype=np.uint8)
    pal = Image.fromarray(a, "RGB").convert("P")
    pal.save(tmp_path / "p.png")
    with pytest.warns(UserWarning, match="PNG mode 'P'"):
        out = read_image_2d(tmp_path / "p.png")
    np.testing.assert_allclose(out, luminance(np.asarray(pal.convert("RGB"))), rtol=1e-6)


def test_colour_tiff_becomes_luminance_and_other_channel_counts_are_refused(tmp_path, rng):
    a = rng.integers(0, 65536, (16, 18, 3), dtype=np.uint16)
    tifffile.imwrite(tmp_path / "c.tif", a, photometric="rgb")
    with pytest.warns(UserWarning, match="0.299 R"):
        out = read_image_2d(tmp_path / "c.tif")
    np.testing.assert_allclose(out, luminance(a), rtol=1e-6)
    five = rng.integers(0, 256, (16, 18, 5), dtype=np.uint8)
    tifffile.imwrite(tmp_path / "5.tif", five, photometric="rgb", extrasamples=["unspecified"] * 2)
    with pytest.raises(InputError, match="5 colour channels"):
        read_image_2d(tmp_path / "5.tif")


def test_reader_errors_name_the_file_and_problem(tmp_path):
    bad = np.ones((16, 16), np.float32)
    bad[3, 4] = np.nan
    tifffile.imwrite(tmp_path / "nan.tif", bad)
    with pytest.raises(InputError, match=r"nan\.tif.*1 NaN"):
        read_image_2d(tmp_path / "nan.tif")
    tifffile.imwrite(
        tmp_path / "stack.tif", np.ones((3, 16, 16), np.float32), photometric="minisblack"
    )
    with pytest.raises(InputError, match=r"stack\.tif.*stack of 3 planes"):
        read_image_2d(tmp_path / "stack.tif")
    tifffile.imwrite(tmp_path / "one.tif", np.ones((1, 16, 16), np.float32))
    assert read_image_2d(tmp_path / "one.tif").shape == (16, 16)  # singleton plane is fine
    tifffile.imwrite(tmp_path / "tiny.tif", np.ones((6, 40), np.uint8))
    with pytest.raises(InputError, match=r"tiny\.tif.*6 x 40.*minimum 8 x 8"):
        read_image_2d(tmp_path / "tiny.tif")
    with pytest.raises(InputError, match="minimum 32"):
        read_image_2d(tmp_path / "one.tif", min_size=32)
    with pytest.raises(InputError, match="file not found"):
        read_image_2d(tmp_path / "missing.png")
    with pytest.raises(InputError, match="unsupported file type '.jpg'"):
        read_image_2d(tmp_path / "x.jpg")
    (tmp_path / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    with pytest.raises(InputError, match="broken.png"):
        read_image_2d(tmp_path / "broken.png")


def images(n=3, size=(40, 48), seed=0):
    rng = np.random.default_rng(seed)
    return [(rng.random(size) * 1000 * (k + 1)).astype(np.float32) for k in range(n)]


def test_items_are_percentile_normalised_patches(rng):
    arrs = images()
    ds = PatchDataset(arrs, patch=16, patches_per_image=4, seed=1)
    assert len(ds) == 12
    for index in (0, 5, 11):
        k, y0, x0, h, w = ds.window(index)
        assert k == index // 4 and (h, w) == (16, 16)
        lo, hi = np.percentile(arrs[k].astype(np.float64), [0.1, 99.9])
        want = (arrs[k][y0 : y0 + 16, x0 : x0 + 16] - lo) / (hi - lo)
        item = ds[index]
        assert set(item) == {"x", "target", "mask"}
        assert item["target"].shape == (1, 16, 16) and item["target"].dtype == torch.float32
        np.testing.assert_allclose(item["target"][0].numpy(), want, rtol=1e-5, atol=1e-6)
        assert torch.equal(item["x"], item["target"])  # no degradation
        assert torch.equal(item["mask"], torch.ones(1, 16, 16))
    rule = Normalization.from_dict(ds.norm_to_dict()["normalization"])
    assert rule.mode == "percentile" and ds.norm_to_dict()["scope"] == "image"


def test_dataset_scope_normalisation_is_shared_and_reusable():
    arrs = images()
    ds = PatchDataset(arrs, patch=16, norm_scope="dataset", norm_mode="minmax")
    pooled = np.concatenate([a.ravel() for a in arrs])
    norm = ds.normalization
    assert norm.offset == pytest.approx(pooled.min()) and norm.scale == pytest.approx(
        np.ptp(pooled)
    )
    stored = ds.norm_to_dict()
    val = PatchDataset(images(seed=1), patch=16, normalization=stored["normalization"])
    assert val.normalization == norm and val.norm_to_dict()["scope"] == "fixed"


def test_windows_and_degradations_depend_only_on_seed_epoch_index():
    arrs = images(2)
    spec = "noise:0.1,mask:pixels:0.3"
    a = PatchDataset(arrs, patch=16, patches_per_image=8, degradation=spec, seed=3)
    b = PatchDataset(arrs, patch=16, patches_per_image=8, degradation=spec, seed=3)
    for i in (0, 9):
        assert all(torch.equal(a[i][key], b[i][key]) for key in ("x", "target", "mask"))
    first = [a.window(i) for i in range(len(a))]
    a.set_epoch(1)
    assert [a.window(i) for i in range(len(a))] != first
    a.set_epoch(0)
    assert [a.window(i) for i in range(len(a))] == first
    # the documented degradation of the clean patch: removed pixels are 0, and the others
    # carry N(0, 0.1^2) noise
    items = [a[i] for i in range(len(a))]
    mask = torch.stack([it["mask"] for it in items]).double()
    x = torch.stack([it["x"] for it in items]).double()
    t = torch.stack([it["target"] for it in items]).double()
    n = mask.numel()
    assert abs(1 - mask.mean().item() - 0.3) < 5 * np.sqrt(0.3 * 0.7 / n)
    assert torch.all(x[mask == 0] == 0)
    resid = (x - t)[mask == 1]
    assert abs(resid.std().item() - 0.1) < 5 * 0.1 / np.sqrt(2 * resid.numel())
    assert parse_degradations(spec) == a.degradation


def test_loader_batches_and_epochs():
    ds = PatchDataset(images(2), patch=16, patches_per_image=4, degradation="noise:0.05", seed=0)
    loader = make_loader(ds, batch_size=4, shuffle=True, seed=0)
    set_loader_epoch(loader, 2)
    batches = list(loader)
    assert len(batches) == 2 and batches[0]["x"].shape == (4, 1, 16, 16)
    set_loader_epoch(loader, 2)
    again = list(loader)
    assert all(torch.equal(p["x"], q["x"]) for p, q in zip(batches, again, strict=True))


def test_files_arrays_and_whole_images(tmp_path):
    arrs = images(2, size=(24, 24))
    tifffile.imwrite(tmp_path / "a.tif", arrs[0])
    stack = np.stack(arrs)
    ds = PatchDataset([tmp_path / "a.tif", arrs[1]], patch=None)
    assert len(ds) == 2 and ds[0]["target"].shape == (1, 24, 24)
    assert ds.names == [f"'{tmp_path / 'a.tif'}'", "array 1"]
    assert len(PatchDataset(stack, patch=8, patches_per_image=1)) == 2
    assert len(PatchDataset(str(tmp_path), patch=8, patches_per_image=2)) == 2
    mixed = PatchDataset([arrs[0], np.ones((30, 20), np.float32) * np.arange(20)], patch=None)
    with pytest.raises(InputError, match="batch_size=1"):
        make_loader(mixed, batch_size=2, shuffle=False, seed=0)


def test_dataset_errors():
    with pytest.raises(InputError, match=r"array 0.*20 x 20.*minimum 32"):
        PatchDataset([np.ones((20, 20))], patch=32)
    with pytest.raises(InputError, match="empty"):
        PatchDataset([], patch=8)
    with pytest.raises(InputError, match="constant"):
        PatchDataset([np.ones((20, 20))], patch=8)
    with pytest.raises(InputError, match="norm_scope"):
        PatchDataset(images(1), patch=8, norm_scope="batch")
    with pytest.raises(InputError, match="unknown degradation"):
        PatchDataset(images(1), patch=8, degradation="fog")
    with pytest.raises(InputError, match="image 1"):
        PatchDataset([images(1)[0], 3.0], patch=8)
