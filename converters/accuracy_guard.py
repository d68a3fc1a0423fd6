"""The accuracy guard: no INT8 engine ships unless it matches its own FP32 model, and when one
does not, the fallback is automatic and recorded.

Check (``check_against_fp32``), on held-out images the quantizer never saw: per-image embedding
cosine to the FP32 model's embedding, zero-shot decision agreement (the same top class), and, where
labels are given, the AUROC change per condition. Limits (``GuardLimits``): mean cosine >= 0.99 and
|ΔAUROC| <= 0.005 by default.

Fallback (``guarded_build``): INT8 with the most sensitive layers left in floating point, more of
them each round (1, 2, 4, 8 by default); then FP16; then FP32 (an FP16 request: FP32). Sensitivity (``layer_sensitivity``) is
the per-layer quantization error of the INT8 model: the signal-to-quantization-noise ratio (dB) of
every Q/DQ'd activation, measured with ONNX Runtime's ``qdq_loss_debug`` tools and charged to the
Conv/MatMul/Gemm nodes it feeds. Every attempt and the outcome go into the engine's manifest entry
(``fallback`` when anything fell back, ``notes`` always); if even FP32 fails, ``GuardError``.
"""
from __future__ import annotations

import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Generic, Sequence, TypeVar

import numpy as np
import onnx
from onnxruntime.quantization.qdq_loss_debug import (
    DEQUANT_OUTPUT_SUFFIX,
    collect_activations,
    compute_signal_to_quantization_noice_ratio,
    create_activation_matching,
    modify_model_output_intermediate_tensors,
)

from calibration.reader import ArrayCalibrationReader
from converters.quantize.policy import QUANTIZED_OP_TYPES
from edge_retina.bench.metrics import auroc, cosine_similarity
from edge_retina.errors import EdgeRetinaError
from edge_retina.prompts import PromptTable

DEFAULT_EXCLUSION_STEPS = (1, 2, 4, 8)
DEFAULT_FALLBACK_PRECISIONS = ("fp16", "fp32")

Artefact = TypeVar("Artefact")


class GuardError(EdgeRetinaError):
    """Not even the fallbacks met the limits: nothing is shipped for this engine."""


@dataclass(frozen=True)
class GuardLimits:
    max_auroc_drop: float = 0.005  # |ΔAUROC| per condition, INT8 vs its FP32 model
    min_mean_cosine: float = 0.99

    def to_dict(self) -> dict[str, float]:
        return {"max_auroc_drop": self.max_auroc_drop, "min_mean_cosine": self.min_mean_cosine}


@dataclass
class GuardCheck:
    """One artefact against its FP32 model on held-out images."""

    images: int
    mean_cosine: float
    min_cosine: float
    decision_agreement: float | None  # share of images with the same top zero-shot class
    delta_auroc: dict[str, float]  # condition -> AUROC(candidate) - AUROC(fp32)
    failures: list[str]

    @property
    def passed(self) -> bool:
        return not self.failures

    def to_dict(self) -> dict[str, Any]:
        return {
            "images": self.images,
            "mean_cosine": round(self.mean_cosine, 6),
            "min_cosine": round(self.min_cosine, 6),
            "decision_agreement": None if self.decision_agreement is None else round(self.decision_agreement, 6),
            "delta_auroc": {k: round(v, 6) for k, v in self.delta_auroc.items()},
            "passed": self.passed,
            "failures": list(self.failures),
        }


def check_against_fp32(
    fp32: np.ndarray,
    candidate: np.ndarray,
    *,
    table: PromptTable | None = None,
    labels: dict[str, np.ndarray] | None = None,
    limits: GuardLimits = GuardLimits(),
) -> GuardCheck:
    """Compare (N, D) embeddings of the same images; ``labels`` (condition -> 0/1/NaN per image) need ``table``."""
    cos = cosine_similarity(candidate, fp32)
    agreement = None
    delta: dict[str, float] = {}
    if table is not None:
        reference_top = table.score(fp32).class_probabilities.argmax(axis=1)
        candidate_top = table.score(candidate).class_probabilities.argmax(axis=1)
        agreement = float(np.mean(reference_top == candidate_top))
        if labels:
            before = table.score(fp32).condition_probabilities
            after = table.score(candidate).condition_probabilities
            for condition, y in labels.items():
                labelled = ~np.isnan(y)
                if condition in before and len(np.unique(y[labelled])) == 2:
                    delta[condition] = (auroc(y[labelled], after[condition][labelled])
                                        - auroc(y[labelled], before[condition][labelled]))
    failures = []
    if float(cos.mean()) < limits.min_mean_cosine:
        failures.append(f"mean cosine {cos.mean():.4f} < {limits.min_mean_cosine}")
    failures += [f"{c}: |ΔAUROC| {abs(d):.4f} > {limits.max_auroc_drop}"
                 for c, d in delta.items() if abs(d) > limits.max_auroc_drop]
    return GuardCheck(len(cos), float(cos.mean()), float(cos.min()), agreement, delta, failures)


def layer_sensitivity(fp32_onnx: Path, qdq_onnx: Path, tensors: np.ndarray) -> list[tuple[str, float]]:
    """(node name, SQNR in dB) for the quantized Conv/MatMul/Gemm nodes, most sensitive (lowest) first.

    A node's SQNR is the worst over the Q/DQ'd activations it reads. Weights are left out: they are
    per-channel INT8 and their names change when the pre-processing folds BatchNorm into Conv.
    Nodes absent from ``fp32_onnx`` (made by pre-processing) are dropped, since exclusion is by name.
    """
    fp32_names = {n.name for n in onnx.load(str(fp32_onnx), load_external_data=False).graph.node}
    model = onnx.load(str(qdq_onnx), load_external_data=False)
    with tempfile.TemporaryDirectory(prefix="edge-retina-sqnr-") as tmp:
        augmented = Path(tmp) / "augmented.onnx"
        modify_model_output_intermediate_tensors(str(qdq_onnx), str(augmented))
        activations = collect_activations(str(augmented), ArrayCalibrationReader(tensors),
                                          execution_providers=["CPUExecutionProvider"])
    # SQNR of each Q/DQ'd activation: before quantization vs after dequantization, in the INT8 model.
    sqnr = {name: float(compute_signal_to_quantization_noice_ratio(pair["pre_qdq"], pair["post_qdq"]))
            for name, pair in create_activation_matching(activations).items()
            if pair.get("pre_qdq") is not None and pair.get("post_qdq") is not None}
    worst: dict[str, float] = {}
    for node in model.graph.node:
        if node.op_type not in QUANTIZED_OP_TYPES or node.name not in fp32_names:
            continue
        for name in node.input:
            source = name[:-len(DEQUANT_OUTPUT_SUFFIX)] if name.endswith(DEQUANT_OUTPUT_SUFFIX) else None
            if source in sqnr:
                worst[node.name] = min(worst.get(node.name, np.inf), sqnr[source])
    return sorted(worst.items(), key=lambda item: (item[1], item[0]))


@dataclass
class GuardedResult(Generic[Artefact]):
    artefact: Artefact
    precision: str
    excluded_nodes: list[str]
    check: GuardCheck
    attempts: list[dict[str, Any]] = field(default_factory=list)

    @property
    def fell_back(self) -> bool:
        return len(self.attempts) > 1

    def fallback_record(self) -> dict[str, Any] | None:
        """The manifest's ``fallback`` field: what failed and what shipped instead (None if nothing did)."""
        if not self.fell_back:
            return None
        first = self.attempts[0]
        return {
            "requested": first["precision"],
            "shipped": self.precision,
            "excluded_nodes": list(self.excluded_nodes),
            "reason": "; ".join(first["check"]["failures"]),
            "attempts": self.attempts,
        }

    def notes(self, limits: GuardLimits) -> dict[str, Any]:
        """The manifest's ``notes``: the guard's verdict on what shipped."""
        return {"accuracy_guard": {"limits": limits.to_dict(), **self.check.to_dict()}}


def guarded_build(
    build: Callable[[str, Sequence[str]], Artefact],
    embed: Callable[[Artefact], np.ndarray],
    fp32_embeddings: np.ndarray,
    sensitivity: Callable[[Artefact], Sequence[str]],
    *,
    table: PromptTable | None = None,
    labels: dict[str, np.ndarray] | None = None,
    limits: GuardLimits = GuardLimits(),
    requested: str = "int8",
    exclusion_steps: Sequence[int] = DEFAULT_EXCLUSION_STEPS,
    fallback_precisions: Sequence[str] = DEFAULT_FALLBACK_PRECISIONS,
    progress: Callable[[str], None] | None = None,
) -> GuardedResult[Artefact]:
    """Build ``requested`` ("int8" or "fp16"), check it, fall back until the limits hold; returns what may ship.

    ``build(precision, excluded_nodes)`` makes an artefact; ``embed(artefact)`` gives its embeddings
    of the held-out images ``fp32_embeddings`` came from; ``sensitivity(int8_artefact)`` ranks node
    names, most sensitive first (layer exclusion is an INT8 step only). ``fallback_precisions`` at or
    above ``requested`` in the list are tried in order.
    """
    attempts: list[dict[str, Any]] = []

    def attempt(precision: str, excluded: Sequence[str]) -> GuardedResult[Artefact]:
        artefact = build(precision, excluded)
        check = check_against_fp32(fp32_embeddings, embed(artefact), table=table, labels=labels, limits=limits)
        attempts.append({"precision": precision, "excluded_nodes": list(excluded), "check": check.to_dict()})
        if progress:
            verdict = "passed" if check.passed else "failed: " + "; ".join(check.failures)
            progress(f"{precision}{f' excluding {len(excluded)} layer(s)' if excluded else ''}: "
                     f"mean cosine {check.mean_cosine:.4f}, {verdict}")
        return GuardedResult(artefact, precision, list(excluded), check, attempts)

    result = attempt(requested, [])
    if result.check.passed:
        return result
    if requested == "int8":
        ranked = list(sensitivity(result.artefact))
        for count in exclusion_steps:
            if count > len(ranked):
                break
            result = attempt("int8", ranked[:count])
            if result.check.passed:
                return result
    for precision in fallback_precisions:
        if precision == requested:
            continue
        result = attempt(precision, [])
        if result.check.passed:
            return result
    raise GuardError("accuracy guard: no precision met the limits "
                     f"({limits.to_dict()}); attempts: " + "; ".join(
                         f"{a['precision']} excluding {len(a['excluded_nodes'])}: {a['check']['failures']}"
                         for a in attempts))
