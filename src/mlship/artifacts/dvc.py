"""A DVC-tracked artifact: ``artifact: model.joblib`` with ``model.joblib.dvc`` beside it, in a DVC repository.

When the workspace copy is absent (a fresh clone, a CI runner), the bytes are read with DVC's own API
(``dvc.api.open`` for a file, ``DVCFileSystem.get`` for a tracked folder) from the repository's cache or its
default remote, with DVC's remote configuration and credentials. The version is the md5 the ``.dvc`` file records
(the pinned form is ``model.joblib@md5:<md5>``); a file's bytes are checked against that md5 as they arrive, and
the cache then checks the sha256 (``artifact_sha256`` when the contract has one). `mlship init` writes no
``artifact_sha256`` for a DVC path: the .dvc file, committed with the code, pins it; a file the cache already holds
with that md5 is a cache hit (no download).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, ClassVar

from mlship.artifacts.base import Fetcher, Resolved
from mlship.errors import ArtifactError
from mlship.reports import Check

CHUNK = 1 << 20
_FIX_PUSH = "Run `dvc push {path}` where the file was added (it uploads the bytes to the remote), then retry."


def repo_root(path: Path) -> Path:
    """The DVC repository (the folder holding ``.dvc/``) that contains ``path``."""
    for folder in [path.parent, *path.parent.parents]:
        if (folder / ".dvc").is_dir():
            return folder
    raise ArtifactError(f"{path.name}.dvc is not inside a DVC repository (no .dvc/ folder above {path.parent}).",
                        why="DVC reads a tracked file through its repository's configuration (cache, remotes).",
                        fix="Run mlship from a clone of the DVC repository, or `dvc init` and `dvc add` the model.")


def read_dvc_file(dvc_file: Path) -> dict[str, Any]:
    """The one ``outs`` entry of a ``.dvc`` file: md5, size, path, hash (``md5`` for DVC 3 files)."""
    import yaml

    try:
        data = yaml.safe_load(dvc_file.read_text(encoding="utf-8")) or {}
    except (OSError, yaml.YAMLError) as exc:
        raise ArtifactError(f"{dvc_file.name} cannot be read: {exc}.", fix="Restore it from git (git checkout -- "
                            f"{dvc_file.name}) or run `dvc add` on the model again.") from None
    outs = data.get("outs") if isinstance(data, dict) else None
    if not isinstance(outs, list) or len(outs) != 1 or not isinstance(outs[0], dict) or not outs[0].get("md5"):
        raise ArtifactError(f"{dvc_file.name} does not track exactly one output with an md5.",
                            why="mlship reads the model a .dvc file records (outs: - md5: ..., path: ...).",
                            fix=f"Run `dvc add {dvc_file.name[:-4]}` to track the model file or folder.")
    return dict(outs[0])


def _import_dvc() -> Any:
    try:
        import dvc.api  # type: ignore[import-untyped]
    except ImportError as exc:
        raise ArtifactError(f"DVC-tracked artifacts need DVC, which is not installed ({exc}).",
                            fix="pip install 'mlship[dvc]' (plus your remote's DVC extra, e.g. 'dvc[s3]').") from None
    return dvc.api


def _dvc_error(path: str, md5: str, exc: Exception) -> ArtifactError:
    kind = type(exc).__name__
    if kind in ("NoRemoteError", "RemoteNotFoundError"):
        return ArtifactError(f"{path}: absent here, and its DVC repository has no default remote to fetch it from.",
                             why=str(exc).strip(), fix="Add one: `dvc remote add -d storage <url>` (in the repository "
                             "that pushes the model too), or restore the file.")
    if kind in ("PathMissingError", "FileMissingError", "CheckoutError", "DownloadError", "FileNotFoundError"):
        return ArtifactError(f"{path}: the DVC remote does not hold md5 {md5}, the version {path}.dvc records.",
                             why=str(exc).strip(), fix=_FIX_PUSH.format(path=path))
    return ArtifactError(f"{path}: DVC could not read md5 {md5}: {kind}: {exc}.",
                         why="DVC reads the remote with its own configuration and credentials.",
                         fix=f"Check that `dvc pull {path}` works in this clone (remote URL, credentials in "
                         ".dvc/config.local or the environment).")


def _md5_of(path: Path) -> str:
    digest = hashlib.md5(usedforsecurity=False)
    with path.open("rb") as fh:
        while chunk := fh.read(CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def cached_sha256(md5: str) -> str | None:
    """The sha256 of a file the artifact cache already holds with this DVC md5 (its bytes re-hashed to check),
    so a rebuild reads the cache and downloads nothing; None when it holds none (or for a folder)."""
    from mlship.artifacts import cache

    if md5.endswith(".dir"):
        return None
    for meta in sorted((cache.cache_dir() / "meta").glob("*.json")):
        try:
            record = json.loads(meta.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        if record.get("version") != md5 or not str(record.get("pinned", "")).endswith(f"@md5:{md5}"):
            continue
        found = cache.lookup(meta.stem)
        if found is not None and found[0].is_file() and _md5_of(found[0]) == md5:
            return meta.stem
    return None


class DvcFetcher(Fetcher):
    """A path whose ``<path>.dvc`` file is beside it, fetched with DVC's API when the workspace copy is absent."""

    name = "dvc"
    #: pinned -> the absolute workspace path resolve() found (fetch gets no root; any instance may fetch)
    _files: ClassVar[dict[str, Path]] = {}

    @classmethod
    def claims(cls, uri: str, root: Path) -> bool:
        return "://" not in uri and not uri.startswith("models:/") and (root / f"{uri}.dvc").is_file()

    def resolve(self, uri: str, root: Path) -> Resolved:
        path = (root / uri).resolve()
        repo_root(path)
        out = read_dvc_file(path.with_name(path.name + ".dvc"))
        md5 = str(out["md5"])
        pinned = f"{uri}@md5:{md5}"
        self._files[pinned] = path
        size = out.get("size")
        return Resolved(uri=uri, pinned=pinned, version=md5, sha256=cached_sha256(md5),
                        size=int(size) if isinstance(size, int) else None, filename=path.name)

    def checks(self, uri: str, root: Path) -> list[Check]:
        """Resolve, then ask the default remote whether it holds the md5 (no download)."""
        try:
            resolved = self.resolve(uri, root)
            self._remote_has(resolved)
        except ArtifactError as exc:
            return [Check(name="artifact", ok=False, detail=exc.message, fix=exc.fix)]
        return [Check(name="artifact", ok=True, detail=f"{resolved.pinned}: the DVC remote holds it")]

    def _remote_has(self, resolved: Resolved) -> None:
        _import_dvc()
        from dvc.repo import Repo  # type: ignore[import-untyped]

        path = self._files[resolved.pinned]
        md5 = str(resolved.version)
        legacy = read_dvc_file(path.with_name(path.name + ".dvc")).get("hash") != "md5"
        try:
            with Repo(str(repo_root(path))) as repo:
                odb = repo.cloud.get_remote_odb(hash_name="md5-dos2unix" if legacy else "md5")
                found = odb.exists(md5)
        except Exception as exc:
            raise _dvc_error(resolved.uri, md5, exc) from None
        if not found:
            raise ArtifactError(f"{resolved.uri}: the DVC remote ({odb.path}) does not hold md5 {md5}, the version "
                                f"{resolved.uri}.dvc records.", fix=_FIX_PUSH.format(path=resolved.uri))

    def fetch(self, resolved: Resolved, dest: Path) -> None:
        api = _import_dvc()
        path = self._files.get(resolved.pinned) or Path(resolved.uri).resolve()
        root = repo_root(path)
        rel = path.relative_to(root).as_posix()
        md5 = str(resolved.version)
        try:
            if md5.endswith(".dir"):
                api.DVCFileSystem(str(root)).get(rel, str(dest), recursive=True)
                return
            digest = hashlib.md5(usedforsecurity=False)
            with api.open(rel, repo=str(root), mode="rb") as src, dest.open("wb") as out:
                while chunk := src.read(CHUNK):
                    digest.update(chunk)
                    out.write(chunk)
        except ArtifactError:
            raise
        except Exception as exc:
            raise _dvc_error(resolved.uri, md5, exc) from None
        if digest.hexdigest() != md5:
            raise ArtifactError(
                f"{resolved.uri}: DVC returned bytes with md5 {digest.hexdigest()}, but {resolved.uri}.dvc records "
                f"{md5}. Nothing was kept.",
                why="The object in the DVC remote (or cache) is not the one the .dvc file names: it was overwritten or "
                "corrupted.", fix=f"Push the right file again (`dvc push --force {resolved.uri}` from a clone that has "
                "it) or `dvc add` the model again and commit the new .dvc file.")
