"""Docker engine access through the Docker SDK (honours DOCKER_HOST, DOCKER_CONFIG auth)."""

from __future__ import annotations

import os
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mlship.errors import BuildError, EngineError
from mlship.image.wheelhouse import MISMATCH

Progress = Callable[[str], None]


@dataclass(frozen=True)
class Image:
    tag: str
    id: str
    size: int  # bytes, uncompressed
    labels: dict[str, str]
    seconds: float = 0.0


def client() -> Any:
    """A Docker client, or an EngineError saying where we looked and how to fix it."""
    import docker
    from docker.errors import DockerException

    try:
        cli = docker.from_env(timeout=300)
        cli.ping()
        return cli
    except DockerException as exc:
        where = os.environ.get("DOCKER_HOST", "unix:///var/run/docker.sock")
        raise EngineError(
            f"Cannot reach the Docker engine at {where}: {_short(exc)}",
            why="Building, testing and running images needs a Docker engine.",
            fix="Start Docker (e.g. `sudo systemctl start docker`, Docker Desktop, or `dockerd &`), "
            "or point DOCKER_HOST at a running engine.",
        ) from None


def _short(exc: Exception) -> str:
    return str(exc).splitlines()[0][:300]


def build(context: Path, tag: str, progress: Progress | None = None, log_path: Path | None = None,
          nocache: bool = False) -> Image:
    """`docker build` the context; streams step lines to ``progress``; full log kept in ``log_path``.

    ``nocache`` rebuilds every step without the engine's layer cache (used by bench/image_bench.py).
    The last image of a stage labelled ``dev.mlship.stage`` is kept as SERVICE:mlship-STAGE-cache and the
    service's older ones are removed (see keep_stage_cache).
    """
    from docker.errors import APIError

    cli = client()
    log_lines: list[str] = []
    started = time.perf_counter()
    stream = _Stream()
    try:
        try:
            for chunk in cli.api.build(path=str(context), tag=tag, rm=True, forcerm=True, decode=True, pull=False,
                                       nocache=nocache):
                if "stream" in chunk:
                    log_lines.append(chunk["stream"])
                    for line in chunk["stream"].splitlines():
                        stream.read(line.rstrip())
                        if progress and _STEP.match(line.strip()):
                            progress(line.strip())
                elif "error" in chunk:
                    log_lines.append(chunk["error"] + "\n")
                    raise _build_error(tag, chunk["error"].strip(), stream, log_path)
                elif "aux" in chunk and "ID" in chunk["aux"]:
                    stream.image_id = chunk["aux"]["ID"]
        except APIError as exc:
            raise BuildError(f"docker build of {tag} failed: {_short(exc)}", why=_tail(log_lines)) from None
        if stream.image_id is None:
            raise BuildError(f"docker build of {tag} produced no image.", why=_tail(log_lines))
        log_lines += keep_stage_cache(cli, stream.stages)
    finally:
        if log_path is not None:
            log_path.write_text("".join(log_lines))
    return inspect(tag, seconds=time.perf_counter() - started)


_STEP = re.compile(r"^Step \d+/\d+ : (.*)$")
_PRODUCED = re.compile(r"^---> ([0-9a-f]{12,64})$")
_NOISE = re.compile(r"^(---> |Removing intermediate container |Successfully tagged )")
_KEEP = 200


@dataclass
class _Stream:
    """What the legacy builder's output told so far: the stages' last images, the FROM being pulled."""

    pulling: str | None = None  # the image of a FROM step that has not produced its image yet
    stages: list[str] = field(default_factory=list)  # the last image of every stage before the final one
    aliases: set[str] = field(default_factory=set)  # `FROM x AS deps`: later `FROM deps` pulls nothing
    last: str | None = None
    image_id: str | None = None
    step: str | None = None  # the current step, "Step 7/15 : RUN ..."
    output: list[str] = field(default_factory=list)  # its output so far (the last _KEEP lines), builder noise left out

    def read(self, raw: str) -> None:
        line = raw.strip()
        step = _STEP.match(line)
        if step:
            self.step, self.output = line, []
            words = [w for w in step.group(1).split() if not w.startswith("--")]  # --platform=...
            self.pulling = None
            if words and words[0].upper() == "FROM" and len(words) > 1:
                if self.last is not None:
                    self.stages.append(self.last)
                if words[1].lower() not in self.aliases:
                    self.pulling = words[1]
                if len(words) > 3 and words[2].upper() == "AS":
                    self.aliases.add(words[3].lower())
            return
        produced = _PRODUCED.match(line)
        if produced:
            self.last, self.pulling = produced.group(1), None
            return
        built = re.match(r"^Successfully built ([0-9a-f]+)", line)
        if built:
            self.image_id = built.group(1)
        elif line and not _NOISE.match(line):
            self.output.append(raw)
            del self.output[:-_KEEP]


def _build_error(tag: str, reason: str, stream: _Stream, log_path: Path | None) -> BuildError:
    """The error of a failed build: the failing step and the last lines of its output, with a fix where the
    output says what went wrong; a FROM image the engine could not get says how to choose another one."""
    full_log = f"Full log: {log_path}" if log_path else None
    mismatch = next((m for line in [*stream.output, reason] if (m := _MISMATCH.search(line))), None)
    if mismatch is not None:
        return python_mismatch(*mismatch.groups())
    base = stream.pulling
    if base is None:
        lines = stream.output[-_QUOTED:]
        step = stream.step or "the first step"
        if len(step) > 240:
            step = step[:237] + "..."
        why = f"It failed at {step}" + (
            ". The last lines of its output:\n" + "\n".join(f"  {line}" for line in lines) if lines
            else ", which printed nothing.")
        hint = failure_hint("\n".join([*stream.output, reason]))
        return BuildError(f"docker build of {tag} failed: {reason}", why=why,
                          fix=" ".join(p for p in (hint, full_log) if p) or None)
    return BuildError(
        f"The base image {base} could not be pulled: {reason}",
        why=f"The build starts FROM {base}, and the Docker engine has no copy of it and could not pull it.",
        fix=base_image_fix(base) + (f" {full_log}" if full_log else ""),
    )


#: what the first step of an old Python's image prints when the base image runs another Python (Dockerfile.j2)
_MISMATCH = re.compile(re.escape(MISMATCH) + r" base image (\S+) runs Python (\d+\.\d+), not dependencies\.python "
                       r"(\d+\.\d+)")


def python_mismatch(image: str, found: str, wanted: str) -> BuildError:
    """The error of a base image whose Python is not dependencies.python."""
    variable = "MLSHIP_BASE_IMAGE_" + wanted.replace(".", "_")
    return BuildError(
        f"The base image {image} runs Python {found}, but dependencies.python is {wanted}.",
        why=f"The image installs wheels downloaded for Python {wanted} (the versions in mlship.yaml were chosen for "
        f"it), so it must run that Python; on {found} they would not install, or not run.",
        fix=f"Build on a Python {wanted} image: python:{wanted}-slim is the default when none is named, or name one "
        f"with ${variable} (that Python only), --base-image, $MLSHIP_BASE_IMAGE or build.base_image. Or set "
        f"dependencies.python to {found} if every requirement has wheels for it.")


def base_image_fix(image: str) -> str:
    """The three ways to choose a base image (the build's pull failure and the preflight both say it)."""
    return ("Choose another base image with `--base-image IMAGE`, the environment variable MLSHIP_BASE_IMAGE, or "
            f"`build.base_image` in mlship.yaml; or `docker pull {image}` / `docker load` it first.")


_QUOTED = 12  # lines of the failing step's output quoted in the error
#: (pattern in the failing step's output, what to do): the first match gives the error's fix
_HINTS = (
    (re.compile(r"\*\*\* Error compiling|SyntaxError"),
     "A file in an installed package is not valid Python for the image's Python (dependencies.python); the "
     "package was made for another Python version. Set dependencies.python to the version you trained with, or "
     "pin a release of that package that supports the image's Python."),
    (re.compile(r"DO NOT MATCH THE HASHES|hash mismatch", re.I),
     "A wheel in the build context is not the one that was locked (changed or corrupted after `pip download`): "
     "delete the wheel cache (~/.cache/mlship, or $MLSHIP_CACHE) and .mlship/build, then build again."),
    (re.compile(r"No matching distribution found|Could not find a version that satisfies|"
                r"is not a supported wheel on this platform"),
     "A wheel the lock names is missing or does not fit the image: the base image's Python must be "
     "dependencies.python (the wheelhouse is downloaded for it, linux x86_64), and every requirement needs a "
     "wheel for that Python. Check dependencies.python and the base image, then build again."),
    (re.compile(r"No space left on device", re.I),
     "The Docker engine ran out of disk space: free some (`docker system prune`, `docker image prune`) and "
     "build again."),
    (re.compile(r"returned a non-zero code: 137|Killed$", re.M),
     "The step was killed, most likely out of memory: give the Docker engine more memory and build again."),
    (re.compile(r"(python3|/bin/sh): (\d+: )?(\S+: )?not found|exec format error"),
     "The base image cannot run the build's commands: it needs /bin/sh and python3 on its PATH for linux/amd64 "
     "(e.g. python:3.11-slim or an image built from it); choose another with --base-image or build.base_image."),
)


def failure_hint(output: str) -> str | None:
    """What to do about a failed step, from its output (None when the output matches no known cause)."""
    return next((fix for pattern, fix in _HINTS if pattern.search(output)), None)


STAGE_LABEL = "dev.mlship.stage"  # on the last image of the Dockerfile's dependency stage (templates/Dockerfile.j2)
SERVICE_LABEL = "dev.mlship.service"


def stage_cache_tag(service: str, stage: str = "deps") -> str:
    """The tag of the one stage image kept per service, e.g. ``iris:mlship-deps-cache``."""
    return f"{service}:mlship-{stage}-cache"


def keep_stage_cache(cli: Any, stage_ids: list[str]) -> list[str]:
    """Tag the last image of each labelled stage of this build SERVICE:mlship-STAGE-cache, and remove the
    service's older, untagged stage images. Returns lines for the build log.

    The legacy builder finds its layer cache through that image (and the chain below it): it is what makes a
    model-only rebuild take seconds, so the latest one stays; the rest would pile up as ``<none>`` images.
    Failures here only cost disk or cache, so they are logged, never raised.
    """
    from docker.errors import DockerException

    notes: list[str] = []
    for stage_id in stage_ids:
        try:
            image = cli.images.get(stage_id)
            stage, service = image.labels.get(STAGE_LABEL), image.labels.get(SERVICE_LABEL)
            if not stage or not service:
                continue
            cache = stage_cache_tag(service, stage)
            image.tag(*cache.rsplit(":", 1))
            notes.append(f"mlship: kept the {stage} stage image {stage_id} as {cache} (the next build's cache)\n")
            filters = {"label": [f"{STAGE_LABEL}={stage}", f"{SERVICE_LABEL}={service}"]}
            for old in cli.images.list(filters=filters):
                if old.id == image.id or old.tags:  # tagged by someone else: not ours to remove
                    continue
                try:
                    cli.images.remove(old.id)
                    notes.append(f"mlship: removed the older {stage} stage image {old.short_id} of {service}\n")
                except DockerException as exc:
                    notes.append(f"mlship: could not remove the {stage} stage image {old.short_id}: {_short(exc)}\n")
        except DockerException as exc:
            notes.append(f"mlship: could not keep the stage image {stage_id}: {_short(exc)}\n")
    return notes


def _tail(lines: list[str], n: int = 15) -> str:
    return "".join(lines[-n:]).strip()


def inspect(ref: str, seconds: float = 0.0) -> Image:
    from docker.errors import ImageNotFound

    try:
        img = client().images.get(ref)
    except ImageNotFound:
        raise EngineError(f"No image {ref} in the local engine.", fix="Run `mlship build` first.") from None
    labels = dict(img.attrs.get("Config", {}).get("Labels") or {})
    _refuse_stage(ref, labels)
    return Image(tag=ref, id=img.id, size=int(img.attrs.get("Size", 0)), labels=labels, seconds=seconds)


def _refuse_stage(ref: str, labels: dict[str, str]) -> None:
    """A stage image kept as build cache (e.g. iris:mlship-deps-cache) is a venv with no model: never served."""
    if STAGE_LABEL in labels:
        service = labels.get(SERVICE_LABEL, "NAME")
        raise EngineError(f"{ref} is the {labels[STAGE_LABEL]} stage mlship keeps as build cache, not a service image.",
                          why=f"It holds the Python dependencies of the next build of {service}, but no model "
                          "and no server.",
                          fix=f"Use the image `mlship build` printed ({service}:VERSION; `docker images {service}`).")


def push(ref: str, registry: str, progress: Progress | None = None) -> str:
    """Tag ``ref`` as ``registry/ref`` and push it; returns the pushed reference with its digest."""
    from docker.errors import APIError, ImageNotFound

    cli = client()
    remote = f"{registry.rstrip('/')}/{ref}"
    repo, _, tag = remote.rpartition(":")
    try:
        image = cli.images.get(ref)
    except ImageNotFound:
        raise EngineError(f"No image {ref} in the local engine.", fix="Run `mlship build` first.") from None
    _refuse_stage(ref, dict(image.labels))
    try:
        image.tag(repo, tag)
    except ImageNotFound:
        raise EngineError(f"No image {ref} in the local engine.", fix="Run `mlship build` first.") from None
    digest = None
    try:
        for chunk in cli.api.push(repo, tag=tag, stream=True, decode=True):
            if "error" in chunk:
                raise EngineError(
                    f"Push of {remote} failed: {chunk['error'].strip()}",
                    fix="Check the registry address and your login (`docker login REGISTRY`).",
                )
            if progress and chunk.get("status") and chunk.get("id"):
                progress(f"{chunk['id']}: {chunk['status']}")
            aux = chunk.get("aux") or {}
            if "Digest" in aux:
                digest = aux["Digest"]
    except APIError as exc:
        raise EngineError(f"Push of {remote} failed: {_short(exc)}",
                          fix="Is the registry running and reachable from the Docker engine?") from None
    if digest is None:
        raise EngineError(f"Push of {remote} reported no digest.")
    return f"{repo}@{digest}"


def image_id(ref: str) -> str | None:
    """The ID of the image ``ref`` names in the local engine, or None."""
    from docker.errors import ImageNotFound

    try:
        return str(client().images.get(ref).id)
    except ImageNotFound:
        return None


def add_tag(ref: str, new: str) -> None:
    """Tag the image ``ref`` names as ``new`` too (``new`` moves if it named another image)."""
    repo, _, tag = new.rpartition(":")
    client().images.get(ref).tag(repo, tag)


def remove_unused(ref: str) -> bool:
    """Remove the tag ``ref`` (and its image, when no other tag names it) unless a container, running or not,
    uses the image or names ``ref`` in its ``dev.mlship.image``/``dev.mlship.previous`` label. True if removed."""
    from docker.errors import APIError, ImageNotFound

    cli = client()
    try:
        img = cli.images.get(ref)
    except ImageNotFound:
        return False
    # sparse: one list call, no per-container inspect that a container removed meanwhile (another deploy on a
    # shared engine) turns into NotFound
    for container in cli.containers.list(all=True, sparse=True):
        labels = container.attrs.get("Labels") or {}
        if container.attrs.get("ImageID") == img.id or ref in (labels.get("dev.mlship.image"),
                                                               labels.get("dev.mlship.previous")):
            return False
    try:
        cli.images.remove(ref, noprune=False)
    except APIError:
        return False
    return True
