"""A bundle's self-test: its golden fundus image must give its recorded embedding on this device.

The converter stores ``selftest/golden.jpg`` and ``selftest/expected.json`` in the bundle (host
helper: ``converters/selftest_files.py``). On the device the image goes through the same
preprocessing and the engine the screener would use; the cosine similarity between the embedding
it gives and the recorded one must reach the tolerance recorded for that engine's precision. This
catches what hashes cannot: a runtime library that computes differently, a broken accelerator
driver, an engine that does not suit this hardware. Installs run it before a new bundle is trusted
(``edge_retina.install``).
"""
from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from edge_retina.bundle import Bundle, EngineEntry
from edge_retina.engines import PRECISIONS, ROLES
from edge_retina.errors import BundleError
from edge_retina.screener import Screener

EXPECTED_FILE = "selftest/expected.json"
GOLDEN_IMAGE = "selftest/golden.jpg"
FORMAT_VERSION = 1


@dataclass(frozen=True)
class ReferenceEmbedding:
    """What one encoder gave on the golden image."""

    embedding: np.ndarray  # float32 (D,)
    engine: str  # what produced it (e.g. "torch-fp32"), for people reading the file


@dataclass(frozen=True)
class SelftestExpectation:
    """The content of selftest/expected.json.

    One reference per engine role: a bundle's teacher and student are different networks, so each
    engine is compared with the embedding of the encoder it was built from.
    """

    image: str  # bundle-relative path of the golden image
    references: Mapping[str, ReferenceEmbedding]  # role ("teacher", "student") -> reference
    min_cosine: Mapping[str, float]  # precision -> lowest acceptable cosine similarity

    def to_bytes(self) -> bytes:
        return (json.dumps({
            "format_version": FORMAT_VERSION,
            "image": self.image,
            "references": {
                role: {"engine": ref.engine, "embedding": [float(v) for v in ref.embedding]}
                for role, ref in sorted(self.references.items())
            },
            "min_cosine": dict(sorted(self.min_cosine.items())),
        }, indent=2, sort_keys=True) + "\n").encode("utf-8")

    @classmethod
    def from_bytes(cls, data: bytes, *, source: str = EXPECTED_FILE) -> "SelftestExpectation":
        try:
            d = json.loads(data.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise BundleError(f"{source}: malformed JSON ({exc})") from None
        fields = {"format_version", "image", "references", "min_cosine"}
        if not isinstance(d, dict) or set(d) != fields:
            raise BundleError(f"{source}: expected exactly the fields {sorted(fields)}")
        if d["format_version"] != FORMAT_VERSION:
            raise BundleError(f"{source}: format_version {d['format_version']!r} is not {FORMAT_VERSION}")
        if not isinstance(d["image"], str):
            raise BundleError(f"{source}: image must be a bundle-relative path")
        references = d["references"]
        if not (isinstance(references, dict) and references and set(references) <= set(ROLES)):
            raise BundleError(f"{source}: references must map engine roles ({', '.join(ROLES)}) to references")
        parsed = {role: _reference(ref, f"{source}: references.{role}") for role, ref in references.items()}
        tolerances = d["min_cosine"]
        if not (isinstance(tolerances, dict) and set(tolerances) <= set(PRECISIONS)
                and all(isinstance(v, (int, float)) and -1 <= v <= 1 for v in tolerances.values())):
            raise BundleError(f"{source}: min_cosine must map precisions ({', '.join(PRECISIONS)}) to numbers in [-1, 1]")
        return cls(image=d["image"], references=parsed, min_cosine={k: float(v) for k, v in tolerances.items()})


def _reference(ref: Any, where: str) -> ReferenceEmbedding:
    if not (isinstance(ref, dict) and set(ref) == {"engine", "embedding"} and isinstance(ref["engine"], str)):
        raise BundleError(f"{where}: expected exactly the fields ['embedding', 'engine']")
    embedding = ref["embedding"]
    if not (isinstance(embedding, list) and embedding
            and all(isinstance(v, (int, float)) and math.isfinite(v) for v in embedding)):
        raise BundleError(f"{where}: embedding must be a non-empty list of finite numbers")
    return ReferenceEmbedding(embedding=np.asarray(embedding, dtype=np.float32), engine=ref["engine"])


@dataclass(frozen=True)
class SelftestResult:
    passed: bool
    message: str  # why it failed, or the measured agreement
    engine: str | None = None  # backend/precision/role of the engine tested
    cosine: float | None = None
    min_cosine: float | None = None
    max_abs_diff: float | None = None
    seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return {"passed": self.passed, "message": self.message, "engine": self.engine, "cosine": self.cosine,
                "min_cosine": self.min_cosine, "max_abs_diff": self.max_abs_diff, "seconds": round(self.seconds, 3)}


def run_selftest(
    bundle: str | Path,
    *,
    backend: str | None = None,
    precision: str | None = None,
    device: str | None = None,
    threads: int | None = None,
) -> SelftestResult:
    """Open the bundle the way ``Screener.from_bundle`` does with these options and self-test it.

    Never raises: any failure, including a bundle or engine that does not load, is a failed result,
    because the caller's decision (keep or roll back a bundle) must not depend on how it broke.
    """
    start = time.perf_counter()
    try:
        screener = Screener.from_bundle(bundle, backend, device, precision=precision, threads=threads)
    except Exception as exc:  # noqa: BLE001 - see the docstring: every failure means "do not trust"
        return _failed(f"{type(exc).__name__}: {exc}", None, start)
    with screener:
        return selftest_screener(screener, start=start)


def selftest_screener(screener: Screener, *, start: float | None = None) -> SelftestResult:
    """Self-test the engine an open screener runs (e.g. on request from a camera); never raises."""
    start = time.perf_counter() if start is None else start
    engine_name = None
    try:
        bundle = screener.bundle
        expected = SelftestExpectation.from_bytes(_read(bundle, EXPECTED_FILE), source=f"{bundle.source}: {EXPECTED_FILE}")
        engine = _running_engine(screener)
        engine_name = engine.describe()
        if engine.precision not in expected.min_cosine:
            return _failed(f"{EXPECTED_FILE} has no tolerance for {engine.precision} engines", engine_name, start)
        if engine.role not in expected.references:
            return _failed(f"{EXPECTED_FILE} has no reference embedding for {engine.role} engines", engine_name, start)
        tensor = screener.preprocessor.prepare(bundle.path_of(expected.image)).tensor
        actual = np.asarray(screener.runner.infer(tensor), dtype=np.float32).reshape(-1)
    except Exception as exc:  # noqa: BLE001 - as in run_selftest
        return _failed(f"{type(exc).__name__}: {exc}", engine_name, start)
    return _compare(expected.references[engine.role].embedding, actual, expected.min_cosine[engine.precision],
                    engine_name, start)


def synthetic_selftest(screener: Screener) -> dict[str, Any]:
    """Run a generated fundus-like image (bright disc on black) through preprocessing, the engine and
    the prompt table, past the quality gate, and check the probabilities are finite. It proves the
    pipeline runs end to end, not that the model is the right one: a bundle with a recorded golden
    embedding is checked with that instead (:func:`bundle_selftest`)."""
    size = 256
    yy, xx = np.mgrid[:size, :size]
    image = np.zeros((size, size, 3), np.uint8)
    image[(yy - size / 2) ** 2 + (xx - size / 2) ** 2 < (0.45 * size) ** 2] = (170, 80, 40)
    image[(yy - 128) ** 2 + (xx - 170) ** 2 < 15 ** 2] = (250, 220, 150)  # an optic-disc-like spot
    tensor = screener.preprocessor.prepare(image).tensor
    embedding = screener.runner.infer(tensor)[0]
    probabilities = screener.prompt_table.score(embedding).class_probabilities
    passed = bool(np.isfinite(embedding).all() and np.isfinite(probabilities).all()
                  and np.isclose(probabilities.sum(), 1.0, atol=1e-3))
    return {"passed": passed, "check": "synthetic-image"}


def bundle_selftest(screener: Screener) -> dict[str, Any]:
    """The bundle's own self-test (its golden image must give its recorded embedding, on the engine
    the screener runs) when the bundle carries one; the synthetic pipeline check otherwise. What the
    firmware bridge's SELFTEST runs."""
    if EXPECTED_FILE not in screener.bundle.manifest.files:
        return synthetic_selftest(screener)
    return {**selftest_screener(screener).to_dict(), "check": "golden-image"}


def _running_engine(screener: Screener) -> EngineEntry:
    """The manifest entry of the engine the screener's runner loaded."""
    loaded = Path(screener.runner.model_path).resolve()
    for engine in screener.bundle.manifest.engines:
        if screener.bundle.path_of(engine.primary_file) == loaded:
            return engine
    raise BundleError(f"the screener runs {loaded}, which is no engine of its bundle")


def _read(bundle: Bundle, relpath: str) -> bytes:
    if relpath not in bundle.manifest.files:
        raise BundleError(f"the bundle has no self-test ({relpath} is not in its manifest)")
    return bundle.path_of(relpath).read_bytes()


def _compare(want: np.ndarray, actual: np.ndarray, threshold: float, engine: str, start: float) -> SelftestResult:
    if actual.shape != want.shape:
        return _failed(f"the engine gives a {actual.size}-dimensional embedding; the self-test recorded {want.size}",
                       engine, start)
    if not np.all(np.isfinite(actual)):
        return _failed("the engine's embedding has NaN or infinite values", engine, start)
    norms = float(np.linalg.norm(actual)) * float(np.linalg.norm(want))
    cosine = float(np.dot(actual, want) / norms) if norms > 0 else 0.0
    max_abs = float(np.max(np.abs(actual - want)))
    passed = cosine >= threshold
    verdict = "passed" if passed else "FAILED"
    return SelftestResult(
        passed=passed,
        message=f"self-test {verdict} on {engine}: cosine {cosine:.6f} (needs >= {threshold}), max |diff| {max_abs:.3g}",
        engine=engine, cosine=cosine, min_cosine=threshold, max_abs_diff=max_abs,
        seconds=time.perf_counter() - start,
    )


def _failed(message: str, engine: str | None, start: float) -> SelftestResult:
    return SelftestResult(passed=False, message=f"self-test FAILED: {message}", engine=engine,
                          seconds=time.perf_counter() - start)
