"""``edge-retina cache info|prune``: what the per-user caches hold, and removing what was not used lately."""
from __future__ import annotations

import json
import time

import click
from rich.console import Console
from rich.filesize import decimal as format_size

from edge_retina import user_caches
from edge_retina.console_tables import print_wrapped, rich_table
from edge_retina.wording import plural


class _Parsed(click.ParamType):
    """A click type from one of user_caches' parsers (sizes, ages)."""

    def __init__(self, name: str, parse):
        self.name, self._parse = name, parse

    def convert(self, value, param, ctx):
        try:
            return self._parse(value)
        except ValueError as exc:
            self.fail(str(exc), param, ctx)


@click.group("cache")
def cache_group() -> None:
    """The per-user caches ($XDG_CACHE_HOME/edge-retina): show them, prune them.

    Everything there can be rebuilt: extracted bundle archives, engines compiled for this machine, the
    converter's steps. Nothing is pruned unless you ask.
    """


@cache_group.command()
@click.option("--json", "as_json", is_flag=True, help="Print the caches as JSON.")
def info(as_json: bool) -> None:
    """Show each cache: its entries, size and last use."""
    summaries = user_caches.summarise()
    if as_json:
        click.echo(json.dumps({"root": str(user_caches.user_cache_dir()),
                               "caches": [s.to_dict() for s in summaries]}, indent=2))
        return
    console = Console()
    total = sum(s.size_bytes for s in summaries)
    print_wrapped(console, f"{user_caches.user_cache_dir()}: {format_size(total)} in {len(summaries)} caches")
    if not summaries:
        return
    rows = [[s.name, str(s.entries), format_size(s.size_bytes), _day(s.oldest_use), _day(s.newest_use), s.holds]
            for s in summaries]
    console.print(rich_table("caches (edge-retina cache prune removes entries not used lately)",
                             ["cache", "entries", "size", "oldest use", "last use", "holds"], rows,
                             wrap_last=True))


def _duration(seconds: int) -> str:
    minutes = seconds // 60
    if minutes % 60:
        return f"{minutes} minutes"
    return "an hour" if minutes == 60 else f"{minutes // 60} hours"


KEPT = _duration(user_caches.KEEP_RECENT_SECONDS)


@cache_group.command(help=f"""Remove cache entries not used lately. Entries used less than {KEPT} ago
    always stay (a conversion or screening may be reading them), a cache a running conversion uses is
    left alone, and entries that cannot be removed are named; leftovers of crashed runs go once they
    are {KEPT} old. Only edge-retina's own caches are touched.""")
@click.option("--max-size", "max_bytes", type=_Parsed("size", user_caches.parse_size),
              help="Remove the least recently used entries until the caches hold at most this "
                   "together (500M, 20G; powers of 1000).")
@click.option("--unused-for", "unused_seconds", type=_Parsed("age", user_caches.parse_age),
              help="Remove entries not used for this long (30d, 12h, 2w).")
@click.option("--cache", "names", multiple=True, type=click.Choice(list(user_caches.CACHES)),
              help="Only this cache (repeatable; default: all).")
@click.option("--dry-run", is_flag=True, help="Say what would be removed; remove nothing.")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
def prune(max_bytes: int | None, unused_seconds: float | None, names: tuple[str, ...], dry_run: bool,
          as_json: bool) -> None:
    if max_bytes is None and unused_seconds is None:
        raise click.UsageError("say what to remove: --max-size SIZE, --unused-for AGE, or both")
    report = user_caches.prune(names=names or None, max_bytes=max_bytes, unused_seconds=unused_seconds,
                               dry_run=dry_run)
    if as_json:
        click.echo(json.dumps(report.to_dict(), indent=2))
    else:
        _print_report(Console(), report)
    if report.failed:
        raise SystemExit(1)


def _print_report(console: Console, report: user_caches.PruneReport) -> None:
    verb = "would remove" if report.dry_run else "removed"
    if report.dry_run:
        for entry in report.removed:
            print_wrapped(console, f"  {entry.cache}/{entry.path.name}  {format_size(entry.size_bytes)}, "
                                   f"last used {_day(entry.last_used)}")
    for name in report.busy:
        print_wrapped(console, f"{name}: left alone, a run (a conversion) is using it")
    print_wrapped(console, f"{verb} {plural(len(report.removed), 'entry', 'entries')} "
                           f"({format_size(sum(e.size_bytes for e in report.removed))}); "
                           f"{len(report.kept) + len(report.failed)} kept ({format_size(report.kept_bytes)})")
    for entry, why in report.failed:
        print_wrapped(console, f"could not remove {entry.path}: {why}")
    if report.over_limit:
        print_wrapped(console, f"still over {format_size(report.max_bytes)}: the rest was used less than "
                               f"{KEPT} ago" + (" or could not be removed" if report.failed else ""))


def _day(timestamp: float | None) -> str:
    return time.strftime("%Y-%m-%d", time.localtime(timestamp)) if timestamp is not None else "-"
