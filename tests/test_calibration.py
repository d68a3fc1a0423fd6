"""Calibration sets: quality gate, k-centre / stratified selection, manifest, cached tensors, reader, CLI."""
from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest
from click.testing import CliRunner
from quantize_fixtures import eye4class_rows, write_csv

from calibration import (
    ArrayCalibrationReader,
    build_calibration_set,
    kcenter_greedy,
    list_candidates,
    load_calibration_set,
    stratified_sample,
)
from calibration.calibration_set import MANIFEST_NAME, TENSORS_NAME
from converters.commands.calibrate import calibrate
from edge_retina.files import sha256_file
from edge_retina.preprocess import InputSpec, Preprocessor
from edge_retina.quality import REASONS
from narrow_terminal import unwrapped

SPEC = InputSpec(size=(64, 64), mean=(0.5, 0.3, 0.2), std=(0.25, 0.2, 0.15))


@pytest.fixture(scope="module")
def candidates_csv(shared_datasets, tmp_path_factory) -> Path:
    """16 real photos (4 per class) plus a non-fundus picture the quality gate must drop."""
    skimage_data = pytest.importorskip("skimage.data")
    folder = tmp_path_factory.mktemp("calibration-sources")
    cv2.imwrite(str(folder / "astronaut.png"), cv2.cvtColor(skimage_data.astronaut(), cv2.COLOR_RGB2BGR))
    rows = eye4class_rows(shared_datasets, 4) + [{"file": "astronaut.png", "label": "other"}]
    return write_csv(rows, folder / "candidates.csv")


def test_kcenter_greedy_is_seeded_and_covers_outliers():
    rng = np.random.default_rng(1)
    cluster = rng.normal(0, 0.01, size=(50, 4))
    outliers = np.array([[5.0, 0, 0, 0], [0, -5.0, 0, 0]])
    features = np.concatenate([cluster, outliers])
    chosen = kcenter_greedy(features, 3, seed=7)
    assert chosen == kcenter_greedy(features, 3, seed=7)
    assert {50, 51} <= set(chosen)  # both far points are picked before a second cluster member
    assert len(set(chosen)) == 3
    assert kcenter_greedy(features, 100, seed=0) == list(range(52))


def test_stratified_sample_is_proportional_and_covers_every_group():
    groups = ["a"] * 60 + ["b"] * 30 + ["c"] * 10
    chosen = stratified_sample(groups, 10, seed=3)
    counts = {g: sum(groups[i] == g for i in chosen) for g in "abc"}
    assert counts == {"a": 6, "b": 3, "c": 1}
    assert chosen == stratified_sample(groups, 10, seed=3)
    assert chosen != stratified_sample(groups, 10, seed=4)
    rare = stratified_sample(["a"] * 98 + ["b", "c"], 4, seed=0)
    assert {(["a"] * 98 + ["b", "c"])[i] for i in rare} == {"a", "b", "c"}


def test_candidates_from_csv_carry_metadata(candidates_csv):
    candidates = list_candidates([candidates_csv])
    assert len(candidates) == 17
    assert candidates[-1].path == candidates_csv.parent / "astronaut.png"
    assert candidates[0].metadata == {"label": "normal"}


def test_build_gates_selects_and_writes_a_complete_manifest(candidates_csv, tmp_path):
    candidates = list_candidates([candidates_csv])
    result = build_calibration_set(candidates, tmp_path / "set", SPEC, size=6, seed=0)
    manifest = json.loads((tmp_path / "set" / MANIFEST_NAME).read_text())
    rejected = {r["path"]: r["reason"] for r in manifest["rejected"]}
    assert rejected[str(candidates_csv.parent / "astronaut.png")] == "not_fundus"
    assert set(rejected.values()) <= set(REASONS)
    assert manifest["method"] == "kcenter-thumbnails" and manifest["seed"] == 0
    assert manifest["input_spec_sha256"] == SPEC.sha256() and manifest["size"] == 6 == result.size
    chosen = {f["path"] for f in manifest["files"]}
    assert not chosen & set(rejected) and not chosen & set(manifest["held_out"])
    assert len(chosen) + len(manifest["held_out"]) + len(rejected) == 17
    for entry in manifest["files"]:
        assert entry["sha256"] == sha256_file(Path(entry["path"]))
    assert manifest["tensors"]["sha256"] == sha256_file(tmp_path / "set" / TENSORS_NAME)
    # The tensors are exactly what the runtime's preprocessing makes of the chosen files.
    first = Preprocessor(SPEC).prepare(Path(manifest["files"][0]["path"])).tensor[0]
    np.testing.assert_array_equal(result.tensors[0], first)
    assert result.tensors.shape == (6, 3, 64, 64)


def test_same_seed_same_bytes_other_seed_other_selection(candidates_csv, tmp_path):
    candidates = list_candidates([candidates_csv])
    # Stratified selection draws at random within each stratum (k-centre only seeds its first pick,
    # so on a small set different seeds often converge on the same extremes).
    a = build_calibration_set(candidates, tmp_path / "a", SPEC, size=5, seed=3, stratify_by=["label"])
    b = build_calibration_set(candidates, tmp_path / "b", SPEC, size=5, seed=3, stratify_by=["label"])
    c = build_calibration_set(candidates, tmp_path / "c", SPEC, size=5, seed=4, stratify_by=["label"])
    assert (tmp_path / "a" / MANIFEST_NAME).read_bytes() == (tmp_path / "b" / MANIFEST_NAME).read_bytes()
    assert a.manifest_sha256 == b.manifest_sha256 != c.manifest_sha256
    assert [f["path"] for f in a.manifest["files"]] != [f["path"] for f in c.manifest["files"]]


def test_embeddings_and_strata_drive_selection(candidates_csv, tmp_path):
    candidates = list_candidates([candidates_csv])
    calls = []

    def embed(batch: np.ndarray) -> np.ndarray:
        calls.append(len(batch))
        return batch.mean(axis=(2, 3))  # per-channel means: a stand-in embedding

    by_model = build_calibration_set(candidates, tmp_path / "m", SPEC, size=4, seed=0, embed=embed, model_sha256="ab" * 32)
    assert by_model.method == "kcenter-embeddings" and by_model.manifest["model_sha256"] == "ab" * 32
    gradable = 17 - len(by_model.manifest["rejected"])
    assert sum(calls) == gradable  # every gradable candidate embedded once
    strata = build_calibration_set(candidates, tmp_path / "s", SPEC, size=4, seed=0, stratify_by=["label"])
    assert strata.method == "stratified:label"
    assert sorted(f["metadata"]["label"] for f in strata.manifest["files"]) == sorted(
        ["normal", "cataract", "glaucoma", "diabetic_retinopathy"])


@pytest.mark.parametrize("sources, says", [
    (["labelled.csv"], "cannot stratify by 'camera': not a column of the calibration CSV (its columns besides "
                       "'file': label, site)"),
    (["folder"], "cannot stratify by 'label', 'camera': the calibration candidates have no columns to group by"),
    # Each source's own columns: the intersection would say labelled.csv has no 'site' (or folders a 'label').
    (["labelled.csv", "cameras.csv"], "cannot stratify by 'camera': not a column of every calibration source (their "
                                      "columns besides 'file': {tmp}/labelled.csv: label, site; {tmp}/cameras.csv: "
                                      "label, camera)"),
    (["labelled.csv", "folder"], "cannot stratify by 'label', 'camera': not a column of every calibration source "
                                 "(their columns besides 'file': {tmp}/labelled.csv: label, site; images from "
                                 "folders or named alone: none)"),
])
def test_a_stratification_column_a_candidate_lacks_is_refused_before_an_image_is_read(sources, says, tmp_path,
                                                                                       monkeypatch):
    (tmp_path / "labelled.csv").write_text("file,label,site\na.jpg,normal,north\n")
    (tmp_path / "cameras.csv").write_text("file,label,camera\nc.jpg,glaucoma,x1\n")
    (tmp_path / "folder").mkdir()
    (tmp_path / "folder" / "b.jpg").write_bytes(b"")
    monkeypatch.setattr(Preprocessor, "prepare", lambda *args: pytest.fail("an image was read"))
    with pytest.raises(ValueError) as refused:
        build_calibration_set(list_candidates([tmp_path / s for s in sources]), tmp_path / "x", SPEC,
                              stratify_by=["label", "camera"])
    assert str(refused.value).startswith(says.format(tmp=tmp_path)), refused.value


def test_load_verifies_tensors_and_spec(candidates_csv, tmp_path):
    built = build_calibration_set(list_candidates([candidates_csv]), tmp_path / "set", SPEC, size=3, seed=0)
    loaded = load_calibration_set(tmp_path / "set", spec=SPEC)
    np.testing.assert_array_equal(loaded.tensors, built.tensors)
    assert loaded.manifest_sha256 == built.manifest_sha256
    with pytest.raises(ValueError, match="another input spec"):
        load_calibration_set(tmp_path / "set", spec=InputSpec(size=(96, 96)))
    with open(tmp_path / "set" / TENSORS_NAME, "ab") as f:
        f.write(b"tampered")
    with pytest.raises(ValueError, match="sha256"):
        load_calibration_set(tmp_path / "set")


def test_reader_batches_and_rewinds():
    tensors = np.arange(5 * 3 * 2 * 2, dtype=np.float32).reshape(5, 3, 2, 2)
    reader = ArrayCalibrationReader(tensors, "image", batch_size=2)
    batches = list(iter(reader.get_next, None))
    assert [b["image"].shape[0] for b in batches] == [2, 2, 1] and len(reader) == 3
    reader.rewind()
    np.testing.assert_array_equal(reader.get_next()["image"], tensors[:2])


def test_cli_writes_a_set(candidates_csv, tmp_path):
    spec_file = tmp_path / "spec.json"
    spec_file.write_text(json.dumps(SPEC.to_dict()))
    result = CliRunner().invoke(calibrate, [str(candidates_csv), "--out", str(tmp_path / "cli"), "--size", "4",
                                            "--spec", str(spec_file), "--stratify", "label"])
    assert result.exit_code == 0, result.output
    assert unwrapped("calibration set of 4 images (stratified:label, seed 0)") in unwrapped(result.output)
    rejected = len(json.loads((tmp_path / "cli" / MANIFEST_NAME).read_text())["rejected"])
    assert rejected > 1  # the astronaut and at least one ungradable photo
    assert unwrapped(f"; {rejected} ungradable or unreadable candidates dropped") in unwrapped(result.output)
    assert load_calibration_set(tmp_path / "cli", spec=SPEC).size == 4


def test_cli_with_a_bundle_uses_its_spec_and_embeddings(candidates_csv, tiny_bundle, tmp_path):
    result = CliRunner().invoke(calibrate, [str(candidates_csv), "--out", str(tmp_path / "b"), "--size", "3",
                                            "--model", str(tiny_bundle)])
    assert result.exit_code == 0, result.output
    loaded = load_calibration_set(tmp_path / "b")
    assert loaded.method == "kcenter-embeddings" and loaded.manifest["model_sha256"]
    assert loaded.tensors.shape[2:] == (96, 96)  # the tiny bundle's input size
