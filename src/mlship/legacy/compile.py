"""The compiled path (mlship.compiled) for a model this machine cannot load: converted with skl2onnx in a build
environment with the versions the image would serve (the contract's requirements), and checked here, with this
machine's onnxruntime, against what those versions predict on the probe rows the server uses. The image then
serves the ONNX model with onnxruntime, as for any compiled model; a failure is kept (not-compiled.json) and the
image serves the original model with the proven release."""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version
from typing import TYPE_CHECKING

from mlship import compiled as cm
from mlship.contract_io import Project, artifact_sha256
from mlship.errors import ArtifactError, BuildError
from mlship.runtimes.base import ModelOutput

if TYPE_CHECKING:
    from mlship.image.context import Compiled

_CONVERTER = ("skl2onnx", "onnx")  # installed in the build environment at the versions this machine has


def compile_elsewhere(project: Project, reason: str, keep: bool = True) -> Compiled | None:
    """The compiled model for ``project`` (kept in .mlship/compiled/ unless ``keep`` is False), made in a build
    environment; None when serve.compile is off (or the contract's code loads or calls the model). ``reason``:
    why this machine cannot load the model."""
    from mlship.image.context import Compiled
    from mlship.legacy.buildenv import run_probe
    from mlship.serving.predictor import Predictor

    c = project.contract
    if c.serve.compile == "off" or c.runtime != "sklearn" or c.load or c.predict or c.input.tensor is not None:
        return None
    if c.provenance is None:  # a contract mlship init did not write for such a model: no build environment
        return Compiled(files=[], onnxruntime=None,
                        note=f"compiled path not built: {reason}; the image serves the original model")
    folder = cm.folder(project.root)
    files = [folder / cm.ONNX_FILE, folder / cm.RECORD_FILE]
    rows = Predictor(project, keep_compiled=keep)._probe_rows(cm.PROBE_ROWS)  # the rows the server checks with
    sha = artifact_sha256(project.artifact_path)
    try:
        kept = cm.load(project.root, rows, c.feature_names, sha,
                       settings=cm.load_settings(c.unsafe_deserialization, c.trust))
        return Compiled(files=files, onnxruntime=kept.record.onnxruntime,
                        note=f"serving the compiled model (converted in a build environment: {reason}): "
                        f"{cm.describe(kept)}")
    except cm.Missing:
        pass
    except cm.NotCompiled as exc:
        earlier = cm.remember_failure(project.root, sha, cm.Unavailable(str(exc)), write=False)
        if "(found by mlship build)" in earlier:  # this artifact failed before: not converted again
            return _failed(project, earlier.removesuffix(" (found by mlship build)"), reason)
    try:
        pins = [f"{name}=={version(name)}" for name in _CONVERTER]
    except PackageNotFoundError:
        return _failed(project, "skl2onnx and onnx are not installed here (pip install 'mlship[sklearn]')", reason)
    x = cm.numeric_rows(rows)
    requirements = [r for r in project.requirements() if r.split("==")[0].strip().lower() not in _CONVERTER]
    try:
        result = run_probe(project.artifact_path, x.tolist(), c.dependencies.python, [*requirements, *pins],
                           convert=True)
    except (BuildError, ArtifactError) as exc:  # e.g. no skl2onnx release for that Python: not compiled
        why = f"the converter's build environment failed: {exc.message.splitlines()[0]}"
        if keep:
            cm.remember_failure(project.root, sha, cm.NotCompiled(why))
        return _failed(project, why, reason)
    native = ModelOutput(values=result.predictions, probabilities=result.probabilities,
                         classes=result.classes if result.probabilities is not None else None)
    problems = list(result.onnx_errors)
    for kind, onnx_bytes in result.onnx.items():
        problem = cm.loading_problem(onnx_bytes)
        if problem is not None:
            problems.append(f"{kind}: {problem}")
            continue
        record = cm.Record(
            format=cm.FORMAT, source_sha256=sha, features=c.feature_names, columns=list(range(len(c.feature_names))),
            probe_sha256=cm.probe_sha256(x), probe_count=len(x), onnxruntime=cm.ort_version(),
            converter=result.converter or "skl2onnx", framework=f"scikit-learn {result.versions.get('scikit-learn')}",
            classes=result.classes, probabilities=result.probabilities is not None,
            expected_values=result.predictions, expected_probabilities=result.probabilities, max_abs_diff=0.0,
            load_settings=cm.load_settings(c.unsafe_deserialization, c.trust))
        model = cm.CompiledModel(onnx_bytes, record)
        try:
            record.max_abs_diff = cm.difference(native, model.predict(x))
            cm.compare(native, model.predict(x))
        except cm.NotCompiled as exc:
            problems.append(f"{kind}: {exc}")
            continue
        if keep:
            cm.save(project.root, onnx_bytes, record)
        return Compiled(files=files, onnxruntime=record.onnxruntime,
                        note=f"serving the compiled model, converted in a build environment ({result.describe()}) "
                        f"because {reason}: {cm.describe(model)}")
    why = "; ".join(problems) or "skl2onnx made no model"
    if keep:
        cm.remember_failure(project.root, sha, cm.NotCompiled(why))
    return _failed(project, why, reason)


def _failed(project: Project, why: str, reason: str) -> Compiled:
    from mlship.image.context import Compiled

    failure = cm.folder(project.root) / cm.FAILURE_FILE
    return Compiled(files=[failure] if failure.is_file() else [], onnxruntime=None,
                    note=f"compiled path not built: {why} (converted in a build environment because {reason}); "
                    "the image serves the original model")
