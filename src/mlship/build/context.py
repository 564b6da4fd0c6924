"""Build plan (pure) and build context (files on disk) for a project's image.

``plan_build(project)`` decides everything: tag, base image, requirements, labels, files, Dockerfile.
``write_context(plan, dir)`` puts the Dockerfile, the locked wheelhouse, the mlship wheel, the model and
the contract into a folder that ``docker build`` can use with no network.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import subprocess
from dataclasses import dataclass, field
from importlib.resources import files
from pathlib import Path

import jinja2
from packaging.specifiers import SpecifierSet

from mlship import __version__, plugins
from mlship.build import wheelhouse
from mlship.contract_io import Project, artifact_sha256
from mlship.errors import BuildError

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


def base_image(project: Project, override: str | None = None) -> str:
    """--base-image, then $MLSHIP_BASE_IMAGE, then build.base_image, then python:<python>-slim."""
    image = (override or os.environ.get("MLSHIP_BASE_IMAGE") or project.contract.build.base_image
             or DEFAULT_BASE.format(python=project.contract.dependencies.python))
    if not _IMAGE_REF.match(image):
        raise BuildError(f"Base image {image!r} is not a valid image reference.",
                         fix="Use e.g. python:3.11-slim or registry.example/team/python:3.11.")
    return image


def pinned_requirements(project: Project, pins: dict[str, str]) -> tuple[list[str], list[str]]:
    """User requirements with the artifact's framework versions enforced, plus the server's own.

    ``pins`` maps a package to the version the artifact was saved with (e.g. scikit-learn 1.5.2).
    Returns (requirements, notes). A requirement that excludes the saved version is an error.
    """
    notes: list[str] = []
    user = wheelhouse.parse_requirements(project.requirements())
    by_name = {wheelhouse.canonical(r.name): r for r in user}
    out = [str(r) for r in user]
    for package, saved in pins.items():
        req = by_name.get(wheelhouse.canonical(package))
        if req is None:
            out.append(f"{package}=={saved}")
            notes.append(f"pinned {package}=={saved}, the version the artifact was saved with")
        elif not SpecifierSet(str(req.specifier)).contains(saved, prereleases=True):
            raise BuildError(
                f"Version skew: the artifact was saved with {package} {saved}, but "
                f"dependencies.requirements asks for {req}.",
                why=f"A pickle is only guaranteed to load with the {package} version that wrote it.",
                fix=f"Require {package}=={saved} in mlship.yaml, or re-train and re-save the model with "
                f"the version you want to serve.",
            )
        elif not str(req.specifier).startswith("=="):
            out[out.index(str(req))] = f"{package}=={saved}"
            notes.append(f"pinned {package}=={saved} (within your {req.specifier})")
    names = {wheelhouse.canonical(requirement_name(r)) for r in out}
    out += [r for r in wheelhouse.server_requirements() if wheelhouse.canonical(requirement_name(r)) not in names]
    return out, notes


def requirement_name(line: str) -> str:
    return re.split(r"[\s;\[<>=!~]", line, maxsplit=1)[0]


def git_commit(path: Path) -> str | None:
    try:
        proc = subprocess.run(["git", "-C", str(path), "rev-parse", "HEAD"], capture_output=True, text=True,
                              check=False, timeout=5)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return proc.stdout.strip() if proc.returncode == 0 else None


def project_files(project: Project) -> tuple[list[tuple[Path, str]], list[tuple[Path, str]]]:
    """(model files, contract files) as (host path, context path); context paths mirror the project."""
    c = project.contract
    root = project.root
    model = [(project.artifact_path, f"app/{c.artifact}")]
    names = {project.contract_path.name: project.contract_path}
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
    contract = [(path, f"app/{rel}") for rel, path in sorted(names.items())]
    return model, contract


def plan_build(project: Project, *, base: str | None = None, pins: dict[str, str] | None = None) -> BuildPlan:
    """Pure: decide tag, requirements, labels and Dockerfile (``pins`` from the runtime, see build_pins)."""
    c = project.contract
    requirements, notes = pinned_requirements(project, pins or {})
    model_sha = artifact_sha256(project.artifact_path)
    contract_sha = hashlib.sha256(project.contract_path.read_bytes()).hexdigest()
    labels = {
        "org.opencontainers.image.title": c.name,
        "org.opencontainers.image.version": project.version,
        "dev.mlship.version": __version__,
        "dev.mlship.runtime": c.runtime,
        "dev.mlship.contract-sha256": contract_sha,
        "dev.mlship.model-sha256": model_sha,
    }
    commit = git_commit(project.root)
    if commit:
        labels["org.opencontainers.image.revision"] = commit
    model, contract = project_files(project)
    image = base_image(project, base)
    template = jinja2.Environment(undefined=jinja2.StrictUndefined, keep_trailing_newline=True,
                                  autoescape=False).from_string(  # noqa: S701 - a Dockerfile, not HTML
        files("mlship").joinpath("templates/Dockerfile.j2").read_text(encoding="utf-8"))
    dockerfile = template.render(
        mlship_version=__version__, name=c.name, base_image=image, python="python3", labels=labels,
        model_files=[(ctx, "/" + ctx) for _src, ctx in model],
        contract_files=[(ctx, "/" + ctx) for _src, ctx in contract],
    )
    return BuildPlan(tag=f"{c.name}:{project.version}", base_image=image, python=c.dependencies.python,
                     requirements=requirements, labels=labels, files=model + contract,
                     dockerfile=dockerfile, notes=notes)


def build_pins(project: Project) -> dict[str, str]:
    """Framework versions the artifact was saved with, read by its runtime (loads the artifact)."""
    runtime = plugins.get_runtime(project.contract.runtime)()
    if project.contract.load:
        return {}
    return dict(runtime.saved_versions(runtime.load(project.artifact_path)))


def write_context(plan: BuildPlan, directory: Path) -> Path:
    """Fill ``directory`` (emptied first) with everything `docker build` needs; returns it."""
    shutil.rmtree(directory, ignore_errors=True)
    directory.mkdir(parents=True)
    lock = wheelhouse.download(plan.requirements, plan.python, directory / "wheels")
    (directory / "requirements.lock").write_text(lock.text())
    wheelhouse.mlship_wheel(directory / "mlship")
    for src, ctx in plan.files:
        dest = directory / ctx
        dest.parent.mkdir(parents=True, exist_ok=True)
        if src.is_dir():
            shutil.copytree(src, dest)
        else:
            shutil.copy2(src, dest)
    (directory / "Dockerfile").write_text(plan.dockerfile)
    (directory / ".dockerignore").write_text("Dockerfile\n.dockerignore\n")
    return directory
