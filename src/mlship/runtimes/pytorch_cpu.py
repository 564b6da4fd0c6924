"""The torch packages an image installs: the CPU build (``+cpu``) of the version the model needs, never CUDA."""

from __future__ import annotations

import os

from mlship.runtimes.pytorch_files import installed_version

#: An index holding the CPU-only builds of torch (PyTorch's own CPU wheel index, or a mirror of it):
#: `mlship build` adds it when the configured indexes have no ``+cpu`` wheel (PyPI's Linux torch wheels
#: depend on several GB of CUDA libraries). Unset: only the configured indexes are used.
CPU_INDEX_ENV = "MLSHIP_TORCH_INDEX_URL"
#: Packages whose PyPI Linux wheels are CUDA builds; the image installs their ``+cpu`` variant.
CPU_VARIANT_PACKAGES = ("torch", "torchvision", "torchaudio")


def cpu_requirements(requirements: list[str]) -> tuple[list[str], list[str], list[str]]:
    """The requirements as the image installs them: torch's CPU build, never CUDA.

    Returns (requirements, index URLs to fall back to, notes). An exact pin ``torch==X`` becomes
    ``torch==X+cpu`` (the CPU-only wheel; PyPI's Linux wheel of the same version pulls about 3 GB of
    nvidia-* packages); a range is narrowed to the installed version; torch is added when missing (the
    runtime needs it even when a `load:` function builds the model). `mlship build` resolves with the
    configured indexes first (a local CPU wheel or a mirror) and then, when set, with
    $MLSHIP_TORCH_INDEX_URL (PyTorch's CPU wheel index or a mirror of it). A pin that names a variant
    (``torch==X+cu124``) is kept as written; ``+cpu`` also keeps the CPU index.
    """
    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name

    out: list[str] = []
    notes: list[str] = []
    changed = False
    names = set()
    for line in requirements:
        req = Requirement(line)
        name = str(canonicalize_name(req.name))
        names.add(name)
        if name not in CPU_VARIANT_PACKAGES:
            out.append(line)
            continue
        exact = [s.version for s in req.specifier if s.operator in ("==", "===") and "*" not in s.version]
        if exact and "+" in exact[0]:
            out.append(line)  # a variant chosen by the user; +cpu still gets the CPU index and the note
            changed = changed or exact[0].endswith("+cpu")
            continue
        if exact:
            version = exact[0]
        else:
            installed = installed_version(name)
            if installed is None or not req.specifier.contains(installed, prereleases=True):
                from mlship.errors import BuildError

                raise BuildError(
                    f"dependencies.requirements: {line!r} does not pin one version of {req.name}.",
                    why="The image installs the CPU build of torch, which is chosen by its exact version "
                    "(X+cpu).",
                    fix=f"Pin it, e.g. {req.name}=={installed or '2.5.1'} (the version you trained with).")
            version = installed
            notes.append(f"pinned {req.name}=={version} (the installed version, within your {req.specifier})")
        extras = f"[{','.join(sorted(req.extras))}]" if req.extras else ""
        marker = f"; {req.marker}" if req.marker else ""
        out.append(f"{req.name}{extras}=={version}+cpu{marker}")
        changed = True
    if "torch" not in names:
        installed = installed_version("torch")
        if installed is not None:
            out.insert(0, f"torch=={installed}+cpu")
            notes.append(f"added torch=={installed} (the installed version): the model needs it")
            changed = True
    index = os.environ.get(CPU_INDEX_ENV, "").strip()
    if changed:
        notes.append("torch: the CPU build (+cpu), never CUDA; from your package indexes"
                     + (f", else from {index}" if index else f" (set ${CPU_INDEX_ENV} to PyTorch's CPU wheel "
                        "index if they lack it)"))
    return out, ([index] if changed and index else []), notes
