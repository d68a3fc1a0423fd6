"""Test helper: whether a converted bundle holds every artefact a device plan asked for."""
from __future__ import annotations

from typing import Iterable

from devices import PlannedEngine
from edge_retina.bundle import EngineEntry


def missing_from_bundle(plan: Iterable[PlannedEngine], engines: Iterable[EngineEntry]) -> list[PlannedEngine]:
    """The planned artefacts a bundle's ``engines`` lack (empty: the bundle is what the plan asked for).

    An engine satisfies a planned one with the same backend, role and device profile, and either
    the same precision or an accuracy-guard ``fallback`` recorded in place of it.
    """
    engines = list(engines)

    def satisfied(planned: PlannedEngine) -> bool:
        return any(
            (e.backend, e.role, e.device_profile) == (planned.backend, planned.role, planned.device_profile)
            and (e.precision == planned.precision or e.fallback is not None)
            for e in engines
        )

    return [planned for planned in plan if not satisfied(planned)]
