"""Helpers shared by the benchmark scripts (run as ``python bench/<name>.py``)."""

from __future__ import annotations

import json
import os
import platform
import sys
from pathlib import Path

import torch

RESULTS = Path(__file__).resolve().parent / "results"


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine_info(devices) -> dict:
    """Versions, CPU, threads, load and memory of this machine (and the GPU if used)."""
    info = {
        "torch": torch.__version__,
        "devices": [str(d) for d in devices],
        "threads": torch.get_num_threads(),
        "cpu_model": cpu_model(),
        "cpus": os.cpu_count(),
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "loadavg_start": list(os.getloadavg()),
    }
    try:
        pages = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
        info["host_memory_bytes"] = int(pages)
    except (ValueError, OSError, AttributeError):
        pass
    if any(d.type == "cuda" for d in devices):
        info["cuda_device"] = torch.cuda.get_device_name(0)
        info["cuda_version"] = torch.version.cuda
    return info


def resolve_devices(spec: str) -> list[torch.device]:
    """``auto`` -> CPU (and CUDA if present); else a comma-separated list of devices."""
    if spec == "auto":
        names = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    else:
        names = [s.strip() for s in spec.split(",") if s.strip()]
    devices = [torch.device(n) for n in names]
    if any(d.type == "cuda" for d in devices) and not torch.cuda.is_available():
        raise SystemExit("--device cuda requested but PyTorch sees no CUDA GPU")
    return devices


def write_result(out_path: Path, result: dict) -> dict:
    """Write ``result`` as JSON to ``out_path`` and say where."""
    out_path.parent.mkdir(parents=True, exist_ok=True)
    out_path.write_text(json.dumps(result, indent=2))
    print(f"wrote {out_path}")
    return result
