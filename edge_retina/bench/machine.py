"""What a benchmark ran on: CPU model and flags, cores, memory, library versions."""
from __future__ import annotations

import importlib.metadata
import os
import platform
import sys
from pathlib import Path

import psutil

#: CPU flags that decide which kernels the inference libraries pick (x86 SIMD / AMX, ARM NEON / dot).
RELEVANT_FLAGS = ("sse4_2", "avx", "avx2", "fma", "f16c", "avx512f", "avx512bw", "avx512_vnni", "avx512_bf16",
                  "avx512_fp16", "avx_vnni", "amx_tile", "amx_int8", "amx_bf16", "neon", "asimd", "asimddp",
                  "asimdhp", "sve", "i8mm", "bf16")

LIBRARIES = ("numpy", "opencv-python-headless", "opencv-python", "onnxruntime", "openvino", "tensorrt", "pillow",
             "torch")


def _cpuinfo() -> tuple[str, list[str]]:
    """(model name, flags) from /proc/cpuinfo on Linux; platform's answer elsewhere."""
    model, flags = platform.processor() or platform.machine(), []
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        for line in cpuinfo.read_text(errors="replace").splitlines():
            key, _, value = line.partition(":")
            key = key.strip().lower()
            if key in ("model name", "cpu model", "hardware") and value.strip():
                model = value.strip()
            elif key in ("flags", "features") and not flags:
                flags = value.split()
    return model, flags


def library_versions() -> dict[str, str]:
    versions = {"python": sys.version.split()[0]}
    for name in LIBRARIES:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            continue
    return versions


def machine_info() -> dict:
    model, flags = _cpuinfo()
    return {
        "cpu_model": model,
        "cpu_flags": [f for f in RELEVANT_FLAGS if f in flags],
        "logical_cores": os.cpu_count(),
        "physical_cores": psutil.cpu_count(logical=False),
        "usable_cores": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "memory_gib": round(psutil.virtual_memory().total / 2**30, 1),
        "load_average_1min": round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else None,
        "platform": platform.platform(),
        "libraries": library_versions(),
    }
