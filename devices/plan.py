"""What a converter must emit for a set of device profiles (``edge-retina convert --device A,B``).

Each profile's ``emit`` list names artefacts by backend, precision and converter options. Profiles
that need the same artefact share it: every Jetson builds its TensorRT engine on the device from one
Q/DQ ONNX, so a bundle for three Jetsons carries that ONNX once.
"""
from __future__ import annotations

import json
from typing import Any, Iterable, Mapping, NamedTuple

from devices.profiles import DeviceProfile, get_profile


class PlannedEngine(NamedTuple):
    backend: str
    precision: str
    role: str
    options: Mapping[str, Any]     # converter options (reduce_range, high_precision): profile.schema.json
    profiles: tuple[str, ...]      # the profiles this artefact serves, in the order they were asked for
    max_input_side: int            # the smallest max_input_side of those profiles: the model must fit it

    @property
    def device_profile(self) -> str | None:
        """The manifest's ``engines[].device_profile``: the one profile served, or None when shared."""
        return self.profiles[0] if len(self.profiles) == 1 else None


def build_plan(profiles: Iterable[DeviceProfile | str], *, role: str = "student") -> list[PlannedEngine]:
    """The distinct artefacts ``profiles`` (objects or names) need, in the order first asked for.

    ``role`` is the model the engines are made from (a bundle's devices run the distilled student;
    a converter without one passes "teacher").
    """
    planned: dict[tuple[str, str, str], PlannedEngine] = {}
    for item in profiles:
        profile = get_profile(item) if isinstance(item, str) else item
        for spec in profile.emit:
            key = (spec.backend, spec.precision, json.dumps(spec.options, sort_keys=True))
            if key in planned:
                entry = planned[key]
                if profile.name not in entry.profiles:
                    planned[key] = entry._replace(
                        profiles=entry.profiles + (profile.name,),
                        max_input_side=min(entry.max_input_side, profile.max_input_side),
                    )
            else:
                planned[key] = PlannedEngine(
                    spec.backend, spec.precision, role, dict(spec.options), (profile.name,), profile.max_input_side
                )
    return list(planned.values())

