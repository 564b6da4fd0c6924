"""image/elfstrip.py: symbol tables leave shared libraries, which still load; anything unusual is left alone."""

from __future__ import annotations

import shutil
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
