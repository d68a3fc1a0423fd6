"""The shared teacher-checkpoint helpers: dependencies, reading, exact loading, digests."""
from __future__ import annotations

import hashlib
import subprocess
import sys

import pytest
import torch
from torch import nn

from converters.teachers.checkpoints import (
    CheckpointLayoutError,
    checkpoint_sha256,
    load_exact,
    read_state_dict,
    strip_prefix,
)


def test_module_imports_no_model_library():
    # Every adapter imports it; it must not drag in another family's model library.
    code = (
        "import sys, converters.teachers.checkpoints; "
        "print(sorted(m for m in ('open_clip', 'transformers', 'timm') if m in sys.modules))"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]"


def test_nested_ddp_checkpoint_reads_as_the_plain_state_dict(tmp_path):
    state = {"linear.weight": torch.ones(2, 3), "linear.bias": torch.zeros(2)}
    path = tmp_path / "epoch_3.pt"
    torch.save({"epoch": 3, "state_dict": {f"module.{k}": v for k, v in state.items()}}, path)

    read = strip_prefix(read_state_dict(path, ("model_state_dict", "state_dict")), "module.")
    assert sorted(read) == sorted(state) and all(torch.equal(read[k], state[k]) for k in state)
    with pytest.raises(CheckpointLayoutError, match=r"no state dict found.*non-tensor entries \['epoch', 'state_dict'\]"):
        read_state_dict(path)  # not told where to look


def test_failed_load_names_every_difference_and_changes_nothing():
    module = nn.Sequential(nn.Linear(3, 2), nn.Linear(2, 2))
    before = {k: v.clone() for k, v in module.state_dict().items()}
    state = {
        "0.weight": torch.ones(2, 3),  # would load
        "1.weight": torch.ones(4, 2),  # wrong shape
        "2.weight": torch.ones(1),  # not in the model
        "decoder.head": torch.ones(1),  # documented training-only part
    }  # 0.bias and 1.bias missing
    with pytest.raises(CheckpointLayoutError) as error:
        load_exact(module, state, "test checkpoint", unused=("decoder.",))
    message = str(error.value)
    assert message.startswith("test checkpoint does not match the expected layout:")
    assert "missing keys (2): 0.bias, 1.bias" in message
    assert "unexpected keys (1): 2.weight" in message
    assert "keys with other shapes (1): 1.weight (4, 2) (expected (2, 2))" in message
    assert all(torch.equal(module.state_dict()[k], v) for k, v in before.items())

    exact = {k: torch.full_like(v, 0.5) for k, v in before.items()} | {"decoder.head": torch.ones(1)}
    load_exact(module, exact, "test checkpoint", unused=("decoder.",))
    assert all(torch.equal(v, torch.full_like(v, 0.5)) for v in module.state_dict().values())


def test_digest_of_a_file_and_of_a_model_directory(tmp_path):
    (tmp_path / "config.json").write_text("{}")
    (tmp_path / "weights.bin").write_bytes(b"\x00" * 10)
    (tmp_path / "README.md").write_text("notes")
    assert checkpoint_sha256(tmp_path / "weights.bin") == hashlib.sha256(b"\x00" * 10).hexdigest()

    members = ["weights.bin", "config.json"]
    digest = checkpoint_sha256(tmp_path, members)
    assert digest == checkpoint_sha256(tmp_path, reversed(members))
    (tmp_path / "README.md").write_text("other notes")  # not a member
    assert checkpoint_sha256(tmp_path, members) == digest
    (tmp_path / "config.json").write_text('{"hidden_size": 8}')
    assert checkpoint_sha256(tmp_path, members) != digest
    with pytest.raises(ValueError, match="name the files"):
        checkpoint_sha256(tmp_path)
