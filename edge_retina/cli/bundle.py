"""``edge-retina bundle ...``: inspect and verify bundles, sign them, and install them on a device
(keygen, sign, verify, install, start, status, rollback)."""
from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import click
from rich.console import Console
from rich.table import Table
from rich.text import Text

from edge_retina.bundle import EngineEntry, Manifest, examine_bundle, verify_bundle
from edge_retina.command_error import fail, print_labelled
from edge_retina.console_tables import print_wrapped, rich_table
from edge_retina.bundle.signing import (
    TrustedKeys,
    check_signature,
    generate_key_pair,
    load_private_key,
    sign_bundle,
)
from edge_retina.bundle.trusted_keys_option import trusted_keys_option
from edge_retina.errors import BundleError, EdgeRetinaError
from edge_retina.wording import plural

if TYPE_CHECKING:
    from edge_retina.install import StartReport

# The install commands import edge_retina.install (which opens screeners for self-tests) when they run:
# inspect/verify/sign stay quick to start.

BUNDLE_PATH = click.Path(path_type=Path)


@click.group()
def bundle() -> None:
    """Inspect, verify, sign and install bundles."""


@bundle.command()
@click.argument("path", type=BUNDLE_PATH)
@click.option("--json", "as_json", is_flag=True,
              help='Print the manifest as JSON, with a "damage" list (empty when intact).')
def inspect(path: Path, as_json: bool) -> None:
    """Show a bundle's model, input spec, engines, conditions and provenance, then any damage (a
    file missing or not matching its sha256, an archive cut short). Exit status 1 when damaged."""
    try:
        manifest, report = examine_bundle(path)
    except BundleError as exc:  # no valid manifest: nothing to show
        fail(exc)
    for warning in report.warnings:
        print_labelled("warning", f"{path}: {warning}")
    if as_json:
        click.echo(json.dumps({**manifest.to_dict(), "damage": report.problems}, indent=2, sort_keys=True))
    else:
        console = Console()
        _show_manifest(console, path, manifest)
        for problem in report.problems:
            print_wrapped(console, Text.assemble(("  damaged", "red"), f"  {problem}"))
        if report.problems:
            print_wrapped(console, Text(f"bundle DAMAGED ({plural(len(report.problems), 'problem')}): it will not "
                                        "load or install", style="red"))
    if report.problems:
        sys.exit(1)


def _show_manifest(console: Console, path: Path, manifest: Manifest) -> None:
    """What ``bundle inspect`` prints of the manifest of the bundle at ``path``."""
    m = manifest.to_dict()
    model = m["model"]
    print_wrapped(console, Text.assemble((str(path), "bold"), f"  schema v{m['schema_version']}"))
    print_wrapped(console, f"model: {model.get('family')} / {model.get('name')}  "
                           f"teacher sha256 {str(model.get('teacher_checkpoint_sha256'))[:16]}"
                           + (f"  student {model['student'].get('name')}" if model.get("student") else ""))
    spec = m["input"]
    print_wrapped(
        console,
        f"input: {spec['size'][0]}x{spec['size'][1]} {spec['resize_mode']} ({spec['interpolation']}), "
        f"FoV crop {'on' if spec['fov_crop'] else 'off'}, {spec['colour_order']}, scale {spec['scale']:.6g}, "
        f"mean {spec['mean']}, std {spec['std']}"
    )
    engines = [[e["backend"], e["precision"], e.get("role", ""), e.get("device_profile") or "-",
                f"{(e.get('calibration') or {}).get('method')} n={(e.get('calibration') or {}).get('size')}"
                if e.get("calibration") else "-", e["files"][0]] for e in m["engines"]]
    console.print(rich_table("engines", ["backend", "precision", "role", "device profile", "calibration", "file"],
                             engines))
    for engine in manifest.engines:
        verdict = _guard_verdict(engine)
        if verdict:
            print_wrapped(console, f"{engine.describe()}: {verdict}")
    prompts = m["prompts"]
    conditions = []
    for c in prompts["conditions"]:
        normal = c["name"] == prompts["normal_class"]
        conditions.append([c["name"] + (" (normal)" if normal else ""), str(len(c["prompts"])),
                           "-" if normal else f"{c['threshold']:.3f}", "" if normal else c.get("threshold_source", "")])
    console.print(rich_table(f"conditions (ensembling: {prompts['ensembling']}, logit scale {m['logit_scale']:.4g})",
                             ["condition", "prompts", "threshold", "threshold source"], conditions, wrap_last=True))
    distillation = (model.get("student") or {}).get("distillation") or {}
    if isinstance(distillation.get("conditions"), dict):  # free-form JSON: shown only in the shape convert writes
        console.print(_distillation_table(distillation))
    if manifest.adaptation is not None:
        console.print(_adaptation_table(manifest.adaptation))
    prov = m["provenance"]
    print_wrapped(console, f"built by {prov.get('tool')} {prov.get('tool_version')} on {prov.get('created')}: "
                           f"{prov.get('command')}")


def _guard_verdict(engine: EngineEntry) -> str | None:
    """What the converter's accuracy guard said of an engine, in a line: what was asked for and
    shipped, on how many photos, how close the closest check came, and on which CPU it measured."""
    guard = engine.accuracy_guard
    if not guard or engine.precision == "fp32" and not engine.fallback:
        return None
    if engine.fallback:
        failed = len(engine.fallback.get("attempts") or [None]) - 1  # the last attempt is what shipped
        parts = [f"{engine.fallback.get('requested')} requested; {plural(failed, 'attempt')} failed the "
                 f"accuracy guard, {engine.precision} shipped"]
    else:
        checks = [c for c in guard.get("checks") or [] if isinstance(c, dict) and "margin" in c]
        closest = min(checks, key=lambda c: c["margin"], default=None)
        parts = [f"passed the accuracy guard on {guard.get('images', 0):,} photos"
                 + (f" (closest: {closest['check']}, margin {closest['margin']:+.4f})" if closest else "")]
    measured = engine.guard_measured_on
    if measured:
        kernels = measured.get("int8_kernels")
        parts.append(f"measured on {measured.get('cpu_model') or 'an unknown CPU'}"
                     + (f" ({kernels} INT8 kernels)" if kernels else ""))
    return "; ".join(parts)


def _adaptation_table(adaptation) -> Table:
    """The site adaptation overlay (edge-retina adapt): per condition, its head and threshold."""
    from edge_retina.adapt.overlay import SUMMARY_HEADERS, adaptation_summary

    made = adaptation.provenance
    return rich_table(f"site adaptation ({adaptation.method}, target sensitivity "
                      f"{adaptation.target_sensitivity:.0%}; {plural(made.get('photos_used'), 'photo')} of "
                      f"{made.get('labels_file')} sha256 {str(made.get('labels_sha256'))[:12]}, {made.get('created')})",
                      SUMMARY_HEADERS, adaptation_summary(adaptation.conditions), wrap_last=True)


def _distillation_table(report: dict) -> Table:
    """The student's report card from the manifest: how much of the teacher's skill it keeps."""
    from edge_retina.bench import metrics

    def number(value, digits=3):
        return f"{value:.{digits}f}" if isinstance(value, (int, float)) else "-"

    profile = report.get("profile") if isinstance(report.get("profile"), dict) else {}
    speed = f", {number(profile.get('speedup'), 1)}x faster (FP32, medians)" if profile.get("speedup") else ""
    rows, label_counts = [], []
    for name, c in report["conditions"].items():
        c = c if isinstance(c, dict) else {}
        counts = (c.get("n_pos"), c.get("n_neg"))
        counted = all(isinstance(n, int) for n in counts)
        if counted:
            label_counts.append(counts)
        aurocs = [metrics.format_auroc(v, *counts, digits=3) if counted and isinstance(v, (int, float)) else number(v)
                  for v in (c.get("auroc_teacher"), c.get("auroc_student"))]
        agreement = c.get("decision_agreement")
        rows.append([name, f"{c.get('n_pos')}/{c.get('n_neg')}", *aurocs, number(c.get("retention"), 2),
                     f"{number(agreement * 100, 1)} %" if isinstance(agreement, (int, float)) else "-"])
    return rich_table(f"student vs teacher on {report.get('held_out_images')} held-out images{speed}; AUROC, "
                      "retention of its skill, decisions that agree with the teacher's",
                      ["condition", "pos/neg", "teacher", "student", "retention", "agree"], rows,
                      footnote=metrics.few_labels_footnote(label_counts))


@bundle.command()
@click.argument("path", type=BUNDLE_PATH)
@click.option("--json", "as_json", is_flag=True)
@click.option("--public-key", "public_keys", type=BUNDLE_PATH, multiple=True,
              help="Also require a signature by this public key (repeatable).")
@trusted_keys_option()
def verify(path: Path, as_json: bool, public_keys: tuple[Path, ...], trusted_dir: Path | None) -> None:
    """Check the manifest and every file's sha256, and with keys given the signature.
    Exit status 1 when anything is wrong."""
    report = verify_bundle(path)
    problems, signed_by, trusted = list(report.problems), None, None
    try:
        trusted = _trusted_keys(public_keys, trusted_dir)
        if trusted is not None:
            signed_by = check_signature(path, trusted)
    except EdgeRetinaError as exc:
        problems.append(str(exc))
    ok = not problems
    # Without a public key a signature cannot be checked, and without a signature an edited manifest
    # (a threshold, a condition) matches itself: "verified" must not read as "authentic".
    keys_given = bool(public_keys) or trusted_dir is not None  # a key that cannot be read is a problem below
    unchecked = report.signed and not keys_given
    unsigned = not report.signed and not keys_given
    if as_json:
        click.echo(json.dumps({"ok": ok, "problems": problems, "warnings": report.warnings,
                               "checked": report.checked, "signed": report.signed, "signed_by": signed_by},
                              indent=2))
    else:
        console = Console()
        for name, sha in sorted(report.checked.items()):
            print_wrapped(console, f"  ok  {sha[:16]}…  {name}")
        for warning in report.warnings:
            print_wrapped(console, Text.assemble(("  warning", "yellow"), f"  {warning}"))
        if signed_by is not None:
            print_wrapped(console, f"  ok  signed by trusted key {signed_by}")
        if unchecked:
            print_wrapped(console, Text.assemble(("  note", "yellow"), "  the bundle is signed but its signature was "
                                                 "NOT checked: give --trusted-keys DIR (or --public-key FILE)"))
        if unsigned:
            print_wrapped(console, Text.assemble(("  note", "yellow"), "  the bundle is unsigned: its files match its "
                                                 "manifest, but an edited manifest cannot be detected; sign it "
                                                 "with `edge-retina bundle sign`"))
        for problem in problems:
            print_wrapped(console, Text.assemble(("  problem", "red"), f"  {problem}"))
        verdict = ("bundle verified (files only, signature NOT checked)" if unchecked
                   else "bundle verified (files only, unsigned)" if unsigned else "bundle verified")
        console.print(f"[green]{verdict}[/]" if ok else "[red]bundle REFUSED[/]")
    sys.exit(0 if ok else 1)


# -- signatures ------------------------------------------------------------------------------------

def _trusted_keys(public_keys: tuple[Path, ...], trusted_dir: Path | None) -> TrustedKeys | None:
    """The keys given on the command line (files and/or a directory), or None when none were."""
    if not public_keys and trusted_dir is None:
        return None
    keys = dict(TrustedKeys.from_files(public_keys))
    if trusted_dir is not None:
        keys.update(TrustedKeys.from_directory(trusted_dir))
    sources = [str(p) for p in public_keys] + ([str(trusted_dir)] if trusted_dir else [])
    return TrustedKeys(keys.values(), source=", ".join(sources))


@bundle.command()
@click.option("--private-key", type=BUNDLE_PATH, required=True, help="Where to write the private key (mode 0600).")
@click.option("--public-key", type=BUNDLE_PATH, required=True, help="Where to write the public key (give it to devices).")
def keygen(private_key: Path, public_key: Path) -> None:
    """Make an Ed25519 key pair for signing bundles."""
    try:
        identifier = generate_key_pair(private_key, public_key)
    except EdgeRetinaError as exc:
        fail(exc)
    print_wrapped(Console(), f"key {identifier}: private {private_key}, public {public_key}")


@bundle.command()
@click.argument("path", type=BUNDLE_PATH)
@click.option("--key", "key_path", type=BUNDLE_PATH, required=True, help="The private key (from `bundle keygen`).")
def sign(path: Path, key_path: Path) -> None:
    """Sign a bundle directory or archive (adds manifest.sig; an archive is rewritten in place)."""
    try:
        signature = sign_bundle(path, load_private_key(key_path))
    except EdgeRetinaError as exc:
        fail(exc)
    except OSError as exc:  # a read-only bundle: the signature (and an archive's new copy) cannot be written
        fail(f"cannot sign {path}: {exc.strerror or exc}; nothing was changed")
    print_wrapped(Console(), f"signed {path} with key {signature.key_id}")


# -- installs --------------------------------------------------------------------------------------

INSTALL_ROOT = click.option("--root", type=BUNDLE_PATH, required=True, help="The install root (holds slots a and b).")


@bundle.command()
@click.argument("source", type=BUNDLE_PATH)
@INSTALL_ROOT
@trusted_keys_option(required=True)
@click.option("--no-start", is_flag=True, help="Only install (on trial); the next `bundle start` runs the self-test.")
@click.option("--backend", default=None, help="Engine backend the self-test runs (default: the screener's choice).")
def install(source: Path, root: Path, trusted_dir: Path, no_start: bool, backend: str | None) -> None:
    """Install a signed bundle into the inactive slot, then start it (self-test, rollback on failure).

    Exit status 2 when the bundle is refused, 3 when it failed its self-test and was rolled back."""
    from edge_retina.install import install_bundle, start

    try:
        trusted = TrustedKeys.from_directory(trusted_dir)
        report = install_bundle(root, source, trusted)
        print_wrapped(Console(), f"installed {source} into slot {report.slot} (key {report.key_id}), on trial")
        started = None if no_start else start(root, trusted=trusted, backend=backend)
    except EdgeRetinaError as exc:
        fail(exc)
    if started is not None:
        _report_start(started)
        if started.rolled_back_from is not None:  # the new bundle failed: the install did not take
            sys.exit(3)


@bundle.command(name="start")
@INSTALL_ROOT
@trusted_keys_option()
@click.option("--backend", default=None, help="Engine backend the self-test runs (default: the screener's choice).")
def start_command(root: Path, trusted_dir: Path | None, backend: str | None) -> None:
    """Resolve the bundle to run: self-test a new one, re-check a known one; roll back if it fails.

    A known one's files are checked against its manifest (and its signature with --trusted-keys).
    Prints the bundle directory to screen with on stdout (messages go to stderr), e.g.

    \b
      BUNDLE=$(edge-retina bundle start --root /var/lib/edge-retina)
    """
    from edge_retina.install import start

    try:
        trusted = TrustedKeys.from_directory(trusted_dir) if trusted_dir else None
        _report_start(start(root, trusted=trusted, backend=backend))
    except EdgeRetinaError as exc:
        fail(exc)


def _report_start(report: StartReport) -> None:
    err = Console(stderr=True)
    if report.selftest is not None:
        print_wrapped(err, report.selftest.message)
    if report.rolled_back_from is not None:
        print_wrapped(err, f"rolled back from slot {report.rolled_back_from} to slot {report.slot}")
    # For scripts (BUNDLE=$(edge-retina bundle start ...)): the path whole on one line, never wrapped
    # to the terminal as the lines for people are.
    click.echo(str(report.path))


@bundle.command()
@INSTALL_ROOT
@click.option("--json", "as_json", is_flag=True)
def status(root: Path, as_json: bool) -> None:
    """Show the install root's slots: which is active, which is the fallback, self-test outcomes."""
    from edge_retina.install import read_status

    try:
        state = read_status(root)
    except EdgeRetinaError as exc:
        fail(exc)
    if as_json:
        click.echo(json.dumps(state.to_dict(), indent=2, sort_keys=True))
        return
    rows = []
    for name, record in sorted(state.slots.items()):
        role = "active" if name == state.active else "fallback" if name == state.previous else ""
        rows.append([name, role, record.status, record.manifest_sha256[:16], record.key_id, record.installed,
                     record.note])
    Console().print(rich_table(f"{root}", ["slot", "role", "status", "manifest sha256", "key", "installed", "note"],
                               rows, wrap_last=True))


@bundle.command(name="rollback")
@INSTALL_ROOT
def rollback_command(root: Path) -> None:
    """Switch back to the previous slot."""
    from edge_retina.install import rollback

    try:
        state = rollback(root)
    except EdgeRetinaError as exc:
        fail(exc)
    print_wrapped(Console(), f"active slot is now {state.active}")
