"""Real HTTP against one real iris server process: happy paths, static endpoints and every 422."""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from conftest import Server, make_iris_project, running

FEATURES = ["sepal_length", "sepal_width", "petal_length", "petal_width"]
LABELS = ["setosa", "versicolor", "virginica"]
SETOSA = {"sepal_length": 5.1, "sepal_width": 3.5, "petal_length": 1.4, "petal_width": 0.2}
VIRGINICA = {"sepal_length": 7.7, "sepal_width": 3.0, "petal_length": 6.1, "petal_width": 2.3}
MAX_INSTANCES = 5


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, iris_model: Path) -> Iterator[Server]:
    project = make_iris_project(tmp_path_factory.mktemp("iris-http"), iris_model,
                                f"serve:\n  max_instances: {MAX_INSTANCES}\n")
    # module fixtures start before the autouse env isolation: make sure no inherited key turns auth on
    with running(project, env={"MLSHIP_API_KEYS": ""}) as srv:
        yield srv


@pytest.fixture(scope="module")
def client(server: Server) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.url, timeout=10.0) as c:
        yield c


def metric(text: str, name: str) -> float:
    """The value of one sample line (``name`` includes its labels) in a Prometheus text page; 0 if absent."""
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def check_probabilities(prediction: dict[str, Any]) -> None:
    assert set(prediction) == {"label", "probabilities"}
    assert prediction["label"] in LABELS
    probs = prediction["probabilities"]
    assert set(probs) == set(LABELS)
    assert all(0.0 <= p <= 1.0 for p in probs.values())
    assert math.isclose(sum(probs.values()), 1.0, abs_tol=1e-6)
    assert max(probs, key=probs.__getitem__) == prediction["label"]


# -- /predict happy paths ---------------------------------------------------------------------------
def test_single_instance(client: httpx.Client) -> None:
    r = client.post("/predict", json=SETOSA)
    assert r.status_code == 200, r.text
    assert r.headers["content-type"] == "application/json"
    body = r.json()
    check_probabilities(body)
    assert body["label"] == "setosa"
    assert body["probabilities"]["setosa"] > 0.9


def test_integers_are_accepted_for_float_features(client: httpx.Client) -> None:
    body = {"sepal_length": 5, "sepal_width": 3, "petal_length": 1, "petal_width": 0}
    r = client.post("/predict", json=body)
    assert r.status_code == 200, r.text
    check_probabilities(r.json())


def test_instances_batch_keeps_order(client: httpx.Client) -> None:
    r = client.post("/predict", json={"instances": [SETOSA, VIRGINICA, SETOSA]})
    assert r.status_code == 200, r.text
    body = r.json()
    assert list(body) == ["predictions"]
    assert [p["label"] for p in body["predictions"]] == ["setosa", "virginica", "setosa"]
    for p in body["predictions"]:
        check_probabilities(p)
    single = client.post("/predict", json=VIRGINICA).json()
    assert body["predictions"][1] == single


def test_batch_of_exactly_max_instances(client: httpx.Client) -> None:
    r = client.post("/predict", json={"instances": [SETOSA] * MAX_INSTANCES})
    assert r.status_code == 200, r.text
    assert len(r.json()["predictions"]) == MAX_INSTANCES


def test_model_version_header_matches_metadata(client: httpx.Client) -> None:
    r = client.post("/predict", json=SETOSA)
    version = r.headers["x-model-version"]
    assert re.fullmatch(r"[0-9a-f]{12}", version), version  # sha256 prefix of the artifact
    assert client.get("/metadata").json()["version"] == version
    assert client.get("/readyz").json() == {"status": "ready", "version": version}


# -- static endpoints -----------------------------------------------------------------------------
def test_healthz(client: httpx.Client) -> None:
    r = client.get("/healthz")
    assert r.status_code == 200
    assert r.json() == {"status": "alive"}


def test_metadata(client: httpx.Client) -> None:
    from mlship import __version__

    r = client.get("/metadata")
    assert r.status_code == 200
    meta = r.json()
    assert meta["name"] == "iris"
    assert meta["runtime"] == "sklearn"
    assert meta["task"] == "classification"
    assert meta["labels"] == LABELS
    assert meta["mlship_version"] == __version__
    assert meta["input"]["required"] == FEATURES
    assert meta["input"]["additionalProperties"] is False
    assert meta["input"]["properties"] == {f: {"type": "number"} for f in FEATURES}
    assert "Predicts the species of an iris flower" in meta["docs"]  # MODEL.md


def test_openapi(client: httpx.Client) -> None:
    r = client.get("/openapi.json")
    assert r.status_code == 200
    assert r.headers["content-type"] == "application/json"
    doc = r.json()
    assert doc["openapi"].startswith("3.")
    assert doc["info"]["title"] == "iris"
    assert doc["info"]["version"] == client.get("/metadata").json()["version"]
    predict = doc["paths"]["/predict"]["post"]
    assert {"200", "401", "413", "422", "503", "504"} <= set(predict["responses"])
    schema = predict["requestBody"]["content"]["application/json"]["schema"]
    batch = schema["oneOf"][1]["properties"]["instances"]
    assert batch["maxItems"] == MAX_INSTANCES
    assert batch["items"] == {"oneOf": [{"$ref": "#/components/schemas/Instance"},
                                        {"$ref": "#/components/schemas/Row"}]}
    instance = doc["components"]["schemas"]["Instance"]
    assert instance["type"] == "object"
    assert instance["required"] == FEATURES
    assert set(instance["properties"]) == set(FEATURES)
    assert doc["components"]["schemas"]["Prediction"]["properties"]["label"]["enum"] == LABELS
    assert "security" not in doc  # auth is off
    # the 200 response's oneOf branches are disjoint: a single prediction requires `label` and has no
    # `predictions`; a batch has `predictions` and nothing else
    single, batch_answer = predict["responses"]["200"]["content"]["application/json"]["schema"]["oneOf"]
    assert single == {"$ref": "#/components/schemas/Prediction"}
    assert doc["components"]["schemas"]["Prediction"]["required"] == ["label"]
    assert batch_answer["required"] == ["predictions"] and batch_answer["additionalProperties"] is False
    # every $ref points at a schema that exists
    for ref in re.findall(r'"\$ref":\s*"#/components/schemas/(\w+)"', r.text):
        assert ref in doc["components"]["schemas"]


@pytest.mark.parametrize("path", ["/", "/docs"])
def test_html_pages_name_the_features(client: httpx.Client, path: str) -> None:
    r = client.get(path)
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("text/html")
    assert r.text.startswith("<!doctype html>")
    for feature in FEATURES:
        assert feature in r.text
    assert "<title>iris" in r.text


def test_docs_page_has_model_card_and_labels(client: httpx.Client) -> None:
    text = client.get("/docs").text
    assert "Model card" in text
    assert "Labels: setosa, versicolor, virginica" in text
    assert "POST /predict" in text


def test_metrics_count_requests(client: httpx.Client) -> None:
    before = client.get("/metrics").text
    for _ in range(3):
        assert client.post("/predict", json=SETOSA).status_code == 200
    assert client.post("/predict", json={}).status_code == 422
    r = client.get("/metrics")
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("text/plain")
    after = r.text
    assert "# TYPE mlship_requests_total counter" in after
    ok = 'mlship_requests_total{path="/predict",code="200"}'
    bad = 'mlship_requests_total{path="/predict",code="422"}'
    assert metric(after, ok) == metric(before, ok) + 3
    assert metric(after, bad) == metric(before, bad) + 1
    invalid = 'mlship_prediction_errors_total{kind="invalid_input"}'
    assert metric(after, invalid) == metric(before, invalid) + 1
    assert metric(after, "mlship_batch_instances_count") == metric(before, "mlship_batch_instances_count") + 3
    assert metric(after, "mlship_model_ready") == 1
    assert metric(after, "mlship_predictions_in_progress") == 0
    assert 'mlship_request_duration_seconds_bucket{path="/predict",le="+Inf"}' in after


def test_unknown_path_is_404_json(client: httpx.Client) -> None:
    for method in ("GET", "POST"):
        r = client.request(method, "/nope/x")
        assert r.status_code == 404
        assert r.headers["content-type"] == "application/json"
        body = r.json()
        assert body["error"] == "not_found"
        assert "/nope/x" in body["message"]
    assert 'mlship_requests_total{path="other",code="404"}' in client.get("/metrics").text


def test_wrong_methods_are_405(client: httpx.Client) -> None:
    r = client.get("/predict")
    assert r.status_code == 405
    assert r.headers["allow"] == "POST"
    assert r.json()["error"] == "method_not_allowed"
    assert "POST /predict" in r.json()["message"]
    r = client.post("/healthz", content=b"{}")
    assert r.status_code == 405
    assert r.headers["allow"] == "GET"
    assert r.json()["error"] == "method_not_allowed"


# -- 422: every malformed body --------------------------------------------------------------------
def with_(**changes: Any) -> dict[str, Any]:
    inst: dict[str, Any] = {**SETOSA, **changes}
    return {k: v for k, v in inst.items() if v is not _DROP}


_DROP = object()
DEEP = 20_000  # deeper than the server's nesting limit (MAX_DEPTH)
CRASH = 500_000  # orjson < 3.9.15 overflowed the C stack on this (CVE-2024-27454); still under 1 MiB

# (id, raw body, expected `error`, expected loc of the first detail, expected `type` of it, text in `got`)
BAD_BODIES: list[tuple[str, bytes, str, list[Any], str, str]] = [
    ("missing", json.dumps(with_(petal_width=_DROP)).encode(), "invalid_input",
     ["body", "petal_width"], "missing", "nothing"),
    ("extra", json.dumps(with_(color="red")).encode(), "invalid_input",
     ["body", "color"], "extra_forbidden", "string 'red'"),
    ("string", json.dumps(with_(sepal_length="5.1")).encode(), "invalid_input",
     ["body", "sepal_length"], "value_error", "string '5.1'"),
    ("bool", json.dumps(with_(sepal_width=True)).encode(), "invalid_input",
     ["body", "sepal_width"], "value_error", "boolean True"),
    ("null", json.dumps(with_(petal_length=None)).encode(), "invalid_input",
     ["body", "petal_length"], "value_error", "null None"),
    ("object", json.dumps(with_(petal_width={"cm": 0.2})).encode(), "invalid_input",
     ["body", "petal_width"], "value_error", "object {'cm': 0.2}"),
    ("array", json.dumps(with_(petal_width=[0.2])).encode(), "invalid_input",
     ["body", "petal_width"], "value_error", "array [0.2]"),
    ("deeply-nested-value", b'{"sepal_length":' + b"[" * 1000 + b"]" * 1000 + b"}", "invalid_input",
     ["body", "sepal_length"], "value_error", "array"),
    ("deeply-nested-extra", b'{"junk":' + b"[" * 1000 + b"]" * 1000 + b"}", "invalid_input",
     ["body", "sepal_length"], "missing", "nothing"),
    ("deeply-nested-body", b"[" * 1000 + b"]" * 1000, "invalid_input", ["body", 0], "length_error", "1 values"),
    ("too-deep-arrays", b"[" * DEEP + b"]" * DEEP, "invalid_json", ["body"], "json_invalid", "more than"),
    ("too-deep-objects", b'{"a":' * DEEP + b"1" + b"}" * DEEP, "invalid_json", ["body"], "json_invalid",
     "more than"),
    ("too-deep-unclosed", b'{"sepal_length":' + b"[" * CRASH, "invalid_json", ["body"], "json_invalid",
     "more than"),
    ("stack-overflow-depth", b"[" * CRASH + b"]" * CRASH, "invalid_json", ["body"], "json_invalid",
     "more than"),
    ("brackets-inside-strings", json.dumps(with_(sepal_length='\\"' + "[" * DEEP)).encode(), "invalid_input",
     ["body", "sepal_length"], "value_error", "string"),
    ("empty-object", b"{}", "invalid_input", ["body", "sepal_length"], "missing", "nothing"),
    ("instances-empty", b'{"instances": []}', "invalid_input", ["body", "instances"], "too_short", "0"),
    ("instances-object", json.dumps({"instances": SETOSA}).encode(), "invalid_input",
     ["body", "instances"], "type_error", "object"),
    ("instances-null", b'{"instances": null}', "invalid_input", ["body", "instances"], "type_error", "null"),
    ("instances-item-not-object", json.dumps({"instances": [SETOSA, 3]}).encode(), "invalid_input",
     ["body", "instances", 1], "type_error", "number 3"),
    ("instances-item-missing", json.dumps({"instances": [SETOSA, with_(sepal_width=_DROP)]}).encode(),
     "invalid_input", ["body", "instances", 1, "sepal_width"], "missing", "nothing"),
    ("instances-item-wrong-type", json.dumps({"instances": [with_(sepal_width="x")]}).encode(),
     "invalid_input", ["body", "instances", 0, "sepal_width"], "value_error", "string 'x'"),
    ("key-next-to-instances", json.dumps({"instances": [SETOSA], "model": "v2"}).encode(), "invalid_input",
     ["body", "model"], "extra_forbidden", "string 'model'"),
    ("too-many-instances", json.dumps({"instances": [SETOSA] * (MAX_INSTANCES + 1)}).encode(),
     "invalid_input", ["body", "instances"], "too_long", str(MAX_INSTANCES + 1)),
    ("top-level-array-of-numbers", b"[3]", "invalid_input", ["body", 0], "type_error", "number 3"),
    ("top-level-number", b"42", "invalid_input", ["body"], "type_error", "number 42"),
    ("top-level-string", b'"hello"', "invalid_input", ["body"], "type_error", "string 'hello'"),
    ("top-level-null", b"null", "invalid_input", ["body"], "type_error", "null"),
    ("top-level-bool", b"true", "invalid_input", ["body"], "type_error", "boolean True"),
    ("not-json", b"sepal_length=5.1", "invalid_json", ["body"], "json_invalid", ""),
    ("empty-body", b"", "invalid_json", ["body"], "json_invalid", ""),
    ("truncated", b'{"sepal_length": 5.1, ', "invalid_json", ["body"], "json_invalid", ""),
    ("trailing-garbage", json.dumps(SETOSA).encode() + b" x", "invalid_json", ["body"], "json_invalid", ""),
    ("single-quotes", b"{'sepal_length': 5.1}", "invalid_json", ["body"], "json_invalid", ""),
    ("invalid-utf8", b'{"sepal_length": "\xff\xfe"}', "invalid_json", ["body"], "json_invalid", ""),
    ("nan-literal", json.dumps(with_(sepal_length=math.nan)).encode(), "invalid_json",
     ["body"], "json_invalid", ""),
    ("infinity-literal", json.dumps(with_(sepal_length=math.inf)).encode(), "invalid_json",
     ["body"], "json_invalid", ""),
    ("minus-infinity-literal", json.dumps(with_(sepal_length=-math.inf)).encode(), "invalid_json",
     ["body"], "json_invalid", ""),
    ("bare-nan", b"NaN", "invalid_json", ["body"], "json_invalid", ""),
    ("huge-number", json.dumps(SETOSA).replace("5.1", "1e400").encode(), "invalid_json",
     ["body"], "json_invalid", "infinity"),
    ("huge-negative-number", json.dumps(SETOSA).replace("5.1", "-1e400").encode(), "invalid_json",
     ["body"], "json_invalid", "infinity"),
    ("huge-integer", json.dumps(SETOSA).replace("5.1", "1" + "0" * 400).encode(), "invalid_json",
     ["body"], "json_invalid", ""),
]


@pytest.mark.parametrize(("body", "error", "loc", "kind", "got"), [c[1:] for c in BAD_BODIES],
                         ids=[c[0] for c in BAD_BODIES])
def test_malformed_bodies_are_422(client: httpx.Client, body: bytes, error: str, loc: list[Any],
                                  kind: str, got: str) -> None:
    r = client.post("/predict", content=body, headers={"content-type": "application/json"})
    assert r.status_code == 422, r.text
    assert r.headers["content-type"] == "application/json"
    payload = r.json()
    assert payload["error"] == error
    assert isinstance(payload["message"], str) and payload["message"]
    detail = payload["detail"]
    assert isinstance(detail, list) and detail
    for item in detail:
        assert {"loc", "msg", "type", "expected", "got"} <= set(item), item
        assert item["loc"][0] == "body"
        assert isinstance(item["expected"], str) and item["expected"]
        assert isinstance(item["got"], str) and item["got"]
    assert detail[0]["loc"] == loc
    assert detail[0]["type"] == kind
    assert got in detail[0]["got"]
    assert len(detail[0]["got"]) <= 200  # a huge or deep value is summarised, not echoed back
    if error == "invalid_input":
        assert payload["message"] == detail[0]["msg"]


def test_every_field_error_is_reported(client: httpx.Client) -> None:
    body = {"sepal_length": "a", "sepal_width": None, "petal_length": False, "colour": 1}
    r = client.post("/predict", json=body)
    assert r.status_code == 422
    detail = r.json()["detail"]
    locs = {tuple(d["loc"]): d for d in detail}
    assert set(locs) == {("body", "sepal_length"), ("body", "sepal_width"), ("body", "petal_length"),
                         ("body", "petal_width"), ("body", "colour")}
    assert locs[("body", "sepal_length")]["expected"] == "float"
    assert locs[("body", "petal_width")]["type"] == "missing"
    assert "sepal_length" in locs[("body", "colour")]["expected"]  # lists the known features


def test_misspelled_feature_is_named(client: httpx.Client) -> None:
    body = with_(petal_width=_DROP, petal_widht=0.2)  # same number of keys as features
    r = client.post("/predict", json=body)
    assert r.status_code == 422
    detail = r.json()["detail"]
    assert [(d["loc"], d["type"]) for d in detail] == [
        (["body", "petal_width"], "missing"), (["body", "petal_widht"], "extra_forbidden")]
    assert detail[1]["got"] == "number 0.2"


def test_errors_across_instances_are_capped(client: httpx.Client) -> None:
    junk = {"a": 1, "b": 2}  # 4 missing + 2 unknown = 6 errors per instance
    r = client.post("/predict", json={"instances": [junk] * MAX_INSTANCES})
    assert r.status_code == 422
    detail = r.json()["detail"]
    assert len(detail) == 20
    assert detail[0]["loc"] == ["body", "instances", 0, "sepal_length"]
    assert {d["loc"][2] for d in detail} == {0, 1, 2, 3}


def test_an_overflowing_value_is_an_error_never_null_probabilities(tmp_path: Path, iris_model: Path) -> None:
    # a finite float64 that overflows inside the model (in float32 on the compiled path) gives NaN scores:
    # answered as a failed prediction that says why, never as 200 with null probabilities (its own server: the
    # module's counts no 500s)
    with running(make_iris_project(tmp_path, iris_model), env={"MLSHIP_API_KEYS": ""}) as srv, \
            httpx.Client(base_url=srv.url, timeout=10.0) as c:
        resp = c.post("/predict", json={**SETOSA, "petal_length": 1.7976931348623155e308})
        assert resp.status_code == 500, resp.text
        body = resp.json()
        assert body["error"] == "prediction_failed"
        assert "not finite numbers (NaN or infinity) for instance 0" in body["message"]
        assert c.post("/predict", json=SETOSA).status_code == 200


def test_server_still_healthy_after_bad_input(client: httpx.Client, server: Server) -> None:
    for _, body, *_ in BAD_BODIES:
        client.post("/predict", content=body)
    assert client.post("/predict", json=SETOSA).status_code == 200
    assert metric(client.get("/metrics").text, 'mlship_requests_total{path="/predict",code="500"}') == 0
    assert server.proc.poll() is None
    log = server.output()
    assert "Traceback" not in log
    assert "ERROR" not in log
