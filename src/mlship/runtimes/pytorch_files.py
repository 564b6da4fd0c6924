"""Reading PyTorch files without running them: the format from the zip's entries, the classes a pickle names
(pickletools), the example input a traced module keeps, an exported program's input spec."""

from __future__ import annotations

import pickletools
import zipfile
from pathlib import Path
from typing import Any

from mlship.errors import ArtifactError

_STORAGE_DTYPES = {"FloatStorage": "float32", "DoubleStorage": "float64", "IntStorage": "int32",
                   "LongStorage": "int64", "ByteStorage": "uint8", "HalfStorage": "float16",
                   "BFloat16Storage": "bfloat16", "ShortStorage": "int16", "CharStorage": "int8",
                   "BoolStorage": "bool"}

def detect_format(path: Path) -> str:
    """``torchscript``, ``export``, ``aoti``, ``torch.save`` or ``unknown``, from the file's entries only."""
    if not path.is_file():
        return "unknown"
    try:
        with zipfile.ZipFile(path) as zf:
            names = zf.namelist()
    except zipfile.BadZipFile:
        with path.open("rb") as fh:  # torch.save's legacy format: a pickle (protocol 2 starts with 0x80)
            return "torch.save" if fh.read(1) == b"\x80" else "unknown"
    entries = {name.split("/", 1)[1] for name in names if "/" in name}
    if "constants.pkl" in entries or any(e.startswith("code/") for e in entries):
        return "torchscript"
    if any(e.startswith("data/aotinductor/") for e in entries):
        return "aoti"
    if ("archive_format" in entries or "serialized_exported_program.json" in entries
            or any(e.startswith("models/") and e.endswith(".json") for e in entries)):
        return "export"
    if "data.pkl" in entries:
        return "torch.save"
    return "unknown"


def public_version(version: str) -> str:
    """``2.13.0+cpu`` -> ``2.13.0``: the build variant is chosen by `mlship build`, not pinned."""
    return version.split("+", 1)[0]


def installed_version(package: str) -> str | None:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return public_version(version(package))
    except PackageNotFoundError:
        return None


def unreadable(path: Path, kind: str, exc: Exception) -> ArtifactError:
    first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    return ArtifactError(f"{path.name} looks like a {kind} file but cannot be loaded: "
                         f"{exc.__class__.__name__}: {first}",
                         why="It may be truncated, or written by a newer torch than the one installed.",
                         fix="Re-save the model, or install the torch version it was saved with.")



# --- reading files without running them -----------------------------------------------------------
def _pickle_ops(data: bytes) -> list[tuple[str, Any]]:
    try:
        return [(op.name, arg) for op, arg, _pos in pickletools.genops(data)]
    except Exception:  # not a pickle we can walk: no information, not an error
        return []


def _zip_member(path: Path, suffix: str) -> bytes | None:
    try:
        with zipfile.ZipFile(path) as zf:
            for name in zf.namelist():
                if name.split("/", 1)[-1] == suffix:
                    return zf.read(name)
    except (zipfile.BadZipFile, OSError):
        return None
    return None


def pickle_globals(path: Path) -> list[str]:
    """The classes and functions a torch.save pickle refers to (read with pickletools, not executed)."""
    data = _zip_member(path, "data.pkl")
    if data is None:
        try:
            data = path.read_bytes()
        except OSError:
            return []
    found: list[str] = []
    strings: list[str] = []
    for name, arg in _pickle_ops(data):
        if name == "GLOBAL" and isinstance(arg, str):
            found.append(arg.replace(" ", "."))
        elif name in ("SHORT_BINUNICODE", "BINUNICODE", "UNICODE") and isinstance(arg, str):
            strings.append(arg)
        elif name == "STACK_GLOBAL" and len(strings) >= 2:
            found.append(f"{strings[-2]}.{strings[-1]}")
    skip = ("torch._utils.", "torch.FloatStorage", "collections.OrderedDict", "torch.storage.", "builtins.")
    classes = [g for g in dict.fromkeys(found) if not g.startswith(skip) and "Storage" not in g]
    return classes


def traced_input(path: Path) -> tuple[list[int | None] | None, str | None]:
    """Shape (batch first, as None) and dtype of the example a traced module was traced with, if stored."""
    data = _zip_member(path, "traced_inputs.pkl")
    if data is None:
        return None, None
    ops = _pickle_ops(data)
    for i, (name, arg) in enumerate(ops):
        if name == "GLOBAL" and arg == "torch._utils _rebuild_tensor_v2":
            dtype = None
            j = i + 1
            while j < len(ops) and ops[j][0] != "BINPERSID":
                if ops[j][0] == "GLOBAL" and isinstance(ops[j][1], str) and ops[j][1].startswith("torch "):
                    dtype = _STORAGE_DTYPES.get(ops[j][1].split(" ", 1)[1])
                j += 1
            # after the storage: BINPUT?, offset, MARK, size..., TUPLE
            ints: list[int] = []
            k = j + 1
            seen_mark = False
            while k < len(ops):
                op, value = ops[k]
                if op == "MARK":
                    if seen_mark:
                        break
                    seen_mark = True
                elif op in ("BININT", "BININT1", "BININT2", "LONG1") and seen_mark:
                    ints.append(int(value))
                elif op == "TUPLE" and seen_mark:
                    break
                elif op in ("EMPTY_TUPLE",) and not seen_mark:
                    return [None], dtype  # a scalar: no instance shape
                k += 1
            if not ints:
                return None, None
            return [None, *ints[1:]], dtype
    return None, None


def export_input(program: Any) -> tuple[list[int | None] | None, str | None]:
    """Shape (symbolic dimensions as None) and dtype of an exported program's only user input."""
    try:
        from torch.export.graph_signature import InputKind

        users = [s.arg.name for s in program.graph_signature.input_specs if s.kind == InputKind.USER_INPUT]
        if len(users) != 1:
            return None, None
        node = next(n for n in program.graph.nodes if n.op == "placeholder" and n.name == users[0])
        val = node.meta.get("val")
        shape = [d if isinstance(d, int) else None for d in val.shape]
        return shape, str(val.dtype).removeprefix("torch.")
    except Exception:
        return None, None
