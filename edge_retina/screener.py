"""The device-side screening API: bundle in, per-image results out.

    screener = Screener.from_bundle("default.erb.tar")
    result = screener.screen("IMG_0001.JPG")
    result.probabilities["glaucoma"], result.referral["glaucoma"], result.timings_ms

Pipeline: preprocessing (decode, field-of-view crop, resize, normalise) -> engine -> prompt lookup.
Nothing here imports torch: this is what runs on the device.
"""
from __future__ import annotations

import hashlib
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Iterator, Mapping, Sequence

import numpy as np

import devices

from . import engines
from .adapt.overlay import bundle_scoring
from .backends import Runner, available_backends, create_runner
from .bundle import Bundle, EngineEntry, load_bundle
from .errors import EdgeRetinaError, ImageError
from .user_caches import user_cache_dir
from .preprocess import Preprocessor
from .prompt_table import PromptTable

logger = logging.getLogger(__name__)

#: The stages of ``Result.timings_ms``, in order (results files, summaries and benchmarks use it).
STAGES = ("decode", "preprocess", "inference", "lookup", "total")


@dataclass
class Result:
    """One image's outcome. ``error`` is set when the image could not be screened at all."""

    source: str
    gradable: bool | None = None
    ungradable_reason: str | None = None
    probabilities: dict[str, float] = field(default_factory=dict)  # condition vs normal
    class_probabilities: dict[str, float] = field(default_factory=dict)  # softmax over all classes
    referral: dict[str, bool] = field(default_factory=dict)  # probability >= the bundle's threshold
    timings_ms: dict[str, float] = field(default_factory=dict)  # decode, preprocess, inference, lookup, total
    error: str | None = None
    error_code: str | None = None
    eye: str | None = None  # "right", "left" or "both", when the source says (DICOM laterality)
    identifiers: dict[str, str] = field(default_factory=dict)  # patient/study/instance ids of a DICOM source
    embedding: np.ndarray | None = field(default=None, repr=False)

    @property
    def screened(self) -> bool:
        return self.error is None

    @property
    def refer(self) -> bool:
        """Refer when any reported condition is over its threshold: only the screener's ``conditions``
        are reported, so a screener made for some of the bundle's conditions refers for those alone."""
        return any(self.referral.values())

    @property
    def status(self) -> str:
        if self.error is not None:
            return "error"
        if not self.gradable:
            return "ungradable"
        return "refer" if self.refer else "no-referral"

    def to_dict(self) -> dict[str, Any]:
        return {
            "source": self.source,
            "status": self.status,
            "gradable": self.gradable,
            "ungradable_reason": self.ungradable_reason,
            "refer": self.refer if self.screened and self.gradable else None,
            "probabilities": {k: round(float(v), 6) for k, v in self.probabilities.items()},
            "referral": dict(self.referral),
            "class_probabilities": {k: round(float(v), 6) for k, v in self.class_probabilities.items()},
            "timings_ms": {k: round(v, 3) for k, v in self.timings_ms.items()},
            "error": self.error,
            "error_code": self.error_code,
            "eye": self.eye,
            "identifiers": dict(self.identifiers),
        }


@dataclass
class Staged:
    """An image between :meth:`Screener.preprocess` and :meth:`Screener.complete`."""

    result: Result  # finished when ``tensor`` is None (unreadable or ungradable)
    tensor: np.ndarray | None  # the model input, (1, 3, H, W)
    start: float  # time.perf_counter() when its preprocessing started


def engine_cache_dir(bundle: Bundle, engine: EngineEntry) -> Path:
    """Cache for what a backend compiles from ``engine`` (OpenVINO model cache, TensorRT engines built
    on the device).

    Kept outside the bundle, which may sit on read-only storage or be a shared archive extraction,
    and keyed by the sha256 of the engine's files as the manifest pins them, not by the manifest: a
    bundle adapted to a site or signed again (a new manifest, the same engine) finds the engine it
    compiled before, which on a Jetson saves minutes of TensorRT building at the next start.
    """
    pinned = "".join(bundle.manifest.files[f] for f in engine.files)
    return user_cache_dir("engines") / hashlib.sha256(pinned.encode()).hexdigest()[:16]


def choose_engine(
    bundle: Bundle, backend: str | None = None, device: str | None = None, precision: str | None = None,
) -> tuple[EngineEntry, dict[str, Any], devices.DeviceProfile | None]:
    """The engine ``Screener.from_bundle`` opens for these arguments, the runner options its device
    profile gives (backend device, threads) and that profile (None when no profile applies); for a
    caller that opens the engine elsewhere, e.g. on archive workers, to say what they will run."""
    profile = engines.device_profile(bundle.manifest.engines, device, backend, precision)
    if profile is None:
        return bundle.select_engine(backend=backend, precision=precision), {}, None
    selection = engines.select_engine_for_profile(
        bundle.manifest.engines, profile, available_backends(),
        backend=backend, precision=precision, apply_settings=device is not None,
    )
    for reason in selection.reasons:
        logger.info("%s", reason)
    return selection.engine, selection.runner_options, profile


class Screener:
    """Preprocessing, one engine and the prompt table of a bundle, ready to screen images."""

    def __init__(
        self,
        bundle: Bundle,
        runner: Runner,
        prompt_table: PromptTable,
        *,
        conditions: Iterable[str] | None = None,
        keep_embeddings: bool = False,
        device_profile: "devices.DeviceProfile | None" = None,
    ):
        self.bundle = bundle
        self.runner = runner
        #: The device profile whose settings were applied (None: the backend's defaults).
        self.device_profile = device_profile
        self.prompt_table = prompt_table
        self.preprocessor = Preprocessor(bundle.manifest.input)
        self.thresholds = bundle.manifest.referral_thresholds  # a site adaptation's where it has one
        self.keep_embeddings = keep_embeddings
        self.conditions = self._choose_conditions(conditions)

    @classmethod
    def from_bundle(
        cls,
        path: str | Path,
        backend: str | None = None,
        device: str | None = None,
        *,
        precision: str | None = None,
        threads: int | None = None,
        conditions: Iterable[str] | None = None,
        keep_embeddings: bool = False,
        trusted_keys: "Mapping[str, Any] | None" = None,
    ) -> "Screener":
        """Load and verify a bundle, open its best engine for ``backend``/``precision``, read its prompts.

        ``trusted_keys`` (``signing.TrustedKeys``): refuse the bundle (BundleError) unless one of them
        signed its manifest, the manifest whose files were just verified.

        ``device`` names a device profile (``edge-retina devices list``), or is "auto" to detect this
        machine's: the engine is then the first of the profile's preferences that the bundle has and
        this machine can run, and the profile's backend device, thread count and TensorRT options are
        applied (``threads`` still wins). Without ``device`` the bundle's preferred engine is opened
        with the backend's defaults, except that when several engines qualify the detected profile's
        preference picks among them (and the backend device it names, e.g. an Intel GPU).
        """
        bundle = load_bundle(Path(path))
        if trusted_keys is not None:
            from .bundle.signing import check_signature  # cryptography: only when signatures are checked

            check_signature(bundle.root, trusted_keys, name=path)
        engine, options, profile = choose_engine(bundle, backend, device, precision)
        if threads is not None:
            options["threads"] = threads
        caveat = engines.int8_guard_caveat(engine, options.get("device", "CPU"))
        if caveat:
            logger.warning("%s", caveat)
        runner = create_runner(
            engine.backend,
            bundle.path_of(engine.files[0]),
            precision=engine.precision,
            cache_dir=engine_cache_dir(bundle, engine),
            **options,
        )
        applied = profile if device is not None else None
        if applied is not None:
            memory = engines.memory_report(applied)
            if not memory["within_budget"]:
                logger.warning("after loading %s the process uses %.0f MiB, over the %s profile's budget of %d MiB",
                               engine.describe(), memory["rss_mib"], applied.name, applied.memory_budget_mib)
        table, _ = bundle_scoring(bundle)  # with the bundle's site adaptation, if it has one
        return cls(bundle, runner, table, conditions=conditions, keep_embeddings=keep_embeddings,
                   device_profile=applied)

    def _choose_conditions(self, requested: Iterable[str] | None) -> tuple[str, ...]:
        available = self.prompt_table.conditions
        if requested is None:
            return available
        requested = tuple(dict.fromkeys(requested))  # "glaucoma,glaucoma" reports glaucoma once
        unknown = [c for c in requested if c not in available]
        if unknown:
            raise EdgeRetinaError(f"unknown {'condition' if len(unknown) == 1 else 'conditions'} "
                                  f"{', '.join(map(repr, unknown))}; this bundle reports {', '.join(available)}")
        return requested

    @property
    def engine_info(self) -> dict[str, Any]:
        """The runner's info, plus the applied device profile and memory against its budget."""
        info = self.runner.info()
        if self.device_profile is not None:
            info["device_profile"] = self.device_profile.name
            info.update(engines.memory_report(self.device_profile))
        return info

    def screen(self, source: "str | Path | bytes | np.ndarray", *, name: str | None = None) -> Result:
        """Screen one image. Bad input becomes a Result with ``error`` set, never an exception."""
        return self.complete([self.preprocess(source, name=name)])[0]

    def preprocess(self, source: "str | Path | bytes | np.ndarray", *, name: str | None = None) -> "Staged":
        """The part of :meth:`screen` before the engine: decode, preprocessing, quality gate.

        Safe to call from several threads at once (it touches no engine): the screening pipeline
        (``edge_retina.pipeline``) runs it on worker threads. Bad input gives a finished Result.
        """
        label = name or (str(source) if isinstance(source, (str, Path)) else f"<{type(source).__name__}>")
        start = time.perf_counter()
        try:
            prepared = self.preprocessor.prepare(source, name=name)
        except ImageError as exc:
            return Staged(Result(label, error=str(exc), error_code=exc.code), None, start)
        result = Result(
            label,
            gradable=prepared.quality.gradable,
            ungradable_reason=prepared.quality.reason,
            timings_ms={k: v * 1e3 for k, v in prepared.timings.items()},
        )
        if prepared.dicom is not None:
            result.eye, result.identifiers = prepared.dicom.eye, dict(prepared.dicom.identifiers)
        if not prepared.quality.gradable:
            result.timings_ms["total"] = (time.perf_counter() - start) * 1e3
            return Staged(result, None, start)
        return Staged(result, prepared.tensor, start)

    def complete(self, staged: Sequence["Staged"]) -> list[Result]:
        """Run the engine once, as one batch, on the staged images that need it; their results.

        Per image, ``inference`` and ``lookup`` are its share of the batch's time and ``total`` runs
        from the start of its preprocessing (so it includes any wait for the engine).
        """
        waiting = [s for s in staged if s.tensor is not None]
        if waiting:
            t0 = time.perf_counter()
            embeddings = self.runner.infer(np.concatenate([s.tensor for s in waiting]))
            t1 = time.perf_counter()
            scores = self.prompt_table.score(embeddings)
            t2 = time.perf_counter()
            for i, s in enumerate(waiting):
                result = s.result
                result.probabilities = {c: float(scores.condition_probabilities[c][i]) for c in self.conditions}
                result.class_probabilities = {c: float(p) for c, p in zip(scores.classes, scores.class_probabilities[i])}
                result.referral = {c: result.probabilities[c] >= self.thresholds[c] for c in self.conditions}
                result.timings_ms.update(inference=(t1 - t0) * 1e3 / len(waiting),
                                         lookup=(t2 - t1) * 1e3 / len(waiting), total=(t2 - s.start) * 1e3)
                if self.keep_embeddings:
                    result.embedding = embeddings[i]
        return [s.result for s in staged]

    def screen_many(self, sources: Iterable["str | Path"]) -> Iterator[Result]:
        for source in sources:
            yield self.screen(source)

    def close(self) -> None:
        self.runner.close()

    def __enter__(self) -> "Screener":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
