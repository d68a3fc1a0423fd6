"""Device profiles, detection on prepared board trees, the converter plan, and the runtime's engine choice."""
from __future__ import annotations

import json
import re
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest
from click.testing import CliRunner

import devices
from device_plans import missing_from_bundle
from devices.profiles import PROFILE_DIR, ProfileError, load_profile_file, parse_profile
from edge_retina import engines
from edge_retina.bundle import EngineEntry
from edge_retina.cli.devices import devices_group
from edge_retina.errors import BackendError, EdgeRetinaError
from narrow_terminal import unwrapped

REPO = Path(__file__).resolve().parents[1]
BOARDS = Path(__file__).parent / "data" / "boards"


def board_libraries(board: str) -> devices.LibraryFacts:
    """The inference libraries the board would have (a prepared tree cannot stand in for imports)."""
    data = json.loads((BOARDS / board / "libraries.json").read_text())
    return devices.LibraryFacts(
        openvino_version=data.get("openvino_version"),
        openvino_devices=tuple(data.get("openvino_devices", ())),
        tensorrt_version=data.get("tensorrt_version"),
    )


def detect_board(board: str) -> devices.Detection:
    return devices.detect(BOARDS / board, libraries=board_libraries(board))


def profile_data(name: str) -> dict:
    return json.loads((PROFILE_DIR / f"{name}.json").read_text())


# -- profiles ---------------------------------------------------------------------------------

def test_every_shipped_profile_is_valid_and_named_after_its_file():
    profiles = devices.load_profiles()
    assert {
        "jetson-orin-nano", "jetson-orin-nx", "jetson-agx-orin", "jetson-xavier-nx", "x86-64-avx512-vnni",
        "x86-64-avx2", "arm64-cpu", "intel-igpu", "generic-cpu",
    } <= set(profiles)
    for name, profile in profiles.items():
        assert profile.source.stem == name
        # The engine a profile prefers is what its converter plan emits first, at the profile's precision:
        # a bundle converted for a device is what the device then picks.
        first = profile.preference[0]
        assert (first.backend, first.precision) == (profile.emit[0].backend, profile.emit[0].precision)
        assert first.precision == profile.precision
        preferred = {(c.backend, c.precision) for c in profile.preference}
        assert all((e.backend, e.precision) in preferred for e in profile.emit), name
        assert (profile.tensorrt is not None) == any(c.backend == "tensorrt" for c in profile.preference), name


def test_profiles_carry_the_issue_facts():
    orin_nano, agx, xavier = (devices.get_profile(n) for n in ("jetson-orin-nano", "jetson-agx-orin", "jetson-xavier-nx"))
    assert orin_nano.tensorrt.version == "10.3" and orin_nano.tensorrt.dla_cores == 0
    assert agx.tensorrt.dla_cores == 2 and agx.tensorrt.dla_core == 0 and agx.tensorrt.gpu_fallback
    assert xavier.tensorrt.version == "8.5.2" and xavier.tensorrt.jetpack == "5.1"
    arm = devices.get_profile("arm64-cpu")
    assert all(c.backend == "onnxruntime" for c in arm.preference)  # OpenVINO INT8 is simulated on ARM
    avx2 = devices.get_profile("x86-64-avx2")
    assert [e.options for e in avx2.emit] == [{"overflow_fix": "enable"}, {}]  # ORT: 8-bit weights measured better
    igpu = devices.get_profile("intel-igpu")
    assert (igpu.preference[0].backend, igpu.preference[0].precision, igpu.preference[0].device) == ("openvino", "fp16", "GPU")


@pytest.mark.parametrize("breakage, field", [
    (lambda d: d.update(treads=4), "(top level)"),                                   # misspelt field
    (lambda d: d["preference"][0].update(backend="tflite"), "preference.0.backend"),
    (lambda d: d.update(threads=0), "threads"),
    (lambda d: d["tensorrt"].pop("workspace_mib"), "tensorrt"),
    (lambda d: d["detect"][0].update(cpu_arch=["riscv64"]), "detect.0.cpu_arch.0"),
    (lambda d: d["emit"][0]["options"].update(reduce_rnage=True), "emit.0.options"),
])
def test_schema_refuses_a_broken_profile_naming_the_field(tmp_path, breakage, field):
    data = profile_data("jetson-orin-nano")
    breakage(data)
    path = tmp_path / "jetson-orin-nano.json"
    path.write_text(json.dumps(data))
    with pytest.raises(ProfileError, match=re.escape(f"- {field}:")):
        load_profile_file(path)


def test_profile_name_must_match_its_file(tmp_path):
    path = tmp_path / "renamed.json"
    path.write_text(json.dumps(profile_data("arm64-cpu")))
    with pytest.raises(ProfileError, match="must equal the file name"):
        load_profile_file(path)


def test_unknown_profile_names_the_known_ones():
    with pytest.raises(ProfileError, match="known profiles: arm64-cpu, generic-cpu"):
        devices.get_profile("jetson-nano-2019")


# -- detection on prepared board trees --------------------------------------------------------

@pytest.mark.parametrize("board, expected, evidence", [
    ("orin-nano-jp6", "jetson-orin-nano", "names 'Orin Nano'"),
    ("orin-nx", "jetson-orin-nx", "names 'Orin NX'"),
    ("agx-orin", "jetson-agx-orin", "names 'AGX Orin'"),
    ("xavier-nx-jp51", "jetson-xavier-nx", "names 'Xavier NX'"),
    ("x86-avx512-vnni", "x86-64-avx512-vnni", "avx512_vnni"),
    ("x86-avx2", "x86-64-avx2", "avx2"),
    ("raspberry-pi-5", "arm64-cpu", "aarch64"),
    ("intel-n100-igpu", "intel-igpu", "OpenVINO lists device(s) CPU, GPU"),
    ("jetson-release-only", "jetson-orin-nano", "L4T R36.4.0 (JetPack 6.1 or 6.2)"),
])
def test_detection_picks_each_boards_profile(board, expected, evidence):
    detection = detect_board(board)
    assert detection.profile.name == expected, detection.reasons
    assert any(evidence in reason for reason in detection.reasons), detection.reasons
    assert detection.candidates[0].profile.name == expected
    # Only a catch-all ties nothing: the winner is strictly more specific than every other candidate.
    assert all(c.priority < detection.candidates[0].priority for c in detection.candidates[1:])


def test_board_facts_are_read_from_the_tree():
    machine = detect_board("xavier-nx-jp51").facts["machine"]
    assert machine["cpu_arch"] == "aarch64" and machine["cpu_count"] == 6
    assert machine["l4t_release"] == "35.2.1" and machine["jetpack"] == "5.1"
    assert "nvidia,tegra194" in machine["device_tree_compatible"]
    x86 = detect_board("x86-avx2").facts["machine"]
    assert x86["cpu_arch"] == "x86_64" and x86["cpu_model"].startswith("Intel(R) Core(TM) i5-8250U")
    assert "avx2" in x86["cpu_flags"] and "avx512_vnni" not in x86["cpu_flags"]
    pi = detect_board("raspberry-pi-5").facts["machine"]
    assert pi["cpu_model"] == "Raspberry Pi 5 Model B Rev 1.0" and pi["cpu_count"] == 4


def test_module_part_number_identifies_a_jetson_without_a_model_file(tmp_path):
    (tmp_path / "proc" / "device-tree").mkdir(parents=True)
    (tmp_path / "proc" / "cpuinfo").write_bytes((BOARDS / "agx-orin" / "proc" / "cpuinfo").read_bytes())
    (tmp_path / "proc" / "device-tree" / "compatible").write_bytes(b"nvidia,p3737-0000+p3701-0004\0nvidia,tegra234\0")
    detection = devices.detect(tmp_path, libraries=devices.LibraryFacts())
    assert detection.profile.name == "jetson-agx-orin"
    assert any("module p3701-0004" in r for r in detection.reasons)


def test_an_empty_tree_gets_the_catch_all(tmp_path):
    detection = devices.detect(tmp_path, libraries=devices.LibraryFacts())
    assert detection.profile.name == "generic-cpu"
    assert detection.facts["machine"]["cpu_arch"] is None


def test_tensorrt_state_is_part_of_the_reasons():
    ok = detect_board("orin-nano-jp6")
    assert "TensorRT 10.3.0 imports" in ok.reasons
    jetpack_60 = devices.detect(BOARDS / "orin-nano-jp6", libraries=devices.LibraryFacts(tensorrt_version="8.6.2"))
    assert any("TensorRT 8.6.2 is installed, the profile expects 10.3" in r for r in jetpack_60.reasons)
    missing = devices.detect(BOARDS / "xavier-nx-jp51", libraries=devices.LibraryFacts())
    assert missing.profile.name == "jetson-xavier-nx"
    assert any("tensorrt does not import here" in r for r in missing.reasons)


def test_equal_priorities_are_reported(tmp_path):
    twin = profile_data("x86-64-avx2") | {"name": "x86-64-avx2-twin"}
    profiles = {"x86-64-avx2": devices.get_profile("x86-64-avx2"),
                "x86-64-avx2-twin": parse_profile(twin, tmp_path / "x86-64-avx2-twin.json")}
    detection = devices.detect(BOARDS / "x86-avx2", libraries=board_libraries("x86-avx2"), profiles=profiles)
    assert detection.profile.name == "x86-64-avx2"
    assert any(r.startswith("equally good: x86-64-avx2-twin") for r in detection.reasons)


def test_avx_vnni_alone_is_a_vnni_cpu_for_detection_and_its_int8_kernels(tmp_path):
    """An Alder Lake-class CPU: AVX-VNNI without AVX-512. Its profile and its INT8 kernel family
    (where an accuracy guard's verdict holds) are one fact, not two definitions of VNNI."""
    cpuinfo = (BOARDS / "x86-avx2" / "proc" / "cpuinfo").read_text()
    (tmp_path / "proc").mkdir()
    (tmp_path / "proc" / "cpuinfo").write_text(re.sub(r"^(flags\s*:.*)$", r"\1 avx_vnni", cpuinfo, flags=re.M))
    detection = devices.detect(tmp_path, libraries=board_libraries("x86-avx2"))
    assert detection.facts["machine"]["int8_kernels"] == "x86-vnni"
    assert detection.profile.name == "x86-64-avx512-vnni", detection.reasons
    assert "CPU flags include avx_vnni: x86-vnni INT8 kernels" in detection.reasons


def test_this_machine_is_an_avx512_vnni_box_that_prefers_openvino_int8():
    if devices.read_machine("/").int8_kernels != "x86-vnni":
        pytest.skip("this CPU has no VNNI (AVX-512 VNNI, AVX-VNNI or AMX)")
    detection = devices.detect()
    assert detection.profile.name == "x86-64-avx512-vnni"
    first = detection.profile.preference[0]
    assert (first.backend, first.precision) == ("openvino", "int8")


# -- what the converter must emit -------------------------------------------------------------

def test_plan_shares_equal_artefacts_and_keeps_distinct_ones_apart():
    plan = devices.build_plan(["jetson-orin-nano", "x86-64-avx2", "jetson-agx-orin", "arm64-cpu", "jetson-orin-nano",
                               "x86-64-avx512-vnni"])
    assert [(p.backend, p.precision) for p in plan] == [
        ("tensorrt", "int8"), ("openvino", "int8"), ("onnxruntime", "int8"), ("openvino", "int8"),
    ]
    qdq, ov_avx2, ort, ov_vnni = plan
    assert qdq.profiles == ("jetson-orin-nano", "jetson-agx-orin") and qdq.device_profile is None
    assert qdq.max_input_side == 512
    # One ONNX Runtime INT8 ONNX serves both CPUs, within the smaller input limit of the two.
    assert ort.profiles == ("x86-64-avx2", "arm64-cpu") and ort.options == {} and ort.device_profile is None
    assert ort.max_input_side == min(devices.get_profile(n).max_input_side for n in ort.profiles)
    # OpenVINO INT8 with and without 7-bit weights everywhere are two artefacts.
    assert ov_avx2.options == {"overflow_fix": "enable"} and ov_avx2.device_profile == "x86-64-avx2"
    assert ov_vnni.options == {"overflow_fix": "first_layer_only"} and ov_vnni.device_profile == "x86-64-avx512-vnni"
    assert {p.role for p in plan} == {"student"}


def test_plan_for_this_machines_profile_is_an_openvino_int8_ir():
    plan = devices.build_plan([devices.get_profile("x86-64-avx512-vnni")], role="teacher")
    assert [(p.backend, p.precision, p.role, dict(p.options)) for p in plan] == [
        ("openvino", "int8", "teacher", {"overflow_fix": "first_layer_only"}),  # VNNI does not saturate
    ]


def test_a_bundle_is_checked_against_its_plan():
    plan = devices.build_plan(["x86-64-avx2", "jetson-orin-nano"], role="teacher")
    converted = [engine("openvino", "int8", "teacher", "x86-64-avx2"),
                 replace(engine("onnxruntime", "fp32", "teacher", "x86-64-avx2"),  # the guard fell back from int8
                         fallback={"asked": "int8", "why": "auroc drop"}),
                 engine("onnxruntime", "fp32", "teacher")]
    missing = missing_from_bundle(plan, converted)
    assert [(m.backend, m.precision, m.profiles) for m in missing] == [("tensorrt", "int8", ("jetson-orin-nano",))]
    assert missing_from_bundle(plan, converted + [engine("tensorrt", "int8", "teacher", "jetson-orin-nano")]) == []


def test_plan_refuses_an_unknown_profile():
    with pytest.raises(ProfileError):
        devices.build_plan(["x86-64-avx2", "tpu-pod"])


# -- the runtime's choice of engine -----------------------------------------------------------

def engine(backend, precision, role="student", profile=None):
    return EngineEntry(backend=backend, precision=precision, role=role,
                       files=(f"engines/{role}-{backend}-{precision}-{profile}.bin",), device_profile=profile)


MIXED = [engine("onnxruntime", "fp32", "teacher"), engine("openvino", "fp32", "teacher"),
         engine("onnxruntime", "int8"), engine("openvino", "int8"), engine("onnxruntime", "fp32")]


def test_selection_follows_the_profile_among_what_the_bundle_has_and_what_is_installed():
    vnni = devices.get_profile("x86-64-avx512-vnni")
    pick = engines.select_engine_for_profile(MIXED, vnni, ["onnxruntime", "openvino"])
    assert (pick.engine.backend, pick.engine.precision, pick.engine.role) == ("openvino", "int8", "student")
    assert pick.runner_options == {"device": "CPU"}
    without_openvino = engines.select_engine_for_profile(MIXED, vnni, ["onnxruntime"])
    assert (without_openvino.engine.backend, without_openvino.engine.precision) == ("onnxruntime", "int8")
    fp32_only = engines.select_engine_for_profile(MIXED, vnni, ["onnxruntime", "openvino"], precision="fp32")
    assert (fp32_only.engine.backend, fp32_only.engine.role) == ("onnxruntime", "student")


def test_selection_falls_back_to_the_bundle_preference():
    jetson_only = [engine("tensorrt", "int8"), engine("onnxruntime", "fp16"), engine("openvino", "fp16")]
    pick = engines.select_engine_for_profile(jetson_only, devices.get_profile("arm64-cpu"), ["onnxruntime", "openvino"])
    assert (pick.engine.backend, pick.engine.precision) == ("onnxruntime", "fp16")
    assert "using the bundle's preferred onnxruntime/fp16/student" in pick.reasons[0]
    with pytest.raises(BackendError, match="no engine of this bundle can run here .* installed backends: onnxruntime"):
        engines.select_engine_for_profile(jetson_only[:1], devices.get_profile("arm64-cpu"), ["onnxruntime"])


def test_selection_applies_the_profile_settings():
    arm = engines.select_engine_for_profile(MIXED, devices.get_profile("arm64-cpu"), ["onnxruntime"])
    assert arm.runner_options == {"threads": 4}
    assert engines.select_engine_for_profile(
        MIXED, devices.get_profile("arm64-cpu"), ["onnxruntime"], apply_settings=False).runner_options == {}
    jetson = engines.select_engine_for_profile(
        [engine("tensorrt", "int8"), engine("onnxruntime", "fp32")], devices.get_profile("jetson-agx-orin"),
        ["onnxruntime", "tensorrt"])
    assert jetson.runner_options == {"device": "GPU", "workspace_bytes": 4096 << 20, "dla_core": 0,
                                     "gpu_fallback": True}
    assert any("DLA core 0, with GPU fallback" in r for r in jetson.reasons)
    igpu = engines.select_engine_for_profile(
        [engine("openvino", "fp16"), engine("openvino", "int8")], devices.get_profile("intel-igpu"), ["openvino"])
    assert (igpu.engine.precision, igpu.runner_options) == ("fp16", {"device": "GPU"})


def test_selection_prefers_an_engine_built_for_the_profile():
    built = [engine("onnxruntime", "int8", profile="x86-64-avx2"), engine("onnxruntime", "int8"),
             engine("onnxruntime", "int8", profile="arm64-cpu")]
    pick = engines.select_engine_for_profile(built, devices.get_profile("arm64-cpu"), ["onnxruntime"])
    assert pick.engine.device_profile == "arm64-cpu"
    pick = engines.select_engine_for_profile(built[:2], devices.get_profile("arm64-cpu"), ["onnxruntime"])
    assert pick.engine.device_profile is None


def test_screener_applies_a_named_profile(tiny_bundle):
    from edge_retina.screener import Screener

    with Screener.from_bundle(tiny_bundle, device="arm64-cpu") as s:
        info = s.engine_info
        assert (info["backend"], info["threads"], info["device_profile"]) == ("onnxruntime", 4, "arm64-cpu")
        assert info["memory_budget_mib"] == 1024 and info["rss_mib"] > 0
    with Screener.from_bundle(tiny_bundle, device="arm64-cpu", threads=1) as s:
        assert s.engine_info["threads"] == 1
    with pytest.raises(EdgeRetinaError, match="unknown device profile 'pi-zero'"):
        Screener.from_bundle(tiny_bundle, device="pi-zero")


def test_screener_backend_follows_the_detected_profile(tiny_bundle, retina_jpeg):
    """The tiny bundle has ONNX Runtime and OpenVINO FP32 engines; the detected profile picks one."""
    from edge_retina.screener import Screener

    expected = devices.detect().profile
    backend = next(c.backend for c in expected.preference
                   if (c.backend, c.precision) in {("onnxruntime", "fp32"), ("openvino", "fp32")})
    with Screener.from_bundle(tiny_bundle) as s:
        assert s.engine_info["backend"] == backend
        assert s.device_profile is None and s.runner.threads is None  # nothing but the choice is applied
        assert s.screen(retina_jpeg).screened
    with Screener.from_bundle(tiny_bundle, device="auto") as s:
        assert (s.engine_info["backend"], s.engine_info["device_profile"]) == (backend, expected.name)
    with Screener.from_bundle(tiny_bundle, backend="onnxruntime") as s:  # one engine qualifies: no detection
        assert s.engine_info["backend"] == "onnxruntime" and s.device_profile is None


# -- CLI and import isolation -----------------------------------------------------------------

def run(*args):
    return CliRunner().invoke(devices_group, [str(a) for a in args], catch_exceptions=False, terminal_width=200)


def test_cli_detect_on_a_board_tree():
    res = run("detect", "--root", BOARDS / "xavier-nx-jp51", "--json")
    assert res.exit_code == 0, res.output
    data = json.loads(res.output)
    assert data["profile"] == "jetson-xavier-nx"
    assert data["facts"]["machine"]["device_tree_model"] == "NVIDIA Jetson Xavier NX Developer Kit"
    human = run("detect", "--root", BOARDS / "raspberry-pi-5")
    assert human.exit_code == 0 and human.output.startswith("arm64-cpu:")
    assert unwrapped("CPU architecture aarch64") in unwrapped(human.output)


def test_cli_list_and_show():
    listing = run("list")
    assert listing.exit_code == 0
    assert all(name in listing.output for name in devices.load_profiles())
    shown = run("show", "jetson-orin-nano")
    assert shown.exit_code == 0 and json.loads(shown.output) == profile_data("jetson-orin-nano")
    missing = run("show", "nope")
    assert missing.exit_code == 2 and unwrapped("unknown device profile 'nope'") in unwrapped(missing.output)


def test_devices_and_the_runtime_never_import_torch_or_host_code():
    code = (
        "import sys, devices, edge_retina.screener, edge_retina.cli.devices; devices.detect(); "
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in {'torch', 'onnx', 'converters', 'calibration'}); "
        "print(bad)"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]", out.stdout + out.stderr


@pytest.fixture(scope="module")
def bundle_with_openvino_int8(tiny_bundle, tmp_path_factory):
    """The tiny bundle plus an OpenVINO INT8 IR of its encoder (NNCF on random tensors: mechanics only)."""
    nncf = pytest.importorskip("nncf")
    import numpy as np
    import openvino as ov

    from edge_retina.bundle import load_bundle

    bundle = load_bundle(tiny_bundle)
    source = next(e for e in bundle.manifest.engines if e.backend == "onnxruntime")
    model = ov.Core().read_model(str(bundle.path_of(source.files[0])))
    size = bundle.manifest.input.size
    samples = [np.random.default_rng(i).normal(size=(1, 3, *size)).astype(np.float32) for i in range(4)]
    quantized = nncf.quantize(model, nncf.Dataset(samples), subset_size=len(samples))
    work = tmp_path_factory.mktemp("int8")
    ov.save_model(quantized, str(work / "int8.xml"))

    draft = bundle.manifest.to_dict()
    draft["engines"].append({**next(e for e in draft["engines"] if e["backend"] == "openvino"),
                             "precision": "int8", "files": ["engines/openvino-int8.xml", "engines/openvino-int8.bin"]})
    files = {rel: bundle.path_of(rel) for rel in bundle.manifest.files}
    files |= {"engines/openvino-int8.xml": work / "int8.xml", "engines/openvino-int8.bin": work / "int8.bin"}
    from edge_retina.bundle import write_bundle

    return write_bundle(work / "bundle", draft, files)


@pytest.mark.slow
def test_this_machine_screens_with_openvino_int8_by_default(bundle_with_openvino_int8, retina_jpeg):
    if devices.detect().profile.name != "x86-64-avx512-vnni":
        pytest.skip("this machine is not an AVX-512 VNNI box")
    from edge_retina.screener import Screener

    with Screener.from_bundle(bundle_with_openvino_int8) as s:
        assert (s.engine_info["backend"], s.engine_info["precision"]) == ("openvino", "int8")
        assert s.screen(retina_jpeg).screened
    with Screener.from_bundle(bundle_with_openvino_int8, device="arm64-cpu") as s:  # OpenVINO gains nothing on ARM
        assert (s.engine_info["backend"], s.engine_info["precision"]) == ("onnxruntime", "fp32")


# -- where an INT8 engine's accuracy-guard verdict holds ---------------------------------------

@pytest.mark.parametrize("board, kernels", [("x86-avx512-vnni", "x86-vnni"), ("x86-avx2", "x86-avx2"),
                                            ("raspberry-pi-5", "arm64"), ("xavier-nx-jp51", "arm64")])
def test_each_board_names_its_int8_kernel_family(board, kernels):
    assert devices.read_machine(BOARDS / board).int8_kernels == kernels
    assert detect_board(board).facts["machine"]["int8_kernels"] == kernels


@pytest.mark.parametrize("extra_flag, emulated", [("", True), (" avx512_bf16", False), (" amx_bf16", False)])
def test_bf16_is_emulated_on_x86_without_its_flags(tmp_path, extra_flag, emulated):
    cpuinfo = (BOARDS / "x86-avx512-vnni" / "proc" / "cpuinfo").read_text()  # a Cascade Lake: VNNI, no BF16
    (tmp_path / "proc").mkdir()
    (tmp_path / "proc" / "cpuinfo").write_text(re.sub(r"^(flags\s*:.*)$", r"\1" + extra_flag, cpuinfo, flags=re.M))
    assert devices.read_machine(tmp_path).bf16_emulated is emulated
    assert devices.read_machine(BOARDS / "raspberry-pi-5").bf16_emulated is False  # ARM: not looked at


def guarded(backend, precision, measured_on):
    return replace(engine(backend, precision), notes={"accuracy_guard": {"passed": True, "measured_on": measured_on}})


def test_an_int8_engine_guarded_on_another_kernel_family_says_to_check_it_here():
    avx2, vnni = devices.read_machine(BOARDS / "x86-avx2"), devices.read_machine(BOARDS / "x86-avx512-vnni")
    int8 = guarded("openvino", "int8", {"cpu_model": "Xeon", "int8_kernels": "x86-vnni"})
    message = engines.int8_guard_caveat(int8, "CPU", lambda: avx2)
    assert "x86-vnni" in message and "x86-avx2" in message and "bench parity" in message
    assert engines.int8_guard_caveat(int8, "AUTO", lambda: avx2) == message           # AUTO may pick the CPU
    assert engines.int8_guard_caveat(int8, "CPU", lambda: vnni) is None               # the same family
    assert engines.int8_guard_caveat(int8, "GPU.0", lambda: avx2) is None             # not the CPU's kernels
    ort = guarded("onnxruntime", "int8", {"cpu_model": "Xeon", "int8_kernels": "x86-vnni"})
    assert engines.int8_guard_caveat(ort, "CPU", lambda: avx2) == message.replace("openvino", "onnxruntime")


@pytest.mark.parametrize("notes", [{}, {"accuracy_guard": "passed"}, {"accuracy_guard": {"measured_on": "a Xeon"}},
                                   {"accuracy_guard": {"passed": True}}])
def test_engines_without_a_usable_guard_record_open_without_reading_the_machine(notes):
    """Older bundles and other writers' free-form notes: no caveat, and /proc/cpuinfo is not read."""
    def unread():
        raise AssertionError("read the machine")
    for precision in ("fp32", "fp16", "int8"):
        assert engines.int8_guard_caveat(replace(engine("openvino", precision), notes=notes), "CPU", unread) is None
    fp16 = guarded("openvino", "fp16", {"cpu_model": "Xeon", "int8_kernels": "x86-vnni"})
    assert engines.int8_guard_caveat(fp16, "CPU", unread) is None                      # no INT8 arithmetic


@pytest.mark.parametrize("backend, device, expected", [
    ("onnxruntime", "CPU", True), ("openvino", "CPU", True), ("openvino", "cpu.0", True),
    ("openvino", "GPU", False), ("openvino", "GPU.1", False), ("openvino", "AUTO", True),
    ("openvino", "AUTO:GPU,CPU", True), ("openvino", "AUTO:GPU", False), ("openvino", "HETERO:GPU.0,CPU", True),
    ("tensorrt", "CPU", False)])
def test_which_backend_and_device_compute_on_the_cpu(backend, device, expected):
    assert engines.runs_on_cpu(backend, device) is expected
