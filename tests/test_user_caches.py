"""The per-user caches: last use recorded on reuse, `cache info`, and pruning what was not used lately."""
from __future__ import annotations

import json
import os
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
from narrow_terminal import COLUMNS, narrow_runner, unwrapped, widest_line

from converters.step_cache import StepCache
from converters.step_cache import default_cache_dir as convert_cache_dir
from edge_retina import user_caches
from edge_retina.backends.tensorrt_engine_cache import default_cache_dir as tensorrt_cache_dir
from edge_retina.bundle import default_cache_dir as bundles_cache_dir
from edge_retina.cli.main import cli
from edge_retina.screener import engine_cache_dir

HOUR, DAY = 3600, 86400
NOW = time.time()


def entry(root: Path, cache: str, name: str, size: int, age: float, folder: bool = True) -> Path:
    """A cache entry of ``size`` bytes last used ``age`` seconds ago."""
    path = root / cache / name
    path.parent.mkdir(parents=True, exist_ok=True)
    if folder:
        path.mkdir()
        (path / "data.bin").write_bytes(b"x" * size)
    else:
        path.write_bytes(b"x" * size)
    os.utime(path, (NOW - age, NOW - age))
    return path


@pytest.fixture
def root(tmp_path, monkeypatch) -> Path:
    """$XDG_CACHE_HOME/edge-retina holding entries of three caches and an unknown folder."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    root = tmp_path / "edge-retina"
    entry(root, "convert", "reference-old", 5000, 40 * DAY)
    entry(root, "convert", "engine-month", 3000, 30 * DAY)
    entry(root, "convert", "export-week", 2000, 7 * DAY)
    entry(root, "convert", "engine-new.partial-123", 100, 10 * 60)  # a conversion running now
    entry(root, "convert", "engine-dead.partial-99", 400, 2 * DAY)  # left by a crashed conversion
    entry(root, "bundles", "a" * 64, 1000, 2 * DAY)
    entry(root, "engines", "recent", 700, 5 * 60)
    entry(root, "other", "thing", 10, 3 * DAY, folder=False)
    return root


def names(entries) -> set[str]:
    return {e.path.name for e in entries}


def test_every_cache_the_code_writes_is_described():
    bundle = SimpleNamespace(manifest=SimpleNamespace(files={"engines/model.onnx": "0" * 64}))
    engine = SimpleNamespace(files=("engines/model.onnx",))
    used = {convert_cache_dir().name, bundles_cache_dir().name, tensorrt_cache_dir().name,
            engine_cache_dir(bundle, engine).parent.name}
    assert used == set(user_caches.CACHES)


def test_summary_counts_sizes_and_uses_known_caches_first(root):
    summaries = {s.name: s for s in user_caches.summarise()}
    assert [s.name for s in user_caches.summarise()] == ["bundles", "engines", "convert", "other"]
    convert = summaries["convert"]
    assert (convert.entries, convert.size_bytes) == (5, 10500)
    assert convert.oldest_use == pytest.approx(NOW - 40 * DAY) and convert.newest_use == pytest.approx(NOW - 600)
    assert summaries["other"].holds == "" and summaries["convert"].holds == user_caches.CACHES["convert"]


def test_prune_by_age_removes_stale_entries_and_old_leftovers_but_never_recent_ones(root):
    report = user_caches.prune(unused_seconds=14 * DAY)
    assert names(report.removed) == {"reference-old", "engine-month", "engine-dead.partial-99"}
    assert not any((root / "convert" / n).exists() for n in names(report.removed))
    assert (root / "convert" / "engine-new.partial-123").is_dir() and (root / "engines" / "recent").is_dir()
    assert not report.failed and not report.over_limit
    assert sorted(p.name for p in (root / "convert").iterdir()) == ["engine-new.partial-123", "export-week"]


def test_prune_to_a_size_removes_the_least_recently_used_first(root):
    # 12,200 bytes in the known caches: the two oldest uses bring it to 4,200; the crashed leftover goes
    # whatever the size.
    report = user_caches.prune(max_bytes=5000)
    assert [e.path.name for e in report.removed] == ["reference-old", "engine-month", "engine-dead.partial-99"]
    assert report.kept_bytes == 3800 and not report.over_limit
    assert [e.path.name for e in user_caches.prune(max_bytes=1000).removed] == ["export-week", "a" * 64]


def test_prune_never_touches_a_folder_that_is_not_one_of_our_caches(root, tmp_path):
    """An unknown folder (a user's) and a symlink to data elsewhere are shown by info, never pruned."""
    elsewhere = tmp_path / "precious"
    entry(tmp_path, "precious", "data", 10, 40 * DAY)
    (root / "linked").symlink_to(elsewhere)
    (root / "engines" / "link-out").symlink_to(elsewhere)  # an entry that is a symlink goes, not its target
    os.utime(root / "engines" / "link-out", (NOW - 40 * DAY, NOW - 40 * DAY), follow_symlinks=False)
    report = user_caches.prune(max_bytes=0)
    assert "thing" not in names(report.removed) and (root / "other" / "thing").exists()
    assert (elsewhere / "data").is_dir() and "link-out" in names(report.removed)
    assert "linked" not in user_caches.cache_names(root)
    assert user_caches.prune(max_bytes=0, names=["other"]).removed == []


def test_a_cache_in_use_by_a_conversion_is_left_alone(root):
    with user_caches.in_use(root / "convert"):
        report = user_caches.prune(unused_seconds=DAY)
    assert report.busy == ["convert"] and (root / "convert" / "reference-old").is_dir()
    assert names(report.removed) == {"a" * 64}  # the other caches were pruned
    assert "reference-old" in names(user_caches.prune(unused_seconds=DAY).removed)  # and after it, convert too


def test_prune_reports_what_it_cannot_reach_and_one_cache_at_a_time(root):
    report = user_caches.prune(max_bytes=0, names=["engines"])
    assert report.removed == [] and report.over_limit and names(report.kept) == {"recent"}
    assert (root / "convert" / "reference-old").is_dir()


def test_dry_run_removes_nothing(root):
    before = sorted(p for p in root.rglob("*"))
    report = user_caches.prune(max_bytes=0, dry_run=True)
    assert len(report.removed) == 5 and sorted(p for p in root.rglob("*")) == before


def test_an_entry_that_cannot_be_removed_is_reported_and_the_rest_pruned(root, monkeypatch):
    discard = user_caches.discard

    def refuse_one(path: Path) -> None:
        if path.name == "engine-month":
            raise PermissionError(13, "Permission denied")
        discard(path)

    monkeypatch.setattr(user_caches, "discard", refuse_one)
    report = user_caches.prune(unused_seconds=14 * DAY)
    assert [(e.path.name, why) for e, why in report.failed] == [("engine-month", "Permission denied")]
    assert names(report.removed) == {"reference-old", "engine-dead.partial-99"}


def test_reuse_marks_a_step_used(tmp_path):
    cache = StepCache(tmp_path)
    folder, cached = cache.run("export", {"a": 1}, lambda out: (out / "model.onnx").write_bytes(b"m"))
    os.utime(folder, (NOW - 30 * DAY, NOW - 30 * DAY))
    again, cached = cache.run("export", {"a": 1}, lambda out: pytest.fail("a cached step ran again"))
    assert cached and again == folder and folder.stat().st_mtime > NOW - 60


def test_loading_an_archive_again_marks_its_extraction_used(tiny_bundle_archive, tmp_path):
    from edge_retina.bundle import load_bundle

    root = load_bundle(tiny_bundle_archive, cache_dir=tmp_path).root
    os.utime(root, (NOW - 30 * DAY, NOW - 30 * DAY))
    assert load_bundle(tiny_bundle_archive, cache_dir=tmp_path).root == root
    assert root.stat().st_mtime > NOW - 60


@pytest.mark.parametrize("text, size", [("500M", 500_000_000), ("20G", 20 * 10**9), ("1.5GB", 1_500_000_000),
                                        ("0", 0), ("300 kB", 300_000), ("12", 12)])
def test_sizes(text, size):
    assert user_caches.parse_size(text) == size


@pytest.mark.parametrize("text", ["", "G", "-1G", "5X", "ten", "inf", "nan", "infG"])
def test_bad_sizes(text):
    with pytest.raises(ValueError, match="not a size"):
        user_caches.parse_size(text)


@pytest.mark.parametrize("text, seconds", [("30d", 30 * DAY), ("12h", 12 * HOUR), ("90m", 5400), ("2w", 14 * DAY)])
def test_ages(text, seconds):
    assert user_caches.parse_age(text) == seconds


@pytest.mark.parametrize("text", ["", "30", "d", "-3d", "3y", "nand", "infd"])
def test_bad_ages(text):
    with pytest.raises(ValueError, match="not an age"):
        user_caches.parse_age(text)


def test_cli_info_fits_80_columns(root):
    result = narrow_runner().invoke(cli, ["cache", "info"])
    assert result.exit_code == 0 and widest_line(result.output) <= COLUMNS, result.output
    said = unwrapped(result.output)
    assert unwrapped(f"{root}: 12.2 kB in 4 caches") in said and unwrapped("converter steps") in said
    data = json.loads(narrow_runner().invoke(cli, ["cache", "info", "--json"]).output)
    assert data["root"] == str(root) and [c["name"] for c in data["caches"]][:3] == ["bundles", "engines", "convert"]


def test_cli_prune(root):
    runner = narrow_runner()
    refused = runner.invoke(cli, ["cache", "prune"])
    assert refused.exit_code == 2 and "--max-size SIZE, --unused-for AGE" in refused.output
    bad = runner.invoke(cli, ["cache", "prune", "--max-size", "lots"])
    assert bad.exit_code == 2 and "not a size: 'lots'" in bad.output
    dry = runner.invoke(cli, ["cache", "prune", "--unused-for", "2w", "--dry-run"])
    assert dry.exit_code == 0 and widest_line(dry.output) <= COLUMNS, dry.output
    assert unwrapped("convert/reference-old 5.0 kB, last used") in unwrapped(dry.output)
    assert unwrapped("would remove 3 entries (8.4 kB); 4 kept (3.8 kB)") in unwrapped(dry.output)
    assert (root / "convert" / "reference-old").is_dir()
    one = runner.invoke(cli, ["cache", "prune", "--max-size", "0", "--cache", "bundles", "--dry-run"])
    assert unwrapped("would remove 1 entry (1.0 kB)") in unwrapped(one.output), one.output
    done = runner.invoke(cli, ["cache", "prune", "--max-size", "0", "--cache", "engines", "--json"])
    assert done.exit_code == 0 and json.loads(done.output)["over_limit"] is True
    pruned = runner.invoke(cli, ["cache", "prune", "--max-size", "500"])
    assert pruned.exit_code == 0 and unwrapped("removed 5 entries") in unwrapped(pruned.output), pruned.output
    assert unwrapped("still over 500 bytes: the rest was used less than an hour ago") in unwrapped(pruned.output)
