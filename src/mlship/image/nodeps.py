"""One TensorFlow package in an image: dependencies that another package of the image provides.

tf-keras (Keras 2 for current TensorFlow) declares a dependency on ``tensorflow``, the Linux build that brings
CUDA; an image serving on CPUs installs ``tensorflow-cpu``, the same ``tensorflow`` module at the same version
without it. pip cannot be told that tensorflow-cpu satisfies ``tensorflow``, so resolving tf-keras with its
dependencies puts both in the image: two copies of TensorFlow (~1.6 GB) writing over each other's files.

The rule, ``PROVIDED_BY`` (dependency -> the package that provides it), applies when the requirements name a
provider:

1. every top-level requirement is fetched alone first (``pip download --no-deps``, one pip call); one whose
   wheel declares a provided dependency (tf-keras) is kept without its dependencies: its other dependencies and
   the provider, in the version range it asks for, join the requirements pip resolves, so ``tensorflow`` is
   never downloaded;
2. a provided package that something further down still pulls in is dropped from the wheelhouse when the
   provider's version satisfies every package that asks for it; otherwise both stay, with a warning.

The image installs the lock with ``pip install --no-deps`` (the lock is the whole resolved set), and ``check``
verifies on the host what pip's install-time check did: every wheel's dependencies (markers evaluated for the
image: Linux x86_64, CPython ``python``) are in the wheelhouse, a provided one through its provider at a version
it accepts. Hooked into ``wheelhouse.download``.
"""

from __future__ import annotations

import json
import shutil
import sys
import zipfile
from collections.abc import Callable
from email.parser import HeaderParser
from pathlib import Path

from packaging.requirements import InvalidRequirement, Requirement
from packaging.utils import canonicalize_name, parse_wheel_filename
from packaging.version import Version

from mlship.errors import BuildError

#: a dependency (pip name) -> the package that provides the same modules at the same versions
PROVIDED_BY: dict[str, str] = {"tensorflow": "tensorflow-cpu"}
#: written into a wheelhouse made under this rule (a wheelhouse without it, made before, is downloaded again)
MARKER = ".nodeps.json"

Say = Callable[[str], None]
PipDownload = Callable[[list[str], str, Path, list[str] | None, Say | None], None]


def canonical(name: str) -> str:
    return str(canonicalize_name(name))


def _name(requirement: str) -> str | None:
    try:
        return canonical(Requirement(requirement).name)
    except InvalidRequirement:
        return None


def provided(requirements: list[str]) -> dict[str, str]:
    """The rule's entries whose provider the requirements name: {provided dependency: provider}."""
    names = {_name(r) for r in requirements}
    return {dep: provider for dep, provider in PROVIDED_BY.items() if provider in names}


def stale(cached: Path, requirements: list[str]) -> bool:
    """A complete wheelhouse made before this rule for requirements it applies to (it may hold both packages)."""
    return bool(provided(requirements)) and not (cached / MARKER).is_file()


def target_environment(python: str) -> dict[str, str]:
    """Marker values of the image: Linux x86_64, CPython ``python``, no extras requested."""
    return {"python_version": python, "python_full_version": f"{python}.0", "sys_platform": "linux",
            "platform_system": "Linux", "os_name": "posix", "platform_machine": "x86_64",
            "implementation_name": "cpython", "platform_python_implementation": "CPython", "extra": ""}


def wheel_requirements(wheel: Path, python: str) -> list[Requirement]:
    """The wheel's ``Requires-Dist`` entries whose markers hold in the image (read from its METADATA)."""
    with zipfile.ZipFile(wheel) as zf:
        meta = [n for n in zf.namelist() if n.count("/") == 1 and n.endswith(".dist-info/METADATA")]
        if not meta:
            raise BuildError(f"{wheel.name} has no .dist-info/METADATA.", why="Every wheel records its metadata.",
                             fix=f"Delete {wheel.parent} (mlship's wheel cache) and build again.")
        headers = HeaderParser().parsestr(zf.read(meta[0]).decode("utf-8", "replace"))
    env = target_environment(python)
    found = []
    for line in headers.get_all("Requires-Dist") or []:
        try:
            req = Requirement(line)
        except InvalidRequirement:
            continue
        if req.marker is None or req.marker.evaluate(env):
            found.append(req)
    return found


def _wheels(folder: Path) -> dict[str, tuple[Version, Path]]:
    out: dict[str, tuple[Version, Path]] = {}
    for wheel in sorted(folder.glob("*.whl")):
        name, ver, _build, _tags = parse_wheel_filename(wheel.name)
        out[canonical(name)] = (ver, wheel)
    return out


def _plain(req: Requirement) -> str:
    """``req`` without its marker (it held for the image)."""
    copy = Requirement(str(req))
    copy.marker = None
    return str(copy)


def _fetch_alone(requirements: list[str], python: str, into: Path, index_urls: list[str] | None,
                 say: Say) -> None:
    """``pip download --no-deps`` of each requirement into ``into`` (for the image's platform and Python)."""
    from mlship.image.wheelhouse import PLATFORMS, _run_pip

    into.mkdir(parents=True)
    (into / "requirements.in").write_text("\n".join(requirements) + "\n")
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--progress-bar", "off", "--disable-pip-version-check",
           "--only-binary=:all:", "--python-version", python, "--implementation", "cp",
           "--abi", "cp" + python.replace(".", ""), "--dest", str(into), "-r", str(into / "requirements.in")]
    for platform in PLATFORMS:
        cmd += ["--platform", platform]
    for url in index_urls or ():
        cmd += ["--extra-index-url", url]
    code, output = _run_pip(cmd, None)
    if code != 0:
        tail = "\n".join([ln for ln in output if ln.strip()][-8:])
        raise BuildError(f"Could not download wheels for linux/amd64, Python {python}:\n{tail}",
                         why="Images install only wheels resolved on this machine; every requirement needs a "
                         "wheel for the image's platform and Python.",
                         fix="Check the versions in dependencies.requirements exist for that Python, and that pip "
                         "can reach your package index.")
    say(f"read the dependencies of {len(requirements)} requirements (pip download --no-deps)")


def pip_download(download: PipDownload, requirements: list[str], python: str, into: Path,
                 index_urls: list[str] | None, say: Say) -> None:
    """``download`` (wheelhouse's pip download into ``into``) under the rule: requirements that depend on a
    provided package are fetched without their dependencies, the rest resolved as usual; see the module doc."""
    rule = provided(requirements)
    if not rule:
        download(requirements, python, into, index_urls, say)
        return
    probe = into.with_name(into.name + ".alone")
    shutil.rmtree(probe, ignore_errors=True)
    try:
        _fetch_alone([r for r in requirements if _name(r) not in rule.values()], python, probe, index_urls, say)
        alone: dict[str, tuple[Version, Path, list[str]]] = {}  # name -> (version, wheel, provided deps)
        extra: list[str] = []
        for name, (ver, wheel) in _wheels(probe).items():
            deps = wheel_requirements(wheel, python)
            needs = [canonical(d.name) for d in deps if canonical(d.name) in rule]
            if needs:
                alone[name] = (ver, wheel, needs)
                extra += [f"{rule[canonical(d.name)]}{d.specifier}" if canonical(d.name) in rule else _plain(d)
                          for d in deps]
        download([r for r in requirements if _name(r) not in alone] + extra, python, into, index_urls, say)
        for name, (ver, wheel, needs) in alone.items():
            shutil.copy2(wheel, into / wheel.name)
            say(f"{name} {ver} is installed without its dependency on {', '.join(needs)}: "
                f"{', '.join(rule[d] for d in needs)} provides it (one TensorFlow package)")
    finally:
        shutil.rmtree(probe, ignore_errors=True)
    _drop_provided(into, python, rule, say)
    (into / MARKER).write_text(json.dumps({"provided_by": rule, "without_deps": sorted(alone)}) + "\n")


def _askers(wheels: dict[str, tuple[Version, Path]], dep: str, python: str) -> list[tuple[str, Requirement]]:
    """(package, its requirement) for each wheel that depends on ``dep``."""
    return [(name, req) for name, (_v, wheel) in wheels.items() for req in wheel_requirements(wheel, python)
            if canonical(req.name) == dep]


def _drop_provided(into: Path, python: str, rule: dict[str, str], say: Say) -> None:
    """Remove a provided package that something further down pulled in, when its provider's version satisfies
    every package that asks for it (otherwise both stay, and ``check`` warns)."""
    wheels = _wheels(into)
    for dep, provider in rule.items():
        if dep not in wheels or provider not in wheels:
            continue
        askers, version = _askers(wheels, dep, python), wheels[provider][0]
        if all(req.specifier.contains(version, True) for _name, req in askers):
            wheels[dep][1].unlink()
            who = ", ".join(sorted({name for name, _req in askers})) or "a requirement"
            say(f"{dep} {wheels[dep][0]} (required by {who}) is left out: {provider} {version} provides it "
                "(one TensorFlow package)")


def check(folder: Path, python: str, say: Say) -> None:
    """Every wheel's dependencies (for the image's platform and Python) are in ``folder``; a provided one through
    its provider at a version it accepts. The image installs the lock with --no-deps, so this is the check."""
    wheels = _wheels(folder)
    problems: list[str] = []
    for name, (ver, wheel) in wheels.items():
        for req in wheel_requirements(wheel, python):
            dep = canonical(req.name)
            have = dep if dep in wheels else PROVIDED_BY.get(dep)
            if have is None or have not in wheels:
                problems.append(f"{name} {ver} requires `{_plain(req)}`, which is not in the wheelhouse")
            elif not req.specifier.contains(wheels[have][0], True):
                problems.append(f"{name} {ver} requires `{_plain(req)}`, the wheelhouse has {have} "
                                f"{wheels[have][0]}")
    if problems:
        raise BuildError(
            "The image's wheels do not satisfy their own dependencies:\n" + "\n".join(problems[:8]),
            why=f"pip resolved them on this machine; dependencies that apply only to Python {python} (markers "
            "such as python_version) are not resolved for another Python.",
            fix="Add the missing packages (name==version) to dependencies.requirements, or build with "
            f"dependencies.python set to this machine's Python; then delete {folder} and build again.")
    for dep, provider in PROVIDED_BY.items():
        if dep in wheels and provider in wheels:
            why = "; ".join(f"{name} requires `{_plain(req)}`" for name, req in _askers(wheels, dep, python))
            say(f"warning: the image installs both {dep} {wheels[dep][0]} and {provider} {wheels[provider][0]}, two "
                f"builds of the same modules that write over each other ({why or f'{dep} is a requirement'}); fix: "
                f"pin {provider} to a version all of them accept (mlship then leaves {dep} out), or remove what "
                f"requires {dep}")
