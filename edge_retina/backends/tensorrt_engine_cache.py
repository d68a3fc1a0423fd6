"""Where TensorRT engines are cached, when a cached engine may be reused, and building one on the
device ahead of time (through the runner, or the same recipe for ``trtexec``).

A TensorRT engine is only valid for the GPU model and TensorRT version that built it, so engines are
built on the device from the bundle's ONNX and cached as
``<cache_dir>/<gpu-name-slug>_trt<version>/<onnx-sha256-prefix>.engine`` beside a JSON sidecar that
records what the engine was built for. An engine whose sidecar does not match the local GPU,
TensorRT version and source ONNX is never loaded: it is rebuilt. Everything here is plain Python
(no TensorRT, no CUDA, no torch) so the rules are testable on any machine and a device imports it
without the host toolchain.
"""
from __future__ import annotations

import json
import logging
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edge_retina.backends.base import INPUT_NAME
from edge_retina.files import sha256_file, write_atomically
from edge_retina.user_caches import mark_used, user_cache_dir

logger = logging.getLogger(__name__)

#: Hex digits of the ONNX sha256 in an engine's file name: enough to never collide in one cache.
ONNX_SHA_PREFIX_LENGTH = 16
ENGINE_SUFFIX = ".engine"
SIDECAR_SUFFIX = ".json"
TIMING_CACHE_NAME = "timing.cache"
#: The largest batch an engine's optimisation profile accepts unless the caller says otherwise.
DEFAULT_MAX_BATCH = 8


@dataclass(frozen=True)
class EngineTarget:
    """What an engine is specific to: the GPU model, the TensorRT version, and the accelerator it
    was built for (``dla_core`` None: the GPU; else that DLA core, with layers the DLA cannot run on
    the GPU): a DLA engine and a GPU engine of one ONNX are different engines."""

    gpu_name: str
    compute_capability: tuple[int, int]
    tensorrt_version: str
    dla_core: int | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "compute_capability", tuple(int(v) for v in self.compute_capability))


def default_cache_dir() -> Path:
    """``$XDG_CACHE_HOME/edge-retina/tensorrt`` (``~/.cache/...`` by default): bundles may be read-only."""
    return user_cache_dir("tensorrt")


def slugify(text: str) -> str:
    """Lower-case, runs of anything but letters, digits and dots become one '-'.

    >>> slugify("NVIDIA GeForce RTX 4090")
    'nvidia-geforce-rtx-4090'
    """
    slug = re.sub(r"[^a-z0-9.]+", "-", text.strip().lower()).strip("-")
    if not slug:
        raise ValueError(f"cannot make a file-name slug from {text!r}")
    return slug


def target_dir(cache_dir: Path, target: EngineTarget) -> Path:
    """The cache folder for one GPU model, TensorRT version and accelerator."""
    dla = "" if target.dla_core is None else f"_dla{target.dla_core}"
    return Path(cache_dir) / f"{slugify(target.gpu_name)}_trt{slugify(target.tensorrt_version)}{dla}"


def engine_path(cache_dir: Path, target: EngineTarget, onnx_sha256: str) -> Path:
    return target_dir(cache_dir, target) / f"{onnx_sha256[:ONNX_SHA_PREFIX_LENGTH]}{ENGINE_SUFFIX}"


def sidecar_path(engine: Path) -> Path:
    return Path(engine).with_suffix(SIDECAR_SUFFIX)


def timing_cache_path(cache_dir: Path, target: EngineTarget) -> Path:
    """Kernel timings are per GPU and TensorRT version, like engines; later builds reuse them."""
    return target_dir(cache_dir, target) / TIMING_CACHE_NAME


def sidecar_record(target: EngineTarget, onnx_sha256: str) -> dict[str, Any]:
    return {
        "gpu_name": target.gpu_name,
        "compute_capability": list(target.compute_capability),
        "tensorrt_version": target.tensorrt_version,
        "dla_core": target.dla_core,
        "onnx_sha256": onnx_sha256,
    }


def target_mismatch(record: dict[str, Any], target: EngineTarget) -> str | None:
    """Why an engine described by ``record`` cannot run on ``target``; None when it can."""
    built_for = (
        ("GPU", record.get("gpu_name"), target.gpu_name),
        ("compute capability", tuple(record.get("compute_capability") or ()), target.compute_capability),
        ("TensorRT version", record.get("tensorrt_version"), target.tensorrt_version),
    )
    for what, recorded, local in built_for:
        if recorded != local:
            return f"engine was built for {what} {recorded!r}, this device has {local!r}"
    # Sidecars written before DLA support have no "dla_core": those engines were built for the GPU.
    built_on, wanted = record.get("dla_core"), target.dla_core
    if built_on != wanted:
        def where(core: int | None) -> str:
            return "the GPU" if core is None else f"DLA core {core}"

        return f"engine was built for {where(built_on)}, this runner is asked for {where(wanted)}"
    return None


def read_sidecar(engine: Path) -> dict[str, Any]:
    """The sidecar of ``engine``; raises ValueError when it is missing or unreadable."""
    path = sidecar_path(engine)
    try:
        record = json.loads(path.read_text())
    except FileNotFoundError:
        raise ValueError(f"no sidecar {path.name} beside the engine") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(f"sidecar {path.name} is unreadable: {exc}") from None
    if not isinstance(record, dict):
        raise ValueError(f"sidecar {path.name} is not a JSON object")
    return record


def engine_mismatch(engine: Path, target: EngineTarget, onnx_sha256: str) -> str | None:
    """Why the cached ``engine`` must not be loaded for this ONNX on this device; None when it may."""
    if not Path(engine).is_file():
        return "no cached engine yet"
    try:
        record = read_sidecar(engine)
    except ValueError as exc:
        return str(exc)
    if record.get("onnx_sha256") != onnx_sha256:
        return "engine was built from a different ONNX file"
    return target_mismatch(record, target)


def store_engine(engine: Path, engine_bytes: bytes, target: EngineTarget, onnx_sha256: str) -> None:
    """Save an engine and then its sidecar; the sidecar goes last so a crash leaves no valid pair."""
    sidecar_path(engine).unlink(missing_ok=True)
    write_atomically(engine, engine_bytes)
    record = json.dumps(sidecar_record(target, onnx_sha256), indent=2, sort_keys=True) + "\n"
    write_atomically(sidecar_path(engine), record.encode())


def store_timing_cache(path: Path, data: bytes) -> None:
    write_atomically(path, data)


def ensure_engine(
    onnx_path: Path, cache_dir: Path, target: EngineTarget, build: Callable[[Path], bytes]
) -> Path:
    """Path of an engine for ``onnx_path`` valid on ``target``, building it with ``build`` if needed.

    ``build`` gets the ONNX path and returns the serialized engine. Why an engine is (re)built is
    logged: a first build is routine, a rejected cached engine is worth a warning.
    """
    onnx_sha256 = sha256_file(onnx_path)
    engine = engine_path(cache_dir, target, onnx_sha256)
    reason = engine_mismatch(engine, target, onnx_sha256)
    if reason is None:
        # The prunable entry is the GPU's folder in the TensorRT cache, or (a Screener's) the bundle's
        # folder in the engines cache that holds it: mark both.
        mark_used(Path(cache_dir))
        mark_used(engine.parent)
        return engine
    log = logger.warning if engine.exists() else logger.info
    log("building TensorRT engine %s from %s: %s", engine, onnx_path, reason)
    store_engine(engine, build(onnx_path), target, onnx_sha256)
    return engine


def build_engine_on_device(qdq_onnx: Path, *, cache_dir: Path | None = None, device: str = "GPU",
                           max_batch: int = DEFAULT_MAX_BATCH) -> Path:
    """On the device: build (or reuse) the engine for the local GPU and TensorRT version; its path.

    The TensorRT runner does the build and caching; this only asks it to (ahead of the first image).
    """
    from edge_retina.backends import create_runner

    with create_runner("tensorrt", qdq_onnx, precision="int8", device=device, cache_dir=cache_dir,
                       max_batch=max_batch) as runner:
        return Path(runner.info()["engine_path"])


def trtexec_command(qdq_onnx: Path, engine: Path, timing_cache: Path, *, tensorrt_major: int = 10,
                    max_batch: int = DEFAULT_MAX_BATCH, input_shape: tuple[int, int, int] = (3, 224, 224)) -> list[str]:
    """The same build with ``trtexec`` (devices without TensorRT's Python bindings).

    TensorRT >= 10: a strongly typed network, precisions from the Q/DQ nodes, no precision flags.
    TensorRT 8.5 (Jetson Xavier, JetPack 5.1): no strongly typed mode; ``--int8 --fp16`` let the
    builder use the Q/DQ scales and run the rest in FP16.
    """
    shape = "x".join(str(d) for d in input_shape)
    command = [
        "trtexec", f"--onnx={qdq_onnx}", f"--saveEngine={engine}", f"--timingCacheFile={timing_cache}",
        f"--minShapes={INPUT_NAME}:1x{shape}", f"--optShapes={INPUT_NAME}:1x{shape}",
        f"--maxShapes={INPUT_NAME}:{max_batch}x{shape}",
    ]
    command += ["--stronglyTyped"] if tensorrt_major >= 10 else ["--int8", "--fp16"]
    return command
