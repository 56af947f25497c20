"""Synthetic 2D images, inserted anomalies and the on-disk dataset."""

from __future__ import annotations

import json

import numpy as np
import pytest
import tifffile
from scipy import ndimage

from napari_sim_uq.core.errors import InputError
from napari_sim_uq.tasks.ae2d.synth2d import (
    ANOMALY_KINDS,
    IMAGE_KINDS,
    generate_dataset_2d,
    generate_image,
    insert_anomaly,
)


@pytest.mark.parametrize("kind", IMAGE_KINDS)
def test_images_are_normalised_and_deterministic(kind):
    a = generate_image((40, 56), 3, kind)
    assert a.shape == (40, 56) and a.dtype == np.float32
    assert a.min() == 0.0 and a.max() == pytest.approx(1.0)
    np.testing.assert_array_equal(a, generate_image((40, 56), 3, kind))
    assert not np.array_equal(a, generate_image((40, 56), 4, kind))
    assert not np.array_equal(generate_image(32, (3, 0, 1)), generate_image(32, (3, 1, 0)))


def test_kinds_differ():
    imgs = [generate_image(48, 1, k) for k in IMAGE_KINDS]
    for i in range(3):
        for j in range(i):
            assert not np.allclose(imgs[i], imgs[j])


def test_image_is_the_structures_blurred_by_the_psf():
    # min-max scaling is affine, so it commutes with the blur: the image with PSF sigma s is
    # the (normalised) PSF-free image blurred by s
    sharp = generate_image(48, 9, psf_sigma=0).astype(np.float64)
    ref = ndimage.gaussian_filter(sharp, 2.0, mode="reflect")
    ref = (ref - ref.min()) / (ref.max() - ref.min())
    np.testing.assert_allclose(generate_image(48, 9, psf_sigma=2.0), ref, atol=1e-5)


@pytest.mark.parametrize("kind", ANOMALY_KINDS)
def test_anomalies_change_the_image_only_around_their_mask(kind):
    img = generate_image(64, 2)
    before = img.copy()
    out, mask = insert_anomaly(img, 7, kind)
    np.testing.assert_array_equal(img, before)  # input untouched
    assert out.dtype == np.float32 and out.shape == img.shape
    assert out.min() >= 0 and out.max() <= 1
    assert 0 < mask.mean() < 0.2
    diff = np.abs(out.astype(np.float64) - img)
    assert diff[mask].mean() > 0.2  # clearly visible inside
    # and (almost) nothing far from it (soft edges and the PSF reach a few pixels)
    near = ndimage.binary_dilation(mask, iterations=8)
    assert diff[~near].max() < 0.01
    out2, mask2 = insert_anomaly(img, 7, kind)
    np.testing.assert_array_equal(out, out2)
    np.testing.assert_array_equal(mask, mask2)


def test_sharp_anomalies_have_exact_masks():
    img = generate_image(64, 5)
    for kind in ("texture", "line"):
        out, mask = insert_anomaly(img, 1, kind)
        np.testing.assert_array_equal(out[~mask], img[~mask])


def test_random_kind_and_errors():
    img = generate_image(32, 0)
    kinds_seen = set()
    for seed in range(12):
        out, mask = insert_anomaly(img, np.random.default_rng(seed), "random")
        assert mask.any()
        kinds_seen.add(out.tobytes())
    assert len(kinds_seen) > 1
    with pytest.raises(InputError, match="blob, cluster, texture, line"):
        insert_anomaly(img, 0, "scratch")
    with pytest.raises(InputError, match="2D image"):
        insert_anomaly(np.zeros((3, 32, 32)), 0)
    with pytest.raises(InputError, match="kind must be one of"):
        generate_image(32, 0, "cells")
    with pytest.raises(InputError, match="size"):
        generate_image(4, 0)
    with pytest.raises(InputError, match="seed"):
        generate_image(32, -1)


def test_dataset_files_hold_the_documented_images(tmp_path):
    files = generate_dataset_2d(tmp_path, 2, 1, 1, size=(24, 32), seed=5)
    assert [len(files[s]) for s in ("train", "val", "test")] == [2, 1, 1]
    for split_no, split in enumerate(("train", "val", "test")):
        for i, p in enumerate(files[split]):
            assert p == tmp_path / split / f"image_{i:05d}.tif"
            data = tifffile.imread(p)
            assert data.dtype == np.uint16 and data.shape == (24, 32)
            want = np.rint(generate_image((24, 32), (5, split_no, i)) * 65535)
            np.testing.assert_array_equal(data, want)
    doc = json.loads((tmp_path / "dataset_2d.json").read_text())
    assert doc["counts"] == {"train": 2, "val": 1, "test": 1} and doc["seed"] == 5


def test_dataset_refuses_to_overwrite_unless_asked(tmp_path):
    files = generate_dataset_2d(tmp_path, 3, 0, 1, size=16, seed=1)
    stamp = {p: p.read_bytes() for p in files["train"]}
    with pytest.raises(FileExistsError, match="overwrite=True"):
        generate_dataset_2d(tmp_path, 3, 0, 1, size=16, seed=2)
    assert {p: p.read_bytes() for p in files["train"]} == stamp  # nothing written
    new = generate_dataset_2d(tmp_path, 1, 0, 0, size=16, seed=2, dtype="float32", overwrite=True)
    assert sorted(p.name for p in (tmp_path / "train").iterdir()) == ["image_00000.tif"]
    data = tifffile.imread(new["train"][0])
    assert data.dtype == np.float32
    np.testing.assert_array_equal(data, generate_image(16, (2, 0, 0)))


def test_dataset_argument_errors(tmp_path):
    with pytest.raises(InputError, match="all 0"):
        generate_dataset_2d(tmp_path, 0, 0, 0)
    with pytest.raises(InputError, match="n_val"):
        generate_dataset_2d(tmp_path, 1, -1, 0)
    with pytest.raises(InputError, match="dtype"):
        generate_dataset_2d(tmp_path, 1, 0, 0, dtype="uint8")
    (tmp_path / "f").write_text("x")
    with pytest.raises(InputError, match="is a file"):
        generate_dataset_2d(tmp_path / "f", 1, 0, 0)


def test_background_is_smooth_and_keeps_the_structures():
    from napari_sim_uq.tasks.ae2d.synth2d import generate_image

    s = generate_image(64, 3)
    b = generate_image(64, 3, background=0.1)
    assert 0.04 <= b.min() and b.max() <= 1.0
    # b = bg + (1 - max bg) s: the structure part is the plain image, rescaled
    resid = b - (1 - (b - s).max()) * s
    assert resid.min() >= 0.05 - 1e-6 and resid.max() <= 0.15 + 1e-6
    assert abs(float(np.median(resid)) - 0.1) < 0.03
    with pytest.raises(InputError, match="background"):
        generate_image(64, 3, background=1.5)
