"""Read mlship.yaml into a :class:`Project`, with errors that name the path, the line and a fix."""

from __future__ import annotations

import difflib
import hashlib
import types
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from mlship.contract import Contract
from mlship.errors import ContractError

CONTRACT_FILE = "mlship.yaml"


@dataclass(frozen=True)
class Project:
    """A validated contract plus the folder its relative paths are resolved against."""

    contract: Contract
    root: Path
    contract_path: Path

    @property
    def remote(self) -> bool:
        """Whether the artifact is fetched (s3://, gs://, https://, models:/, an absent DVC-tracked path)."""
        from mlship.artifacts.resolve import is_remote

        return is_remote(self.contract.artifact, self.root)

    @property
    def artifact_path(self) -> Path:
        """The artifact on disk: next to mlship.yaml, or (remote) in the cache, fetched on first use."""
        if not self.remote:
            return (self.root / self.contract.artifact).resolve()
        from mlship.artifacts.resolve import resolve_artifact

        return resolve_artifact(self).path

    @property
    def docs_text(self) -> str | None:
        if self.contract.docs is None:
            return None
        return (self.root / self.contract.docs).read_text(encoding="utf-8")

    def requirements(self) -> list[str]:
        """Requirement lines, read from the requirements file when one is named."""
        reqs = self.contract.dependencies.requirements
        if isinstance(reqs, list):
            return list(reqs)
        lines = (self.root / reqs).read_text(encoding="utf-8").splitlines()
        stripped = (ln.split(" #", 1)[0].strip() for ln in lines)  # pip allows trailing " # comment"
        return [ln for ln in stripped if ln and not ln.startswith("#")]

    @property
    def version(self) -> str:
        return self.contract.version or (self.contract.artifact_sha256 or artifact_sha256(self.artifact_path))[:12]


def artifact_sha256(path: Path) -> str:
    """sha256 of a file, or of a folder's files (sorted relative paths and contents)."""
    digest = hashlib.sha256()
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    for file in files:
        if path.is_dir():
            digest.update(file.relative_to(path).as_posix().encode() + b"\0")
        with file.open("rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                digest.update(chunk)
    return digest.hexdigest()


def find_contract(path: Path | None) -> Path:
    """The mlship.yaml to use: the given file, or mlship.yaml in the given (or current) folder."""
    candidate = path or Path.cwd()
    if candidate.is_dir():
        candidate = candidate / CONTRACT_FILE
    if not candidate.is_file():
        raise ContractError(
            f"No contract at {candidate}.",
            why="mlship reads the model, its inputs and its dependencies from mlship.yaml.",
            fix="Run `mlship init path/to/model.joblib` to write one, or pass --file PATH.",
        )
    return candidate


def load_project(path: Path | None = None) -> Project:
    """Parse and validate mlship.yaml, then check that the files it names exist."""
    contract_path = find_contract(path)
    text = contract_path.read_text(encoding="utf-8")
    contract = parse_contract(text, contract_path.name)
    project = Project(contract=contract, root=contract_path.parent.resolve(), contract_path=contract_path)
    _check_files(project, text)
    return project


def parse_contract(text: str, filename: str = CONTRACT_FILE) -> Contract:
    """Validate YAML text against the contract; errors carry the YAML path and line."""
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{filename}:{mark.line + 1}:{mark.column + 1}" if mark else filename
        raise ContractError(
            f"{where}: not valid YAML: {getattr(exc, 'problem', None) or exc}",
            fix="Check the indentation and quoting near that line.",
        ) from None
    if not isinstance(data, dict):
        raise ContractError(
            f"{filename}: expected a mapping of keys (name, runtime, artifact, ...), "
            f"got {type(data).__name__}.",
            fix="Run `mlship init MODEL` to write a valid contract to start from.",
        )
    try:
        return Contract.model_validate(data)
    except ValidationError as exc:
        lines = [_describe(err, node, filename) for err in exc.errors()]
        raise ContractError(
            f"{filename} is not a valid mlship contract:\n" + "\n".join(f"  {ln}" for ln in lines),
            fix="See schema/mlship.schema.json or `mlship init` output for the valid keys.",
        ) from None


def _describe(err: Any, root: yaml.Node | None, filename: str) -> str:
    loc = tuple(err["loc"])
    line = _line_of(root, loc)
    where = f"{filename}:{line}" if line else filename
    path = ".".join(str(p) for p in loc) or "(top level)"
    if err["type"] == "extra_forbidden":
        key = str(loc[-1])
        valid = _valid_keys(loc[:-1])
        near = difflib.get_close_matches(key, valid, n=1, cutoff=0.5)
        hint = f"; did you mean `{near[0]}`?" if near else "."
        return f"{where} -> {path}: unknown key `{key}`{hint} Valid keys here: {', '.join(valid)}"
    if err["type"] == "missing":
        return f"{where} -> {path}: required key is missing"
    got = err.get("input")
    msg = str(err["msg"]).removeprefix("Value error, ")
    got_text = "" if isinstance(got, (dict, list)) or f"got {got!r}" in msg else f", got {got!r}"
    return f"{where} -> {path}: {msg}{got_text}"


def _line_of(node: yaml.Node | None, loc: tuple[Any, ...]) -> int | None:
    """1-based line of the YAML node at ``loc`` (or of its nearest existing parent)."""
    best = node.start_mark.line + 1 if node is not None else None
    for part in loc:
        if isinstance(node, yaml.MappingNode):
            match = [(k, v) for k, v in node.value if k.value == str(part)]
            if not match:
                return best
            key, node = match[0]
            best = key.start_mark.line + 1
        elif isinstance(node, yaml.SequenceNode) and isinstance(part, int) and part < len(node.value):
            node = node.value[part]
            best = node.start_mark.line + 1
        else:
            return best
    return best


def _valid_keys(loc: tuple[Any, ...]) -> list[str]:
    """The field names of the contract section found at ``loc``."""
    model: Any = Contract
    in_mapping = False  # the previous field was dict[str, X]: this part is a user key, not a field
    for part in loc:
        if isinstance(part, int) or in_mapping:
            in_mapping = False
            continue
        in_mapping = _is_mapping(model, str(part))
        model = _section_type(model, str(part))
        if model is None:
            return []
    if isinstance(model, type) and issubclass(model, BaseModel):
        return list(model.model_fields)
    return []


_UNIONS = (typing.Union, getattr(types, "UnionType", typing.Union))  # X | Y; types.UnionType: Python 3.10+


def _is_mapping(model: Any, part: str) -> bool:
    """Whether field ``part`` of ``model`` is a ``dict[str, X]`` (optionally ``| None``)."""
    if not (isinstance(model, type) and issubclass(model, BaseModel)) or part not in model.model_fields:
        return False
    annotation = model.model_fields[part].annotation
    if typing.get_origin(annotation) in _UNIONS:
        return any(typing.get_origin(a) is dict for a in typing.get_args(annotation))
    return typing.get_origin(annotation) is dict


def _section_type(model: Any, part: str) -> Any:
    if isinstance(model, type) and issubclass(model, BaseModel):
        field = model.model_fields.get(part)
        return _unwrap(field.annotation) if field else None
    return None


def _unwrap(annotation: Any) -> Any:
    """list[X] / dict[str, X] / X | None -> X, so keys inside containers can be suggested."""
    origin = typing.get_origin(annotation)
    args = [a for a in typing.get_args(annotation) if a is not type(None)]
    if origin in (list, dict) and args:
        return _unwrap(args[-1])
    if origin in _UNIONS and len(args) == 1:
        return _unwrap(args[0])
    return annotation


def _check_files(project: Project, text: str) -> None:
    root = compose_root(text)
    c = project.contract
    refs: list[tuple[str, tuple[str, ...]]] = [] if project.remote else [(c.artifact, ("artifact",))]
    if c.docs:
        refs.append((c.docs, ("docs",)))
    if isinstance(c.dependencies.requirements, str):
        refs.append((c.dependencies.requirements, ("dependencies", "requirements")))
    for ref in (c.predict, c.load):
        if ref:
            refs.append((ref.split(":")[0], ("predict" if ref == c.predict else "load",)))
    for rel, loc in refs:
        if not (project.root / rel).exists():
            line = _line_of(root, loc)
            raise ContractError(
                f"{project.contract_path.name}:{line} -> {'.'.join(loc)}: file not found: {rel}",
                why=f"Paths are relative to the folder of mlship.yaml ({project.root}).",
                fix="Fix the path, or create the file (e.g. train the model first).",
            )


def compose_root(text: str) -> yaml.Node | None:
    return yaml.compose(text, Loader=yaml.SafeLoader)
