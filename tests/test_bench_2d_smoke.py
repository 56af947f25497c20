"""Smoke tests of the 2D benchmarks (bench/denoise_2d.py, bench/mc_sampling.py): each main
function runs with tiny sizes and writes a JSON result with the expected keys and finite
numbers."""

from __future__ import annotations

import importlib.util
import json
import math
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "bench"

pytest.importorskip("skimage")


def _load(name: str):
    sys.path.insert(0, str(BENCH))
    try:
        spec = importlib.util.spec_from_file_location(f"bench_{name}", BENCH / f"{name}.py")
        mod = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(mod)
    finally:
        sys.path.remove(str(BENCH))
    return mod


def _finite(x) -> bool:
    return isinstance(x, (int, float)) and math.isfinite(x)


@pytest.mark.slow
def test_denoise_2d_quick(tmp_path):
    # NL-means's noise estimate (skimage estimate_sigma) needs PyWavelets: the bench extra
    pytest.importorskip("pywt")
    mod = _load("denoise_2d")
    out = tmp_path / "denoise.json"
    assert mod.main(["--quick", "--threads", "1", "--out", str(out)]) == 0
    res = json.loads(out.read_text())
    assert res["benchmark"] == "denoise_2d"
    assert {"machine", "settings", "training", "sets"} <= set(res)
    assert set(res["sets"]) == {"synth2d", "nuclei"}
    expected = {"noisy", "nl-means", "nl-means (h tuned)", "ours"}
    if res["settings"]["bm3d"]:
        expected.add("bm3d")
    for name, s in res["sets"].items():
        assert set(s["methods"]) == expected, name
        for m in s["methods"].values():
            assert _finite(m["psnr"]) and _finite(m["ssim"]) and _finite(m["seconds_per_image"])
        # independent truth: additive N(0, 0.1^2) noise on [0, 1] gives PSNR = 20 dB
        assert abs(s["methods"]["noisy"]["psnr"] - 20.0) < 0.6
        assert s["methods"]["nl-means"]["psnr"] > s["methods"]["noisy"]["psnr"] + 3
        cal = s["calibration"]
        assert "raw" in cal and "s from synth2d cal" in cal
        for c in cal.values():
            for key in ("sigma_scale", "zms", "cov95", "spearman", "uce"):
                assert _finite(c[key]), (name, key)
            assert 0.0 <= c["cov95"] <= 1.0
            assert set(c["zms_by_intensity"]) == {"background", "mid", "bright"}
        # the scale fitted on a split makes that split's ZMS 1; another split is close
        assert 0.3 < cal["s from synth2d cal"]["zms"] < 3.0


@pytest.mark.slow
def test_mc_sampling_quick(tmp_path):
    mod = _load("mc_sampling")
    out = tmp_path / "mc.json"
    assert mod.main(["--quick", "--threads", "1", "--out", str(out)]) == 0
    res = json.loads(out.read_text())
    assert res["benchmark"] == "mc_sampling"
    assert {"machine", "settings", "rows", "same_distribution", "replicate_check"} <= set(res)
    methods = [(r["method"], r["tile"], r["chunk"]) for r in res["rows"]]
    assert methods[0] == ("loop", None, 1)
    assert {m[2] for m in methods if m[0] == "batched"} == set(res["settings"]["chunks"])
    for r in res["rows"]:
        assert "error" not in r, r
        for key in ("wall_s", "cpu_s", "speedup_vs_loop"):
            assert _finite(r[key]) and r[key] > 0, (r, key)
        assert r["peak_bytes"] is None or _finite(r["peak_bytes"])
    tiled = [r for r in res["rows"] if r["tile"]]
    assert tiled and all(r["n_tiles"] > 1 for r in tiled)
    rc = res["replicate_check"]
    for key in ("m", "s"):
        assert 0.0 <= rc[key]["welch_p"] <= 1.0 and 0.0 <= rc[key]["ks_p"] <= 1.0
    for c in res["same_distribution"].values():
        assert _finite(c["z_mean"]) and _finite(c["std_ratio_mean"])
