"""Which code+model pair an image is, kept where each platform keeps a revision's metadata, and read back as one line.

The build writes the provenance as the image's OCI labels (docs/artifacts.md): the artifact URI, its pinned form,
the registry/object version, the sha256, the contract hash and the git commit. A cloud platform does not read an
image's labels, and a machine that did not build the image has none of them, so each target records the same
fields on the revision it creates (for an image of a remote artifact; one of a model file next to mlship.yaml
is named by its version, as before), within what the platform keeps:

* Cloud Run: revision template annotations (Kubernetes rules: any value, 256 KiB in all), ``mlship.dev/<field>``;
* ECS: task definition tags (values of at most 256 characters of ``[A-Za-z0-9 +-=._:/@]``),
  ``mlship:provenance.<field>``; a value with another character is written ``b64:<base64url>``, a longer one
  continues in ``<key>.2``, ``<key>.3``;
* Heroku: a release keeps no metadata of its own; the image's labels are read from the registry
  (:mod:`mlship.targets.heroku.labels`).

``record(labels, limits)`` makes that dict, ``read(found, limits)`` takes it back (ignoring every key that is not
mlship's), and :meth:`Provenance.text` is the one rendering every target and ``mlship status`` use:
``s3://team-models/iris/model.joblib (<version>, sha256 9f2c4e8a1b3d...), git 1a2b3c4``.
"""

from __future__ import annotations

import base64
import binascii
import re
from collections.abc import Mapping
from dataclasses import dataclass, fields

LABEL_URI, LABEL_PINNED = "dev.mlship.artifact.uri", "dev.mlship.artifact.pinned"
LABEL_VERSION, LABEL_SHA = "dev.mlship.artifact.version", "dev.mlship.artifact.sha256"
LABEL_MODEL_SHA, LABEL_CONTRACT = "dev.mlship.model-sha256", "dev.mlship.contract-sha256"
LABEL_GIT = "org.opencontainers.image.revision"
ENCODED = "b64:"  # a value written as base64url (it holds characters the platform does not allow)


@dataclass(frozen=True)
class Provenance:
    """The code+model pair of one image: each field None when the build did not record it."""

    sha256: str  # the artifact's sha256 (remote artifacts), else the model file's (dev.mlship.model-sha256)
    uri: str | None = None  # as written in mlship.yaml; None for a model file next to it
    pinned: str | None = None
    version: str | None = None
    contract: str | None = None
    git: str | None = None

    @classmethod
    def from_labels(cls, labels: Mapping[str, str]) -> Provenance | None:
        """From an image's labels; None when they carry no model digest (not an mlship image)."""
        sha = labels.get(LABEL_SHA) or labels.get(LABEL_MODEL_SHA)
        if not sha:
            return None
        return cls(sha256=sha, uri=labels.get(LABEL_URI) or None, pinned=labels.get(LABEL_PINNED) or None,
                   version=labels.get(LABEL_VERSION) or None, contract=labels.get(LABEL_CONTRACT) or None,
                   git=labels.get(LABEL_GIT) or None)

    def text(self) -> str:
        """``<uri> (<version>, sha256 <12 hex>...), git <7 hex>``: what ``serving``/``now serving`` print."""
        where = self.uri or "the model baked into the image"
        text = f"{where} ({self.version + ', ' if self.version else ''}sha256 {self.sha256[:12]}...)"
        return text + (f", git {self.git[:7]}" if self.git else "")


@dataclass(frozen=True)
class Limits:
    """What a platform keeps per revision: key prefix, characters per value, the characters a value may hold as it
    is (a regex character class; "" = any), and how many keys one field may spread over."""

    prefix: str
    value_max: int
    allowed: str = ""
    parts_max: int = 1


CLOUDRUN = Limits(prefix="mlship.dev/", value_max=4096)  # annotations: Kubernetes' rules, 256 KiB in all
# task definition tags: 256 characters of [A-Za-z0-9 +-=._:/@] per value, 50 tags per resource
ECS = Limits(prefix="mlship:provenance.", value_max=256, allowed=r"A-Za-z0-9 +\-=._:/@", parts_max=4)
FIELDS = tuple(f.name for f in fields(Provenance))


def _fits(value: str, limits: Limits) -> bool:
    return not limits.allowed or re.fullmatch(f"[{limits.allowed}]*", value) is not None


def remote(labels: Mapping[str, str]) -> Provenance | None:
    """The provenance of an image of a remote artifact (its labels carry ``dev.mlship.artifact.sha256``); None for
    an image of a model file next to mlship.yaml, which the targets name by its version, as before."""
    return Provenance.from_labels(labels) if labels.get(LABEL_SHA) else None


def record(labels: Mapping[str, str], limits: Limits) -> dict[str, str]:
    """The provenance of an image of a remote artifact, as keys and values a platform keeps on a revision (empty
    for any other image). A value the platform cannot hold as it is goes in base64url; one longer than a key
    holds continues in ``<key>.2``...; beyond ``parts_max`` keys it is cut (ending in ``...``)."""
    found = remote(labels)
    if found is None:
        return {}
    out: dict[str, str] = {}
    for name in FIELDS:
        value = getattr(found, name)
        if not value:
            continue
        text = value if _fits(value, limits) and not value.startswith(ENCODED) else (
            ENCODED + base64.urlsafe_b64encode(value.encode()).decode())
        room = limits.value_max * limits.parts_max
        if len(text) > room:  # cut on the original text, so what is shown stays readable
            text = value[:room - 3] + "..." if _fits(value, limits) else _cut_encoded(value, room)
        key = limits.prefix + name
        for i in range(0, len(text), limits.value_max):
            out[key if i == 0 else f"{key}.{i // limits.value_max + 1}"] = text[i:i + limits.value_max]
    return out


def _cut_encoded(value: str, room: int) -> str:
    """The longest start of ``value`` (plus "...") whose base64url form fits ``room`` characters."""
    keep = (room - len(ENCODED)) // 4 * 3 - 3
    cut = value.encode()[:keep].decode(errors="ignore") + "..."
    return ENCODED + base64.urlsafe_b64encode(cut.encode()).decode()


def read(found: Mapping[str, str], limits: Limits) -> Provenance | None:
    """The provenance ``record`` wrote, from what the platform returns (other keys ignored); None without one."""
    values: dict[str, str] = {}
    for name in FIELDS:
        key = limits.prefix + name
        if key not in found:
            continue
        text, part = found[key], 2
        while f"{key}.{part}" in found and part <= limits.parts_max:
            text, part = text + found[f"{key}.{part}"], part + 1
        if text.startswith(ENCODED):
            try:
                text = base64.urlsafe_b64decode(text[len(ENCODED):].encode()).decode()
            except (binascii.Error, UnicodeDecodeError, ValueError):
                continue  # not ours after all: skip the field rather than show garbage
        values[name] = text
    sha = values.pop("sha256", None)
    return Provenance(sha256=sha, **values) if sha else None


def serving_text(labels: Mapping[str, str]) -> str | None:
    """``<uri> (<version>, sha256 9f2c...), git 1a2b3c`` from an image's labels; None without mlship labels."""
    found = Provenance.from_labels(labels)
    return found.text() if found is not None else None


def recorded_text(found: Mapping[str, str], limits: Limits) -> str | None:
    """The same line from what a platform kept on a revision (``record``'s keys); None when it kept none."""
    prov = read(found, limits)
    return prov.text() if prov is not None else None
