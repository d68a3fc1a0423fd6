"""Hostile bundles (issue 14): a bundle is exactly its manifest, its signature and the files the
manifest lists, in both forms; every file's content is checked when it is loaded."""
from __future__ import annotations

import hashlib
import json
import shutil
import tarfile
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from hostile_archives import SPARSE_4GIB, append_members

from edge_retina.bundle import load_bundle, pack_bundle, verify_bundle
from edge_retina.bundle.signing import TrustedKeys, generate_key_pair, load_private_key, sign_bundle
from edge_retina.cli.main import cli
from edge_retina.errors import BundleError
from edge_retina.install import install_bundle
from edge_retina.install.state import SLOTS_DIR
from narrow_terminal import unwrapped


@pytest.fixture(scope="module")
def signed(tiny_bundle, tmp_path_factory):
    """A signed copy of the tiny bundle (directory and archive) and the keys that trust it."""
    root = tmp_path_factory.mktemp("hostile-bundles")
    generate_key_pair(root / "k.key", root / "trusted" / "k.pub")
    directory = shutil.copytree(tiny_bundle, root / "bundle")
    sign_bundle(directory, load_private_key(root / "k.key"))
    archive = pack_bundle(directory, root / "bundle.erb.tar")
    return directory, archive, TrustedKeys.from_directory(root / "trusted")


def _refused_everywhere(archive: Path, tmp_path: Path, trusted, match: str) -> None:
    report = verify_bundle(archive)
    assert not report.ok and any(match in p for p in report.problems), report
    with pytest.raises(BundleError, match=match):
        install_bundle(tmp_path / "root", archive, trusted)
    assert not any((tmp_path / "root" / SLOTS_DIR).iterdir())
    with pytest.raises(BundleError, match=match):
        load_bundle(archive, cache_dir=tmp_path / "cache")
    assert sum(f.stat().st_size for f in (tmp_path / "cache").rglob("*") if f.is_file()) == 0


def test_unlisted_member_is_refused_not_installed(signed, tmp_path):
    _, archive, trusted = signed
    hostile = append_members(archive, tmp_path / "extra.erb.tar", {"engines/extra.so": b"\x7fELF"})
    _refused_everywhere(hostile, tmp_path, trusted, "not listed")


def test_thousands_of_junk_members_are_refused_before_extraction(signed, tmp_path):
    _, archive, trusted = signed
    hostile = append_members(archive, tmp_path / "junk.erb.tar", {f"junk/{i}.bin": b"x" for i in range(300)})
    _refused_everywhere(hostile, tmp_path, trusted, "and 295 more")  # named briefly


def test_sparse_member_declaring_gigabytes_is_refused(signed, tmp_path):
    """A 4 GiB member stored in 512 bytes (PAX sparse map, as GNU tar --sparse writes it)."""
    _, archive, trusted = signed
    hostile = append_members(archive, tmp_path / "bomb.erb.tar", {"bomb.bin": bytes(512)}, {"bomb.bin": SPARSE_4GIB})
    with tarfile.open(hostile) as tar:
        assert tar.getmember("bomb.bin").size == 4 << 30
    _refused_everywhere(hostile, tmp_path, trusted, "sparse member")


def test_symlinked_signature_is_refused_by_install_as_by_verify(signed, tmp_path):
    directory, _, trusted = signed
    copy = shutil.copytree(directory, tmp_path / "linked")
    (tmp_path / "elsewhere.sig").write_bytes((copy / "manifest.sig").read_bytes())
    (copy / "manifest.sig").unlink()
    (copy / "manifest.sig").symlink_to(tmp_path / "elsewhere.sig")
    with pytest.raises(BundleError, match="symbolic link"):
        install_bundle(tmp_path / "root", copy, trusted)


@pytest.mark.parametrize("content", [b"PK\x03\x04 not a zip at all", np.zeros(3).tobytes()], ids=["bad-zip", "junk"])
def test_corrupt_prompt_table_with_a_matching_hash_is_a_refused_bundle(tiny_bundle, tmp_path, retina_jpeg, content):
    """An unsigned manifest can be edited to match any file: the content itself must be checked."""
    bundle = shutil.copytree(tiny_bundle, tmp_path / "b")
    manifest = json.loads((bundle / "manifest.json").read_text())
    prompts = manifest["prompts"]["file"]
    (bundle / prompts).write_bytes(content)
    manifest["files"][prompts] = hashlib.sha256(content).hexdigest()
    (bundle / "manifest.json").write_text(json.dumps(manifest))
    res = CliRunner().invoke(cli, ["screen", str(retina_jpeg), "--bundle", str(bundle)])
    assert res.exit_code == 2 and unwrapped("prompt table") in unwrapped(res.output), res.output
    assert res.exception is None or isinstance(res.exception, SystemExit)
