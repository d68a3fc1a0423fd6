"""What a benchmark ran on: CPU model and flags, cores, memory, library versions."""
from __future__ import annotations

import importlib.metadata
import os
import platform
import sys

import psutil

from devices import read_machine

#: CPU flags that decide which kernels the inference libraries pick (x86 SIMD / AMX, ARM NEON / dot).
RELEVANT_FLAGS = ("sse4_2", "avx", "avx2", "fma", "f16c", "avx512f", "avx512bw", "avx512_vnni", "avx512_bf16",
                  "avx512_fp16", "avx_vnni", "amx_tile", "amx_int8", "amx_bf16", "neon", "asimd", "asimddp",
                  "asimdhp", "sve", "i8mm", "bf16")

LIBRARIES = ("numpy", "opencv-python-headless", "opencv-python", "onnxruntime", "openvino", "tensorrt", "pillow",
             "torch")


def library_versions() -> dict[str, str]:
    versions = {"python": sys.version.split()[0]}
    for name in LIBRARIES:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            continue
    return versions


def machine_info() -> dict:
    facts = read_machine()  # /proc/cpuinfo on Linux; platform's answer for the model elsewhere
    return {
        "cpu_model": facts.cpu_model or platform.processor() or platform.machine(),
        "cpu_flags": [f for f in RELEVANT_FLAGS if f in facts.cpu_flags],
        "int8_kernels": facts.int8_kernels,
        "logical_cores": os.cpu_count(),
        "physical_cores": psutil.cpu_count(logical=False),
        "usable_cores": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "memory_gib": round(psutil.virtual_memory().total / 2**30, 1),
        "load_average_1min": round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else None,
        "platform": platform.platform(),
        "libraries": library_versions(),
    }
