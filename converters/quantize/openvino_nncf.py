"""FP32 ONNX -> OpenVINO INT8 IR through NNCF post-training quantization.

Transformers (LayerNorm/Softmax in the graph) use ``ModelType.TRANSFORMER``, NNCF's scheme that keeps
LayerNorm, Softmax, GELU and residual Adds in floating point (the ViT-safe policy). With a validation
set, ``quantize_with_accuracy_control`` reverts the layers that cost the most until the metric drop
is within ``max_drop``.

Weights are quantized to 7 bits in every layer by default (NNCF's overflow fix, ``overflow_fix=
"enable"``): x86 CPUs without VNNI (AVX2 only, like the host these engines were measured on)
multiply u8 activations by s8 weights into 16-bit sums that saturate. Measured on the default
student here, the zero-shot score noise of all-INT8 was 0.42 of the scores' spread with 8-bit weights,
0.30 with NNCF's default (7 bits in the first layer only) and 0.24 with 7 bits everywhere. A VNNI
device's profile can ask for ``first_layer_only`` or ``disable`` to keep the eighth bit.

Biases are corrected with NNCF's full bias correction (``fast_bias_correction=False``: each layer's
output shift measured with the layers before it already quantized), not the fast per-layer estimate.
Measured on the default student here (1,000 guard photos, 4 layers in float, overflow fix on): mean
cosine to FP32 0.9973 -> 0.9978, worst score noise 0.075 -> 0.065 of the spread, glaucoma's referral
agreement 0.972 -> 0.987; the quantization takes a few seconds longer.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import nncf
import numpy as np
from nncf.quantization.advanced_parameters import AdvancedQuantizationParameters, OverflowFix
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


#: ``overflow_fix`` values (NNCF's ``OverflowFix``): 7-bit weights everywhere, in the first layer, nowhere.
OVERFLOW_FIXES = ("enable", "first_layer_only", "disable")


def quantize_openvino(
    fp32_onnx: Path,
    xml_path: Path,
    calibration_tensors: np.ndarray,
    *,
    ignored_nodes: Sequence[str] = (),
    accuracy_control: AccuracyControl | None = None,
    overflow_fix: str = "enable",
) -> list[Path]:
    """Write the INT8 IR (.xml, .bin); returns both paths. ``ignored_nodes`` are ONNX node names."""
    xml_path = Path(xml_path)
    xml_path.parent.mkdir(parents=True, exist_ok=True)
    model_type = nncf.ModelType.TRANSFORMER if is_transformer(onnx.load(str(fp32_onnx), load_external_data=False)) \
        else None
    model = ov.convert_model(str(fp32_onnx))
    calibration = nncf.Dataset([t[None] for t in calibration_tensors])
    if overflow_fix not in OVERFLOW_FIXES:
        raise ValueError(f"overflow_fix must be one of {OVERFLOW_FIXES}, got {overflow_fix!r}")
    common = dict(subset_size=len(calibration_tensors), model_type=model_type,
                  ignored_scope=_ignored_scope(ignored_nodes), fast_bias_correction=False,
                  advanced_parameters=AdvancedQuantizationParameters(overflow_fix=OverflowFix(overflow_fix)))
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

        common["advanced_quantization_parameters"] = common.pop("advanced_parameters")
        quantized = nncf.quantize_with_accuracy_control(
            model, calibration, nncf.Dataset([t[None] for t in accuracy_control.tensors]), validate,
            max_drop=accuracy_control.max_drop, drop_type=nncf.DropType.ABSOLUTE, **common,
        )
    # INT8 weights are stored as such; the remaining float constants are kept in FP32.
    ov.save_model(quantized, str(xml_path), compress_to_fp16=False)
    return [xml_path, xml_path.with_suffix(".bin")]


def build_int8(fp32_onnx: Path, out_dir: Path, calibration: np.ndarray, exclusions: Sequence[str],
               options: Mapping[str, Any]) -> list[Path]:
    """The registry's builder (``converters.quantize.registry``); options ``accuracy_control``, ``overflow_fix``."""
    return quantize_openvino(fp32_onnx, Path(out_dir) / "model.xml", calibration, ignored_nodes=exclusions,
                             accuracy_control=options.get("accuracy_control"),
                             overflow_fix=options.get("overflow_fix", "enable"))
