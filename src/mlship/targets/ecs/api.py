"""AWS access for the ``ecs`` target: the boto3 session (the standard credential chain: environment, profile,
SSO, instance or task role), clients, retries and error messages.

Endpoints are boto3's own: ``AWS_ENDPOINT_URL`` (or ``AWS_ENDPOINT_URL_<SERVICE>``) points every client at another
endpoint, e.g. an emulator, with no option in mlship.yaml. ``MLSHIP_ECR_REGISTRY`` names a registry host that
stands in for ECR's (the images are pushed there, and the task definition names them there); tests set it to a
loopback registry, because an emulator stores no image layers.

Retries: botocore's ``standard`` mode (throttling and 5xx, exponential backoff with jitter, 5 attempts); any
other error fails at once as a TargetError with what, why and how to fix it. Credentials and ECR tokens are never
printed.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

from mlship.errors import TargetError
from mlship.targets.ecs.options import EcsOptions

REGISTRY_ENV = "MLSHIP_ECR_REGISTRY"
ClientFactory = Callable[[str], Any]

#: The option that avoids needing an action, where one does (named in permission errors).
AVOIDED_BY = {
    "iam:CreateRole": "execution_role_arn", "iam:AttachRolePolicy": "execution_role_arn",
    "iam:TagRole": "execution_role_arn", "ec2:CreateSecurityGroup": "security_groups",
    "ec2:AuthorizeSecurityGroupIngress": "security_groups", "ec2:DescribeSubnets": "subnets",
}


def short_error(exc: BaseException) -> str:
    """An AWS error on one line: its code and message (never the request)."""
    response = getattr(exc, "response", None)
    if isinstance(response, dict) and "Error" in response:
        error = response["Error"]
        return f"{error.get('Code', '?')}: {' '.join(str(error.get('Message', '')).split())}"[:500]
    return " ".join(str(exc).split())[:500]


def error_code(exc: BaseException) -> str:
    response = getattr(exc, "response", None)
    return str(response.get("Error", {}).get("Code", "")) if isinstance(response, dict) else ""


def no_credentials() -> TargetError:
    return TargetError(
        "No AWS credentials found.",
        why="The ecs target uses boto3's credential chain: AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, AWS_PROFILE "
        "(~/.aws/credentials or SSO), or an instance/task role.",
        fix="`aws configure` (or `aws sso login --profile NAME` and export AWS_PROFILE=NAME), then run again.")


def api_error(exc: BaseException, what: str, action: str = "") -> TargetError:
    """A TargetError for a failed call: what was refused, why, and how to fix it."""
    from botocore.exceptions import (
        ClientError,
        EndpointConnectionError,
        NoCredentialsError,
        NoRegionError,
        PartialCredentialsError,
    )

    text, code = short_error(exc), error_code(exc)
    if isinstance(exc, NoCredentialsError | PartialCredentialsError):
        return no_credentials()
    if isinstance(exc, NoRegionError):
        return no_region()
    if isinstance(exc, EndpointConnectionError):
        return TargetError(f"{what}: cannot reach AWS: {text}",
                           fix="Check your network and the region (targets.ecs.region); AWS_ENDPOINT_URL, if set, "
                           "must point at a running endpoint.")
    if isinstance(exc, ClientError):
        if code in ("AccessDenied", "AccessDeniedException", "UnauthorizedOperation", "UnauthorizedException"):
            avoid = AVOIDED_BY.get(action)
            return TargetError(
                f"{what}: permission denied: {text}",
                why=f"Your AWS identity lacks {action or 'a permission this call needs'}.",
                fix=f"Grant {action or 'it'} to your identity (docs/targets-ecs.md lists every action the deploy "
                "needs)" + (f", or set targets.ecs.{avoid} so mlship does not need it." if avoid else "."))
        if code in ("UnrecognizedClientException", "InvalidClientTokenId", "ExpiredToken", "ExpiredTokenException",
                    "SignatureDoesNotMatch"):
            return TargetError(f"{what}: AWS did not accept your credentials: {text}",
                               fix="Refresh them (`aws sso login`, or new access keys), then run again.")
        if code in ("Throttling", "ThrottlingException", "ServiceUnavailable", "InternalFailure",
                    "ServerException", "InternalError"):
            return TargetError(f"{what}: AWS kept failing: {text}",
                               why="Retried with exponential backoff; the error did not go away.",
                               fix="Try again in a few minutes; re-running `mlship deploy` continues where this one "
                               "stopped.")
        return TargetError(f"{what}: AWS refused the request: {text}",
                           fix="Fix the value it names in targets.ecs (mlship.yaml), then deploy again.")
    return TargetError(f"{what}: {type(exc).__name__}: {text}",
                       fix="Re-run the command; a deploy continues where the previous one stopped.")


def no_region() -> TargetError:
    return TargetError("No AWS region is set.", why="ECS, ECR and the load balancer live in one region.",
                       fix="Set targets.ecs.region in mlship.yaml (e.g. eu-west-1), or export AWS_REGION.")


class Aws:
    """The session and clients of one target (made lazily: ``plan()`` never builds one).

    ``client_factory(service_name)`` replaces boto3's clients (tests may pass one; the default honours
    AWS_ENDPOINT_URL like any boto3 program).
    """

    def __init__(self, opts: EcsOptions, *, client_factory: ClientFactory | None = None,
                 attempts: int = 5, timeout_s: float = 60.0) -> None:
        self.opts = opts
        self._factory = client_factory
        self._attempts, self._timeout_s = attempts, timeout_s
        self._session: Any = None
        self._clients: dict[str, Any] = {}
        #: (operation, answer) of each create_*/register_* call that succeeded: what a deploy made, for the
        #: clean-up of a failed one
        self.created: list[tuple[str, Any]] = []

    @property
    def session(self) -> Any:
        if self._session is None:
            import boto3

            self._session = boto3.Session(region_name=self.opts.region)
        return self._session

    @property
    def region(self) -> str:
        region = self.opts.region or self.session.region_name or os.environ.get("AWS_REGION")
        if not region:
            raise no_region()
        return str(region)

    def client(self, name: str) -> Any:
        if name not in self._clients:
            if self._factory is not None:
                self._clients[name] = self._factory(name)
            else:
                from botocore.config import Config

                config = Config(retries={"mode": "standard", "max_attempts": self._attempts},
                                connect_timeout=min(10.0, self._timeout_s), read_timeout=self._timeout_s)
                self._clients[name] = self.session.client(name, region_name=self.region, config=config)
        return self._clients[name]

    def call(self, what: str, api: str, operation: str, /, *, action: str = "", missing: tuple[str, ...] = (),
             **kwargs: Any) -> Any:
        """``client(api).<operation>(**kwargs)``; None when the error code is one of ``missing`` (the
        resource does not exist); any other error as a TargetError."""
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            answer = getattr(self.client(api), operation)(**kwargs)
        except ClientError as exc:
            if error_code(exc) in missing:
                return None
            raise api_error(exc, what, action) from None
        except BotoCoreError as exc:
            raise api_error(exc, what, action) from None
        if operation.startswith(("create_", "register_task_definition")):
            self.created.append((operation, answer))
        return answer

    def registry_host(self, repository_uri: str) -> str:
        """Where images go: ``MLSHIP_ECR_REGISTRY`` when set, else the repository URI's host."""
        return os.environ.get(REGISTRY_ENV) or repository_uri.partition("/")[0]

    def close(self) -> None:
        for client in self._clients.values():
            close = getattr(client, "close", None)
            if close is not None:
                close()
        self._clients.clear()
