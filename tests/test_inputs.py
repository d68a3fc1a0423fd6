from pathlib import Path

from edge_retina.cli.inputs import expand_inputs


def _touch(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"x")
    return path


def test_files_folders_globs_and_problems_are_all_accounted_for(tmp_path):
    a = _touch(tmp_path / "imgs" / "a.jpg")
    b = _touch(tmp_path / "imgs" / "sub" / "b.PNG")
    _touch(tmp_path / "imgs" / "notes.txt")
    (tmp_path / "empty").mkdir()
    odd = _touch(tmp_path / "capture.raw")
    items = expand_inputs([
        str(tmp_path / "imgs"),          # folder, recursive, images only
        str(tmp_path / "imgs" / "*.jpg"),  # glob (a.jpg again: deduplicated)
        str(odd),                        # an explicit file is tried whatever its suffix
        str(tmp_path / "empty"),         # folder with no images -> a problem row
        str(tmp_path / "missing.jpg"),   # does not exist -> a problem row
        str(tmp_path / "nothing*.jpg"),  # glob with no match -> a problem row
    ])
    paths = [i.path for i in items if i.problem is None]
    assert paths == [str(a), str(b), str(odd)]
    problems = {i.problem_code for i in items if i.problem}
    assert problems == {"no_images", "not_found", "no_match"}


def test_non_recursive(tmp_path):
    _touch(tmp_path / "a.jpg")
    _touch(tmp_path / "sub" / "b.jpg")
    assert [Path(i.path).name for i in expand_inputs([str(tmp_path)], recursive=False)] == ["a.jpg"]
