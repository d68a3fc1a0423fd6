"""A/B installs: signed bundles only, self-test at start, automatic rollback, power cuts at every step."""
from __future__ import annotations

import io
import json
import os
import shutil
import signal
import subprocess
import sys
import tarfile
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from narrow_terminal import COLUMNS, folder_wider_than_the_terminal, narrow_runner, unwrapped, widest_line

from converters.selftest_files import selftest_files
from edge_retina.backends import create_runner
from edge_retina.bundle import load_bundle, pack_bundle, write_bundle
from edge_retina.bundle.signing import (
    SignatureError,
    TrustedKeys,
    generate_key_pair,
    key_id,
    load_private_key,
    sign_bundle,
)
from edge_retina.cli.bundle import bundle as bundle_cli
from edge_retina.errors import BundleError
from edge_retina.install import (
    GOOD,
    MAX_TRIAL_STARTS,
    REJECTED,
    InstallError,
    install_bundle,
    read_status,
    rollback,
    start,
)
from edge_retina.install.slots import STAGING_PREFIX
from edge_retina.screener import Screener
from edge_retina.selftest import (
    EXPECTED_FILE,
    SelftestExpectation,
    run_selftest,
    selftest_screener,
)

REPO = Path(__file__).resolve().parents[1]
INSTALL_STEPS = ["staging-created", "staging-written", "staging-verified", "fallback-detached", "old-slot-moved",
                 "slot-placed", "switched", "cleaned"]
GOOD_START_STEPS = ["trial-counted", "selftest-done", "confirmed"]
BAD_START_STEPS = ["trial-counted", "selftest-done", "rolled-back"]


class PowerCut(BaseException):
    """Raised from a step hook: not an Exception, so no cleanup code of the install catches it."""


def _cut_at(target: str):
    def hook(step: str) -> None:
        if step == target:
            raise PowerCut(step)
    return hook


@pytest.fixture(scope="module")
def keys(tmp_path_factory):
    root = tmp_path_factory.mktemp("install-keys")
    generate_key_pair(root / "device.key", root / "trusted" / "device.pub")
    generate_key_pair(root / "other.key", root / "other.pub")
    return root


@pytest.fixture(scope="module")
def trusted(keys):
    return TrustedKeys.from_directory(keys / "trusted")


@pytest.fixture(scope="module")
def bundles(tiny_bundle, tmp_path_factory, keys):
    """Signed copies of the tiny bundle with self-test files: v1, v2 (pass) and broken (recorded
    embedding negated, so its self-test fails), plus an unsigned one and one without a self-test."""
    root = tmp_path_factory.mktemp("install-bundles")
    source = load_bundle(tiny_bundle)
    engine = source.select_engine()
    with create_runner(engine.backend, source.path_of(engine.primary_file), precision=engine.precision) as runner:
        extra = selftest_files({engine.role: runner.infer}, source.manifest.input, engine="onnxruntime-fp32")
    expected = json.loads(extra[EXPECTED_FILE])
    for reference in expected["references"].values():
        reference["embedding"] = [-v for v in reference["embedding"]]
    broken_extra = {**extra, EXPECTED_FILE: json.dumps(expected).encode()}

    # Without any self-test files the fixture may already carry, so "no-selftest" has none.
    base = {rel: source.path_of(rel) for rel in source.manifest.files if not rel.startswith("selftest/")}
    key = load_private_key(keys / "device.key")
    made = {}
    for name, files, signed in [("v1", {**base, **extra}, True), ("v2", {**base, **extra}, True),
                                ("broken", {**base, **broken_extra}, True), ("unsigned", {**base, **extra}, False),
                                ("no-selftest", base, True)]:
        manifest = source.manifest.to_dict()
        manifest["provenance"]["command"] = f"tests: {name}"  # tells the versions apart
        made[name] = write_bundle(root / name, manifest, files)
        if signed:
            sign_bundle(made[name], key)
    return made


def _command(path: Path) -> str:
    return load_bundle(path).manifest.provenance.command


@pytest.fixture(scope="module")
def two_slot_root(bundles, trusted, tmp_path_factory):
    """An install root where v1 (slot a) then v2 (slot b, active) were installed and passed: the
    next install replaces slot a, the fallback, so it goes through every step."""
    root = tmp_path_factory.mktemp("template") / "root"
    for name in ("v1", "v2"):
        install_bundle(root, bundles[name], trusted)
        start(root)
    state = read_status(root)
    assert (state.active, state.previous) == ("b", "a")
    return root


@pytest.fixture
def root(two_slot_root, tmp_path):
    return shutil.copytree(two_slot_root, tmp_path / "root")


def test_selftest_passes_on_the_recorded_engine_and_fails_without_files(bundles):
    assert run_selftest(bundles["v1"]).passed  # the engine the screener picks on this machine
    for backend in ("onnxruntime", "openvino"):  # the reference came from onnxruntime
        result = run_selftest(bundles["v1"], backend=backend)
        assert result.passed and result.cosine > 0.9999 and result.engine == f"{backend}/fp32/teacher"
    assert not run_selftest(bundles["broken"]).passed
    missing = run_selftest(bundles["no-selftest"])
    assert not missing.passed and "has no self-test" in missing.message


def _rewritten(bundle_dir: Path, out: Path, **replaced: bytes) -> Path:
    """A copy of a bundle with some files replaced (and its manifest rewritten to match)."""
    bundle = load_bundle(bundle_dir)
    files = {rel: bundle.path_of(rel) for rel in bundle.manifest.files}
    return write_bundle(out, bundle.manifest.to_dict(), {**files, **replaced})


def test_selftest_of_an_open_screener(bundles):
    with Screener.from_bundle(bundles["v1"], "openvino") as screener:
        result = selftest_screener(screener)
    assert result.passed and result.engine == "openvino/fp32/teacher"


def test_selftest_compares_each_engine_with_the_reference_of_its_role(bundles, tmp_path):
    expected = json.loads((bundles["v1"] / EXPECTED_FILE).read_text())
    expected["references"] = {"student": expected["references"]["teacher"]}  # the tiny bundle ships a teacher
    student_only = _rewritten(bundles["v1"], tmp_path / "student-only", **{EXPECTED_FILE: json.dumps(expected).encode()})
    result = run_selftest(student_only)
    assert not result.passed and "no reference embedding for teacher engines" in result.message


@pytest.mark.parametrize("change, message", [
    (lambda e: e.pop("min_cosine"), "expected exactly the fields"),
    (lambda e: e.update(format_version=2), "format_version 2"),
    (lambda e: e["references"].update(teacher={"engine": "x", "embedding": []}), "non-empty list of finite"),
    (lambda e: e["references"].update(cook={"engine": "x", "embedding": [1.0]}), "must map engine roles"),
    (lambda e: e.update(min_cosine={"fp32": 2}), r"numbers in \[-1, 1\]"),
])
def test_malformed_selftest_file_fails_the_selftest(bundles, tmp_path, change, message):
    expected = json.loads((bundles["v1"] / EXPECTED_FILE).read_text())
    change(expected)
    with pytest.raises(BundleError, match=message):
        SelftestExpectation.from_bytes(json.dumps(expected).encode())
    result = run_selftest(_rewritten(bundles["v1"], tmp_path / "b", **{EXPECTED_FILE: json.dumps(expected).encode()}))
    assert not result.passed and "BundleError" in result.message


def test_selftest_files_refuse_an_encoder_giving_nan(tiny_bundle):
    spec = load_bundle(tiny_bundle).manifest.input
    with pytest.raises(ValueError, match="teacher encoder gave NaN"):
        selftest_files({"teacher": lambda x: np.full((1, 8), np.nan)}, spec, engine="test")


def test_install_switch_and_selftest(bundles, trusted, tmp_path):
    root = tmp_path / "root"
    report = install_bundle(root, bundles["v1"], trusted)
    assert report.slot == "a" and read_status(root).on_trial
    started = start(root)
    assert started.path == root / "slots" / "a" and started.selftest.passed and started.rolled_back_from is None
    assert read_status(root).slots["a"].status == GOOD and not read_status(root).on_trial
    assert start(root).selftest is None  # a known-good slot is not re-tested at every start

    install_bundle(root, pack_bundle(bundles["v2"], tmp_path / "v2.erb.tar"), trusted)  # archives install too
    started = start(root)
    assert started.slot == "b" and _command(started.path) == "tests: v2"
    state = read_status(root)
    assert (state.active, state.previous) == ("b", "a")
    assert sorted(p.name for p in root.iterdir()) == [".lock", "slots", "state.json"]  # nothing left over


def test_failed_selftest_rolls_back_to_the_previous_bundle(root, bundles, trusted):
    install_bundle(root, bundles["broken"], trusted)
    started = start(root)
    assert started.rolled_back_from == "a" and started.slot == "b" and not started.selftest.passed
    assert _command(started.path) == "tests: v2"
    state = read_status(root)
    assert state.slots["a"].status == REJECTED and "self-test FAILED" in state.slots["a"].note
    assert state.previous is None  # never back to a bundle that failed
    assert start(root).slot == "b"


def test_first_install_failing_its_selftest_leaves_nothing_to_run(bundles, trusted, tmp_path):
    install_bundle(tmp_path / "root", bundles["broken"], trusted)
    with pytest.raises(InstallError, match="failed its self-test and there is no previous bundle"):
        start(tmp_path / "root")
    with pytest.raises(InstallError, match="no working bundle .* slot a: self-test FAILED"):
        start(tmp_path / "root")


@pytest.mark.parametrize("name, error, message", [
    ("unsigned", SignatureError, "is not signed"),
    ("no-selftest", InstallError, "has no self-test"),
])
def test_refused_bundles_leave_the_root_untouched(root, bundles, trusted, name, error, message):
    before = (root / "state.json").read_bytes()
    with pytest.raises(error, match=message):
        install_bundle(root, bundles[name], trusted)
    assert (root / "state.json").read_bytes() == before
    assert sorted(p.name for p in root.iterdir()) == [".lock", "slots", "state.json"]


def test_untrusted_and_tampered_bundles_are_refused(root, bundles, keys, trusted, tmp_path):
    other = shutil.copytree(bundles["v1"], tmp_path / "other")
    sign_bundle(other, load_private_key(keys / "other.key"))
    with pytest.raises(SignatureError, match="not trusted"):
        install_bundle(root, other, trusted)
    tampered = shutil.copytree(bundles["v1"], tmp_path / "tampered")
    with open(tampered / "prompts.npz", "r+b") as f:
        f.write(b"X")
    with pytest.raises(BundleError, match="prompts.npz: expected sha256"):
        install_bundle(root, tampered, trusted)
    assert start(root).slot == "b"


def test_a_refused_bundle_is_named_as_given_not_as_its_staging_copy(root, bundles, keys, trusted, tmp_path):
    """The checks read the install's staging copy; the user knows the bundle by the path they gave."""
    altered_file = shutil.copytree(bundles["v1"], tmp_path / "altered-file")
    with open(altered_file / "prompts.npz", "r+b") as f:
        f.write(b"X")
    altered_manifest = shutil.copytree(bundles["v1"], tmp_path / "altered-manifest")
    manifest = json.loads((altered_manifest / "manifest.json").read_text())
    manifest["provenance"]["command"] = "tests: altered"
    (altered_manifest / "manifest.json").write_text(json.dumps(manifest))
    other_key = shutil.copytree(bundles["v1"], tmp_path / "other-key")
    sign_bundle(other_key, load_private_key(keys / "other.key"))
    archive = _archive_with(tmp_path / "altered.erb.tar", altered_file)
    for source, says in [(altered_file, "prompts.npz: expected sha256"), (archive, "prompts.npz: expected sha256"),
                         (altered_manifest, "signature does not match"), (other_key, "not trusted"),
                         (bundles["unsigned"], "is not signed")]:
        result = narrow_runner().invoke(bundle_cli, ["install", str(source), "--root", str(root),
                                                     "--trusted-keys", str(keys / "trusted"), "--no-start"])
        assert widest_line(result.output) <= COLUMNS, result.output
        said = unwrapped(result.output)
        assert result.exit_code == 2 and unwrapped(says) in said and str(source) in said, said
        assert STAGING_PREFIX not in said, said
    assert sorted(p.name for p in root.iterdir()) == [".lock", "slots", "state.json"]


def _archive_with(path: Path, bundle: Path, extra: tarfile.TarInfo | None = None, data: bytes = b"") -> Path:
    """An archive of the files of ``bundle`` as they are (pack_bundle would refuse an altered one), and ``extra``."""
    with tarfile.open(path, "w") as tar:
        for name in sorted(p.relative_to(bundle).as_posix() for p in bundle.rglob("*") if p.is_file()):
            tar.add(bundle / name, arcname=name)
        if extra is not None:
            tar.addfile(extra, io.BytesIO(data) if extra.isreg() else None)
    return path


def test_archives_escaping_the_slot_are_refused(root, bundles, trusted, tmp_path):
    traversal = tarfile.TarInfo("../../evil.txt")
    traversal.size = 4
    link = tarfile.TarInfo("engines/escape")
    link.type, link.linkname = tarfile.SYMTYPE, "/etc/passwd"
    for name, member in [("traversal", traversal), ("link", link)]:
        archive = _archive_with(tmp_path / f"{name}.erb.tar", bundles["v1"], member, b"evil")
        with pytest.raises(BundleError, match="refusing member"):
            install_bundle(root, archive, trusted)
    assert not (tmp_path / "evil.txt").exists() and not (root.parent / "evil.txt").exists()
    assert sorted(p.name for p in root.iterdir()) == [".lock", "slots", "state.json"]


def test_a_slot_altered_while_on_trial_is_rolled_back_when_keys_are_given(root, bundles, trusted):
    report = install_bundle(root, bundles["v1"], trusted)
    manifest = report.path / "manifest.json"
    manifest.write_bytes(manifest.read_bytes().replace(b"tests: v1", b"tests: v9"))
    started = start(root, trusted=trusted)
    assert started.rolled_back_from == "a" and "signature does not match" in started.selftest.message


def _flip_a_byte_of_an_engine(slot: Path) -> None:
    engine = slot / load_bundle(slot, verify=False).select_engine().primary_file
    data = bytearray(engine.read_bytes())
    data[len(data) // 2] ^= 1
    engine.write_bytes(bytes(data))


def test_a_damaged_known_good_slot_is_rolled_back_from_at_start(root, trusted):
    _flip_a_byte_of_an_engine(root / "slots" / "b")
    started = start(root, trusted=trusted)
    assert (started.slot, started.rolled_back_from) == ("a", "b") and _command(started.path) == "tests: v1"
    assert started.selftest.message.startswith("check FAILED: engines/") and "expected sha256" in started.selftest.message
    state = read_status(root)
    assert (state.active, state.previous, state.slots["b"].status) == ("a", None, REJECTED)
    assert start(root).slot == "a" and start(root).rolled_back_from is None  # a passes its check: it stays


def test_a_known_good_slot_whose_manifest_changed_is_rolled_back_from_without_keys(root):
    manifest = root / "slots" / "b" / "manifest.json"
    manifest.write_bytes(manifest.read_bytes().replace(b"tests: v2", b"tests: v9"))
    started = start(root)
    assert started.slot == "a" and "manifest.json was changed after it was installed" in started.selftest.message


def test_start_refuses_when_both_slots_are_damaged_and_recovers_once_repaired(root):
    state_before = (root / "state.json").read_bytes()
    engines = {slot: root / "slots" / slot / load_bundle(root / "slots" / slot).select_engine().primary_file
               for slot in ("a", "b")}
    originals = {slot: engine.read_bytes() for slot, engine in engines.items()}
    for slot in ("a", "b"):
        _flip_a_byte_of_an_engine(root / "slots" / slot)
    for _ in range(2):  # nothing is marked rejected: the same failure is reported again
        with pytest.raises(InstallError, match="slot b fails its check .* and so does slot a .* nothing was changed"):
            start(root)
        assert (root / "state.json").read_bytes() == state_before
    engines["b"].write_bytes(originals["b"])
    started = start(root)
    assert (started.slot, started.rolled_back_from) == ("b", None) and _command(started.path) == "tests: v2"


def test_start_with_keys_that_miss_the_signing_key_changes_nothing(root, keys, trusted):
    state_before = (root / "state.json").read_bytes()
    with pytest.raises(InstallError, match="not trusted"):
        start(root, trusted=TrustedKeys.from_files([keys / "other.pub"]))  # e.g. a mistyped --trusted-keys
    assert (root / "state.json").read_bytes() == state_before
    assert start(root, trusted=trusted).slot == "b"


def test_a_read_error_during_the_start_check_names_the_file_and_changes_nothing(root, trusted, monkeypatch):
    def unreadable_signature(path, keys, **options):
        raise PermissionError(13, "Permission denied", str(Path(path) / "manifest.sig"))

    state_before = (root / "state.json").read_bytes()
    monkeypatch.setattr("edge_retina.install.slots.check_signature", unreadable_signature)
    with pytest.raises(InstallError, match=r"cannot read its manifest\.sig \(Permission denied\)"):
        start(root, trusted=trusted)
    assert (root / "state.json").read_bytes() == state_before
    monkeypatch.undo()
    assert start(root, trusted=trusted).slot == "b"


def test_install_root_that_cannot_be_a_directory_is_refused_in_one_message(bundles, keys, tmp_path):
    (tmp_path / "rootfile").write_text("")
    for root, message in [(tmp_path / "rootfile", "is not a directory"),
                          ("/proc/edge-retina-root", "cannot use /proc/edge-retina-root as an install root")]:
        result = CliRunner().invoke(bundle_cli, ["install", str(bundles["v1"]), "--root", str(root),
                                                 "--trusted-keys", str(keys / "trusted")])
        assert result.exit_code == 2 and unwrapped(message) in unwrapped(result.output), result.output
        assert not isinstance(result.exception, OSError)


def test_status_of_a_root_with_nothing_installed_says_so(tmp_path):
    for command in ("status", "start", "rollback"):
        result = CliRunner().invoke(bundle_cli, [command, "--root", str(tmp_path / "nowhere")])
        assert result.exit_code == 2 and unwrapped("no bundle is installed in") in unwrapped(result.output), command


def test_start_help_names_its_example_path_whole_in_80_columns():
    shown = narrow_runner().invoke(bundle_cli, ["start", "--help"]).output
    assert "--root /var/lib/edge-retina)" in shown and widest_line(shown) <= COLUMNS, shown


def test_damaged_state_file_is_reported(root):
    (root / "state.json").write_text('{"format_version": 1}')
    with pytest.raises(InstallError, match="state.json is damaged"):
        start(root)


def test_install_waits_for_a_slot_on_trial_to_be_started(root, bundles, trusted):
    install_bundle(root, bundles["v1"], trusted)
    with pytest.raises(InstallError, match="still on trial"):
        install_bundle(root, bundles["v2"], trusted)


def test_manual_rollback_swaps_and_can_roll_forward(root):
    assert rollback(root).active == "a"
    assert _command(start(root).path) == "tests: v1"
    assert rollback(root).active == "b"


def test_a_slot_that_never_finishes_its_selftest_is_rolled_back(root, bundles, trusted):
    install_bundle(root, bundles["v1"], trusted)
    for _ in range(MAX_TRIAL_STARTS):  # e.g. the engine crashes the process during the self-test
        with pytest.raises(PowerCut):
            start(root, on_step=_cut_at("trial-counted"))
    started = start(root)
    assert started.rolled_back_from == "a" and started.slot == "b"
    assert "without finishing its self-test" in started.selftest.message


@pytest.mark.parametrize("step", INSTALL_STEPS + BAD_START_STEPS)
def test_power_cut_during_a_failing_update_keeps_the_previous_bundle(root, bundles, trusted, step):
    with pytest.raises(PowerCut):
        install_bundle(root, bundles["broken"], trusted, on_step=_cut_at(step))
        start(root, on_step=_cut_at(step))
    started = start(root)
    assert started.slot == "b" and _command(started.path) == "tests: v2"
    assert load_bundle(started.path, verify=True)
    assert sorted(p.name for p in root.iterdir()) == [".lock", "slots", "state.json"]


_KILLED_INSTALL = """
import os, signal, sys
from edge_retina.bundle.signing import TrustedKeys
from edge_retina.install import install_bundle, start

root, source, trusted, target = sys.argv[1:]
def hook(step):
    if step == target:
        os.kill(os.getpid(), signal.SIGKILL)
install_bundle(root, source, TrustedKeys.from_directory(trusted), on_step=hook)
start(root, on_step=hook)
"""


def test_power_cut_at_every_step_of_an_update_leaves_a_bundle_that_starts(two_slot_root, bundles, keys, tmp_path):
    """kill -9 after each step of installing v1 over the fallback slot, then start: before the
    switch the previous bundle (v2) runs; from the switch on the new one is tested and runs."""
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    for index, step in enumerate(INSTALL_STEPS + GOOD_START_STEPS):
        root = shutil.copytree(two_slot_root, tmp_path / step)
        killed = subprocess.run([sys.executable, "-c", _KILLED_INSTALL, str(root), str(bundles["v1"]),
                                 str(keys / "trusted"), step], env=env, cwd=REPO, capture_output=True, text=True)
        assert killed.returncode == -signal.SIGKILL, (step, killed.stderr)
        started = start(root)
        expected = "tests: v2" if index < INSTALL_STEPS.index("switched") else "tests: v1"
        assert _command(started.path) == expected, step
        assert load_bundle(started.path, verify=True)
        state = read_status(root)
        assert not state.on_trial and state.slots[state.active].status == GOOD
        assert sorted(p.name for p in root.iterdir()) == [".lock", "slots", "state.json"], step


def test_cli_install_status_rollback(bundles, keys, tmp_path):
    runner = CliRunner()
    root = tmp_path / "root"
    for name in ("v1", "v2"):
        result = runner.invoke(bundle_cli, ["install", str(bundles[name]), "--root", str(root),
                                            "--trusted-keys", str(keys / "trusted")])
        assert result.exit_code == 0, result.output
    assert result.output.strip().splitlines()[-1] == str(root / "slots" / "b")
    assert unwrapped("self-test passed") in unwrapped(result.output)
    status = json.loads(runner.invoke(bundle_cli, ["status", "--root", str(root), "--json"]).output)
    assert (status["active"], status["previous"]) == ("b", "a")
    table = narrow_runner().invoke(bundle_cli, ["status", "--root", str(root)]).output
    assert widest_line(table) <= COLUMNS and "fallback" in table, table
    assert runner.invoke(bundle_cli, ["rollback", "--root", str(root)]).output.strip() == "active slot is now a"
    broken = runner.invoke(bundle_cli, ["install", str(bundles["broken"]), "--root", str(root),
                                        "--trusted-keys", str(keys / "trusted")])
    assert broken.exit_code == 3 and unwrapped("rolled back from slot b to slot a") in unwrapped(broken.output)
    assert broken.output.strip().splitlines()[-1] == str(root / "slots" / "a")
    refused = runner.invoke(bundle_cli, ["install", str(bundles["unsigned"]), "--root", str(root),
                                         "--trusted-keys", str(keys / "trusted")])
    assert refused.exit_code == 2 and unwrapped("is not signed") in unwrapped(refused.output)
    assert runner.invoke(bundle_cli, ["start", "--root", str(root)]).output.strip() == str(root / "slots" / "a")


def test_cli_lines_naming_long_paths_fit_80_columns_but_the_started_path_is_whole(bundles, tmp_path):
    """keygen, sign, install, start and rollback under COLUMNS=80, with paths wider than the terminal:
    every line for people wraps to 80 columns and names the paths whole; the bundle path printed on
    stdout for scripts is one line, never wrapped."""
    folder = folder_wider_than_the_terminal(tmp_path)
    private, public, root = folder / "signer.key", folder / "trusted" / "signer.pub", folder / "root"
    source = shutil.copytree(bundles["unsigned"], folder / "bundle")
    runner = narrow_runner()

    def for_people(args, *phrases, script_path=None):
        result = runner.invoke(bundle_cli, [str(a) for a in args])
        assert result.exit_code == 0, result.output
        lines = result.output.splitlines()
        if script_path is not None:
            assert result.stdout.splitlines()[-1] == str(script_path), result.output
            lines.remove(str(script_path))
        assert widest_line("\n".join(lines)) <= COLUMNS, result.output
        assert all(unwrapped(phrase) in unwrapped(result.output) for phrase in phrases), result.output
        return result

    made = for_people(["keygen", "--private-key", private, "--public-key", public])
    key = key_id(load_private_key(private).public_key())
    assert unwrapped(f"key {key}: private {private}, public {public}") in unwrapped(made.output), made.output
    for_people(["sign", source, "--key", private], f"signed {source} with key {key}")
    install = ["install", source, "--root", root, "--trusted-keys", public.parent]
    for_people(install, f"installed {source} into slot a (key {key}), on trial", "self-test passed",
               script_path=root / "slots" / "a")
    for_people([*install, "--no-start"], f"installed {source} into slot b (key {key}), on trial")
    started = for_people(["start", "--root", root], "self-test passed", script_path=root / "slots" / "b")
    assert started.stdout == f"{root / 'slots' / 'b'}\n"  # messages on stderr, the path alone on stdout
    for_people(["rollback", "--root", root], "active slot is now a")


def test_a_trial_start_hashes_each_file_once_and_still_rolls_back_a_damaged_one(root, bundles, trusted, monkeypatch):
    from collections import Counter

    from edge_retina.bundle import loader

    install_bundle(root, bundles["v1"], trusted)
    hashed: Counter = Counter()
    real = loader.sha256_file
    monkeypatch.setattr(loader, "sha256_file", lambda path: hashed.update([Path(path).name]) or real(path))
    started = start(root, trusted=trusted)
    assert started.selftest.passed and hashed and max(hashed.values()) == 1, hashed

    install_bundle(root, bundles["v2"], trusted)
    _flip_a_byte_of_an_engine(root / "slots" / "b")
    started = start(root, trusted=trusted)
    assert (started.slot, started.rolled_back_from) == ("a", "b")
    assert "self-test FAILED" in started.selftest.message and "engines/" in started.selftest.message
