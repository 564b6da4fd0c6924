"""Google Cloud access for the ``cloudrun`` target: credentials, API clients, retries, long-running
operations and error messages (the smoke test is in mlship.targets.common).

Credentials are Application Default Credentials (``google.auth.default``, scope cloud-platform), or
anonymous ones when ``api_endpoint`` is a loopback ``http://`` URL (an emulator) or
``MLSHIP_GCP_ANONYMOUS=1``. Access tokens are handed to the client libraries and to the Docker engine's
login only; they are never printed or logged.
"""

from __future__ import annotations

import os
import re
import time
from collections.abc import Callable
from typing import Any, TypeVar

from google.api_core import exceptions as gexc

from mlship.errors import TargetError
from mlship.targets.cloudrun.options import CloudRunOptions
from mlship.targets.common import poll

T = TypeVar("T")
SCOPE = "https://www.googleapis.com/auth/cloud-platform"

TRANSIENT: tuple[type[Exception], ...] = (gexc.TooManyRequests, gexc.InternalServerError, gexc.BadGateway,
                                          gexc.ServiceUnavailable, gexc.GatewayTimeout)
TRANSIENT_HTTP = (429, 500, 502, 503, 504)
_LOOPBACK = re.compile(r"^http://(127\.0\.0\.1|localhost|\[::1\])(:\d+)?$")


def anonymous(opts: CloudRunOptions) -> bool:
    """No Google credentials: an emulator on a loopback http:// endpoint, or MLSHIP_GCP_ANONYMOUS=1."""
    return os.environ.get("MLSHIP_GCP_ANONYMOUS") == "1" or bool(_LOOPBACK.match(opts.api_endpoint or ""))


def short_error(exc: BaseException) -> str:
    """The server's message, on one line, without the "POST https://...: " the REST transport puts first."""
    message = " ".join(str(getattr(exc, "message", None) or exc).split())
    return re.sub(r"^(GET|POST|PATCH|PUT|DELETE) \S+: ", "", message)[:500]


# Which role an operation needs, for PermissionDenied messages.
ROLES = {
    "create": "roles/run.developer", "update": "roles/run.developer", "get": "roles/run.viewer",
    "delete": "roles/run.developer", "list": "roles/run.viewer", "iam": "roles/run.admin",
    "repository": "roles/artifactregistry.admin", "push": "roles/artifactregistry.writer",
}


def api_error(exc: BaseException, what: str, opts: CloudRunOptions, role: str = "") -> TargetError:
    """A TargetError that says what was refused, why, and how to fix it."""
    text, project = short_error(exc), opts.project
    code = getattr(exc, "code", None)
    if isinstance(exc, gexc.PermissionDenied) or code == 403:
        if "has not been used" in text or "is disabled" in text or "SERVICE_DISABLED" in text:
            return TargetError(f"{what}: an API is not enabled in project {project}: {text}",
                               fix=f"gcloud services enable run.googleapis.com artifactregistry.googleapis.com "
                               f"--project {project}")
        needed = ROLES.get(role, "roles/run.admin")
        sa = (f" and roles/iam.serviceAccountUser on {opts.service_account}" if opts.service_account
              and role in ("create", "update") else "")
        return TargetError(
            f"{what}: permission denied in project {project}: {text}",
            why=f"The account of your Application Default Credentials lacks {needed}{sa}.",
            fix=f"gcloud projects add-iam-policy-binding {project} --member=user:YOU@example.com --role={needed} "
            "(or log in as an account that has it: `gcloud auth application-default login`).")
    if isinstance(exc, gexc.Unauthenticated) or code == 401:
        return TargetError(f"{what}: not authenticated: {text}",
                           fix="gcloud auth application-default login (or set GOOGLE_APPLICATION_CREDENTIALS to a "
                           "service account key file).")
    if isinstance(exc, gexc.NotFound) or code == 404:
        return TargetError(f"{what}: not found: {text}",
                           why=f"Project `{project}` or region `{opts.region}` does not exist, or Cloud Run is not "
                           "available there.",
                           fix="Check targets.cloudrun.project and targets.cloudrun.region in mlship.yaml "
                           "(`gcloud projects list`, `gcloud run regions list`).")
    if isinstance(exc, gexc.InvalidArgument | gexc.FailedPrecondition) or code in (400, 412):
        return TargetError(f"{what}: Cloud Run refused the request: {text}",
                           fix="Fix the value it names in targets.cloudrun (mlship.yaml), then deploy again.")
    if isinstance(exc, TRANSIENT) or code in TRANSIENT_HTTP:
        return TargetError(f"{what}: Google Cloud kept failing: {text}",
                           why="Retried with exponential backoff; the error did not go away.",
                           fix="Try again in a few minutes; https://status.cloud.google.com lists incidents. "
                           "Re-running `mlship deploy` continues where this one stopped.")
    return TargetError(f"{what}: {type(exc).__name__}: {text}",
                       fix="Re-run the command; a deploy continues where the previous one stopped.")


class Gcp:
    """Credentials, clients and retries for one target (created lazily: plan() never builds one)."""

    def __init__(self, opts: CloudRunOptions, *, tries: int, retry_delay_s: float, poll_s: float,
                 op_timeout_s: float) -> None:
        self.opts = opts
        self.tries, self.retry_delay_s, self.poll_s, self.op_timeout_s = tries, retry_delay_s, poll_s, op_timeout_s
        self.anonymous = anonymous(opts)
        self._credentials: Any = None
        self._services: Any = None
        self._revisions: Any = None
        self._session: Any = None

    # --- credentials and clients --------------------------------------------------------------------
    @property
    def credentials(self) -> Any:
        if self._credentials is None:
            if self.anonymous:
                from google.auth.credentials import AnonymousCredentials

                self._credentials = AnonymousCredentials()
            else:
                import google.auth
                from google.auth.exceptions import DefaultCredentialsError

                try:
                    self._credentials, _ = google.auth.default(scopes=[SCOPE])
                except DefaultCredentialsError as exc:
                    raise TargetError(
                        f"No Google Cloud credentials: {short_error(exc)}",
                        why="The cloudrun target uses Application Default Credentials.",
                        fix="gcloud auth application-default login (or set GOOGLE_APPLICATION_CREDENTIALS to a "
                        "service account key file).") from None
        return self._credentials

    def access_token(self) -> str:
        """A fresh OAuth access token from the credentials (for the registry login only; never shown)."""
        from google.auth.exceptions import RefreshError
        from google.auth.transport.requests import Request

        creds = self.credentials
        try:
            creds.refresh(Request())
        except RefreshError as exc:
            raise TargetError(f"Cannot refresh your Google credentials: {short_error(exc)}",
                              fix="gcloud auth application-default login") from None
        return str(creds.token)

    def _client_options(self) -> Any:
        from google.api_core.client_options import ClientOptions

        return ClientOptions(api_endpoint=self.opts.api_endpoint) if self.opts.api_endpoint else None

    @property
    def services(self) -> Any:
        if self._services is None:
            from google.cloud import run_v2

            self._services = run_v2.ServicesClient(credentials=self.credentials, transport="rest",
                                                   client_options=self._client_options())
        return self._services

    @property
    def revisions(self) -> Any:
        if self._revisions is None:
            from google.cloud import run_v2

            self._revisions = run_v2.RevisionsClient(credentials=self.credentials, transport="rest",
                                                     client_options=self._client_options())
        return self._revisions

    @property
    def session(self) -> Any:
        if self._session is None:
            from google.auth.transport.requests import AuthorizedSession

            self._session = AuthorizedSession(self.credentials)
        return self._session

    def close(self) -> None:
        for client in (self._services, self._revisions):
            if client is not None:
                client.transport.close()
        if self._session is not None:
            self._session.close()
        self._services = self._revisions = self._session = None

    # --- retries and operations ---------------------------------------------------------------------
    def call(self, what: str, role: str, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """``fn(*args, **kwargs)`` with transient errors (429, 5xx) retried with exponential backoff;
        anything else fails at once as a TargetError."""
        for attempt in range(self.tries):
            try:
                return fn(*args, **kwargs)
            except TRANSIENT as exc:
                if attempt == self.tries - 1:
                    raise api_error(exc, what, self.opts, role) from None
                time.sleep(self.retry_delay_s * 2 ** attempt)
            except gexc.GoogleAPICallError as exc:
                raise api_error(exc, what, self.opts, role) from None
        raise AssertionError("unreachable")  # pragma: no cover

    def rpc(self, what: str, role: str, method: Callable[..., Any], request: dict[str, Any]) -> Any:
        """One Cloud Run API call, the library's own retry off (:meth:`call` is the one policy)."""
        return self.call(what, role, method, request=request, retry=None)

    def get(self, what: str, method: Callable[..., Any], name: str) -> Any:
        """A GET by resource name; None when it does not exist."""
        try:
            return self.call(what, "get", _not_found_as_none(method), request={"name": name}, retry=None)
        except _Missing:
            return None

    def wait(self, what: str, operation: Any) -> BaseException | None:
        """Poll a long-running operation until it is done; returns its error (None when it succeeded).

        Polling errors (the operation could not be read) raise TargetError; re-running the deploy picks up
        whatever the operation did.
        """
        poll(what, lambda: True if self.call(f"{what} (waiting for the operation)", "get", operation.done) else None,
             timeout_s=self.op_timeout_s, first_delay_s=self.poll_s,
             fix="Check it with `gcloud run services describe`, then deploy again.")
        error: BaseException | None = operation.exception()
        return error

    # --- ID token for the smoke test ---------------------------------------------------------------
    def id_token(self, audience: str) -> str | None:
        """An ID token for calling a private service (None: anonymous, or none can be minted)."""
        if self.anonymous:
            return None
        try:
            import google.oauth2.id_token
            from google.auth.transport.requests import Request

            return str(google.oauth2.id_token.fetch_id_token(Request(), audience))
        except Exception:  # user credentials cannot mint one for an audience; gcloud's may carry one
            token = getattr(self.credentials, "id_token", None)
            return str(token) if token else None


class _Missing(Exception):
    """NotFound, raised past :meth:`Gcp.call`'s error translation."""


def _not_found_as_none(method: Callable[..., Any]) -> Callable[..., Any]:
    def wrapped(**kwargs: Any) -> Any:
        try:
            return method(**kwargs)
        except gexc.NotFound:
            raise _Missing() from None
    return wrapped
