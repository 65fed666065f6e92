"""read_records: every source type gives the same rows, and bad files give a DataError that
names the file and row."""

from __future__ import annotations

import csv
import json

import pytest

from rlhfkit.data import normalize, read_records
from rlhfkit.errors import DataError

ROWS = [
    {"prompt": "Q: 2+2?", "chosen": " 4", "rejected": " 5"},
    {"prompt": "Say \"hi\", politely\nplease", "chosen": " héllo ✓", "rejected": ""},
    {"prompt": "1", "chosen": " a,b", "rejected": " c"},  # "1" must stay a string in CSV
]


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return path


def write_csv(path, rows):
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    return path


def write_parquet(path, rows):
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.Table.from_pylist(rows), path)
    return path


@pytest.mark.parametrize("kind", ["jsonl", "json_list", "json_data", "json_split", "csv", "parquet",
                                  "dataset_dir", "dataset_dict_dir"])
def test_every_source_round_trips(tmp_path, kind):
    import datasets

    if kind == "jsonl":
        src = write_jsonl(tmp_path / "d.jsonl", ROWS)
    elif kind == "json_list":
        src = tmp_path / "d.json"
        src.write_text(json.dumps(ROWS))
    elif kind == "json_data":
        src = tmp_path / "d.json"
        src.write_text(json.dumps({"version": 1, "tags": ["x"], "data": ROWS}))
    elif kind == "json_split":
        src = tmp_path / "d.json"
        src.write_text(json.dumps({"train": ROWS, "test": ROWS[:1]}))
    elif kind == "csv":
        src = write_csv(tmp_path / "d.csv", ROWS)
    elif kind == "parquet":
        src = write_parquet(tmp_path / "d.parquet", ROWS)
    elif kind == "dataset_dir":
        src = tmp_path / "ds"
        datasets.Dataset.from_list(ROWS).save_to_disk(str(src))
    else:
        src = tmp_path / "dd"
        datasets.DatasetDict({"train": datasets.Dataset.from_list(ROWS),
                              "test": datasets.Dataset.from_list(ROWS[:1])}).save_to_disk(str(src))
    assert read_records(src) == ROWS
    assert read_records(str(src)) == ROWS
    if kind in ("json_split", "dataset_dict_dir"):
        assert read_records(src, split="test") == ROWS[:1]


def test_dataset_dict_missing_split_lists_available(tmp_path):
    import datasets

    src = tmp_path / "dd"
    datasets.DatasetDict({"train": datasets.Dataset.from_list(ROWS),
                          "test": datasets.Dataset.from_list(ROWS)}).save_to_disk(str(src))
    with pytest.raises(DataError, match=r"dd: no split 'validation'; available splits: train, test"):
        read_records(src, split="validation")


def test_plain_directory_is_not_a_dataset(tmp_path):
    with pytest.raises(DataError, match="save_to_disk"):
        read_records(tmp_path)


def test_csv_keeps_strings_and_empty_cells(tmp_path):
    src = tmp_path / "d.csv"
    src.write_text("prompt,completion,margin\n007,,1.5\n", encoding="utf-8")
    assert read_records(src) == [{"prompt": "007", "completion": "", "margin": "1.5"}]


def test_csv_ragged_row(tmp_path):
    src = tmp_path / "d.csv"
    src.write_text("prompt,completion\na,b\nc,d,e\n", encoding="utf-8")
    with pytest.raises(DataError, match=r"d.csv, row 2: has 3 cells but the header has 2"):
        read_records(src)


def test_jsonl_undecodable_bytes(tmp_path):
    src = tmp_path / "bad.jsonl"
    src.write_bytes(b'{"text": "ok"}\n{"text": "caf\xe9"}\n')
    with pytest.raises(DataError) as e:
        read_records(src)
    assert (e.value.row, e.value.field) == (2, None)
    assert str(e.value).startswith(f"{src}, row 2: invalid UTF-8")


def test_csv_undecodable_bytes_names_row(tmp_path):
    src = tmp_path / "bad.csv"
    src.write_bytes(b'text\n"multi\nline"\nok\ncaf\xe9\n')
    with pytest.raises(DataError, match=r"bad.csv, row 3: invalid UTF-8"):
        read_records(src)


def test_jsonl_invalid_json_line(tmp_path):
    src = tmp_path / "bad.jsonl"
    src.write_text('{"text": "a"}\n\n{"text": "b",}\n')
    with pytest.raises(DataError, match=r"bad.jsonl, row 3: invalid JSON: .* at column"):
        read_records(src)


def test_jsonl_line_not_an_object(tmp_path):
    src = tmp_path / "bad.jsonl"
    src.write_text('{"text": "a"}\n["text", "b"]\n')
    with pytest.raises(DataError, match=r"bad.jsonl, row 2: expected a JSON object .* got a list"):
        read_records(src)


def test_jsonl_blank_lines_keep_line_numbers_and_bom(tmp_path):
    src = tmp_path / "d.jsonl"
    src.write_bytes(b'\xef\xbb\xbf{"text": "a"}\r\n\r\n{"text": "b"}\n\n')
    rows = read_records(src)
    assert rows == [{"text": "a"}, {"text": "b"}] and rows.row_numbers == [1, 3]


def test_json_errors(tmp_path):
    src = tmp_path / "d.json"
    src.write_text('[{"text": "a"},\n {"text": }]')
    with pytest.raises(DataError, match=r"d.json: invalid JSON: .* line 2"):
        read_records(src)
    src.write_text('{"text": "a"}\n{"text": "b"}\n')
    with pytest.raises(DataError, match=r"d.json: invalid JSON: Extra data .*name the file .jsonl"):
        read_records(src)
    src.write_text('[{"text": "a"}, 3]')
    with pytest.raises(DataError, match=r"d.json, row 2: expected a JSON object, got a number"):
        read_records(src)
    src.write_text('{"a": [], "b": []}')
    with pytest.raises(DataError, match=r"d.json: a JSON object must hold the rows as a list under 'train'"):
        read_records(src)
    src.write_text('"just a string"')
    with pytest.raises(DataError, match="expected a list of row objects, got a string"):
        read_records(src)


def test_empty_files(tmp_path):
    for name in ("e.jsonl", "e.json", "e.csv", "e.parquet"):
        (tmp_path / name).write_bytes(b"")
        with pytest.raises(DataError, match=rf"{name}: the file is empty"):
            read_records(tmp_path / name)
    (tmp_path / "blank.jsonl").write_text("\n\n")
    with pytest.raises(DataError, match="blank.jsonl: contains no rows"):
        read_records(tmp_path / "blank.jsonl")
    (tmp_path / "header.csv").write_text("prompt,completion\n")
    with pytest.raises(DataError, match="header.csv: contains no rows"):
        read_records(tmp_path / "header.csv")


def test_corrupt_parquet(tmp_path):
    src = tmp_path / "d.parquet"
    src.write_bytes(b"not parquet at all")
    with pytest.raises(DataError, match="d.parquet: cannot read Parquet"):
        read_records(src)


def test_unknown_extension_lists_supported(tmp_path):
    src = tmp_path / "d.xlsx"
    src.write_text("x")
    with pytest.raises(DataError, match=r"d.xlsx: unsupported file type '.xlsx'; supported: .jsonl, .ndjson, "
                                        r".json, .csv, .parquet"):
        read_records(src)


@pytest.mark.parametrize("name", ["data/x.jsonl", "./x.csv", "x.parquet", "/nope/dir/", "../a/b"])
def test_missing_local_path_is_file_not_found(name, monkeypatch):
    import datasets

    def no_hub(*a, **k):
        raise AssertionError("a local-looking path must not go to the hub")

    monkeypatch.setattr(datasets, "load_dataset", no_hub)
    with pytest.raises(DataError, match=rf"^{name}: file not found$"):
        read_records(name)


def test_hub_id_uses_load_dataset(monkeypatch):
    import datasets

    calls = []

    def fake_load(name, split=None, **kw):
        calls.append((name, split))
        return datasets.Dataset.from_list(ROWS)

    monkeypatch.setattr(datasets, "load_dataset", fake_load)
    assert read_records("org/prefs", split="test") == ROWS
    assert read_records("prefs") == ROWS
    assert calls == [("org/prefs", "test"), ("prefs", "train")]


def test_hub_failure_is_a_data_error(monkeypatch):
    import datasets

    def fail(name, split=None, **kw):
        raise ConnectionError("no network")

    monkeypatch.setattr(datasets, "load_dataset", fail)
    with pytest.raises(DataError, match=r"org/prefs: not a local file .* \(split 'train'\) failed: "
                                        r"ConnectionError: no network"):
        read_records("org/prefs")


def test_large_jsonl_loads_and_normalises(tmp_path):
    src = tmp_path / "big.jsonl"
    row = {"prompt": "Tell me about the film. " * 3, "completion": " It was good, I think. " * 8}
    line = json.dumps(row) + "\n"
    n = 5 * 2**20 // len(line) + 1
    src.write_text(line * n)
    assert src.stat().st_size >= 5 * 2**20
    rows = read_records(src)
    assert len(rows) == n and rows[-1] == row
    out, rep = normalize(rows, "sft", source=str(src))
    assert rep.kept == n and out[0] == row


def test_tsv_and_unnamed_index_column(tmp_path):
    import pandas as pd

    src = tmp_path / "d.csv"
    pd.DataFrame(ROWS).to_csv(src)  # pandas writes its index as an unnamed first column
    assert read_records(src) == ROWS
    tsv = tmp_path / "d.tsv"
    tsv.write_text("prompt\tcompletion\nhi, there\t ok\n", encoding="utf-8")
    assert read_records(tsv) == [{"prompt": "hi, there", "completion": " ok"}]


def test_name_inside_an_existing_local_dir_is_not_a_hub_id(tmp_path, monkeypatch):
    import datasets

    monkeypatch.setattr(datasets, "load_dataset", lambda *a, **k: pytest.fail("went to the hub"))
    monkeypatch.chdir(tmp_path)
    (tmp_path / "mydata").mkdir()
    with pytest.raises(DataError, match=r"^mydata/train: file not found$"):
        read_records("mydata/train")


def test_damaged_saved_dataset(tmp_path):
    import datasets

    src = tmp_path / "ds"
    datasets.Dataset.from_list(ROWS).save_to_disk(str(src))
    (src / "state.json").write_text("{not json")
    with pytest.raises(DataError, match=r"ds: cannot load the saved dataset"):
        read_records(src)
