"""Inference backends: ONNX Runtime and OpenVINO agree on tiny encoders, settings are applied, errors
are BackendErrors, and the TensorRT engine-cache rules hold (TensorRT itself only where installed)."""
from __future__ import annotations

import json
import os
import logging
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx_models import make_tiny_encoder_onnx

from edge_retina.backends import BACKENDS, Runner, available_backends, create_runner
from edge_retina.backends import tensorrt_engine_cache as engine_cache
from edge_retina.errors import BackendError

ov = pytest.importorskip("openvino", reason="OpenVINO is not installed: pip install 'edge-retina[openvino]'")

INPUT_SIZE = (48, 40)  # (height, width): not square, so a swapped H/W would show
EMBED_DIM = 16


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """The same seeded encoder as dynamic-batch ONNX, batch-1 ONNX, f32 IR and fp16-compressed IR."""
    folder = tmp_path_factory.mktemp("backends")
    dynamic = make_tiny_encoder_onnx(folder / "dynamic.onnx", input_size=INPUT_SIZE, embed_dim=EMBED_DIM)
    fixed = make_tiny_encoder_onnx(
        folder / "fixed.onnx", input_size=INPUT_SIZE, embed_dim=EMBED_DIM, dynamic_batch=False
    )
    ir_model = ov.Core().read_model(str(dynamic))
    ov.save_model(ir_model, str(folder / "f32.xml"), compress_to_fp16=False)
    ov.save_model(ir_model, str(folder / "f16.xml"), compress_to_fp16=True)
    return {"dynamic": dynamic, "fixed": fixed, "ir_f32": folder / "f32.xml", "ir_f16": folder / "f16.xml"}


@pytest.fixture(scope="module")
def images():
    return np.random.default_rng(7).normal(0.0, 1.0, size=(5, 3, *INPUT_SIZE)).astype(np.float32)


@pytest.fixture(scope="module")
def reference(models, images):
    """ORT fp32 embeddings: the reference the other backends are held to."""
    with create_runner("onnxruntime", models["dynamic"], precision="fp32") as runner:
        return runner.infer(images)


# -- registry -----------------------------------------------------------------------------------

def test_importing_backends_loads_no_inference_library_or_torch():
    code = (
        "import sys, edge_retina.backends; "
        "print(sorted(m for m in ('onnxruntime', 'openvino', 'tensorrt', 'torch', 'onnx') if m in sys.modules))"
    )
    loaded = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert loaded.strip() == "[]"


def test_available_backends_lists_the_installed_ones_in_order():
    available = available_backends()
    assert available[:2] == ["onnxruntime", "openvino"]  # both are in the dev environment
    assert available == [b for b in BACKENDS if b in available]


def test_unknown_backend_is_a_backend_error(models):
    with pytest.raises(BackendError, match="unknown backend 'tflite'.*onnxruntime, openvino, tensorrt"):
        create_runner("tflite", models["dynamic"], precision="fp32")


@pytest.mark.parametrize(
    ("backend", "library", "hint"),
    [
        ("openvino", "openvino", r"pip install 'edge-retina\[openvino\]'"),
        ("tensorrt", "tensorrt", "JetPack.*cuda-python"),
    ],
)
def test_missing_library_names_what_to_install(monkeypatch, models, backend, library, hint):
    monkeypatch.setitem(sys.modules, library, None)  # makes `import library` fail like an absent package
    assert backend not in available_backends()
    with pytest.raises(BackendError, match=f"{backend} backend is not installed.*{hint}"):
        create_runner(backend, models["dynamic"], precision="fp32")


# -- numerics -----------------------------------------------------------------------------------

def test_ort_embeddings_are_unit_rows(reference, images):
    assert reference.dtype == np.float32
    assert reference.shape == (len(images), EMBED_DIM)
    np.testing.assert_allclose(np.linalg.norm(reference, axis=1), 1.0, rtol=1e-5)


@pytest.mark.parametrize("model", ["dynamic", "ir_f32"])
def test_openvino_fp32_matches_onnxruntime(models, images, reference, model):
    with create_runner("openvino", models[model], precision="fp32") as runner:
        embeddings = runner.infer(images)
        precision_hint = runner.compiled_model.get_property("INFERENCE_PRECISION_HINT")
    assert precision_hint == ov.Type.f32
    assert embeddings.dtype == np.float32 and embeddings.shape == reference.shape
    np.testing.assert_allclose(embeddings, reference, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("precision, device", [("fp16", "CPU"), ("int8", "CPU"), ("fp16", "AUTO"), ("fp16", "AUTO:CPU")])
def test_openvino_computes_in_f32_on_the_cpu_whatever_the_precision(models, images, reference, precision, device):
    """What the accuracy guard checked on one CPU is what another computes: without the pin, a CPU with
    bf16 (AMX, AVX-512 BF16) would run the floating-point part of an FP16 or INT8 engine in bf16."""
    with create_runner("openvino", models["dynamic"], precision=precision, device=device) as runner:
        embeddings = runner.infer(images)
        if device == "CPU":
            assert runner.compiled_model.get_property("INFERENCE_PRECISION_HINT") == ov.Type.f32
    np.testing.assert_allclose(embeddings, reference, rtol=1e-5, atol=1e-6)
    if ov.Core().get_property("CPU", "INFERENCE_PRECISION_HINT") != ov.Type.f32:  # a bf16 CPU, as here
        unpinned = ov.Core().compile_model(str(models["dynamic"]), "CPU")
        assert not np.allclose(unpinned(images)[0], reference, rtol=1e-5, atol=1e-6)


def test_openvino_runs_an_fp16_compressed_ir(models, images, reference):
    with create_runner("openvino", models["ir_f16"], precision="fp32") as runner:
        embeddings = runner.infer(images)
    np.testing.assert_allclose(embeddings, reference, atol=5e-3)  # only the weights were rounded to fp16


@pytest.mark.parametrize("backend", ["onnxruntime", "openvino"])
def test_batch_of_n_equals_n_single_images(models, images, backend):
    with create_runner(backend, models["dynamic"], precision="fp32") as runner:
        assert runner.input_shape == (None, 3, *INPUT_SIZE)
        batched = runner.infer(images)
        singles = np.concatenate([runner.infer(images[i:i + 1]) for i in range(len(images))])
    np.testing.assert_allclose(batched, singles, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("backend", ["onnxruntime", "openvino"])
def test_fixed_batch_1_model_runs_images_one_by_one(models, images, reference, backend, monkeypatch):
    with create_runner(backend, models["fixed"], precision="fp32") as runner:
        assert runner.input_shape == (1, 3, *INPUT_SIZE)
        batch_sizes = []
        run_one = runner._run
        monkeypatch.setattr(runner, "_run", lambda batch: batch_sizes.append(len(batch)) or run_one(batch))
        embeddings = runner.infer(images)
    assert batch_sizes == [1] * len(images)
    np.testing.assert_allclose(embeddings, reference, rtol=1e-5, atol=1e-6)


def test_fixed_batch_above_1_needs_exactly_that_many_images(tmp_path, models, images):
    model = onnx.load(str(models["fixed"]))
    for value_info in (model.graph.input[0], model.graph.output[0]):
        value_info.type.tensor_type.shape.dim[0].dim_value = 2
    onnx.save_model(model, str(tmp_path / "batch2.onnx"))
    with create_runner("onnxruntime", tmp_path / "batch2.onnx", precision="fp32") as runner:
        assert runner.infer(images[:2]).shape == (2, EMBED_DIM)
        with pytest.raises(BackendError, match="fixed batch of 2; got 3 images "):
            runner.infer(images[:3])
        with pytest.raises(BackendError, match="fixed batch of 2; got 1 image "):
            runner.infer(images[:1])


def test_dynamic_batch_is_chunked_to_max_batch(models, images, reference, monkeypatch):
    with create_runner("onnxruntime", models["dynamic"], precision="fp32") as runner:
        runner.max_batch = 2
        batch_sizes = []
        run_one = runner._run
        monkeypatch.setattr(runner, "_run", lambda batch: batch_sizes.append(len(batch)) or run_one(batch))
        embeddings = runner.infer(images)
    assert batch_sizes == [2, 2, 1]
    np.testing.assert_allclose(embeddings, reference, rtol=1e-5, atol=1e-6)


# -- settings and lifecycle -----------------------------------------------------------------------

def test_onnxruntime_threads_and_info(models):
    with create_runner("onnxruntime", models["dynamic"], precision="fp32", threads=1) as runner:
        options = runner.session_options
        assert options.intra_op_num_threads == 1
        assert options.execution_mode.name == "ORT_SEQUENTIAL"
        assert options.graph_optimization_level.name == "ORT_ENABLE_ALL"
        info = runner.info()
    assert info["backend"] == "onnxruntime" and info["threads"] == 1 and info["device"] == "CPU"
    assert info["precision"] == "fp32" and info["model_path"] == str(models["dynamic"])
    assert info["providers"] == ["CPUExecutionProvider"]
    assert info["library_version"] == __import__("onnxruntime").__version__


def test_openvino_threads_latency_hint_and_info(models):
    with create_runner("openvino", models["ir_f32"], precision="fp32", threads=1) as runner:
        assert runner.compiled_model.get_property("INFERENCE_NUM_THREADS") == 1
        assert str(runner.compiled_model.get_property("PERFORMANCE_HINT")) == "LATENCY"
        info = runner.info()
    assert info["backend"] == "openvino" and info["threads"] == 1
    assert info["inference_precision"] == "f32" and info["inference_num_threads"] == 1
    assert info["library_version"] == ov.get_version()


def test_openvino_cache_dir_stores_the_compiled_model(tmp_path, models):
    with create_runner("openvino", models["dynamic"], precision="fp32", cache_dir=tmp_path / "ov-cache"):
        pass
    assert any((tmp_path / "ov-cache").iterdir())


def test_openvino_runs_without_a_cache_it_cannot_create(tmp_path, models, images, reference, caplog):
    """The compiled-model cache is an optimisation: a folder that cannot be made costs one warning."""
    (tmp_path / "a-file").write_bytes(b"")
    cache_dir = tmp_path / "a-file" / "cache"
    with caplog.at_level(logging.WARNING, logger="edge_retina.backends.openvino_runner"):
        with create_runner("openvino", models["dynamic"], precision="fp32", cache_dir=cache_dir) as runner:
            embeddings = runner.infer(images)
    assert runner.cache_dir is None
    np.testing.assert_allclose(embeddings, reference, rtol=1e-5, atol=1e-6)
    assert [r.getMessage() for r in caplog.records] == [
        f"openvino: no compiled-model cache (Not a directory); {models['dynamic'].name} is compiled on every load"
    ]


def test_closed_runner_refuses_to_run(models, images):
    with create_runner("onnxruntime", models["dynamic"], precision="fp32") as runner:
        assert isinstance(runner, Runner)
    runner.close()  # closing twice is harmless
    with pytest.raises(BackendError, match="runner is closed"):
        runner.infer(images)


# -- errors ----------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def rank3_model(tmp_path_factory):
    """A model taking (N, L, D) tokens instead of an image."""
    from onnx import TensorProto, helper

    tokens = helper.make_tensor_value_info("tokens", TensorProto.FLOAT, ["batch", 8, 4])
    pooled = helper.make_tensor_value_info("pooled", TensorProto.FLOAT, ["batch", 4])
    graph = helper.make_graph(
        [helper.make_node("ReduceMean", ["tokens", "axes"], ["pooled"], keepdims=0)],
        "tokens", [tokens], [pooled],
        initializer=[helper.make_tensor("axes", TensorProto.INT64, [1], [1])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)], ir_version=8)
    path = tmp_path_factory.mktemp("rank3") / "tokens.onnx"
    onnx.save_model(model, str(path))
    return path


@pytest.mark.parametrize("backend", ["onnxruntime", "openvino"])
def test_model_file_errors(tmp_path, rank3_model, backend):
    with pytest.raises(BackendError, match="model file not found"):
        create_runner(backend, tmp_path / "absent.onnx", precision="fp32")
    (tmp_path / "empty.onnx").write_bytes(b"")
    with pytest.raises(BackendError, match="model file is empty"):
        create_runner(backend, tmp_path / "empty.onnx", precision="fp32")
    (tmp_path / "corrupt.onnx").write_bytes(np.random.default_rng(0).bytes(512))
    with pytest.raises(BackendError, match=f"{backend}: cannot (load|read)"):
        create_runner(backend, tmp_path / "corrupt.onnx", precision="fp32")
    with pytest.raises(BackendError, match="rank-3 input.*needs rank 4"):
        create_runner(backend, rank3_model, precision="fp32")


@pytest.mark.parametrize("backend", ["onnxruntime", "openvino"])
@pytest.mark.parametrize(
    ("bad_batch", "message"),
    [
        (np.zeros((1, 3, INPUT_SIZE[1], INPUT_SIZE[0]), np.float32), r"shape \[1, 3, 40, 48\].*\['N', 3, 48, 40\]"),
        (np.zeros((3, *INPUT_SIZE), np.float32), r"shape \[3, 48, 40\]"),
        (np.zeros((0, 3, *INPUT_SIZE), np.float32), r"shape \[0, 3, 48, 40\]"),
        (np.zeros((1, 3, *INPUT_SIZE), np.uint8), "dtype uint8.*preprocess"),
        ([[0.0]], "needs a numpy array"),
    ],
)
def test_wrong_input_is_a_backend_error(models, backend, bad_batch, message):
    with create_runner(backend, models["dynamic"], precision="fp32") as runner:
        with pytest.raises(BackendError, match=message):
            runner.infer(bad_batch)


def test_float64_input_is_accepted(models, images, reference):
    with create_runner("onnxruntime", models["dynamic"], precision="fp32") as runner:
        np.testing.assert_allclose(runner.infer(images.astype(np.float64)), reference, rtol=1e-6)


@pytest.mark.parametrize(
    ("backend", "kwargs", "message"),
    [
        ("onnxruntime", {"precision": "bf16"}, "precision must be one of"),
        ("onnxruntime", {"precision": "fp32", "threads": 0}, "threads must be a positive integer"),
        ("onnxruntime", {"precision": "fp32", "device": "GPU"}, "only the CPU device"),
        ("openvino", {"precision": "fp32", "device": "NOSUCHDEVICE"}, "not available on this machine"),
    ],
)
def test_bad_settings_are_backend_errors(models, backend, kwargs, message):
    with pytest.raises(BackendError, match=message):
        create_runner(backend, models["dynamic"], **kwargs)


def test_openvino_model_format_errors(tmp_path, models):
    lonely_xml = tmp_path / "lonely.xml"
    lonely_xml.write_text(models["ir_f32"].read_text())
    with pytest.raises(BackendError, match="IR weights not found"):
        create_runner("openvino", lonely_xml, precision="fp32")
    with pytest.raises(BackendError, match="expected an IR .xml or an .onnx"):
        create_runner("openvino", models["ir_f32"].with_suffix(".bin"), precision="fp32")


# -- TensorRT engine cache (pure logic, runs everywhere) -------------------------------------------

ORIN = engine_cache.EngineTarget("Orin (nvgpu)", (8, 7), "10.3.0")
RTX = engine_cache.EngineTarget("NVIDIA GeForce RTX 4090", (8, 9), "10.7.0")
SHA = "ab" * 32


def test_engine_path_layout(tmp_path):
    assert engine_cache.slugify("NVIDIA GeForce RTX 4090") == "nvidia-geforce-rtx-4090"
    assert engine_cache.slugify("  Orin (nvgpu) ") == "orin-nvgpu"
    path = engine_cache.engine_path(tmp_path, RTX, SHA)
    assert path == tmp_path / "nvidia-geforce-rtx-4090_trt10.7.0" / f"{SHA[:16]}.engine"
    assert engine_cache.sidecar_path(path) == path.with_suffix(".json")
    assert engine_cache.timing_cache_path(tmp_path, RTX).parent == path.parent
    with pytest.raises(ValueError):
        engine_cache.slugify("()")


def test_default_cache_dir_follows_xdg(monkeypatch, tmp_path):
    from edge_retina.user_caches import user_cache_dir

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert engine_cache.default_cache_dir() == tmp_path / "edge-retina" / "tensorrt"
    # A relative XDG_CACHE_HOME is invalid (XDG Base Directory spec) and ignored, by every cache.
    monkeypatch.setenv("XDG_CACHE_HOME", "relative/cache")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert engine_cache.default_cache_dir() == tmp_path / "home" / ".cache" / "edge-retina" / "tensorrt"
    assert user_cache_dir("convert") == tmp_path / "home" / ".cache" / "edge-retina" / "convert"


def test_trtexec_recipe_is_strongly_typed_on_tensorrt_10_and_int8_fp16_on_8_5(tmp_path):
    modern = engine_cache.trtexec_command(tmp_path / "m.onnx", tmp_path / "m.engine", tmp_path / "t.cache")
    assert "--stronglyTyped" in modern and not {"--int8", "--fp16"} & set(modern)
    assert "--maxShapes=image:8x3x224x224" in modern
    xavier = engine_cache.trtexec_command(tmp_path / "m.onnx", tmp_path / "m.engine", tmp_path / "t.cache", tensorrt_major=8)
    assert {"--int8", "--fp16"} <= set(xavier) and "--stronglyTyped" not in xavier


def test_stored_engine_matches_only_its_target_and_onnx(tmp_path):
    engine = engine_cache.engine_path(tmp_path, ORIN, SHA)
    assert engine_cache.engine_mismatch(engine, ORIN, SHA) == "no cached engine yet"
    engine_cache.store_engine(engine, b"serialized engine", ORIN, SHA)
    assert engine.read_bytes() == b"serialized engine"
    assert json.loads(engine_cache.sidecar_path(engine).read_text()) == {
        "gpu_name": "Orin (nvgpu)", "compute_capability": [8, 7], "tensorrt_version": "10.3.0", "dla_core": None,
        "onnx_sha256": SHA,
    }
    assert sorted(p.name for p in engine.parent.iterdir()) == [engine.name, engine.with_suffix(".json").name]

    assert engine_cache.engine_mismatch(engine, ORIN, SHA) is None
    for other, why in [
        (engine_cache.EngineTarget("Xavier", (8, 7), "10.3.0"), "GPU 'Orin (nvgpu)'"),
        (engine_cache.EngineTarget("Orin (nvgpu)", (8, 6), "10.3.0"), "compute capability (8, 7)"),
        (engine_cache.EngineTarget("Orin (nvgpu)", (8, 7), "10.3.1"), "TensorRT version '10.3.0'"),
    ]:
        assert why in engine_cache.engine_mismatch(engine, other, SHA)
    assert "different ONNX" in engine_cache.engine_mismatch(engine, ORIN, "cd" * 32)
    # A DLA engine is another engine: its own folder, and never taken for the GPU's (or the reverse).
    orin_dla = engine_cache.EngineTarget("Orin (nvgpu)", (8, 7), "10.3.0", dla_core=0)
    assert engine_cache.engine_path(tmp_path, orin_dla, SHA).parent.name == "orin-nvgpu_trt10.3.0_dla0"
    assert engine_cache.target_mismatch(engine_cache.sidecar_record(ORIN, SHA), orin_dla) == \
        "engine was built for the GPU, this runner is asked for DLA core 0"
    assert "built for DLA core 0" in engine_cache.target_mismatch(engine_cache.sidecar_record(orin_dla, SHA), ORIN)
    legacy = {k: v for k, v in engine_cache.sidecar_record(ORIN, SHA).items() if k != "dla_core"}
    assert engine_cache.target_mismatch(legacy, ORIN) is None  # sidecars from before DLA support

    engine_cache.sidecar_path(engine).write_text("{not json")
    assert "unreadable" in engine_cache.engine_mismatch(engine, ORIN, SHA)
    engine_cache.sidecar_path(engine).unlink()
    assert "no sidecar" in engine_cache.engine_mismatch(engine, ORIN, SHA)


def test_ensure_engine_builds_once_then_reuses(tmp_path, models):
    builds = []

    def build(onnx_path):
        builds.append(onnx_path)
        return f"engine {len(builds)}".encode()

    first = engine_cache.ensure_engine(models["dynamic"], tmp_path, ORIN, build)
    for folder in (tmp_path, first.parent):
        os.utime(folder, (0, 0))
    again = engine_cache.ensure_engine(models["dynamic"], tmp_path, ORIN, build)
    assert first == again and builds == [models["dynamic"]]
    # Reuse marks the cache folder and the GPU's folder used, so `cache prune` keeps them.
    assert tmp_path.stat().st_mtime > 0 and first.parent.stat().st_mtime > 0
    assert first.name == engine_cache.sha256_file(models["dynamic"])[:16] + ".engine"

    other_device = engine_cache.ensure_engine(models["dynamic"], tmp_path, RTX, build)
    assert other_device.parent != first.parent and len(builds) == 2
    assert first.read_bytes() == b"engine 1"  # engines for other devices are left alone


def test_ensure_engine_rebuilds_an_engine_whose_sidecar_does_not_match(tmp_path, models, caplog):
    engine = engine_cache.ensure_engine(models["dynamic"], tmp_path, ORIN, lambda _: b"orin engine")
    sidecar = engine_cache.sidecar_path(engine)
    record = json.loads(sidecar.read_text())
    record["tensorrt_version"] = "10.0.1"  # e.g. the cache was copied from a box with an older JetPack
    sidecar.write_text(json.dumps(record))

    with caplog.at_level(logging.INFO, logger=engine_cache.__name__):
        rebuilt = engine_cache.ensure_engine(models["dynamic"], tmp_path, ORIN, lambda _: b"fresh engine")
    assert rebuilt == engine and engine.read_bytes() == b"fresh engine"
    assert json.loads(sidecar.read_text())["tensorrt_version"] == "10.3.0"
    warning = next(r for r in caplog.records if r.levelno == logging.WARNING)
    assert "TensorRT version '10.0.1'" in warning.getMessage()


def test_failed_build_leaves_no_engine(tmp_path, models):
    def failing_build(_):
        raise BackendError("tensorrt: building an engine failed")

    with pytest.raises(BackendError):
        engine_cache.ensure_engine(models["dynamic"], tmp_path, ORIN, failing_build)
    assert not any(tmp_path.rglob("*.engine")) and not any(tmp_path.rglob("*.json"))


# -- TensorRT itself (NVIDIA GPUs only) -------------------------------------------------------------

@pytest.fixture(scope="module")
def tensorrt_gpu():
    pytest.importorskip(
        "tensorrt", reason="TensorRT is not installed (JetPack, or the tensorrt wheel on an NVIDIA box)"
    )
    try:
        from cuda.bindings import runtime as cudart
    except ImportError:
        cudart = pytest.importorskip("cuda.cudart", reason="cuda-python is not installed: pip install cuda-python")
    error, count = cudart.cudaGetDeviceCount()
    if error != cudart.cudaError_t.cudaSuccess or count == 0:
        pytest.skip("TensorRT is installed but there is no usable NVIDIA GPU")


def test_tensorrt_builds_caches_and_matches_onnxruntime(tensorrt_gpu, tmp_path, models, images, reference):
    with create_runner("tensorrt", models["dynamic"], precision="fp32", cache_dir=tmp_path, max_batch=4) as runner:
        assert runner.max_batch == 4
        embeddings = runner.infer(images)  # 5 images: chunks of 4 and 1
        engine = runner.info()["engine_path"]
    np.testing.assert_allclose(embeddings, reference, rtol=1e-3, atol=1e-4)  # TF32 convolutions allowed
    assert engine.endswith(".engine") and Path(engine).with_suffix(".json").is_file()
    assert any(tmp_path.rglob(engine_cache.TIMING_CACHE_NAME))

    with create_runner("tensorrt", engine, precision="fp32") as prebuilt:
        np.testing.assert_allclose(prebuilt.infer(images[:1]), embeddings[:1], rtol=1e-6)


def test_tensorrt_fixed_batch_engine(tensorrt_gpu, tmp_path, models, images, reference):
    with create_runner("tensorrt", models["fixed"], precision="fp32", cache_dir=tmp_path) as runner:
        assert runner.input_shape == (1, 3, *INPUT_SIZE)
        np.testing.assert_allclose(runner.infer(images), reference, rtol=1e-3, atol=1e-4)
