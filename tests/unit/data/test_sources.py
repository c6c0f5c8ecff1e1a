"""read_records / read_source: file types, directories, saved datasets, columns, and errors that
name the file, line or record."""

from __future__ import annotations

import json
from pathlib import Path

import datasets
import pytest

from llmft.config.data import DatasetSpec
from llmft.data.sources import RawRecord, read_records, read_source
from llmft.errors import UserError

KEY = "data.train.0.path"


def write(path: Path, text: str | bytes) -> Path:
    if isinstance(text, bytes):
        path.write_bytes(text)
    else:
        path.write_text(text, encoding="utf-8")
    return path


def test_json_array(tmp_path):
    rows = [{"text": "a"}, {"text": "b"}, {"text": "c"}]
    path = write(tmp_path / "d.json", json.dumps(rows, indent=2))
    assert read_records(str(path), KEY) == [
        RawRecord({"text": "a"}, f"{path} record 0"),
        RawRecord({"text": "b"}, f"{path} record 1"),
        RawRecord({"text": "c"}, f"{path} record 2"),
    ]


def test_jsonl_skips_blank_lines_and_locates_by_line(tmp_path):
    path = write(tmp_path / "d.jsonl", '{"text": "a"}\n\n   \n{"text": "b"}\r\n{"text": "c"}')
    assert read_records(str(path), KEY) == [
        RawRecord({"text": "a"}, f"{path}:1"),
        RawRecord({"text": "b"}, f"{path}:4"),
        RawRecord({"text": "c"}, f"{path}:5"),
    ]


def test_jsonl_with_unicode_line_separator_inside_a_string(tmp_path):
    """U+2028 is legal unescaped inside a JSON string; it does not end a JSONL line."""
    rows = [{"text": "one\u2028two\x85three"}, {"text": "four"}]
    path = write(tmp_path / "d.jsonl", "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
    assert read_records(str(path), KEY) == [RawRecord(rows[0], f"{path}:1"), RawRecord(rows[1], f"{path}:2")]


def test_utf8_bom_is_accepted(tmp_path):
    path = write(tmp_path / "d.jsonl", b'\xef\xbb\xbf{"text": "a"}\n')
    assert read_records(str(path), KEY) == [RawRecord({"text": "a"}, f"{path}:1")]


def test_txt_one_record_per_non_empty_line(tmp_path):
    path = write(tmp_path / "d.txt", "first line\n\n  \nsecond line\r\nthird\n")
    assert read_records(str(path), KEY) == [
        RawRecord({"text": "first line"}, f"{path}:1"),
        RawRecord({"text": "second line"}, f"{path}:4"),
        RawRecord({"text": "third"}, f"{path}:5"),
    ]


def test_tilde_is_expanded(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    write(tmp_path / "d.txt", "hello\n")
    assert read_records("~/d.txt", KEY)[0].value == {"text": "hello"}


# --- errors ------------------------------------------------------------------------------


def error(path, key=KEY) -> str:
    with pytest.raises(UserError) as info:
        read_records(str(path), key)
    return str(info.value)


def test_invalid_jsonl_line_is_a_bad_record_naming_file_and_line(tmp_path):
    """Left to data.on_bad_record like any other bad record (the formats raise or skip it)."""
    path = write(tmp_path / "d.jsonl", '{"text": "a"}\n\n{"text": oops}\n{"text": "d"}\n')
    assert read_records(str(path), KEY) == [
        RawRecord({"text": "a"}, f"{path}:1"),
        RawRecord(None, f"{path}:3", "invalid JSON: Expecting value (column 10)"),
        RawRecord({"text": "d"}, f"{path}:4"),
    ]


def test_json_object_instead_of_array(tmp_path):
    path = write(tmp_path / "d.json", '{"text": "a"}')
    message = error(path)
    assert message.startswith(f"{path}:") and "array of records" in message and "dict" in message


def test_json_with_one_object_per_line_hints_at_jsonl(tmp_path):
    path = write(tmp_path / "d.json", '{"text": "a"}\n{"text": "b"}\n')
    message = error(path)
    assert message.startswith(f"{path}:2: invalid JSON")
    assert "name it .jsonl" in message


def test_invalid_json_names_the_line(tmp_path):
    path = write(tmp_path / "d.json", '[\n  {"text": "a"},\n  {"text": }\n]')
    message = error(path)
    assert message.startswith(f"{path}:3: invalid JSON")
    assert ".jsonl" not in message


def test_non_utf8_names_file_and_line(tmp_path):
    path = write(tmp_path / "d.jsonl", b'{"text": "a"}\n{"text": "b"}\n{"text": "caf' + b'\xe9"}\n')
    message = error(path)
    assert message.startswith(f"{KEY}: {path}:3: not UTF-8")
    assert "UTF-8" in message


def test_missing_file_names_the_recipe_key(tmp_path):
    path = tmp_path / "nope.jsonl"
    message = error(path, key="data.eval.1.path")
    assert message == f"data.eval.1.path: file not found: {path}"


def test_read_records_directory_without_data_files(tmp_path):
    (tmp_path / "dir.jsonl").mkdir()
    message = error(tmp_path / "dir.jsonl")
    assert message.startswith(f"{KEY}: {tmp_path / 'dir.jsonl'} is a directory")


@pytest.mark.parametrize("name", ["d.tsv", "d.xlsx", "data"])
def test_unsupported_suffix(tmp_path, name):
    path = write(tmp_path / name, "text\na\n")
    message = error(path)
    assert message.startswith(f"{KEY}: {path}: unsupported file type")
    assert ".jsonl" in message


@pytest.mark.parametrize("name, text", [("e.jsonl", ""), ("e.txt", "\n \n"), ("e.json", ""), ("e.jsonl", "\n\n")])
def test_empty_file(tmp_path, name, text):
    path = write(tmp_path / name, text)
    message = error(path)
    assert message == f"{KEY}: {path} is empty"


def test_empty_json_array(tmp_path):
    path = write(tmp_path / "e.json", "[]")
    assert error(path) == f"{KEY}: {path} holds no records"


# --- read_source: CSV, text_unit, directories, saved datasets, columns -------------------------

ENTRY = "data.train.0"


def source(path, **spec) -> list[RawRecord]:
    return read_source(DatasetSpec(path=str(path), **spec), ENTRY)


def source_error(path, **spec) -> str:
    with pytest.raises(UserError) as info:
        source(path, **spec)
    return str(info.value)


def test_read_source_names_the_path_key(tmp_path):
    assert source_error(tmp_path / "nope.json") == f"{ENTRY}.path: file not found: {tmp_path / 'nope.json'}"


def test_csv_header_and_rows(tmp_path):
    path = write(tmp_path / "d.csv", 'human,assistant\nHi,Hello\n\n"a, b","say ""c"""\n')
    assert source(path) == [
        RawRecord({"human": "Hi", "assistant": "Hello"}, f"{path}:2"),
        RawRecord({"human": "a, b", "assistant": 'say "c"'}, f"{path}:4"),
    ]


def test_csv_quoted_newline_is_located_at_the_row_start(tmp_path):
    path = write(tmp_path / "d.csv", 'human, assistant\r\n"two\nlines",x\r\nlast,y\r\n')
    assert source(path) == [
        RawRecord({"human": "two\nlines", "assistant": "x"}, f"{path}:2"),
        RawRecord({"human": "last", "assistant": "y"}, f"{path}:4"),
    ]


def test_csv_bom_and_long_field(tmp_path):
    long = "x" * 200_000  # beyond the csv module's default field size limit
    path = write(tmp_path / "d.csv", ("\ufefftext\n" + long + "\n").encode())
    assert source(path) == [RawRecord({"text": long}, f"{path}:2")]


@pytest.mark.parametrize(
    "text, line, problem",
    [
        ("human,assistant\nHi,Hello\nHi,Hello,extra\n", 3, "malformed CSV row: 3 field(s), the header has 2"),
        ("human,assistant\nHi\n", 2, "malformed CSV row: 1 field(s), the header has 2"),
    ],
)
def test_csv_row_with_the_wrong_field_count_is_a_bad_record(tmp_path, text, line, problem):
    path = write(tmp_path / "d.csv", text)
    bad = [r for r in source(path) if r.problem]
    assert bad == [RawRecord(None, f"{path}:{line}", f"{problem} (quote values that contain commas)")]


@pytest.mark.parametrize(
    "text, line, problem",
    [
        ('human,assistant\nHi,Hello\nHi,"unterminated\nmore\n', 3, "malformed CSV row: unexpected end of data"),
        ('human,assistant\nHi,"x"y\n', 2, "malformed CSV row: ',' expected after '\"'"),
        ("human,human\nHi,Hello\n", 1, "the header names column(s) 'human' more than once"),
    ],
)
def test_csv_malformed(tmp_path, text, line, problem):
    path = write(tmp_path / "d.csv", text)
    message = source_error(path)
    assert message.startswith(f"{path}:{line}: {problem}")


def test_csv_header_only(tmp_path):
    path = write(tmp_path / "d.csv", "human,assistant\n")
    assert source_error(path) == f"{ENTRY}.path: {path} holds no records"


def test_txt_text_unit_line_and_file(tmp_path):
    path = write(tmp_path / "d.txt", "one\n\ntwo\n")
    assert [r.value["text"] for r in source(path)] == ["one", "two"]
    assert source(path, text_unit="file") == [RawRecord({"text": "one\n\ntwo\n"}, str(path))]


def test_directory_reads_every_data_file_sorted_by_name(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    write(data / "b.jsonl", '{"text": "b1"}\n{"text": "b2"}\n')
    write(data / "a.json", '[{"text": "a1"}]')
    write(data / "c.txt", "c1\n")
    write(data / "d.csv", "text\nd1\n")
    write(data / "README.md", "not data")
    write(data / ".hidden.jsonl", '{"text": "hidden"}\n')
    (data / "sub").mkdir()
    write(data / "sub" / "e.jsonl", '{"text": "nested"}\n')
    records = source(data)
    assert [r.value["text"] for r in records] == ["a1", "b1", "b2", "c1", "d1"]
    assert [r.where for r in records] == [
        f"{data / 'a.json'} record 0",
        f"{data / 'b.jsonl'}:1",
        f"{data / 'b.jsonl'}:2",
        f"{data / 'c.txt'}:1",
        f"{data / 'd.csv'}:2",
    ]


def test_directory_text_unit_file(tmp_path):
    write(tmp_path / "2.txt", "second\ndoc\n")
    write(tmp_path / "1.txt", "first doc")
    assert [r.value["text"] for r in source(tmp_path, text_unit="file")] == ["first doc", "second\ndoc\n"]


def test_directory_without_data_files(tmp_path):
    write(tmp_path / "notes.md", "x")
    message = source_error(tmp_path)
    assert message.startswith(
        f"{ENTRY}.path: {tmp_path} is a directory with no .json, .jsonl, .csv, .txt, .parquet, .arrow files"
    )


def test_directory_errors_name_the_file(tmp_path):
    write(tmp_path / "a.jsonl", '{"text": "a"}\n')
    write(tmp_path / "b.jsonl", '{"text": "a"}\n{"text": \n')
    assert source(tmp_path)[2] == RawRecord(None, f"{tmp_path / 'b.jsonl'}:2", "invalid JSON: Expecting value (column 10)")
    write(tmp_path / "c.json", '[{"text": "a"},\n]')  # a JSON array has no record to skip past: an error
    assert source_error(tmp_path) == f"{tmp_path / 'c.json'}:2: invalid JSON: Expecting value (column 1)"


# --- save_to_disk ------------------------------------------------------------------------------

ROWS = [{"instruction": "q1", "output": "a1"}, {"instruction": "q2", "output": "a2"}]


def test_saved_dataset(tmp_path):
    datasets.Dataset.from_list(ROWS).save_to_disk(str(tmp_path / "saved"))
    assert source(tmp_path / "saved") == [
        RawRecord(ROWS[0], f"{tmp_path / 'saved'} record 0"),
        RawRecord(ROWS[1], f"{tmp_path / 'saved'} record 1"),
    ]


def test_saved_dataset_dict_with_one_split(tmp_path):
    datasets.DatasetDict({"train": datasets.Dataset.from_list(ROWS)}).save_to_disk(str(tmp_path / "saved"))
    assert [r.value for r in source(tmp_path / "saved")] == ROWS


def test_saved_dataset_dict_with_several_splits(tmp_path):
    split = datasets.Dataset.from_list(ROWS)
    datasets.DatasetDict({"train": split, "test": split}).save_to_disk(str(tmp_path / "saved"))
    message = source_error(tmp_path / "saved")
    assert message.startswith(f"{ENTRY}.path: {tmp_path / 'saved'} holds a DatasetDict with splits train, test")
    assert str(tmp_path / "saved" / "train") in message
    assert [r.value for r in source(tmp_path / "saved" / "test")] == ROWS  # one split directory loads


def test_saved_dataset_empty(tmp_path):
    datasets.Dataset.from_dict({"text": []}).save_to_disk(str(tmp_path / "saved"))
    # datasets may refuse to load an empty save itself; either way the message names the entry and directory
    assert source_error(tmp_path / "saved").startswith(f"{ENTRY}.path: {tmp_path / 'saved'}")


def test_saved_dataset_that_cannot_load(tmp_path):
    write(tmp_path / "state.json", "{}")
    assert "cannot load the dataset saved there" in source_error(tmp_path)


# --- columns -----------------------------------------------------------------------------------


def test_columns_rename_fields(tmp_path):
    path = write(tmp_path / "d.jsonl", '{"question": "q", "answer": "a", "id": 1}\n')
    [record] = source(path, columns={"instruction": "question", "output": "answer"})
    assert record == RawRecord({"id": 1, "instruction": "q", "output": "a"}, f"{path}:1")


def test_columns_swap_and_copy(tmp_path):
    path = write(tmp_path / "d.csv", "a,b\n1,2\n")
    [record] = source(path, columns={"a": "b", "b": "a", "c": "a"})
    assert record.value == {"a": "2", "b": "1", "c": "1"}


def test_columns_missing_column_is_a_bad_record(tmp_path):
    path = write(tmp_path / "d.jsonl", '{"question": "q", "answer": "a"}\n{"question": "q"}\n')
    first, second = source(path, columns={"instruction": "question", "output": "answer"})
    assert first.problem is None
    assert second == RawRecord({"instruction": "q"}, f"{path}:2", "missing column 'answer' (columns maps 'output' to it)")


def test_columns_leave_non_objects_to_the_format(tmp_path):
    path = write(tmp_path / "d.json", '[["a"]]')
    assert source(path, columns={"text": "body"}) == [RawRecord(["a"], f"{path} record 0")]
