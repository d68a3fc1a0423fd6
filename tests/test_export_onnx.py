"""FP32 ONNX export: the graph keeps its documented input/output names and matches torch."""
from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from torch import nn

from converters.export.onnx_fp32 import INPUT_NAME, OUTPUT_NAME, export_onnx

PATCH = 4
SIZE = (8, 8)
PATCHES = (SIZE[0] // PATCH) * (SIZE[1] // PATCH)
WIDTH = 8


class PatchesWithPositionTable(nn.Module):
    """A ViT's first steps: patch conv plus a learned position table looked up with fixed ids.

    The exporter folds ``embedding(table, fixed ids)`` into a constant named after the aten op,
    ``embedding``: the name of our graph output.
    """

    def __init__(self):
        super().__init__()
        self.patches = nn.Conv2d(3, WIDTH, PATCH, stride=PATCH)
        self.positions = nn.Embedding(PATCHES, WIDTH)
        self.register_buffer("position_ids", torch.arange(PATCHES), persistent=False)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        tokens = self.patches(image).flatten(2).transpose(1, 2)
        return (tokens + self.positions(self.position_ids)).mean(dim=1)


@pytest.fixture(scope="module")
def exported(tmp_path_factory) -> tuple[nn.Module, onnx.ModelProto, str]:
    torch.manual_seed(0)
    module = PatchesWithPositionTable().eval()
    # export_onnx runs the ONNX checker and compares ONNX Runtime's output with torch's.
    path = export_onnx(module, SIZE, tmp_path_factory.mktemp("export") / "encoder.onnx")
    return module, onnx.load(path), str(path)


def test_output_name_survives_a_folded_embedding_lookup(exported):
    _, model, _ = exported
    assert [v.name for v in model.graph.input] == [INPUT_NAME]
    assert [v.name for v in model.graph.output] == [OUTPUT_NAME]
    defined = [i.name for i in model.graph.initializer] + [o for n in model.graph.node for o in n.output]
    assert defined.count(OUTPUT_NAME) == 1
    assert len(defined) == len(set(defined))


def test_batch_dimension_is_dynamic(exported):
    module, _, path = exported
    images = torch.rand(5, 3, *SIZE, generator=torch.Generator().manual_seed(1))
    session = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    got = session.run([OUTPUT_NAME], {INPUT_NAME: images.numpy()})[0]
    with torch.no_grad():
        np.testing.assert_allclose(got, module(images).numpy(), atol=1e-5)
