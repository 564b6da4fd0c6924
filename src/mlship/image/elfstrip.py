"""Drop the symbol tables (``.symtab`` and its string table) and the DWARF debug information (``.debug_*``)
from ELF64 shared libraries: what ``strip --strip-debug`` plus dropping ``.symtab`` does, without binutils (base
images have none). Runs inside the image build on the image rules' ``strip`` folders; standalone, standard
library only::

    python3 elfstrip.py DIR_OR_FILE...

The dynamic loader never reads these sections (exported symbols live in ``.dynsym``), so the library
behaves the same; only debuggers and ``nm`` see less. Some wheels ship them: uvloop's loop module is 13.6 MB,
12 MB of it DWARF; PyYAML, httptools and Pillow's extensions likewise. A file whose layout is not the plain one
(the removed sections after every loaded segment, nothing else pointing at them) is left untouched.
"""

from __future__ import annotations

import os
import struct
import sys
from pathlib import Path
from typing import BinaryIO

SHT_SYMTAB, SHT_STRTAB, SHT_NOBITS = 2, 3, 8
SHF_ALLOC = 0x2
PT_LOAD = 1
_SECTION = struct.Struct("<IIQQQQIIQQ")  # name type flags addr offset size link info addralign entsize
_PROGRAM = struct.Struct("<IIQQQQQQ")  # type flags offset vaddr paddr filesz memsz align
_DEBUG = (b".debug_", b".zdebug_")  # DWARF sections (never loaded: no SHF_ALLOC, checked below)
_ALIGN = 16  # every shift is a multiple of this, so the sections after keep their alignment
_PAGE = 4096


def strip(path: Path) -> int:
    """Remove the symbol table and the debug sections from one ELF file in place; the bytes saved (0 when left
    untouched).

    The removed sections usually sit after every loaded segment. A library patched by auditwheel (patchelf) has
    segments after them too (its rewritten dynamic section): those are moved by a multiple of the page size (and
    of every segment's alignment), so each keeps its file offset = address (mod alignment) and is mapped exactly
    as before; their program headers and the section headers get the new offsets.
    """
    with path.open("rb") as fh:
        head = bytearray(fh.read(64))
        if len(head) < 64 or head[:4] != b"\x7fELF" or head[4] != 2 or head[5] != 1:
            return 0  # not ELF64 little-endian
        phoff, shoff = struct.unpack_from("<QQ", head, 0x20)
        phentsize, phnum, shentsize, shnum, shstrndx = struct.unpack_from("<HHHHH", head, 0x36)
        if shentsize != _SECTION.size or phentsize != _PROGRAM.size or shnum == 0 or shstrndx >= shnum:
            return 0
        fh.seek(phoff)
        ptable = bytearray(fh.read(phentsize * phnum))
        fh.seek(shoff)
        table = bytearray(fh.read(shentsize * shnum))
        if len(table) != shentsize * shnum or len(ptable) != phentsize * phnum:
            return 0
        sections = [list(_SECTION.unpack_from(table, i * _SECTION.size)) for i in range(shnum)]
        fh.seek(sections[shstrndx][4])
        names = fh.read(min(sections[shstrndx][5], 1 << 20))
    size = path.stat().st_size
    programs = [list(_PROGRAM.unpack_from(ptable, i * _PROGRAM.size)) for i in range(phnum)]
    remove: set[int] = set()
    for i, sec in enumerate(sections):
        if sec[1] == SHT_SYMTAB and 0 < sec[6] < shnum and sections[sec[6]][1] == SHT_STRTAB:
            remove |= {i, sec[6]}
        elif sec[1] != SHT_NOBITS and sec[5] and _name(names, sec[0]).startswith(_DEBUG):
            remove.add(i)
    if not remove or shstrndx in remove:
        return 0
    ranges: list[tuple[int, int]] = sorted((sections[i][4], sections[i][4] + sections[i][5]) for i in remove)
    if any(sections[i][2] & SHF_ALLOC or sections[i][4] + sections[i][5] > size for i in remove):
        return 0
    if any(ranges[i][1] > ranges[i + 1][0] for i in range(len(ranges) - 1)):
        return 0

    def overlaps(start: int, end: int) -> bool:
        return any(start < r_end and r_start < end for r_start, r_end in ranges)

    for i, sec in enumerate(sections):
        if i not in remove and (sec[6] in remove or (sec[1] != SHT_NOBITS and overlaps(sec[4], sec[4] + sec[5]))):
            return 0  # something else (e.g. a relocation section) uses a removed one, or shares its bytes
    if any(overlaps(p[2], p[2] + p[5]) for p in programs) or overlaps(phoff, phoff + len(ptable)) or overlaps(
            shoff, shoff + len(table)):
        return 0
    later = [p for p in programs if p[2] >= ranges[0][1] and p[5]]  # file content to move
    if any(p[2] < ranges[-1][0] for p in later):
        return 0  # a segment between removed sections: not a layout this handles
    # (start, end, zero bytes kept): a little padding keeps every shift aligned
    spans = [(start, end, (end - start) % _ALIGN) for start, end in ranges]
    if later:  # moved segments keep offset = address (mod alignment): shift by a multiple of every alignment
        page = max([_PAGE] + [int(p[7]) for p in programs if p[0] == PT_LOAD])
        start, end, pad = spans[-1]
        spans[-1] = (start, end, pad + sum(e - s - k for s, e, k in spans) % page)

    def moved(offset: int) -> int:
        return offset - sum(e - s - k for s, e, k in spans if e <= offset)

    if moved(size) == size:
        return 0
    for i, sec in enumerate(sections):
        if i in remove:
            sec[1:] = [0, 0, 0, 0, 0, 0, 0, 1, 0]  # SHT_NULL, empty; the index stays, so no link changes
        else:
            sec[4] = moved(sec[4])
        _SECTION.pack_into(table, i * _SECTION.size, *sec)
    for i, prog in enumerate(programs):
        prog[2] = moved(prog[2])
        _PROGRAM.pack_into(ptable, i * _PROGRAM.size, *prog)
    struct.pack_into("<QQ", head, 0x20, moved(phoff), moved(shoff))
    tmp = path.with_name(path.name + ".mlship-strip")
    with path.open("rb") as src, tmp.open("wb") as dst:
        position = 0
        for start, end, pad in spans:
            _copy(src, dst, position, start - position)
            dst.write(b"\0" * pad)
            position = end
        _copy(src, dst, position, size - position)
        for offset, data in ((moved(shoff), table), (moved(phoff), ptable), (0, head)):
            dst.seek(offset)
            dst.write(data)
    os.chmod(tmp, path.stat().st_mode)
    saved = size - tmp.stat().st_size
    os.replace(tmp, path)
    return saved


def _name(names: bytes, offset: int) -> bytes:
    end = names.find(b"\0", offset)
    return names[offset:end] if 0 <= offset < len(names) and end >= 0 else b""


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
    print(f"elfstrip: removed {total / 1e6:.1f} MB of symbol tables and debug information")
