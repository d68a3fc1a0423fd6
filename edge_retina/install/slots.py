"""A/B installs: install a signed bundle into the inactive slot, start with a self-test, roll back.

Layout of an install root::

    root/state.json      which slot is active, which is the fallback, what is on trial (state.py)
    root/slots/a/        a bundle directory
    root/slots/b/        the other one
    root/.lock           serialises installs, starts and rollbacks between processes

Install: the new bundle is copied or extracted into a private staging directory, fsynced, and
checked there (signature by a trusted key, every file's sha256, a self-test present), so what is
checked is exactly what will run. It then replaces the inactive slot by renames, and state.json is
switched to it, marked as on trial. Start: a slot on trial runs its self-test first; if that fails
(or the slot keeps dying before finishing it), state.json is switched back to the previous slot,
which the install never touched. A slot already known good is checked again at every start (its
manifest against the one installed, every file's sha256, and the signature when trusted keys are
given), since storage can rot or be edited; a damaged one is rolled back from the same way. Until
the switch, a power cut leaves the previous bundle active; after it, the next start tests the new
one. Each step calls ``on_step(name)`` when it is done, so tests can cut the power at every one of
them.
"""
from __future__ import annotations

import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Mapping

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from edge_retina.bundle import load_bundle, verify_bundle
from edge_retina.bundle.archive import extract_archive
from edge_retina.bundle.loader import load_copy
from edge_retina.bundle.paths import MANIFEST_NAME, SIGNATURE_NAME
from edge_retina.bundle.signing import check_signature, read_signed_parts
from edge_retina.errors import BundleError
from edge_retina.files import copy_and_hash, sha256_file
from edge_retina.install.state import (
    GOOD,
    LOCK_FILE,
    REJECTED,
    SLOT_NAMES,
    SLOTS_DIR,
    TRIAL,
    InstallError,
    InstallState,
    SlotRecord,
    fsync_directory,
    fsync_tree,
    locked,
    read_state,
    slot_path,
    utc_now,
    write_state,
)
from edge_retina.selftest import EXPECTED_FILE, SelftestResult, run_selftest

# A slot on trial that was started this many times without finishing its self-test (it hangs or
# crashes the process) is rolled back, like a boot counter in an A/B bootloader.
MAX_TRIAL_STARTS = 3
STAGING_PREFIX = ".staging-"
TRASH_PREFIX = ".trash-"

StepHook = Callable[[str], None]


@dataclass(frozen=True)
class InstallReport:
    slot: str
    path: Path
    key_id: str
    manifest_sha256: str


@dataclass(frozen=True)
class StartReport:
    slot: str
    path: Path  # the bundle directory to screen with
    rolled_back_from: str | None = None  # the slot that failed its self-test or check, when a rollback happened
    # The self-test of a slot on trial, or the failed check of a known-good slot that was rolled back
    # from; None when the active slot was known good and passed its check.
    selftest: SelftestResult | None = None


def install_bundle(
    root: str | Path,
    source: str | Path,
    trusted: Mapping[str, Ed25519PublicKey],
    *,
    on_step: StepHook | None = None,
) -> InstallReport:
    """Install the bundle directory or archive ``source`` into the inactive slot, on trial.

    Refuses (BundleError, SignatureError, InstallError) before touching any slot when the bundle is
    unsigned or signed by an untrusted key, altered, unsafe to extract, or has no self-test.
    """
    root, source = Path(root), Path(source)
    step = on_step or (lambda name: None)
    if root.exists() and not root.is_dir():
        raise InstallError(f"{root} is not a directory: an install root is a directory (it is made if missing)")
    try:
        (root / SLOTS_DIR).mkdir(parents=True, exist_ok=True)
        (root / LOCK_FILE).touch()  # locked() opens it: an unwritable root fails here, with this message
    except OSError as exc:
        raise InstallError(f"cannot use {root} as an install root ({exc.strerror or exc}): give a directory "
                           "this user can write, or one that does not exist yet") from None
    with locked(root):
        state = read_state(root)
        if state.on_trial:
            raise InstallError(
                f"slot {state.active} in {root} is still on trial (its self-test has not passed); "
                "start it (`edge-retina bundle start`) or roll it back before installing another bundle"
            )
        _remove_leftovers(root)
        target = next(name for name in SLOT_NAMES if name != state.active)

        staging = Path(tempfile.mkdtemp(dir=root, prefix=STAGING_PREFIX))
        staging.chmod(0o755)  # mkdtemp makes it private; the screening service may run as another user
        step("staging-created")
        try:
            key_id = _stage(source, staging, trusted, step)
        except Exception:
            shutil.rmtree(staging, ignore_errors=True)
            raise
        step("staging-verified")

        if state.previous == target:  # its content is about to go: stop pointing at it first
            state.previous = None
            write_state(root, state)
            step("fallback-detached")
        destination = slot_path(root, target)
        if destination.exists():
            destination.rename(root / f"{TRASH_PREFIX}{target}")
            fsync_directory(destination.parent)
            step("old-slot-moved")
        staging.rename(destination)
        fsync_directory(destination.parent)
        fsync_directory(root)
        step("slot-placed")

        manifest_sha256 = sha256_file(destination / MANIFEST_NAME)
        state.slots[target] = SlotRecord(status=TRIAL, manifest_sha256=manifest_sha256, key_id=key_id,
                                         installed=utc_now(), source=str(source))
        state.previous, state.active, state.trial_starts = state.active, target, 0
        write_state(root, state)  # the switch
        step("switched")
        _remove_leftovers(root)
        step("cleaned")
    return InstallReport(slot=target, path=destination, key_id=key_id, manifest_sha256=manifest_sha256)


def start(
    root: str | Path,
    *,
    trusted: Mapping[str, Ed25519PublicKey] | None = None,
    backend: str | None = None,
    precision: str | None = None,
    device: str | None = None,
    on_step: StepHook | None = None,
) -> StartReport:
    """The bundle to run, after the self-test of a slot on trial (rolled back when it fails).

    Call it when the device starts, before opening a Screener on the returned path. ``backend``,
    ``precision`` and ``device`` choose the engine to test: pass what the screener will use.
    ``trusted`` re-checks the signature of the slot started too. A slot already known good is
    checked again (``_check_slot``) and rolled back from when damaged. That reads and hashes every
    file of the slot once per start, so a start costs about the time to read the bundle from its
    storage. Raises InstallError when nothing usable is installed, or when neither the active slot
    nor the fallback passes its check (then nothing is changed, so fixing the cause recovers).
    """
    root = Path(root)
    step = on_step or (lambda name: None)
    _require_installed(root)
    with locked(root):
        state = read_state(root)
        if state.active is None:
            raise InstallError(f"no working bundle is installed in {root}: {_rejections(state)}")
        _remove_leftovers(root)
        active = state.active
        if not state.on_trial:
            return _start_known_good(root, state, trusted, step)

        state.trial_starts += 1
        write_state(root, state)  # counted before the attempt, so a crash during it still counts
        step("trial-counted")
        result = _trial(root, state, trusted, backend=backend, precision=precision, device=device)
        step("selftest-done")
        record = state.slots[active]
        record.note = result.message
        if result.passed:
            record.status, state.trial_starts = GOOD, None
            write_state(root, state)
            step("confirmed")
            return StartReport(slot=active, path=slot_path(root, active), selftest=result)

        record.status, state.trial_starts = REJECTED, None
        state.active, state.previous = state.previous, None
        write_state(root, state)
        step("rolled-back")
        if state.active is None:
            raise InstallError(f"the bundle in slot {active} failed its self-test and there is no previous "
                               f"bundle to return to: {result.message}")
        return StartReport(slot=state.active, path=slot_path(root, state.active), rolled_back_from=active,
                           selftest=result)


def rollback(root: str | Path) -> InstallState:
    """Switch back to the previous slot by hand; the slot left becomes the fallback if it was good."""
    root = Path(root)
    _require_installed(root)
    with locked(root):
        state = read_state(root)
        if state.previous is None:
            raise InstallError(f"{root} has no previous bundle to roll back to")
        damage = _check_slot(root, state, state.previous, None)
        if damage is not None:
            raise InstallError(f"the previous bundle (slot {state.previous}) is damaged, not switching to it: {damage}")
        left = state.active
        if state.on_trial:
            state.slots[left].status = REJECTED
            state.slots[left].note = "rolled back by hand while on trial"
            state.active, state.previous, state.trial_starts = state.previous, None, None
        else:
            state.active, state.previous = state.previous, left
        write_state(root, state)
        return state


def read_status(root: str | Path) -> InstallState:
    """The root's current state (what `edge-retina bundle status` shows)."""
    root = Path(root)
    _require_installed(root)
    return read_state(root)


def _require_installed(root: Path) -> None:
    if not (root / SLOTS_DIR).is_dir():
        raise InstallError(f"no bundle is installed in {root} (install one with `edge-retina bundle install`)")


def _start_known_good(root: Path, state: InstallState, trusted, step: StepHook) -> StartReport:
    """The active slot when it passes its check; else the previous slot when that one does (the active
    one is rejected, like a slot failing its self-test); else InstallError, with the state left as it
    was: a check can fail for a reason that is not damage (a --trusted-keys folder without the signing
    key, storage not yet mounted, a read error), and marking both slots rejected would leave nothing to
    start once that is fixed."""
    active = state.active
    damage = _check_slot(root, state, active, trusted)
    if damage is None:
        return StartReport(slot=active, path=slot_path(root, active))
    fallback = state.previous
    fallback_damage = None if fallback is None else _check_slot(root, state, fallback, trusted)
    if fallback is None or fallback_damage is not None:
        other = "there is no previous bundle" if fallback is None else f"so does slot {fallback} ({fallback_damage})"
        raise InstallError(f"the bundle in slot {active} fails its check ({damage}) and {other}; nothing was "
                           "changed: fix the cause and start again, or install a bundle with "
                           "`edge-retina bundle install`")
    failed = SelftestResult(passed=False, message=f"check FAILED: {damage}")
    state.slots[active].status, state.slots[active].note = REJECTED, failed.message
    state.active, state.previous = fallback, None
    write_state(root, state)
    step("rolled-back")
    return StartReport(slot=fallback, path=slot_path(root, fallback), rolled_back_from=active, selftest=failed)


def _check_slot(root: Path, state: InstallState, name: str, trusted, *, hash_files: bool = True) -> str | None:
    """What is wrong with slot ``name``, or None: (with ``trusted``) its signature does not match, its
    manifest is not the one installed (this needs no key), or (``hash_files``) a file does not match
    the manifest."""
    path = slot_path(root, name)
    record = state.slots.get(name)
    try:
        if trusted is not None:
            check_signature(path, trusted)
        if record is not None and sha256_file(path / MANIFEST_NAME) != record.manifest_sha256:
            return f"its {MANIFEST_NAME} was changed after it was installed"
    except BundleError as exc:
        return str(exc)
    except OSError as exc:
        return f"cannot read its {Path(exc.filename or MANIFEST_NAME).name} ({exc.strerror or exc})"
    return ("; ".join(verify_bundle(path).problems) or None) if hash_files else None


def _trial(root: Path, state: InstallState, trusted, **engine_options) -> SelftestResult:
    if state.trial_starts > MAX_TRIAL_STARTS:
        return SelftestResult(passed=False, message=(
            f"self-test FAILED: started {MAX_TRIAL_STARTS} times on trial without finishing its self-test"))
    # The self-test opens the bundle as a Screener, whose load hashes every file: hashing them here
    # too would read the whole slot twice.
    damage = _check_slot(root, state, state.active, trusted, hash_files=False)
    if damage is not None:
        return SelftestResult(passed=False, message=f"self-test FAILED: {damage}")
    return run_selftest(slot_path(root, state.active), **engine_options)


def _stage(source: Path, staging: Path, trusted: Mapping[str, Ed25519PublicKey], step: StepHook) -> str:
    """Copy ``source`` into ``staging`` durably and check the copy; returns the signing key's id."""
    _fill_staging(source, staging)
    fsync_tree(staging)
    step("staging-written")
    key_id = check_signature(staging, trusted, name=source)
    manifest = load_copy(staging, source).manifest
    if EXPECTED_FILE not in manifest.files:
        raise InstallError(
            f"{source} has no self-test ({EXPECTED_FILE}); a device only installs bundles it can test "
            "(the converter adds them: converters/selftest_files.py)"
        )
    return key_id


def _fill_staging(source: Path, staging: Path) -> None:
    """Copy the bundle at ``source`` into ``staging``: an archive through the safe extractor, a
    directory as its manifest, signature and the files the manifest lists (nothing else)."""
    if source.is_dir():
        bundle = load_bundle(source, verify=False)  # refuses listed files that lead outside it
        # Read like `bundle verify` reads them: a symlinked manifest or signature is refused.
        manifest_bytes, signature_bytes = read_signed_parts(source)
        (staging / MANIFEST_NAME).write_bytes(manifest_bytes)
        if signature_bytes is not None:
            (staging / SIGNATURE_NAME).write_bytes(signature_bytes)
        for name in sorted(bundle.manifest.files):
            target = staging / name
            target.parent.mkdir(parents=True, exist_ok=True)
            with open(bundle.path_of(name), "rb") as stream:
                copy_and_hash(stream, target)
    elif source.is_file():
        extract_archive(source, staging)
    else:
        raise BundleError(f"no bundle at {source}")


def _remove_leftovers(root: Path) -> None:
    """Staging and trash directories of an install that was cut short (the lock is held)."""
    for leftover in [*root.glob(f"{STAGING_PREFIX}*"), *root.glob(f"{TRASH_PREFIX}*")]:
        shutil.rmtree(leftover, ignore_errors=True)


def _rejections(state: InstallState) -> str:
    rejected = [f"slot {name}: {record.note}" for name, record in sorted(state.slots.items()) if record.status == REJECTED]
    return "; ".join(rejected) or "nothing was installed"
