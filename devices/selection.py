"""Choosing a bundle's engine for a device profile, and the runner settings the profile implies.

The profile lists engines best first; the first one the bundle has, on a backend installed here,
wins. When none of them is in the bundle the bundle's own preference (``Manifest.select_engine``'s
order) applies among the engines this machine can run, so a device never refuses a bundle it could
screen with.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Collection, Sequence

import psutil

from devices.profiles import DeviceProfile
from edge_retina.bundle.manifest import (
    BACKEND_PREFERENCE,
    PRECISION_PREFERENCE,
    ROLE_PREFERENCE,
    EngineEntry,
)
from edge_retina.errors import BackendError

_CPU_BACKENDS = ("onnxruntime", "openvino")


@dataclass(frozen=True)
class EngineSelection:
    engine: EngineEntry
    runner_options: dict[str, Any] = field(default_factory=dict)  # keyword arguments for create_runner
    reasons: tuple[str, ...] = ()


def _candidates(
    engines: Sequence[EngineEntry], available: Collection[str], backend: str | None, precision: str | None
) -> list[EngineEntry]:
    """Engines that match the caller's filters and run here, of the most preferred role that has any."""
    runnable = [
        e for e in engines
        if e.backend in available
        and (backend is None or e.backend == backend)
        and (precision is None or e.precision == precision)
    ]
    for role in ROLE_PREFERENCE:
        of_role = [e for e in runnable if e.role == role]
        if of_role:
            return of_role
    return []


def select_engine_for_profile(
    engines: Sequence[EngineEntry],
    profile: DeviceProfile,
    available: Collection[str],
    *,
    backend: str | None = None,
    precision: str | None = None,
    apply_settings: bool = True,
) -> EngineSelection:
    """The engine ``profile`` prefers among a bundle's ``engines`` whose backend is in ``available``.

    ``backend``/``precision`` narrow the choice as in ``Manifest.select_engine``. With
    ``apply_settings`` the runner options carry the profile's thread count (CPU backends) and
    TensorRT workspace; the backend device of the chosen preference entry is always passed.
    """
    candidates = _candidates(engines, available, backend, precision)
    if not candidates:
        has = ", ".join(e.describe() for e in engines)
        wanted = "".join(f", {k}={v}" for k, v in (("backend", backend), ("precision", precision)) if v)
        raise BackendError(
            f"no engine of this bundle can run here (profile {profile.name}{wanted}): the bundle has {has}; "
            f"installed backends: {', '.join(available) or 'none'}"
        )

    def built_for_profile_first(e: EngineEntry) -> int:
        # An engine tuned for this profile, then one for any device, then one tuned for another device.
        return 0 if e.device_profile == profile.name else 1 if e.device_profile is None else 2

    reasons = []
    chosen, device = None, None
    for rank, choice in enumerate(profile.preference):
        matches = [e for e in candidates if (e.backend, e.precision) == (choice.backend, choice.precision)]
        if matches:
            chosen, device = min(matches, key=built_for_profile_first), choice.device
            place = "its first choice" if rank == 0 else f"choice {rank + 1} of {len(profile.preference)}"
            reasons.append(f"profile {profile.name}: {choice.backend} {choice.precision} is {place} and the bundle has it")
            break
    if chosen is None:
        chosen = min(
            candidates,
            key=lambda e: (BACKEND_PREFERENCE.index(e.backend), PRECISION_PREFERENCE.index(e.precision)),
        )
        reasons.append(
            f"profile {profile.name}: none of its engines ({', '.join(f'{c.backend} {c.precision}' for c in profile.preference)}) "
            f"is in the bundle or installed here; using the bundle's preferred {chosen.describe()}"
        )

    options: dict[str, Any] = {} if device is None else {"device": device}
    if apply_settings:
        if chosen.backend in _CPU_BACKENDS and profile.threads is not None:
            options["threads"] = profile.threads
        if chosen.backend == "tensorrt" and profile.tensorrt is not None:
            options["workspace_bytes"] = profile.tensorrt.workspace_mib << 20
            if profile.tensorrt.dla_core is not None:
                options["dla_core"] = profile.tensorrt.dla_core
                options["gpu_fallback"] = profile.tensorrt.gpu_fallback
                fallback = "with" if profile.tensorrt.gpu_fallback else "without"
                reasons.append(f"the engine is built for DLA core {profile.tensorrt.dla_core}, {fallback} GPU fallback, "
                               "as the profile asks")
    return EngineSelection(chosen, options, tuple(reasons))


def memory_report(profile: DeviceProfile) -> dict[str, Any]:
    """This process's resident memory against the profile's budget."""
    rss_mib = psutil.Process().memory_info().rss / (1 << 20)
    return {
        "memory_budget_mib": profile.memory_budget_mib,
        "rss_mib": round(rss_mib, 1),
        "within_budget": rss_mib <= profile.memory_budget_mib,
    }
