"""Which rows a batch task scores: the input's files sorted by name, cut into ``count`` near-equal shards,
deterministically, so that the shards cover every row exactly once whatever the task count.

The input is measured in bytes (the files one after the other); task ``i`` gets the bytes
``[i * total // count, (i + 1) * total // count)``. In a Parquet file a byte range stands for the rows in the same
proportion (rows ``[a * rows // size, b * rows // size)``, read from the row groups that hold them); in a CSV or
JSON Lines file a task scores the lines that *start* in its range (a CSV's header line is nobody's row). Two
neighbours compute the same boundary, so no row is lost or scored twice.
"""

from __future__ import annotations

import hashlib
import io
import json
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pyarrow as pa  # type: ignore[import-untyped]

from mlship.batch import formats
from mlship.batch.storage import Location, StorageError, info, list_files, storage_error

BLOCK = 1 << 22  # bytes read at a time from a text file


@dataclass(frozen=True)
class InputFile:
    path: str  # the path in the filesystem
    name: str  # relative to the input (what rejects name)
    size: int
    mtime: str  # as the storage reports it (part of the input's fingerprint)
    fmt: str


@dataclass(frozen=True)
class Piece:
    """The part of one file a task scores: bytes ``[start, end)`` of it."""

    file: InputFile
    start: int
    end: int


def input_files(loc: Location) -> list[InputFile]:
    """The batch files of a file or a folder / prefix, sorted by name; a clear error when there are none."""
    found = info(loc)
    import pyarrow.fs as pafs  # type: ignore[import-untyped]

    if found.type == pafs.FileType.File:
        files, base = [found], loc.path.rsplit("/", 1)[0]
    else:
        files, base = list_files(loc), loc.path.rstrip("/")
    from pathlib import PurePosixPath

    out = [InputFile(f.path, f.path[len(base) + 1:], int(f.size), str(f.mtime), formats.FORMATS[suffix])
           for f in files if (suffix := PurePosixPath(f.path).suffix.lower()) in formats.FORMATS]
    if not out:
        raise StorageError(f"{loc.uri} holds no batch files.",
                           why=f"Input files are read by extension: {formats.EXTENSIONS}.",
                           fix="Check --input: a file, or a folder / prefix holding files with those extensions.")
    return out


def shard(files: list[InputFile], index: int, count: int) -> list[Piece]:
    """Task ``index`` of ``count``'s pieces (possibly none: more tasks than bytes)."""
    total = sum(f.size for f in files)
    low, high = index * total // count, (index + 1) * total // count
    pieces, offset = [], 0
    for f in files:
        start, end = max(low - offset, 0), min(high - offset, f.size)
        if start < end:
            pieces.append(Piece(f, start, end))
        offset += f.size
    return pieces


def fingerprint(files: list[InputFile], index: int, count: int, extra: dict[str, Any]) -> str:
    """What a finished task's output depends on: the files (path, size, mtime), the shard, the settings."""
    text = json.dumps([[f.path, f.size, f.mtime] for f in files] + [index, count, extra], sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()


@dataclass
class Chunk:
    table: pa.Table
    start: int  # the row number in the file of the chunk's first row (Parquet), else 0
    offsets: list[int] | None  # per row: the byte offset of its line in the file (CSV / JSON Lines)


def column_names(loc: Location, f: InputFile) -> list[str] | None:
    """The file's column names (the id column's default); None for a JSON Lines file that does not say."""
    try:
        return _column_names(loc, f)
    except (OSError, pa.ArrowInvalid) as exc:
        raise _read_error(loc, f, exc) from None


def _read_error(loc: Location, f: InputFile, exc: Exception) -> StorageError:
    uri = loc.uri if loc.uri.rstrip("/").endswith("/" + f.name) or loc.uri == f.name else \
        f"{loc.uri.rstrip('/')}/{f.name}"
    if isinstance(exc, pa.ArrowInvalid):
        return StorageError(f"{uri} cannot be read as {f.fmt}: {str(exc).splitlines()[0]}",
                            fix=f"Check that the file is a complete {f.fmt} file (its extension says {f.fmt}).")
    return storage_error(Location(uri, loc.fs, f.path, loc.scheme), "read", exc)


def _column_names(loc: Location, f: InputFile) -> list[str] | None:
    if f.fmt == "parquet":
        return list(_parquet(loc, f).physical_schema.names)
    first = _first_line(loc, f)
    if f.fmt == "csv":
        return [c.strip().strip('"') for c in first.decode("utf-8").rstrip("\r\n").split(",")]
    try:
        obj = json.loads(first)
    except ValueError:
        return None
    return list(obj) if isinstance(obj, dict) else None


def read_piece(loc: Location, piece: Piece, chunk_rows: int, features: list[str],
               json_floats: list[str] | None = None) -> Iterator[Chunk]:
    """The piece's rows in tables of at most ``chunk_rows`` rows, in file order (``json_floats``: as
    formats.read_chunks)."""
    try:
        if piece.file.fmt == "parquet":
            yield from _parquet_rows(loc, piece, chunk_rows)
        else:
            yield from _text_rows(loc, piece, chunk_rows, features, json_floats)
    except (OSError, pa.ArrowInvalid) as exc:
        raise _read_error(loc, piece.file, exc) from None


def _parquet(loc: Location, f: InputFile) -> Any:
    # a dataset fragment, not fs.open_input_file: the fragment knows the size from the listing, so GCS needs no
    # metadata request of its own (that request never completes against gcp-storage-emulator)
    import pyarrow.dataset as ds  # type: ignore[import-untyped]

    return next(iter(ds.dataset([f.path], filesystem=loc.fs, format="parquet").get_fragments()))


def _parquet_rows(loc: Location, piece: Piece, chunk_rows: int) -> Iterator[Chunk]:
    fragment = _parquet(loc, piece.file)
    groups = [fragment.metadata.row_group(g).num_rows for g in range(fragment.metadata.num_row_groups)]
    rows = sum(groups)
    first, last = piece.start * rows // piece.file.size, piece.end * rows // piece.file.size
    at = 0
    for g, n in enumerate(groups):
        lo, hi = max(first, at), min(last, at + n)
        if lo < hi:
            done = at
            for batch in fragment.subset(row_group_ids=[g]).to_batches(batch_size=chunk_rows):
                cut = batch.slice(max(lo - done, 0), max(min(hi - done, batch.num_rows) - max(lo - done, 0), 0))
                if cut.num_rows:
                    yield Chunk(pa.Table.from_batches([cut]), max(lo, done), None)
                done += batch.num_rows
        at += n


def _first_line(loc: Location, f: InputFile) -> bytes:
    with loc.fs.open_input_stream(f.path) as fh:
        data = b""
        while b"\n" not in data and (block := fh.read(1 << 16)):
            data += block
    return data.split(b"\n", 1)[0]


def _lines(loc: Location, piece: Piece) -> Iterator[tuple[int, bytes]]:
    """(offset, line) of the lines that start in ``[piece.start, piece.end)``. Read as a stream from the file's
    start (GCS random reads need a metadata request that gcp-storage-emulator never answers; a stream does not)."""
    with loc.fs.open_input_stream(piece.file.path) as fh:
        pos = max(piece.start - 1, 0)  # the byte before the piece: a line starts at the piece's start after "\n"
        left = pos
        while left > 0 and (block := fh.read(min(BLOCK, left))):
            left -= len(block)
        buf, i = b"", 0  # pos is the file offset of buf[0]; i the start of the next line in buf
        skip = piece.start > 0  # the rest of the line the byte before the piece belongs to
        while True:
            k = buf.find(b"\n", i)
            if k < 0:
                block = fh.read(BLOCK)
                if block:
                    pos, buf, i = pos + i, buf[i:] + block, 0
                    continue
                if i < len(buf) and not skip and pos + i < piece.end:
                    yield pos + i, buf[i:]
                return
            if skip:
                skip = False
            elif pos + i >= piece.end:
                return
            else:
                yield pos + i, buf[i:k + 1]
            i = k + 1


def _text_rows(loc: Location, piece: Piece, chunk_rows: int, features: list[str],
               json_floats: list[str] | None) -> Iterator[Chunk]:
    header = _first_line(loc, piece.file) + b"\n" if piece.file.fmt == "csv" else b""
    lines: list[bytes] = []
    offsets: list[int] = []
    for offset, line in _lines(loc, piece):
        if (offset == 0 and header) or not line.strip():
            continue
        lines.append(line if line.endswith(b"\n") else line + b"\n")
        offsets.append(offset)
        if len(lines) == chunk_rows:
            yield _text_chunk(piece.file.fmt, header, lines, offsets, features, json_floats)
            lines, offsets = [], []
    if lines:
        yield _text_chunk(piece.file.fmt, header, lines, offsets, features, json_floats)


def _text_chunk(fmt: str, header: bytes, lines: list[bytes], offsets: list[int], features: list[str],
                json_floats: list[str] | None) -> Chunk:
    if fmt == "jsonl":
        return Chunk(formats.jsonl_table(lines, json_floats), 0, offsets)
    import pyarrow.csv as pacsv  # type: ignore[import-untyped]

    table = pacsv.read_csv(io.BytesIO(header + b"".join(lines)),
                           convert_options=pacsv.ConvertOptions(column_types={n: pa.string() for n in features}))
    return Chunk(table.replace_schema_metadata({formats.TEXT_KEY: b"1"}), 0, offsets)
