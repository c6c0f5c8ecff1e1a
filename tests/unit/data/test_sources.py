"""read_records: the three file types, and errors that name the file, line or record."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from llmft.data.sources import RawRecord, read_records
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


def test_invalid_jsonl_line_names_file_and_line(tmp_path):
    path = write(tmp_path / "d.jsonl", '{"text": "a"}\n\n{"text": oops}\n{"text": "d"}\n')
    message = error(path)
    assert message.startswith(f"{path}:3: invalid JSON")


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
    path = write(tmp_path / "d.jsonl", '{"text": "a"}\n{"text": "b"}\n{"text": "caf'.encode() + b'\xe9"}\n')
    message = error(path)
    assert message.startswith(f"{KEY}: {path}:3: not UTF-8")
    assert "UTF-8" in message


def test_missing_file_names_the_recipe_key(tmp_path):
    path = tmp_path / "nope.jsonl"
    message = error(path, key="data.eval.1.path")
    assert message == f"data.eval.1.path: file not found: {path}"


def test_directory(tmp_path):
    (tmp_path / "dir.jsonl").mkdir()
    message = error(tmp_path / "dir.jsonl")
    assert message.startswith(f"{KEY}: {tmp_path / 'dir.jsonl'} is a directory")


@pytest.mark.parametrize("name", ["d.csv", "d.parquet", "data"])
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
