"""Reading raw rows from wherever a user keeps their data.

Every stage takes its data as a plain ``list[dict]`` of raw rows; what the rows *mean* (SFT,
preference, ranking, prompts) is decided later by :mod:`rlhfkit.data.formats`. Keeping the two
apart means each file type is parsed in one place and every format works from every source.

Sources, picked in this order:

1. an existing directory: a ``datasets`` ``Dataset``/``DatasetDict`` written by
   ``save_to_disk`` (for a ``DatasetDict`` the ``split`` is taken);
2. an existing file, by extension: ``.jsonl``/``.ndjson``, ``.json``, ``.csv``, ``.parquet``;
3. a name that does not exist locally and looks like a hub id (``name`` or ``org/name``):
   ``datasets.load_dataset(name, split=split)``.

A missing path that *looks* like a file (it has a data-file extension, starts with ``.``, ``/``
or ``~``, or has more than one ``/``) is reported as "file not found" instead of being sent to
the hub, where a typo would turn into a confusing network error.

All problems a user can cause (missing file, bad bytes, bad JSON, a row that is not an object)
raise :class:`~rlhfkit.errors.DataError` naming the file and, where there is one, the 1-based
row. Row numbers in JSONL files are line numbers (blank lines are skipped but still counted),
so they match what an editor shows; the list returned is a :class:`Records` that remembers
them, and :func:`rlhfkit.data.formats.normalize` uses them in its own messages.
"""

from __future__ import annotations

import csv
import io
import json
import os
import re
from pathlib import Path
from typing import Any

from rlhfkit.errors import DataError

JSONL_EXTS = (".jsonl", ".ndjson")
SUPPORTED_EXTS = (*JSONL_EXTS, ".json", ".csv", ".parquet")
# Extensions that mark a string as a local path even when it does not exist: these are never
# hub ids, so a typo in a file name gets "file not found" rather than a hub lookup.
_PATH_LIKE_EXTS = (*SUPPORTED_EXTS, ".tsv", ".txt", ".arrow", ".gz", ".zst", ".bz2", ".xz", ".zip")
# Hub ids: "name" or "org/name" made of letters, digits, "-", "_" and ".".
_HUB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]*(/[A-Za-z0-9][A-Za-z0-9_.\-]*)?$")
# For a top-level JSON object, the keys tried (after the split name) for the list of rows.
JSON_ROW_KEYS = ("data", "rows", "records", "examples", "instances")


class Records(list):
    """A ``list[dict]`` of raw rows that also carries each row's 1-based number in its source.

    ``row_numbers[i]`` is the number to show for ``self[i]`` (a line number for JSONL, which
    differs from ``i + 1`` after blank lines). It is ``None`` when numbers are just ``i + 1``.
    """

    row_numbers: list[int] | None = None

    def __init__(self, rows=(), row_numbers: list[int] | None = None):
        super().__init__(rows)
        self.row_numbers = row_numbers


def read_records(source: str | os.PathLike, *, split: str = "train") -> list[dict]:
    """Load the raw rows of ``source`` (a file, a ``save_to_disk`` directory or a hub id).

    ``split`` picks the split of a ``DatasetDict`` directory, of a hub dataset, or (for a
    ``.json`` file holding an object) the key holding the rows. Raises :class:`DataError` for
    anything wrong with the input; never returns an empty list.
    """
    name = os.fspath(source)
    path = Path(name).expanduser()
    if path.is_dir():
        rows = _read_saved_dataset(path, name, split)
    elif path.is_file():
        ext = _extension(path)
        if ext not in SUPPORTED_EXTS:
            raise DataError(f"unsupported file type '{ext or path.name}'; supported: "
                            f"{', '.join(SUPPORTED_EXTS)}, a save_to_disk directory or a hub dataset id",
                            source=name)
        if path.stat().st_size == 0:
            raise DataError("the file is empty", source=name)
        if ext in JSONL_EXTS:
            rows = _read_jsonl(path, name)
        elif ext == ".json":
            rows = _read_json(path, name, split)
        elif ext == ".csv":
            rows = _read_csv(path, name)
        else:
            rows = _read_parquet(path, name)
    elif path.exists():
        raise DataError("not a regular file or directory", source=name)
    elif _looks_like_path(name) or not _HUB_ID.match(name):
        raise DataError("file not found", source=name)
    else:
        rows = _read_hub(name, split)
    if not rows:
        raise DataError("contains no rows", source=name)
    return rows


def _extension(path: Path) -> str:
    return path.suffix.lower()


def _looks_like_path(name: str) -> bool:
    return (name.startswith((".", "/", "~")) or "\\" in name or name.count("/") > 1
            or name.endswith("/") or Path(name).suffix.lower() in _PATH_LIKE_EXTS)


def _read_jsonl(path: Path, name: str) -> Records:
    # Bytes, split on "\n" only: str.splitlines would also split on characters such as U+2028
    # that JSON allows inside strings, and decoding line by line lets a bad byte be pinned to
    # its row instead of failing the whole file.
    data = path.read_bytes()
    if data.startswith(b"\xef\xbb\xbf"):  # a UTF-8 byte-order mark, as some Windows editors write
        data = data[3:]
    rows: list[dict] = []
    numbers: list[int] = []
    loads = json.loads
    for lineno, raw in enumerate(data.split(b"\n"), start=1):
        if not raw.strip():
            continue
        try:
            line = raw.decode("utf-8")
        except UnicodeDecodeError as e:
            raise DataError(f"invalid UTF-8 at byte {e.start + 1} of the line "
                            f"({raw[e.start:e.start + 4]!r}); the file must be UTF-8",
                            source=name, row=lineno) from None
        try:
            obj = loads(line)
        except json.JSONDecodeError as e:
            raise DataError(f"invalid JSON: {e.msg} at column {e.colno}", source=name, row=lineno) from None
        except RecursionError:
            raise DataError("invalid JSON: nested too deeply", source=name, row=lineno) from None
        if not isinstance(obj, dict):
            raise DataError(f"expected a JSON object ({{...}}) on each line, got {_json_type(obj)}",
                            source=name, row=lineno)
        rows.append(obj)
        numbers.append(lineno)
    return Records(rows, numbers)


def _read_json(path: Path, name: str, split: str) -> list[dict]:
    """A ``.json`` file holds either a list of row objects, or an object with the list under
    the split name (e.g. ``"train"``) or, failing that, the first of :data:`JSON_ROW_KEYS`
    (``"data"``, ``"rows"``, ...) present, or else its only list-valued key."""
    try:
        doc = json.loads(path.read_bytes().decode("utf-8-sig"))
    except UnicodeDecodeError as e:
        raise DataError(f"invalid UTF-8 at byte {e.start + 1}; the file must be UTF-8", source=name) from None
    except json.JSONDecodeError as e:
        # "Extra data" after a complete first value is the usual sign of JSON Lines in a .json file.
        hint = " (one object per line is JSON Lines: name the file .jsonl)" if e.msg == "Extra data" else ""
        raise DataError(f"invalid JSON: {e.msg} at line {e.lineno}, column {e.colno}{hint}",
                        source=name) from None
    except RecursionError:
        raise DataError("invalid JSON: nested too deeply", source=name) from None
    if isinstance(doc, dict):
        lists = [k for k, v in doc.items() if isinstance(v, list)]
        key = next((k for k in (split, *JSON_ROW_KEYS) if k in lists), None)
        if key is None and len(lists) == 1:
            key = lists[0]
        if key is None:
            raise DataError(f"a JSON object must hold the rows as a list under '{split}' or one of "
                            f"{', '.join(repr(k) for k in JSON_ROW_KEYS)}; found list keys: "
                            f"{', '.join(map(repr, lists)) or 'none'}", source=name)
        doc = doc[key]
    elif not isinstance(doc, list):
        raise DataError(f"expected a list of row objects, got {_json_type(doc)}", source=name)
    for i, row in enumerate(doc, start=1):
        if not isinstance(row, dict):
            raise DataError(f"expected a JSON object, got {_json_type(row)}", source=name, row=i)
    return doc


def _read_csv(path: Path, name: str) -> list[dict]:
    """CSV cells stay strings (an empty cell is ``""``, never NaN): guessing types would turn a
    prompt such as ``"1"`` into an int and break text fields."""
    data = path.read_bytes()
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        # Parse what decodes cleanly to find the row the bad byte falls in (quoted cells may
        # span lines, so counting newlines would be off).
        good = data[: e.start].decode("utf-8-sig", errors="replace")
        n_rows = sum(1 for _ in csv.reader(io.StringIO(good))) - 1  # minus the header
        raise DataError(f"invalid UTF-8 ({data[e.start:e.start + 4]!r}); the file must be UTF-8",
                        source=name, row=max(n_rows, 1)) from None
    # The default cap of 128 KiB per cell is below a long document or conversation.
    csv.field_size_limit(max(csv.field_size_limit(), 2**31 - 1))
    i = 0
    try:
        reader = csv.reader(io.StringIO(text, newline=""))
        header = next(reader, None)
        if not header:
            raise DataError("no header row", source=name)
        if len(set(header)) != len(header):
            dup = sorted({h for h in header if header.count(h) > 1})
            raise DataError(f"duplicate column names in the header: {', '.join(dup)}", source=name)
        rows = []
        for i, cells in enumerate(reader, start=1):
            if not cells:  # a blank line
                continue
            if len(cells) != len(header):
                raise DataError(f"has {len(cells)} cells but the header has {len(header)}",
                                source=name, row=i)
            rows.append(dict(zip(header, cells)))
    except csv.Error as e:
        raise DataError(f"invalid CSV: {e}", source=name, row=i + 1) from None
    return rows


def _read_parquet(path: Path, name: str) -> list[dict]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        return pq.read_table(path).to_pylist()
    except (pa.ArrowException, OSError) as e:
        raise DataError(f"cannot read Parquet: {e}", source=name) from None


def _to_rows(ds: Any, name: str, split: str) -> list[dict]:
    """A ``Dataset`` (or a ``DatasetDict``, from which ``split`` is taken) -> list of dicts."""
    if isinstance(ds, dict):  # DatasetDict and IterableDatasetDict are dict subclasses
        splits = list(ds.keys())
        if split not in splits:
            raise DataError(f"no split '{split}'; available splits: {', '.join(splits) or 'none'}",
                            source=name)
        ds = ds[split]
    if hasattr(ds, "to_list"):
        return ds.to_list()
    return [dict(r) for r in ds]  # an IterableDataset or a plain iterable


def _read_saved_dataset(path: Path, name: str, split: str) -> list[dict]:
    import datasets

    try:
        ds = datasets.load_from_disk(str(path))
    except FileNotFoundError:
        raise DataError("a directory must be a dataset written by Dataset.save_to_disk or "
                        "DatasetDict.save_to_disk (no dataset_info.json / dataset_dict.json found)",
                        source=name) from None
    except Exception as e:  # corrupted arrow files and the like: datasets raises many types
        raise DataError(f"cannot load the saved dataset: {type(e).__name__}: {e}", source=name) from None
    return _to_rows(ds, name, split)


def _read_hub(name: str, split: str) -> list[dict]:
    import datasets

    try:
        ds = datasets.load_dataset(name, split=split)
    except Exception as e:  # network, auth, unknown dataset or split: all the user's to fix
        raise DataError(f"not a local file or directory, and loading it as a Hugging Face hub dataset "
                        f"(split '{split}') failed: {type(e).__name__}: {e}", source=name) from None
    return _to_rows(ds, name, split)


def _json_type(obj: Any) -> str:
    if obj is None:
        return "null"
    return {dict: "an object", list: "a list", str: "a string", bool: "a boolean",
            int: "a number", float: "a number"}.get(type(obj), type(obj).__name__)
