"""`mlship init`: inspect an artifact and write a working mlship.yaml (and a MODEL.md stub)."""

from __future__ import annotations

import csv
import json
import os
import re
import sys
from collections.abc import Callable, Collection
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from mlship import plugins, userpkg
from mlship.contract import _CODE_REF, Contract
from mlship.contract_io import CONTRACT_FILE, Project
from mlship.errors import ArtifactError, ContractError, UserCodeError
from mlship.legacy.bridge import needs_build_env
from mlship.legacy.check import installed
from mlship.runtimes.base import ArtifactInfo, Runtime
from mlship.runtimes.keras2 import one_tensorflow
from mlship.runtimes.sklearn_load import check_trust, missing_module_error, scan_quietly
from mlship.trust import forbidden, grouped, library_trusted
from mlship.usercode import load_function, short_traceback

MODEL_CARD = """# {name}

What the model predicts, for whom, and how it was trained.

- Training data:
- Hyper-parameters:
- Metrics:
- Caveats and known failure modes:
"""


@dataclass
class InitResult:
    contract_path: Path
    contract: Contract
    info: ArtifactInfo
    created: list[Path] = field(default_factory=list)
    packages: list[str] = field(default_factory=list)  #: your modules next to the contract, in build.include
    #: the classes and functions the pickle refers to, "module.name" grouped by library (read without loading it)
    globals: dict[str, list[str]] = field(default_factory=dict)


class _Dumper(yaml.SafeDumper):
    """safe_dump, but a list of numbers (a tensor's innermost rows, a shape) stays on one line."""


def _represent_list(dumper: yaml.SafeDumper, value: list[Any]) -> yaml.Node:
    flow = bool(value) and all(v is None or (isinstance(v, int | float) and not isinstance(v, bool)) for v in value)
    return dumper.represent_sequence("tag:yaml.org,2002:seq", value, flow_style=flow)


_Dumper.add_representer(list, _represent_list)


def detect_runtime(artifact: Path) -> str:
    """The first registered runtime that claims the artifact's file type."""
    for name in plugins.available("runtime"):
        cls: type[Runtime] = plugins.get_runtime(name)
        if cls.can_load(artifact):
            return name
    sniffed = _sniff_pickle(artifact)
    if sniffed is not None:
        return sniffed
    kinds = ", ".join(sorted(plugins.available("runtime")))
    raise ArtifactError(
        f"No runtime recognises {artifact.name}.",
        why=f"Installed runtimes: {kinds}. The sklearn runtime reads pickle/joblib files (any name: told by content).",
        fix="Pass --runtime NAME, or save the model in a supported format (joblib.dump(model, 'model.joblib')).",
    )


def _sniff_pickle(artifact: Path) -> str | None:
    """For an extension no runtime claims (model.joblib.gz, model.bin): a pickle/joblib stream, read without
    running it, goes to sklearn (the pickle runtime), or to pytorch when it holds torch objects and no sklearn."""
    if not artifact.is_file():
        return None
    try:
        from mlship.pickle_scan import container, scan

        with artifact.open("rb") as fh:
            if container(fh.read(8)) is None:
                return None
        frameworks = set(scan(artifact).frameworks.values())
    except (ImportError, ArtifactError, OSError):
        return None
    runtimes = plugins.available("runtime")
    if "torch" in frameworks and "scikit-learn" not in frameworks and "pytorch" in runtimes:
        return "pytorch"
    return "sklearn" if "sklearn" in runtimes else None


def service_name(artifact: Path) -> str:
    """A DNS-safe service name from the artifact's file name."""
    name = re.sub(r"[^a-z0-9-]+", "-", artifact.stem.lower()).strip("-")
    name = re.sub(r"-{2,}", "-", name)
    if not name or not name[0].isalpha():
        name = f"model-{name}".rstrip("-")
    return name[:63].rstrip("-")


def read_sample(path: Path, features: list[str], strings: Collection[str] = ()) -> dict[str, Any]:
    """The example's input from a sample file: the first row of a CSV (with a header; cells of the ``strings``
    features stay text), or the first instance of a JSON file holding one instance, ``{"instances": [...]}``,
    a list of instances or a list of such request bodies. An instance is an object of features or an array of
    values in feature order; keys that are not features are left out, as CSV columns are."""
    if not path.is_file():
        raise ContractError(f"Sample file not found: {path}.", fix="Check the --sample path.")
    if path.suffix.lower() == ".csv":
        with path.open(newline="", encoding="utf-8") as fh:
            row = next(csv.DictReader(fh), None)
        if row is None:
            raise ContractError(f"{path} has no data rows.", fix="Give a CSV with a header and one row.")
        return {k: v if k in strings else _number(v) for k, v in row.items() if k in features}
    fix = 'Give a .csv file with a header row, or JSON: {"instances": [{"feature": value, ...}]}.'
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise ContractError(f"{path} is not valid JSON: {exc}.", fix=fix) from None
    for _ in range(4):  # {"instances": [...]}, [body, ...], [{"instances": [...]}, ...]: down to the first instance
        if isinstance(data, dict) and "instances" in data and "instances" not in features:
            data = data["instances"]
        elif isinstance(data, list) and data and isinstance(data[0], dict | list):
            data = data[0]
        else:
            break
    if isinstance(data, list) and len(data) == len(features) and data:
        data = dict(zip(features, data, strict=True))
    if not isinstance(data, dict):
        raise ContractError(f"{path}: expected an object of features, an array of {len(features)} values in "
                            "feature order, or a list of them.", fix=fix)
    return {k: v for k, v in data.items() if k in features}


def read_tensor_sample(path: Path) -> dict[str, Any]:
    """The first instance of a JSON sample for a tensor input, as a request body {"input": ...}."""
    from mlship.client import read_tensors
    from mlship.errors import ClientError

    if not path.is_file():
        raise ContractError(f"Sample file not found: {path}.", fix="Check the --sample path.")
    source: str | Path = path
    if path.suffix.lower() == ".json":  # a list of batch request bodies: the first one's first instance
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError):
            data = None  # read_tensors says what is wrong
        if isinstance(data, list) and data and isinstance(data[0], dict) and "instances" in data[0]:
            source = json.dumps(data[0])
    try:
        return {"input": read_tensors(source)[0]}
    except ClientError as exc:
        raise ContractError(exc.message, fix=exc.fix) from None


def _number(text: str) -> Any:
    try:
        return int(text)
    except ValueError:
        try:
            return float(text)
        except ValueError:
            return text


def init_project(artifact: Path | str, *, directory: Path, runtime: str | None = None, name: str | None = None,
                 sample: Path | None = None, force: bool = False, unsafe_deserialization: bool = False,
                 load: str | None = None, predict: str | None = None, keep_versions: bool = False,
                 python: str | None = None) -> InitResult:
    """Write ``directory/mlship.yaml`` (and a MODEL.md stub when there is none) for ``artifact``.

    Refuses to overwrite the contract unless ``force``. Everything is checked before the first file is
    written, so a failed init leaves the folder as it was. The modules of your own that a pickle references
    are looked for next to the contract (``directory``): they are imported from there while the model is
    inspected (sys.path and sys.modules are restored afterwards) and listed in ``build.include``. ``load`` and
    ``predict`` (``file.py:function``, relative to ``directory``) are written into the contract and used to
    load the model and compute the example. A scikit-learn pickle of another era (its release has no wheel for
    this Python) is run in build environments instead (:mod:`mlship.legacy.bridge`; ``keep_versions``: serve the
    recorded versions without trying a newer release; ``python``: dependencies.python, or for such a pickle the
    Python its recorded versions run in). ``artifact`` may be a URI (s3://, gs://, https://, models:/): it is
    fetched into the cache, inspected like a local file, and written with its sha256 (``artifact_sha256``).
    """
    remote, artifact = _fetched(artifact, directory)
    if not artifact.exists():
        raise ArtifactError(f"Model file not found: {artifact}.", fix="Check the path, or train the model first.")
    target = directory / CONTRACT_FILE
    if target.exists() and not force:
        raise ContractError(
            f"{target} already exists.",
            why="mlship init never overwrites your contract.",
            fix="Edit it, run `mlship validate`, or pass --force to replace it.",
        )
    root = directory.resolve()
    for key, ref in (("load", load), ("predict", predict)):
        if ref is not None and not _CODE_REF.match(ref):
            raise ContractError(f"--{key} {ref!r} is not a `file.py:function` reference.",
                                fix=f"e.g. --{key} predict.py:{key} (the file next to mlship.yaml).")
    code = userpkg.find(artifact, root)
    if code.missing and load is None:  # a `load:` function may know where they are
        missing = code.missing[0]
        raise missing_module_error(artifact, ModuleNotFoundError(f"No module named {missing!r}", name=missing))
    runtime = runtime or detect_runtime(artifact)
    rt: Runtime = plugins.get_runtime(runtime)()
    rt.unsafe_deserialization = unsafe_deserialization
    found = scan_quietly(artifact) if artifact.is_file() else None
    # your own classes (modules next to the contract) are trusted, and written down; never a dangerous name
    rt.trust = tuple(f"{m}.{n}" for m, n in (found.globals if found else [])
                     if m.split(".")[0] in code.local and not library_trusted(m, n) and not forbidden(m, n))
    recorded = found.version("scikit-learn") if found is not None and runtime == "sklearn" else None
    if (found is not None and recorded and not (load or predict or code.local)
            and needs_build_env(recorded, installed("scikit-learn"))):
        if not unsafe_deserialization:  # nothing untrusted runs anywhere, in a container neither
            check_trust(artifact, found, rt.trust)
        info, data = _legacy_data(artifact, directory, name, found, sample, unsafe_deserialization, list(rt.trust),
                                  python, keep_versions)
        used: set[str] = set()
    else:
        with userpkg.importing_from(root, code.local) as imports:
            hooks = {key: load_function(root, ref, key) for key, ref in (("load", load), ("predict", predict))
                     if ref}
            model = _load_model(rt, artifact, hooks.get("load"), load)
            info = rt.inspect(model, artifact)
            info.notes.extend(rt.load_warnings())
            data = _contract_data(artifact, directory, runtime, name, info, unsafe_deserialization, load, predict,
                                  list(rt.trust))
            if python:
                data["dependencies"]["python"] = python
            # the example comes from the model loaded above (a `load:` hook is called again by the predictor)
            data["examples"] = [_example(Contract.model_validate(data), sample, root, target,
                                         None if load else (rt, model))]
        used = imports.used
    notes, added = userpkg.import_notes(code, root, used, data["dependencies"]["requirements"])
    data["dependencies"]["requirements"], one_tf = one_tensorflow([*data["dependencies"]["requirements"], *added])
    info.notes.extend(one_tf)
    info.notes.extend(notes)
    if code.include:
        data["build"] = {"include": code.include}
    if remote is not None:
        from mlship.artifacts.resolve import pin_contract

        data = pin_contract(data, remote)
    contract = Contract.model_validate(data)
    return InitResult(contract_path=target, contract=contract, info=info, packages=code.local,
                      globals=grouped(found.globals) if found else {},
                      created=_write(directory, target, data, artifact.name))


def _fetched(artifact: Path | str, directory: Path) -> tuple[Any, Path]:
    """(the fetched artifact or None, the file to inspect): a URI is fetched into the cache (by digest)."""
    from mlship.artifacts.resolve import fetch_uri, is_remote

    if is_remote(str(artifact), directory.resolve()):
        remote = fetch_uri(str(artifact), directory.resolve())
        return remote, remote.path
    return None, Path(artifact)


def _legacy_data(artifact: Path, directory: Path, name: str | None, found: Any, sample: Path | None, unsafe: bool,
                 trust: list[str], python: str | None, keep_versions: bool) -> tuple[ArtifactInfo, dict[str, Any]]:
    """The contract of a pickle this Python cannot serve as saved: made from build environments (see
    mlship.legacy.bridge); the example's output is the recorded versions' prediction."""
    from mlship.contract import InputSpec
    from mlship.legacy import bridge
    from mlship.serving.validation import InvalidInput, make_validator, sample_body

    features = bridge.features_of(found, artifact)
    spec = InputSpec.model_validate({"features": features})
    example = read_sample(sample, list(features)) if sample else sample_body(spec)
    try:
        row = [float(v) for v in make_validator(spec, 1).validate(example).rows[0]]
    except InvalidInput as exc:
        fields = "; ".join(f"{'.'.join(map(str, e['loc'][1:]))}: {e['msg']}" for e in exc.errors)
        raise ContractError(f"The sample row does not fit the model's inputs: {fields}.",
                            fix=f"Give a sample with the columns {', '.join(features)}.") from None
    outcome = bridge.run(artifact, found, [row], python=python, keep_versions=keep_versions)
    data = _contract_data(artifact, directory, "sklearn", name, outcome.info, unsafe, trust=trust)
    docs = data.pop("docs")
    data["dependencies"] = {"python": outcome.python, "requirements": outcome.requirements}
    data.update(provenance=outcome.provenance, docs=docs,
                examples=[{"input": example, "output": outcome.outputs[0]}])
    return outcome.info, data


def _load_model(rt: Runtime, artifact: Path, loader: Callable[..., Any] | None, ref: str | None) -> Any:
    """The model, from the runtime or from the user's `load` function."""
    if loader is None:
        return rt.load(artifact)
    try:
        return loader(artifact.resolve())
    except Exception as exc:
        raise UserCodeError(f"{ref} raised {exc.__class__.__name__}: {exc}", why=short_traceback(exc),
                            fix="Fix the load function; it receives the artifact path and returns the model.") from None


def _contract_data(artifact: Path, directory: Path, runtime: str, name: str | None, info: ArtifactInfo,
                   unsafe_deserialization: bool, load: str | None = None,
                   predict: str | None = None, trust: list[str] | None = None) -> dict[str, Any]:
    """The contract as plain data (in the order it is written), without examples."""
    data: dict[str, Any] = {
        "name": name or service_name(artifact),
        "runtime": runtime,
        "artifact": Path(os.path.relpath(artifact.resolve(), directory.resolve())).as_posix(),
        "task": info.task,
        **({"load": load} if load else {}),
        **({"predict": predict} if predict else {}),
        "input": {"tensor": dict(info.tensor)} if info.tensor is not None else {"features": dict(info.features)},
    }
    if unsafe_deserialization:
        data["unsafe_deserialization"] = True
    if trust:
        data["trust"] = trust
    if info.labels:
        data["output"] = {"labels": info.labels}
    data["dependencies"] = {"python": f"{sys.version_info.major}.{sys.version_info.minor}",
                            "requirements": info.requirements}
    data["docs"] = "MODEL.md"
    return data


def _example(contract: Contract, sample: Path | None, root: Path, contract_path: Path,
             loaded: tuple[Runtime, Any] | None = None) -> dict[str, Any]:
    """One example: the sample's first row (or a schema-made instance) and the model's output for it."""
    from mlship.serving.predictor import Predictor
    from mlship.serving.validation import InvalidInput, sample_body

    if contract.input.tensor is not None:
        example = read_tensor_sample(sample) if sample else sample_body(contract.input)
    else:
        strings = [name for name, f in contract.input.features.items() if f.type == "str"]
        example = read_sample(sample, contract.feature_names, strings) if sample else sample_body(contract.input)
    # the example's expected output comes from the original model (serve.compile: off), and init writes
    # nothing but the contract and the model card: the compiled path is checked by validate/serve/build
    original = contract.model_copy(update={"serve": contract.serve.model_copy(update={"compile": "off"})})
    predictor = Predictor(Project(original, root, contract_path))
    if loaded is not None:  # the runtime that loaded the model hands it over: the file is read once
        rt, model = loaded
        rt.configure(original)
        setattr(rt, "load", lambda _path: model)  # noqa: B010
        predictor.runtime = rt
    predictor.load()
    try:
        rows = predictor.validator.validate(example).rows
    except InvalidInput as exc:
        fields = "; ".join(f"{'.'.join(map(str, e['loc'][1:]))}: {e['msg']}" for e in exc.errors)
        fix = (f"Give a sample with the columns {', '.join(contract.feature_names)}." if contract.feature_names
               else 'Give a JSON sample {"instances": [<nested list>, ...]} of the shape in input.tensor.')
        raise ContractError(f"The sample row does not fit the model's inputs: {fields}.", fix=fix) from None
    output = predictor.predict(rows)[0]
    expected = {"label": output["label"]} if "label" in output else {"value": output["value"]}
    return {"input": example, "output": expected}


def _write(directory: Path, target: Path, data: dict[str, Any], artifact_name: str) -> list[Path]:
    """Write mlship.yaml, and MODEL.md when there is none; the files written, the contract first. A folder that
    cannot be written is a clear error, and a contract written before MODEL.md failed is removed again."""
    header = (f"# mlship contract for {artifact_name}, written by `mlship init`.\n"
              "# Reference: schema/mlship.schema.json. Check it with `mlship validate`.\n")
    created: list[Path] = []
    try:
        directory.mkdir(parents=True, exist_ok=True)
        target.write_text(header + yaml.dump(data, Dumper=_Dumper, sort_keys=False, allow_unicode=True),
                          encoding="utf-8")
        created.append(target)
        card = directory / "MODEL.md"
        if not card.exists():
            card.write_text(MODEL_CARD.format(name=data["name"]), encoding="utf-8")
            created.append(card)
    except OSError as exc:
        for path in created:
            path.unlink(missing_ok=True)
        raise ContractError(
            f"Cannot write {exc.filename or target}: {exc.strerror or exc}.",
            why="mlship init writes mlship.yaml (and a MODEL.md stub) next to the model; nothing was written.",
            fix=f"Choose a folder you can write to with `--dir` (the contract then points at the model from there), "
            f"e.g. `mlship init {artifact_name} --dir ~/service`.",
        ) from None
    return created
