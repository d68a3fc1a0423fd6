"""Quantization-aware distillation as the guard's rung after layer exclusion: a small CNN whose
post-training INT8 fails the guard ends as INT8 after QAT."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from converters.accuracy_guard import GuardLimits, check_against_fp32, guarded_build
from converters.export.onnx_fp32 import export_onnx
from converters.quantize.qat import QatConfig, cached_qat
from converters.quantize.registry import build_engine
from converters.step_cache import StepCache
from edge_retina.backends import create_runner
from edge_retina.preprocess import InputSpec
from edge_retina.prompt_table import PromptTable

SIZE = (32, 32)
DIM = 8


class OutlierNet(nn.Module):
    """Conv -> hard-swish -> Conv -> pool -> Linear, with one channel whose pre-activation sits near
    -4000 on every image. Hard-swish zeroes it, so the FP32 network ignores it; but ONNX Runtime's CNN
    INT8 quantizes each Conv's *output* (pre-activation, one scale per tensor, see
    ``converters.quantize.onnxruntime_qdq``), whose range that channel stretches to ~4000: a step of
    ~16 rounds every other channel to zero. NNCF quantizes the next Conv's input (after hard-swish),
    so quantization-aware distillation keeps them. The mechanism of MobileNetV3's failure, magnified."""

    def __init__(self) -> None:
        super().__init__()
        generator = torch.Generator().manual_seed(0)
        self.conv1 = nn.Conv2d(3, 16, 3, padding=1)
        self.conv2 = nn.Conv2d(16, 16, 3, padding=1)
        self.head = nn.Linear(16, DIM)
        with torch.no_grad():
            for p in self.parameters():
                p.copy_(torch.randn(p.shape, generator=generator) * 0.3)
            self.conv1.bias[0] = -4000.0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = nn.functional.hardswish(self.conv1(x))
        x = nn.functional.hardswish(self.conv2(x))
        return self.head(x.mean(dim=(2, 3)))


def _table() -> PromptTable:
    prompts = np.eye(3, DIM, dtype=np.float32)
    return PromptTable(["normal", "dr", "glaucoma"], "normal", prompts, np.arange(3), "mean", 50.0)


def _spec() -> InputSpec:
    return InputSpec(size=SIZE)


def _embed(backend: str, path, tensors: np.ndarray) -> np.ndarray:
    with create_runner(backend, path, precision="int8") as runner:
        return runner.infer(tensors)


@pytest.fixture(scope="module")
def setting(tmp_path_factory):
    work = tmp_path_factory.mktemp("qat")
    encoder = OutlierNet().eval()
    fp32_onnx = export_onnx(encoder, SIZE, work / "fp32.onnx")
    rng = np.random.default_rng(0)
    calibration = rng.normal(size=(32, 3, *SIZE)).astype(np.float32)
    held_out = rng.normal(size=(48, 3, *SIZE)).astype(np.float32)
    with create_runner("onnxruntime", fp32_onnx, precision="fp32") as runner:
        reference = runner.infer(held_out)
    return encoder, fp32_onnx, calibration, held_out, reference, work


def test_post_training_int8_fails_and_qat_passes_the_guard(setting):
    encoder, fp32_onnx, calibration, held_out, reference, work = setting
    limits = GuardLimits()
    ptq = build_engine("onnxruntime", "int8", fp32_onnx, work / "ptq", calibration)[0]
    ptq_check = check_against_fp32(reference, _embed("onnxruntime", ptq, held_out), limits=limits)
    assert not ptq_check.passed and ptq_check.failures[0].startswith("mean cosine")

    calibration_set = type("Calibration", (), {"tensors": calibration, "size": len(calibration),
                                               "manifest_sha256": "0" * 64})()
    artefacts = cached_qat(StepCache(work / "cache"), encoder, _spec(), calibration_set, _table(), fp32_onnx,
                           QatConfig(epochs=2, batch_size=8))
    assert artefacts.record["config"]["epochs"] == 2 and artefacts.record["calibration_images"] == 32
    for backend, files in (("onnxruntime", artefacts.onnx), ("openvino", artefacts.openvino)):
        check = check_against_fp32(reference, _embed(backend, files[0], held_out), limits=limits)
        assert check.passed, (backend, check.failures)
        assert check.cosine["mean"] > ptq_check.cosine["mean"]
    import onnx

    ops = {node.op_type for node in onnx.load(str(artefacts.onnx[0])).graph.node}
    assert {"QuantizeLinear", "DequantizeLinear", "Conv"} <= ops


def _fake_ladder(passing: set[str]):
    """Artefacts are names; the ones in ``passing`` embed exactly, the rest with noise."""
    fp32 = np.random.default_rng(0).normal(size=(20, DIM))

    def embed(artefact):
        noise = 0.0 if artefact in passing else 0.5
        return fp32 + noise * np.random.default_rng(1).normal(size=fp32.shape)

    return fp32, embed


def test_qat_is_the_rung_after_layer_exclusion_and_before_float():
    fp32, embed = _fake_ladder({"qat"})
    result = guarded_build(lambda precision, excluded: f"{precision}-{len(excluded)}", embed, fp32,
                           lambda: ["a", "b", "c"], qat=lambda excluded: "qat", qat_exclusions=2)
    assert (result.precision, result.method) == ("int8", "qat")
    assert [(a["method"], a["excluded_nodes"]) for a in result.attempts] == \
        [("ptq", []), ("ptq", ["a"]), ("ptq", ["a", "b"]), ("qat", ["a", "b"])]
    assert result.fallback_record()["method"] == "qat"


def test_qat_first_skips_post_training_int8():
    fp32, embed = _fake_ladder({"qat"})
    result = guarded_build(lambda precision, excluded: pytest.fail("no post-training INT8 with qat_first"),
                           embed, fp32, lambda: ["a", "b"], qat=lambda excluded: "qat", qat_first=True,
                           qat_exclusions=1)
    assert result.method == "qat" and len(result.attempts) == 1 and result.fallback_record() is None
    assert result.excluded_nodes == ["a"]
