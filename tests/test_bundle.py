"""Bundle format v1: manifest validation, write/load/verify round trips, archives and their safety."""
from __future__ import annotations

import copy
import hashlib
import io
import json
import os
import re
import subprocess
import sys
import tarfile
import threading
from pathlib import Path

import pytest

from edge_retina.bundle import (
    ARCHIVE_SUFFIX,
    Bundle,
    ConditionEntry,
    EngineEntry,
    Manifest,
    ManifestError,
    ModelInfo,
    PromptsEntry,
    Provenance,
    load_bundle,
    pack_bundle,
    verify_bundle,
    write_bundle,
)
from edge_retina.errors import BundleError
from edge_retina.preprocess.spec import InputSpec

REPO = Path(__file__).resolve().parents[1]
TEACHER_SHA = hashlib.sha256(b"teacher checkpoint").hexdigest()

ENGINE_FILES = {
    "engines/onnxruntime-fp32.onnx": b"onnx fp32 engine " * 50,
    "engines/openvino-int8.xml": b"<net name='student'/>",
    "engines/openvino-int8.bin": bytes(range(256)) * 4,
}
PAYLOADS = {
    **ENGINE_FILES,
    "prompts.npz": b"prompt table stand-in",
    "reports/parity.json": b'{"max_abs_diff": 0.001}',
}


def manifest_draft() -> dict:
    """A valid manifest dict without its files table (what a converter hands to write_bundle)."""
    return {
        "schema_version": 1,
        "model": {
            "family": "reference",
            "name": "reference-vit-tiny",
            "teacher_checkpoint_sha256": TEACHER_SHA,
            "student": {"name": "tiny-student", "arch": "resnet18", "checkpoint_sha256": "1" * 64,
                        "distillation": {"conditions": {"glaucoma": {"retention": 0.97}}}},
            "embedding_dim": 512,
        },
        "input": InputSpec(resize_mode="letterbox", pad_position="top-left").to_dict(),
        "engines": [
            {
                "backend": "onnxruntime",
                "precision": "fp32",
                "role": "teacher",
                "files": ["engines/onnxruntime-fp32.onnx"],
                "device_profile": None,
                "toolchain": {"onnx": "1.23.2", "torch": "2.13.0"},
                "calibration": None,
                "notes": {},
                "fallback": None,
            },
            {
                "backend": "openvino",
                "precision": "int8",
                "role": "student",
                "files": ["engines/openvino-int8.xml", "engines/openvino-int8.bin"],
                "device_profile": "x86-avx2",
                "toolchain": {"openvino": "2026.4", "nncf": "2.19"},
                "calibration": {"manifest_sha256": "2" * 64, "size": 300, "method": "nncf-ptq"},
                "notes": {"accuracy_guard": "passed"},
                "fallback": None,
            },
        ],
        "prompts": {
            "file": "prompts.npz",
            "ensembling": "mean_renormalised",
            "normal_class": "normal",
            "conditions": [
                {"name": "normal", "label": "No referable finding", "prompts": ["a healthy retina"],
                 "threshold": None, "threshold_source": "default"},
                {"name": "dr", "label": "Diabetic retinopathy (rétinopathie)",
                 "prompts": ["diabetic retinopathy", "microaneurysms"],
                 "threshold": 0.5, "threshold_source": "validation: sens 0.90 spec 0.71 on heimed"},
            ],
        },
        "logit_scale": 100.0,
        "provenance": {
            "tool": "edge-retina",
            "tool_version": "0.1.0",
            "created": "2025-01-31T14:05:00Z",
            "command": "edge-retina convert --family reference",
            "host": None,
        },
    }


def full_manifest_dict() -> dict:
    d = manifest_draft()
    d["files"] = {rel: hashlib.sha256(data).hexdigest() for rel, data in PAYLOADS.items()}
    return d


@pytest.fixture
def bundle_dir(tmp_path) -> Path:
    return write_bundle(tmp_path / "bundle", manifest_draft(), PAYLOADS)


@pytest.fixture
def archive(bundle_dir, tmp_path) -> Path:
    return pack_bundle(bundle_dir, tmp_path / f"bundle{ARCHIVE_SUFFIX}")


@pytest.fixture
def cache(tmp_path) -> Path:
    return tmp_path / "cache"


def rewrite_manifest(bundle_dir: Path, change) -> None:
    path = bundle_dir / "manifest.json"
    d = json.loads(path.read_text())
    change(d)
    path.write_text(json.dumps(d))


# -- manifest ------------------------------------------------------------------------------------

def test_manifest_dict_round_trip_and_typed_view():
    d = full_manifest_dict()
    m = Manifest.from_dict(d)
    assert Manifest.from_dict(m.to_dict()) == m
    assert m.to_dict() == d
    assert m.input == InputSpec(resize_mode="letterbox", pad_position="top-left")
    assert m.engines[1].primary_file == "engines/openvino-int8.xml"
    assert m.engines[1].calibration.size == 300
    assert [c.name for c in m.prompts.referable] == ["dr"]


def test_canonical_bytes_are_sorted_utf8_with_trailing_newline():
    d = full_manifest_dict()
    shuffled = dict(reversed(list(d.items())))
    shuffled["logit_scale"] = 100  # an int of equal value serialises like the float
    a, b = Manifest.from_dict(d).canonical_bytes(), Manifest.from_dict(shuffled).canonical_bytes()
    assert a == b
    assert a.endswith(b"}\n") and not a.endswith(b"\n\n")
    assert "rétinopathie".encode() in a  # UTF-8, not \u escapes
    top_keys = re.findall(rb'^  "(\w+)":', a, flags=re.M)
    assert top_keys == sorted(top_keys) and len(top_keys) == 8


def test_typed_construction_writes_the_same_manifest(tmp_path):
    d = manifest_draft()
    m = Manifest(
        model=ModelInfo(family="reference", name="reference-vit-tiny", teacher_checkpoint_sha256=TEACHER_SHA,
                        embedding_dim=512),
        input=InputSpec(),
        engines=[EngineEntry(backend="onnxruntime", precision="fp32", role="teacher",
                             files=["engines/onnxruntime-fp32.onnx"])],
        prompts=PromptsEntry(
            conditions=[ConditionEntry(**c) for c in d["prompts"]["conditions"]], normal_class="normal"
        ),
        logit_scale=100.0,
        provenance=Provenance.for_this_run(command="pytest"),
    )
    files = {"engines/onnxruntime-fp32.onnx": ENGINE_FILES["engines/onnxruntime-fp32.onnx"], "prompts.npz": b"p"}
    loaded = load_bundle(write_bundle(tmp_path / "b", m, files)).manifest
    assert loaded == m.with_files({rel: hashlib.sha256(data).hexdigest() for rel, data in files.items()})
    assert loaded.provenance.tool == "edge-retina"


@pytest.mark.parametrize(
    ("change", "field"),
    [
        (lambda d: d["engines"][0].update(backend="onnx"), "engines[0].backend"),
        (lambda d: d["engines"][1].update(precision="int4"), "engines[1].precision"),
        (lambda d: d["engines"][0].update(role="teaching"), "engines[0].role"),
        (lambda d: d["prompts"]["conditions"][1].update(threshold=1.5), "prompts.conditions[1].threshold"),
        (lambda d: d["prompts"]["conditions"][1].update(threshold=None), "prompts.conditions[1].threshold"),
        (lambda d: d["prompts"]["conditions"][1].update(threshold="0.5"), "prompts.conditions[1].threshold"),
        (lambda d: d["prompts"].update(normal_class="healthy"), "prompts.normal_class"),
        (lambda d: d["prompts"]["conditions"][1].update(name="normal"), "prompts.conditions"),
        (lambda d: d["prompts"].update(ensembling="max"), "prompts.ensembling"),
        (lambda d: d["files"].pop("engines/openvino-int8.bin"), "engines[1].files[1]"),
        (lambda d: d["files"].pop("prompts.npz"), "prompts.file"),
        (lambda d: d["model"].pop("embedding_dim"), "model.embedding_dim"),
        (lambda d: d["model"].update(embedding_dim=True), "model.embedding_dim"),
        (lambda d: d["model"].update(teacher_checkpoint_sha256="ABC"), "model.teacher_checkpoint_sha256"),
        (lambda d: d["model"].update(colour="blue"), "model.colour"),
        (lambda d: d["prompts"]["conditions"][1].update(treshold=0.4), "prompts.conditions[1].treshold"),
        (lambda d: d["input"].update(resize_mode="zoom"), "input"),
        (lambda d: d.update(logit_scale=0), "logit_scale"),
        (lambda d: d.update(logit_scale=float("nan")), "logit_scale"),
        (lambda d: d["provenance"].update(created="31/01/2025"), "provenance.created"),
        (lambda d: d["files"].update({"/etc/passwd": "0" * 64}), "files['/etc/passwd']"),
        (lambda d: d["files"].update({"engines/../../x": "0" * 64}), "files['engines/../../x']"),
        (lambda d: d["files"].update({"engines": "0" * 64}), "files['engines']"),
        (lambda d: d["engines"][1].update(files=["engines/openvino-int8.bin", "engines/openvino-int8.xml"]),
         "engines[1].files[0]"),
        (lambda d: d["engines"].append(copy.deepcopy(d["engines"][0])), "engines[2]"),
        (lambda d: d["engines"].clear(), "engines"),
    ],
)
def test_manifest_validation_names_the_field(change, field):
    d = full_manifest_dict()
    change(d)
    with pytest.raises(ManifestError) as caught:
        Manifest.from_dict(d)
    assert any(p.startswith(f"{field}:") for p in caught.value.problems), caught.value.problems
    assert field in str(caught.value)


def test_manifest_validation_reports_every_problem_at_once():
    d = full_manifest_dict()
    d["engines"][0]["backend"] = "onnx"
    d["prompts"]["conditions"][1]["threshold"] = -0.1
    del d["provenance"]["tool"]
    with pytest.raises(ManifestError) as caught:
        Manifest.from_dict(d)
    fields = sorted(p.split(":")[0] for p in caught.value.problems)
    assert fields == ["engines[0].backend", "prompts.conditions[1].threshold", "provenance.tool"]


@pytest.mark.parametrize("version", [3, 0, "1", 1.0])
def test_unknown_schema_version_is_refused_clearly(version):
    d = full_manifest_dict()
    d["schema_version"] = version
    with pytest.raises(ManifestError, match=r"schema_version: .* is not supported; .* reads schema_version 1"):
        Manifest.from_dict(d)


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        (b'{"schema_version": 1,', "malformed JSON"),
        (b"\xff\xfe{}", "not UTF-8"),
        (b"[1, 2]", "must be an object"),
        (b'{"schema_version": 1, "schema_version": 1}', "duplicate key"),
    ],
)
def test_malformed_manifest_bytes(data, expected):
    with pytest.raises(ManifestError, match=expected):
        Manifest.from_bytes(data)


# -- write / load / verify -------------------------------------------------------------------------

def test_write_then_load_round_trip(bundle_dir):
    bundle = load_bundle(bundle_dir)
    expected = Manifest.from_dict(full_manifest_dict())
    assert bundle.manifest == expected
    assert bundle.root == bundle.source == bundle_dir
    assert (bundle_dir / "manifest.json").read_bytes() == expected.canonical_bytes()
    for rel, data in PAYLOADS.items():
        assert bundle.path_of(rel).read_bytes() == data
    assert sorted(p.name for p in bundle_dir.iterdir()) == ["engines", "manifest.json", "prompts.npz", "reports"]


def test_write_bundle_copies_files_from_paths(tmp_path):
    sources = {}
    for rel, data in PAYLOADS.items():
        source = tmp_path / "src" / rel.replace("/", "_")
        source.parent.mkdir(exist_ok=True)
        source.write_bytes(data)
        sources[rel] = source
    bundle = load_bundle(write_bundle(tmp_path / "b", manifest_draft(), sources))
    assert bundle.manifest == Manifest.from_dict(full_manifest_dict())


@pytest.mark.parametrize(
    ("files", "expected"),
    [
        ({**PAYLOADS, "manifest.json": b"{}"}, "writes manifest.json itself"),
        ({**PAYLOADS, "../escape.bin": b"x"}, "'..'"),
        ({**PAYLOADS, "notes.txt": "text"}, "not str"),
        ({**PAYLOADS, "missing.bin": Path("/nonexistent/file")}, "not an existing file"),
        ({k: v for k, v in PAYLOADS.items() if k != "prompts.npz"}, "prompts.file"),
    ],
)
def test_write_bundle_refuses_bad_input_before_writing(tmp_path, files, expected):
    out = tmp_path / "b"
    with pytest.raises(BundleError, match=re.escape(expected)):
        write_bundle(out, manifest_draft(), files)
    assert not out.exists()


def test_write_bundle_refuses_a_non_empty_directory(bundle_dir):
    with pytest.raises(BundleError, match="not an empty directory"):
        write_bundle(bundle_dir, manifest_draft(), PAYLOADS)


def test_failed_write_leaves_nothing_behind(tmp_path, monkeypatch):
    out = tmp_path / "b"
    out.mkdir()

    def disk_full(path, data):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr("edge_retina.bundle.writer.write_atomically", disk_full)
    with pytest.raises(OSError, match="No space"):
        write_bundle(out, manifest_draft(), PAYLOADS)
    assert out.is_dir() and not any(out.iterdir())


@pytest.mark.parametrize("rel", ["engines/onnxruntime-fp32.onnx", "engines/openvino-int8.bin", "prompts.npz"])
def test_tampered_file_is_refused_naming_it(bundle_dir, rel):
    path = bundle_dir / rel
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 1
    path.write_bytes(bytes(data))
    expected = hashlib.sha256(PAYLOADS[rel]).hexdigest()
    with pytest.raises(BundleError, match=re.escape(f"{rel}: expected sha256 {expected}, got ")):
        load_bundle(bundle_dir)
    load_bundle(bundle_dir, verify=False)  # presence-only loading does not hash
    report = verify_bundle(bundle_dir)
    assert not report.ok and len(report.problems) == 1 and rel in report.problems[0]
    assert rel not in report.checked and len(report.checked) == len(PAYLOADS) - 1


def test_tampered_manifest_hash_is_refused_naming_the_file(bundle_dir):
    rewrite_manifest(bundle_dir, lambda d: d["files"].update({"prompts.npz": "f" * 64}))
    with pytest.raises(BundleError, match=r"prompts\.npz: expected sha256 f{64}, got "):
        load_bundle(bundle_dir)


def test_tampered_manifest_field_is_refused_naming_it(bundle_dir):
    rewrite_manifest(bundle_dir, lambda d: d["prompts"]["conditions"][1].update(threshold=2))
    with pytest.raises(ManifestError, match=r"manifest\.json .*\n.*prompts\.conditions\[1\]\.threshold"):
        load_bundle(bundle_dir)


def test_missing_file_is_refused_naming_it(bundle_dir):
    (bundle_dir / "engines" / "openvino-int8.bin").unlink()
    for verify in (True, False):
        with pytest.raises(BundleError, match=r"engines/openvino-int8\.bin: file is missing"):
            load_bundle(bundle_dir, verify=verify)


def test_missing_manifest_or_bundle(tmp_path, bundle_dir):
    (bundle_dir / "manifest.json").unlink()
    with pytest.raises(BundleError, match="no manifest.json"):
        load_bundle(bundle_dir)
    with pytest.raises(BundleError, match="no bundle at"):
        load_bundle(tmp_path / "nowhere")


def test_listed_symlink_leading_outside_is_refused(bundle_dir, tmp_path):
    outside = tmp_path / "outside.bin"
    outside.write_bytes(PAYLOADS["prompts.npz"])
    (bundle_dir / "prompts.npz").unlink()
    (bundle_dir / "prompts.npz").symlink_to(outside)
    with pytest.raises(BundleError, match=r"prompts\.npz: resolves outside the bundle"):
        load_bundle(bundle_dir)


def test_extra_files_warn_but_do_not_block(bundle_dir):
    (bundle_dir / "engines" / "stray.onnx").write_bytes(b"stray")
    report = verify_bundle(bundle_dir)
    assert report.ok and report.problems == []
    assert report.warnings == ["engines/stray.onnx: not listed in manifest.json (ignored)"]
    assert report.checked == full_manifest_dict()["files"]
    load_bundle(bundle_dir)


def test_verify_warns_about_a_non_canonical_manifest(bundle_dir):
    rewrite_manifest(bundle_dir, lambda d: None)  # same content, json.dumps layout
    report = verify_bundle(bundle_dir)
    assert report.ok and len(report.warnings) == 1 and "canonical" in report.warnings[0]


def test_verify_reports_instead_of_raising(tmp_path, bundle_dir):
    assert verify_bundle(tmp_path / "nowhere").problems == [f"no bundle at {tmp_path / 'nowhere'}"]
    rewrite_manifest(bundle_dir, lambda d: d["engines"][0].update(backend="onnx"))
    report = verify_bundle(bundle_dir)
    assert not report.ok and report.problems[0].startswith("manifest.json: engines[0].backend:")


def test_path_of_refuses_paths_outside_the_bundle(bundle_dir, tmp_path):
    bundle = load_bundle(bundle_dir)
    assert bundle.path_of("prompts.npz") == (bundle_dir / "prompts.npz").resolve()
    for bad in ("../x", "/etc/passwd", "engines/../../x", ""):
        with pytest.raises(BundleError, match="bundle path"):
            bundle.path_of(bad)
    (bundle_dir / "escape").symlink_to(tmp_path)
    with pytest.raises(BundleError, match="resolves outside the bundle"):
        bundle.path_of("escape/anything")


# -- engine selection ------------------------------------------------------------------------------

def engines_manifest(*specs: tuple[str, str, str]) -> Manifest:
    d = full_manifest_dict()
    files = {"openvino": ["engines/openvino-int8.xml", "engines/openvino-int8.bin"]}
    d["engines"] = [
        {"backend": b, "precision": p, "role": r, "files": files.get(b, ["engines/onnxruntime-fp32.onnx"])}
        for b, p, r in specs
    ]
    return Manifest.from_dict(d)


def test_select_engine_preference_order():
    m = engines_manifest(
        ("openvino", "fp32", "teacher"),
        ("onnxruntime", "fp32", "teacher"),
        ("tensorrt", "fp16", "student"),
        ("openvino", "int8", "student"),
        ("onnxruntime", "fp32", "student"),
        ("onnxruntime", "int8", "student"),
    )

    def pick(**criteria):
        e = m.select_engine(**criteria)
        return e.backend, e.precision, e.role

    assert pick() == ("onnxruntime", "int8", "student")  # student, then onnxruntime, then int8
    assert pick(role="teacher") == ("onnxruntime", "fp32", "teacher")
    assert pick(backend="openvino") == ("openvino", "int8", "student")
    assert pick(backend="openvino", role="teacher") == ("openvino", "fp32", "teacher")
    assert pick(precision="fp32") == ("onnxruntime", "fp32", "student")
    assert pick(backend="tensorrt") == ("tensorrt", "fp16", "student")
    with pytest.raises(BundleError, match=r"no engine .* backend='tensorrt', precision='int8' \(it has: "):
        m.select_engine(backend="tensorrt", precision="int8")


def test_select_engine_breaks_ties_by_manifest_order_and_bundle_delegates(bundle_dir):
    d = full_manifest_dict()
    first, second = copy.deepcopy(d["engines"][1]), copy.deepcopy(d["engines"][1])
    first["device_profile"], second["device_profile"] = "arm-neon", "x86-avx2"
    d["engines"] = [first, second]
    assert Manifest.from_dict(d).select_engine().device_profile == "arm-neon"
    d["engines"] = [second, first]
    assert Manifest.from_dict(d).select_engine().device_profile == "x86-avx2"
    bundle = load_bundle(bundle_dir)
    assert bundle.select_engine(role="teacher") == bundle.manifest.engines[0]


# -- archives ----------------------------------------------------------------------------------------

def test_archive_loads_the_same_bundle_as_the_directory(bundle_dir, archive, cache):
    from_dir = load_bundle(bundle_dir)
    from_archive = load_bundle(archive, cache_dir=cache)
    assert isinstance(from_archive, Bundle) and from_archive.source == archive
    assert from_archive.manifest == from_dir.manifest
    assert from_archive.root == cache / hashlib.sha256(archive.read_bytes()).hexdigest()
    for rel in PAYLOADS:
        assert from_archive.path_of(rel).read_bytes() == from_dir.path_of(rel).read_bytes()
    report = verify_bundle(archive)
    assert report.ok and report.checked == full_manifest_dict()["files"] and report.warnings == []


def test_archive_is_deterministic(bundle_dir, tmp_path):
    first = pack_bundle(bundle_dir, tmp_path / "one.erb.tar").read_bytes()
    for path in bundle_dir.rglob("*"):
        os.utime(path, (1e9, 1e9))
    os.chmod(bundle_dir / "prompts.npz", 0o600)
    (bundle_dir / "unlisted.txt").write_bytes(b"left out of the archive")
    second = pack_bundle(bundle_dir, tmp_path / "two.erb.tar").read_bytes()
    assert first == second
    with tarfile.open(fileobj=io.BytesIO(first)) as tar:
        members = tar.getmembers()
    assert [m.name for m in members] == ["manifest.json", *sorted(PAYLOADS)]
    assert {(m.mtime, m.uid, m.gid, m.uname, m.mode) for m in members} == {(315532800, 0, 0, "", 0o644)}


def test_pack_refuses_a_bad_bundle_or_suffix(bundle_dir, tmp_path):
    with pytest.raises(BundleError, match=re.escape(ARCHIVE_SUFFIX)):
        pack_bundle(bundle_dir, tmp_path / "bundle.tar.gz")
    (bundle_dir / "prompts.npz").write_bytes(b"changed")
    with pytest.raises(BundleError, match="prompts.npz: expected sha256"):
        pack_bundle(bundle_dir, tmp_path / "bundle.erb.tar")
    assert not (tmp_path / "bundle.erb.tar").exists()


def test_archive_cache_is_reused_and_repaired(archive, cache):
    root = load_bundle(archive, cache_dir=cache).root
    assert load_bundle(archive, cache_dir=cache).root == root
    (root / "prompts.npz").write_bytes(b"damaged in the cache")
    repaired = load_bundle(archive, cache_dir=cache)
    assert repaired.root == root and repaired.path_of("prompts.npz").read_bytes() == PAYLOADS["prompts.npz"]
    assert sorted(p.name for p in cache.iterdir()) == [root.name]  # no staging or discarded leftovers


def test_tampered_archive_leaves_nothing_in_the_cache(archive, cache, tmp_path):
    """An archive refused on its first extraction takes its extraction with it: no leftovers."""
    data = archive.read_bytes()
    payload = PAYLOADS["prompts.npz"]
    assert data.count(payload) == 1
    tampered = tmp_path / f"tampered{ARCHIVE_SUFFIX}"
    tampered.write_bytes(data.replace(payload, payload.upper()))  # same size: the tar stays valid
    with pytest.raises(BundleError, match="prompts.npz: expected sha256"):
        load_bundle(tampered, cache_dir=cache)
    assert list(cache.iterdir()) == []


def test_archive_cache_defaults_to_xdg_cache_home(archive, tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    root = load_bundle(archive).root
    assert root.parent == tmp_path / "xdg" / "edge-retina" / "bundles"


def test_concurrent_loads_of_one_archive(archive, cache):
    barrier = threading.Barrier(4)
    roots, errors = [], []

    def load():
        barrier.wait()
        try:
            roots.append(load_bundle(archive, cache_dir=cache).root)
        except Exception as exc:  # collected: an exception in a thread would otherwise be lost
            errors.append(exc)

    threads = [threading.Thread(target=load) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == [] and len(set(roots)) == 1 and len(roots) == 4
    assert [p.name for p in cache.iterdir()] == [roots[0].name]


def tar_bytes(*members: tuple[tarfile.TarInfo, bytes | None]) -> bytes:
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w:", format=tarfile.PAX_FORMAT) as tar:
        for info, data in members:
            if data is not None:
                info.size = len(data)
            tar.addfile(info, io.BytesIO(data) if data is not None else None)
    return out.getvalue()


def regular(name: str, data: bytes = b"x") -> tuple[tarfile.TarInfo, bytes]:
    return tarfile.TarInfo(name), data


def special(name: str, kind: bytes, linkname: str = "") -> tuple[tarfile.TarInfo, None]:
    info = tarfile.TarInfo(name)
    info.type, info.linkname = kind, linkname
    return info, None


@pytest.mark.parametrize(
    ("member", "expected"),
    [
        (regular("../evil.txt"), "'..'"),
        (regular("engines/../../evil.txt"), "'..'"),
        (regular("/tmp/evil.txt"), "leading '/'"),
        (special("engines/link.onnx", tarfile.SYMTYPE, "/etc/passwd"), "symbolic link to '/etc/passwd'"),
        (special("engines/inside.onnx", tarfile.SYMTYPE, "../prompts.npz"), "symbolic link"),
        (special("engines/hard.onnx", tarfile.LNKTYPE, "prompts.npz"), "hard link"),
        (special("engines/dev", tarfile.CHRTYPE), "device file"),
        (special("engines/fifo", tarfile.FIFOTYPE), "FIFO"),
        (regular("prompts.npz"), "appears twice"),
    ],
)
def test_malicious_archive_members_are_refused(bundle_dir, tmp_path, cache, member, expected):
    good = [regular("manifest.json", (bundle_dir / "manifest.json").read_bytes())]
    good += [regular(rel, data) for rel, data in PAYLOADS.items()]
    evil = tmp_path / "evil.erb.tar"
    evil.write_bytes(tar_bytes(*good, member))
    with pytest.raises(BundleError, match=re.escape(expected)):
        load_bundle(evil, cache_dir=cache)
    report = verify_bundle(evil)
    assert not report.ok and expected in report.problems[0]
    assert not (tmp_path / "evil.txt").exists() and not Path("/tmp/evil.txt").exists()
    assert list(cache.iterdir()) == []  # the staging directory is removed


def test_archive_made_with_tar_tool_layout_is_accepted(bundle_dir, tmp_path, cache):
    # `tar -C bundle -cf x.erb.tar .` writes "./" prefixes and directory members
    members = [special(".", tarfile.DIRTYPE), special("./engines", tarfile.DIRTYPE)]
    members += [regular(f"./{rel}", data) for rel, data in PAYLOADS.items()]
    members.append(regular("./manifest.json", (bundle_dir / "manifest.json").read_bytes()))
    archive = tmp_path / "manual.erb.tar"
    archive.write_bytes(tar_bytes(*members))
    assert load_bundle(archive, cache_dir=cache).manifest == load_bundle(bundle_dir).manifest


@pytest.mark.parametrize("keep", [0.35, 0.6, 0.999])
def test_truncated_archive_is_refused(archive, cache, keep):
    data = archive.read_bytes()
    end = data.rstrip(b"\0")  # cut inside the content, not in the zero padding
    archive.write_bytes(data[: int(len(end) * keep)])
    with pytest.raises(BundleError, match="is truncated or corrupt"):
        load_bundle(archive, cache_dir=cache)
    assert not verify_bundle(archive).ok


def test_archive_missing_its_end_marker_is_refused(archive, cache):
    data = archive.read_bytes()
    archive.write_bytes(data.rstrip(b"\0") + b"\0" * ((-len(data.rstrip(b"\0"))) % 512))
    with pytest.raises(BundleError, match="end-of-archive marker is missing"):
        load_bundle(archive, cache_dir=cache)


def test_corrupt_header_in_the_middle_is_refused(archive, cache):
    data = bytearray(archive.read_bytes())
    with tarfile.open(archive) as tar:
        third = tar.getmembers()[2]
    data[third.offset: third.offset + 512] = b"\x7f" * 512  # an unreadable header after two good members
    archive.write_bytes(bytes(data))
    with pytest.raises(BundleError, match="corrupt"):
        load_bundle(archive, cache_dir=cache)


@pytest.mark.parametrize(
    ("content", "expected"),
    [(b"", "not a bundle archive"), (b"not a tar file at all" * 40, "not a bundle archive"),
     (b"\x1f\x8b\x08\x00 gzip", "gzip-compressed")],
)
def test_non_archives_are_refused(tmp_path, cache, content, expected):
    path = tmp_path / "x.erb.tar"
    path.write_bytes(content)
    with pytest.raises(BundleError, match=expected):
        load_bundle(path, cache_dir=cache)


# -- the spec document and the runtime boundary -----------------------------------------------------

def test_spec_example_manifest_is_valid_and_canonical():
    text = (REPO / "docs" / "BUNDLE_FORMAT.md").read_text(encoding="utf-8")
    example = re.search(r"```json\n(.*?)```", text, flags=re.S).group(1)
    manifest = Manifest.from_bytes(example.encode())
    assert manifest.canonical_bytes() == example.encode()


def test_bundle_package_imports_without_host_libraries():
    code = "import sys, edge_retina.bundle; sys.exit(sorted({'torch', 'onnx'} & set(sys.modules)) != [])"
    subprocess.run([sys.executable, "-c", code], check=True, cwd=REPO)


def test_the_json_schema_is_the_documented_one_and_names_what_the_runtime_knows():
    import jsonschema

    from edge_retina import engines
    from edge_retina.bundle.manifest import SCHEMA_PATH
    from edge_retina.prompt_table import ENSEMBLING_RULES

    assert (Path(__file__).parents[1] / "docs" / "bundle.schema.json").resolve() == SCHEMA_PATH.resolve()
    schema = json.loads(SCHEMA_PATH.read_text())
    engine = schema["$defs"]["engine"]["properties"]
    assert (engine["backend"]["enum"], engine["precision"]["enum"], engine["role"]["enum"]) == (
        list(engines.BACKENDS), list(engines.PRECISIONS), list(engines.ROLES))
    assert schema["properties"]["prompts"]["properties"]["ensembling"]["enum"] == list(ENSEMBLING_RULES)
    # A firmware team's validator needs nothing of ours: plain jsonschema accepts a valid manifest.
    jsonschema.validate(full_manifest_dict(), schema)
