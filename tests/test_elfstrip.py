"""image/elfstrip.py: symbol tables leave shared libraries, which still load; anything unusual is left alone."""

from __future__ import annotations

import os
import shutil
import struct
import subprocess
import sys
from pathlib import Path

import markupsafe
import pytest
import yaml

from mlship.image.elfstrip import strip, strip_tree

# Extension modules of installed packages and a call that proves each still works; the first one whose
# build has a symbol table is used (wheels differ: one package may ship its library stripped already).
EXTENSIONS = [
    (markupsafe, "_speedups*.so", "markupsafe._speedups", "m._escape_inner('<a&b>')", "&lt;a&amp;b&gt;"),
    (yaml, "_yaml*.so", "yaml._yaml", "type(m.CParser).__name__", "type"),
]


def test_stripped_extension_still_imports_and_works(tmp_path: Path) -> None:
    for package, pattern, *check in EXTENSIONS:
        (source,) = Path(str(package.__file__)).parent.glob(pattern)
        lib = tmp_path / source.name
        shutil.copy(source, lib)
        before = lib.stat().st_size
        saved = strip(lib)
        if saved:
            name, call, expected = check
            break
    else:
        pytest.fail(f"none of {[e[2] for e in EXTENSIONS]} has a symbol table to strip: add an extension that does")
    assert lib.stat().st_size == before - saved
    assert strip(lib) == 0  # nothing left to remove
    code = ("import importlib.util as u, sys; s = u.spec_from_file_location(sys.argv[2], sys.argv[1]); "
            f"m = u.module_from_spec(s); s.loader.exec_module(m); print({call})")
    out = subprocess.run([sys.executable, "-c", code, str(lib), name], capture_output=True, text=True, check=True,
                         timeout=30)
    assert out.stdout.strip() == expected


@pytest.mark.parametrize("data", [b"", b"not elf", b"\x7fELF\x02\x01" + b"\xff" * 58, b"\x7fELF\x02\x01" + bytes(200)])
def test_other_files_are_left_alone(tmp_path: Path, data: bytes) -> None:
    path = tmp_path / "x.so"
    path.write_bytes(data)
    assert strip(path) == 0
    assert path.read_bytes() == data
    assert strip_tree([str(tmp_path)]) == 0



def run_with(path: Path, code: str) -> list[str]:
    """The output lines of ``code`` run by a fresh interpreter that finds the packages under ``path`` first."""
    env = {**os.environ, "PYTHONPATH": str(path)}
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60,
                          env=env).stdout.split()


def section_names(lib: Path) -> set[bytes]:
    data = lib.read_bytes()
    shoff, = struct.unpack_from("<Q", data, 0x28)
    shnum, shstrndx = struct.unpack_from("<HH", data, 0x3C)
    heads = [struct.unpack_from("<IIQQQQIIQQ", data, shoff + 64 * i) for i in range(shnum)]
    names = heads[shstrndx][4]
    return {data[names + h[0]:data.index(b"\0", names + h[0])] for h in heads if h[1]}  # SHT_NULL ones are gone


PNG = """import io, struct, zlib
from PIL import Image
chunk = lambda t, d: struct.pack('>I', len(d)) + t + d + struct.pack('>I', zlib.crc32(t + d))
raw = b''.join(b'\\0' + bytes(range(10 * y, 10 * y + 4)) for y in range(3))
data = (b'\\x89PNG\\r\\n\\x1a\\n' + chunk(b'IHDR', struct.pack('>IIBBBBB', 4, 3, 8, 0, 0, 0, 0))
        + chunk(b'IDAT', zlib.compress(raw)) + chunk(b'IEND', b''))
img = Image.open(io.BytesIO(data), formats=['PNG']).convert('RGB')
print(Image.__file__, img.size, img.getpixel((3, 2)))
"""


def test_debug_info_leaves_and_patched_libraries_still_load(tmp_path: Path) -> None:
    """uvloop ships 12 MB of DWARF in its loop module; Pillow's core module, patched by auditwheel, has loaded
    segments after its debug sections (they move by whole pages). Both still import and work from the copies."""
    import PIL
    import uvloop

    for package in (uvloop, PIL):
        shutil.copytree(Path(str(package.__file__)).parent, tmp_path / package.__name__)
    shutil.copytree(Path(str(PIL.__file__)).parent.with_name("pillow.libs"), tmp_path / "pillow.libs")
    (loop,) = (tmp_path / "uvloop").glob("loop.*.so")
    (imaging,) = (tmp_path / "PIL").glob("_imaging.*.so")
    before = {lib: lib.stat().st_size for lib in (loop, imaging)}
    assert b".debug_info" in section_names(loop) and b".debug_info" in section_names(imaging)
    assert strip_tree([str(tmp_path)]) > 10_000_000
    assert loop.stat().st_size < before[loop] / 4 and imaging.stat().st_size < before[imaging] / 2, before
    for lib in (loop, imaging):
        assert not {n for n in section_names(lib) if n.startswith(b".debug_") or n == b".symtab"}, lib
        assert strip(lib) == 0
    assert run_with(tmp_path, PNG) == [str(tmp_path / "PIL" / "Image.py"), "(4,", "3)", "(23,", "23,", "23)"]
    assert run_with(tmp_path, "import asyncio, uvloop; print(uvloop.__file__); "
                    "print(uvloop.new_event_loop().run_until_complete(asyncio.sleep(0, 42)))") == [
        str(tmp_path / "uvloop" / "__init__.py"), "42"]
