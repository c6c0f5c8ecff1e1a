"""Read a dataset source into raw records, each tagged with where it came from.

A source is a file (.json array, .jsonl, .csv with a header row, .txt, .parquet, .arrow), a directory
of such files, a directory written by `datasets.Dataset.save_to_disk`, or a hub dataset
(`hub:ID[:config][@split]`, llmft/data/hub.py). Locations are `file:line` for line-based files,
`file record N` / `dir record N` for JSON arrays, columnar files and saved datasets, and
`hub:ID@split[N]` for hub rows.

`iter_source` reads lazily (`data.streaming`): line-based, columnar and hub sources a record at a
time, so memory stays flat in the corpus size; a .json array or .csv file is still read whole.

A JSONL line that is not valid JSON, or a CSV row with the wrong number of fields, becomes a record
carrying its problem, left to `data.on_bad_record` like any other bad record. A `.json` array that
is not valid JSON, or CSV quoting the reader cannot get past, stops with its location: there is no
record boundary to skip to.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from llmft.config.data import DatasetSpec
from llmft.data import hub
from llmft.errors import UserError

SUFFIXES = (".json", ".jsonl", ".csv", ".txt", ".parquet", ".arrow")
#: Columnar files, read through pyarrow a batch at a time.
COLUMNAR = (".parquet", ".arrow")
#: Files `save_to_disk` writes; any of them marks a directory as a saved dataset.
SAVED_MARKERS = ("dataset_info.json", "state.json", "dataset_dict.json")
TextUnit = Literal["line", "file"]


@dataclass(frozen=True)
class RawRecord:
    value: Any
    where: str  # "file:line" for line-based files, "file record N" for JSON arrays and saved datasets
    problem: str | None = None  # set when the record is already known to be bad (e.g. a mapped column is missing)


def read_source(spec: DatasetSpec, key: str) -> list[RawRecord]:
    """Every record of one `data.train`/`data.eval` entry, with `spec.columns` applied.

    `key` is the recipe key of the entry (`data.train.0`); errors about the path name `key.path`.
    """
    if hub.is_hub(spec.path):
        records = [RawRecord(row, where) for where, row in hub.rows(hub.parse(spec.path, f"{key}.path"), f"{key}.path")]
        if not records:
            raise UserError(f"{key}.path: {spec.path} holds no records")
    else:
        records = _read_path(spec.path, f"{key}.path", spec.text_unit)
    return list(apply_columns(records, spec.columns))


def iter_source(spec: DatasetSpec, key: str) -> Iterator[RawRecord]:
    """`read_source` a record at a time (`data.streaming`)."""
    where = f"{key}.path"
    if hub.is_hub(spec.path):
        records: Iterable[RawRecord] = (
            RawRecord(row, name) for name, row in hub.rows(hub.parse(spec.path, where), where, streaming=True)
        )
    else:
        location = Path(spec.path).expanduser()
        if not location.exists():
            raise UserError(f"{where}: file not found: {spec.path}")
        if location.is_dir() and not any((location / marker).is_file() for marker in SAVED_MARKERS):
            files = _directory_files(location)
            if not files:
                raise UserError(f"{where}: {location} is a directory with no {', '.join(SUFFIXES)} files in it")
            records = (r for file in files for r in _iter_file(file, where, spec.text_unit))
        elif location.is_file():
            records = _iter_file(location, where, spec.text_unit)
        else:
            records = iter(_read_path(spec.path, where, spec.text_unit))
    return apply_columns(records, spec.columns)


def read_records(path: str, key: str) -> list[RawRecord]:
    """Every record of one file or directory (one document per line for .txt); `key` names the path in errors."""
    return _read_path(path, key, "line")


def apply_columns(records: Iterable[RawRecord], columns: dict[str, str]) -> Iterator[RawRecord]:
    """Rename `{llmft_field: source_column}`; a record lacking a mapped column gets a `problem`."""
    if not columns:
        yield from records
        return
    renamed = set(columns.values())
    for record in records:
        value = record.value
        if not isinstance(value, dict):
            yield record  # the format reports a record that is not an object
            continue
        new = {k: v for k, v in value.items() if k not in renamed}
        missing = []
        for field, column in columns.items():
            if column in value:
                new[field] = value[column]
            else:
                missing.append(f"missing column {column!r} (columns maps {field!r} to it)")
        problem = "; ".join(missing) or record.problem
        yield RawRecord(new, record.where, problem)


# --- paths -------------------------------------------------------------------------------


def _read_path(path: str, key: str, text_unit: TextUnit) -> list[RawRecord]:
    location = Path(path).expanduser()
    if not location.exists():
        raise UserError(f"{key}: file not found: {path}")
    if location.is_dir():
        if any((location / marker).is_file() for marker in SAVED_MARKERS):
            return _read_saved(location, key)
        return _read_directory(location, key, text_unit)
    return _read_file(location, key, text_unit)


def source_files(path: str) -> list[Path]:
    """The files one data entry reads: the file itself; a directory's data files (as `read_source`
    reads them); a saved dataset's Arrow files. Empty for a path that does not exist."""
    if hub.is_hub(path):
        return []
    location = Path(path).expanduser()
    if location.is_file():
        return [location]
    if not location.is_dir():
        return []
    if any((location / marker).is_file() for marker in SAVED_MARKERS):
        return sorted(location.rglob("*.arrow")) or [location]
    return _directory_files(location)


def _directory_files(directory: Path) -> list[Path]:
    return sorted(
        (p for p in directory.iterdir() if p.is_file() and p.suffix in SUFFIXES and not p.name.startswith(".")),
        key=lambda p: p.name,
    )


def _read_directory(directory: Path, key: str, text_unit: TextUnit) -> list[RawRecord]:
    files = _directory_files(directory)
    if not files:
        raise UserError(
            f"{key}: {directory} is a directory with no {', '.join(SUFFIXES)} files in it (nor a dataset written by save_to_disk)"
        )
    return [record for file in files for record in _read_file(file, key, text_unit)]


def _read_file(file: Path, key: str, text_unit: TextUnit) -> list[RawRecord]:
    if file.suffix not in SUFFIXES:
        raise UserError(
            f"{key}: {file}: unsupported file type {file.suffix or '(none)'!r}; use {', '.join(SUFFIXES)}, "
            "a directory of them, or a directory written by save_to_disk"
        )
    if file.suffix in COLUMNAR:
        records = list(_iter_columnar(file, key))
        if not records:
            raise UserError(f"{key}: {file} holds no records")
        return records
    text = _read_text(file, key)
    if not text.strip():
        raise UserError(f"{key}: {file} is empty")
    readers: dict[str, Callable[[str, str], list[RawRecord]]] = {
        ".json": _read_json,
        ".jsonl": _read_jsonl,
        ".csv": _read_csv,
        ".txt": _read_txt_file if text_unit == "file" else _read_txt,
    }
    records = readers[file.suffix](text, str(file))
    if not records:
        raise UserError(f"{key}: {file} holds no records")
    return records


def _read_saved(directory: Path, key: str) -> list[RawRecord]:
    """A directory written by `Dataset.save_to_disk` (or a one-split `DatasetDict`)."""
    import datasets  # slow to import; only needed here

    try:
        loaded = datasets.load_from_disk(str(directory))
    except Exception as exc:  # noqa: BLE001 - datasets raises many kinds; all mean "cannot load"
        raise UserError(f"{key}: {directory}: cannot load the dataset saved there: {exc}") from None
    if isinstance(loaded, datasets.DatasetDict):
        splits = list(loaded)
        if len(splits) != 1:
            names = ", ".join(splits) or "(none)"
            raise UserError(
                f"{key}: {directory} holds a DatasetDict with splits {names}; point the path at one split "
                f"directory, e.g. {directory / (splits[0] if splits else 'train')}"
            )
        loaded = loaded[splits[0]]
    records = [RawRecord(row, f"{directory} record {i}") for i, row in enumerate(loaded.to_list())]
    if not records:
        raise UserError(f"{key}: {directory} holds no records")
    return records


def _iter_file(file: Path, key: str, text_unit: TextUnit) -> Iterator[RawRecord]:
    """One file a record at a time: .jsonl and .txt (a document per line) line by line, columnar
    files a batch at a time; others read whole."""
    if file.suffix in COLUMNAR:
        yield from _iter_columnar(file, key)
    elif file.suffix == ".jsonl" or (file.suffix == ".txt" and text_unit == "line"):
        reader = _read_jsonl if file.suffix == ".jsonl" else _read_txt
        with open(file, "rb") as handle:  # bytes split at b"\n" only, as `_lines` splits
            for number, raw in enumerate(handle, start=1):
                try:
                    line = raw.decode("utf-8-sig" if number == 1 else "utf-8").removesuffix("\n")
                except UnicodeDecodeError:
                    raise UserError(f"{key}: {file}:{number}: not UTF-8; re-encode the file as UTF-8") from None
                for record in reader(line, str(file)):
                    yield RawRecord(record.value, f"{file}:{number}", record.problem)
    else:
        yield from _read_file(file, key, text_unit)


def _iter_columnar(file: Path, key: str) -> Iterator[RawRecord]:
    """Rows of a .parquet file or an Arrow IPC file (.arrow: the stream format `datasets` writes, or
    the file format), a record batch at a time."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        if file.suffix == ".parquet":
            batches: Iterable[Any] = pq.ParquetFile(file).iter_batches()
        else:
            source = pa.memory_map(str(file))
            try:
                batches = pa.ipc.open_stream(source)
            except pa.ArrowInvalid:
                source.seek(0)
                reader = pa.ipc.open_file(source)
                batches = (reader.get_batch(i) for i in range(reader.num_record_batches))
        index = 0
        for batch in batches:
            for row in batch.to_pylist():
                yield RawRecord(row, f"{file} record {index}")
                index += 1
    except (pa.ArrowException, OSError) as exc:
        raise UserError(f"{key}: {file}: cannot read it as {file.suffix[1:]}: {exc}") from None


# --- file types --------------------------------------------------------------------------


def _read_text(file: Path, key: str) -> str:
    data = file.read_bytes()
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        raise UserError(f"{key}: {file}:{line}: not UTF-8 (byte {exc.start}); re-encode the file as UTF-8") from None


def _read_json(text: str, name: str) -> list[RawRecord]:
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        hint = "; if it has one JSON object per line, name it .jsonl" if exc.msg == "Extra data" else ""
        raise UserError(f"{name}:{exc.lineno}: invalid JSON: {exc.msg} (column {exc.colno}){hint}") from None
    if not isinstance(value, list):
        raise UserError(f"{name}: a .json dataset is an array of records (got a {type(value).__name__})")
    return [RawRecord(v, f"{name} record {i}") for i, v in enumerate(value)]


def _read_jsonl(text: str, name: str) -> list[RawRecord]:
    records = []
    for number, line in enumerate(_lines(text), start=1):
        if not line.strip():
            continue
        try:
            records.append(RawRecord(json.loads(line), f"{name}:{number}"))
        except json.JSONDecodeError as exc:  # a bad record like any other: data.on_bad_record decides
            records.append(RawRecord(None, f"{name}:{number}", f"invalid JSON: {exc.msg} (column {exc.colno})"))
    return records


def _read_csv(text: str, name: str) -> list[RawRecord]:
    """A header row, then one record per row (blank rows skipped); every value is a string."""
    csv.field_size_limit(2**31 - 1)  # the default (128 KiB) is too small for long documents
    reader = csv.reader(io.StringIO(text, newline=""), strict=True)
    header: list[str] | None = None
    records = []
    start = 1
    try:
        for row in reader:
            line, start = start, reader.line_num + 1  # a quoted field may span lines: name the row's first
            if not row or (len(row) == 1 and not row[0].strip()):  # a blank (or whitespace-only) line
                continue
            if header is None:
                header = [column.strip() for column in row]
                duplicates = sorted({c for c in header if header.count(c) > 1})
                if duplicates:
                    named = ", ".join(map(repr, duplicates))
                    raise UserError(f"{name}:{line}: the header names column(s) {named} more than once")
                continue
            if len(row) != len(header):  # a bad record like any other: data.on_bad_record decides
                problem = (
                    f"malformed CSV row: {len(row)} field(s), the header has {len(header)} (quote values that contain commas)"
                )
                records.append(RawRecord(None, f"{name}:{line}", problem))
                continue
            records.append(RawRecord(dict(zip(header, row)), f"{name}:{line}"))
    except csv.Error as exc:
        raise UserError(f"{name}:{start}: malformed CSV row: {exc}") from None
    return records


def _read_txt(text: str, name: str) -> list[RawRecord]:
    """One document per non-empty line."""
    return [RawRecord({"text": line}, f"{name}:{number}") for number, line in enumerate(_lines(text), start=1) if line.strip()]


def _read_txt_file(text: str, name: str) -> list[RawRecord]:
    """The whole file as one document."""
    return [RawRecord({"text": text}, name)]


def _lines(text: str) -> list[str]:
    """Lines split at newlines only: `str.splitlines` also splits at U+2028, U+0085 and others,
    which JSON strings may hold unescaped (and editors don't count as lines)."""
    return [line.removesuffix("\r") for line in text.split("\n")]
