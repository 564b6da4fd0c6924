"""`mlship predict`: read rows from JSON or CSV and send them to a server (or a local model)."""

from __future__ import annotations

import base64
import csv
import io
import json
import urllib.error
import urllib.request
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from mlship.contract import Feature
from mlship.errors import ClientError


def read_rows(source: str | Path, features: dict[str, Feature] | None) -> list[dict[str, Any]]:
    """Instances from a .csv (header row) or .json file, or from text (stdin, --data) when ``source`` is a str.

    Text and files with another suffix are JSON when their first non-blank character is ``{`` or ``[``, else
    CSV. JSON may be one object, a list of objects, or ``{"instances": [...]}``; with ``features``, an object may
    also be an array of values in feature order. CSV cells are converted
    with the input schema when known, else guessed (int, float, text).
    """
    text = Path(source).read_text(encoding="utf-8") if isinstance(source, Path) else source
    name = source.name if isinstance(source, Path) else "input"
    if not text.strip():
        raise ClientError(f"{name} is empty.", fix="Give CSV with a header row, or JSON instances.")
    if is_csv(source, text):
        return _csv_rows(text, features, name)
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ClientError(f"{name} is not valid JSON: {exc}.",
                          fix="Give a .csv file with a header row, or JSON instances.") from None
    if isinstance(data, dict) and "instances" in data:
        data = data["instances"]
    rows = data if isinstance(data, list) else [data]
    if features:  # an instance as an array of values in feature order (as the server takes it)
        rows = [dict(zip(features, r, strict=True)) if isinstance(r, list) and len(r) == len(features) else r
                for r in rows]
    if not rows or not all(isinstance(r, dict) for r in rows):
        raise ClientError(f"{name}: expected an object of features or a list of them"
                          + (f" (or arrays of {len(features)} values in feature order)." if features else "."))
    return rows


def is_csv(source: str | Path, text: str) -> bool:
    """Whether to read ``text`` as CSV: a .csv file; not a .json file; else unless it starts with { or [."""
    suffix = source.suffix.lower() if isinstance(source, Path) else ""
    if suffix in (".csv", ".json"):
        return suffix == ".csv"
    return not text.lstrip().startswith(("{", "["))


def read_tensors(source: str | Path) -> list[Any]:
    """Tensor instances (nested lists or ``{"b64": ...}``) from JSON text or a .json/.png file.

    JSON may be ``{"instances": [...]}`` (a batch request body), ``{"input": ...}`` (a single-instance
    body) or a list of such single-instance bodies. A .png file becomes one ``{"b64": ...}`` instance.
    """
    name = source.name if isinstance(source, Path) else "input"
    if isinstance(source, Path) and source.suffix.lower() == ".png":
        return [{"b64": base64.b64encode(source.read_bytes()).decode("ascii")}]
    if isinstance(source, Path) and source.suffix.lower() == ".csv":
        raise ClientError(f"{name}: this model takes a tensor per instance, which CSV cannot hold.",
                          fix='Give JSON: {"instances": [<nested list>, ...]} or {"input": <nested list>}, '
                          "or a .png file for image inputs.")
    text = source.read_text(encoding="utf-8") if isinstance(source, Path) else source
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ClientError(f"{name} is not valid JSON: {exc}.",
                          fix='Give {"instances": [<nested list>, ...]} or {"input": <nested list>}.') from None
    if isinstance(data, dict) and isinstance(data.get("instances"), list) and data["instances"]:
        return list(data["instances"])
    if isinstance(data, dict) and "input" in data:
        return [data["input"]]
    if isinstance(data, list) and data and all(isinstance(d, dict) and "input" in d for d in data):
        return [d["input"] for d in data]
    raise ClientError(f'{name}: expected {{"instances": [...]}}, {{"input": ...}} or a list of {{"input": ...}}.',
                      fix="A tensor instance is a nested list of numbers (or {\"b64\": \"<PNG>\"} for images).")


def _csv_rows(text: str, features: dict[str, Feature] | None, name: str) -> list[dict[str, Any]]:
    reader = csv.DictReader(io.StringIO(text))
    if reader.fieldnames is not None:
        _check_header(reader.fieldnames, features, name)
    rows = []
    for line, raw in enumerate(reader, start=2):
        row: dict[str, Any] = {}
        for key, cell in raw.items():
            if key is None:
                raise ClientError(f"{name}:{line}: more cells than header columns.")
            row[key] = _convert(cell, features.get(key) if features else None, f"{name}:{line} {key}")
        rows.append(row)
    if not rows:
        raise ClientError(f"{name} has no data rows.", fix="Add rows under the header line.")
    return rows


def _check_header(header: Sequence[str], features: dict[str, Feature] | None, name: str) -> None:
    """A CSV's first line must name columns: with a known schema at least one feature, else not only numbers.

    Without this check a CSV with no header would silently lose its first row (read as the column names).
    """
    cells = [cell.strip() for cell in header]
    if features:
        if any(cell in features for cell in cells):
            return
        reason = "names none of the input features"
    else:
        if not all(_is_number(cell) for cell in cells):
            return
        reason = "holds only numbers"
    expected = ",".join(features) if features else "the feature names, comma-separated"
    raise ClientError(
        f"{name} has no header row: its first line ({','.join(cells)[:80]}) {reason}.",
        why="The first line of a CSV names the columns; without a header the first row would be read as "
        "column names and dropped.",
        fix=f"Add this header line as the first line of the CSV: {expected}",
    )


def _is_number(cell: str) -> bool:
    try:
        float(cell)
    except ValueError:
        return False
    return True


def _convert(cell: str | None, feature: Feature | None, where: str) -> Any:
    cell = (cell or "").strip()
    kind = feature.type if feature else None
    if kind == "str":
        return cell
    if kind == "bool" or (kind is None and cell.lower() in ("true", "false")):
        if cell.lower() in ("true", "1", "yes"):
            return True
        if cell.lower() in ("false", "0", "no"):
            return False
        raise ClientError(f"{where}: expected true/false, got {cell!r}.")
    for convert in ((int,) if kind == "int" else (int, float)):
        try:
            return convert(cell)
        except ValueError:
            continue
    if kind in ("int", "float"):
        raise ClientError(f"{where}: expected a number, got {cell!r}.")
    return cell


def post_json(url: str, body: Any, api_key: str | None = None, timeout: float = 60.0) -> Any:
    """POST JSON and return the decoded reply; HTTP errors become ClientError with the server's message."""
    return _request(url, "POST", json.dumps(body).encode(), api_key, timeout)


def get_json(url: str, api_key: str | None = None, timeout: float = 10.0) -> Any:
    return _request(url, "GET", None, api_key, timeout)


def _request(url: str, method: str, data: bytes | None, api_key: str | None, timeout: float) -> Any:
    if not url.startswith(("http://", "https://")):
        raise ClientError(f"Not an http(s) URL: {url}.", fix="Use e.g. http://127.0.0.1:8080.")
    headers = {"Content-Type": "application/json"} if data is not None else {}
    if api_key:
        headers["Authorization"] = f"Bearer {api_key}"
    req = urllib.request.Request(url, data=data, method=method, headers=headers)  # noqa: S310 (http(s) only)
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:  # noqa: S310 (http(s) only)
            return json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        raise ClientError(_http_error(exc), fix=_http_fix(exc.code)) from None
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        raise ClientError(f"Cannot reach {url}: {reason}.",
                          fix="Check the URL and that the server is running (`mlship serve`).") from None
    except ValueError as exc:
        raise ClientError(f"{url} did not answer JSON: {exc}.", fix="Is this an mlship server?") from None


def _http_error(exc: urllib.error.HTTPError) -> str:
    try:
        payload = json.loads(exc.read())
    except (ValueError, OSError):
        return f"{exc.url} answered HTTP {exc.code}."
    text = f"{exc.url} answered HTTP {exc.code}: {payload.get('message', payload)}"
    for item in payload.get("detail", [])[:10]:
        loc = ".".join(str(p) for p in item.get("loc", []))
        text += f"\n  {loc}: {item.get('msg')} (expected {item.get('expected')}, got {item.get('got')})"
    return text


def _http_fix(code: int) -> str | None:
    return {
        401: "Pass the key with --api-key or $MLSHIP_API_KEY.",
        413: "Send fewer rows per request (--batch-size).",
        422: "Fix the listed fields; `mlship info` or GET /metadata shows the input schema.",
        503: "The server is loading or overloaded; retry in a moment.",
    }.get(code)
