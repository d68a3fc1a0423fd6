"""Ed25519 signatures of bundles: keys, signing, and checking a signature against trusted keys.

What is signed is manifest.json exactly as stored (its canonical bytes). The manifest pins every
other file by sha256, so a valid signature plus matching hashes (``load_bundle``/``verify_bundle``)
vouches for the whole bundle. The signature travels next to the manifest as ``manifest.sig``, in a
directory and in the ``.erb.tar`` archive alike (docs/BUNDLE_FORMAT.md, "Signatures").

A device trusts the public keys in one directory (``*.pub`` PEM files). A key's id is derived from
the key itself, never from its file name, so renaming a file cannot make one key pass for another.
The ``cryptography`` package does the cryptography (a base dependency: devices verify).
"""
from __future__ import annotations

import base64
import binascii
import hashlib
import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator, Mapping

from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import (
    Ed25519PrivateKey,
    Ed25519PublicKey,
)

from edge_retina.bundle.archive import extract_archive, read_small_members
from edge_retina.bundle.loader import load_bundle
from edge_retina.bundle.manifest import Manifest, canonical_json
from edge_retina.bundle.paths import (
    MANIFEST_NAME,
    MAX_MANIFEST_BYTES,
    MAX_SIGNATURE_BYTES,
    SIGNATURE_NAME,
)
from edge_retina.bundle.writer import pack_bundle
from edge_retina.errors import BundleError
from edge_retina.files import write_atomically

ALGORITHM = "ed25519"
PUBLIC_KEY_SUFFIX = ".pub"
KEY_ID_HEX_DIGITS = 16  # a lookup hint (the signature is checked with the key itself): 64 bits suffice
SIGNATURE_BYTES = 64  # RFC 8032, 5.1.6


class SignatureError(BundleError):
    """A bundle is unsigned, its signature is malformed or invalid, or its key is not trusted."""


@dataclass(frozen=True)
class BundleSignature:
    """The content of manifest.sig: which key signed, and the 64-byte Ed25519 signature."""

    key_id: str
    signature: bytes

    def to_bytes(self) -> bytes:
        return canonical_json({
            "algorithm": ALGORITHM,
            "key_id": self.key_id,
            "signature": base64.b64encode(self.signature).decode("ascii"),
        })

    @classmethod
    def from_bytes(cls, data: bytes, *, source: str) -> "BundleSignature":
        try:
            fields = json.loads(data.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise SignatureError(f"{source} is not a signature file (malformed JSON: {exc})") from None
        expected = {"algorithm", "key_id", "signature"}
        if not isinstance(fields, dict) or set(fields) != expected:
            got = sorted(fields) if isinstance(fields, dict) else type(fields).__name__
            raise SignatureError(f"{source}: a signature file has exactly the fields {sorted(expected)}, got {got}")
        if fields["algorithm"] != ALGORITHM:
            raise SignatureError(f"{source}: unsupported signature algorithm {fields['algorithm']!r} (only {ALGORITHM})")
        key = fields["key_id"]
        if not (isinstance(key, str) and len(key) == KEY_ID_HEX_DIGITS and all(c in "0123456789abcdef" for c in key)):
            raise SignatureError(f"{source}: key_id must be {KEY_ID_HEX_DIGITS} lowercase hex digits, got {key!r}")
        try:
            raw = base64.b64decode(fields["signature"], validate=True)
        except (binascii.Error, TypeError, ValueError):
            raise SignatureError(f"{source}: signature is not valid base64") from None
        if len(raw) != SIGNATURE_BYTES:
            raise SignatureError(f"{source}: an Ed25519 signature is {SIGNATURE_BYTES} bytes, got {len(raw)}")
        return cls(key_id=key, signature=raw)


# -- keys ------------------------------------------------------------------------------------------

def key_id(public_key: Ed25519PublicKey) -> str:
    """The key's id: the start of the sha256 of its raw 32 bytes."""
    raw = public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()[:KEY_ID_HEX_DIGITS]


def public_key_pem(private_key: Ed25519PrivateKey) -> bytes:
    """The public half of ``private_key`` as the PEM a trusted-keys folder holds."""
    return private_key.public_key().public_bytes(serialization.Encoding.PEM,
                                                 serialization.PublicFormat.SubjectPublicKeyInfo)


def generate_key_pair(private_path: str | os.PathLike[str], public_path: str | os.PathLike[str]) -> str:
    """Write a new private key (PKCS#8 PEM, mode 0600) and its public key (PEM); returns the key id.

    Refuses to overwrite either file: losing a signing key locks devices out of updates. Writes both
    or neither: both destinations are checked first, and the private key is removed again when the
    public key cannot be written (a private key without its public key signs bundles no device
    can be given the key for).
    """
    private_path, public_path = Path(private_path), Path(public_path)
    if private_path.resolve() == public_path.resolve():
        raise SignatureError(f"the private and the public key would both be written to {private_path}; "
                             "give two different paths")
    for path in (private_path, public_path):
        if path.exists():
            raise SignatureError(f"{path} already exists; refusing to overwrite a key")
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise SignatureError(f"cannot make the directory of {path} ({exc.strerror or exc}); nothing was written") from None
        if not os.access(path.parent, os.W_OK):
            raise SignatureError(f"cannot write {path}: its directory is not writable; nothing was written")
    private_key = Ed25519PrivateKey.generate()
    private_pem = private_key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    public_pem = public_key_pem(private_key)
    written: list[Path] = []
    try:
        fd = os.open(private_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        written.append(private_path)
        with os.fdopen(fd, "wb") as out:
            out.write(private_pem)
        with open(public_path, "xb") as out:
            written.append(public_path)
            out.write(public_pem)
    except OSError as exc:
        for path in written:
            path.unlink(missing_ok=True)
        raise SignatureError(f"cannot write {exc.filename or 'a key file'} ({exc.strerror or exc}); "
                             "nothing was written") from None
    return key_id(private_key.public_key())


def load_private_key(path: str | os.PathLike[str]) -> Ed25519PrivateKey:
    try:
        key = serialization.load_pem_private_key(_read_key_file(path), password=None)
    except (ValueError, TypeError, UnsupportedAlgorithm):  # not PEM, encrypted, or an unknown key type
        key = None
    if not isinstance(key, Ed25519PrivateKey):
        raise SignatureError(f"{path} is not an unencrypted Ed25519 private key in PEM (make one with `bundle keygen`)")
    return key


def load_public_key(path: str | os.PathLike[str]) -> Ed25519PublicKey:
    try:
        key = serialization.load_pem_public_key(_read_key_file(path))
    except (ValueError, UnsupportedAlgorithm):
        key = None
    if not isinstance(key, Ed25519PublicKey):
        raise SignatureError(f"{path} is not an Ed25519 public key in PEM")
    return key


def _read_key_file(path: str | os.PathLike[str]) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        raise SignatureError(f"cannot read key file {path} ({exc.strerror or exc})") from None


class TrustedKeys(Mapping[str, Ed25519PublicKey]):
    """The public keys a device accepts bundles from, by key id."""

    def __init__(self, keys: Iterable[Ed25519PublicKey], *, source: str):
        self._keys = {key_id(k): k for k in keys}
        self.source = source

    @classmethod
    def from_files(cls, paths: Iterable[str | os.PathLike[str]]) -> "TrustedKeys":
        paths = [Path(p) for p in paths]
        return cls([load_public_key(p) for p in paths], source=", ".join(map(str, paths)) or "no key files")

    @classmethod
    def from_directory(cls, directory: str | os.PathLike[str]) -> "TrustedKeys":
        """Every ``*.pub`` file of ``directory``; a malformed one is an error, not skipped."""
        directory = Path(directory)
        if directory.is_file():  # one key given where its folder is asked for
            raise SignatureError(f"--trusted-keys takes a directory of *{PUBLIC_KEY_SUFFIX} keys, and {directory} "
                                 f"is a file (give its folder, {directory.parent})")
        if not directory.is_dir():
            raise SignatureError(f"trusted-keys directory {directory} does not exist")
        keys = cls([load_public_key(p) for p in sorted(directory.glob(f"*{PUBLIC_KEY_SUFFIX}"))], source=str(directory))
        if not keys:
            raise SignatureError(f"trusted-keys directory {directory} holds no *{PUBLIC_KEY_SUFFIX} key")
        return keys

    def __getitem__(self, key: str) -> Ed25519PublicKey:
        return self._keys[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._keys)

    def __len__(self) -> int:
        return len(self._keys)


# -- signing ---------------------------------------------------------------------------------------

def sign_manifest(manifest_bytes: bytes, private_key: Ed25519PrivateKey, *, source: str) -> BundleSignature:
    """Sign manifest.json's bytes; they must be a valid manifest in canonical form."""
    manifest = Manifest.from_bytes(manifest_bytes, source=source)
    if manifest.canonical_bytes() != manifest_bytes:
        raise SignatureError(
            f"{source} is not in canonical form (edited by hand?), and a signature covers exact bytes: "
            "rebuild the bundle with the command that made it (`edge-retina convert`, `adapt` or "
            "`prompts build`), then sign it"
        )
    return BundleSignature(key_id=key_id(private_key.public_key()), signature=private_key.sign(manifest_bytes))


def sign_bundle(path: str | os.PathLike[str], private_key: Ed25519PrivateKey) -> BundleSignature:
    """Sign a bundle directory (writes manifest.sig) or archive (rewritten with manifest.sig in it).

    The bundle is verified first: signing vouches for files, so only a bundle whose files match its
    manifest is signed. An existing signature is replaced.
    """
    path = Path(path)
    if path.is_dir():
        load_bundle(path, verify=True)
        signature = sign_manifest((path / MANIFEST_NAME).read_bytes(), private_key, source=str(path / MANIFEST_NAME))
        write_atomically(path / SIGNATURE_NAME, signature.to_bytes())
        return signature
    if not path.is_file():
        raise BundleError(f"no bundle at {path}")
    with tempfile.TemporaryDirectory(prefix=".sign-", dir=path.parent) as work:
        unpacked = Path(work) / "bundle"
        unpacked.mkdir()
        extract_archive(path, unpacked)
        (unpacked / SIGNATURE_NAME).unlink(missing_ok=True)
        signature = sign_bundle(unpacked, private_key)
        pack_bundle(unpacked, path)
    return signature


def read_signed_parts(path: str | os.PathLike[str], *, name: str | os.PathLike[str] | None = None
                      ) -> tuple[bytes, bytes | None]:
    """(manifest.json bytes, manifest.sig bytes or None) of a bundle directory or archive; messages
    name the bundle ``name`` (default: ``path``), e.g. the one an install's staging copy was made of."""
    path = Path(path)
    shown = Path(name) if name is not None else path
    if path.is_dir():
        manifest_path, signature_path = path / MANIFEST_NAME, path / SIGNATURE_NAME
        if not manifest_path.is_file():
            raise BundleError(f"{shown} is not a bundle: it has no {MANIFEST_NAME}")
        manifest = _read_bounded(manifest_path, MAX_MANIFEST_BYTES, shown / MANIFEST_NAME)
        signature = (_read_bounded(signature_path, MAX_SIGNATURE_BYTES, shown / SIGNATURE_NAME)
                     if signature_path.is_file() else None)
        return manifest, signature
    if not path.is_file():
        raise BundleError(f"no bundle at {shown}")
    members = read_small_members(path, {MANIFEST_NAME, SIGNATURE_NAME}, max_bytes=MAX_MANIFEST_BYTES)
    if MANIFEST_NAME not in members:
        raise BundleError(f"{shown} is not a bundle: the archive has no {MANIFEST_NAME}")
    return members[MANIFEST_NAME], members.get(SIGNATURE_NAME)


def _read_bounded(path: Path, limit: int, shown: Path) -> bytes:
    # A directory entry that is a symlink is refused like in archives: the signed parts are the bundle's own.
    if path.is_symlink():
        raise BundleError(f"{shown} is a symbolic link; a bundle's manifest and signature must be regular files")
    with open(path, "rb") as stream:
        data = stream.read(limit + 1)
    if len(data) > limit:
        raise BundleError(f"{shown} is larger than {limit} bytes")
    return data


def check_signature(path: str | os.PathLike[str], trusted: Mapping[str, Ed25519PublicKey], *,
                    name: str | os.PathLike[str] | None = None) -> str:
    """Check that a bundle's manifest is signed by a trusted key; returns that key's id.

    Raises SignatureError naming what is wrong: unsigned, malformed signature, unknown key, or a
    signature that does not match (the manifest or the signature was altered, or another key
    signed). The files' hashes are checked separately (``load_bundle``/``verify_bundle``).
    Messages name the bundle ``name`` (default: ``path``).
    """
    manifest_bytes, signature_bytes = read_signed_parts(path, name=name)
    shown = name if name is not None else path
    if signature_bytes is None:
        raise SignatureError(f"{shown} is not signed (no {SIGNATURE_NAME}); sign it with `edge-retina bundle sign`")
    signature = BundleSignature.from_bytes(signature_bytes, source=f"{shown}: {SIGNATURE_NAME}")
    public_key = trusted.get(signature.key_id)
    if public_key is None:
        where = getattr(trusted, "source", "the trusted keys")
        raise SignatureError(
            f"{shown} is signed by key {signature.key_id}, which is not trusted here ({where} has "
            f"{', '.join(sorted(trusted)) or 'no keys'})"
        )
    try:
        public_key.verify(signature.signature, manifest_bytes)
    except InvalidSignature:
        raise SignatureError(
            f"{shown}: the signature does not match {MANIFEST_NAME} (the manifest or its signature was "
            f"altered after signing, or it was not made by key {signature.key_id})"
        ) from None
    return signature.key_id
