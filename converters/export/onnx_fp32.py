"""PyTorch image encoder -> FP32 ONNX: the common starting point of every engine.

The graph takes ``image`` (N, 3, H, W) float32 and returns ``embedding`` (N, D), with a dynamic batch.
We use the dynamo exporter (``torch.onnx.export(..., dynamo=True)``, which needs onnxscript): it is
the exporter PyTorch maintains, and it keeps LayerNorm as one op, which INT8/FP16 engines rely on.
"""
from __future__ import annotations

import logging
import warnings
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import torch
from onnx_ir.passes.common import NameFixPass

from edge_retina.backends.base import INPUT_NAME

OUTPUT_NAME = "embedding"
OPSET = 18


class ExportError(RuntimeError):
    pass


def export_onnx(encoder: torch.nn.Module, input_size: tuple[int, int], path: Path, *, check: bool = True) -> Path:
    """Export ``encoder`` to ``path`` and, with ``check``, compare ONNX Runtime's output to torch's."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    encoder = encoder.eval()
    example = torch.rand(2, 3, *input_size, generator=torch.Generator().manual_seed(0))
    batch = torch.export.Dim("batch", min=1, max=256)
    # The dynamo exporter logs every decomposition at INFO; keep the user's terminal readable.
    logging.getLogger("torch.onnx").setLevel(logging.WARNING)
    with torch.no_grad(), warnings.catch_warnings():
        # torch 2.13's exporter trips its own pytree deprecation warning; nothing for our users to act on.
        warnings.filterwarnings("ignore", message=r"`isinstance\(treespec, LeafSpec\)` is deprecated")
        program = torch.onnx.export(
            encoder,
            (example,),
            dynamo=True,
            input_names=[INPUT_NAME],
            output_names=[OUTPUT_NAME],
            dynamic_shapes=({0: batch},),
            opset_version=OPSET,
            verbose=False,
            report=False,
        )
        # The exporter gives the graph output its name after optimising, without checking whether an
        # internal value already has it: a constant-folded lookup `embedding(table, fixed ids)` (a ViT's
        # position table) is named after its aten op, `embedding`, like our output, and the ONNX checker
        # rejects the duplicate. NameFixPass (onnx_ir, the IR the exporter builds) keeps the graph's
        # input and output names and renames any other value that reuses one.
        NameFixPass()(program.model)
        program.save(str(path), external_data=False)
        expected = encoder(example).numpy()
    onnx.checker.check_model(str(path))
    if check:
        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        got = session.run([OUTPUT_NAME], {INPUT_NAME: example.numpy()})[0]
        if got.shape != expected.shape or not np.allclose(got, expected, atol=1e-4, rtol=1e-3):
            raise ExportError(
                f"ONNX export of {type(encoder).__name__} does not match torch: max |diff| "
                f"{np.abs(got - expected).max() if got.shape == expected.shape else got.shape}"
            )
    return path
