"""API-key auth against real server processes (serve.auth: api_key and $MLSHIP_API_KEYS)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from conftest import Server, running, write_custom_project

PREDICT = """
def load(path):
    return 2.0

def predict(model, instances):
    return [i["x"] * model for i in instances]
"""
K1 = "k1-Sup3rSecret-AAAA"
K2 = "k2-Sup3rSecret-BBBB"
WRONG = "k3-Sup3rSecret-CCCC"
PROTECTED = ["/metadata", "/openapi.json", "/docs", "/metrics"]
PUBLIC = ["/healthz", "/readyz", "/"]


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    project = write_custom_project(tmp_path_factory.mktemp("auth"), PREDICT,
                                   serve="serve:\n  auth: api_key\n")
    with running(project, env={"MLSHIP_API_KEYS": f"{K1}, {K2}"}) as srv:
        yield srv


@pytest.fixture(scope="module")
def client(server: Server) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.url, timeout=10) as c:
        yield c


def bearer(key: str) -> dict[str, str]:
    return {"authorization": f"Bearer {key}"}


def assert_401(r: httpx.Response) -> None:
    assert r.status_code == 401, r.text
    assert r.headers["www-authenticate"] == "Bearer"
    assert r.json() == {"error": "unauthorized", "message": "send `Authorization: Bearer <API key>`"}


@pytest.mark.parametrize("headers", [
    {},
    bearer(WRONG),
    {"authorization": "Bearer"},
    bearer(f"{K1},{K2}"),  # the raw environment value is not a key
    bearer(K1[:-1]),  # a prefix of a real key
    bearer(K1 + "A"),
    {"authorization": K1},  # no scheme
    {"authorization": f"Basic {K1}"},
    {"authorization": f"Token {K1}"},
    {"x-api-key": K1},
], ids=["none", "wrong", "empty", "both", "prefix", "suffix", "no-scheme", "basic", "token", "x-api-key"])
def test_predict_without_a_valid_key_is_401(client: httpx.Client, headers: dict[str, str]) -> None:
    assert_401(client.post("/predict", json={"x": 1.0}, headers=headers))


@pytest.mark.parametrize("key", [K1, K2])
def test_every_configured_key_works(client: httpx.Client, key: str) -> None:
    r = client.post("/predict", json={"x": 2.5}, headers=bearer(key))
    assert r.status_code == 200, r.text
    assert r.json() == {"value": 5.0}


def test_scheme_is_case_insensitive(client: httpx.Client) -> None:
    r = client.post("/predict", json={"x": 1.0}, headers={"authorization": f"bearer {K2}"})
    assert r.status_code == 200, r.text


def test_auth_is_checked_before_the_body(client: httpx.Client) -> None:
    assert_401(client.post("/predict", content=b"not json"))
    r = client.post("/predict", content=b"not json", headers=bearer(K1))
    assert r.status_code == 422


@pytest.mark.parametrize("path", PUBLIC)
def test_health_and_index_are_public(client: httpx.Client, path: str) -> None:
    assert client.get(path).status_code == 200


def test_index_page_asks_for_the_key(client: httpx.Client) -> None:
    assert 'id="key" type="password"' in client.get("/").text


@pytest.mark.parametrize("path", PROTECTED)
def test_other_endpoints_need_the_key(client: httpx.Client, path: str) -> None:
    assert_401(client.get(path))
    assert_401(client.get(path, headers=bearer(WRONG)))
    assert client.get(path, headers=bearer(K1)).status_code == 200


def test_openapi_declares_bearer_auth(client: httpx.Client) -> None:
    doc = client.get("/openapi.json", headers=bearer(K1)).json()
    assert doc["components"]["securitySchemes"] == {"bearer": {"type": "http", "scheme": "bearer"}}
    assert doc["security"] == [{"bearer": []}]
    assert doc["paths"]["/healthz"]["get"]["security"] == []


def unauthorized_count(client: httpx.Client) -> float:
    text = client.get("/metrics", headers=bearer(K1)).text
    line = 'mlship_requests_total{path="/predict",code="401"} '
    return next((float(x[len(line):]) for x in text.splitlines() if x.startswith(line)), 0.0)


def test_unauthorized_requests_are_counted(client: httpx.Client) -> None:
    before = unauthorized_count(client)
    client.post("/predict", json={"x": 1.0})
    client.post("/predict", json={"x": 1.0}, headers=bearer(WRONG))
    assert unauthorized_count(client) == before + 2


def test_keys_never_reach_the_log_or_responses(client: httpx.Client, server: Server) -> None:
    for key in (K1, K2, WRONG):
        client.post("/predict", json={"x": 1.0}, headers=bearer(key))
        client.get("/metadata", headers=bearer(key))
    log = server.output()
    assert "(auth: api_key)" in log
    for secret in (K1, K2, WRONG, "Sup3rSecret"):
        assert secret not in log
    for path in PROTECTED:
        text = client.get(path, headers=bearer(K1)).text
        assert "Sup3rSecret" not in text


def test_keys_in_env_enforce_auth_even_when_contract_says_none(tmp_path: Path) -> None:
    project = write_custom_project(tmp_path / "p", PREDICT)  # serve.auth defaults to none
    with running(project, env={"MLSHIP_API_KEYS": K1}) as srv, \
            httpx.Client(base_url=srv.url, timeout=10) as c:
        assert_401(c.post("/predict", json={"x": 1.0}))
        assert c.post("/predict", json={"x": 1.0}, headers=bearer(K1)).json() == {"value": 2.0}
        assert c.get("/healthz").status_code == 200
        assert_401(c.get("/metadata"))
        log = srv.output()
    assert "(auth: api_key)" in log
    assert K1 not in log


def test_no_keys_and_auth_none_is_open(tmp_path: Path) -> None:
    project = write_custom_project(tmp_path / "p", PREDICT)
    with running(project) as srv, httpx.Client(base_url=srv.url, timeout=10) as c:
        assert c.post("/predict", json={"x": 1.0}).json() == {"value": 2.0}
        assert c.get("/metadata").status_code == 200
        assert "security" not in c.get("/openapi.json").json()
        assert 'id="key"' not in c.get("/").text
        assert "(auth: none)" in srv.output()
