"""Read raw rows from local files, saved datasets or the Hugging Face Hub.

This module only turns a *source* into a list of plain ``dict`` rows; it knows nothing about
SFT, preference or ranking formats (that is :mod:`rlhfkit.data.formats`). Keeping the two
apart means every loader has one job: get the bytes in, and when they are bad, say exactly
which file and which row (line) is at fault.

Why not just call ``datasets.load_dataset("json", ...)`` for everything? Because its errors
for malformed input are Arrow/pandas tracebacks that name neither the line nor the cause, and
because it caches converted copies of every local file. Small local files are read directly,
so a bad byte at line 5123 becomes ``data.jsonl, row 5123: ...`` rather than an ArrowInvalid.

Row numbering (the ``row`` of a :class:`~rlhfkit.errors.DataError`) is 1-based:

* JSONL: the physical line number, so a user can jump straight to it. Blank lines are
  skipped, so when there are any, the returned :class:`Records` carries ``row_numbers``
  mapping each record back to its line, and :func:`rlhfkit.data.formats.normalize` uses it.
* CSV/TSV: the data record number, not counting the header line.
* JSON, Parquet, saved datasets, hub datasets: the position of the row in the list/table.
"""

from __future__ import annotations

import csv
import io
import json
import os
import re
from pathlib import Path
from typing import Any, Iterable

from rlhfkit.errors import DataError

__all__ = ["Records", "SUPPORTED_EXTENSIONS", "JSON_ROW_KEYS", "read_records"]

#: File extensions :func:`read_records` understands (directories from ``save_to_disk`` and hub
#: dataset ids are accepted as well).
SUPPORTED_EXTENSIONS: tuple[str, ...] = (".jsonl", ".ndjson", ".json", ".csv", ".parquet", ".tsv")

#: For a ``.json`` file whose top level is an object rather than a list, the rows are taken
#: from the first of these keys that holds a list (after the requested ``split`` name, which is
#: tried first so ``{"train": [...], "test": [...]}`` works with ``split="test"``).
JSON_ROW_KEYS: tuple[str, ...] = ("data", "rows", "records", "examples", "instances")

# Something that looks like a file name ("x.jsonl", "dir/file.csv") rather than a hub id. The
# extension must start with a letter so that hub ids with version numbers such as
# "teknium/OpenHermes-2.5" are not mistaken for files with a ".5" extension.
_FILE_EXTENSION = re.compile(r"\.[A-Za-z][A-Za-z0-9_]{0,9}$")

_UTF8_BOM = b"\xef\xbb\xbf"


class Records(list):
    """A ``list[dict]`` of rows that can also remember each row's number in its source.

    ``row_numbers`` is ``None`` when row *i* (0-based) is simply row ``i + 1`` of the source;
    otherwise it lists the 1-based source row (JSONL line) of each record. It exists so that
    errors found later, during normalisation, point at the right line of a JSONL file that
    contains blank lines. Any list operation returns a plain ``list`` and drops it, which is
    safe: :func:`~rlhfkit.data.formats.normalize` then falls back to positions.
    """

    def __init__(self, rows: Iterable[dict[str, Any]] = (), row_numbers: list[int] | None = None):
        super().__init__(rows)
        self.row_numbers = row_numbers


def read_records(source: str | os.PathLike[str], *, split: str = "train") -> Records:
    """Load all raw rows of ``source`` as a list of dicts.

    ``source`` may be:

    * a ``.jsonl``/``.ndjson`` file (one JSON object per line, blank lines skipped),
    * a ``.json`` file holding a list of objects, or an object whose ``split`` key or one of
      :data:`JSON_ROW_KEYS` holds that list (a ``.json`` file that is really JSON Lines gets
      an error suggesting the ``.jsonl`` name, rather than a guess),
    * a ``.csv``/``.tsv`` file with a header line; every value stays a string and an empty
      cell is ``""`` (never NaN), and unnamed columns such as a pandas index are dropped,
    * a ``.parquet`` file,
    * a directory written by ``Dataset.save_to_disk`` or ``DatasetDict.save_to_disk`` (for a
      ``DatasetDict`` the ``split`` is taken; a single ``Dataset`` has no splits, so ``split``
      is ignored),
    * otherwise, a Hugging Face Hub dataset id, loaded with
      ``datasets.load_dataset(source, split=split)``. A name that does not exist locally but
      looks like a path (it has a file extension, starts with ``/``, ``.`` or ``~``, has
      more than one ``/`` or sits in an existing local directory) is reported as "file not
      found" instead of going to the hub, where the error would be a confusing 404.

    Raises :class:`DataError` naming the file (and row, where there is one) for a missing
    file, an unsupported extension, an empty file or undecodable/malformed content.
    """
    name = os.fspath(source)
    path = Path(name).expanduser()

    if path.is_dir():
        return _read_saved_dataset(path, name, split)
    if path.exists():
        suffix = path.suffix.lower()
        reader = _READERS.get(suffix)
        if reader is None:
            raise DataError(
                f"unsupported file type {suffix or '(no extension)'!r}; supported: "
                f"{', '.join(SUPPORTED_EXTENSIONS)}, or a directory written by "
                "datasets' save_to_disk", source=name)
        try:
            if path.stat().st_size == 0:
                raise DataError("the file is empty", source=name)
            return reader(path, name, split)
        except OSError as exc:  # permissions, a file vanishing mid-read, ...
            raise DataError(f"cannot read file: {exc.strerror or exc}", source=name) from exc
    if _looks_like_path(name):
        raise DataError("file not found", source=name)
    return _read_hub_dataset(name, split)


def _looks_like_path(name: str) -> bool:
    """Whether a non-existent ``name`` is surely meant as a local path, not a hub id."""
    if name.startswith(("/", ".", "~")) or "\\" in name or name.count("/") > 1:
        return True
    if _FILE_EXTENSION.search(name):
        return True
    # "mydata/train" where ./mydata exists is a typo'd local path, not the hub id mydata/train.
    parent = Path(name).parent
    return parent != Path(".") and parent.is_dir()


# --------------------------------------------------------------------------------------------
# JSON Lines and JSON


def _read_jsonl(path: Path, name: str, split: str) -> Records:
    rows: list[dict[str, Any]] = []
    lines: list[int] = []
    # Bytes, not text mode: a decoding error then names its line instead of aborting the whole
    # read, and only b"\n" separates records (text mode would also split on a stray "\r").
    with path.open("rb") as fh:
        for lineno, raw in enumerate(fh, 1):
            if lineno == 1 and raw.startswith(_UTF8_BOM):
                raw = raw[len(_UTF8_BOM):]  # editors on Windows like to add one
            if not raw.strip():
                continue
            rows.append(_parse_json_line(raw, name, lineno))
            lines.append(lineno)
    if not rows:
        raise DataError("contains no rows (only blank lines)", source=name)
    # Only keep the mapping when blank lines made line numbers and positions diverge.
    contiguous = lines[-1] == len(lines)
    return Records(rows, None if contiguous else lines)


def _parse_json_line(raw: bytes, name: str, lineno: int) -> dict[str, Any]:
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise DataError(f"invalid UTF-8 (byte 0x{raw[exc.start]:02x} at column {exc.start + 1}); "
                        "the file must be UTF-8 encoded", source=name, row=lineno) from None
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise DataError(f"invalid JSON: {exc.msg} at column {exc.colno}",
                        source=name, row=lineno) from None
    except RecursionError:  # absurdly nested input; json raises this, not JSONDecodeError
        raise DataError("invalid JSON: nested too deeply", source=name, row=lineno) from None
    if not isinstance(value, dict):
        raise DataError(f"expected a JSON object on each line, got {_json_type(value)}",
                        source=name, row=lineno)
    return value


def _read_json(path: Path, name: str, split: str) -> Records:
    data = path.read_bytes()
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        raise DataError(f"invalid UTF-8 (byte 0x{data[exc.start]:02x} on line {line}); "
                        "the file must be UTF-8 encoded", source=name) from None
    if not text.strip():
        raise DataError("the file is empty", source=name)
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        hint = ""
        if exc.msg == "Extra data":
            # The classic mix-up: JSON Lines saved as ".json". Say so rather than guess, so a
            # genuinely corrupt JSON file is never half-read as JSONL.
            hint = "; if the file holds one JSON object per line, name the file .jsonl"
        raise DataError(f"invalid JSON: {exc.msg} at line {exc.lineno}, column {exc.colno}{hint}",
                        source=name) from None
    except RecursionError:
        raise DataError("invalid JSON: nested too deeply", source=name) from None

    if isinstance(value, dict):
        value = _rows_from_json_object(value, name, split)
    if not isinstance(value, list):
        raise DataError(f"expected a list of row objects, got {_json_type(value)}", source=name)
    if not value:
        raise DataError("contains no rows (an empty list)", source=name)
    for i, row in enumerate(value, 1):
        if not isinstance(row, dict):
            raise DataError(f"expected a JSON object, got {_json_type(row)}", source=name, row=i)
    return Records(value)


def _rows_from_json_object(obj: dict[str, Any], name: str, split: str) -> Any:
    # The split first, so {"train": [...], "test": [...]} works with split="test".
    keys = (split, *(k for k in JSON_ROW_KEYS if k != split))
    for key in keys:
        if isinstance(obj.get(key), list):
            return obj[key]
    have = ", ".join(repr(k) for k in list(obj)[:10]) or "none"
    raise DataError(
        f"a JSON object must hold the rows as a list under {split!r} (the split) or one of "
        f"{', '.join(map(repr, JSON_ROW_KEYS))}; its keys are {have}", source=name)


def _json_type(value: Any) -> str:
    """A parsed JSON value's type in JSON words ("a list", "a number"), for error messages."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, (int, float)):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "a list"
    return "an object" if isinstance(value, dict) else type(value).__name__


# --------------------------------------------------------------------------------------------
# CSV / TSV

# A byte that was not valid UTF-8, after decoding with errors="surrogateescape".
_UNDECODED = re.compile("[\udc80-\udcff]")


def _read_csv(path: Path, name: str, split: str) -> Records:
    """Read a delimited file with the stdlib csv module.

    The csv module (rather than pandas) keeps every value a ``str`` with no NaN or number
    guessing, and lets us report ragged rows by number instead of silently padding them.
    """
    data = path.read_bytes()
    try:
        text = data.decode("utf-8-sig")
        bad_utf8 = False
    except UnicodeDecodeError:
        # Decode anyway, keeping bad bytes as lone surrogates, so the error can name the CSV
        # record that holds them (a byte offset is useless once quoted cells span lines).
        text = data.decode("utf-8-sig", errors="surrogateescape")
        bad_utf8 = True
    delimiter = "\t" if path.suffix.lower() == ".tsv" else ","

    # Completions are often longer than csv's default 128 KiB field limit. The limit is
    # process-wide, so raise it only for this read and put it back afterwards.
    old_limit = csv.field_size_limit()
    csv.field_size_limit(2**31 - 1)
    try:
        rows = _parse_csv(text, delimiter, name, bad_utf8)
    finally:
        csv.field_size_limit(old_limit)
    if not rows:
        raise DataError("contains no rows (only a header line)", source=name)
    return Records(rows)


def _parse_csv(text: str, delimiter: str, name: str, bad_utf8: bool) -> list[dict[str, Any]]:
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter)
    rows: list[dict[str, Any]] = []
    try:
        header = next(reader, None)
        if header is None or not any(h.strip() for h in header):
            raise DataError("has no header line naming the columns", source=name)
        if bad_utf8 and any(_UNDECODED.search(h) for h in header):
            raise DataError("invalid UTF-8 in the header line; the file must be UTF-8 encoded",
                            source=name)
        header = [h.strip() for h in header]
        named = [h for h in header if h]
        dupes = sorted({h for h in named if named.count(h) > 1})
        if dupes:
            raise DataError(f"duplicate column name(s) {', '.join(map(repr, dupes))}", source=name)
        for values in reader:
            if not values:  # csv yields [] for a blank line
                continue
            row_no = len(rows) + 1
            if bad_utf8 and any(_UNDECODED.search(v) for v in values):
                raise DataError("invalid UTF-8; the file must be UTF-8 encoded",
                                source=name, row=row_no)
            if len(values) != len(header):
                raise DataError(f"has {len(values)} cells but the header has {len(header)}",
                                source=name, row=row_no)
            # Unnamed columns (e.g. the index pandas writes by default) carry nothing any
            # format uses, so they are dropped.
            rows.append({h: v for h, v in zip(header, values) if h})
    except csv.Error as exc:
        raise DataError(f"malformed CSV: {exc}", source=name, row=len(rows) + 1) from None
    return rows


# --------------------------------------------------------------------------------------------
# Parquet, saved datasets and the Hub


def _read_parquet(path: Path, name: str, split: str) -> Records:
    import pyarrow as pa  # imported lazily: the CLI should start fast for non-parquet data
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(path)
    except (pa.ArrowException, ValueError) as exc:
        raise DataError(f"cannot read Parquet: {exc}", source=name) from None
    if table.num_rows == 0:
        raise DataError("contains no rows", source=name)
    return Records(table.to_pylist())


def _read_saved_dataset(path: Path, name: str, split: str) -> Records:
    import datasets  # slow to import (~1 s); only pay for it when a dataset is used

    try:
        loaded = datasets.load_from_disk(str(path))
    except FileNotFoundError:
        raise DataError(
            "directory is not a dataset written by datasets' save_to_disk; "
            f"point at a data file instead ({', '.join(SUPPORTED_EXTENSIONS)})",
            source=name) from None
    except Exception as exc:  # noqa: BLE001 - a damaged save (bad state.json, truncated arrow)
        raise DataError(f"cannot load the saved dataset: {type(exc).__name__}: {exc}",
                        source=name) from exc
    if isinstance(loaded, datasets.DatasetDict):
        if split not in loaded:
            raise DataError(
                f"no split {split!r}; available splits: {', '.join(loaded)}",
                source=name)
        loaded = loaded[split]
    return _dataset_rows(loaded, name)


def _read_hub_dataset(name: str, split: str) -> Records:
    import datasets

    try:
        # Looked up on the module at call time (not imported by name) so tests can
        # monkeypatch datasets.load_dataset.
        loaded = datasets.load_dataset(name, split=split)
    except Exception as exc:  # noqa: BLE001 - network, auth, unknown id/split: all user-facing
        raise DataError(
            f"not a local file or directory, and loading it as a Hugging Face Hub dataset "
            f"(split {split!r}) failed: {type(exc).__name__}: {exc}", source=name) from exc
    return _dataset_rows(loaded, name)


def _dataset_rows(ds: Any, name: str) -> Records:
    rows = ds.to_list() if hasattr(ds, "to_list") else [dict(r) for r in ds]
    if not rows:
        raise DataError("contains no rows", source=name)
    return Records(rows)


_READERS = {
    ".jsonl": _read_jsonl,
    ".ndjson": _read_jsonl,
    ".json": _read_json,
    ".csv": _read_csv,
    ".tsv": _read_csv,
    ".parquet": _read_parquet,
}


def write_jsonl(path: str | os.PathLike, rows: Iterable[dict]) -> Path:
    """Write rows as JSON Lines atomically (temp file + rename): a crash never leaves half a file."""
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    try:
        with tmp.open("w", encoding="utf-8") as f:
            for r in rows:
                f.write(json.dumps(r, ensure_ascii=False) + "\n")
        os.replace(tmp, out)
    except BaseException:  # a row that cannot be serialised, a full disk: keep the old file, drop the temp
        tmp.unlink(missing_ok=True)
        raise
    return out
