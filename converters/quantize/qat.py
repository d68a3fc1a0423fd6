"""Quantization-aware distillation: NNCF quantization-aware training of the torch encoder, taught by
its own FP32 self, for when post-training quantization fails the accuracy guard.

``quantization_aware_distill`` quantizes a copy of the encoder in torch with NNCF (fake quantizers on
the inputs of Conv and Linear, ranges initialised on the calibration set; ``ModelType.TRANSFORMER``
for ViTs, the ViT-safe policy), then fine-tunes weights and quantizer ranges for a few epochs so the
quantized network reproduces the FP32 network's embeddings and zero-shot distribution: the student
distillation's loss (``converters.distill.loss.DistillLoss``), with the FP32 encoder as the teacher.
It trains on the calibration images and the
calibration candidates the guard does not check on (unlabelled photos: the FP32 model labels them),
with horizontal flips. The layers named in ``excluded_nodes`` (the FP32 ONNX's node names, the
accuracy guard's sensitivity ranking) stay in float.

``export_qat`` writes what the engines need: an OpenVINO IR (NNCF's quantizers become FakeQuantize
ops, which the CPU plugin runs in INT8) and a Q/DQ ONNX (QuantizeLinear/DequantizeLinear pairs) that
ONNX Runtime runs and TensorRT builds its engine from.

NNCF compiles a small C++ extension for its CPU quantizer kernels the first time it trains (once
per machine and torch version, into ~/.cache/torch_extensions; minutes on a loaded 2-core host).
"""
from __future__ import annotations

import copy
import hashlib
import json
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch

from calibration.calibration_set import CalibrationSet
from converters.distill.loss import DistillLoss
from converters.export.onnx_fp32 import INPUT_NAME, OUTPUT_NAME
from converters.parity_references import torch_embeddings
from converters.quantize.policy import is_transformer, quantizable_nodes
from converters.step_cache import StepCache, encoder_fingerprint, files_fingerprint
from edge_retina.bench.parity import prepare_tensors
from edge_retina.preprocess import InputSpec, Preprocessor
from edge_retina.prompt_table import PromptTable

QAT_ONNX = "qat-qdq.onnx"
QAT_IR = "qat.xml"
QAT_RECORD = "qat.json"
#: ONNX opset of the Q/DQ export: NNCF's quantizers export through the TorchScript exporter's
#: symbolic functions (per-channel QuantizeLinear needs opset >= 13).
QDQ_OPSET = 17


@dataclass(frozen=True)
class QatConfig:
    epochs: int = 2
    batch_size: int = 16
    lr: float = 3e-5
    seed: int = 0

    def to_dict(self) -> dict:
        return asdict(self)


#: NNCF's torch op names for what the quantization policy quantizes (Conv, MatMul, Gemm in ONNX).
_TORCH_QUANTIZABLE = ("conv1d", "conv2d", "conv3d", "linear", "matmul", "addmm", "bmm")


def _torch_node_names(encoder: torch.nn.Module, fp32_onnx: Path, excluded_nodes: Sequence[str],
                      input_size: tuple[int, int]) -> list[str]:
    """NNCF's names (in the torch graph) of the FP32 ONNX's ``excluded_nodes``: the exporter keeps the
    order of the Conv/MatMul/Gemm ops, so the n-th quantizable op of one graph is the n-th of the other."""
    from nncf.torch.function_hook.nncf_graph.nncf_graph_builder import build_nncf_graph
    import onnx

    onnx_order = quantizable_nodes(onnx.load(str(fp32_onnx), load_external_data=False))
    graph = build_nncf_graph(encoder, torch.zeros(1, 3, *input_size))
    torch_order = [n.node_name for n in graph.topological_sort() if n.node_type in _TORCH_QUANTIZABLE]
    if len(torch_order) != len(onnx_order):
        raise ValueError(f"cannot keep {list(excluded_nodes)} in float: the ONNX graph has {len(onnx_order)} "
                         f"Conv/MatMul/Gemm ops and the torch graph {len(torch_order)}")
    return [torch_order[onnx_order.index(name)] for name in excluded_nodes]


def quantization_aware_distill(encoder: torch.nn.Module, calibration: np.ndarray, table: PromptTable,
                               fp32_onnx: Path, config: QatConfig = QatConfig(),
                               progress: Callable[[str], None] | None = None, *,
                               training: np.ndarray | None = None,
                               excluded_nodes: Sequence[str] = ()) -> torch.nn.Module:
    """The encoder with NNCF fake quantizers, fine-tuned to match its FP32 self on ``calibration``
    and ``training`` (more unlabelled images), ``excluded_nodes`` left in float."""
    # NNCF gives its first-use C++ build 60 s, then raises; on a busy 2-core host the build takes
    # minutes (seen: a fresh clone's test suite failed there). Wait for it instead, unless the user set
    # a limit of their own.
    os.environ.setdefault("NNCF_EXTENSION_LOAD_TIMEOUT", "0")
    import nncf
    import onnx

    encoder = encoder.eval()
    images = calibration if training is None or not len(training) else np.concatenate([calibration, training])
    targets = torch.from_numpy(torch_embeddings(encoder, images))
    # A flipped photo's target is the FP32 encoder on the flipped photo.
    flipped_targets = torch.from_numpy(torch_embeddings(encoder, np.ascontiguousarray(images[..., ::-1])))
    model_type = nncf.ModelType.TRANSFORMER if is_transformer(onnx.load(str(fp32_onnx), load_external_data=False)) \
        else None
    ignored = None
    if excluded_nodes:
        names = _torch_node_names(encoder, fp32_onnx, excluded_nodes, tuple(calibration.shape[2:]))
        ignored = nncf.IgnoredScope(names=names)
    # 7-bit weights everywhere, as the OpenVINO post-training builder makes them (``openvino_nncf``):
    # the exported IR runs on CPUs whose u8 x s8 sums saturate at 8 bits.
    from nncf.quantization.advanced_parameters import AdvancedQuantizationParameters, OverflowFix

    model = nncf.quantize(copy.deepcopy(encoder), nncf.Dataset([t[None] for t in torch.from_numpy(calibration)]),
                          subset_size=len(calibration), model_type=model_type, ignored_scope=ignored,
                          advanced_parameters=AdvancedQuantizationParameters(overflow_fix=OverflowFix.ENABLE))
    criterion = DistillLoss(table.class_embeddings, table.logit_scale, targets.mean(dim=0).numpy())
    optimiser = torch.optim.Adam(model.parameters(), lr=config.lr)
    generator = torch.Generator().manual_seed(config.seed)
    inputs = torch.from_numpy(images)
    # BatchNorm statistics and any dropout stay frozen (eval mode): the batches are small, and the
    # network must keep computing what the FP32 one computes; gradients still reach every weight.
    model.eval()
    for epoch in range(config.epochs):
        started, total = time.time(), 0.0
        order = torch.randperm(len(inputs), generator=generator)
        for start in range(0, len(order), config.batch_size):
            index = order[start:start + config.batch_size]
            flip = torch.rand(len(index), generator=generator) < 0.5
            x = torch.where(flip[:, None, None, None], inputs[index].flip(-1), inputs[index])
            y = torch.where(flip[:, None], flipped_targets[index], targets[index])
            loss, _ = criterion(model(x), y)
            optimiser.zero_grad(set_to_none=True)
            loss.backward()
            optimiser.step()
            total += loss.item() * len(index)
        if progress:
            progress(f"QAT epoch {epoch + 1}/{config.epochs}: loss {total / len(inputs):.5f} "
                     f"({time.time() - started:.0f} s)")
    return model


def export_qat(model: torch.nn.Module, input_size: tuple[int, int], out_dir: Path) -> dict[str, list[Path]]:
    """{"openvino": [xml, bin], "onnx": [Q/DQ ONNX]} written under ``out_dir``."""
    import openvino as ov
    from nncf.torch.quantization.layers import BaseQuantizer, QuantizerExportMode

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    model = model.eval()
    example = torch.rand(1, 3, *input_size, generator=torch.Generator().manual_seed(0))
    quantizers = [m for m in model.modules() if isinstance(m, BaseQuantizer)]
    xml = out_dir / QAT_IR
    with torch.no_grad():
        for quantizer in quantizers:
            quantizer.set_export_mode(QuantizerExportMode.FAKE_QUANTIZE)
        ov.save_model(ov.convert_model(model, example_input=example), str(xml), compress_to_fp16=False)
        for quantizer in quantizers:
            quantizer.set_export_mode(QuantizerExportMode.ONNX_QUANTIZE_DEQUANTIZE_PAIRS)
        onnx_path = out_dir / QAT_ONNX
        torch.onnx.export(model, (example,), str(onnx_path), dynamo=False, opset_version=QDQ_OPSET,
                          input_names=[INPUT_NAME], output_names=[OUTPUT_NAME],
                          dynamic_axes={INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}})
    return {"openvino": [xml, xml.with_suffix(".bin")], "onnx": [onnx_path]}


@dataclass(frozen=True)
class QatArtefacts:
    """What a (cached) quantization-aware distillation left: its exports and how it was made."""

    openvino: list[Path]
    onnx: list[Path]
    record: dict  # config, calibration images, wall time, NNCF version: the engine's manifest notes

    def files_for(self, backend: str) -> list[Path]:
        return self.openvino if backend == "openvino" else self.onnx


def cached_qat(cache: StepCache, encoder: torch.nn.Module, spec: InputSpec, calibration: CalibrationSet,
               table: PromptTable, fp32_onnx: Path, config: QatConfig = QatConfig(),
               progress: Callable[[str], None] | None = None, *, training_images: Sequence[Path] = (),
               excluded_nodes: Sequence[str] = ()) -> QatArtefacts:
    """``quantization_aware_distill`` + ``export_qat`` as a step of the converter's cache: one run per
    encoder, calibration set, training images, float layers, prompt table and config, shared by
    every backend's INT8 engine."""
    import nncf

    def make(directory: Path) -> None:
        started = time.time()
        training = None
        if training_images:
            if progress:
                progress(f"QAT: preparing {len(training_images)} training images")
            training, _, _ = prepare_tensors(Preprocessor(spec), list(training_images))
        model = quantization_aware_distill(encoder, calibration.tensors, table, fp32_onnx, config, progress,
                                           training=training, excluded_nodes=excluded_nodes)
        export_qat(model, spec.size, directory)
        record = {"config": config.to_dict(), "calibration_images": calibration.size,
                  "training_images": 0 if training is None else len(training),
                  "float_layers": list(excluded_nodes),
                  "seconds": round(time.time() - started, 1), "nncf": nncf.__version__}
        (directory / QAT_RECORD).write_text(json.dumps(record, indent=2) + "\n")

    table_sha = hashlib.sha256(np.ascontiguousarray(table.class_embeddings, np.float32).tobytes()).hexdigest()
    directory, _ = cache.run("qat", [encoder_fingerprint(encoder), calibration.manifest_sha256, table_sha,
                                     table.logit_scale, config.to_dict(), torch.__version__, nncf.__version__,
                                     spec.sha256(), files_fingerprint(training_images), sorted(excluded_nodes)], make)
    xml = directory / QAT_IR
    return QatArtefacts([xml, xml.with_suffix(".bin")], [directory / QAT_ONNX],
                        json.loads((directory / QAT_RECORD).read_text()))
