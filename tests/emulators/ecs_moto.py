"""moto in server mode on a loopback port, for the ecs target's tests, with two things moto lacks:

* a record of every API call (``calls``: [(service, action, params)]) so tests can count mutating calls and see
  what the client sent (moto keeps no ``deploymentConfiguration``: the agent reads it from here);
* ``fail_next(action, code, status, times=1)``: the next calls of an action answer an AWS error (JSON and
  query protocols; not EC2's), before moto sees them;
* ``iam:SimulatePrincipalPolicy`` (moto does not implement it): every action is allowed except those in
  ``denied``; ``simulate_refused = True`` answers AccessDenied, as for an identity that may not call it.

    with MotoServer() as moto:   # sets nothing globally; the test's fixture exports AWS_ENDPOINT_URL=moto.endpoint
        ...

moto runs in this process, so the agent (``ecs_agent.py``) can act on moto's ECS and ELBv2 models directly.
"""

from __future__ import annotations

import functools
import io
import json
import os
import re
import threading
import uuid
from collections.abc import Callable, Iterable
from typing import Any
from urllib.parse import parse_qs

from werkzeug.serving import BaseWSGIServer, make_server

from mlship.targets.ecs.spec import EXECUTION_POLICY

#: The read-only actions (everything else changes something), by prefix.
READ_PREFIXES = ("Describe", "Get", "List", "Simulate", "BatchGet", "BatchCheck", "Filter")


def is_mutating(action: str) -> bool:
    return not action.startswith(READ_PREFIXES)


class MotoServer:
    def __init__(self) -> None:
        from moto.moto_server.werkzeug_app import DomainDispatcherApplication, create_backend_app

        self.calls: list[tuple[str, str, dict[str, Any]]] = []
        self.denied: set[str] = set()
        self.simulate_refused = False
        self.after: list[Callable[[str, dict[str, Any]], None]] = []  # run after moto answered an action
        self.failures: dict[str, list[tuple[str, int]]] = {}  # action -> [(error code, HTTP status)]
        self._lock = threading.Lock()
        self._app = DomainDispatcherApplication(create_backend_app)
        self._server: BaseWSGIServer | None = None
        self._thread: threading.Thread | None = None
        self.endpoint = ""

    # --- lifecycle ---------------------------------------------------------------------------------
    def start(self) -> MotoServer:
        from moto.moto_server.werkzeug_app import MotoRequestHandler

        # AWS managed policies (AmazonECSTaskExecutionRolePolicy) exist, as in a real account; moto reads this
        # when it makes its IAM backend
        os.environ["MOTO_IAM_LOAD_MANAGED_POLICIES"] = "true"

        self._server = make_server("127.0.0.1", 0, self._wsgi, threaded=True, request_handler=MotoRequestHandler)
        self.endpoint = f"http://127.0.0.1:{self._server.server_port}"
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.1},
                                        name="moto-server", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
        if self._thread is not None:
            self._thread.join(10)
        from moto.moto_api._internal.models import moto_api_backend

        moto_api_backend.reset()  # the next server in this process starts empty

    def __enter__(self) -> MotoServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def use(self, monkeypatch: Any, region: str, tmp: str) -> MotoServer:
        """Point boto3 at this server for one test (``monkeypatch``: pytest's); every action allowed again."""
        for key, value in aws_environment(self.endpoint, region, tmp).items():
            monkeypatch.setenv(key, value)
        from moto.core import DEFAULT_ACCOUNT_ID
        from moto.ec2.models import ec2_backends
        from moto.iam.models import iam_backends

        # moto makes a region's default VPC and the account's IAM (managed policies) on first use, which takes
        # seconds on a busy machine: made here, so a test's timings are the client's, not the emulator's start
        assert ec2_backends[DEFAULT_ACCOUNT_ID][region].describe_vpcs()
        assert iam_backends[DEFAULT_ACCOUNT_ID]["global"].get_policy(EXECUTION_POLICY)
        self.denied, self.simulate_refused = set(), False
        return self

    def fail_next(self, action: str, code: str, status: int, times: int = 1) -> None:
        self.failures.setdefault(action, []).extend([(code, status)] * times)

    # --- what the tests read -----------------------------------------------------------------------
    def mark(self) -> int:
        return len(self.calls)

    def since(self, mark: int, *, mutating: bool = False) -> list[tuple[str, str, dict[str, Any]]]:
        found = self.calls[mark:]
        return [c for c in found if is_mutating(c[1])] if mutating else found

    def last(self, action: str) -> dict[str, Any] | None:
        return next((params for _, name, params in reversed(self.calls) if name == action), None)

    # --- the WSGI layer ----------------------------------------------------------------------------
    def _wsgi(self, environ: dict[str, Any], start_response: Any) -> Iterable[bytes]:
        length = int(environ.get("CONTENT_LENGTH") or 0)
        body = environ["wsgi.input"].read(length) if length else b""
        environ["wsgi.input"] = io.BytesIO(body)
        service, action, params = _parse(environ, body)
        if action:
            with self._lock:
                self.calls.append((service, action, params))
        if self.failures.get(action):
            code, status = self.failures[action].pop(0)
            return _error(code, status, json_protocol=bool(environ.get("HTTP_X_AMZ_TARGET")),
                          start_response=start_response)
        bad_tags = _ecs_tag_problem(params) if service == "ecs" else None
        if bad_tags:  # moto keeps any tag; ECS refuses what breaks its tag rules
            return _error("InvalidParameterException", 400, json_protocol=True, start_response=start_response,
                          message=bad_tags)
        if service == "iam" and action == "SimulatePrincipalPolicy":
            return self._simulate(params, start_response)
        result: Iterable[bytes] = self._app(environ, start_response)
        for hook in self.after:
            hook(action, params)
        return result

    def _simulate(self, params: dict[str, Any], start_response: Any) -> list[bytes]:
        request = uuid.uuid4()
        if self.simulate_refused:
            start_response("403 Forbidden", [("Content-Type", "text/xml")])
            return [(f'<ErrorResponse xmlns="https://iam.amazonaws.com/doc/2010-05-08/"><Error><Type>Sender</Type>'
                     "<Code>AccessDenied</Code><Message>User is not authorized to perform: "
                     "iam:SimulatePrincipalPolicy</Message></Error>"
                     f"<RequestId>{request}</RequestId></ErrorResponse>").encode()]
        actions = [v for k, v in sorted(params.items(), key=lambda kv: _member_index(kv[0]))
                   if k.startswith("ActionNames.member.")]
        resources = [v for k, v in sorted(params.items(), key=lambda kv: _member_index(kv[0]))
                     if k.startswith("ResourceArns.member.")]
        members = "".join(
            f"<member><EvalActionName>{a}</EvalActionName><EvalResourceName>*</EvalResourceName><EvalDecision>"
            f"{'explicitDeny' if a in self.denied else _role_decision(params.get('PolicySourceArn', ''), a, resources)}"
            "</EvalDecision><MatchedStatements/><MissingContextValues/></member>" for a in actions)
        start_response("200 OK", [("Content-Type", "text/xml")])
        return [('<SimulatePrincipalPolicyResponse xmlns="https://iam.amazonaws.com/doc/2010-05-08/">'
                 f"<SimulatePrincipalPolicyResult><IsTruncated>false</IsTruncated><EvaluationResults>{members}"
                 "</EvaluationResults></SimulatePrincipalPolicyResult><ResponseMetadata><RequestId>"
                 f"{request}</RequestId></ResponseMetadata></SimulatePrincipalPolicyResponse>").encode()]


_ECS_TAG = re.compile(r"[\w\s+\-=.:/@]*")


def _ecs_tag_problem(params: dict[str, Any]) -> str | None:
    """What ECS says of the request's tags: at most 50, keys 1-128 and values 0-256 characters of letters, digits,
    spaces and ``+ - = . _ : / @`` (the ECS API reference, Tag)."""
    tags = params.get("tags") or []
    if len(tags) > 50:
        return f"Too many tags: {len(tags)} (at most 50 per resource)."
    for tag in tags:
        key, value = str(tag.get("key", "")), str(tag.get("value", ""))
        if not 1 <= len(key) <= 128 or len(value) > 256 or not _ECS_TAG.fullmatch(key) or not _ECS_TAG.fullmatch(value):
            return (f"Invalid tag {key!r}: keys are 1-128 and values 0-256 characters of letters, digits, spaces "
                    "and +-=._:/@.")
    return None


def _error(code: str, status: int, *, json_protocol: bool, start_response: Any, message: str = "") -> list[bytes]:
    message = message or f"injected by the test: {code}"
    if json_protocol:
        start_response(f"{status} Error", [("Content-Type", "application/x-amz-json-1.1"),
                                           ("x-amzn-ErrorType", code)])
        return [json.dumps({"__type": code, "message": message}).encode()]
    start_response(f"{status} Error", [("Content-Type", "text/xml")])
    return [(f"<ErrorResponse><Error><Type>{'Receiver' if status >= 500 else 'Sender'}</Type><Code>{code}</Code>"
             f"<Message>{message}</Message></Error><RequestId>{uuid.uuid4()}</RequestId></ErrorResponse>").encode()]


def _role_decision(source: str, action: str, resources: list[str]) -> str:
    """A role moto holds, asked about resources (ResourceArns): its inline and attached policies decide, as IAM's
    simulation does; any other question is allowed (the test's ``denied`` decides)."""
    from moto.core import DEFAULT_ACCOUNT_ID
    from moto.iam.access_control import IAMPolicy, PermissionResult
    from moto.iam.models import iam_backends

    role = next((r for r in iam_backends[DEFAULT_ACCOUNT_ID]["global"].roles.values() if r.arn == source), None)
    if role is None or not resources:
        return "allowed"
    policies = [IAMPolicy(doc) for doc in role.policies.values()] + [IAMPolicy(p) for p in
                                                                     role.managed_policies.values()]
    results = [p.is_action_permitted(action, resource) for resource in resources for p in policies]
    if PermissionResult.DENIED in results:
        return "explicitDeny"
    allowed = all(any(p.is_action_permitted(action, r) == PermissionResult.PERMITTED for p in policies)
                  for r in resources)
    return "allowed" if allowed else "implicitDeny"


def _member_index(key: str) -> int:
    found = re.search(r"\.(\d+)$", key)
    return int(found[1]) if found else 0


def _parse(environ: dict[str, Any], body: bytes) -> tuple[str, str, dict[str, Any]]:
    """(service, action, params) of an AWS request: JSON protocols name the action in X-Amz-Target, query
    protocols in the form body; the service is the SigV4 credential scope's."""
    scope = re.search(r"Credential=[^/]+/\d+/[^/]+/([^/]+)/", environ.get("HTTP_AUTHORIZATION", ""))
    service = scope[1] if scope else ""
    target = environ.get("HTTP_X_AMZ_TARGET", "")
    if target:
        try:
            params = json.loads(body or b"{}")
        except ValueError:
            params = {}
        return service, target.rpartition(".")[2], params
    if service == "batch":  # REST-JSON: POST /v1/<operation, lowercase> with a JSON body
        try:
            params = json.loads(body or b"{}")
        except ValueError:
            params = {}
        return service, _rest_operations(service).get(environ.get("PATH_INFO", "").lower(), ""), params
    form = {k: v[0] for k, v in parse_qs(body.decode(errors="replace")).items()}
    action = form.pop("Action", "")
    if not action:  # REST protocols (ECR's registry API is not used here): the path is the action
        return service, "", {}
    return service, action, form


@functools.cache
def _rest_operations(service: str) -> dict[str, str]:
    """A REST service's request paths (lowercase) -> its operation names, from botocore's service model."""
    import botocore.session

    model = botocore.session.get_session().get_service_model(service)
    return {model.operation_model(name).http["requestUri"].lower(): name for name in model.operation_names}


def aws_environment(endpoint: str, region: str, tmp: str) -> dict[str, str]:
    """The environment that points boto3 (the standard chain, as for any user) at ``endpoint`` with test keys;
    no config or credentials file of the machine is read."""
    return {"AWS_ENDPOINT_URL": endpoint, "AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
            "AWS_REGION": region, "AWS_EC2_METADATA_DISABLED": "true",
            "AWS_CONFIG_FILE": f"{tmp}/aws-config", "AWS_SHARED_CREDENTIALS_FILE": f"{tmp}/aws-credentials"}
