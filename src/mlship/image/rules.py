"""What an image installs and removes beyond the plain requirements: the runtime's rules, and the rules of the
frameworks the artifact references (read from the file, nothing in it runs).

A runtime class may rewrite the requirements (``image_requirements``, e.g. torch's CPU build) and name
site-packages paths to remove (``image_prune``) or to strip of symbol tables (``image_strip``). A pickle that
holds a torch module (an ``nn.Module`` inside a scikit-learn-style wrapper, served by the sklearn runtime)
needs torch in the image just as a TorchScript file does, so the pytorch runtime's rules apply to any
artifact whose scan references torch, whatever the contract's runtime.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mlship import plugins
from mlship.errors import BuildError, PluginError

#: framework (pip package, as the scan names it) -> the runtime whose image rules it brings along
FRAMEWORK_RUNTIMES = {"torch": "pytorch"}
_PRUNE_GLOB = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.*/-]*$")
#: ELF symbol tables and DWARF debug information dropped from every image (image/elfstrip.py), in the server's own
#: packages: some wheels ship them (uvloop's loop module is 13.6 MB, 12 MB of it DWARF; PyYAML, httptools, Pillow and
#: numpy's OpenBLAS likewise): 20 MB of the torch-digits image. The loader never reads them.
SERVER_STRIP = ("uvloop", "httptools", "yaml", "orjson", "pydantic_core", "numpy", "numpy.libs", "PIL", "pillow.libs")
#: a compiled image holds the server's packages and onnxruntime's: every shared library in it is stripped
COMPILED_STRIP = ("*",)
#: what an image serving a compiled model removes: only the server runs in it (no user code, no framework), and it
#: never imports these (tests/test_compiled*.py serve from such images and check that the files are gone).
#: onnxruntime (43 MB of its 78): the C API library (the Python module links the runtime in and never loads it) and
#: the model-authoring tools (onnxruntime imports `transformers` only in a debug helper)
ONNXRUNTIME_UNUSED = ("onnxruntime/capi/libonnxruntime.so.*", "onnxruntime/transformers", "onnxruntime/quantization",
                      "onnxruntime/tools")
#: numpy's build and packaging tools, C headers and static library, typing stubs, and the extension modules only its
#: test suite and `numpy.show_runtime` load (6.1 MB)
NUMPY_UNUSED = ("numpy/f2py", "numpy/distutils", "numpy/_pyinstaller", "numpy/_core/include", "numpy/_core/lib",
                "numpy/_core/_*_tests.cpython-*", "numpy/_core/_simd.cpython-*", "numpy/*.pyi", "numpy/*/*.pyi",
                "numpy/*/*/*.pyi")
#: Pillow decodes the PNGs of `input.tensor.image` with its core module (`_imaging`) alone: the AVIF, WebP, font,
#: colour-management, Tk, ImageMath and morphology modules and the libraries only they link go (10.3 MB; Pillow's
#: plugins for those formats catch the ImportError themselves)
PILLOW_UNUSED = ("PIL/_avif.*", "PIL/_webp.*", "PIL/_imagingft.*", "PIL/_imagingcms.*", "PIL/_imagingtk.*",
                 "PIL/_imagingmath.*", "PIL/_imagingmorph.*", "pillow.libs/libavif-*", "pillow.libs/libwebp*",
                 "pillow.libs/libsharpyuv-*", "pillow.libs/libfreetype-*", "pillow.libs/libharfbuzz-*",
                 "pillow.libs/libpng16-*", "pillow.libs/libbrotli*", "pillow.libs/liblcms2-*")
#: pydantic's bundled 1.x API (1.1 MB) and the Cython sources uvloop ships beside its compiled modules
OTHER_UNUSED = ("pydantic/v1", "uvloop/*.pyx", "uvloop/*.pxd", "uvloop/handles/*.pyx", "uvloop/handles/*.pxd")
COMPILED_PRUNE = ONNXRUNTIME_UNUSED + NUMPY_UNUSED + PILLOW_UNUSED + OTHER_UNUSED


@dataclass(frozen=True)
class ImageRules:
    """The runtime classes whose image rules apply to a plan, and why the extra ones do."""

    runtimes: list[tuple[str, Any]] = field(default_factory=list)  # (name, runtime class)
    notes: list[str] = field(default_factory=list)
    prune: tuple[str, ...] = ()  # removed whatever the runtimes say (COMPILED_PRUNE for a compiled model)
    strip: tuple[str, ...] = SERVER_STRIP  # stripped whatever the runtimes say


def artifact_frameworks(path: Path) -> set[str]:
    """The known frameworks (pip names) a pickle/joblib artifact references, read without running it; empty for
    any other file (a zip, a folder, a file the scanner cannot read)."""
    from mlship.pickle_scan import container
    from mlship.runtimes.sklearn_load import scan_quietly

    if not path.is_file():
        return set()
    with path.open("rb") as fh:
        if container(fh.read(8)) is None:
            return set()
    found = scan_quietly(path)
    return set(found.frameworks.values()) if found is not None else set()


def _runtime_class(name: str) -> Any:
    try:
        return plugins.get_runtime(name)
    except PluginError:  # not installed here: build_pins reports that with the fix
        return None


def rules_for(runtime: str, frameworks: set[str] | None = None, compiled: bool = False) -> ImageRules:
    """The contract's runtime, then the runtime of each framework the artifact references (torch -> pytorch).
    An image that serves the compiled model (``compiled``: onnxruntime, not the framework) follows none: the
    runtime's rules install, prune and strip the framework (torch's CPU build would add torch back)."""
    found: list[tuple[str, Any]] = []
    notes: list[str] = []
    cls = None if compiled else _runtime_class(runtime)
    if cls is not None:
        found.append((runtime, cls))
    for framework in sorted(frameworks or ()):
        other = FRAMEWORK_RUNTIMES.get(framework)
        other_cls = _runtime_class(other) if other else None
        if other is None or other_cls is None or any(issubclass(c, other_cls) for _, c in found):
            continue
        found.append((other, other_cls))
        notes.append(f"the artifact references {framework} (read from the file): the image follows the {other} "
                     f"runtime's rules for it")
    return ImageRules(found, notes, COMPILED_PRUNE if compiled else (), COMPILED_STRIP if compiled else SERVER_STRIP)


def image_requirements(rules: ImageRules, requirements: list[str]) -> tuple[list[str], list[str], list[str]]:
    """Each runtime's ``image_requirements`` hook in turn (e.g. torch's CPU build):
    (requirements, fallback index URLs, notes)."""
    reqs, urls, notes = list(requirements), [], list(rules.notes)
    for _name, cls in rules.runtimes:
        hook = getattr(cls, "image_requirements", None)
        if hook is None:
            continue
        more_reqs, more_urls, more_notes = hook(reqs)
        reqs = list(more_reqs)
        urls += [u for u in more_urls if u not in urls]
        notes += list(more_notes)
    return reqs, urls, notes


def image_tweaks(rules: ImageRules) -> tuple[list[str], list[str]]:
    """The runtimes' ``image_prune`` and ``image_strip`` paths (relative to site-packages), checked to be inert:
    removed from the image, and shared libraries whose symbol tables are dropped (see image/elfstrip.py)."""
    found: list[list[str]] = [list(rules.prune), list(rules.strip)]
    for name, cls in rules.runtimes:
        for slot, attr in enumerate(("image_prune", "image_strip")):
            for glob in getattr(cls, attr, ()):
                if not _PRUNE_GLOB.fullmatch(glob) or ".." in glob.split("/"):
                    raise BuildError(f"The {name} runtime's {attr} has {glob!r}, which is not a plain relative path.",
                                     fix=f"Fix the runtime plugin's {attr}.")
                if glob not in found[slot]:
                    found[slot].append(glob)
    return found[0], found[1]
