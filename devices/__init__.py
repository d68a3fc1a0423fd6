"""Device profiles, detecting which one a machine is, and what each needs from a bundle.

Device-side: the runtime (``edge_retina.engines``) picks its engine through these profiles, so nothing
here imports torch, host code or the runtime itself (pyproject.toml's import-linter contracts).
docs/DEVICES.md describes the profiles and how detection decides.
"""
from devices.detect import Candidate, Detection, detect
from devices.facts import LibraryFacts, MachineFacts, probe_libraries, read_machine
from devices.plan import PlannedEngine, build_plan
from devices.profiles import (
    PROFILE_DIR,
    DeviceProfile,
    EngineChoice,
    ProfileError,
    TensorRTOptions,
    get_profile,
    load_profile_file,
    load_profiles,
)

__all__ = [
    "PROFILE_DIR",
    "Candidate",
    "Detection",
    "DeviceProfile",
    "EngineChoice",
    "LibraryFacts",
    "MachineFacts",
    "PlannedEngine",
    "ProfileError",
    "TensorRTOptions",
    "build_plan",
    "detect",
    "get_profile",
    "load_profile_file",
    "load_profiles",
    "probe_libraries",
    "read_machine",
]
