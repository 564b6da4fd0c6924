"""The writing side of `mlship batch`: scored chunks -> part files and the output, on a thread of its own.

:class:`ChunkWriter` takes each scored chunk (in any order) and, on its thread, writes the chunk's part files at
once (Arrow IPC, not fsynced: what a killed run resumes from) and appends the chunks to the output and the rejects
file in chunk order as they become contiguous. Encoding the output (Parquet, CSV, JSON Lines) so overlaps the
scoring instead of following it; on ``close`` the two files are fsynced and renamed into place, each at once. A
part whose schema differs from the first (an id column of JSON Lines typed by its values: null in a chunk without
any) stops that file's stream; it is then assembled from the parts at the end (batch/formats.py, schemas unified).

A failure on the thread (a disk full, a column the output format cannot hold) is raised to the caller by the next
``put`` or by ``close``, as a :class:`StorageError` naming the file; the temporary files are removed, so no partial
output is left; the parts already written stay for a resumed run.
"""

from __future__ import annotations

import contextlib
import os
import queue
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pyarrow as pa  # type: ignore[import-untyped]

from mlship.batch import formats
from mlship.batch.storage import StorageError

if TYPE_CHECKING:
    from mlship.batch.score import Scored

PART = formats.PART_SUFFIX
_STOP = (-1, None, None, True)
#: the output is synced to disk each time this much more was written, on the writer's thread while it waits for
#: chunks, so that the final fsync (on the run's critical path) has less left to write
SYNC_EVERY = 8 << 20


def part_path(parts: Path, kind: str, index: int) -> Path:
    """A chunk's part file: ``part-000012.arrow`` (predictions) or ``rejects-000012.arrow``."""
    return parts / f"{kind}-{index:06d}{PART}"


class _Stream:
    """One output file written chunk after chunk into a temporary file next to it."""

    def __init__(self, path: Path, fmt: str, kind: str) -> None:
        self.path, self.fmt, self.kind = path, fmt, kind
        self.tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
        self.fh: Any = None
        self.synced = 0  # bytes of the temporary file known to be on disk
        self.parquet: Any = None
        self.schema: pa.Schema | None = None
        self.broken = False  # a part's schema differed: assembled from the parts on close

    def append(self, table: pa.Table) -> None:
        if self.broken:
            return
        if self.fh is None:
            self.fh, self.schema = self.tmp.open("wb"), table.schema
            if self.fmt == "parquet":
                import pyarrow.parquet as pq  # type: ignore[import-untyped]

                self.parquet = pq.ParquetWriter(self.fh, table.schema, **formats.parquet_options(table.schema))
        elif table.schema != self.schema:
            self.discard()
            self.broken = True
            return
        if self.parquet is not None:
            self.parquet.write_table(table)
        else:
            formats.write_more(table, self.fh, self.fmt, header=self.fh.tell() == 0)

    def sync(self) -> None:
        """Put what was written so far on disk, once at least SYNC_EVERY more bytes are waiting."""
        if self.fh is not None and not self.broken and self.fh.tell() - self.synced >= SYNC_EVERY:
            self.fh.flush()
            os.fdatasync(self.fh.fileno())
            self.synced = self.fh.tell()

    def finish(self, parts: list[Path]) -> None:
        if self.broken or self.fh is None:  # schemas to unify, or no chunk at all
            formats.concat_files(parts, self.path, self.fmt)
            return
        if self.parquet is not None:
            self.parquet.close()
        self.fh.flush()
        os.fsync(self.fh.fileno())
        self.fh.close()
        self.fh = None
        os.replace(self.tmp, self.path)

    def discard(self) -> None:
        try:
            if self.parquet is not None:
                self.parquet.close()
        except (OSError, pa.ArrowException):
            pass
        if self.fh is not None:
            with contextlib.suppress(OSError):  # a full disk fails the flush of the buffered end: the file goes anyway
                self.fh.close()
        self.fh = self.parquet = None
        self.tmp.unlink(missing_ok=True)


class ChunkWriter:
    """Writes chunks' parts and streams them into ``target`` and ``rejects`` (both in ``fmt``) on its own thread."""

    def __init__(self, parts: Path, target: Path, rejects: Path, fmt: str, depth: int = 4) -> None:
        self.parts = parts
        self.streams = {"part": _Stream(target, fmt, "part"), "rejects": _Stream(rejects, fmt, "rejects")}
        self.queue: queue.Queue[tuple[int, pa.Table | None, pa.Table | None, bool]] = queue.Queue(
            maxsize=max(depth, 1))
        self.error: BaseException | None = None
        self.writing: Path | None = None  # the file being written (for the error message)
        self.count = 0  # chunks appended to the output so far, in order
        self.thread = threading.Thread(target=self._run, name="mlship-batch-writer", daemon=True)
        self.thread.start()

    def put(self, index: int, predictions: pa.Table, rejects: pa.Table, written: bool = False) -> None:
        """A scored chunk: its parts are written (unless ``written``: :meth:`write_parts` did), then it joins the
        output in chunk order."""
        self._send((index, predictions, rejects, written))

    def write_parts(self, scored: Scored) -> None:
        """A scored chunk's part files, for the threads that score chunks: parts are then written in parallel, not
        all on the writer's thread."""
        self._parts(scored.index, scored.predictions, scored.rejects)

    def _parts(self, index: int, predictions: pa.Table, rejects: pa.Table) -> None:
        """Rejects first, the part last: a chunk is complete when its part is there."""
        for kind, table in (("rejects", rejects), ("part", predictions)):
            path = part_path(self.parts, kind, index)
            try:
                formats.write_table(table, path, formats.PART_FORMAT, False)
            except (OSError, pa.ArrowException) as exc:
                raise self._error(exc, path) from None

    def kept(self, index: int) -> None:
        """A chunk whose parts an earlier run wrote: read back from them when its turn in the output comes."""
        self._send((index, None, None, True))

    def _send(self, item: tuple[int, pa.Table | None, pa.Table | None, bool]) -> None:
        while True:
            self._raise()
            try:
                self.queue.put(item, timeout=0.1)
                return
            except queue.Full:
                continue

    def close(self, chunks: int) -> None:
        """Wait for every chunk, then put the output and the rejects file in place (each fsynced, renamed)."""
        self._stop()
        self._raise()
        try:
            if self.count != chunks:
                raise RuntimeError(f"{self.count} of {chunks} chunks reached the output")
            for kind, stream in self.streams.items():
                self.writing = stream.path
                stream.finish([part_path(self.parts, kind, i) for i in range(chunks)])
        except (OSError, pa.ArrowException, RuntimeError) as exc:
            self.abort()
            raise self._error(exc) from None

    def abort(self) -> None:
        """Stop (the parts of the chunks already given are written) and remove the temporary output files."""
        self._stop()
        for stream in self.streams.values():
            stream.discard()

    def _stop(self) -> None:
        while self.thread.is_alive():
            try:
                self.queue.put(_STOP, timeout=0.1)
                break
            except queue.Full:
                continue
        self.thread.join()

    def _raise(self) -> None:
        if self.error is not None:
            self.abort()
            raise self.error if isinstance(self.error, StorageError) else self._error(self.error)

    def _error(self, exc: BaseException, where: Path | None = None) -> StorageError:
        where = where or self.writing or self.parts
        return StorageError(f"writing {where} failed: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}",
                            why="The output is written as chunks are scored; no partial output is left in its "
                            "place (chunks finished so far are kept in the parts folder for a resumed run).",
                            fix="Check the free space and permissions where the output goes, and that the output "
                            "format can hold every column (Parquet holds any Arrow type; CSV only flat values); "
                            "then run the same command again.")

    def _run(self) -> None:
        waiting: dict[int, tuple[pa.Table | None, pa.Table | None]] = {}
        try:
            while True:
                index, predictions, rejects, written = self.queue.get()
                if index < 0:
                    return
                if predictions is not None and rejects is not None and not written:
                    self._parts(index, predictions, rejects)
                waiting[index] = (predictions, rejects)
                while self.count in waiting:
                    tables = dict(zip(("part", "rejects"), waiting.pop(self.count), strict=True))
                    for kind, stream in self.streams.items():
                        self.writing = stream.path
                        table = tables[kind]
                        stream.append(table if table is not None else
                                      formats.read_part(part_path(self.parts, kind, self.count)))
                    self.count += 1
                self.writing = None
                if self.queue.empty():  # idle: sync now rather than in close, on the run's critical path
                    for stream in self.streams.values():
                        self.writing = stream.path
                        stream.sync()
                    self.writing = None
        except BaseException as exc:  # raised to the caller by its next put / close
            self.error = exc
