"""``edge-retina devices detect|list|show``: which device profile this machine is, and what each says."""
from __future__ import annotations

import json
from pathlib import Path

import click
from rich.console import Console
from rich.text import Text

import devices
from edge_retina.command_error import fail
from edge_retina.console_tables import print_wrapped, rich_table


@click.group("devices")
def devices_group() -> None:
    """Device profiles: detect this machine's, list them, show one."""


@devices_group.command()
@click.option("--root", type=click.Path(path_type=Path, file_okay=False, exists=True), default=Path("/"),
              show_default=True, help="Directory standing in for / (reads ROOT/proc and ROOT/etc); "
                                      "installed libraries are always those of this interpreter.")
@click.option("--json", "as_json", is_flag=True, help="Print the detection as JSON.")
def detect(root: Path, as_json: bool) -> None:
    """Name the best device profile for this machine, with the reasons."""
    try:
        detection = devices.detect(root)
    except devices.ProfileError as exc:
        fail(exc)
    if as_json:
        click.echo(json.dumps(detection.to_dict(), indent=2))
        return
    console = Console()
    print_wrapped(console, Text.assemble((detection.profile.name, "bold"), f": {detection.profile.title}"))
    for reason in detection.reasons:
        print_wrapped(console, f"  - {reason}")
    machine = detection.facts["machine"]
    print_wrapped(console, f"CPU: {machine['cpu_model'] or 'unknown'} "
                           f"({machine['cpu_arch'] or 'unknown architecture'}, {machine['cpu_count']} logical CPUs)")
    if machine["device_tree_model"] or machine["l4t_release"]:
        print_wrapped(console, f"board: {machine['device_tree_model'] or 'unknown'}, "
                               f"L4T {machine['l4t_release'] or 'unknown'}")


@devices_group.command("list")
@click.option("--json", "as_json", is_flag=True, help="Print the profiles as JSON.")
def list_profiles(as_json: bool) -> None:
    """List the device profiles."""
    profiles = devices.load_profiles()
    if as_json:
        click.echo(json.dumps([p.to_dict() for p in profiles.values()], indent=2))
        return
    rows = [[p.name, p.precision, str(p.threads or "default"), str(p.memory_budget_mib), p.title]
            for p in profiles.values()]
    Console().print(rich_table("device profiles (edge-retina devices show NAME for the details)",
                               ["name", "precision", "threads", "memory MiB", "title"], rows, wrap_last=True))


@devices_group.command()
@click.argument("name")
def show(name: str) -> None:
    """Show one profile as its data file says it (JSON)."""
    try:
        profile = devices.get_profile(name)
    except devices.ProfileError as exc:
        fail(exc)
    click.echo(json.dumps(profile.to_dict(), indent=2))
