"""Naming the best profile for a machine, with the reasons a person can check.

Every profile's ``detect`` rules are evaluated against the facts; among the rules that hold, the one
with the highest priority wins (a named Jetson model beats an L4T release, which beats "an ARM64
CPU"; an Intel GPU beats the CPU's instruction set). Ties are broken by profile name and reported.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from devices.facts import LibraryFacts, MachineFacts, probe_libraries, read_machine
from devices.profiles import DetectRule, DeviceProfile, ProfileError, load_profiles


@dataclass(frozen=True)
class Candidate:
    """A profile whose rule matched, at that rule's priority, and what made it match."""

    profile: DeviceProfile
    priority: int
    evidence: tuple[str, ...]


@dataclass(frozen=True)
class Detection:
    profile: DeviceProfile
    reasons: tuple[str, ...]
    facts: dict[str, Any]            # {"machine": MachineFacts.to_dict(), "libraries": LibraryFacts.to_dict()}
    candidates: tuple[Candidate, ...]  # every matching profile, best first

    def to_dict(self) -> dict[str, Any]:
        return {
            "profile": self.profile.name,
            "title": self.profile.title,
            "reasons": list(self.reasons),
            "candidates": [{"profile": c.profile.name, "priority": c.priority} for c in self.candidates],
            "facts": self.facts,
        }


def rule_evidence(rule: DetectRule, machine: MachineFacts, libraries: LibraryFacts) -> tuple[str, ...] | None:
    """Why ``rule`` holds (one sentence per criterion), or None when one of its criteria fails."""
    evidence = []
    if rule.jetson_model_contains:
        model = machine.device_tree_model or ""
        hit = next((s for s in rule.jetson_model_contains if s.lower() in model.lower()), None)
        if hit is None:
            return None
        evidence.append(f"device-tree model {model!r} names {hit!r}")
    if rule.jetson_module:
        hits = sorted(set(rule.jetson_module) & machine.modules)
        if not hits:
            return None
        evidence.append(f"device-tree compatible lists module {', '.join(hits)}")
    if rule.l4t_major:
        if machine.l4t_major not in rule.l4t_major:
            return None
        evidence.append(
            f"/etc/nv_tegra_release says L4T R{machine.l4t_release} (JetPack {machine.jetpack or 'unknown'}); "
            f"the board model is not recognised, so the most conservative profile for that release applies"
        )
    if rule.cpu_arch:
        if machine.cpu_arch not in rule.cpu_arch:
            return None
        evidence.append(f"CPU architecture {machine.cpu_arch}")
    if rule.cpu_flags_all:
        missing = [f for f in rule.cpu_flags_all if f not in machine.cpu_flags]
        if missing:
            return None
        evidence.append(f"CPU flags include {', '.join(rule.cpu_flags_all)}")
    if rule.cpu_flags_any:
        present = [f for f in rule.cpu_flags_any if f in machine.cpu_flags]
        if not present:
            return None
        evidence.append(f"CPU flags include {', '.join(present)}")
    if rule.cpu_flags_none:
        present = [f for f in rule.cpu_flags_none if f in machine.cpu_flags]
        if present:
            return None
        evidence.append(f"CPU flags lack {', '.join(rule.cpu_flags_none)}")
    if rule.int8_kernels:
        if machine.int8_kernels not in rule.int8_kernels:
            return None
        evidence.append(f"{machine.int8_kernels_evidence}: {machine.int8_kernels} INT8 kernels")
    if rule.openvino_device_any:
        families = {d.split(".")[0].upper() for d in libraries.openvino_devices}
        present = [d for d in rule.openvino_device_any if d.upper() in families]
        if not present:
            return None
        evidence.append(f"OpenVINO lists device(s) {', '.join(libraries.openvino_devices)}")
    return tuple(evidence) or ("no other profile matched",)


def rank_profiles(
    machine: MachineFacts, libraries: LibraryFacts, profiles: dict[str, DeviceProfile]
) -> list[Candidate]:
    """Every profile with a matching rule (its best one), best first: priority, then name."""
    candidates = []
    for profile in profiles.values():
        matches = []
        for rule in profile.detect:
            evidence = rule_evidence(rule, machine, libraries)
            if evidence is not None:
                matches.append(Candidate(profile, rule.priority, evidence))
        if matches:
            candidates.append(max(matches, key=lambda c: c.priority))
    return sorted(candidates, key=lambda c: (-c.priority, c.profile.name))


def _library_reasons(profile: DeviceProfile, machine: MachineFacts, libraries: LibraryFacts) -> list[str]:
    reasons = []
    if profile.tensorrt is not None:
        if libraries.tensorrt_version is None:
            reasons.append("tensorrt does not import here: the TensorRT engine cannot be built or run "
                           "(install JetPack's TensorRT Python bindings); the next engine in the profile's order is used")
        elif libraries.tensorrt_version.split(".")[:2] != profile.tensorrt.version.split(".")[:2]:
            reasons.append(f"TensorRT {libraries.tensorrt_version} is installed, the profile expects "
                           f"{profile.tensorrt.version} (JetPack {profile.tensorrt.jetpack}): engines are built "
                           f"here for the installed version, never loaded from another one")
        else:
            reasons.append(f"TensorRT {libraries.tensorrt_version} imports")
    if any(choice.backend == "openvino" for choice in profile.preference):
        if libraries.openvino_version is None:
            reasons.append("openvino does not import here (pip install 'edge-retina[openvino]'); "
                           "OpenVINO engines are skipped")
        else:
            reasons.append(f"OpenVINO {libraries.openvino_version.split('-')[0]} sees "
                           f"{', '.join(libraries.openvino_devices) or 'no devices'}")
    return reasons


def detect(
    root: str | Path = "/",
    *,
    libraries: LibraryFacts | None = None,
    profiles: dict[str, DeviceProfile] | None = None,
) -> Detection:
    """Name the best profile for the machine whose files are under ``root``.

    ``libraries`` defaults to probing this interpreter (OpenVINO devices, TensorRT version); tests
    pass the facts of the board they stand in for. ``profiles`` defaults to the shipped ones.
    """
    machine = read_machine(root)
    libraries = probe_libraries() if libraries is None else libraries
    profiles = load_profiles() if profiles is None else profiles
    candidates = rank_profiles(machine, libraries, profiles)
    if not candidates:
        names = ", ".join(sorted(profiles))
        raise ProfileError(f"no device profile matches this machine and none is a catch-all (profiles: {names})")
    best = candidates[0]
    reasons = list(best.evidence)
    tied = [c.profile.name for c in candidates[1:] if c.priority == best.priority]
    if tied:
        reasons.append(f"equally good: {', '.join(tied)} (chosen by name; give the profile explicitly to override)")
    lower = [c.profile.name for c in candidates[1:] if c.priority < best.priority]
    if lower:
        reasons.append(f"also matching, less specific: {', '.join(lower)}")
    reasons.extend(_library_reasons(best.profile, machine, libraries))
    return Detection(
        profile=best.profile,
        reasons=tuple(reasons),
        facts={"machine": machine.to_dict(), "libraries": libraries.to_dict()},
        candidates=tuple(candidates),
    )
