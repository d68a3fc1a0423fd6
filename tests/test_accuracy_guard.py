"""The accuracy guard: checks against FP32, per-layer sensitivity, automatic recorded fallback; thresholds."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from quantize_fixtures import eye4class_rows, prepared_tensors, tiny_onnx, tiny_spec

from calibration import ArrayCalibrationReader
from converters.accuracy_guard import (
    GuardError,
    GuardLimits,
    check_against_fp32,
    guarded_build,
    layer_sensitivity,
)
from converters.quantize.onnxruntime_qdq import quantize_onnxruntime
from converters.thresholds import ThresholdChoice, choose_thresholds, threshold_for_sensitivity
from edge_retina.bench.metrics import sensitivity_specificity
from edge_retina.prompt_table import PromptTable

RNG = np.random.default_rng(0)
DIM = 8


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def _table() -> PromptTable:
    prompts = _unit(np.eye(3, DIM, dtype=np.float32))
    return PromptTable(["normal", "dr", "glaucoma"], "normal", prompts, np.arange(3), "mean", 50.0)


def test_check_passes_identical_and_fails_noisy_embeddings():
    fp32 = _unit(RNG.normal(size=(40, DIM)))
    labels = {"dr": (fp32[:, 1] > fp32[:, 0]).astype(float)}
    same = check_against_fp32(fp32, fp32.copy(), table=_table(), thresholds={"dr": 0.5}, labels=labels)
    assert same.passed and same.conditions["dr"]["referral_agreement"] == 1.0
    assert same.conditions["dr"]["delta_auroc"] == 0.0 and same.conditions["dr"]["delta_auroc_ci"] == [0.0, 0.0]
    noisy = check_against_fp32(fp32, fp32 + RNG.normal(scale=0.5, size=fp32.shape), table=_table(),
                               thresholds={"dr": 0.5}, labels=labels)
    assert not noisy.passed
    assert noisy.failures[0].startswith("mean cosine")
    assert any(f.startswith("dr: referral agreement") for f in noisy.failures)
    assert any(f.startswith("dr: ΔAUROC 95% CI lower end") for f in noisy.failures)
    assert noisy.to_dict()["passed"] is False


def test_failure_summary_groups_failed_checks_by_statistic():
    fp32 = _unit(RNG.normal(size=(40, DIM)))
    noisy = check_against_fp32(fp32, fp32 + RNG.normal(scale=0.5, size=fp32.shape), table=_table(),
                               thresholds={"dr": 0.5, "glaucoma": 0.5})
    failed = {c.name: c for c in noisy.checks if not c.passed}
    assert {"mean cosine", "dr: referral agreement", "glaucoma: referral agreement"} <= set(failed)
    summary = noisy.failure_summary()
    agreement = f"referral agreement < 0.99: dr {failed['dr: referral agreement'].value:.4f}, " \
                f"glaucoma {failed['glaucoma: referral agreement'].value:.4f}"
    assert summary.startswith(f"mean cosine < 0.99: {failed['mean cosine'].value:.4f}")
    assert agreement in summary and summary.count("referral agreement") == 1


def test_every_check_records_its_margin():
    fp32 = _unit(RNG.normal(size=(200, DIM)))
    candidate = _unit(fp32 + RNG.normal(scale=0.01, size=fp32.shape))
    labels = {"dr": (fp32[:, 1] > fp32[:, 0]).astype(float)}
    limits = GuardLimits()
    record = check_against_fp32(fp32, candidate, table=_table(), thresholds={"dr": 0.5}, labels=labels,
                                limits=limits).to_dict()
    checks = {c["check"]: c for c in record["checks"]}
    assert set(checks) == {"mean cosine", "p1 cosine", "dr: referral agreement", "dr: ΔAUROC 95% CI lower end"}
    assert checks["mean cosine"]["value"] == pytest.approx(record["cosine"]["mean"], abs=1e-6)
    assert checks["p1 cosine"]["limit"] == limits.min_p1_cosine
    ci_low = record["conditions"]["dr"]["delta_auroc_ci"][0]
    assert checks["dr: ΔAUROC 95% CI lower end"]["margin"] == pytest.approx(ci_low + limits.auroc_margin, abs=1e-6)
    for check in checks.values():
        assert check["margin"] == pytest.approx(check["value"] - check["limit"], abs=1e-6)
        assert check["passed"] == (check["margin"] >= 0)


def test_a_gain_in_auroc_is_never_a_failure():
    """The candidate ranks every image perfectly, the FP32 model does not: ΔAUROC > 0 passes."""
    y = np.array([1.0, 0.0] * 50)
    fp32 = _unit(np.c_[np.ones(100), RNG.normal(size=(100, DIM - 1))])
    better = fp32.copy()
    better[:, 1] += np.where(y == 1, 2.0, -2.0)  # moves the DR score: positives up, negatives down
    check = check_against_fp32(fp32, better, table=_table(), labels={"dr": y},
                               limits=GuardLimits(min_mean_cosine=-1.0, min_p1_cosine=-1.0))
    assert check.conditions["dr"]["delta_auroc"] > 0.1 and check.passed


def test_one_swapped_pair_in_a_large_set_is_not_a_failure():
    """What flipped the old |ΔAUROC| test on a small set: here it moves AUROC by 1 / (m n) and the CI knows."""
    scores = np.linspace(-1, 1, 400)
    y = (scores > 0).astype(float)
    fp32 = _unit(np.c_[np.ones(400), scores, np.zeros((400, DIM - 2))])
    swapped = fp32.copy()
    swapped[[199, 200]] = swapped[[200, 199]]  # the nearest negative and positive trade places
    threshold = float(_table().score(fp32).condition_probabilities["dr"][200])  # refers the positives
    check = check_against_fp32(fp32, swapped, table=_table(), thresholds={"dr": threshold}, labels={"dr": y},
                               limits=GuardLimits(min_mean_cosine=-1.0, min_p1_cosine=-1.0))
    assert check.conditions["dr"]["delta_auroc"] < 0 and check.passed
    assert check.conditions["dr"]["referral_agreement"] == pytest.approx(398 / 400)


def test_guard_set_leaves_out_calibration_candidates_and_keeps_validation_first(tmp_path):
    from types import SimpleNamespace

    from converters.accuracy_guard import guard_set
    from edge_retina.bench.labels import LabelledImages

    paths = [tmp_path / f"{i}.jpg" for i in range(6)]
    validation = LabelledImages(paths[:3], {"dr": np.array([1.0, 0.0, 1.0])})
    training = LabelledImages(paths[2:], {"glaucoma": np.array([0.0, 1.0, 0.0, 1.0])})
    # Calibrated on 1 and 4; 5 was a candidate not chosen (quantization-aware distillation trains on it).
    calibration = SimpleNamespace(manifest={"files": [{"path": str(paths[1])}, {"path": str(paths[4])}]},
                                  held_out=[paths[5]])
    labelled, validated = guard_set(validation, training, calibration)
    assert labelled.paths == [paths[0], paths[2], paths[3]] and validated == 2
    np.testing.assert_array_equal(labelled.labels["dr"], [1.0, 1.0, np.nan])
    np.testing.assert_array_equal(labelled.labels["glaucoma"], [np.nan, np.nan, 1.0])  # validation rows win


def _fake_build(quality: dict[tuple[str, int], float], fp32: np.ndarray):
    """An artefact is (precision, excluded count); its embeddings are fp32 plus noise of a set size."""
    def build(precision, excluded):
        return precision, len(excluded)

    def embed(artefact):
        noise = quality[artefact]
        return fp32 + noise * np.random.default_rng(1).normal(size=fp32.shape)

    return build, embed


def test_guard_ships_int8_when_it_passes():
    fp32 = _unit(RNG.normal(size=(20, DIM)))
    build, embed = _fake_build({("int8", 0): 0.0}, fp32)
    result = guarded_build(build, embed, fp32, lambda: pytest.fail("no sensitivity needed"))
    assert result.precision == "int8" and result.fallback_record() is None
    assert result.notes(GuardLimits())["accuracy_guard"]["passed"] is True


def test_guard_excludes_the_most_sensitive_layers_first_and_records_it():
    fp32 = _unit(RNG.normal(size=(20, DIM)))
    build, embed = _fake_build({("int8", 0): 0.5, ("int8", 1): 0.5, ("int8", 2): 0.0}, fp32)
    lines = []
    result = guarded_build(build, embed, fp32, lambda: ["conv_a", "conv_b", "conv_c"], progress=lines.append)
    assert (result.precision, result.excluded_nodes) == ("int8", ["conv_a", "conv_b"])
    assert [line.split(":")[0] for line in lines] == ["int8", "int8 excluding 1 layer", "int8 excluding 2 layers"]
    record = result.fallback_record()
    assert record["requested"] == "int8" and record["shipped"] == "int8"
    assert record["excluded_nodes"] == ["conv_a", "conv_b"] and "mean cosine" in record["reason"]
    assert record["attempts"][-1]["check"]["passed"] and record["attempts"][0]["check"]["checks"][0]["margin"] < 0
    assert [a["excluded_nodes"] for a in record["attempts"]] == [[], ["conv_a"], ["conv_a", "conv_b"]]


def test_guard_falls_back_to_float_and_refuses_when_nothing_passes():
    fp32 = _unit(RNG.normal(size=(20, DIM)))
    quality = {("int8", n): 0.5 for n in range(3)} | {("fp16", 0): 0.5, ("fp32", 0): 0.0}
    build, embed = _fake_build(quality, fp32)
    result = guarded_build(build, embed, fp32, lambda: ["a", "b"])
    assert result.precision == "fp32" and result.fallback_record()["shipped"] == "fp32"
    assert [a["precision"] for a in result.attempts] == ["int8", "int8", "int8", "fp16", "fp32"]
    with pytest.raises(GuardError, match="no precision met the limits"):
        guarded_build(build, embed, fp32, lambda: ["a", "b"], fallback_precisions=("fp16",))


@pytest.fixture(scope="module")
def tensors(shared_datasets, tiny_bundle) -> np.ndarray:
    return prepared_tensors([Path(r["file"]) for r in eye4class_rows(shared_datasets, 3)], tiny_spec(tiny_bundle))


def test_layer_sensitivity_ranks_every_quantized_layer(tiny_bundle, tensors, tmp_path):
    fp32 = tiny_onnx(tiny_bundle)
    qdq = quantize_onnxruntime(fp32, tmp_path / "q.onnx", ArrayCalibrationReader(tensors))
    ranked = layer_sensitivity(fp32, qdq, tensors[:4])
    assert {name for name, _ in ranked} == {"node_conv2d", "node_conv2d_1", "node_linear"}
    removed_error = [value for _, value in ranked]
    assert removed_error == sorted(removed_error, reverse=True) and all(np.isfinite(removed_error))
    # The input-side convolution reads the image through INT8 in no other way: un-quantizing it helps.
    assert dict(ranked)["node_conv2d"] > 0


def test_real_int8_forced_over_the_limit_falls_back_and_records_it(tiny_bundle, tensors, tmp_path):
    """An impossible cosine limit: every INT8 attempt fails, the FP32 fallback ships, all recorded."""
    from edge_retina.backends import create_runner

    fp32_path = tiny_onnx(tiny_bundle)
    calibration, held_out = tensors[:8], tensors[8:]
    with create_runner("onnxruntime", fp32_path, precision="fp32") as runner:
        reference = runner.infer(held_out)

    def build(precision, excluded):
        if precision == "fp32":
            return fp32_path
        return quantize_onnxruntime(fp32_path, tmp_path / f"{len(excluded)}.onnx", ArrayCalibrationReader(calibration),
                                    nodes_to_exclude=excluded)

    def embed(path):
        with create_runner("onnxruntime", path, precision="int8") as runner:
            return runner.infer(held_out)

    result = guarded_build(build, embed, reference,
                           lambda: [n for n, _ in layer_sensitivity(fp32_path, build("int8", []), calibration[:4])],
                           limits=GuardLimits(min_mean_cosine=1.0 - 1e-9), fallback_precisions=("fp32",))
    assert result.precision == "fp32"
    record = result.fallback_record()
    assert record["reason"].startswith("mean cosine") and record["attempts"][0]["precision"] == "int8"
    assert len(record["attempts"]) >= 3  # int8, int8 without the most sensitive layer(s), ..., fp32


def test_threshold_reaches_the_target_sensitivity():
    y = np.array([1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0, 0])
    scores = np.array([0.9, 0.8, 0.85, 0.7, 0.6, 0.95, 0.65, 0.75, 0.3, 0.55, 0.1, 0.5, 0.58, 0.2])
    threshold = threshold_for_sensitivity(y, scores, 0.9)
    assert threshold == 0.55  # the 9th-highest positive: refers 9 of 10
    sensitivity, specificity = sensitivity_specificity(y, scores, threshold)
    assert sensitivity == 0.9 and specificity == 0.75  # only the 0.58 negative is referred
    assert threshold_for_sensitivity(y, scores, 1.0) == 0.3


def test_choose_thresholds_per_condition_records_what_it_gave():
    embeddings = _unit(RNG.normal(size=(60, DIM)))
    labels = {"dr": (embeddings[:, 1] > 0).astype(float), "glaucoma": np.full(60, np.nan), "unknown": np.ones(60)}
    choices = choose_thresholds(_table(), embeddings, labels, target_sensitivity=0.9)
    assert set(choices) == {"dr"}
    dr = choices["dr"]
    assert dr.sensitivity >= 0.9 and 0.0 <= dr.specificity <= 1.0
    assert "sensitivity" in dr.source() and "target sensitivity 0.90" in dr.source()
    assert dr.source().endswith(f"({dr.n_pos} positives, {dr.n_neg} negatives)")
    one = ThresholdChoice(0.5, 1.0, 0.5, 0.9, n_pos=1, n_neg=1)
    assert one.source().endswith("(1 positive, 1 negative)"), one.source()
