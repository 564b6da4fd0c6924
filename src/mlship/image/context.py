"""Build plan (pure) and build context (files on disk) for a project's image.

``plan_build(project)`` decides everything: tag, base image, requirements, labels, files, Dockerfile.
``write_context(plan, dir)`` puts the Dockerfile, the locked wheelhouse, the mlship wheel, the model and
the contract into a folder that ``docker build`` can use with no network. ``content_tag(plan, dir)`` names
what that folder builds: ``NAME:VERSION-<12 hex>``, a digest of every build input, so a tag never names
two different contents (NAME:VERSION is the human tag, moved by each `mlship build`).
"""

from __future__ import annotations

import hashlib
import os
import posixpath
import re
import shutil
import subprocess
from collections.abc import Callable
from dataclasses import dataclass, field
from importlib.resources import files
from pathlib import Path
from typing import Any

import jinja2
from packaging.specifiers import SpecifierSet

from mlship import __version__, plugins
from mlship import compiled as compiled_mod
from mlship.artifacts.image import model_layer, write_generated
from mlship.contract_io import CONTRACT_FILE, Project, artifact_sha256
from mlship.errors import BuildError, PluginError
from mlship.image import elfstrip, wheelhouse
from mlship.image.rules import artifact_frameworks, image_requirements, image_tweaks, rules_for

DEFAULT_BASE = "python:{python}-slim"
_IMAGE_REF = re.compile(r"^[a-z0-9][a-z0-9._:/@-]*[a-z0-9]$")


@dataclass(frozen=True)
class BuildPlan:
    """Everything a build will do; printed by `mlship build --dry-run`."""

    tag: str
    base_image: str
    python: str
    requirements: list[str]
    labels: dict[str, str]
    files: list[tuple[Path, str]]  # (source on the host, path inside the build context)
    dockerfile: str
    notes: list[str] = field(default_factory=list)
    index_urls: list[str] = field(default_factory=list)  # tried when the configured indexes lack a wheel
    generated: dict[str, str] = field(default_factory=dict)  # context path -> text (a remote artifact's record)


def base_image_for(python: str, override: str | None = None, configured: str | None = None) -> str:
    """The base image for a Python version: --base-image, then $MLSHIP_BASE_IMAGE_3_9 (the variable for that
    version, so one environment can name an image per Python), then $MLSHIP_BASE_IMAGE, then build.base_image,
    then python:<python>-slim."""
    per_python = os.environ.get("MLSHIP_BASE_IMAGE_" + python.replace(".", "_"))
    image = (override or per_python or os.environ.get("MLSHIP_BASE_IMAGE") or configured
             or DEFAULT_BASE.format(python=python))
    if not _IMAGE_REF.fullmatch(image):  # fullmatch: `$` alone would accept a trailing newline
        raise BuildError(f"Base image {image!r} is not a valid image reference.",
                         fix="Use e.g. python:3.11-slim or registry.example/team/python:3.11.")
    return image


def base_image(project: Project, override: str | None = None) -> str:
    """The project's base image (:func:`base_image_for` its dependencies.python)."""
    return base_image_for(project.contract.dependencies.python, override, project.contract.build.base_image)


def pinned_requirements(project: Project, pins: dict[str, str],
                        proven: dict[str, str] | None = None) -> tuple[list[str], list[str]]:
    """User requirements with the artifact's framework versions enforced, plus the server's own.

    ``pins`` maps a package to the version the artifact was saved with (e.g. scikit-learn 1.5.2), or to the
    release ``provenance`` proved to predict the same on this artifact: ``proven`` maps such a package to the
    version the artifact records (so an error names both, truthfully).
    Returns (requirements, notes). A requirement that excludes the pinned version is an error.
    """
    notes: list[str] = []
    user = wheelhouse.parse_requirements(project.requirements())
    by_name = {wheelhouse.canonical(r.name): r for r in user}
    out = [str(r) for r in user]
    for package, saved in pins.items():
        req = by_name.get(wheelhouse.canonical(package))
        if req is None:
            out.append(f"{package}=={saved}")
            notes.append(f"pinned {package}=={saved}, " + ("the release proven equal to the artifact's "
                         f"{proven[package]}" if proven and package in proven else "the version the artifact was "
                         "saved with"))
        elif not SpecifierSet(str(req.specifier)).contains(saved, prereleases=True) and not any(
                s.operator == "==" and s.version.split("+")[0] == saved for s in req.specifier):  # X+cpu: a build of X
            recorded = (proven or {}).get(package)
            raise BuildError(
                f"Version skew: the artifact was saved with {package} {recorded or saved}"
                + (f" and proven to predict the same with {saved} (provenance in mlship.yaml)" if recorded else "")
                + f", but dependencies.requirements asks for {req}.",
                why=f"A pickle is only guaranteed to load with the {package} version that wrote it"
                + (", or with a release proven equal on this very file." if recorded else "."),
                fix=f"Require {package}=={saved} in mlship.yaml, or re-train and re-save the model with "
                f"the version you want to serve.",
            )
        elif not any(s.operator in ("==", "===") and "*" not in s.version for s in req.specifier):
            # a range (>=1.4,<2 or ==1.*) would let pip pick another version than the pickle's
            out[out.index(str(req))] = f"{package}=={saved}"
            notes.append(f"pinned {package}=={saved} (within your {req.specifier})")
    names = {wheelhouse.canonical(requirement_name(r)) for r in out}
    server = wheelhouse.server_requirements(project.contract.dependencies.python)  # resolved for the image's Python
    out += [r for r in server if wheelhouse.canonical(requirement_name(r)) not in names]
    tensor = project.contract.input.tensor
    if tensor is not None and tensor.image is not None and "pillow" not in names:
        out.append(_pin("pillow"))  # decodes the base64 PNGs that input.tensor.image accepts
    return out, notes


def _pin(package: str) -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return f"{package}=={version(package)}"
    except PackageNotFoundError:
        return package


def requirement_name(line: str) -> str:
    return re.split(r"[\s;\[<>=!~]", line, maxsplit=1)[0]


def git_commit(path: Path) -> str | None:
    try:
        proc = subprocess.run(["git", "-C", str(path), "rev-parse", "HEAD"], capture_output=True, text=True,
                              check=False, timeout=5)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return proc.stdout.strip() if proc.returncode == 0 else None


def _inside(rel: str, what: str) -> str:
    """``rel`` as a clean relative POSIX path, or a BuildError when it leaves the project folder."""
    clean = posixpath.normpath(rel)
    if posixpath.isabs(clean) or clean == ".." or clean.startswith("../"):
        raise BuildError(f"{what} {rel!r} is outside the project folder, so it cannot be put in the image.",
                         why="The image holds the project folder at /app; paths are kept relative to mlship.yaml.",
                         fix="Move the file next to mlship.yaml (or below it) and use a relative path.")
    return clean


def project_files(project: Project) -> tuple[list[tuple[Path, str]], list[tuple[Path, str]]]:
    """(model files, contract files) as (host path, context path).

    The context has two folders that mirror /app: ``model/`` (the artifact) and ``contract/`` (mlship.yaml
    and the files it names). The Dockerfile copies the folders, so no file name is ever written into it.
    """
    c = project.contract
    root = project.root
    model = model_layer(project, _inside).files
    names: dict[str, Path] = {}
    for rel in (c.docs, c.dependencies.requirements if isinstance(c.dependencies.requirements, str) else None,
                c.predict.split(":")[0] if c.predict else None, c.load.split(":")[0] if c.load else None):
        if rel:
            names[rel] = root / rel
    for pattern in c.build.include:
        matches = sorted(root.glob(pattern))
        if not matches:
            raise BuildError(f"build.include: {pattern!r} matches no file in {root}.",
                             fix="Fix the pattern or remove it.")
        for match in matches:
            names[match.relative_to(root).as_posix()] = match
    # the image always reads /app/mlship.yaml, whatever the contract file is called here (-f prod.yaml)
    names[CONTRACT_FILE] = project.contract_path
    contract = [(path, f"contract/{_inside(rel, 'file')}") for rel, path in sorted(names.items())]
    return model, contract


@dataclass(frozen=True)
class Compiled:
    """What `mlship build` learned about the compiled path (see build_compiled and mlship.compiled)."""

    files: list[Path]  # the compiled folder's files to put in the image (the model and its record, or the reason)
    onnxruntime: str | None  # the version that checked the compiled model; None: the original model is served
    note: str


def build_compiled(project: Project, keep: bool = True) -> Compiled | None:
    """Load the model the way the server will (converting and checking it when serve.compile allows, and
    keeping the result in .mlship/compiled/ unless ``keep`` is False); None when the compiled path does not
    apply to this project."""
    from mlship.serving.predictor import Predictor

    predictor = Predictor(project, keep_compiled=keep)
    predictor.load()
    return _compiled_of(project, predictor)


def _compiled_of(project: Project, predictor: Any) -> Compiled | None:
    """What a loaded Predictor says about the compiled path (see build_compiled)."""
    folder = compiled_mod.folder(project.root)
    if predictor.compiled is not None:
        names = [compiled_mod.ONNX_FILE, compiled_mod.RECORD_FILE]
        return Compiled(files=[folder / n for n in names], onnxruntime=predictor.compiled.record.onnxruntime,
                        note=f"serving the compiled model: {predictor.input_path}")
    if predictor.compile_note is None:
        return None
    failure = folder / compiled_mod.FAILURE_FILE
    return Compiled(files=[failure] if failure.is_file() else [], onnxruntime=None, note=predictor.compile_note)


def compiled_requirements(runtime: str, requirements: list[str], onnxruntime: str) -> tuple[list[str], list[str]]:
    """Requirements of an image that serves the compiled model: the runtime's framework packages out,
    onnxruntime (the version that checked the model) in. Returns (requirements, the names left out)."""
    try:
        drop = {wheelhouse.canonical(n) for n in plugins.get_runtime(runtime).framework_packages}
    except PluginError:
        drop = set()
    kept = [r for r in requirements if wheelhouse.canonical(requirement_name(r)) not in drop
            and wheelhouse.canonical(requirement_name(r)) != "onnxruntime"]
    dropped = [requirement_name(r) for r in requirements if wheelhouse.canonical(requirement_name(r)) in drop]
    return [*kept, f"onnxruntime=={onnxruntime}"], dropped


def plan_build(project: Project, *, base: str | None = None, pins: dict[str, str] | None = None,
               compiled: Compiled | None = None, proven: dict[str, str] | None = None) -> BuildPlan:
    """Pure: decide tag, requirements, labels and Dockerfile (``pins`` from the runtime, see build_pins;
    ``compiled`` from build_compiled; ``proven``: see pinned_requirements)."""
    c = project.contract
    requirements, notes = pinned_requirements(project, pins or {}, proven)
    if compiled is not None and compiled.onnxruntime is not None:
        requirements, dropped = compiled_requirements(c.runtime, requirements, compiled.onnxruntime)
        notes.append(compiled.note + (f"; left out of the image: {', '.join(dropped)}" if dropped else ""))
    elif compiled is not None:
        notes.append(compiled.note)
    # the runtime's image rules, and those of the frameworks the artifact references (torch in a joblib
    # wrapper); a compiled model is served by onnxruntime, so the artifact's frameworks stay out
    frameworks = set() if compiled is not None and compiled.onnxruntime is not None else (
        artifact_frameworks(project.artifact_path))
    rules = rules_for(c.runtime, frameworks, compiled=compiled is not None and compiled.onnxruntime is not None)
    requirements, index_urls, more = image_requirements(rules, requirements)
    layer = model_layer(project, _inside)  # a remote artifact: the image's cache, or fetched at start
    requirements += layer.requirements
    model_sha = c.artifact_sha256 or artifact_sha256(project.artifact_path)
    contract_sha = hashlib.sha256(project.contract_path.read_bytes()).hexdigest()
    labels = {
        "org.opencontainers.image.title": c.name,
        "org.opencontainers.image.version": project.version,
        "dev.mlship.version": __version__,
        "dev.mlship.runtime": c.runtime,
        "dev.mlship.contract-sha256": contract_sha,
        "dev.mlship.model-sha256": model_sha,
        "dev.mlship.compiled": "onnx" if compiled is not None and compiled.onnxruntime is not None else "no",
        **layer.labels,
    }
    commit = git_commit(project.root)
    if commit:
        labels["org.opencontainers.image.revision"] = commit
    model, contract = project_files(project)
    if compiled is not None:  # the compiled folder mirrors /app/.mlship/compiled, beside the artifact
        model += [(path, f"model/{compiled_mod.FOLDER}/{path.name}") for path in compiled.files]
    image = base_image(project, base)
    prune, strip = image_tweaks(rules)
    tools = [(Path(elfstrip.__file__), "elfstrip.py")] if strip else []
    env = jinja2.Environment(undefined=jinja2.StrictUndefined, keep_trailing_newline=True,
                             autoescape=False)  # noqa: S701 - a Dockerfile, not HTML
    env.filters["dockerstr"] = docker_string
    template = env.from_string(files("mlship").joinpath("templates/Dockerfile.j2").read_text(encoding="utf-8"))
    dockerfile = template.render(mlship_version=__version__, name=c.name, base_image=image, python="python3",
                                 labels=labels, prune=prune, strip=strip, env=layer.env,
                                 **wheelhouse.dockerfile_values(c.dependencies.python, image))  # pip, 3.9 check
    return BuildPlan(tag=f"{c.name}:{project.version}", base_image=image, python=c.dependencies.python,
                     requirements=requirements, labels=labels, files=model + contract + tools,
                     dockerfile=dockerfile, notes=notes + more + ([layer.note] if layer.note else []),
                     index_urls=index_urls, generated=layer.with_provenance(contract_sha, commit))


def docker_string(value: object) -> str:
    """A double-quoted Dockerfile word that the builder reads back as ``value`` exactly.

    Inside double quotes the builder still expands ``$VAR`` and reads ``\\`` as an escape, so ``\\``, ``"``
    and ``$`` get a backslash; JSON quoting (``tojson``) is not enough (``\\u0027`` would stay literal).
    """
    text = str(value)
    if any(ord(ch) < 32 or ord(ch) == 127 for ch in text):
        raise BuildError(f"{text!r} cannot be written into a Dockerfile: it has control characters.",
                         fix="Remove newlines and control characters from names and versions.")
    return '"' + re.sub(r'([\\"$])', r"\\\1", text) + '"'


def plan_project(project: Project, base: str | None = None, dry_run: bool = False) -> BuildPlan:
    """The plan `mlship build` uses: the artifact's pinned versions and the compiled path decided by loading it
    once (a dry run writes nothing, not even .mlship/compiled/). A model this machine cannot load as the image
    serves it (``provenance`` names other versions) is not loaded: its versions are read from the file and the
    contract, and it is converted and checked for the compiled path in a build environment."""
    from mlship.legacy.check import host_cannot_load, provenance_applies, provenance_pins
    from mlship.legacy.compile import compile_elsewhere
    from mlship.serving.predictor import Predictor

    compiled: Compiled | None
    reason = host_cannot_load(project) or wheelhouse.other_python(project)  # 3.9: loaded in the image only
    if reason is None:
        predictor = Predictor(project, keep_compiled=not dry_run, worker=True)
        predictor.load()
        compiled = _compiled_of(project, predictor)
    else:
        compiled = compile_elsewhere(project, reason, keep=not dry_run)
    pins, proven, notes = (provenance_pins(project) if reason is not None or provenance_applies(project)
                           else (_loaded_pins(project, predictor), {}, []))
    plan = plan_build(project, base=base, pins=pins, compiled=compiled, proven=proven)
    plan.notes[:0] = notes
    return plan


def _loaded_pins(project: Project, predictor: Any) -> dict[str, str]:
    """The versions a loaded project's artifact records (its runtime read them while loading it; a compiled model
    kept from an earlier build is used without loading the original: its scan says them)."""
    if project.contract.load:
        return {}
    runtime = predictor.runtime
    if predictor.worker_versions is not None:  # read by the conversion worker's runtime (mlship.convert_worker)
        return dict(predictor.worker_versions)
    if predictor.model is not None:
        return dict(runtime.saved_versions(predictor.model))
    recorded = getattr(runtime, "recorded_versions", None)
    return dict(recorded(project.artifact_path)) if callable(recorded) else {}


def build_pins(project: Project) -> dict[str, str]:
    """Framework versions the artifact was saved with, read by its runtime (loads the artifact), or from the
    file and the contract's provenance (without loading it) when mlship.yaml records one."""
    from mlship.legacy.check import provenance_applies, provenance_pins

    c = project.contract
    if provenance_applies(project):
        return provenance_pins(project)[0]
    runtime = plugins.get_runtime(c.runtime)()
    runtime.configure(c)
    if c.load:
        return {}
    from mlship.userpkg import make_importable

    make_importable(project.root)  # a pickle of your own classes: their package is next to mlship.yaml
    return dict(runtime.saved_versions(runtime.load(project.artifact_path)))


def content_tag(plan: BuildPlan, context: Path, base_id: str | None = None) -> str:
    """``NAME:VERSION-<12 hex>`` for the image a written context builds: a sha256 over everything that goes
    into it (the Dockerfile, which holds the base image, the labels and the mlship version; the lock; the name
    of every wheel; the model, the contract and every file it includes) and the base image's ID when known."""
    digest = hashlib.sha256()

    def add(*parts: str | bytes) -> None:
        for part in parts:
            digest.update(part if isinstance(part, bytes) else part.encode())
            digest.update(b"\0")

    add("mlship", __version__, plan.base_image, base_id or "", plan.dockerfile)
    lock = context / "requirements.lock"
    add(lock.read_bytes() if lock.is_file() else b"")
    for path in sorted(p for p in context.rglob("*") if p.is_file()):
        rel = path.relative_to(context).as_posix()
        if rel.startswith(("wheels/", "mlship/")):
            add(rel)  # wheel names carry name, version and platform; the lock pins their hashes
        elif rel not in ("Dockerfile", "requirements.lock"):
            add(rel, hashlib.sha256(path.read_bytes()).hexdigest())
    return f"{plan.tag}-{digest.hexdigest()[:12]}"


def _readable(root: Path) -> None:
    """Make a tree readable by anyone: COPY keeps modes, and the image runs as a non-root user, so a
    model saved with umask 077 (0600) would not load in the container."""
    if not root.exists():
        return
    for path in [root, *root.rglob("*")]:
        if path.is_symlink():
            continue
        mode = path.stat().st_mode
        path.chmod(mode | (0o555 if path.is_dir() else 0o444))


def write_context(plan: BuildPlan, directory: Path, progress: Callable[[str], None] | None = None) -> Path:
    """Fill ``directory`` (emptied first) with everything `docker build` needs; returns it. ``progress`` gets
    the wheelhouse's lines (one per package when pip has to download)."""
    shutil.rmtree(directory, ignore_errors=True)
    directory.mkdir(parents=True)
    lock = wheelhouse.download(plan.requirements, plan.python, directory / "wheels", plan.index_urls, progress)
    (directory / "requirements.lock").write_text(lock.text())
    wheelhouse.mlship_wheel(directory / "mlship")
    for src, ctx in plan.files:
        dest = directory / ctx
        dest.parent.mkdir(parents=True, exist_ok=True)
        if src.is_dir():
            shutil.copytree(src, dest)
        else:
            shutil.copy2(src, dest)
    write_generated(plan.generated, directory)  # a remote artifact's record; model/ even when fetched at start
    for layer in ("model", "contract"):
        _readable(directory / layer)
    (directory / "Dockerfile").write_text(plan.dockerfile)
    (directory / ".dockerignore").write_text("Dockerfile\n.dockerignore\n")
    return directory
