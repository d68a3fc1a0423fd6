"""Device profiles, detecting which one a machine is, and what each needs from a bundle.

Imported by the device runtime (the screener picks its engine through it), so nothing here imports
torch or host code. docs/DEVICES.md describes the profiles and how detection decides.
"""
from devices.detect import Candidate, Detection, detect
from devices.facts import LibraryFacts, MachineFacts, probe_libraries, read_machine
from devices.plan import PlannedEngine, build_plan, missing_from_bundle
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
from devices.selection import EngineSelection, memory_report, select_engine_for_profile

__all__ = [
    "PROFILE_DIR",
    "Candidate",
    "Detection",
    "DeviceProfile",
    "EngineChoice",
    "EngineSelection",
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
    "memory_report",
    "missing_from_bundle",
    "probe_libraries",
    "read_machine",
    "select_engine_for_profile",
]
