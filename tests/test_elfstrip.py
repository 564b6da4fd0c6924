"""build/elfstrip.py: symbol tables leave shared libraries, which still load; anything unusual is left alone."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import markupsafe
import pytest

from mlship.build.elfstrip import strip, strip_tree


def test_stripped_extension_still_imports_and_works(tmp_path: Path) -> None:
    (source,) = Path(markupsafe.__file__).parent.glob("_speedups*.so")
    lib = tmp_path / source.name
    shutil.copy(source, lib)
    before = lib.stat().st_size
    saved = strip(lib)
    if saved == 0:
        pytest.skip("this markupsafe build ships without a symbol table")
    assert lib.stat().st_size == before - saved
    assert strip(lib) == 0  # nothing left to remove
    code = ("import importlib.util as u, sys; s = u.spec_from_file_location('markupsafe._speedups', sys.argv[1]); "
            "m = u.module_from_spec(s); s.loader.exec_module(m); print(m._escape_inner('<a&b>'))")
    out = subprocess.run([sys.executable, "-c", code, str(lib)], capture_output=True, text=True, check=True, timeout=30)
    assert out.stdout.strip() == "&lt;a&amp;b&gt;"


@pytest.mark.parametrize("data", [b"", b"not elf", b"\x7fELF\x02\x01" + b"\xff" * 58, b"\x7fELF\x02\x01" + bytes(200)])
def test_other_files_are_left_alone(tmp_path: Path, data: bytes) -> None:
    path = tmp_path / "x.so"
    path.write_bytes(data)
    assert strip(path) == 0
    assert path.read_bytes() == data
    assert strip_tree([str(tmp_path)]) == 0
