"""`.parquet` and `.arrow` files are data files like any other: records named `file record N`, the
same format detection, columns mapping and bad-record rules; read whole or a batch at a time."""

from __future__ import annotations

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from llmft.config.data import DataConfig, DatasetSpec
from llmft.data.dataset import read_split
from llmft.data.sources import iter_source, read_source
from llmft.errors import UserError

ROWS = [{"q": f"question {i}", "a": f"answer {i}"} for i in range(5)]


def _write(path, rows, kind):
    table = pa.Table.from_pylist(rows)
    if kind == "parquet":
        pq.write_table(table, path, row_group_size=2)
    elif kind == "stream":  # what datasets writes (save_to_disk, its cache)
        with pa.ipc.new_stream(str(path), table.schema) as writer:
            writer.write_table(table, max_chunksize=2)
    else:
        with pa.ipc.new_file(str(path), table.schema) as writer:
            writer.write_table(table, max_chunksize=2)
    return path


@pytest.mark.parametrize("kind,suffix", [("parquet", ".parquet"), ("stream", ".arrow"), ("file", ".arrow")])
def test_columnar_files_read_with_columns_and_names(tmp_path, kind, suffix):
    path = _write(tmp_path / f"data{suffix}", ROWS, kind)
    spec = DatasetSpec(path=str(path), columns={"instruction": "q", "output": "a"})
    records = read_source(spec, "data.train.0")
    assert [r.value for r in records] == [{"instruction": r["q"], "output": r["a"]} for r in ROWS]
    assert records[3].where == f"{path} record 3"
    assert [r.value for r in iter_source(spec, "data.train.0")] == [r.value for r in records]


def test_a_directory_mixes_columnar_and_text_files(tmp_path):
    _write(tmp_path / "a.parquet", ROWS[:2], "parquet")
    (tmp_path / "b.jsonl").write_text('{"q": "x", "a": "y"}\n')
    assert len(read_source(DatasetSpec(path=str(tmp_path)), "data.train.0")) == 3


def test_bad_rows_follow_on_bad_record(tmp_path):
    path = _write(tmp_path / "d.parquet", [{"instruction": "q", "output": "a"}, {"instruction": "q", "output": None}], "parquet")
    data = DataConfig(train=str(path), on_bad_record="skip")
    items, reports = read_split("sft", data.train, "train", data, seed=0)
    assert len(items) == 1 and reports[0].format == "alpaca" and reports[0].skipped == 1
    assert reports[0].skipped_examples[0].startswith(f"{path} record 1")


def test_an_unreadable_columnar_file_names_the_key(tmp_path):
    path = tmp_path / "broken.parquet"
    path.write_bytes(b"not parquet at all")
    with pytest.raises(UserError, match="data.train.0.path: .*broken.parquet: cannot read it as parquet"):
        read_source(DatasetSpec(path=str(path)), "data.train.0")
