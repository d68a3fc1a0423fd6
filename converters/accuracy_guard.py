"""The accuracy guard: no INT8 engine ships unless it matches its own FP32 model, and when one
does not, the fallback is automatic and recorded.

Check (``check_against_fp32``): an artefact against its own FP32 model on the guard images (every
labelled image the quantizer did not calibrate on; training photos are fine, since the guard compares
two versions of one model, not generalisation). It asks what a screening programme would notice:

- per condition, **referral agreement** at the bundle's thresholds (the share of images both models
  refer, or both do not);
- per labelled condition, **non-inferiority of AUROC**: the lower end of the paired-bootstrap 95 %
  CI of ΔAUROC = AUROC(candidate) - AUROC(FP32) must be >= -margin. A point |ΔAUROC| test flips on a
  single swapped positive/negative pair when a condition has few images; the CI widens instead, and
  a gain is never a failure;
- the **embedding cosine** distribution: its mean and its 1st percentile (the worst images).

Every check records its value, its limit and the margin by which it passed (negative: failed), so a
reader sees how close the verdict was.

Fallback (``guarded_build``): INT8 with the most sensitive layers left in floating point, more of
them each round (1, 2, 4, 8 by default); then, when given, INT8 by quantization-aware distillation
(``converters.quantize.qat``); then FP16; then FP32 (an FP16 request: FP32). Sensitivity (``layer_sensitivity``) is
measured at the output: how much of the INT8 model's embedding error goes away when one layer alone
reads unquantized activations. Every attempt and the outcome go into the engine's manifest entry
(``fallback`` when anything fell back, ``notes`` always); if even FP32 fails, ``GuardError``.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Generic, Mapping, Sequence, TypeVar

import numpy as np
import onnx

from calibration.calibration_set import CalibrationSet
from converters.labelled_sets import merge_labelled
from converters.quantize.policy import QUANTIZED_OP_TYPES
from edge_retina.bench.labels import LabelledImages
from edge_retina.bench.metrics import cosine_similarity, decision_agreement, distribution, paired_bootstrap_delta
from edge_retina.errors import EdgeRetinaError
from edge_retina.prompt_table import PromptTable
from edge_retina.wording import plural

DEFAULT_EXCLUSION_STEPS = (1, 2, 4, 8)
#: Revision of the fallback ladder (part of the converter's engine cache key: a changed ladder
#: rebuilds cached engines). 2: output-level layer ranking; QAT with the most sensitive layers in float.
#: 3: OpenVINO engines checked in f32 on the CPU (bf16 before, on CPUs with AMX), and the verdict
#: records the machine it was measured on.
LADDER_REVISION = 3
#: Layers QAT keeps in float: the most sensitive ones. Quantization noise made at the input side runs
#: through the whole network: on the default student (EfficientNet-Lite0, OpenVINO PTQ) the four
#: input-side convolutions, a tenth of its compute, made two thirds of the zero-shot score noise.
DEFAULT_QAT_EXCLUSIONS = 4
DEFAULT_FALLBACK_PRECISIONS = ("fp16", "fp32")

Artefact = TypeVar("Artefact")


class GuardError(EdgeRetinaError):
    """Not even the fallbacks met the limits: nothing is shipped for this engine."""


@dataclass(frozen=True)
class GuardLimits:
    # Non-inferiority margin: the lower end of the CI of AUROC(candidate) - AUROC(fp32) must be >= -this.
    auroc_margin: float = 0.005
    min_referral_agreement: float = 0.99  # per condition, at the bundle's thresholds
    min_mean_cosine: float = 0.99
    # The worst 1 % of images: a mean hides a few images whose embedding moved a long way.
    min_p1_cosine: float = 0.98
    confidence: float = 0.95
    bootstrap_replicates: int = 2000

    def to_dict(self) -> dict[str, float]:
        return {"auroc_margin": self.auroc_margin, "min_referral_agreement": self.min_referral_agreement,
                "min_mean_cosine": self.min_mean_cosine, "min_p1_cosine": self.min_p1_cosine,
                "confidence": self.confidence, "bootstrap_replicates": self.bootstrap_replicates}


@dataclass(frozen=True)
class Check:
    """One statistic against its lower limit; ``margin`` = value - limit (>= 0: passed)."""

    name: str
    value: float
    limit: float

    @property
    def margin(self) -> float:
        return self.value - self.limit

    @property
    def passed(self) -> bool:
        return self.margin >= 0.0

    def failure(self) -> str:
        return f"{self.name} {self.value:.4f} < {self.limit:.4g}"

    def to_dict(self) -> dict[str, Any]:
        return {"check": self.name, "value": round(self.value, 6), "limit": self.limit,
                "margin": round(self.margin, 6), "passed": self.passed}


@dataclass
class GuardCheck:
    """One artefact against its FP32 model on the guard images."""

    images: int
    cosine: dict[str, float]  # distribution of the per-image cosine to the FP32 embedding
    conditions: dict[str, dict[str, Any]]  # condition -> referral agreement, ΔAUROC and its CI, counts
    checks: list[Check]

    @property
    def failures(self) -> list[str]:
        return [c.failure() for c in self.checks if not c.passed]

    @property
    def passed(self) -> bool:
        return not self.failures

    def failure_summary(self) -> str:
        """The failed checks grouped by statistic, for a progress line: "referral agreement < 0.99:
        amd 0.9540, glaucoma 0.9626; p1 cosine < 0.98: 0.9601"."""
        groups: dict[tuple[str, float], list[str]] = {}
        for check in self.checks:
            if not check.passed:
                subject, _, statistic = check.name.rpartition(": ")
                groups.setdefault((statistic, check.limit), []).append(f"{subject} {check.value:.4f}".strip())
        return "; ".join(f"{statistic} < {limit:.4g}: {', '.join(values)}" for (statistic, limit), values in groups.items())

    @property
    def closest(self) -> Check:
        """The check with the smallest margin: how close the verdict was."""
        return min(self.checks, key=lambda c: c.margin)

    def to_dict(self) -> dict[str, Any]:
        return {
            "images": self.images,
            "cosine": {k: round(v, 6) for k, v in self.cosine.items()},
            "conditions": self.conditions,
            "checks": [c.to_dict() for c in self.checks],
            "passed": self.passed,
            "failures": self.failures,
        }


def guard_set(validation: LabelledImages | None, extra: LabelledImages | None,
              calibration: CalibrationSet | None) -> tuple[LabelledImages, int]:
    """The guard's images and how many of them (the first ones) come from ``validation``.

    The validation images, then the ``extra`` ones not among them (each image once, with its validation
    labels when it is in both), less every image the calibration set holds or was chosen from: what
    the quantizer calibrated on, or quantization-aware distillation trained on, cannot tell whether
    it generalises.
    """
    seen = set() if calibration is None else \
        {Path(p).resolve() for p in [f["path"] for f in calibration.manifest["files"]] + calibration.held_out}
    parts = []
    for labelled in (validation, extra):
        keep = []
        for i, path in enumerate(labelled.paths if labelled is not None else []):
            if Path(path).resolve() not in seen:
                seen.add(Path(path).resolve())
                keep.append(i)
        parts.append(labelled.subset(keep) if labelled is not None else LabelledImages([], {}))
    return merge_labelled(parts), len(parts[0].paths)


def check_against_fp32(
    fp32: np.ndarray,
    candidate: np.ndarray,
    *,
    table: PromptTable | None = None,
    thresholds: Mapping[str, float] | None = None,
    labels: Mapping[str, np.ndarray] | None = None,
    limits: GuardLimits = GuardLimits(),
    seed: int = 0,
) -> GuardCheck:
    """Compare (N, D) embeddings of the same images.

    ``thresholds`` (condition -> referral threshold) give the referral-agreement checks, ``labels``
    (condition -> 0/1/NaN per image) the ΔAUROC non-inferiority checks; both need ``table``.
    """
    cos = cosine_similarity(candidate, fp32)
    cosine = distribution(cos)
    checks = [Check("mean cosine", cosine["mean"], limits.min_mean_cosine),
              Check("p1 cosine", cosine["p1"], limits.min_p1_cosine)]
    conditions: dict[str, dict[str, Any]] = {}
    if table is not None and (thresholds or labels):
        before = table.score(fp32).condition_probabilities
        after = table.score(candidate).condition_probabilities
        for condition, threshold in (thresholds or {}).items():
            if condition in before:
                agreement = decision_agreement(before[condition], after[condition], threshold)
                conditions.setdefault(condition, {}).update(threshold=threshold, referral_agreement=round(agreement, 6))
                checks.append(Check(f"{condition}: referral agreement", agreement, limits.min_referral_agreement))
        for condition, y in (labels or {}).items():
            labelled = ~np.isnan(y)
            if condition not in before or len(np.unique(y[labelled])) < 2:
                continue
            delta = paired_bootstrap_delta(y[labelled], before[condition][labelled], after[condition][labelled],
                                           replicates=limits.bootstrap_replicates, confidence=limits.confidence,
                                           seed=seed)
            conditions.setdefault(condition, {}).update(
                delta_auroc=round(delta.delta, 6), delta_auroc_ci=[round(delta.ci_low, 6), round(delta.ci_high, 6)],
                positives=int((y[labelled] == 1).sum()), negatives=int((y[labelled] == 0).sum()))
            checks.append(Check(f"{condition}: ΔAUROC {limits.confidence:.0%} CI lower end", delta.ci_low,
                                -limits.auroc_margin))
    return GuardCheck(len(cos), cosine, conditions, checks)


def layer_sensitivity(fp32_onnx: Path, qdq_onnx: Path, tensors: np.ndarray) -> list[tuple[str, float]]:
    """(node name, output error it causes) for the quantized Conv/MatMul/Gemm nodes, most sensitive first.

    Leave-one-out at the output: a node's sensitivity is how much the INT8 model's embedding error
    (mean 1 - cosine to FP32 on ``tensors``) falls when that node alone reads its activations
    unquantized: each activation Q -> DQ pair in front of it becomes a Clip to the range the pair
    represents (no rounding, the same clamping: where the quantizer folded a ReLU6 into that range,
    the Clip is the ReLU6). A per-activation SQNR would rank where the error *is*, deep in the
    network where it has accumulated, rather than where it is *made*: measured on the default
    student, the 8 layers with the worst SQNR left in float removed none of the error, while the 3
    convolutions at the input side removed two thirds of it.
    Nodes absent from ``fp32_onnx`` (made by pre-processing) are dropped, since exclusion is by name.
    """
    import onnxruntime as ort
    from onnx import numpy_helper

    fp32_names = {n.name for n in onnx.load(str(fp32_onnx), load_external_data=False).graph.node}
    model = onnx.load(str(qdq_onnx))
    producer = {out: node for node in model.graph.node for out in node.output}
    initializers = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}

    def embed(model_bytes: bytes | str) -> np.ndarray:
        session = ort.InferenceSession(model_bytes, providers=["CPUExecutionProvider"])
        name = session.get_inputs()[0].name
        return np.concatenate([session.run(None, {name: tensors[i:i + 1]})[0] for i in range(len(tensors))])

    reference = embed(str(fp32_onnx))

    def error(candidate: np.ndarray) -> float:
        return float(np.mean(1.0 - cosine_similarity(candidate, reference)))

    def representable_range(q: onnx.NodeProto) -> tuple[float, float]:
        scale = float(initializers[q.input[1]])
        zero_point = initializers[q.input[2]] if len(q.input) > 2 else np.uint8(0)
        info = np.iinfo(zero_point.dtype)
        return (info.min - int(zero_point)) * scale, (info.max - int(zero_point)) * scale

    quantized_error = error(embed(model.SerializeToString()))
    ranked = []
    for index, node in enumerate(model.graph.node):
        if node.op_type not in QUANTIZED_OP_TYPES or node.name not in fp32_names:
            continue
        # An activation input arrives as Q -> DQ; a weight as DQ of an initializer (left as it is).
        clamps = {}
        for position, name in enumerate(node.input):
            dq = producer.get(name)
            q = producer.get(dq.input[0]) if dq is not None and dq.op_type == "DequantizeLinear" else None
            if q is not None and q.op_type == "QuantizeLinear" and q.input[1] in initializers:
                clamps[position] = (q.input[0], representable_range(q))
        if not clamps:
            continue
        variant = onnx.ModelProto()
        variant.CopyFrom(model)
        target = variant.graph.node[index]
        for position, (source, (low, high)) in clamps.items():
            stem = f"{node.name}_unquantized_{position}"
            variant.graph.initializer.extend([numpy_helper.from_array(np.array(low, np.float32), f"{stem}_min"),
                                              numpy_helper.from_array(np.array(high, np.float32), f"{stem}_max")])
            target.input[position] = stem
        clips = [onnx.helper.make_node("Clip", [source, f"{target.input[p]}_min", f"{target.input[p]}_max"],
                                       [target.input[p]], name=target.input[p]) for p, (source, _) in clamps.items()]
        nodes = list(variant.graph.node)
        nodes[index:index] = clips  # just before the node: the graph stays in topological order
        del variant.graph.node[:]
        variant.graph.node.extend(nodes)
        ranked.append((node.name, quantized_error - error(embed(variant.SerializeToString()))))
    return sorted(ranked, key=lambda item: (-item[1], item[0]))


@dataclass
class GuardedResult(Generic[Artefact]):
    artefact: Artefact
    precision: str
    excluded_nodes: list[str]
    check: GuardCheck
    attempts: list[dict[str, Any]] = field(default_factory=list)
    method: str = "ptq"  # how an INT8 artefact was quantized: "ptq" (post-training) or "qat"

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
            "method": self.method,
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
    sensitivity: Callable[[], Sequence[str]],
    *,
    table: PromptTable | None = None,
    thresholds: Mapping[str, float] | None = None,
    labels: Mapping[str, np.ndarray] | None = None,
    limits: GuardLimits = GuardLimits(),
    requested: str = "int8",
    exclusion_steps: Sequence[int] = DEFAULT_EXCLUSION_STEPS,
    fallback_precisions: Sequence[str] = DEFAULT_FALLBACK_PRECISIONS,
    progress: Callable[[str], None] | None = None,
    qat: Callable[[Sequence[str]], Artefact] | None = None,
    qat_first: bool = False,
    qat_exclusions: int = DEFAULT_QAT_EXCLUSIONS,
) -> GuardedResult[Artefact]:
    """Build ``requested`` ("int8" or "fp16"), check it, fall back until the limits hold; returns what may ship.

    ``build(precision, excluded_nodes)`` makes an artefact; ``embed(artefact)`` gives its embeddings
    of the guard images ``fp32_embeddings`` came from; ``sensitivity()`` ranks node names, most
    sensitive first (called once, when an INT8 rung first needs it). ``qat(excluded_nodes)`` makes
    the INT8 artefact of quantization-aware distillation with the ``qat_exclusions`` most sensitive
    layers in float: the rung after layer exclusion, or the first INT8 attempt with ``qat_first``.
    ``fallback_precisions`` at or above ``requested`` in the list are tried in order.
    """
    attempts: list[dict[str, Any]] = []

    def attempt(precision: str, excluded: Sequence[str], method: str = "ptq") -> GuardedResult[Artefact]:
        artefact = qat(excluded) if method == "qat" else build(precision, excluded)
        check = check_against_fp32(fp32_embeddings, embed(artefact), table=table, thresholds=thresholds,
                                   labels=labels, limits=limits)
        attempts.append({"precision": precision, "method": method, "excluded_nodes": list(excluded),
                         "check": check.to_dict()})
        if progress:
            verdict = (f"passed (closest: {check.closest.name}, margin {check.closest.margin:+.4f})" if check.passed
                       else "failed: " + check.failure_summary())
            how = ((" by QAT" if method == "qat" else "")
                   + (f" excluding {plural(len(excluded), 'layer')}" if excluded else ""))
            progress(f"{precision}{how}: mean cosine {check.cosine['mean']:.4f}, {verdict}")
        return GuardedResult(artefact, precision, list(excluded), check, attempts, method)

    ranked = functools.cache(lambda: list(sensitivity()))  # measured once, when a rung first needs it

    if requested == "int8" and qat is not None and qat_first:
        result = attempt("int8", ranked()[:qat_exclusions], "qat")
        if result.check.passed:
            return result
    else:
        result = attempt(requested, [])
        if result.check.passed:
            return result
        if requested == "int8":
            for count in exclusion_steps:
                if count > len(ranked()):
                    break
                result = attempt("int8", ranked()[:count])
                if result.check.passed:
                    return result
            if qat is not None:
                result = attempt("int8", ranked()[:qat_exclusions], "qat")
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
