"""Hostile input to `screen` and the Screener API (issue 14): every case gets a row with a stable code
and the batch goes on; nothing raises or leaves a traceback."""
from __future__ import annotations

import csv
import errno
import json
import os
import pickle
import re
import shutil
import signal
import tempfile
from pathlib import Path

import pytest
from click.testing import CliRunner

from edge_retina.cli.inputs import expand_inputs
from edge_retina.cli.main import cli
from edge_retina.errors import RESULT_ERROR_CODES, ImageError
from edge_retina.preprocess.decode import MAX_FILE_BYTES, read_source
from edge_retina.screener import Screener
from narrow_terminal import unwrapped

REPO = Path(__file__).resolve().parents[1]
NOBODY = 65534


def run(*args):
    return CliRunner().invoke(cli, [str(a) for a in args])


def as_unprivileged(function, *args):
    """``function(*args)`` as a user without special permissions: in a forked child that drops root
    (its modules are already imported, so it needs no access to the interpreter's files)."""
    if os.geteuid() != 0:
        return function(*args)
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: never returns into pytest
        try:
            os.setgroups([])
            os.setgid(NOBODY)
            os.setuid(NOBODY)
            payload = pickle.dumps(("ok", function(*args)))
        except BaseException as exc:  # noqa: BLE001 -- handed to the parent, which re-raises
            payload = pickle.dumps(("raised", repr(exc)))
        os.write(write, payload)
        os._exit(0)
    os.close(write)
    with os.fdopen(read, "rb") as pipe:
        status, value = pickle.loads(pipe.read())
    os.waitpid(pid, 0)
    assert status == "ok", value
    return value


@pytest.fixture()
def shared_tmp():
    """A folder another user can reach (pytest's tmp_path is private to root)."""
    folder = Path(tempfile.mkdtemp(prefix="edge-retina-perm-"))
    folder.chmod(0o755)
    yield folder
    for path in folder.rglob("*"):
        if path.is_dir() and not path.is_symlink():
            path.chmod(0o755)
    shutil.rmtree(folder)


def _expand_codes(arguments):
    return [(Path(i.path).name, i.problem_code) for i in expand_inputs(arguments)]


def _decode_code(path):
    try:
        read_source(path)
    except ImageError as exc:
        return exc.code
    return None


def test_permissions_give_unreadable_rows_and_lose_nothing(shared_tmp, retina_jpeg):
    locked = shared_tmp / "locked"  # no search permission: its files cannot even be stat'ed
    locked.mkdir()
    shutil.copy(retina_jpeg, locked / "a.jpg")
    secret = shared_tmp / "open" / "secret.jpg"  # a file without read permission
    secret.parent.mkdir()
    shutil.copy(retina_jpeg, secret)
    secret.chmod(0o600)
    shutil.copy(retina_jpeg, shared_tmp / "open" / "fine.jpg")
    locked.chmod(0o700)

    items = as_unprivileged(_expand_codes, [str(locked / "a.jpg"), str(shared_tmp)])
    assert items == [("a.jpg", "unreadable"), ("locked", "unreadable"), ("fine.jpg", None), ("secret.jpg", None)]
    assert as_unprivileged(_decode_code, str(secret)) == "unreadable"
    assert as_unprivileged(_decode_code, str(locked / "a.jpg")) == "unreadable"


def test_a_broken_link_or_a_fifo_in_a_folder_gets_its_row(tiny_bundle, retina_jpeg, tmp_path):
    shutil.copy(retina_jpeg, tmp_path / "a.jpg")
    (tmp_path / "b.jpg").symlink_to(tmp_path / "unmounted" / "b.jpg")
    os.mkfifo(tmp_path / "c.jpg")
    res = run("screen", tmp_path, tmp_path / "b.jpg", "--bundle", tiny_bundle, "--json")
    assert res.exit_code == 0, res.output
    rows = {Path(r["source"]).name: r for r in json.loads(res.stdout)["results"]}
    assert sorted(rows) == ["a.jpg", "b.jpg", "c.jpg"]  # the link named twice is one row
    assert rows["b.jpg"]["error"] == f"{tmp_path / 'b.jpg'}: a link to a missing file ({tmp_path}/unmounted/b.jpg)"
    assert rows["c.jpg"]["error_code"] == "not_a_file"


def test_csv_keeps_every_row_of_a_non_utf8_file_name(tiny_bundle, retina_jpeg, tmp_path):
    odd = tmp_path / os.fsdecode(b"caf\xe9.jpg")
    shutil.copy(retina_jpeg, odd)
    out = tmp_path / "r.csv"
    res = run("screen", retina_jpeg, odd, tmp_path / "missing.jpg", "--bundle", tiny_bundle, "--out", out)
    assert res.exit_code == 0, res.output
    rows = list(csv.DictReader(out.open(encoding="utf-8")))
    assert [r["source"].endswith("caf\\udce9.jpg") for r in rows] == [False, True, False]
    assert rows[1]["status"] in ("refer", "no-referral")


@pytest.mark.parametrize("out", ["x.txt", "file/r.csv", "folder.csv", "/proc/r.csv"])
def test_bad_out_path_is_a_message_not_a_traceback(tiny_bundle, retina_jpeg, tmp_path, out, monkeypatch):
    (tmp_path / "file").write_text("a file where a folder is needed")
    (tmp_path / "folder.csv").mkdir()
    monkeypatch.setattr(Screener, "from_bundle", lambda *a, **k: pytest.fail("refused only after loading the bundle"))
    res = run("screen", retina_jpeg, "--bundle", tiny_bundle, "--out", tmp_path / out)
    assert res.exit_code == 2, res.output
    assert res.exception is None or isinstance(res.exception, SystemExit)
    assert "--out" in res.output or unwrapped("cannot write results") in unwrapped(res.output)
    assert not list(tmp_path.glob("**/*.partial"))


def test_a_failed_rename_says_where_the_rows_are(tiny_bundle, retina_jpeg, tmp_path, monkeypatch):
    def replace(src, dst):
        raise IsADirectoryError(21, "Is a directory", str(src), None, str(dst))

    monkeypatch.setattr("edge_retina.cli.results_io.os.replace", replace)
    out = tmp_path / "r.csv"
    res = run("screen", retina_jpeg, "--bundle", tiny_bundle, "--out", out)
    assert res.exit_code == 2 and isinstance(res.exception, SystemExit), res.output
    assert unwrapped(f"the results are in {out}.partial") in unwrapped(res.output)
    assert len(list(csv.DictReader(open(f"{out}.partial")))) == 1


def test_a_full_disk_stops_the_batch_with_a_message_and_keeps_the_rows_written(tiny_bundle, retina_jpeg, tmp_path,
                                                                                 monkeypatch):
    from edge_retina.cli.screen import ResultWriter

    original, calls = ResultWriter.write, []

    def disk_full_on_the_second_row(self, result):
        calls.append(result)
        if len(calls) == 2:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        original(self, result)

    monkeypatch.setattr(ResultWriter, "write", disk_full_on_the_second_row)
    out = tmp_path / "r.csv"
    res = run("screen", *photo_copies(retina_jpeg, tmp_path, 3), "--bundle", tiny_bundle, "--out", out)
    assert res.exit_code == 2 and isinstance(res.exception, SystemExit), res.output
    assert unwrapped(f"cannot write results to {out}.partial: No space left on device; screening stopped after "
                     "1 of 3 images") in unwrapped(res.output), res.output
    assert "Screening results" in res.output and "results written to" not in res.output
    assert not out.exists() and len(list(csv.DictReader(open(f"{out}.partial")))) == 1


def test_a_rerun_keeps_earlier_results_unless_told_to_overwrite(tiny_bundle, retina_jpeg, tmp_path):
    out = tmp_path / "r.csv"
    assert run("screen", *photo_copies(retina_jpeg, tmp_path, 2), "--bundle", tiny_bundle, "--out", out).exit_code == 0
    earlier = out.read_text()
    again = run("screen", retina_jpeg, "--bundle", tiny_bundle, "--out", out)
    assert again.exit_code == 2 and out.read_text() == earlier, again.output
    assert unwrapped(f"cannot write results to {out}: it exists; move it away or pass --overwrite to replace it") \
        in unwrapped(again.output), again.output
    forced = run("screen", retina_jpeg, "--bundle", tiny_bundle, "--out", out, "--overwrite")
    assert forced.exit_code == 0 and len(list(csv.DictReader(out.open()))) == 1, forced.output


def photo_copies(retina_jpeg, folder: Path, n: int) -> list[Path]:
    copies = [folder / f"photo-{i}.jpg" for i in range(n)]
    for copy in copies:
        shutil.copy(retina_jpeg, copy)
    return copies


def interrupt_after(first: int, monkeypatch) -> None:
    """Ctrl-C (KeyboardInterrupt in the main thread) once ``first`` photos are screened."""
    from edge_retina.pipeline import ScreeningPipeline

    original = ScreeningPipeline.run

    def run_then_interrupt(self, *args, **kwargs):
        for n, finished in enumerate(original(self, *args, **kwargs)):
            if n == first:
                raise KeyboardInterrupt
            yield finished

    monkeypatch.setattr(ScreeningPipeline, "run", run_then_interrupt)


def test_ctrl_c_keeps_what_was_screened(tiny_bundle, retina_jpeg, tmp_path, monkeypatch):
    interrupt_after(2, monkeypatch)
    out = tmp_path / "r.json"
    a, b, c = photo_copies(retina_jpeg, tmp_path, 3)
    res = run("screen", a, tmp_path / "missing.jpg", b, c, "--bundle", tiny_bundle, "--out", out)
    said = unwrapped(res.output)
    assert res.exit_code == 130, res.output
    assert unwrapped("interrupted after 2 of 4 images") in said and unwrapped(f"rows are in {out}.partial") in said
    assert unwrapped("2 images: ") in said and "Screening results" in res.output
    assert not out.exists() and len(json.loads(Path(f"{out}.partial").read_text())) == 2  # a whole JSON file

    monkeypatch.undo()
    again = run("screen", retina_jpeg, "--bundle", tiny_bundle, "--out", out)
    assert again.exit_code == 2 and len(json.loads(Path(f"{out}.partial").read_text())) == 2, again.output
    assert unwrapped(f"cannot write results to {out}.partial (the rows of an interrupted run): it exists; move it "
                     "away or pass --overwrite to replace it") in unwrapped(again.output), again.output


def test_a_second_ctrl_c_while_winding_down_keeps_the_summary(tiny_bundle, retina_jpeg, tmp_path, monkeypatch):
    """Ctrl-C pressed twice: the second SIGINT (a real one) comes while the photos in flight are waited
    for, and the table and the line saying where the rows are still come; Ctrl-C works again after."""
    from edge_retina.pipeline import ScreeningPipeline

    # Ctrl-C raises KeyboardInterrupt, as in `edge-retina` started from a terminal: a test run started
    # in the background inherits SIGINT ignored (the shell's rule for background jobs).
    signal.signal(signal.SIGINT, signal.default_int_handler)
    interrupt_after(1, monkeypatch)
    original_close = ScreeningPipeline.close

    def second_ctrl_c_then_close(self):
        os.kill(os.getpid(), signal.SIGINT)
        original_close(self)

    monkeypatch.setattr(ScreeningPipeline, "close", second_ctrl_c_then_close)
    out = tmp_path / "r.csv"
    res = run("screen", *photo_copies(retina_jpeg, tmp_path, 3), "--bundle", tiny_bundle, "--out", out)
    said = unwrapped(res.output)
    assert res.exit_code == 130 and "Screening results" in res.output, res.output
    assert unwrapped(f"interrupted after 1 of 3 images; their rows are in {out}.partial") in said, res.output
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_ctrl_c_while_a_row_is_written_counts_only_the_rows_kept(tiny_bundle, retina_jpeg, tmp_path, monkeypatch):
    from edge_retina.cli.screen import ResultWriter

    original, calls = ResultWriter.write, []

    def ctrl_c_on_the_second_row(self, result):
        calls.append(result)
        if len(calls) == 2:
            raise KeyboardInterrupt
        original(self, result)

    monkeypatch.setattr(ResultWriter, "write", ctrl_c_on_the_second_row)
    out = tmp_path / "r.json"
    res = run("screen", *photo_copies(retina_jpeg, tmp_path, 2), "--bundle", tiny_bundle, "--out", out)
    assert res.exit_code == 130 and unwrapped("interrupted after 1 of 2 images") in unwrapped(res.output), res.output
    assert len(json.loads(Path(f"{out}.partial").read_text())) == 1


def test_ctrl_c_without_out_still_shows_the_results(tiny_bundle, retina_jpeg, tmp_path, monkeypatch):
    interrupt_after(1, monkeypatch)
    res = run("screen", *photo_copies(retina_jpeg, tmp_path, 2), "--bundle", tiny_bundle, "--json")
    assert res.exit_code == 130 and unwrapped("interrupted after 1 of 2 images") in unwrapped(res.stderr)
    doc = json.loads(res.stdout)
    assert len(doc["results"]) == 1 and doc["summary"]["interrupted"] is True


@pytest.mark.parametrize("source", [None, 42, ["a.jpg"], "with\0nul.jpg"], ids=["none", "int", "list", "nul"])
def test_screener_never_raises_for_a_bad_source(tiny_bundle, source):
    with Screener.from_bundle(tiny_bundle) as screener:
        result = screener.screen(source)
    assert result.status == "error" and result.error_code in ("not_an_image", "not_found"), result


def test_huge_file_is_refused_before_it_is_read(tmp_path):
    sparse = tmp_path / "huge.jpg"
    with open(sparse, "wb") as fh:
        fh.write(b"\xff\xd8\xff\xe0")
        fh.truncate(2 * 1024**3)  # 2 GiB, sparse: no disk, and reading it would need 2 GiB of memory
    assert sparse.stat().st_size > MAX_FILE_BYTES
    with pytest.raises(ImageError, match="file-size limit") as info:
        read_source(sparse)
    assert info.value.code == "too_large"


def test_readme_lists_exactly_the_result_error_codes():
    readme = (REPO / "README.md").read_text()
    section = readme.split("### Bad input", 1)[1].split("\n## ", 1)[0]
    listed = set(re.findall(r"^\| `([a-z_]+)` \|", section, flags=re.M))
    assert listed == set(RESULT_ERROR_CODES)
