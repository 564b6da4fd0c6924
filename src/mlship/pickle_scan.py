"""Read a pickle / joblib artifact without running anything it references: ``scan(path)``.

The container is told by its first bytes (raw pickle, joblib's zlib/gzip/bz2/xz/lzma). The unpickler's ``find_class``
never imports: each class or function named becomes an inert stub recording its arguments and state; only numpy's
data-only array/dtype/scalar rebuilders, joblib's inline-array wrapper and a few builtin containers are real.
"""

from __future__ import annotations

import _compat_pickle
import bz2
import collections
import copyreg
import gzip
import importlib
import lzma
import math
import pickle
import zlib
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import IO, Any, ClassVar

import numpy as np
from joblib.compressor import BinaryZlibFile
from joblib.numpy_pickle import NumpyArrayWrapper, NumpyUnpickler
from joblib.numpy_pickle_compat import _MAX_LEN
from packaging.version import InvalidVersion, Version

from mlship.errors import ArtifactError
from mlship.pycompat import STDLIB_MODULES

MAX_FILE_BYTES = 2 * 1024**3  #: larger files are refused
MAX_STREAM_BYTES = 8 * 1024**3  #: at most this many (decompressed) bytes are read
MAX_ARRAY_BYTES = 64 * 1024**2  #: joblib's inline arrays larger than this are skipped, not built
_MAX_NESTING = 8  # pickles inside object arrays inside pickles ...
_CHUNK = 16 * 1024**2

#: top-level module -> the pip package it comes from
FRAMEWORKS = {"sklearn": "scikit-learn", "imblearn": "imbalanced-learn", "category_encoders": "category-encoders",
              "sentence_transformers": "sentence-transformers", **{m: m for m in (
                  "xgboost", "lightgbm", "catboost", "torch", "tensorflow", "keras", "numpy", "scipy", "pandas",
                  "joblib", "statsmodels", "skorch", "transformers", "prophet", "sktime", "pmdarima", "dill")}}
#: modules any of whose callables can run commands, code or reach the network or file system
DANGEROUS_MODULES = frozenset("""os posix nt subprocess _posixsubprocess shutil sys socket importlib pty runpy marshal
ctypes code codeop pdb bdb profile cProfile timeit trace webbrowser multiprocessing asyncio signal ssl urllib http
ftplib smtplib""".split())  # noqa: SIM905
#: single callables that do the same, "module.name"
DANGEROUS_NAMES = frozenset(tuple(n.rsplit(".", 1)) for n in """builtins.eval builtins.exec builtins.compile
builtins.__import__ builtins.getattr builtins.setattr builtins.delattr builtins.open builtins.breakpoint
builtins.globals builtins.vars io.open types.FunctionType types.CodeType types.LambdaType types.MethodType
pickle.loads pickle.load pickle.Unpickler _pickle.loads _pickle.load operator.methodcaller operator.attrgetter
numpy.testing._private.utils.runstring dill._dill._create_code dill._dill._create_function dill.loads
cloudpickle.cloudpickle._builtin_type cloudpickle.cloudpickle._make_function torch.serialization.load joblib.load
joblib.numpy_pickle.load""".split())  # noqa: SIM905
_TEXT_PICKLE_STARTS = frozenset(b"()]}NIJKLMFGSTUVXc")  # a protocol 0/1 pickle's first byte (2+: PROTO, 0x80)
_OTHER_FORMATS = ((b"PK\x03\x04", "a zip archive (torch.save, .keras, .npz)"), (b"\x89HDF", "an HDF5 file (.h5)"),
                  (b"\x93NUMPY", "a numpy .npy file"), (b"\x04\x22\x4d\x18", "an lz4 stream (joblib's lz4)"))


@dataclass
class EstimatorSummary:
    """What the top-level estimator's recorded state says (no estimator code runs)."""
    class_path: str
    n_features_in: int | None = None
    feature_names_in: list[str] | None = None
    classes: list[Any] | None = None
    is_pipeline: bool = False
    steps: list[tuple[str, str]] = field(default_factory=list)  # (step name, class path or "passthrough")


@dataclass
class PickleScan:
    compression: str  #: "none", "zlib", "gzip", "bz2", "xz", "lzma" or "zfile" (joblib < 0.9.3)
    protocol: int  #: the PROTO opcode's value; 0 for protocol 0 and 1 streams (they have no header)
    globals: list[tuple[str, str]]  #: every (module, name) the pickle references, sorted
    top_modules: list[str]
    frameworks: dict[str, str]  #: referenced top-level module -> pip package, for the known frameworks
    user_modules: list[str]  #: neither the standard library nor a known framework (your code, __main__)
    dangerous: list[str]  #: referenced callables that can run commands or code, "module.name"
    versions: dict[str, list[str]]  #: package -> the versions recorded in the file (e.g. _sklearn_version)
    estimator: EstimatorSummary | None = None
    root_class: str | None = None  #: "module.name" of the top-level object, when it is not a builtin value
    skipped_arrays: int = 0  #: joblib arrays over MAX_ARRAY_BYTES, read past rather than built
    root_version: str | None = None  #: the top-level object's own _sklearn_version

    def version(self, package: str) -> str | None:
        """The one version to pin: the top-level object's own, else the newest one recorded."""
        found = self.versions.get(package, [])
        if package == "scikit-learn" and self.root_version in found:
            return self.root_version
        return max(found, key=_version_key) if found else None


class Stub:
    """Stands for a class or function the pickle names; subclassed per (module, name). Runs nothing."""
    stub_module: ClassVar[str] = ""
    stub_name: ClassVar[str] = ""
    _sink: ClassVar[list[Stub]]
    args: tuple[Any, ...]
    kwargs: dict[str, Any]
    state: Any
    items: list[Any]

    def __new__(cls, *args: Any, **kwargs: Any) -> Stub:  # REDUCE (cls(*args)), NEWOBJ (cls.__new__(cls, *args))
        self = object.__new__(cls)
        self.args, self.kwargs, self.state = args, kwargs, None
        self.items = []
        cls._sink.append(self)
        return self

    def __setstate__(self, state: Any) -> None:  # BUILD
        self.state = state

    def __call__(self, *args: Any, **kwargs: Any) -> Stub:  # the pickle calls an object it built
        return type(self)(*args, **kwargs)

    def append(self, item: Any) -> None:  # APPEND(S) / ADDITEMS on an object that is not a list or set
        self.items.append(item)

    add = append

    def __setitem__(self, key: Any, value: Any) -> None:  # SETITEM(S): kept as (key, value) items
        self.items.append((key, value))

    @property
    def path(self) -> str:
        return f"{self.stub_module}.{self.stub_name}"


_NATIVE = {k: True for k in ["ensure_native_byte_order"] if k in NumpyUnpickler.__init__.__code__.co_varnames}
_CORE = importlib.import_module("numpy._core" if np.__version__[:2] != "1." else "numpy.core")


class _Reader:
    """A read-only stream that stops at ``limit`` bytes and allocates only what it has read."""
    def __init__(self, raw: IO[bytes], limit: int, head: bytes = b"") -> None:
        self.raw, self.left, self.head = raw, limit, head

    def read(self, n: int = -1) -> bytes:
        n = self.left + len(self.head) if n < 0 else n
        parts = [self.head[:n]]
        self.head, n = self.head[n:], n - len(parts[0])
        while n > 0 and self.left > 0:  # in chunks: a length field of 2**60 allocates nothing
            part = self.raw.read(min(n, _CHUNK, self.left))
            if not part:
                break
            self.left -= len(part)
            parts.append(part)
            n -= len(part)
        if n > 0 and self.left <= 0 and self.raw.read(1):
            raise pickle.UnpicklingError(f"the stream is longer than {MAX_STREAM_BYTES // 1024**3} GiB")
        return b"".join(parts)

    def readline(self) -> bytes:
        head, self.head = self.head, b""
        line = b"" if head.endswith(b"\n") else self.raw.readline(max(self.left, 0))
        self.left -= len(line)
        return head + line


class _ScanUnpickler(NumpyUnpickler):  # type: ignore[misc]
    """joblib's unpickler (inline arrays) with a find_class that stubs everything but numpy's data types."""
    dispatch = NumpyUnpickler.dispatch.copy()

    def __init__(self, file: _Reader, name: str, parent: _ScanUnpickler | None = None) -> None:
        super().__init__(name, file, **_NATIVE)  # {}: joblib < 1.2 (old models' images)
        self.depth: int = parent.depth + 1 if parent else 0
        self.refs: set[tuple[str, str]] = parent.refs if parent else set()
        self.instances: list[Stub] = parent.instances if parent else []
        self.stubs: dict[tuple[str, str], type[Stub]] = parent.stubs if parent else {}
        self.skipped = 0
        g, ma = self._guard, _CORE.multiarray
        array = g("numpy._core.multiarray", "_reconstruct", lambda *a: ma._reconstruct(np.ndarray, (0,), b"b"))
        scalar = g("numpy._core.multiarray", "scalar", ma.scalar,  # (dtype, bytes) or (object dtype, obj)
                   lambda a: isinstance(a[0], np.dtype) and (a[0].hasobject or isinstance(a[1], bytes)))
        frombuffer = g("numpy._core.numeric", "_frombuffer", _CORE.numeric._frombuffer,
                       lambda a: isinstance(a[1], np.dtype) and not a[1].hasobject)
        self.real: dict[tuple[str, str], Any] = {
            ("joblib.numpy_pickle", "NumpyArrayWrapper"): NumpyArrayWrapper,  # numpy.ndarray: a stub, only ever
            # _reconstruct's subtype, which is ignored (a plain ndarray is built)
            ("numpy", "dtype"): g("numpy", "dtype", np.dtype, lambda a: isinstance(a[0], str) and len(a) <= 3),
            ("_codecs", "encode"): g("_codecs", "encode", lambda t, e: t.encode("latin1"),  # bytes in protocol < 3
                                     lambda a: len(a) == 2 and isinstance(a[0], str) and a[1] in ("latin1", "latin-1")),
            ("copyreg", "_reconstructor"): g("copyreg", "_reconstructor", _reconstructor),
            ("collections", "OrderedDict"): g("collections", "OrderedDict", collections.OrderedDict),
            **{("builtins", t.__name__): g("builtins", t.__name__, t) for t in (set, frozenset, complex, slice)},
            **{("builtins", t.__name__): g("builtins", t.__name__, t,  # bytes(10**12) would allocate: data only
                                           lambda a: not a or isinstance(a[0], (str, bytes, bytearray, list)))
               for t in (bytes, bytearray)},
        }
        for core in ("numpy.core", "numpy._core"):
            self.real[(f"{core}.multiarray", "_reconstruct")] = array
            self.real[(f"{core}.multiarray", "scalar")] = scalar
            self.real[(f"{core}.numeric", "_frombuffer")] = frombuffer

    def _stub(self, module: str, name: str) -> type[Stub]:
        if (module, name) not in self.stubs:
            attrs = {"stub_module": module, "stub_name": name, "_sink": self.instances}
            self.stubs[(module, name)] = type(name, (Stub,), attrs)
        return self.stubs[(module, name)]

    def _guard(self, module: str, name: str, fn: Any, ok: Any = lambda args: True) -> Any:
        """``fn`` where ``ok(args)`` says its arguments are plain data; else (or if it refuses) a stub's record."""

        def call(*args: Any, **kwargs: Any) -> Any:
            try:
                return fn(*args, **kwargs) if ok(args) else self._stub(module, name)(*args, **kwargs)
            except Exception:
                return self._stub(module, name)(*args, **kwargs)

        return call

    def find_class(self, module: str, name: str) -> Any:
        if self.proto < 3 and self.fix_imports:  # Python 2 names, as pickle.Unpickler maps them
            if (module, name) in _compat_pickle.NAME_MAPPING:
                module, name = _compat_pickle.NAME_MAPPING[(module, name)]
            elif module in _compat_pickle.IMPORT_MAPPING:
                module = _compat_pickle.IMPORT_MAPPING[module]
        module, name = str(module), str(name)
        self.refs.add((module, name))
        return self.real.get((module, name)) or self._stub(module, name)

    def persistent_load(self, pid: Any) -> Any:
        return self._stub("<persistent>", "id")(pid)

    def get_extension(self, code: int) -> None:  # copyreg's extension registry, without its shared cache
        key = copyreg._inverted_registry.get(code)  # type: ignore[attr-defined]
        if not key:
            raise pickle.UnpicklingError(f"unregistered extension code {code}")
        self.append(self.find_class(*key))

    def load_build(self) -> None:
        state = self.stack[-1]
        try:
            pickle._Unpickler.load_build(self)  # type: ignore[attr-defined]
        except Exception:  # a real array or dtype refused the state it was given: keep a record instead
            self.stack[-1] = self._stub("<unbuilt>", type(self.stack[-1]).__name__)(state)
        if isinstance(self.stack[-1], NumpyArrayWrapper):
            self.stack[-1] = self._read_array(self.stack[-1])

    dispatch[pickle.BUILD[0]] = load_build

    def _read_array(self, wrapper: Any) -> Any:
        """The array after joblib's wrapper: built when small, skipped when large, object arrays stubbed."""
        dtype, shape = getattr(wrapper, "dtype", None), getattr(wrapper, "shape", None)
        if not (isinstance(dtype, np.dtype) and isinstance(shape, tuple)
                and all(isinstance(n, int) and n >= 0 for n in shape)):
            raise pickle.UnpicklingError("a joblib array header is malformed")
        wrapper.subclass = np.ndarray
        wrapper.order = "F" if getattr(wrapper, "order", "C") == "F" else "C"
        if dtype.hasobject:  # a pickle inside the pickle: read by this unpickler's rules, never allow_pickle
            if self.depth >= _MAX_NESTING:
                raise pickle.UnpicklingError("object arrays are nested too deeply")
            return _ScanUnpickler(self.file_handle, self.filename, parent=self).load()
        nbytes = math.prod(shape) * dtype.itemsize
        if nbytes <= MAX_ARRAY_BYTES:
            return wrapper.read(self, *_NATIVE.values())  # joblib's own reader: alignment padding, chunks, byte order
        if getattr(wrapper, "numpy_array_alignment_bytes", None) is not None:
            self.file_handle.read(int.from_bytes(self.file_handle.read(1), "little"))
        while nbytes > 0:
            chunk = self.file_handle.read(min(nbytes, _CHUNK))
            if not chunk:
                raise pickle.UnpicklingError("the file ends inside an array")
            nbytes -= len(chunk)
        self.skipped += 1
        return self._stub("<skipped>", "ndarray")(shape, str(dtype))


def _reconstructor(cls: Any, base: Any, state: Any = None) -> Any:  # protocol 0/1 objects
    if cls is NumpyArrayWrapper or (isinstance(cls, type) and issubclass(cls, Stub)):  # (or joblib's, protocol 0/1)
        return cls.__new__(cls) if state is None else cls(state)
    raise TypeError("not a recorded class")


def scan(path: Path) -> PickleScan:
    """Read ``path`` (a pickle or joblib file, compressed or not) without importing or running anything in it."""
    size = path.stat().st_size
    if size > MAX_FILE_BYTES:
        raise ArtifactError(f"{path.name} is {size / 1024**3:.1f} GiB; mlship reads pickles of up to 2 GiB.",
                            why="A pickle is read whole to learn what it holds.",
                            fix="Save large weights separately (e.g. .npy files read by a `load:` function).")
    with path.open("rb") as fh:
        compression, stream = _open(path, fh, size)
        unpickler = _ScanUnpickler(stream, str(path))
        try:
            root = unpickler.load()
        except Exception as exc:  # MemoryError included
            raise ArtifactError(f"{path.name} is not a readable pickle: {exc.__class__.__name__}: {exc}",
                                why="It starts like a pickle/joblib stream but cannot be read to its end "
                                "(truncated, corrupt or not a pickle).",
                                fix="Re-save the model with `joblib.dump(model, 'model.joblib')`.") from None
    refs = sorted(unpickler.refs)
    tops = sorted({m.split(".")[0] for m, _ in refs})
    versions = {v for i in unpickler.instances if isinstance(v := (_state(i) or {}).get("_sklearn_version"), str)}
    root_state = _state(root)
    return PickleScan(
        compression=compression, protocol=int(unpickler.proto), globals=refs, top_modules=tops,
        frameworks={t: FRAMEWORKS[t] for t in tops if t in FRAMEWORKS},
        user_modules=[t for t in tops if t not in FRAMEWORKS and t not in STDLIB_MODULES],
        dangerous=[f"{m}.{n}" for m, n in refs if (m, n) in DANGEROUS_NAMES or m.split(".")[0] in DANGEROUS_MODULES],
        versions={"scikit-learn": sorted(versions, key=_version_key)} if versions else {},
        estimator=_summary(root), root_class=root.path if isinstance(root, Stub) else None,
        skipped_arrays=unpickler.skipped,
        root_version=version if isinstance(version := (root_state or {}).get("_sklearn_version"), str) else None,
    )


_MAGIC = ((b"ZF", "zfile"), (b"\x1f\x8b", "gzip"), (b"BZh", "bz2"), (b"\xfd7zXZ\x00", "xz"),
          (b"\x5d\x00", "lzma"))  # lzma before protocol 1's EMPTY_LIST (0x5d): 0x00 is no opcode
_DECOMPRESS: dict[str, Any] = {
    "zfile": partial(BinaryZlibFile, mode="rb"), "zlib": partial(BinaryZlibFile, mode="rb"),
    "gzip": lambda f: gzip.GzipFile(fileobj=f, mode="rb"), "bz2": partial(bz2.BZ2File, mode="rb"),
    "xz": partial(lzma.LZMAFile, mode="rb", format=lzma.FORMAT_XZ),
    "lzma": partial(lzma.LZMAFile, mode="rb", format=lzma.FORMAT_ALONE),
}


def container(head: bytes) -> str | None:
    """What a file's first bytes say it is: "none" (a raw pickle), joblib's compression, or None (not a pickle)."""
    if head[:1] == b"\x80":
        return "none"
    name = next((name for magic, name in _MAGIC if head.startswith(magic)), None)
    if name is None and len(head) >= 2 and head[0] == 0x78 and (head[0] * 256 + head[1]) % 31 == 0:
        name = "zlib"
    return name or ("none" if head[:1] and head[0] in _TEXT_PICKLE_STARTS else None)


def _open(path: Path, fh: IO[bytes], size: int) -> tuple[str, _Reader]:
    """The compression, told by the first bytes, and the pickle stream inside."""
    head = fh.read(8)
    fh.seek(0)
    compression = container(head)
    if compression is None:
        kind = next((what for magic, what in _OTHER_FORMATS if head.startswith(magic)), None)
        raise ArtifactError(f"{path.name} is not a pickle or joblib file" + (f": it is {kind}." if kind else "."),
                            why="Its first bytes match no pickle (protocol 0-5) nor joblib's zlib/gzip/bz2/xz/lzma.",
                            fix="Pass --runtime NAME for another format, or save the model with joblib.dump.")
    if compression == "none":
        return "none", _Reader(fh, size)
    if compression == "zfile":  # joblib < 0.9.3: "ZF", the length in hex (padded), maybe a space, zlib data
        fh.seek(2 + _MAX_LEN)
        fh.seek(2 + _MAX_LEN + (fh.read(1) == b" "))
    raw = _DECOMPRESS[compression](fh)
    try:
        first = raw.read(1)
    except (OSError, EOFError, lzma.LZMAError, zlib.error) as exc:
        raise ArtifactError(f"{path.name} looks {compression}-compressed but cannot be decompressed: {exc}.",
                            fix="Check the file is complete (re-download or re-save it).") from None
    if container(first) != "none":
        raise ArtifactError(f"{path.name} is a {compression}-compressed file, but not of a pickle.",
                            why="The decompressed data does not start like a pickle stream.",
                            fix="Give the model file itself (joblib.dump / pickle.dump output).")
    return compression, _Reader(raw, MAX_STREAM_BYTES - 1, head=first)


def _state(obj: Any) -> dict[str, Any] | None:
    """The attribute dict a stub was given (BUILD state, or its dict half of (state, slotstate))."""
    state = getattr(obj, "state", None) if isinstance(obj, Stub) else None
    if isinstance(state, tuple) and len(state) == 2:
        state = state[0]
    return state if isinstance(state, dict) else None


def _summary(root: Any) -> EstimatorSummary | None:
    state = _state(root)
    if not isinstance(root, Stub) or state is None:
        return None
    if root.stub_module.split(".")[0] != "sklearn" and "_sklearn_version" not in state:
        return None
    summary = EstimatorSummary(class_path=root.path)
    first, last = state, state  # a pipeline's features come from its first step, classes from its last
    steps = state.get("steps")
    if root.stub_name == "Pipeline" and isinstance(steps, list):
        summary.is_pipeline = True
        pairs = [step for step in steps if isinstance(step, tuple) and len(step) == 2]
        summary.steps = [(str(n), e.path if isinstance(e, Stub) else str(e)) for n, e in pairs]
        if pairs:
            first, last = _state(pairs[0][1]) or {}, _state(pairs[-1][1]) or {}
    n = first.get("n_features_in_")
    summary.n_features_in = int(n) if isinstance(n, (int, np.integer)) else None
    if (names := _values(first.get("feature_names_in_"))) is not None:
        summary.feature_names_in = [str(v) for v in names]
    if (classes := _values(last.get("classes_"))) is not None:
        summary.classes = [v if v is None or isinstance(v, (str, int, float, bool)) else str(v) for v in classes]
    return summary


def _values(value: Any) -> list[Any] | None:  # an array's or list's items as plain Python values
    items = value.tolist() if isinstance(value, np.ndarray) else value
    return [v.item() if isinstance(v, np.generic) else v for v in items] if isinstance(items, list) else None


def _version_key(text: str) -> tuple[int, Any]:
    try:
        return (1, Version(text))
    except InvalidVersion:
        return (0, text)

