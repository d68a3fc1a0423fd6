"""Ed25519 bundle signatures: keys, sign/verify round trips, and every way a signature must fail."""
from __future__ import annotations

import base64
import json
import os
import shutil
import stat
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest
from click.testing import CliRunner

from edge_retina.bundle import (
    MANIFEST_NAME,
    load_bundle,
    pack_bundle,
    verify_bundle,
    write_bundle,
)
from edge_retina.bundle.archive import read_small_members
from edge_retina.bundle.manifest import canonical_json
from edge_retina.bundle.paths import SIGNATURE_NAME
from edge_retina.bundle.signing import (
    BundleSignature,
    SignatureError,
    TrustedKeys,
    check_signature,
    generate_key_pair,
    load_private_key,
    load_public_key,
    sign_bundle,
)
from edge_retina.cli.bundle import bundle as bundle_cli
from edge_retina.errors import BundleError
from narrow_terminal import COLUMNS, unwrapped, widest_line

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def keys(tmp_path_factory):
    """Two key pairs: "device" (trusted) and "other" (not)."""
    root = tmp_path_factory.mktemp("keys")
    made = {}
    for name in ("device", "other"):
        key_id = generate_key_pair(root / f"{name}.key", root / "pubs" / name / f"{name}.pub")
        made[name] = {"id": key_id, "private": root / f"{name}.key", "public": root / "pubs" / name / f"{name}.pub",
                      "dir": root / "pubs" / name}
    return made


@pytest.fixture
def bundle_copy(tiny_bundle, tmp_path):
    return shutil.copytree(tiny_bundle, tmp_path / "bundle")


@pytest.fixture
def signed(bundle_copy, keys):
    sign_bundle(bundle_copy, load_private_key(keys["device"]["private"]))
    return bundle_copy


def trusted(keys, name="device"):
    return TrustedKeys.from_directory(keys[name]["dir"])


def test_keygen_writes_a_private_key_only_its_owner_reads_and_refuses_to_overwrite(keys):
    private = keys["device"]["private"]
    assert stat.S_IMODE(private.stat().st_mode) == 0o600
    assert keys["device"]["id"] != keys["other"]["id"]
    with pytest.raises(SignatureError, match="already exists"):
        generate_key_pair(private, private.with_suffix(".new.pub"))
    with pytest.raises(SignatureError, match="not an Ed25519 public key"):
        load_public_key(private)
    with pytest.raises(SignatureError, match="not an unencrypted Ed25519 private key"):
        load_private_key(keys["device"]["public"])


@pytest.mark.skipif(not Path("/proc/self").is_dir(), reason="needs Linux /proc (a directory nobody can create files in)")
def test_keygen_writes_both_keys_or_neither(tmp_path):
    private = tmp_path / "keys" / "n.key"
    (tmp_path / "a-file").write_text("")
    for public, message in [(private, "would both be written to"),
                            (tmp_path / "keys" / ".." / "keys" / "n.key", "would both be written to"),
                            (tmp_path / "a-file" / "n.pub", "cannot make the directory of"),
                            (Path("/proc/edge-retina-test.pub"), "cannot write /proc/edge-retina-test.pub")]:
        result = CliRunner().invoke(bundle_cli, ["keygen", "--private-key", str(private), "--public-key", str(public)])
        assert result.exit_code == 2 and unwrapped(message) in unwrapped(result.output), result.output
        assert isinstance(result.exception, SystemExit) and not private.exists(), public  # no traceback, no half pair
    generate_key_pair(private, tmp_path / "keys" / "n.pub")  # the first attempts left nothing in the way


def test_signed_directory_round_trip(signed, keys):
    assert check_signature(signed, trusted(keys)) == keys["device"]["id"]
    report = verify_bundle(signed)
    assert report.ok and report.warnings == []  # manifest.sig is part of a bundle, not an unlisted file
    signature = BundleSignature.from_bytes((signed / SIGNATURE_NAME).read_bytes(), source="test")
    assert signature.key_id == keys["device"]["id"] and len(signature.signature) == 64


def test_packed_archive_carries_the_signature_right_after_the_manifest(signed, keys, tmp_path):
    archive = pack_bundle(signed, tmp_path / "signed.erb.tar")
    with tarfile.open(archive) as tar:
        assert tar.getnames()[:2] == [MANIFEST_NAME, SIGNATURE_NAME]
    assert check_signature(archive, trusted(keys)) == keys["device"]["id"]
    assert verify_bundle(archive).warnings == []
    assert load_bundle(archive, cache_dir=tmp_path / "cache").manifest.files


def test_signing_an_archive_rewrites_it_with_the_signature(bundle_copy, keys, tmp_path):
    archive = pack_bundle(bundle_copy, tmp_path / "unsigned.erb.tar")
    with pytest.raises(SignatureError, match="is not signed"):
        check_signature(archive, trusted(keys))
    sign_bundle(archive, load_private_key(keys["other"]["private"]))
    sign_bundle(archive, load_private_key(keys["device"]["private"]))  # re-signing replaces the signature
    assert check_signature(archive, trusted(keys)) == keys["device"]["id"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bundle", "unsigned.erb.tar"]  # no work files left


def test_unsigned_bundle_is_refused(bundle_copy, keys):
    with pytest.raises(SignatureError, match=r"is not signed \(no manifest.sig\)"):
        check_signature(bundle_copy, trusted(keys))


def test_altered_manifest_is_refused(signed, keys):
    manifest = json.loads((signed / MANIFEST_NAME).read_text())
    manifest["prompts"]["conditions"][1]["threshold"] = 0.01  # refer everyone
    (signed / MANIFEST_NAME).write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    with pytest.raises(SignatureError, match="signature does not match manifest.json"):
        check_signature(signed, trusted(keys))


def test_a_manifest_changed_after_signing_is_reported_without_keys_when_not_canonical(signed, caplog):
    """Only canonical manifests are signed, so a signed one that is not canonical was edited since."""
    changed = "changed after the bundle was signed"
    manifest = json.loads((signed / MANIFEST_NAME).read_text())
    manifest["prompts"]["conditions"][1]["threshold"] = 0.01
    (signed / MANIFEST_NAME).write_text(json.dumps(manifest, indent=4))  # an editor's layout, not canonical
    load_bundle(signed)  # what screen and the bridge's Screener.from_bundle do
    assert [r.levelname for r in caplog.records if changed in r.getMessage()] == ["WARNING"]
    assert any(changed in w for w in verify_bundle(signed).warnings)
    (signed / SIGNATURE_NAME).unlink()  # unsigned: not canonical only means it cannot be signed as is
    caplog.clear()
    load_bundle(signed)
    assert not caplog.records and not any(changed in w for w in verify_bundle(signed).warnings)


def test_the_command_says_a_bundle_warning_in_one_wrapped_warning_line(signed):
    """A real process: under pytest, logging has handlers and Python's handler of last resort, which
    the command replaces, is never reached."""
    manifest = json.loads((signed / MANIFEST_NAME).read_text())
    (signed / MANIFEST_NAME).write_text(json.dumps(manifest, indent=4))  # not canonical: changed after signing
    inspected = subprocess.run([sys.executable, "-m", "edge_retina", "bundle", "inspect", str(signed)], cwd=REPO,
                               capture_output=True, text=True, env={**os.environ, "COLUMNS": str(COLUMNS)})
    assert inspected.returncode == 0, inspected.stderr
    assert widest_line(inspected.stderr) <= COLUMNS, inspected.stderr
    said = unwrapped(inspected.stderr)  # the warning alone, its lines joined
    assert said.startswith(unwrapped(f"warning: {signed}: manifest.json was changed after the bundle was signed"))
    assert said.endswith(unwrapped("rebuild the bundle and sign it again")), inspected.stderr


def test_signing_where_the_signature_cannot_be_written_is_one_message(bundle_copy, keys):
    (bundle_copy / "manifest.sig").mkdir()  # in the way, as a read-only bundle would be
    res = CliRunner().invoke(bundle_cli, ["sign", str(bundle_copy), "--key", str(keys["device"]["private"])])
    assert res.exit_code == 2 and isinstance(res.exception, SystemExit), res.output
    assert unwrapped(f"cannot sign {bundle_copy}: Is a directory; nothing was changed") in unwrapped(res.output)


def test_verify_with_an_unreadable_key_does_not_ask_for_keys(signed, tmp_path):
    res = CliRunner().invoke(bundle_cli, ["verify", str(signed), "--public-key", str(tmp_path / "missing.pub")])
    assert res.exit_code == 1 and unwrapped("cannot read key file") in unwrapped(res.output), res.output
    assert "NOT checked" not in res.output and "unsigned" not in res.output


def test_verify_without_keys_says_it_did_not_check_the_signature(bundle_copy, keys):
    runner = CliRunner()
    unsigned = runner.invoke(bundle_cli, ["verify", str(bundle_copy)])
    assert unsigned.exit_code == 0 and "NOT checked" not in unsigned.output, unsigned.output
    assert unwrapped("the bundle is unsigned: its files match its manifest, but an edited manifest cannot be "
                     "detected") in unwrapped(unsigned.output)
    assert unsigned.output.strip().splitlines()[-1] == "bundle verified (files only, unsigned)"
    sign_bundle(bundle_copy, load_private_key(keys["device"]["private"]))
    unchecked = runner.invoke(bundle_cli, ["verify", str(bundle_copy)])
    assert unchecked.exit_code == 0, unchecked.output
    assert unwrapped("signature was NOT checked: give --trusted-keys DIR") in unwrapped(unchecked.output)
    assert unchecked.output.strip().splitlines()[-1] == "bundle verified (files only, signature NOT checked)"
    checked = runner.invoke(bundle_cli, ["verify", str(bundle_copy), "--trusted-keys", str(keys["device"]["dir"])])
    assert checked.exit_code == 0 and "NOT checked" not in checked.output, checked.output


def test_screen_with_trusted_keys_refuses_a_bundle_they_did_not_sign(signed, keys):
    from edge_retina.cli.screen import screen

    manifest = json.loads((signed / MANIFEST_NAME).read_text())
    manifest["prompts"]["conditions"][1]["threshold"] = 0.01
    (signed / MANIFEST_NAME).write_bytes(canonical_json(manifest))  # an edit nothing detects without keys
    assert verify_bundle(signed).warnings == []
    for trusted_dir, message in [(keys["device"]["dir"], "signature does not match manifest.json"),
                                 (keys["other"]["dir"], "which is not trusted here")]:
        result = CliRunner().invoke(screen, ["no-photo.jpg", "--bundle", str(signed), "--trusted-keys", str(trusted_dir)])
        assert result.exit_code == 2 and unwrapped(message) in unwrapped(result.output), result.output


def test_the_bridge_with_trusted_keys_serves_only_a_bundle_they_signed(signed, keys, tmp_path):
    """`bridge hotfolder` (and `serve`, through the same Screener.from_bundle) checks the signature
    with --trusted-keys: refused with keys that did not sign it, served with the key that did."""
    from firmware_bridge.cli import bridge

    folder = tmp_path / "captures"
    folder.mkdir()
    args = ["hotfolder", str(folder), "--bundle", str(signed), "--once", "--trusted-keys"]
    refused = CliRunner().invoke(bridge, [*args, str(keys["other"]["dir"])])
    assert refused.exit_code == 2 and unwrapped("which is not trusted here") in unwrapped(refused.output), \
        refused.output  # refused with the status `screen` gives a bundle it refuses
    served = CliRunner().invoke(bridge, [*args, str(keys["device"]["dir"])])
    assert served.exit_code == 0, served.output


def test_altered_file_passes_the_signature_but_fails_verification(signed, keys):
    # The signature covers the manifest; the manifest's sha256s cover the files: both are checked.
    with open(signed / "prompts.npz", "r+b") as f:
        f.write(b"X")
    check_signature(signed, trusted(keys))
    result = CliRunner().invoke(bundle_cli, ["verify", str(signed), "--public-key", str(keys["device"]["public"])])
    assert result.exit_code == 1
    assert unwrapped("prompts.npz: expected sha256") in unwrapped(result.output) and "REFUSED" in result.output


def test_altered_signature_is_refused(signed, keys):
    record = json.loads((signed / SIGNATURE_NAME).read_text())
    raw = bytearray(base64.b64decode(record["signature"]))
    raw[0] ^= 1
    record["signature"] = base64.b64encode(bytes(raw)).decode()
    (signed / SIGNATURE_NAME).write_text(json.dumps(record))
    with pytest.raises(SignatureError, match="signature does not match"):
        check_signature(signed, trusted(keys))


@pytest.mark.parametrize("content, message", [
    (b"not json", "malformed JSON"),
    (b'{"algorithm": "rsa", "key_id": "0000000000000000", "signature": ""}', "unsupported signature algorithm"),
    (b'{"algorithm": "ed25519", "key_id": "0000000000000000", "signature": "AAAA"}', "is 64 bytes, got 3"),
    (b'{"algorithm": "ed25519", "key_id": "zz", "signature": "AAAA"}', "key_id must be 16 lowercase hex"),
    (b'{"algorithm": "ed25519", "key_id": "0000000000000000"}', "exactly the fields"),
])
def test_malformed_signature_file_is_refused(signed, keys, content, message):
    (signed / SIGNATURE_NAME).write_bytes(content)
    with pytest.raises(SignatureError, match=message):
        check_signature(signed, trusted(keys))


def test_signature_by_an_untrusted_key_is_refused(bundle_copy, keys):
    sign_bundle(bundle_copy, load_private_key(keys["other"]["private"]))
    with pytest.raises(SignatureError, match=f"signed by key {keys['other']['id']}, which is not trusted"):
        check_signature(bundle_copy, trusted(keys))


def test_signature_by_another_key_claiming_a_trusted_id_is_refused(bundle_copy, keys):
    sign_bundle(bundle_copy, load_private_key(keys["other"]["private"]))
    record = json.loads((bundle_copy / SIGNATURE_NAME).read_text())
    record["key_id"] = keys["device"]["id"]
    (bundle_copy / SIGNATURE_NAME).write_text(json.dumps(record))
    with pytest.raises(SignatureError, match=f"not made by key {keys['device']['id']}"):
        check_signature(bundle_copy, trusted(keys))


def test_trusted_keys_directory_must_hold_valid_keys(tmp_path, keys):
    with pytest.raises(SignatureError, match="does not exist"):
        TrustedKeys.from_directory(tmp_path / "absent")
    one_key = keys["device"]["public"]
    with pytest.raises(SignatureError, match=f"{one_key} is a file \\(give its folder, {one_key.parent}\\)"):
        TrustedKeys.from_directory(one_key)
    (tmp_path / "empty").mkdir()
    with pytest.raises(SignatureError, match=r"holds no \*.pub key"):
        TrustedKeys.from_directory(tmp_path / "empty")
    broken = tmp_path / "broken"
    shutil.copytree(keys["device"]["dir"], broken)
    (broken / "junk.pub").write_text("hello")
    with pytest.raises(SignatureError, match="junk.pub is not an Ed25519 public key"):
        TrustedKeys.from_directory(broken)


def test_only_a_verified_canonical_bundle_is_signed(bundle_copy, keys):
    key = load_private_key(keys["device"]["private"])
    manifest = json.loads((bundle_copy / MANIFEST_NAME).read_text())
    (bundle_copy / MANIFEST_NAME).write_text(json.dumps(manifest))  # same content, not canonical
    with pytest.raises(SignatureError, match="not in canonical form") as refused:
        sign_bundle(bundle_copy, key)
    [warning] = verify_bundle(bundle_copy).warnings
    for message in (str(refused.value), warning):  # what a CLI user can do, not Python API
        assert "`edge-retina convert`" in message and "write_bundle" not in message and "canonical_bytes" not in message
    (bundle_copy / MANIFEST_NAME).write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    (bundle_copy / "prompts.npz").write_bytes(b"changed")
    with pytest.raises(BundleError, match="prompts.npz"):
        sign_bundle(bundle_copy, key)
    assert not (bundle_copy / SIGNATURE_NAME).exists()


def test_write_bundle_refuses_a_file_named_like_the_signature(tiny_bundle, tmp_path):
    manifest = load_bundle(tiny_bundle).manifest
    files = {rel: tiny_bundle / rel for rel in manifest.files}
    with pytest.raises(BundleError, match="manifest.sig: the signature is added after writing"):
        write_bundle(tmp_path / "out", manifest, {**files, SIGNATURE_NAME: b"x"})


def test_read_small_members_refuses_oversized_members(tiny_bundle_archive):
    assert set(read_small_members(tiny_bundle_archive, {MANIFEST_NAME}, max_bytes=1 << 20)) == {MANIFEST_NAME}
    with pytest.raises(BundleError, match="more than 10"):
        read_small_members(tiny_bundle_archive, {MANIFEST_NAME}, max_bytes=10)


def test_cli_keygen_sign_verify(bundle_copy, tmp_path, keys):
    runner = CliRunner()
    result = runner.invoke(bundle_cli, ["keygen", "--private-key", str(tmp_path / "k.key"),
                                        "--public-key", str(tmp_path / "trust" / "k.pub")])
    assert result.exit_code == 0, result.output
    assert runner.invoke(bundle_cli, ["sign", str(bundle_copy), "--key", str(tmp_path / "k.key")]).exit_code == 0
    ok = runner.invoke(bundle_cli, ["verify", str(bundle_copy), "--trusted-keys", str(tmp_path / "trust")])
    assert ok.exit_code == 0 and unwrapped("signed by trusted key") in unwrapped(ok.output), ok.output
    wrong = runner.invoke(bundle_cli, ["verify", str(bundle_copy), "--json", "--public-key", str(keys["device"]["public"])])
    assert wrong.exit_code == 1
    assert "not trusted" in json.loads(wrong.output)["problems"][0]
    unsigned = runner.invoke(bundle_cli, ["verify", str(bundle_copy)])  # no keys asked for: hashes only
    assert unsigned.exit_code == 0
