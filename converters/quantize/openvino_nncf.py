"""FP32 ONNX -> OpenVINO INT8 IR through NNCF post-training quantization.

Transformers (LayerNorm/Softmax in the graph) use ``ModelType.TRANSFORMER``, NNCF's scheme that keeps
LayerNorm, Softmax, GELU and residual Adds in floating point (the ViT-safe policy). With a validation
set, ``quantize_with_accuracy_control`` reverts the layers that cost the most until the metric drop
is within ``max_drop``.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import nncf
import numpy as np
import onnx
import openvino as ov

from converters.quantize.policy import is_transformer


@dataclass
class AccuracyControl:
    """A labelled validation set and the metric NNCF keeps within ``max_drop`` of FP32.

    ``metric`` maps the compiled model's (N, D) embeddings of ``tensors`` to a score (higher is
    better), e.g. the mean zero-shot AUROC over the labelled conditions.
    """

    tensors: np.ndarray
    metric: Callable[[np.ndarray], float]
    max_drop: float = 0.005


def _ignored_scope(ignored_nodes: Sequence[str]) -> nncf.IgnoredScope | None:
    if not ignored_nodes:
        return None
    # OpenVINO names an ONNX node's ops after it, splitting off the bias ("<name>/WithoutBiases").
    patterns = ["^" + re.escape(name) + r"(/.*)?$" for name in ignored_nodes]
    return nncf.IgnoredScope(patterns=patterns, validate=False)


def _embed_all(compiled: ov.CompiledModel, tensors: np.ndarray) -> np.ndarray:
    return np.concatenate([compiled(tensors[i:i + 1])[0] for i in range(len(tensors))])


def quantize_openvino(
    fp32_onnx: Path,
    xml_path: Path,
    calibration_tensors: np.ndarray,
    *,
    ignored_nodes: Sequence[str] = (),
    accuracy_control: AccuracyControl | None = None,
) -> list[Path]:
    """Write the INT8 IR (.xml, .bin); returns both paths. ``ignored_nodes`` are ONNX node names."""
    xml_path = Path(xml_path)
    xml_path.parent.mkdir(parents=True, exist_ok=True)
    model_type = nncf.ModelType.TRANSFORMER if is_transformer(onnx.load(str(fp32_onnx), load_external_data=False)) \
        else None
    model = ov.convert_model(str(fp32_onnx))
    calibration = nncf.Dataset([t[None] for t in calibration_tensors])
    common = dict(subset_size=len(calibration_tensors), model_type=model_type,
                  ignored_scope=_ignored_scope(ignored_nodes))
    if accuracy_control is None:
        quantized = nncf.quantize(model, calibration, **common)
    else:
        def validate(compiled: ov.CompiledModel, items) -> tuple[float, list[list[np.ndarray]]]:
            # The metric is a set-level AUROC, meaningless per image. NNCF first probes with one item:
            # refusing it makes NNCF rank layers by how far each image's output moves (the outputs
            # returned beside the metric) instead of re-running the metric image by image.
            embeddings = _embed_all(compiled, np.concatenate(list(items)))
            if len(embeddings) != len(accuracy_control.tensors):
                raise ValueError("the validation metric is computed on the whole validation set only")
            return accuracy_control.metric(embeddings), [[e] for e in embeddings]

        quantized = nncf.quantize_with_accuracy_control(
            model, calibration, nncf.Dataset([t[None] for t in accuracy_control.tensors]), validate,
            max_drop=accuracy_control.max_drop, drop_type=nncf.DropType.ABSOLUTE, **common,
        )
    # INT8 weights are stored as such; the remaining float constants are kept in FP32.
    ov.save_model(quantized, str(xml_path), compress_to_fp16=False)
    return [xml_path, xml_path.with_suffix(".bin")]


def build_int8(fp32_onnx: Path, out_dir: Path, calibration: np.ndarray, exclusions: Sequence[str],
               options: Mapping[str, Any]) -> list[Path]:
    """The registry's builder (``converters.quantize.registry``); option ``accuracy_control``."""
    return quantize_openvino(fp32_onnx, Path(out_dir) / "model.xml", calibration, ignored_nodes=exclusions,
                             accuracy_control=options.get("accuracy_control"))
