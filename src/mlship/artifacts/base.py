"""The fetcher interface: one small class per place a model can live (``s3://``, ``gs://``, ``https://``,
``models:/``, a DVC-tracked path).

A fetcher answers three questions: does this ``artifact:`` value belong to me (:meth:`Fetcher.claims`), what
exactly does it name right now (:meth:`Fetcher.resolve`: metadata only, fast, the immutable ``pinned`` form), and
write its bytes to a path (:meth:`Fetcher.fetch`). The cache (:mod:`mlship.artifacts.cache`) owns the rest:
the digest check, the temp path renamed only after the check, never downloading what it already holds.

A complete third-party fetcher (registered in the entry-point group ``mlship.fetchers``)::

    # pyproject.toml of the plugin package
    [project.entry-points."mlship.fetchers"]
    ftp = "mlship_ftp:FtpFetcher"

    # mlship_ftp.py
    import ftplib
    from pathlib import Path
    from urllib.parse import urlsplit

    from mlship.artifacts.base import Fetcher, Resolved, filename_of
    from mlship.errors import ArtifactError

    class FtpFetcher(Fetcher):
        name = "ftp"

        @classmethod
        def claims(cls, uri: str, root: Path) -> bool:
            return uri.startswith("ftp://")

        def resolve(self, uri: str, root: Path) -> Resolved:
            parts = urlsplit(uri)
            try:
                with ftplib.FTP(parts.hostname or "") as ftp:
                    ftp.login()
                    size = ftp.size(parts.path)
            except ftplib.all_errors as exc:
                raise ArtifactError(f"Cannot read {uri}: {exc}.", fix="Check the host and path.") from None
            return Resolved(uri=uri, pinned=uri, version=None, sha256=None, size=size,
                            filename=filename_of(parts.path))

        def fetch(self, resolved: Resolved, dest: Path) -> None:
            parts = urlsplit(resolved.uri)
            with ftplib.FTP(parts.hostname or "") as ftp, dest.open("wb") as out:
                ftp.login()
                ftp.retrbinary(f"RETR {parts.path}", out.write)
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, ClassVar

from mlship.errors import MlshipError

if TYPE_CHECKING:
    from mlship.reports import Check


@dataclass(frozen=True)
class Resolved:
    """What an ``artifact:`` value names at the moment it was resolved."""

    uri: str  # as written in mlship.yaml (s3://b/k, gs://b/k, https://..., models:/iris@champion, a DVC path)
    pinned: str  # the immutable form this build uses (models:/iris/3, s3://b/k?versionId=..., dvc md5 ...)
    version: str | None  # registry version / object version id / DVC md5; None when the source has none
    sha256: str | None  # when the source states it without downloading; else None (computed on fetch)
    size: int | None  # bytes, when the source states it
    filename: str  # the file or folder name to give the artifact in the project / image (model.joblib)


class Fetcher(ABC):
    """Reads one kind of remote artifact. Subclasses set ``name`` and implement the three methods.

    Errors are :class:`mlship.errors.ArtifactError` with ``why`` and ``fix`` (missing credentials, a denied
    read, no such object): preflight shows them before any build.
    """

    name: ClassVar[str]  # "s3", "gcs", "https", "mlflow", "dvc"
    #: what an image needs installed to run this fetcher at start (serve.fetch_at_start), pinned to this machine's
    image_packages: ClassVar[tuple[str, ...]] = ()

    @classmethod
    @abstractmethod
    def claims(cls, uri: str, root: Path) -> bool:
        """Whether ``uri`` (the contract's ``artifact:``) is this fetcher's; by scheme, or for DVC a path with
        ``<path>.dvc`` beside it under ``root`` (the folder of mlship.yaml)."""

    @abstractmethod
    def resolve(self, uri: str, root: Path) -> Resolved:
        """Metadata only (no download): the pinned form, version, size, and the digest when the source states
        it. Missing credentials, a denied read or no such object raise ArtifactError."""

    @abstractmethod
    def fetch(self, resolved: Resolved, dest: Path) -> None:
        """Write the artifact (a file, or a folder) to ``dest``, a temp path the cache gives and renames into
        place after the digest check. Read ``resolved.pinned`` so the bytes are the version resolved."""

    def checks(self, uri: str, root: Path) -> list[Check]:
        """Preflight: credentials found, read allowed. Default: :meth:`resolve`, its error as a failed check."""
        from mlship.reports import Check  # here: the serving path reads artifacts without the reports module

        try:
            resolved = self.resolve(uri, root)
        except MlshipError as exc:
            return [Check(name="artifact", ok=False, detail=exc.message, fix=exc.fix)]
        size = f", {resolved.size} bytes" if resolved.size is not None else ""
        return [Check(name="artifact", ok=True, detail=f"{resolved.pinned} is readable{size}")]


def filename_of(path: str, default: str = "model") -> str:
    """The last segment of a URL/object path (``iris/model.joblib`` -> ``model.joblib``)."""
    name = PurePosixPath(path.split("?", 1)[0]).name
    return name if name not in ("", ".", "..") else default
