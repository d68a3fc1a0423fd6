"""Distillation mechanics with a tiny teacher and a tiny student: determinism, resume, caches,
weights round trip, the CLI. Distillation quality (and the default student's ONNX export) is
measured by converters.distill.report on the real student."""
from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from click.testing import CliRunner
from torch import nn

from converters.distill import (
    DistillConfig,
    build_student,
    distill,
    load_student,
    save_student,
)
from converters.distill.augment import FundusAugment
from converters.distill.loss import DistillLoss
from converters.teachers import Teacher
from edge_retina.preprocess.spec import InputSpec
from narrow_terminal import COLUMNS, narrow_runner, one_error, unwrapped, widest_line

EMBED_DIM = 24
TINY = DistillConfig(arch="mobilenetv3_small_050", size=64, frozen_blocks=0, epochs=2, batch_size=3, seed=7)
# The default kind of student: ImageNet EfficientNet-Lite0 whose frozen trunk's features are cached.
TINY_FROZEN = DistillConfig(arch="efficientnet_lite0", size=64, frozen_blocks=5, views=2, epochs=2, batch_size=3,
                            seed=7)


class TinyTeacherEncoder(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.features = nn.Sequential(nn.Conv2d(3, 8, 3, stride=2), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.projection = nn.Linear(8, EMBED_DIM)
        self.calls = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        return nn.functional.normalize(self.projection(self.features(x)), dim=-1)


def hash_text_embeddings(texts: list[str]) -> np.ndarray:
    """A stand-in text tower: a random unit vector seeded by each text."""
    rows = [np.random.default_rng(int.from_bytes(hashlib.sha256(t.encode()).digest()[:8], "little")).normal(size=EMBED_DIM)
            for t in texts]
    return np.stack([r / np.linalg.norm(r) for r in rows]).astype(np.float32)


@pytest.fixture
def tiny_teacher() -> Teacher:
    spec = InputSpec(size=(48, 48), interpolation="area", mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225))
    return Teacher(family="test-tiny", name="tiny", image_encoder=TinyTeacherEncoder().eval(),
                   embed_texts=hash_text_embeddings, input_spec=spec, ensembling="mean_renormalised",
                   logit_scale=30.0, checkpoint_sha256="0" * 64)


@pytest.fixture(scope="module")
def photo_dir(tmp_path_factory, retina_rgb) -> Path:
    """Six different small fundus photos (shifted, tinted crops of a real one)."""
    folder = tmp_path_factory.mktemp("photos")
    small = cv2.resize(retina_rgb, (320, 320), interpolation=cv2.INTER_AREA)
    for i in range(6):
        shifted = np.roll(small, 12 * i, axis=1)
        tinted = np.clip(shifted.astype(np.int16) + (i * 9 - 20), 0, 255).astype(np.uint8)
        cv2.imwrite(str(folder / f"photo{i}.jpg"), cv2.cvtColor(tinted, cv2.COLOR_RGB2BGR))
    return folder


@pytest.fixture(autouse=True)
def one_torch_thread():
    """One thread, as the distill command uses by default: on a busy 2-core machine it is far faster."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def photos(folder: Path) -> list[Path]:
    return sorted(folder.glob("*.jpg"))


def same_weights(a: nn.Module, b: nn.Module) -> bool:
    return all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))


def test_distillation_is_deterministic_and_resume_matches_an_uninterrupted_run(tiny_teacher, photo_dir, tmp_path):
    cache = tmp_path / "cache"
    first = distill(tiny_teacher, photos(photo_dir), tmp_path / "a", TINY, cache_dir=cache, progress=False)
    assert [h["epoch"] for h in first.history] == [1, 2]
    # An interrupted run, resumed in a fresh model: the same weights bit for bit, which also shows
    # that two runs with one seed agree.
    distill(tiny_teacher, photos(photo_dir), tmp_path / "c", TINY, cache_dir=cache, max_epochs_this_run=1,
            progress=False)
    resumed = distill(tiny_teacher, photos(photo_dir), tmp_path / "c", TINY, cache_dir=cache, resume=True,
                      progress=False)
    assert [h["epoch"] for h in resumed.history] == [1, 2]
    assert same_weights(first.student, resumed.student)
    assert [h["loss"] for h in resumed.history] == [h["loss"] for h in first.history]


def test_resume_refuses_another_recipe_or_teacher_before_the_teacher_embeds_an_image(tiny_teacher, photo_dir,
                                                                                       tmp_path):
    """Another seed or teacher misses the embedding cache: found after the embedding, it cost hours."""
    from dataclasses import replace

    from converters.distill.train import DistillError

    distill(tiny_teacher, photos(photo_dir), tmp_path, TINY, max_epochs_this_run=1, progress=False)
    calls = tiny_teacher.image_encoder.calls
    with pytest.raises(DistillError, match="another recipe or teacher"):
        distill(tiny_teacher, photos(photo_dir), tmp_path, DistillConfig(**{**TINY.__dict__, "seed": 8}),
                resume=True, progress=False)
    with pytest.raises(DistillError, match="another recipe or teacher"):
        distill(replace(tiny_teacher, checkpoint_sha256="1" * 64), photos(photo_dir), tmp_path, TINY,
                resume=True, progress=False)
    assert tiny_teacher.image_encoder.calls == calls


def test_resume_refuses_another_image_set(tiny_teacher, photo_dir, tmp_path):
    from converters.distill.train import DistillError

    distill(tiny_teacher, photos(photo_dir), tmp_path, TINY, max_epochs_this_run=1, progress=False)
    with pytest.raises(DistillError, match="another image set"):
        distill(tiny_teacher, photos(photo_dir)[:5], tmp_path, TINY, resume=True, progress=False)


def test_unreadable_images_are_skipped_and_a_second_run_hits_the_content_caches(tiny_teacher, photo_dir, tmp_path,
                                                                               monkeypatch):
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"not a jpeg at all")
    first = distill(tiny_teacher, photos(photo_dir) + [broken], tmp_path / "a", TINY, cache_dir=tmp_path / "cache",
                    max_epochs_this_run=1, progress=False)
    assert first.n_images == len(photos(photo_dir))
    assert len(first.skipped) == 1 and "broken.jpg" in first.skipped[0]
    teacher_calls = tiny_teacher.image_encoder.calls
    assert teacher_calls > 0

    def must_not_prepare(*args, **kwargs):
        raise AssertionError("an image was prepared again despite the cache")

    monkeypatch.setattr("converters.distill.train.prepare_images", must_not_prepare)
    # A renamed copy has the same content: a cache hit, and not a second training image.
    renamed = tmp_path / "renamed"
    renamed.mkdir()
    shutil.copy(photos(photo_dir)[0], renamed / "other-name.jpg")
    result = distill(tiny_teacher, photos(photo_dir) + photos(renamed), tmp_path / "b", TINY,
                     cache_dir=tmp_path / "cache", max_epochs_this_run=1, progress=False)
    assert tiny_teacher.image_encoder.calls == teacher_calls
    assert result.n_images == len(photos(photo_dir))


def test_a_frozen_trunk_student_trains_only_its_head_and_resumes_exactly(tiny_teacher, photo_dir, tmp_path):
    from converters.backbones import create_lite, trunk_parameters

    cache = tmp_path / "cache"
    first = distill(tiny_teacher, photos(photo_dir), tmp_path / "a", TINY_FROZEN, cache_dir=cache, progress=False)
    imagenet = create_lite("efficientnet_lite0")
    frozen = trunk_parameters(first.student.backbone, 5)
    assert all(torch.equal(p, q) for p, q in zip(frozen, trunk_parameters(imagenet, 5)))
    assert not torch.equal(first.student.backbone.conv_head.weight, imagenet.conv_head.weight)  # the head learnt
    assert len(list(cache.glob("student-trunk-*.npy"))) == 1  # every view's trunk features, computed once
    distill(tiny_teacher, photos(photo_dir), tmp_path / "b", TINY_FROZEN, cache_dir=cache, max_epochs_this_run=1,
            progress=False)
    resumed = distill(tiny_teacher, photos(photo_dir), tmp_path / "b", TINY_FROZEN, cache_dir=cache, resume=True,
                      progress=False)
    assert same_weights(first.student, resumed.student)
    x = torch.rand(2, 3, 64, 64)
    with torch.no_grad():  # the exported module (whole image in) computes what training computed
        from converters.backbones import lite_trunk

        whole = first.student(x)
        split = first.student.embed_trunk_features(lite_trunk(first.student.backbone, x, 5))
    torch.testing.assert_close(whole, split)


def test_student_weights_round_trip(tiny_teacher, photo_dir, tmp_path):
    result = distill(tiny_teacher, photos(photo_dir), tmp_path / "run", TINY, max_epochs_this_run=1, progress=False)
    path = save_student(result.student, result.input_spec, tmp_path / "student.safetensors", result.metadata())
    assert path.stat().st_size < 2_000_000  # fp16
    loaded, spec, sidecar = load_student(path)
    assert spec == result.input_spec and spec.size == (64, 64)
    assert sidecar["teacher"]["checkpoint_sha256"] == tiny_teacher.checkpoint_sha256
    x = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        want, got = result.student(x), loaded(x)
    assert got.shape == (2, EMBED_DIM)
    assert torch.nn.functional.cosine_similarity(want, got).min() > 0.999  # fp16 storage


def test_loss_is_zero_only_when_the_student_matches_the_teacher():
    classes = hash_text_embeddings(["normal", "glaucoma", "cataract"])
    teacher = torch.nn.functional.normalize(torch.randn(4, EMBED_DIM), dim=-1)
    loss = DistillLoss(classes, logit_scale=30.0, teacher_mean=teacher.mean(0).numpy())
    same, parts = loss(teacher.clone(), teacher)
    assert same.item() == pytest.approx(0.0, abs=1e-6)
    other, parts = loss(torch.nn.functional.normalize(torch.randn(4, EMBED_DIM), dim=-1), teacher)
    assert parts["cos_loss"] > 0.1 and parts["centred"] > 0.1 and parts["kl"] > 0.0 and other.item() == pytest.approx(parts["loss"])


def test_augmentation_is_seeded_and_keeps_the_image_format(retina_rgb):
    image = cv2.resize(retina_rgb, (96, 96), interpolation=cv2.INTER_AREA)
    augment = FundusAugment()
    a = augment(image, np.random.default_rng([1, 0, 3]))
    b = augment(image, np.random.default_rng([1, 0, 3]))
    c = augment(image, np.random.default_rng([1, 0, 4]))
    assert a.shape == image.shape and a.dtype == np.uint8
    assert np.array_equal(a, b) and not np.array_equal(a, c) and not np.array_equal(a, image)


def test_one_draw_alters_any_size_of_a_photo_alike(retina_rgb):
    """The teacher's and the student's copies of a photo differ in size only; a view must alter both
    the same way, or the student would learn the teacher's embedding of another image."""
    small = cv2.resize(retina_rgb, (96, 96), interpolation=cv2.INTER_AREA)
    large = cv2.resize(retina_rgb, (192, 192), interpolation=cv2.INTER_AREA)
    augment = FundusAugment()
    draw = augment.draw(np.random.default_rng(5))
    other = augment.draw(np.random.default_rng(6))

    def shrunk(image):
        return cv2.resize(image, (96, 96), interpolation=cv2.INTER_AREA).astype(np.float32)

    same_view = np.abs(shrunk(augment.apply(large, draw)) - augment.apply(small, draw)).mean()
    other_view = np.abs(shrunk(augment.apply(large, draw)) - augment.apply(small, other)).mean()
    assert same_view < 4.0 and other_view > 3 * same_view


def test_the_teacher_embeds_every_view_once_and_view_0_is_the_clean_photo(tiny_teacher, photo_dir, tmp_path):
    from converters.distill.augment import make_view
    from converters.distill.train import cached_training_set
    from edge_retina.preprocess import Preprocessor

    config = DistillConfig(**{**TINY.__dict__, "views": 3})
    spec = InputSpec(size=(64, 64), interpolation="area", mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225))
    keys, pixels, targets, _ = cached_training_set(tiny_teacher, spec, photos(photo_dir), tmp_path, config,
                                                   progress=False)
    assert pixels.shape == (6, 64, 64, 3) and targets.shape == (6, 3, EMBED_DIM)
    prepared = Preprocessor(tiny_teacher.input_spec).prepare(photos(photo_dir)[0].read_bytes()).image
    key = hashlib.sha256(photos(photo_dir)[0].read_bytes()).hexdigest()
    row = keys.index(key)
    with torch.no_grad():
        for view in range(3):
            image = make_view(FundusAugment(config.augment), prepared, config.seed, key, view)
            want = tiny_teacher.image_encoder(torch.from_numpy(Preprocessor(tiny_teacher.input_spec).normalise(image[None])))
            np.testing.assert_allclose(targets[row, view], want[0].numpy(), atol=1e-5)
    assert not np.allclose(targets[:, 0], targets[:, 1])
    # A run with one more view embeds only that view (one batch of six photos), not all four again.
    calls = tiny_teacher.image_encoder.calls
    more = DistillConfig(**{**config.__dict__, "views": 4})
    _, _, targets4, _ = cached_training_set(tiny_teacher, spec, photos(photo_dir), tmp_path, more, progress=False)
    assert tiny_teacher.image_encoder.calls == calls + 1 and targets4.shape == (6, 4, EMBED_DIM)
    np.testing.assert_array_equal(targets4[:, :3], targets)


def test_distill_command(tiny_teacher, photo_dir, tmp_path, monkeypatch):
    from converters.commands.distill import distill as distill_command

    monkeypatch.setattr("converters.teachers.load_teacher", lambda family, checkpoint, **options: tiny_teacher)
    out = tmp_path / "student.safetensors"
    result = CliRunner().invoke(distill_command, [
        "--images", str(photo_dir), "--work-dir", str(tmp_path / "run"), "--out", str(out),
        "--arch", TINY.arch, "--size", "64", "--epochs", "1", "--batch-size", "3", "--quiet"])
    assert result.exit_code == 0, result.output
    assert unwrapped("student written to") in unwrapped(result.output)
    sidecar = json.loads(out.with_suffix(".json").read_text())
    assert sidecar["arch"] == TINY.arch and sidecar["n_images"] == 6 and len(sidecar["history"]) == 1


def _distill_cli(tmp_path: Path, images: Path, *options: str):
    """`edge-retina distill` on ``images``, as the command line runs it (its error handling included)."""
    from edge_retina.cli.main import cli

    return narrow_runner().invoke(cli, [
        "distill", "--images", str(images), "--work-dir", str(tmp_path / "run"),
        "--out", str(tmp_path / "student.safetensors"), "--arch", TINY.arch, "--size", "64", "--epochs", "1",
        "--batch-size", "3", "--workers", "1", "--quiet", *options])


def test_distill_without_a_readable_image_ends_in_one_error_line(tiny_teacher, tmp_path, monkeypatch):
    """Found in the run, once the photos were read: its outcome (1), said in one line, no traceback."""
    monkeypatch.setattr("converters.teachers.load_teacher", lambda family, checkpoint, **options: tiny_teacher)
    folder = tmp_path / "photos"
    folder.mkdir()
    (folder / "broken.jpg").write_bytes(b"not a jpeg at all")
    result = _distill_cli(tmp_path, folder)
    said = result.output  # what it is distilling, then the error
    assert result.exit_code == 1 and one_error(said[said.find("error:"):]) and widest_line(said) <= COLUMNS, said
    assert unwrapped("error: no usable images to distil from (1 unreadable)") in unwrapped(result.output)


def _unreadable_teacher(family, checkpoint, **options):
    raise PermissionError(13, "Permission denied", "teacher.pt")


@pytest.mark.parametrize("refused, says", [
    ("teacher", "Permission denied: 'teacher.pt'"),
    ("out", "cannot write the student to /proc/student.safetensors"),
    ("prompts", "cannot read prompt file"),
    ("images", "no images found"),
    ("work-dir", "cannot write checkpoints to --work-dir /proc/run"),
])
def test_distill_refuses_what_it_cannot_read_or_write_before_the_work(refused, says, tiny_teacher, photo_dir, tmp_path,
                                                                      monkeypatch):
    """Not after the teacher has embedded every photo, or the student has trained: one line, exit 2."""
    monkeypatch.setattr("converters.teachers.load_teacher", _unreadable_teacher if refused == "teacher"
                        else lambda family, checkpoint, **options: tiny_teacher)
    monkeypatch.setattr("converters.distill.distill", lambda *args, **kwargs: pytest.fail("distilled"))
    (tmp_path / "prompts.json").write_text("{not json")
    (tmp_path / "no-photos").mkdir()
    options = {"out": ["--out", "/proc/student.safetensors"], "prompts": ["--prompts", str(tmp_path / "prompts.json")],
               "work-dir": ["--work-dir", "/proc/run"]}
    result = _distill_cli(tmp_path, tmp_path / "no-photos" if refused == "images" else photo_dir,
                          *options.get(refused, []))
    assert result.exit_code == 2 and one_error(result.output), result.output
    assert unwrapped(says) in unwrapped(result.output), result.output


def test_distill_refuses_to_resume_another_recipes_checkpoint_before_the_work(tiny_teacher, photo_dir, tmp_path,
                                                                               monkeypatch):
    """Refused (2) in one line before any image is embedded, not found in the run once they are."""
    distill(tiny_teacher, photos(photo_dir), tmp_path / "run", TINY, max_epochs_this_run=1, progress=False)
    monkeypatch.setattr("converters.teachers.load_teacher", lambda family, checkpoint, **options: tiny_teacher)
    monkeypatch.setattr("converters.distill.distill", lambda *args, **kwargs: pytest.fail("distilled"))
    result = _distill_cli(tmp_path, photo_dir, "--resume", "--seed", "8")
    assert result.exit_code == 2 and one_error(result.output), result.output
    assert unwrapped(f"{tmp_path / 'run' / 'last.pt'} was written by another recipe or teacher") \
        in unwrapped(result.output), result.output


def test_a_bug_in_a_distillation_run_still_shows_its_traceback(tiny_teacher, photo_dir, tmp_path, monkeypatch):
    """Only the errors the run raises on purpose are one line: a ValueError from a bug is not one."""
    def bug(*args, **kwargs):
        raise ValueError("operands could not be broadcast together")

    monkeypatch.setattr("converters.teachers.load_teacher", lambda family, checkpoint, **options: tiny_teacher)
    monkeypatch.setattr("converters.distill.distill", bug)
    result = _distill_cli(tmp_path, photo_dir)
    assert type(result.exception) is ValueError and "error:" not in result.output, result.output


def test_parity_of_a_student_identical_to_its_teacher(tiny_teacher, photo_dir):
    from converters.distill.report import format_markdown, student_parity
    from converters.prompt_tables import embed_conditions
    from converters.prompt_files import load_prompt_file
    from edge_retina.bench.labels import LabelledImages
    from edge_retina.bench.metrics import retention

    table = embed_conditions(tiny_teacher.embed_texts, load_prompt_file(), tiny_teacher.ensembling,
                             tiny_teacher.logit_scale)
    labelled = LabelledImages(photos(photo_dir), {"glaucoma": np.array([1, 0, 1, 0, 1, np.nan])})
    parity = student_parity(tiny_teacher, tiny_teacher.image_encoder, tiny_teacher.input_spec, table,
                            {"photos": labelled}, replicates=50)
    (row,) = parity.rows
    assert (row.dataset, row.condition, row.n_pos, row.n_neg) == ("photos", "glaucoma", 3, 2)
    assert row.auroc_student == row.auroc_teacher and row.decision_agreement == 1.0
    assert row.retention == (None if row.auroc_teacher <= 0.5 else pytest.approx(1.0))
    assert parity.cosine["photos"]["min"] == pytest.approx(1.0) and parity.n_images["photos"] == 6
    assert "| photos | glaucoma | 3/2 |" in format_markdown(parity)
    assert retention(0.8, 0.9) == pytest.approx(0.75) and retention(0.7, 0.5) is None


def test_the_student_card_marks_an_auroc_on_fewer_than_10_positives_or_negatives():
    from converters.distill.report import RetentionRow, StudentParity, format_markdown

    def row(condition, n_pos, n_neg):
        return RetentionRow("odir", condition, n_pos, n_neg, 0.42, 0.41, None, (-0.1, 0.1), 0.9, 0.5)

    cosine = {"min": 0.9, "p1": 0.9, "p5": 0.9, "median": 0.95, "mean": 0.95, "max": 1.0}
    few = format_markdown(StudentParity([row("hypertensive_retinopathy", 2, 118), row("glaucoma", 40, 80)],
                                        {"odir": cosine}, {"odir": 120}, []))
    assert "| odir | hypertensive_retinopathy | 2/118 | 0.420? | 0.410? |" in few
    assert "| odir | glaucoma | 40/80 | 0.420 | 0.410 |" in few
    assert "\n? fewer than 10 positives or negatives: AUROC unreliable\n" in few
    enough = format_markdown(StudentParity([row("glaucoma", 40, 80)], {"odir": cosine}, {"odir": 120}, []))
    assert "fewer than" not in enough


def test_latency_is_measured_for_every_model(tmp_path):
    from onnx_models import make_tiny_encoder_onnx

    from converters.distill.report import interleaved_latency

    paths = {"a": make_tiny_encoder_onnx(tmp_path / "a.onnx"), "b": make_tiny_encoder_onnx(tmp_path / "b.onnx", seed=1)}
    latency = interleaved_latency(paths, {"a": (64, 64), "b": (64, 64)}, repeats=3, warmup=1)
    assert set(latency) == {"a", "b"} and all(0 < v["median_ms"] <= v["p90_ms"] for v in latency.values())


def test_student_recipe_carries_the_teachers_prompt_table(tiny_teacher, photo_dir, tmp_path):
    from dataclasses import replace

    from converters.distill.bundling import student_recipe

    result = distill(tiny_teacher, photos(photo_dir), tmp_path / "run", TINY, max_epochs_this_run=1, progress=False)
    weights = save_student(result.student, result.input_spec, tmp_path / "student.safetensors", result.metadata())
    recipe = student_recipe(tiny_teacher, weights)
    assert recipe.role == "student" and recipe.input_spec == result.input_spec
    assert recipe.embed_texts is tiny_teacher.embed_texts and recipe.logit_scale == tiny_teacher.logit_scale
    assert recipe.teacher_checkpoint_sha256 == tiny_teacher.checkpoint_sha256
    assert recipe.student.arch == TINY.arch and recipe.student.name == "student"
    with pytest.raises(ValueError, match="distilled from teacher checkpoint"):
        student_recipe(replace(tiny_teacher, checkpoint_sha256="1" * 64), weights)


def test_parity_finds_a_student_bundles_pytorch_student_and_refuses_other_weights(tiny_teacher, photo_dir, tmp_path):
    from types import SimpleNamespace

    from converters.distill.bundling import student_recipe
    from converters.parity_references import STUDENT_NAME, bundle_student
    from edge_retina.errors import EdgeRetinaError

    result = distill(tiny_teacher, photos(photo_dir), tmp_path / "run", TINY, max_epochs_this_run=1, progress=False)
    weights = save_student(result.student, result.input_spec, tmp_path / "student.safetensors", result.metadata())
    manifest = SimpleNamespace(model=SimpleNamespace(student=student_recipe(tiny_teacher, weights).student))
    name, embed, spec = bundle_student(manifest, weights)
    assert name == STUDENT_NAME and spec == result.input_spec
    x = np.random.default_rng(0).standard_normal((2, 3, 64, 64)).astype(np.float32)
    with torch.no_grad():
        np.testing.assert_allclose(embed(x), result.student(torch.from_numpy(x)).numpy(), atol=2e-2)
    assert bundle_student(SimpleNamespace(model=SimpleNamespace(student=None))) is None  # a teacher bundle
    other = tmp_path / "other.safetensors"
    save_student(build_student(TINY.arch, EMBED_DIM, 64, seed=1), result.input_spec, other, result.metadata())
    with pytest.raises(EdgeRetinaError, match="--student-checkpoint"):
        bundle_student(manifest, other)


def test_the_student_comparison_benchmark_imports():
    """`benchmarks/distillation.sh` runs it; exporting and timing eight models is too slow for the suite."""
    import importlib

    assert callable(importlib.import_module("converters.distill.compare_students").main)
