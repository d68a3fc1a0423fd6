"""The photographs an archive run covers: folders, globs, CSV/Parquet lists of paths, URIs.

Local folders and globs expand exactly as for ``screen`` (cli/inputs.py), into absolute paths so a
re-run from another working directory finds the same rows. A ``.csv`` or ``.parquet`` source is a list
of paths (column ``path`` or ``source``, else the first column; relative paths are relative to the
list). A source with a scheme (``s3://``, ``gs://``, ``hdfs://``, ``file://``...) is listed through
pyarrow's filesystem layer. Every source yields at least one row: a photograph, or a problem that
becomes an error row in the results.
"""
from __future__ import annotations

import fnmatch
import os
from pathlib import Path

import pyarrow as pa
import pyarrow.csv as pa_csv
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from edge_retina.cli.inputs import expand_inputs
from edge_retina.errors import EdgeRetinaError, ImageError
from edge_retina.preprocess import IMAGE_EXTENSIONS
from edge_retina.preprocess.decode import read_source

LIST_SUFFIXES = (".csv", ".parquet")
SOURCES_SCHEMA = pa.schema([("source", pa.string()), ("problem", pa.string()), ("problem_code", pa.string())])
_GLOB_CHARS = "*?["


def is_uri(path: str) -> bool:
    return "://" in path


def expand_sources(arguments: list[str], *, recursive: bool = True) -> pa.Table:
    """One row per photograph (``source``) or per source that yields none (``problem``, ``problem_code``)."""
    rows: list[dict] = []
    local: list[str] = []
    for argument in arguments:
        if is_uri(argument):
            rows += _remote(argument, recursive)
        elif argument.lower().endswith(LIST_SUFFIXES) and Path(argument).is_file():
            rows += [{"source": p} for p in _listed(Path(argument))]
        else:
            local.append(argument)
    for item in expand_inputs(local, recursive=recursive):
        source = item.path if item.problem else os.path.abspath(item.path)
        rows.append({"source": source, "problem": item.problem, "problem_code": item.problem_code})
    unique = list({(r["source"], r.get("problem")): r for r in rows}.values())  # a photo named twice: one row
    return pa.Table.from_pylist(unique, schema=SOURCES_SCHEMA)


def _listed(listing: Path) -> list[str]:
    try:
        table = pq.read_table(listing) if listing.suffix.lower() == ".parquet" else pa_csv.read_csv(listing)
    except (pa.ArrowInvalid, OSError) as exc:
        raise EdgeRetinaError(f"{listing}: cannot read the list of paths ({exc})") from None
    names = [n for n in ("path", "source") if n in table.column_names] or table.column_names[:1]
    if not names:
        raise EdgeRetinaError(f"{listing}: the list of paths has no columns")
    paths = [str(p) for p in table.column(names[0]).to_pylist() if p]
    return [p if is_uri(p) or os.path.isabs(p) else os.path.abspath(listing.parent / p) for p in paths]


def _remote(uri: str, recursive: bool) -> list[dict]:
    scheme = uri.split("://", 1)[0]
    glob_at = min((uri.find(c) for c in _GLOB_CHARS if c in uri), default=-1)
    base = uri if glob_at < 0 else uri[: uri.rfind("/", 0, glob_at) + 1]
    try:
        filesystem, root = pafs.FileSystem.from_uri(base)
        info = filesystem.get_file_info(root)
        if info.type == pafs.FileType.File and glob_at < 0:
            return [{"source": uri}]
        if info.type != pafs.FileType.Directory:
            return [{"source": uri, "problem": f"{uri}: no such file or folder", "problem_code": "not_found"}]
        listing = filesystem.get_file_info(pafs.FileSelector(root, recursive=recursive or glob_at >= 0))
    except (pa.ArrowInvalid, OSError) as exc:
        return [{"source": uri, "problem": f"{uri}: cannot list ({exc})", "problem_code": "not_found"}]
    prefix = "file://" if scheme == "file" else f"{scheme}://"
    files = sorted(prefix + f.path for f in listing if f.type == pafs.FileType.File)
    if glob_at >= 0:
        files = [f for f in files if fnmatch.fnmatchcase(f, uri)]
    else:
        files = [f for f in files if f.lower().endswith(IMAGE_EXTENSIONS)]
    if not files:
        return [{"source": uri, "problem": f"{uri}: no images found", "problem_code": "no_match"}]
    return [{"source": f} for f in files]


def read_photo(source: str) -> bytes:
    """The bytes of one photograph, local or through pyarrow's filesystems; ImageError when unreadable."""
    if not is_uri(source):
        data, _ = read_source(source)
        return data
    try:
        filesystem, path = pafs.FileSystem.from_uri(source)
        with filesystem.open_input_stream(path) as stream:
            data = stream.readall()
    except (pa.ArrowInvalid, OSError) as exc:
        raise ImageError("not_found", f"{source}: cannot read ({exc})") from None
    if not data:
        raise ImageError("empty_file", f"{source}: the file is empty (0 bytes)")
    return data
