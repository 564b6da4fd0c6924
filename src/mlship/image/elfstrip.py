"""Drop the symbol tables (``.symtab`` and its string table) from ELF64 shared libraries: what ``strip`` does
to them, without binutils (base images have none). Runs inside the image build on the runtime's
``image_strip`` folders; standalone, standard library only::

    python3 elfstrip.py DIR_OR_FILE...

The dynamic loader never reads these sections (exported symbols live in ``.dynsym``), so the library
behaves the same; only debuggers and ``nm`` see less. A file whose layout is not the plain one (the
tables after every loaded segment, nothing else pointing at them) is left untouched.
"""

from __future__ import annotations

import itertools
import os
import struct
import sys
from pathlib import Path
from typing import BinaryIO

SHT_SYMTAB, SHT_STRTAB, SHT_NOBITS = 2, 3, 8
SHF_ALLOC = 0x2
_SECTION = struct.Struct("<IIQQQQIIQQ")  # name type flags addr offset size link info addralign entsize
_ALIGN = 16  # every shift is a multiple of this, so the sections after keep their alignment


def strip(path: Path) -> int:
    """Remove the symbol table from one ELF file in place; the bytes saved (0 when left untouched)."""
    with path.open("rb") as fh:
        head = fh.read(64)
        if len(head) < 64 or head[:4] != b"\x7fELF" or head[4] != 2 or head[5] != 1:
            return 0  # not ELF64 little-endian
        phoff, shoff = struct.unpack_from("<QQ", head, 0x20)
        phentsize, phnum, shentsize, shnum, shstrndx = struct.unpack_from("<HHHHH", head, 0x36)
        if shentsize != _SECTION.size or phentsize != 56 or shnum == 0:
            return 0
        fh.seek(phoff)
        programs = fh.read(phentsize * phnum)
        fh.seek(shoff)
        table = bytearray(fh.read(shentsize * shnum))
    size = path.stat().st_size
    if len(table) != shentsize * shnum or len(programs) != phentsize * phnum:
        return 0
    segment_end = max((struct.unpack_from("<QQ", programs, i * 56 + 8)[0]
                       + struct.unpack_from("<Q", programs, i * 56 + 32)[0] for i in range(phnum)), default=0)
    sections = [list(_SECTION.unpack_from(table, i * _SECTION.size)) for i in range(shnum)]
    remove: set[int] = set()
    for i, sec in enumerate(sections):
        if sec[1] == SHT_SYMTAB and 0 < sec[6] < shnum and sections[sec[6]][1] == SHT_STRTAB:
            remove |= {i, sec[6]}
    if not remove or shstrndx in remove:
        return 0
    ranges = sorted((sections[i][4], sections[i][4] + sections[i][5]) for i in remove)
    for i in remove:
        sec = sections[i]
        if sec[2] & SHF_ALLOC or sec[4] < segment_end or sec[4] + sec[5] > size:
            return 0
    for i, sec in enumerate(sections):
        if i in remove:
            continue
        if sec[6] in remove and i not in remove:
            return 0  # something else (e.g. a relocation section) uses the table
        if sec[1] != SHT_NOBITS and any(sec[4] < end and start < sec[4] + sec[5] for start, end in ranges):
            return 0
        if sec[4] >= ranges[0][0] and sec[1] != SHT_NOBITS and sec[2] & SHF_ALLOC:
            return 0
    if shoff < segment_end or any(shoff < end and start < shoff + len(table) for start, end in ranges):
        return 0

    if any(a_end > b_start for (_a, a_end), (b_start, _b) in itertools.pairwise(ranges)):
        return 0
    pads = [(end - start) % _ALIGN for start, end in ranges]  # keep a little zero padding: aligned shifts

    def moved(offset: int) -> int:
        cut: int = sum(end - start - pad for (start, end), pad in zip(ranges, pads, strict=True) if end <= offset)
        return offset - cut

    for i, sec in enumerate(sections):
        if i in remove:
            sec[1:] = [0, 0, 0, 0, 0, 0, 0, 1, 0]  # SHT_NULL, empty; the index stays, so no link changes
        else:
            sec[4] = moved(sec[4])
        _SECTION.pack_into(table, i * _SECTION.size, *sec)
    tmp = path.with_name(path.name + ".mlship-strip")
    with path.open("rb") as src, tmp.open("wb") as dst:
        position = 0
        for (start, end), pad in zip(ranges, pads, strict=True):
            _copy(src, dst, position, start - position)
            dst.write(b"\0" * pad)
            position = end
        _copy(src, dst, position, size - position)
        dst.seek(moved(shoff))
        dst.write(table)
        dst.seek(0x28)
        dst.write(struct.pack("<Q", moved(shoff)))
    os.chmod(tmp, path.stat().st_mode)
    saved = size - tmp.stat().st_size
    os.replace(tmp, path)
    return saved


def _copy(src: BinaryIO, dst: BinaryIO, offset: int, length: int) -> None:
    src.seek(offset)
    while length > 0:
        chunk = src.read(min(length, 1 << 22))
        if not chunk:
            break
        dst.write(chunk)
        length -= len(chunk)


def strip_tree(paths: list[str]) -> int:
    """Strip every shared library (``*.so``, ``*.so.N``) under the given folders (or the given files)."""
    saved = 0
    for arg in paths:
        root = Path(arg)
        files = [root] if root.is_file() else sorted(
            p for p in root.rglob("*.so*") if p.is_file() and not p.is_symlink())
        for file in files:
            if file.name.endswith(".so") or ".so." in file.name:
                saved += strip(file)
    return saved


if __name__ == "__main__":
    total = strip_tree(sys.argv[1:])
    print(f"elfstrip: removed {total / 1e6:.1f} MB of symbol tables")
