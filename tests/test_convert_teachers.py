"""`edge-retina convert` from a published-layout checkpoint: a FLAIR checkpoint (ResNet-50 at 512,
random weights in FLAIR's exact key layout) becomes a bundle that screens a real fundus photo."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from teacher_fixtures import published_flair, published_state, write_tiny_bert

from converters.teachers import load_teacher
from edge_retina.cli.main import cli
from edge_retina.screener import Screener

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def flair_checkpoint(tmp_path_factory):
    root = tmp_path_factory.mktemp("flair")
    text_dir = write_tiny_bert(root / "bio-clinicalbert")
    checkpoint = root / "flair_resnet.pth"
    torch.save(published_state(published_flair(text_dir)), checkpoint)  # the published architecture
    return checkpoint, text_dir


def test_convert_flair_checkpoint_to_a_bundle_that_screens(flair_checkpoint, tmp_path, retina_jpeg):
    checkpoint, text_dir = flair_checkpoint
    out = tmp_path / "flair-bundle"
    result = CliRunner().invoke(cli, [
        "convert", "--family", "flair", "--checkpoint", str(checkpoint), "--out", str(out),
        "--backends", "onnxruntime", "--teacher-option", f"text_model_path={text_dir}",
    ], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["model"]["family"] == "flair"
    assert manifest["input"]["size"] == [512, 512] and manifest["input"]["pad_position"] == "top-left"
    assert manifest["prompts"]["ensembling"] == "mean"

    teacher = load_teacher("flair", checkpoint, text_model_path=text_dir)
    assert manifest["model"]["teacher_checkpoint_sha256"] == teacher.checkpoint_sha256
    with Screener.from_bundle(out, keep_embeddings=True) as screener:
        screened = screener.screen(retina_jpeg)
        prepared = screener.preprocessor.prepare(retina_jpeg)
    assert screened.gradable and set(screened.probabilities) == set(screener.prompt_table.conditions)
    with torch.no_grad():
        expected = teacher.image_encoder(torch.from_numpy(prepared.tensor)).numpy()[0]
    assert float(np.dot(screened.embedding, expected)) > 0.9999  # the engine is the teacher's encoder


def test_convert_refuses_a_checkpoint_of_another_family(flair_checkpoint, tmp_path):
    checkpoint, _ = flair_checkpoint
    result = CliRunner().invoke(cli, ["convert", "--family", "reference", "--checkpoint", str(checkpoint),
                                      "--out", str(tmp_path / "x")])
    assert result.exit_code != 0
    assert not (tmp_path / "x" / "manifest.json").exists()
