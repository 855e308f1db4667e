"""Reading a big pool fast (issue 27): Parquet memory-mapped and decoded row group by row group in
parallel, column subsets, checksums still verified, the same table as a plain read."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from safesample.errors import DataError
from safesample.tables import load_table, read_table, write_table


def _pool(n: int = 3000, dim: int = 8) -> pa.Table:
    rng = np.random.default_rng(0)
    emb = rng.standard_normal((n, dim)).astype(np.float32)
    return pa.table({"id": [f"r{i}" for i in range(n)], "instruction": [f"text {i}" for i in range(n)],
                     "category": rng.choice(["a", "b", "c"], n),
                     "embedding": pa.FixedSizeListArray.from_arrays(pa.array(emb.reshape(-1)), dim)})


@pytest.fixture
def many_groups(tmp_path: Path) -> Path:
    path = tmp_path / "pool.parquet"
    pq.write_table(_pool(), path, row_group_size=500, write_page_checksum=True, use_dictionary=False,
                   compression="none")
    assert pq.ParquetFile(path).metadata.num_row_groups == 6
    return path


def test_a_parallel_read_is_the_plain_read(many_groups: Path):
    got = read_table(str(many_groups))
    want = pq.read_table(many_groups)
    assert got.equals(want) and got.schema.metadata == want.schema.metadata
    assert got.column("embedding").num_chunks == 6  # one chunk per row group, nothing combined


def test_only_the_columns_asked_for_in_their_order(many_groups: Path, tmp_path: Path):
    got = read_table(str(many_groups), columns=["category", "id"])
    assert got.column_names == ["category", "id"] and got.num_rows == 3000
    with pytest.raises(DataError, match="no column 'nope'"):
        read_table(str(many_groups), columns=["id", "nope"])
    arrow = tmp_path / "pool.arrow"
    write_table(_pool(), str(arrow))
    assert read_table(str(arrow), columns=["embedding"]).column_names == ["embedding"]
    jsonl = tmp_path / "pool.jsonl"
    jsonl.write_text('{"instruction": "x", "category": "a"}\n{"instruction": "y", "category": "b"}\n')
    assert read_table(str(jsonl), columns=["category"]).column("category").to_pylist() == ["a", "b"]


def test_load_table_keeps_ids_and_makes_them_from_whole_rows(tmp_path: Path, many_groups: Path):
    assert load_table(str(many_groups), columns=["category"]).column_names == ["category", "id"]
    no_ids = tmp_path / "no_ids.parquet"
    pq.write_table(_pool().drop_columns(["id"]), no_ids)
    whole = load_table(str(no_ids))
    part = load_table(str(no_ids), limit=10, columns=["category"])
    assert part.column_names == ["category", "id"]
    assert part.column("id").to_pylist() == whole.column("id").to_pylist()[:10]  # same ids as a full read


def test_a_flipped_bit_in_any_row_group_is_still_caught(many_groups: Path, tmp_path: Path):
    meta = pq.ParquetFile(many_groups).metadata
    column = meta.row_group(4).column(3)  # the embeddings of the fifth row group
    data = bytearray(many_groups.read_bytes())
    data[column.data_page_offset + column.total_compressed_size // 2] ^= 0x04
    bad = tmp_path / "bad.parquet"
    bad.write_bytes(bytes(data))
    with pytest.raises(DataError, match="truncated or corrupt|checksum|CRC"):
        read_table(str(bad))


@pytest.mark.parametrize("layout", ["small pages that cut rows", "one page per group", "compressed", "nulls",
                                    "dictionary", "data page v2"])
def test_embeddings_read_without_decoding_or_decoded_are_the_same(tmp_path: Path, layout: str):
    """`parquet_vectors` maps plain float pages as they are (rows cut by a page end copied); any
    other layout is decoded by Arrow: the table is the same either way."""
    from safesample.tables import parquet_vectors

    table = _pool(2000, dim=7)
    if layout == "nulls":
        emb = table.column("embedding").combine_chunks()
        table = table.set_column(3, "embedding", pa.array([None if i % 97 == 0 else v for i, v in
                                                          enumerate(emb.to_pylist())], emb.type))
    options = {"small pages that cut rows": dict(data_page_size=1000), "one page per group": {},
               "compressed": dict(compression="zstd"), "nulls": {}, "dictionary": dict(use_dictionary=True),
               "data page v2": dict(data_page_version="2.0")}[layout]
    path = tmp_path / "pool.parquet"
    pq.write_table(table, path, row_group_size=700, write_page_checksum=True,
                   **{"use_dictionary": False, "compression": "none", **options})
    got = read_table(str(path))
    assert got.equals(pq.read_table(path))
    mapped = layout in ("small pages that cut rows", "one page per group")
    try:
        parquet_vectors.read_vectors(str(path), pq.ParquetFile(path), "embedding")
        assert mapped, "only plain, uncompressed pages without nulls are mapped"
    except parquet_vectors.Unsupported:
        assert not mapped


def test_write_table_writes_embeddings_the_reader_maps(tmp_path: Path):
    from safesample.tables import parquet_vectors

    path = tmp_path / "pool.parquet"
    write_table(_pool(3000), str(path))
    column = parquet_vectors.read_vectors(str(path), pq.ParquetFile(path), "embedding")
    assert column.equals(pq.read_table(path).column("embedding"))
    data = bytearray(path.read_bytes())
    meta = pq.ParquetFile(path).metadata.row_group(0).column(3)
    data[meta.data_page_offset + meta.total_compressed_size - 5] ^= 0x40  # in the last floats
    path.write_bytes(bytes(data))
    with pytest.raises(DataError, match="CRC"):
        read_table(str(path))
