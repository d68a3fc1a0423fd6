"""``edge-retina bundle inspect|verify``: look inside a bundle and check every file's hash."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import click
from rich.console import Console
from rich.table import Table

from edge_retina.bundle import load_bundle, verify_bundle
from edge_retina.errors import BundleError

BUNDLE_PATH = click.Path(path_type=Path)


@click.group()
def bundle() -> None:
    """Inspect and verify bundles."""


@bundle.command()
@click.argument("path", type=BUNDLE_PATH)
@click.option("--json", "as_json", is_flag=True, help="Print the manifest as JSON.")
def inspect(path: Path, as_json: bool) -> None:
    """Show a bundle's model, input spec, engines, conditions and provenance (after verifying it)."""
    try:
        manifest = load_bundle(path).manifest
    except BundleError as exc:
        Console(stderr=True).print(f"[red]error:[/] {exc}")
        sys.exit(2)
    if as_json:
        click.echo(json.dumps(manifest.to_dict(), indent=2, sort_keys=True))
        return
    console = Console()
    m = manifest.to_dict()
    model = m["model"]
    console.print(f"[bold]{path}[/]  schema v{m['schema_version']}")
    console.print(f"model: {model.get('family')} / {model.get('name')}  teacher sha256 {str(model.get('teacher_sha256'))[:16]}…"
                  + (f"  student {model['student'].get('name')}" if model.get("student") else ""))
    spec = m["input"]
    console.print(
        f"input: {spec['size'][0]}x{spec['size'][1]} {spec['resize_mode']} ({spec['interpolation']}), "
        f"FoV crop {'on' if spec['fov_crop'] else 'off'}, {spec['colour_order']}, scale {spec['scale']:.6g}, "
        f"mean {spec['mean']}, std {spec['std']}"
    )
    engines = Table(title="engines")
    for col in ("backend", "precision", "role", "file", "device profile", "calibration"):
        engines.add_column(col)
    for e in m["engines"]:
        calib = e.get("calibration") or {}
        engines.add_row(e["backend"], e["precision"], e.get("role", ""), e["files"][0], e.get("device_profile") or "-",
                        f"{calib.get('method', '')} n={calib.get('size')}" if calib else "-")
    console.print(engines)
    prompts = m["prompts"]
    conditions = Table(title=f"conditions (ensembling: {prompts['ensembling']}, logit scale {m['logit_scale']:.4g})")
    for col in ("condition", "prompts", "threshold", "threshold source"):
        conditions.add_column(col)
    for c in prompts["conditions"]:
        normal = c["name"] == prompts["normal_class"]
        conditions.add_row(c["name"] + (" (normal)" if normal else ""), str(len(c["prompts"])),
                           "-" if normal else f"{c['threshold']:.3f}", "" if normal else c.get("threshold_source", ""))
    console.print(conditions)
    prov = m["provenance"]
    console.print(f"built by {prov.get('tool')} {prov.get('tool_version')} on {prov.get('created')}: {prov.get('command')}")


@bundle.command()
@click.argument("path", type=BUNDLE_PATH)
@click.option("--json", "as_json", is_flag=True)
def verify(path: Path, as_json: bool) -> None:
    """Check the manifest and every file's sha256. Exit status 1 when anything is wrong."""
    report = verify_bundle(path)
    if as_json:
        click.echo(json.dumps({"ok": report.ok, "problems": report.problems, "warnings": report.warnings,
                               "checked": report.checked}, indent=2))
    else:
        console = Console()
        for name, sha in sorted(report.checked.items()):
            console.print(f"  ok  {sha[:16]}…  {name}")
        for warning in report.warnings:
            console.print(f"[yellow]  warning[/]  {warning}")
        for problem in report.problems:
            console.print(f"[red]  problem[/]  {problem}")
        console.print("[green]bundle verified[/]" if report.ok else "[red]bundle REFUSED[/]")
    sys.exit(0 if report.ok else 1)
