"""Engines: the backend, precision and role names a bundle's engines may carry, and which one a
device opens -- the one place either is decided.

Without a device profile the bundle's preference applies (``preferred_engine``). With one, the
profile lists engines best first; the first the bundle has, on a backend installed here, wins, and
when none is in the bundle the bundle's preference applies among the engines this machine can run,
so a device never refuses a bundle it could screen with (``select_engine_for_profile``). Click
choices, the manifest schema and the runners take their names from here.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Collection, Sequence

import psutil

import devices
from edge_retina.errors import BackendError, BundleError, EdgeRetinaError

if TYPE_CHECKING:
    from edge_retina.bundle.manifest import EngineEntry

BACKENDS = ("onnxruntime", "openvino", "tensorrt")
PRECISIONS = ("fp32", "fp16", "int8")
ROLES = ("teacher", "student")

# The default preference, first is best. A distilled student is what a bundle exists to ship (the
# teacher is there for parity checks); onnxruntime is in the base install so it runs everywhere; a
# lower precision is smaller and faster on the hardware it was built for, and the converter only
# ships an int8/fp16 engine that passed its accuracy guard.
ROLE_PREFERENCE = ("student", "teacher")
BACKEND_PREFERENCE = ("onnxruntime", "openvino", "tensorrt")
PRECISION_PREFERENCE = ("int8", "fp16", "fp32")

_CPU_BACKENDS = ("onnxruntime", "openvino")
#: OpenVINO's devices that are not hardware: they dispatch to those listed after ":" (or any that fits).
OPENVINO_VIRTUAL_DEVICES = ("AUTO", "HETERO", "MULTI", "BATCH")


def _preference_rank(e: "EngineEntry") -> tuple[int, int, int]:
    return (ROLE_PREFERENCE.index(e.role), BACKEND_PREFERENCE.index(e.backend),
            PRECISION_PREFERENCE.index(e.precision))


def preferred_engine(
    engines: Sequence["EngineEntry"], backend: str | None = None, precision: str | None = None,
    role: str | None = None,
) -> "EngineEntry":
    """The preferred engine among those matching every given criterion.

    Preference: role (student, teacher), then backend (onnxruntime, openvino, tensorrt), then
    precision (int8, fp16, fp32), then the order in the manifest. Raises BundleError naming what
    the bundle has when nothing matches.
    """
    matching = [
        (index, e)
        for index, e in enumerate(engines)
        if (backend is None or e.backend == backend)
        and (precision is None or e.precision == precision)
        and (role is None or e.role == role)
    ]
    if not matching:
        wanted = ", ".join(
            f"{k}={v!r}" for k, v in (("backend", backend), ("precision", precision), ("role", role)) if v is not None
        )
        available = ", ".join(e.describe() for e in engines)
        raise BundleError(f"no engine in the bundle matches {wanted} (it has: {available})")
    return min(matching, key=lambda item: (*_preference_rank(item[1]), item[0]))[1]


def device_profile(
    engines: Sequence["EngineEntry"], device: str | None, backend: str | None, precision: str | None
) -> "devices.DeviceProfile | None":
    """The profile ``device`` names ("auto": this machine's), or without one the detected profile when
    several of the ``engines`` qualify (None when only one does: detection is skipped)."""
    try:
        if device == "auto":
            return devices.detect().profile
        if device is not None:
            return devices.get_profile(device)
        qualifying = {
            (e.backend, e.precision) for e in engines
            if (backend is None or e.backend == backend) and (precision is None or e.precision == precision)
        }
        return devices.detect().profile if len(qualifying) > 1 else None
    except devices.ProfileError as exc:
        raise EdgeRetinaError(str(exc)) from None


@dataclass(frozen=True)
class EngineSelection:
    engine: "EngineEntry"
    runner_options: dict[str, Any] = field(default_factory=dict)  # keyword arguments for create_runner
    reasons: tuple[str, ...] = ()


def _candidates(
    engines: Sequence["EngineEntry"], available: Collection[str], backend: str | None, precision: str | None
) -> list["EngineEntry"]:
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
    engines: Sequence["EngineEntry"],
    profile: devices.DeviceProfile,
    available: Collection[str],
    *,
    backend: str | None = None,
    precision: str | None = None,
    apply_settings: bool = True,
) -> EngineSelection:
    """The engine ``profile`` prefers among a bundle's ``engines`` whose backend is in ``available``.

    ``backend``/``precision`` narrow the choice as in ``preferred_engine``. With ``apply_settings``
    the runner options carry the profile's thread count (CPU backends) and TensorRT workspace; the
    backend device of the chosen preference entry is always passed.
    """
    candidates = _candidates(engines, available, backend, precision)
    if not candidates:
        has = ", ".join(e.describe() for e in engines)
        wanted = "".join(f", {k}={v}" for k, v in (("backend", backend), ("precision", precision)) if v)
        raise BackendError(
            f"no engine of this bundle can run here (profile {profile.name}{wanted}): the bundle has {has}; "
            f"installed backends: {', '.join(available) or 'none'}"
        )

    def built_for_profile_first(e: "EngineEntry") -> int:
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
        chosen = min(candidates, key=_preference_rank)
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


def memory_report(profile: devices.DeviceProfile) -> dict[str, Any]:
    """This process's resident memory against the profile's budget."""
    rss_mib = psutil.Process().memory_info().rss / (1 << 20)
    return {
        "memory_budget_mib": profile.memory_budget_mib,
        "rss_mib": round(rss_mib, 1),
        "within_budget": rss_mib <= profile.memory_budget_mib,
    }


def runs_on_cpu(backend: str, device: str = "CPU") -> bool:
    """Whether ``backend`` on ``device`` may compute on the CPU: ONNX Runtime (its CPU provider), and
    OpenVINO on "CPU" or on a virtual device that names the CPU or no device at all (AUTO may pick it)."""
    if backend != "openvino":
        return backend == "onnxruntime"
    family, _, targets = device.upper().partition(":")
    family = family.split(".")[0]
    if family in OPENVINO_VIRTUAL_DEVICES:
        return not targets or "CPU" in {t.strip().split(".")[0] for t in targets.split(",")}
    return family == "CPU"


def int8_guard_caveat(engine: "EngineEntry", device: str,
                      machine: Callable[[], devices.MachineFacts] | None = None) -> str | None:
    """Why ``engine``'s accuracy-guard verdict may not hold on this ``machine()``, or None.

    An INT8 engine on the CPU computes other numbers on another family of INT8 kernels
    (``devices.MachineFacts.int8_kernels``: x86 with VNNI, x86 without, ARM): the converter records
    the family the guard measured on, and a device of another family should check the engine itself.
    ``machine`` (default: ``devices.read_machine``) is only called for such an engine.
    """
    measured = engine.guard_measured_on.get("int8_kernels")
    if engine.precision != "int8" or not measured or not runs_on_cpu(engine.backend, device):
        return None
    here = (machine or devices.read_machine)().int8_kernels
    if here == measured:
        return None
    return (f"{engine.describe()} passed the accuracy guard on a CPU with {measured} INT8 kernels; this "
            f"machine's are {here or 'of an unknown family'} and compute other numbers: check the engine "
            f"here with `edge-retina bench parity` on labelled photos, or open an FP32 engine")
