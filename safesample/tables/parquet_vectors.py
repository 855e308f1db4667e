"""Embedding columns of a Parquet file read without decoding: zero-copy views of the file's pages.

`write_parquet` stores float vectors uncompressed, PLAIN-encoded, without a dictionary and with a
CRC per page. The values of such a page are the raw little-endian floats, so they need no
decoding: this module walks the column chunk's page headers, checks each page's CRC and that its
definition levels say "no nulls", and hands the values to Arrow as views of the memory-mapped
file. For the 1M x 384 pool of bench_select that is 0.4 s of CPU instead of ~6 s, nearly all of
which went to the kernel zeroing the 1.6 GB the decoded column needs (on these VMs fresh memory
costs ~2 s per GB); the pages are read from the OS cache and only the rows a stage touches are
ever read at all.

Anything else (compression, dictionaries, data page v2, nulls, a column of variable-length lists
or of doubles) raises `Unsupported`, and the caller decodes that column with Arrow as before; a
damaged page (CRC mismatch) raises ValueError, like Arrow's own check. A row that spans two
pages (Arrow's writer cuts pages by size) is the one copy: 1.5 KB per 1 MB page.

The page headers are Thrift compact-protocol structs (parquet.thrift `PageHeader`): the fields
read here are type (1), uncompressed and compressed sizes (2, 3), crc (4) and the data page
header (5: num_values, encoding, definition and repetition level encodings); the rest is skipped.
"""

from __future__ import annotations

import struct
import zlib
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import pyarrow as pa
    import pyarrow.parquet as pq

_DATA_PAGE, _PLAIN, _RLE = 0, 0, 3
_HEADER_WINDOW = 1024  # bytes read to parse one page header (a float column's stats are small)


class Unsupported(Exception):
    """This column chunk is not in the layout this reader knows: decode it with Arrow."""


def is_vector(kind: "pa.DataType") -> bool:
    import pyarrow as pa

    return pa.types.is_fixed_size_list(kind) and kind.value_type == pa.float32()


def read_vectors(path: str, parquet: "pq.ParquetFile", name: str) -> "pa.ChunkedArray":
    """Column `name` (fixed-size lists of float32) of the Parquet file at `path`, as zero-copy
    views of the memory-mapped file; `Unsupported` when its layout needs decoding. Row groups are
    walked by a few threads (zlib's CRC releases the GIL), each on its own mapping."""
    import os
    from concurrent.futures import ThreadPoolExecutor

    import pyarrow as pa

    meta, schema = parquet.metadata, parquet.schema
    kind = parquet.schema_arrow.field(name).type
    leaves = [k for k in range(meta.num_columns) if schema.column(k).path.split(".")[0] == name]
    if not is_vector(kind) or len(leaves) != 1 or schema.column(leaves[0]).physical_type != "FLOAT":
        raise Unsupported(name)
    leaf = schema.column(leaves[0])

    def group(k: int) -> list:
        column = meta.row_group(k).column(leaves[0])
        if column.compression != "UNCOMPRESSED" or column.has_dictionary_page:
            raise Unsupported(name)
        pages = _pages(pa.memory_map(path), column.data_page_offset, column.total_compressed_size,
                       leaf.max_definition_level, leaf.max_repetition_level)
        return _rows(pages, meta.row_group(k).num_rows, kind)

    workers = max(1, min(os.cpu_count() or 1, 4, meta.num_row_groups))
    with ThreadPoolExecutor(workers) as pool:
        chunks = [c for part in pool.map(group, range(meta.num_row_groups)) for c in part]
    return pa.chunked_array(chunks, type=kind)


def _rows(pages: list, num_rows: int, kind: "pa.DataType") -> list:
    """Fixed-size list arrays over the pages' values: a view per page, and a copy of each row
    that a page boundary cuts in two."""
    import numpy as np
    import pyarrow as pa

    dim = kind.list_size
    if sum(len(p) // 4 for p in pages) != num_rows * dim:
        raise Unsupported("rows")
    chunks = []
    carry = None  # the start of a row cut by the end of a page
    for page in pages:
        n, start = len(page) // 4, 0
        if carry is not None:
            start = min(dim - len(carry), n)
            carry = np.concatenate([carry, np.frombuffer(page, np.float32, start)])
            if len(carry) < dim:
                continue
            chunks.append(pa.FixedSizeListArray.from_arrays(pa.array(carry), type=kind))
            carry = None
        rows = (n - start) // dim
        if rows:
            values = pa.Array.from_buffers(pa.float32(), rows * dim, [None, page.slice(4 * start, 4 * rows * dim)])
            chunks.append(pa.FixedSizeListArray.from_arrays(values, type=kind))
        if (rest := n - start - rows * dim):
            carry = np.frombuffer(page, np.float32, rest, 4 * (start + rows * dim)).copy()
    if carry is not None:
        raise Unsupported("a row past the end of its row group")
    return chunks


def _pages(mapped, offset: int, size: int, max_def: int, max_rep: int) -> list:
    """The value bytes of each data page of one column chunk (zero-copy Arrow buffers)."""
    out = []
    pos, end = offset, offset + size
    while pos < end:
        mapped.seek(pos)
        head = mapped.read_buffer(min(_HEADER_WINDOW, end - pos)).to_pybytes()
        try:
            header, used = _struct(head, 0)
        except IndexError as exc:  # a header longer than the window, or garbage
            raise Unsupported("page header") from exc
        page = header.get(5)
        if header.get(1) != _DATA_PAGE or not isinstance(page, dict) or header.get(2) != header.get(3) \
                or page.get(2) != _PLAIN or page.get(3, _RLE) != _RLE or page.get(4, _RLE) != _RLE:
            raise Unsupported("not a plain, uncompressed v1 data page")
        length, count = header[3], page.get(1, -1)
        if length < 0 or pos + used + length > end:
            raise Unsupported("page size")
        mapped.seek(pos + used)
        body = mapped.read_buffer(length)
        if 4 in header and zlib.crc32(body) != header[4] & 0xFFFFFFFF:
            raise ValueError("could not verify page integrity, CRC checksum verification failed")
        out.append(_values(body, count, max_def, max_rep))
        pos += used + length
    return out


def _values(body, count: int, max_def: int, max_rep: int):
    """The PLAIN values of a v1 data page whose levels say every element is present."""
    view = memoryview(body)
    at = 0
    if max_rep:  # repetition levels: where rows start; with no nulls and fixed-size lists, implied
        at += 4 + struct.unpack_from("<i", view, at)[0]
    if max_def:  # definition levels: one RLE run (or several) of the maximum level, or a null
        length = struct.unpack_from("<i", view, at)[0]
        levels = bytes(view[at + 4:at + 4 + length])
        at += 4 + length
        i = total = 0
        width = (max_def.bit_length() + 7) // 8
        while i < len(levels):
            head, i = _varint(levels, i)
            if head & 1 or int.from_bytes(levels[i:i + width], "little") != max_def:
                raise Unsupported("nulls or bit-packed levels")
            total += head >> 1
            i += width
        if total != count:
            raise Unsupported("levels")
    if len(view) - at != 4 * count:
        raise Unsupported("values")
    return body.slice(at, 4 * count)


def _varint(data: bytes, i: int) -> tuple[int, int]:
    shift = value = 0
    while True:
        byte = data[i]
        i += 1
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return value, i
        shift += 7


def _struct(data: bytes, i: int, depth: int = 0) -> tuple[dict, int]:
    """A compact-protocol struct: {field id: int, or dict for a nested struct}, and its end."""
    if depth > 8:
        raise Unsupported("nesting")
    out: dict = {}
    last = 0
    while True:
        byte = data[i]
        i += 1
        if byte == 0:
            return out, i
        kind, delta = byte & 0x0F, byte >> 4
        if delta:
            field = last + delta
        else:
            raw, i = _varint(data, i)
            field = (raw >> 1) ^ -(raw & 1)
        last = field
        if kind in (4, 5, 6):  # i16, i32, i64: zigzag varints
            raw, i = _varint(data, i)
            out[field] = (raw >> 1) ^ -(raw & 1)
        elif kind == 12:
            out[field], i = _struct(data, i, depth + 1)
        else:
            i = _skip(data, i, kind, depth)


def _skip(data: bytes, i: int, kind: int, depth: int) -> int:
    if kind in (1, 2):  # booleans live in the type nibble
        return i
    if kind == 3:
        return i + 1
    if kind == 7:
        return i + 8
    if kind == 8:
        size, i = _varint(data, i)
        return i + size
    if kind in (9, 10):  # list, set
        head = data[i]
        i += 1
        size, inner = head >> 4, head & 0x0F
        if size == 15:
            size, i = _varint(data, i)
        for _ in range(size):
            i = _skip_value(data, i, inner, depth)
        return i
    if kind == 11:  # map
        size, i = _varint(data, i)
        if size:
            kinds = data[i]
            i += 1
            for _ in range(size):
                i = _skip_value(data, _skip_value(data, i, kinds >> 4, depth), kinds & 0x0F, depth)
        return i
    raise Unsupported(f"thrift type {kind}")


def _skip_value(data: bytes, i: int, kind: int, depth: int) -> int:
    if kind in (4, 5, 6):
        return _varint(data, i)[1]
    if kind == 12:
        return _struct(data, i, depth + 1)[1]
    if kind in (1, 2):  # a boolean inside a list takes one byte
        return i + 1
    return _skip(data, i, kind, depth)
